//! Harness for the replay tests (`tests/tests/replay_*.rs`): running
//! `koala replay`, talking to the inbound server's API directly, recording
//! the services of the recording tests, and checking replay results and
//! reports.
//!
//! The API's answers are read into the types of
//! [`koala_session::replay`]; the report (written by the CLI) is read as a
//! [`serde_json::Value`].

use std::collections::BTreeMap;
use std::fmt;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use koala_session::replay::ApiError;
pub use koala_session::replay::{ReplayResult, ReplayedCall, Status};
use serde_json::Value;

use crate::{
    Dependencies, IO_TIMEOUT, Program, START_TIMEOUT, Session, Spec, TestDir, assert_bytes,
    assert_port_closed, connect, describe_dir, fixture, free_port, hello_response, http_exchange,
    is_listening, item_ids, item_request, item_response, koala_lib, python, read_http_response,
    record_files, request_item, show, wait_for_sessions,
};

/// How long one `koala replay` run may take before the test gives up.
const KOALA_TIMEOUT: Duration = Duration::from_secs(60);

const POLL: Duration = Duration::from_millis(20);

// ---------------------------------------------------------------------------
// Running `koala replay`

/// The koala CLI: `$KOALA_BIN`, else `koala` next to the library under test.
pub fn koala_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let path = match std::env::var_os("KOALA_BIN") {
            Some(path) if !path.is_empty() => PathBuf::from(path),
            _ => koala_lib().with_file_name("koala"),
        };
        assert!(
            path.is_file(),
            "koala not found at {}: run `make build` (or `cargo build --release -p koala-cli`), \
             or point KOALA_BIN at it",
            path.display()
        );
        path
    })
    .clone()
}

/// A finished `koala` run.
pub struct KoalaRun {
    /// The exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
    /// The service's output, when the run had `--service-log FILE`.
    pub service_log: Option<String>,
}

impl KoalaRun {
    /// Everything it printed (and the service's log), for failure messages.
    pub fn output(&self) -> String {
        let mut out = format!(
            "--- koala exit code {:?} after {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.elapsed, self.stdout, self.stderr
        );
        if let Some(log) = &self.service_log {
            out.push_str(&format!("\n--- service log ---\n{log}"));
        }
        out
    }

    /// The value of a line of the summary (`sessions`, `passed`, `failed`,
    /// `errors`, `calls matched`, `unmatched`, `missing`, `reused`).
    #[track_caller]
    fn summary(&self, label: &str) -> String {
        let summary = format!("\n{}", self.stdout);
        let summary = summary
            .split("\nSummary\n")
            .nth(1)
            .unwrap_or_else(|| panic!("no summary in koala's output\n{}", self.output()));
        summary
            .lines()
            .find_map(|line| {
                let rest = line.trim_start().strip_prefix(label)?;
                rest.starts_with("  ").then(|| rest.trim().to_string())
            })
            .unwrap_or_else(|| panic!("no {label:?} line in the summary\n{}", self.output()))
    }

    /// Asserts the printed summary: sessions (total, passed, failed,
    /// errors) and calls (matched, unmatched, missing, reused).
    #[track_caller]
    pub fn assert_summary(&self, sessions: [usize; 4], calls: [usize; 4]) {
        let got = (
            ["sessions", "passed", "failed", "errors"].map(|l| self.summary(l)),
            ["calls matched", "unmatched", "missing", "reused"].map(|l| self.summary(l)),
        );
        assert_eq!(
            got,
            (
                sessions.map(|n| n.to_string()),
                calls.map(|n| n.to_string())
            ),
            "koala's summary (sessions total/passed/failed/errors, calls matched/unmatched/missing/reused)\n{}",
            self.output()
        );
    }

    /// Asserts exit status 0 and `OK: all <total> session(s) passed`.
    #[track_caller]
    pub fn assert_all_passed(&self, total: usize) {
        assert_eq!(self.code, Some(0), "{}", self.output());
        let ok = format!("OK: all {total} session(s) passed");
        assert!(
            self.stdout.lines().any(|l| l == ok),
            "no {ok:?}\n{}",
            self.output()
        );
    }

    /// Asserts koala announced `sessions` from `files` file(s), replayed
    /// `concurrency` at a time.
    #[track_caller]
    pub fn assert_replaying(&self, sessions: usize, files: usize, concurrency: usize) {
        let line = format!(
            "koala: replaying {sessions} session(s) from {files} file(s), {concurrency} at a time"
        );
        assert!(
            self.stderr.contains(&line),
            "no {line:?}\n{}",
            self.output()
        );
    }
}

/// Runs `koala ARGS` in `dir` (relative paths are relative to it), with
/// `env` added to a clean environment (no KOALA_* variable of the test
/// runner), and waits at most [`KOALA_TIMEOUT`] for it to exit.
pub fn run_koala(dir: &TestDir, name: &str, args: &[String], env: &[(&str, String)]) -> KoalaRun {
    let mut spec = Spec::new(name, koala_bin()).args(args);
    // The token of the services the tests start ([`ReplayPorts::apply`]),
    // for koala replaying them without CMD; with CMD koala passes it on.
    if !env.iter().any(|(key, _)| *key == "KOALA_REPLAY_TOKEN") {
        spec = spec.env("KOALA_REPLAY_TOKEN", REPLAY_TOKEN);
    }
    for (key, value) in env {
        spec = spec.env(key, value);
    }
    let started = Instant::now();
    let mut koala = spec.spawn(dir);
    let deadline = started + KOALA_TIMEOUT;
    let status = loop {
        if let Some(status) = koala.exited() {
            break status;
        }
        if Instant::now() > deadline {
            koala.stop();
            panic!(
                "koala did not finish within {KOALA_TIMEOUT:?}\n{}",
                koala.output_report()
            );
        }
        thread::sleep(POLL);
    };
    let service_log = args
        .iter()
        .position(|a| a == "--service-log")
        .and_then(|at| args.get(at + 1))
        .map(|file| std::fs::read_to_string(dir.join(file)).unwrap_or_default());
    KoalaRun {
        code: status.code(),
        stdout: koala.stdout(),
        stderr: koala.stderr(),
        elapsed: started.elapsed(),
        service_log,
    }
}

/// `koala replay record --lib <lib> OPTIONS -- <python> -u <fixture> ARGS`
/// in `dir` ([`run_koala`]): replays the record directory `record` against
/// a Python fixture started by koala.
pub fn replay_python(
    dir: &TestDir,
    name: &str,
    options: &[&str],
    script: &str,
    script_args: &[String],
    env: &[(&str, String)],
) -> KoalaRun {
    let mut args: Vec<String> = vec!["replay".into(), "record".into(), "--lib".into()];
    args.push(koala_lib().display().to_string());
    args.extend(options.iter().map(|o| o.to_string()));
    args.push("--".into());
    args.push(python().display().to_string());
    args.push("-u".into());
    args.push(fixture(script).display().to_string());
    args.extend(script_args.iter().cloned());
    run_koala(dir, name, &args, env)
}

// ---------------------------------------------------------------------------
// The replay API, spoken directly

/// An answer of the inbound server.
#[derive(Debug)]
pub struct ApiAnswer {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl ApiAnswer {
    /// The body as JSON (every answer of the API is JSON).
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("the API's answer is not JSON ({e}):\n{self}"))
    }

    /// The `ReplayResult` of a 200 answer to `POST /v1/replay`.
    #[track_caller]
    pub fn result(&self) -> ReplayResult {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("the API's answer is not a ReplayResult ({e}):\n{self}"))
    }

    /// The `error` message of a 4xx/5xx answer.
    #[track_caller]
    pub fn error(&self) -> String {
        serde_json::from_slice::<ApiError>(&self.body)
            .unwrap_or_else(|e| panic!("the API's answer is not an error ({e}):\n{self}"))
            .error
    }
}

impl fmt::Display for ApiAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.head, String::from_utf8_lossy(&self.body))
    }
}

/// The replay API token (`KOALA_REPLAY_TOKEN`) of the services the tests
/// start in replay mode ([`ReplayPorts::apply`]); the `api_*` helpers send it.
pub const REPLAY_TOKEN: &str = "koala-tests-replay-token";

/// `request` with an `Authorization: Bearer <token>` header after its first
/// line. Only a complete head gets one: an unfinished head is sent exactly
/// as it is (it is rejected before any token is looked at).
pub fn with_token(request: &[u8], token: &str) -> Vec<u8> {
    let (Some(line_end), Some(_)) = (
        crate::find(request, b"\r\n"),
        crate::find(request, b"\r\n\r\n"),
    ) else {
        return request.to_vec();
    };
    let at = line_end + 2;
    let mut out = request[..at].to_vec();
    out.extend_from_slice(format!("Authorization: Bearer {token}\r\n").as_bytes());
    out.extend_from_slice(&request[at..]);
    out
}

/// Sends `request` (raw bytes: head and body), with the tests' token
/// ([`with_token`]), to the inbound server on `127.0.0.1:port` and reads
/// one answer. With `shutdown_write`, the write side is closed after
/// sending (a body shorter than its Content-Length).
pub fn api_raw(port: u16, request: &[u8], shutdown_write: bool) -> ApiAnswer {
    api_raw_exact(port, &with_token(request, REPLAY_TOKEN), shutdown_write)
}

/// [`api_raw`] without adding a token: `request` is sent as it is.
pub fn api_raw_exact(port: u16, request: &[u8], shutdown_write: bool) -> ApiAnswer {
    let mut stream = connect(port);
    stream.write_all(request).expect("send API request");
    if shutdown_write {
        stream.shutdown(Shutdown::Write).expect("shutdown");
    }
    let bytes = read_http_response(&mut stream)
        .unwrap_or_else(|e| panic!("no answer from the inbound server on port {port}: {e}"));
    parse_answer(&bytes)
}

fn parse_answer(bytes: &[u8]) -> ApiAnswer {
    let head_end = crate::find(bytes, b"\r\n\r\n").expect("answer head") + 4;
    let head = String::from_utf8_lossy(&bytes[..head_end]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head:?}"));
    ApiAnswer {
        status,
        head,
        body: bytes[head_end..].to_vec(),
    }
}

/// `POST path` with `body` and its Content-Length, as raw bytes.
pub fn post_request(path: &str, body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: koala\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

/// Sends [`post_request`] to the inbound server and reads its answer.
pub fn api_post(port: u16, path: &str, body: &[u8]) -> ApiAnswer {
    api_raw(port, &post_request(path, body), false)
}

fn status_request(port: u16) -> String {
    format!(
        "GET /v1/status HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {REPLAY_TOKEN}\r\n\r\n"
    )
}

/// `GET /v1/status`, which must answer 200 with status `ok`.
#[track_caller]
pub fn api_status(port: u16) -> Status {
    let answer = api_raw_exact(port, status_request(port).as_bytes(), false);
    assert_eq!(answer.status, 200, "GET /v1/status: {answer}");
    let status: Status = serde_json::from_slice(&answer.body)
        .unwrap_or_else(|e| panic!("GET /v1/status ({e}): {answer}"));
    assert_eq!(status.status, "ok", "{status:?}");
    status
}

/// Does `GET /v1/status` answer 200 (without panicking when nothing
/// listens yet)?
fn api_answers(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    if stream.write_all(status_request(port).as_bytes()).is_err() {
        return false;
    }
    read_http_response(&mut stream).is_ok_and(|bytes| parse_answer(&bytes).status == 200)
}

/// Waits until a service started in replay mode is ready as `koala replay`
/// waits for it: the inbound server answers `GET /v1/status` and the
/// service listens on `sut_port`.
pub fn wait_until_replay_ready(service: &mut Program, inbound_port: u16, sut_port: u16) {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if is_listening(sut_port) && api_answers(inbound_port) {
            return;
        }
        if let Some(status) = service.exited() {
            panic!(
                "the service exited ({status}) before it was ready\n{}",
                service.output_report()
            );
        }
        if Instant::now() > deadline {
            panic!(
                "the service was not ready within {START_TIMEOUT:?}\n{}",
                service.output_report()
            );
        }
        thread::sleep(POLL);
    }
}

/// The loopback ports of a service run in replay mode by the test itself.
#[derive(Clone, Copy, Debug)]
pub struct ReplayPorts {
    pub inbound: u16,
    pub outbound: u16,
    pub sut: u16,
}

impl ReplayPorts {
    /// Free ports for the inbound and outbound servers, `sut` for the service.
    pub fn new(sut: u16) -> ReplayPorts {
        ReplayPorts {
            inbound: free_port(),
            outbound: free_port(),
            sut,
        }
    }

    /// `spec` preloaded with the library in `mode` (`replay` or
    /// `record,replay`), its servers on these ports, its API token
    /// [`REPLAY_TOKEN`].
    pub fn apply(&self, spec: Spec, mode: &str) -> Spec {
        spec.preload()
            .env("KOALA_MODE", mode)
            .env("KOALA_REPLAY_TOKEN", REPLAY_TOKEN)
            .env("KOALA_INBOUND_ADDR", format!("127.0.0.1:{}", self.inbound))
            .env(
                "KOALA_OUTBOUND_ADDR",
                format!("127.0.0.1:{}", self.outbound),
            )
            .env("KOALA_SUT_ADDR", format!("127.0.0.1:{}", self.sut))
    }
}

/// Is `pid` still a live process (not a zombie)?
pub fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

// ---------------------------------------------------------------------------
// Recordings to replay

/// What a recording run left: the record directory and what is in it.
pub struct Recording {
    /// The record directory, relative to the test directory.
    pub name: String,
    pub dir: PathBuf,
    /// Where the service listened.
    pub port: u16,
    /// Every session, with its file name.
    pub sessions: Vec<(String, Session)>,
    pub background: Vec<Session>,
    /// `<name>/<file>:<line>` of each session, by session id, as koala
    /// names them.
    pub locations: BTreeMap<String, String>,
}

impl Recording {
    /// Reads a record directory after its service stopped.
    pub fn read(dir: &TestDir, name: &str, port: u16) -> Recording {
        let path = dir.join(name);
        let mut recording = Recording {
            name: name.to_string(),
            dir: path.clone(),
            port,
            sessions: Vec::new(),
            background: Vec::new(),
            locations: BTreeMap::new(),
        };
        for (file, records) in record_files(&path) {
            for (index, record) in records.into_iter().enumerate() {
                if record.is_background() {
                    recording.background.push(record);
                } else {
                    recording
                        .locations
                        .insert(record.id.clone(), format!("{name}/{file}:{}", index + 1));
                    recording.sessions.push((file.clone(), record));
                }
            }
        }
        recording
    }

    /// The session whose request is `GET /<kind>/<id>`, by id.
    pub fn by_item(&self) -> BTreeMap<String, &Session> {
        self.sessions
            .iter()
            .map(|(_, s)| (request_item(s.inbound.request.as_bytes()), s))
            .collect()
    }

    /// The session with this session id.
    #[track_caller]
    pub fn session(&self, id: &str) -> &Session {
        self.sessions
            .iter()
            .map(|(_, s)| s)
            .find(|s| s.id == id)
            .unwrap_or_else(|| panic!("no recorded session {id}\n{}", describe_dir(&self.dir)))
    }

    /// The total number of calls of the sessions.
    pub fn calls(&self) -> usize {
        self.sessions.iter().map(|(_, s)| s.calls.len()).sum()
    }
}

/// An item service recorded by [`record_items`].
pub struct ItemRecording {
    pub recording: Recording,
    /// The pid of the recorded service.
    pub pid: u32,
    /// Its arguments, to start it again: `PORT REDIS_PORT BACKEND_PORT
    /// EXTRA...`.
    pub args: Vec<String>,
    pub redis_peer: String,
    pub backend_peer: String,
}

/// Records `script` (`redis_service.py`, or another fixture with its
/// interface: `SCRIPT PORT REDIS_PORT BACKEND_PORT EXTRA...`) with its real
/// dependencies ([`Dependencies`]) into `<dir>/record`: `connections`
/// keep-alive connections, all open at once and used in turn, each sending
/// `per_connection` requests ([`item_ids`]), every answer asserted. Stops the
/// service cleanly (the recording is complete), then the dependencies,
/// asserting their ports closed: nothing can answer a replay but the
/// recording.
pub fn record_items(
    dir: &TestDir,
    script: &str,
    extra_args: &[String],
    connections: usize,
    per_connection: usize,
) -> ItemRecording {
    let ids = item_ids(connections, per_connection);
    let deps = Dependencies::start(dir, &ids);
    let record = dir.join("record");
    let port = free_port();
    let args: Vec<String> = std::iter::once(port.to_string())
        .chain(deps.args())
        .chain(extra_args.iter().cloned())
        .collect();
    let mut service = Spec::python_fixture("record-service", script)
        .args(&args)
        .record_to(&record)
        .spawn(dir);
    service.wait_for_port(port);

    // All connections open at once: a pre-forked server needs a worker
    // per connection.
    let mut streams: Vec<TcpStream> = (0..connections).map(|_| connect(port)).collect();
    for r in 0..per_connection {
        for (c, stream) in streams.iter_mut().enumerate() {
            let id = format!("c{c}r{r}");
            let response = http_exchange(stream, &item_request(port, &id));
            assert_bytes(
                &response,
                &item_response(&id, 1),
                &format!("answer to {id}"),
            );
        }
    }
    drop(streams);
    wait_for_sessions(&record, ids.len());
    service.stop_cleanly();
    let recording = Recording::read(dir, "record", port);
    assert_eq!(
        recording.sessions.len(),
        ids.len(),
        "one session per request\n{}",
        describe_dir(&record)
    );
    let recorded = ItemRecording {
        recording,
        pid: service.pid(),
        args,
        redis_peer: deps.redis_peer(),
        backend_peer: deps.backend_peer(),
    };
    deps.stop();
    recorded
}

/// A greeting nobody else sends: `220 koala-greeting <test>-<pid>-<nanos>`.
fn unique_greeting(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("220 koala-greeting {test}-{}-{nanos}", std::process::id())
}

/// `greeting_service.py` recorded by [`record_greeting`].
pub struct GreetingRecording {
    pub recording: Recording,
    /// The greeting of this run ([`unique_greeting`]).
    pub greeting: String,
    pub greeting_port: u16,
}

impl GreetingRecording {
    /// The service's arguments, to start it again: `PORT GREETING_PORT MODE`.
    pub fn args(&self, mode: &str) -> Vec<String> {
        vec![
            self.recording.port.to_string(),
            self.greeting_port.to_string(),
            mode.to_string(),
        ]
    }
}

/// Records `greeting_service.py` in `mode` into `<dir>/record`, answering
/// `ids` on one keep-alive connection (each answer asserted), then stops
/// the greeting server, asserting its port closed.
pub fn record_greeting(dir: &TestDir, mode: &str, ids: &[&str]) -> GreetingRecording {
    let greeting = unique_greeting(mode);
    let greeting_port = free_port();
    let mut greeter = Spec::python_fixture("greeting_server", "greeting_server.py")
        .args([greeting_port.to_string(), greeting.clone()])
        .spawn(dir);
    greeter.wait_for_port(greeting_port);

    let port = free_port();
    let record = dir.join("record");
    let mut service = Spec::python_fixture("record-service", "greeting_service.py")
        .args([
            port.to_string(),
            greeting_port.to_string(),
            mode.to_string(),
        ])
        .record_to(&record)
        .spawn(dir);
    service.wait_for_port(port);
    let mut stream = connect(port);
    for id in ids {
        let request = format!("GET /hello/{id} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n");
        let response = http_exchange(&mut stream, request.as_bytes());
        assert_bytes(
            &response,
            &hello_response(&greeting, id),
            &format!("answer to {id}"),
        );
    }
    drop(stream);
    wait_for_sessions(&record, ids.len());
    service.stop_cleanly();
    greeter.stop();
    assert_port_closed(greeting_port, "the greeting server");
    let recording = Recording::read(dir, "record", port);
    assert_eq!(
        recording.sessions.len(),
        ids.len(),
        "{}",
        describe_dir(&record)
    );
    GreetingRecording {
        recording,
        greeting,
        greeting_port,
    }
}

// ---------------------------------------------------------------------------
// Checking replay results

/// A result as compact JSON, for failure messages.
fn show_result(result: &ReplayResult) -> String {
    serde_json::to_string(result).unwrap_or_else(|e| format!("({e})"))
}

/// Asserts that a `ReplayResult` (from the API or a report) replayed
/// `recorded` exactly: the service answered the recorded response byte for
/// byte, and its calls replayed the recorded ones ([`assert_calls_replayed`]);
/// no call unmatched or missing.
#[track_caller]
pub fn assert_result_replays(result: &ReplayResult, recorded: &Session, what: &str) {
    let what = format!(
        "{what}: result {}\nrecorded {}",
        show_result(result),
        show(recorded)
    );
    assert_eq!(result.id, recorded.id, "{what}");
    assert_bytes(
        result.response.as_bytes(),
        recorded.inbound.response.as_bytes(),
        &format!("{what}\nresponse"),
    );
    assert_bytes(
        result.recorded_response.as_bytes(),
        recorded.inbound.response.as_bytes(),
        &format!("{what}\nrecorded_response"),
    );
    assert_calls_replayed(&result.calls, recorded, &what);
    assert!(result.unmatched.is_empty(), "{what}\nunmatched");
    assert!(result.missing.is_empty(), "{what}\nmissing");
}

/// Asserts that `calls` are the recorded calls of `recorded`, in order:
/// each went to the recorded peer with the recorded request, was answered
/// from the recorded call of the same index (not reused) with its recorded
/// response.
#[track_caller]
pub fn assert_calls_replayed(calls: &[ReplayedCall], recorded: &Session, what: &str) {
    assert_eq!(calls.len(), recorded.calls.len(), "{what}\nnumber of calls");
    for (index, (call, rec)) in calls.iter().zip(&recorded.calls).enumerate() {
        let what = format!("{what}\ncall {index}");
        assert_eq!(call.peer, rec.peer, "{what}");
        assert_eq!(call.matched, Some(index), "{what}");
        assert!(!call.reused, "{what}: reused");
        assert_eq!(call.greeting, rec.is_greeting(), "{what}: greeting");
        assert_bytes(
            call.request.as_bytes(),
            rec.request.as_bytes(),
            &format!("{what}: request"),
        );
        assert_bytes(
            call.served.as_bytes(),
            rec.response.as_bytes(),
            &format!("{what}: served"),
        );
    }
}

/// Reads and parses a JSON report written by `koala replay --report`.
#[track_caller]
pub fn read_report(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read the report {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("the report is not JSON ({e}):\n{text}"))
}

/// The report's `sessions` entries.
#[track_caller]
pub fn report_entries(report: &Value) -> &[Value] {
    report["sessions"]
        .as_array()
        .unwrap_or_else(|| panic!("no sessions array in the report: {report}"))
}

/// The `id` of a report entry.
#[track_caller]
pub fn entry_id(entry: &Value) -> &str {
    entry["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id in the report entry {entry}"))
}

/// The `result` of a report entry.
#[track_caller]
pub fn entry_result(entry: &Value) -> ReplayResult {
    serde_json::from_value(entry["result"].clone())
        .unwrap_or_else(|e| panic!("no ReplayResult in the report entry ({e}): {entry}"))
}

/// Asserts the report's summary counts: sessions (total, passed, failed,
/// errors) and calls (matched, unmatched, missing, reused).
#[track_caller]
pub fn assert_report_summary(report: &Value, sessions: [usize; 4], calls: [usize; 4]) {
    let summary = &report["summary"];
    let got = (
        ["total", "passed", "failed", "errors"].map(|k| summary["sessions"][k].as_u64()),
        ["matched", "unmatched", "missing", "reused"].map(|k| summary["calls"][k].as_u64()),
    );
    assert_eq!(
        got,
        (
            sessions.map(|n| Some(n as u64)),
            calls.map(|n| Some(n as u64))
        ),
        "report summary (sessions total/passed/failed/errors, calls matched/unmatched/missing/reused): {summary}"
    );
}

/// Asserts every session of the report passed and replayed its recorded
/// session exactly ([`assert_result_replays`]), and that the report covers
/// exactly the recording's sessions.
#[track_caller]
pub fn assert_report_all_replayed(report: &Value, recording: &Recording) {
    let entries = report_entries(report);
    assert_eq!(
        entries.len(),
        recording.sessions.len(),
        "one report entry per recorded session"
    );
    let mut seen = std::collections::BTreeSet::new();
    for entry in entries {
        let id = entry_id(entry);
        assert!(seen.insert(id.to_string()), "{id} reported twice");
        let recorded = recording.session(id);
        assert_eq!(entry["verdict"].as_str(), Some("pass"), "{entry}");
        assert!(entry["error"].is_null(), "{entry}");
        assert_eq!(
            entry["location"].as_str(),
            Some(recording.locations[id].as_str()),
            "{entry}"
        );
        let calls = &entry["calls"];
        assert_eq!(
            ["matched", "unmatched", "missing", "reused"].map(|k| calls[k].as_u64()),
            [Some(recorded.calls.len() as u64), Some(0), Some(0), Some(0)],
            "{entry}"
        );
        assert_result_replays(
            &entry_result(entry),
            recorded,
            &format!("report entry {id}"),
        );
    }
}

/// The `<testcase .../>` elements of a JUnit file, each as its text up to
/// its end (`/>` or `</testcase>`).
pub fn junit_testcases(xml: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find("<testcase ") {
        let tail = &rest[start..];
        let open_end = tail.find('>').expect("testcase tag end");
        let end = if tail[..open_end].ends_with('/') {
            open_end + 1
        } else {
            tail.find("</testcase>").expect("</testcase>") + "</testcase>".len()
        };
        out.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

/// The value of attribute `name` in the first tag of `xml` that has it.
pub fn xml_attribute(xml: &str, name: &str) -> Option<String> {
    let key = format!(" {name}=\"");
    let start = xml.find(&key)? + key.len();
    let end = xml[start..].find('"')?;
    Some(xml[start..start + end].to_string())
}

/// The lines of the `.jsonl` files of `dir` (sorted by file name), exactly
/// as written, with their parsed records: what `koala replay` posts.
pub fn record_lines(dir: &Path) -> Vec<(String, Session)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e == "jsonl"));
    files.sort();
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read session file");
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let record = koala_session::read_session_line(line)
                .unwrap_or_else(|e| panic!("{}: not a session ({e}): {line}", file.display()));
            out.push((line.to_string(), record));
        }
    }
    out
}

/// A listener on a stopped dependency's port: keeps the first bytes of
/// every connection and answers plain HTTP that no recording holds (and no
/// TLS client accepts), so a replay that reached it fails fast and visibly.
pub struct Trap {
    reached: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Trap {
    pub fn start(port: u16) -> Trap {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("the trap cannot listen on {port}: {e}"));
        let reached = Arc::new(Mutex::new(Vec::new()));
        let log = reached.clone();
        thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                let mut bytes = vec![0; 512];
                let n = stream.read(&mut bytes).unwrap_or(0);
                bytes.truncate(n);
                log.lock().unwrap().push(bytes);
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\ntrap\n",
                );
            }
        });
        Trap { reached }
    }

    /// The first bytes of each connection it got, in order.
    pub fn reached(&self) -> Vec<Vec<u8>> {
        self.reached.lock().unwrap().clone()
    }

    #[track_caller]
    pub fn assert_untouched(&self) {
        let reached: Vec<String> = self
            .reached()
            .iter()
            .map(|bytes| String::from_utf8_lossy(bytes).into_owned())
            .collect();
        assert_eq!(
            reached,
            Vec::<String>::new(),
            "the replayed service reached the real dependency's address"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn junit_testcases_are_split() {
        let xml = r#"<testsuite tests="2" failures="1"><testcase name="a" line="1"/><testcase name="b"><failure message="m">x</failure></testcase></testsuite>"#;
        let cases = junit_testcases(xml);
        assert_eq!(cases.len(), 2);
        assert_eq!(cases[0], r#"<testcase name="a" line="1"/>"#);
        assert!(cases[1].ends_with("</testcase>") && cases[1].contains("<failure"));
        assert_eq!(xml_attribute(xml, "failures").as_deref(), Some("1"));
    }
}
