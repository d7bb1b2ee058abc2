//! `koala replay` end to end against a fake inbound server written here: a
//! TcpListener thread answering `/v1/status`, `/v1/replay` and
//! `/v1/background` with canned answers. (The real servers inside the
//! service are tested with real programs in the workspace's `tests/`.)

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use koala_session::replay::{Durations, ReplayResult, ReplayedCall, Status};
use koala_session::{Exchange, FORMAT_VERSION, Kind, Payload, Session};
use serde_json::Value;

const RECORDED: &str = "HTTP/1.1 200 OK\r\nDate: Mon, 01 Jan 2024 00:00:00 GMT\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok";

fn session(id: &str, kind: Kind) -> Session {
    Session {
        koala: FORMAT_VERSION,
        kind,
        id: id.into(),
        pid: 7,
        tid: 7,
        program: "svc".into(),
        end: None,
        inbound: Exchange {
            local: "127.0.0.1:18080".into(),
            peer: "127.0.0.1:50000".into(),
            request: Payload::from(format!("GET /{id} HTTP/1.1\r\nHost: svc\r\n\r\n").as_str()),
            response: Payload::from(RECORDED),
            ..Exchange::default()
        },
        calls: vec![Exchange {
            local: "127.0.0.1:50001".into(),
            peer: "127.0.0.1:6379".into(),
            request: Payload::from("*2\r\n$3\r\nGET\r\n$4\r\nuser\r\n"),
            response: Payload::from("$3\r\nann\r\n"),
            ..Exchange::default()
        }],
        ..Session::default()
    }
}

/// What the fake inbound server answers to `POST /v1/replay` for a session
/// id: the service's "actual" response, or an API error.
fn canned(session: &Session) -> (u16, String) {
    let id = session.id.as_str();
    let actual = if id.starts_with("pass") {
        // Other Date, other header order, chunked: still equal.
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\nDate: Tue, 02 Jan 2024 10:00:00 GMT\r\n\r\n2\r\nok\r\n0\r\n\r\n".to_string()
    } else if id.starts_with("fail") {
        "HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n\r\nboom ]]> \u{1}\u{1b}!".to_string()
    } else if id.starts_with("err") {
        return (
            502,
            r#"{"error":"service not listening on 127.0.0.1:18080"}"#.into(),
        );
    } else {
        return (400, r#"{"error":"unknown test session"}"#.into());
    };
    let result = ReplayResult {
        id: id.into(),
        replay: 1,
        sut: "127.0.0.1:18080".into(),
        response: Payload::from(actual.as_str()),
        recorded_response: session.inbound.response.clone(),
        response_end: "framed".into(),
        calls: vec![ReplayedCall {
            peer: "127.0.0.1:6379".into(),
            request: session.calls[0].request.clone(),
            matched: Some(0),
            score: 1.0,
            closest: Some(0),
            reused: false,
            greeting: false,
            served: session.calls[0].response.clone(),
            at_ms: 0.5,
            ..ReplayedCall::default()
        }],
        missing: vec![],
        unmatched: vec![],
        durations: Durations::default(),
    };
    (200, serde_json::to_string(&result).unwrap())
}

#[derive(Default)]
struct Seen {
    /// (method, path, body) of every request.
    requests: Mutex<Vec<(String, String, Vec<u8>)>>,
    connections: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    /// When not 0, the process exits (status 5) after answering this many
    /// replays: a service that dies during the replay.
    exit_after_replays: AtomicUsize,
    replays: AtomicUsize,
}

/// A fake inbound server; `delay` is added to every replay.
fn fake_inbound(delay: Duration) -> (SocketAddr, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let shared = seen.clone();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            shared.connections.fetch_add(1, Ordering::SeqCst);
            let seen = shared.clone();
            thread::spawn(move || serve_api(stream, addr, &seen, delay));
        }
    });
    (addr, seen)
}

/// One API connection, keep-alive: requests until the client closes.
fn serve_api(stream: TcpStream, addr: SocketAddr, seen: &Seen, delay: Duration) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    while let Some((method, path, body)) = read_request(&mut reader) {
        seen.requests
            .lock()
            .unwrap()
            .push((method.clone(), path.clone(), body.clone()));
        let (status, answer) = match (method.as_str(), path.as_str()) {
            ("GET", "/v1/status") => (
                200,
                serde_json::to_string(&Status {
                    status: "ok".into(),
                    pid: std::process::id(),
                    inbound: addr.to_string(),
                    outbound: "127.0.0.1:2516".into(),
                    sut: "127.0.0.1:18080".into(),
                    ..Status::default()
                })
                .unwrap(),
            ),
            ("POST", "/v1/replay") => {
                let now = seen.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                seen.max_in_flight.fetch_max(now, Ordering::SeqCst);
                thread::sleep(delay);
                let answer = match serde_json::from_slice::<Session>(&body) {
                    Ok(session) => canned(&session),
                    Err(e) => (
                        400,
                        serde_json::json!({ "error": e.to_string() }).to_string(),
                    ),
                };
                seen.in_flight.fetch_sub(1, Ordering::SeqCst);
                answer
            }
            ("POST", "/v1/background") => {
                let lines = body
                    .split(|&b| b == b'\n')
                    .filter(|l| !l.is_empty())
                    .count();
                (200, format!("{{\"loaded\": {lines}}}"))
            }
            _ => (404, r#"{"error":"unknown path"}"#.into()),
        };
        // One write: no Nagle delay between head and body.
        let message = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{answer}",
            answer.len()
        );
        if writer.write_all(message.as_bytes()).is_err() {
            return;
        }
        if path == "/v1/replay" {
            let answered = seen.replays.fetch_add(1, Ordering::SeqCst) + 1;
            if answered == seen.exit_after_replays.load(Ordering::SeqCst) {
                std::process::exit(5);
            }
        }
    }
}

fn read_request(reader: &mut impl BufRead) -> Option<(String, String, Vec<u8>)> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut length = 0;
    loop {
        line.clear();
        reader.read_line(&mut line).ok()?;
        if line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().ok()?;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some((method, path, body))
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("koala-replay-it-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write_sessions(dir: &Path, name: &str, lines: &[String]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

fn koala(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_koala"))
        .arg("replay")
        .args(args)
        .env_remove("KOALA_INBOUND_ADDR")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn pass_fail_and_error_with_reports() {
    let (addr, seen) = fake_inbound(Duration::ZERO);
    let dir = temp_dir("basic");
    let file = write_sessions(
        &dir,
        "svc-7.jsonl",
        &[
            session("pass-1", Kind::Session).to_json_line(),
            session("bg-1", Kind::Background).to_json_line(),
            session("fail-1", Kind::Session).to_json_line(),
            "{not json".into(),
            session("err-1", Kind::Session).to_json_line(),
        ],
    );
    let report = dir.join("report.json");
    let junit = dir.join("junit.xml");
    let output = koala(&[
        dir.to_str().unwrap(),
        "--inbound",
        &addr.to_string(),
        "--report",
        report.to_str().unwrap(),
        "--junit",
        junit.to_str().unwrap(),
    ]);
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert_eq!(
        output.status.code(),
        Some(1),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );

    // The failure's diff, the error's message, the bad line.
    assert!(
        stdout.contains(&format!("FAIL  fail-1  ({}:3)", file.display())),
        "{stdout}"
    );
    assert!(
        stdout.contains("response differs (status, 1 header, body)"),
        "{stdout}"
    );
    assert!(
        stdout.contains(r#"status: "HTTP/1.1 200 OK" -> "HTTP/1.1 500 Internal Server Error""#),
        "{stdout}"
    );
    assert!(
        stdout.contains(r#"header changed: content-length: "2" -> "12""#),
        "{stdout}"
    );
    assert!(
        stdout.contains(r"actual:   boom ]]> \u{1}\u{1b}!"),
        "{stdout}"
    );
    assert!(
        !stdout.contains('\u{1b}'),
        "control bytes are escaped on the console"
    );
    assert!(
        stdout.contains(&format!("ERROR err-1  ({}:5)", file.display()))
            && stdout
                .contains("inbound server answered 502: service not listening on 127.0.0.1:18080"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("ERROR {}:4", file.display())),
        "{stdout}"
    );
    assert!(
        !stdout.contains("pass-1"),
        "passing sessions are not listed: {stdout}"
    );
    for row in [
        "  sessions             4\n",
        "    passed             1\n",
        "    failed             1\n",
        "    errors             2\n",
        "  calls matched        2\n",
    ] {
        assert!(stdout.contains(row), "{row:?} in {stdout}");
    }
    assert!(
        stdout.contains("FAILED: 1 failed, 2 error(s), 1 passed, of 4 session(s)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("p50 ") && stdout.contains("sessions/s"),
        "{stdout}"
    );
    assert!(stderr.contains("loaded 1 background record(s)"), "{stderr}");

    // The background line went to /v1/background, not to /v1/replay.
    let requests = seen.requests.lock().unwrap();
    let posted: Vec<&str> = requests.iter().map(|(_, path, _)| path.as_str()).collect();
    assert_eq!(posted[0], "/v1/status");
    assert_eq!(posted[1], "/v1/background");
    assert!(text(&requests[1].2).contains("\"bg-1\""));
    assert_eq!(posted.iter().filter(|p| **p == "/v1/replay").count(), 3);
    // The session line is posted exactly as in the file.
    let replayed: HashSet<Vec<u8>> = requests
        .iter()
        .filter(|(_, path, _)| path == "/v1/replay")
        .map(|(_, _, body)| body.clone())
        .collect();
    assert!(replayed.contains(session("fail-1", Kind::Session).to_json_line().as_bytes()));

    // The JSON report.
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(report["koala_replay_report"], 1);
    assert_eq!(report["summary"]["sessions"]["passed"], 1);
    assert_eq!(report["summary"]["sessions"]["failed"], 1);
    assert_eq!(report["summary"]["sessions"]["errors"], 2);
    let sessions = report["sessions"].as_array().unwrap();
    let by_line: BTreeMap<u64, &Value> = sessions
        .iter()
        .map(|s| (s["line"].as_u64().unwrap(), s))
        .collect();
    assert_eq!(
        by_line.keys().copied().collect::<Vec<_>>(),
        vec![1, 3, 4, 5]
    );
    assert_eq!(by_line[&1]["verdict"], "pass");
    assert_eq!(by_line[&1]["result"]["id"], "pass-1");
    assert_eq!(by_line[&3]["verdict"], "fail");
    assert!(by_line[&3]["diff"].as_str().unwrap().contains("status:"));
    assert!(
        by_line[&3]["result"]["response"]
            .as_str()
            .unwrap()
            .starts_with("HTTP/1.1 500")
    );
    assert_eq!(by_line[&4]["verdict"], "error");
    assert!(by_line[&4]["id"].is_null());
    assert_eq!(by_line[&5]["error"]["http_status"], 502);
    assert_eq!(by_line[&5]["location"], format!("{}:5", file.display()));

    // The JUnit file: well-formed, one suite, one case per session.
    let xml = std::fs::read_to_string(&junit).unwrap();
    let elements = check_xml(&xml).unwrap_or_else(|e| panic!("{e}\n{xml}"));
    let suites: Vec<_> = elements
        .iter()
        .filter(|(name, _)| name == "testsuite")
        .collect();
    assert_eq!(suites.len(), 1);
    assert_eq!(suites[0].1["tests"], "4");
    assert_eq!(suites[0].1["failures"], "1");
    assert_eq!(suites[0].1["errors"], "2");
    let cases: Vec<_> = elements
        .iter()
        .filter(|(name, _)| name == "testcase")
        .collect();
    assert_eq!(cases.len(), 4);
    assert_eq!(cases[0].1["name"], "pass-1");
    assert_eq!(cases[0].1["classname"], file.display().to_string());
    assert_eq!(
        elements
            .iter()
            .filter(|(name, _)| name == "failure")
            .count(),
        1
    );
    assert_eq!(
        elements.iter().filter(|(name, _)| name == "error").count(),
        2
    );
    assert!(xml.contains("boom ]]&gt; \\u{1}\\u{1b}!"), "{xml}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn workers_keep_their_connections_and_run_in_parallel() {
    let (addr, seen) = fake_inbound(Duration::from_millis(50));
    let dir = temp_dir("parallel");
    let lines: Vec<String> = (0..20)
        .map(|i| session(&format!("pass-{i}"), Kind::Session).to_json_line())
        .collect();
    write_sessions(&dir, "a.jsonl", &lines);
    let output = koala(&[
        dir.to_str().unwrap(),
        "--inbound",
        &addr.to_string(),
        "-j",
        "4",
    ]);
    let stdout = text(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&output.stderr)
    );
    assert!(stdout.contains("OK: all 20 session(s) passed"), "{stdout}");
    assert!(stdout.contains("concurrency 4"), "{stdout}");
    assert_eq!(seen.max_in_flight.load(Ordering::SeqCst), 4);
    // One connection for the status check, one keep-alive connection per
    // worker, one for the status at the end (calls answered unattributed).
    assert_eq!(seen.connections.load(Ordering::SeqCst), 1 + 4 + 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn setup_problems_exit_2() {
    let dir = temp_dir("setup");
    // Nothing listens there.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    write_sessions(
        &dir,
        "a.jsonl",
        &[session("pass-1", Kind::Session).to_json_line()],
    );
    let output = koala(&[dir.to_str().unwrap(), "--inbound", &closed.to_string()]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("cannot reach the inbound server"),
        "{stderr}"
    );
    assert!(stderr.contains("KOALA_MODE=replay"), "{stderr}");

    // No sessions: only background records and bad lines.
    let empty = temp_dir("setup-empty");
    write_sessions(
        &empty,
        "b.jsonl",
        &[
            session("bg", Kind::Background).to_json_line(),
            "nope".into(),
        ],
    );
    let output = koala(&[empty.to_str().unwrap(), "--inbound", &closed.to_string()]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = text(&output.stderr);
    assert!(
        stderr
            .contains("no sessions to replay in 1 file(s) (1 background record(s), 1 bad line(s))"),
        "{stderr}"
    );
    assert!(stderr.contains("b.jsonl:2"), "{stderr}");

    // Options that only make sense with a command.
    let output = koala(&[dir.to_str().unwrap(), "--sut", "127.0.0.1:1"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        text(&output.stderr).contains("<CMD>"),
        "{}",
        text(&output.stderr)
    );

    // Something already listens where the service must.
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let output = koala(&[
        dir.to_str().unwrap(),
        "--lib",
        dir.join("a.jsonl").to_str().unwrap(),
        "--sut",
        &busy.local_addr().unwrap().to_string(),
        "--",
        "true",
    ]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        text(&output.stderr).contains("already accepts connections before the service started"),
        "{}",
        text(&output.stderr)
    );

    // A command that fails at start: its exit status and stderr are told.
    let lib = dir.join("libkoala.so");
    std::fs::write(&lib, b"").unwrap();
    let output = koala(&[
        dir.to_str().unwrap(),
        "--lib",
        lib.to_str().unwrap(),
        "--sut",
        "127.0.0.1:1",
        "--",
        "sh",
        "-c",
        "echo starting; echo 'cannot bind: address in use' >&2; exit 3",
    ]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("the service stopped before it was ready: sh exited (exit status 3)"),
        "{stderr}"
    );
    assert!(stderr.contains("| cannot bind: address in use"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&empty).unwrap();
}

/// With `-- CMD`: koala starts the service (this test binary again, as
/// [`fake_service`]), waits for it, replays and stops it.
#[test]
fn starts_replays_and_stops_the_service() {
    let dir = temp_dir("launch");
    write_sessions(
        &dir,
        "a.jsonl",
        &[
            session("bg-0", Kind::Background).to_json_line(),
            session("pass-1", Kind::Session).to_json_line(),
            session("pass-2", Kind::Session).to_json_line(),
        ],
    );
    let lib = dir.join("libkoala.so");
    std::fs::write(&lib, b"").unwrap();
    let facts = dir.join("facts.json");
    let sut = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_koala"))
        .args([
            "replay",
            dir.to_str().unwrap(),
            "--lib",
            lib.to_str().unwrap(),
        ])
        .args(["--sut", &sut.to_string(), "--start-timeout", "20"])
        .arg("--")
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", "fake_service", "--nocapture", "--test-threads=1"])
        .env("KOALA_FAKE_SERVICE_FACTS", &facts)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert_eq!(
        output.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("OK: all 2 session(s) passed"), "{stdout}");
    assert!(stderr.contains("koala: service ready in"), "{stderr}");
    assert!(
        stderr.contains("fake service up"),
        "the service's output is shown: {stderr}"
    );

    let facts: Value = serde_json::from_str(&std::fs::read_to_string(&facts).unwrap()).unwrap();
    assert_eq!(facts["KOALA_MODE"], "replay");
    assert_eq!(facts["KOALA_SUT_ADDR"], sut.to_string());
    let lib = lib.canonicalize().unwrap();
    assert!(
        facts["LD_PRELOAD"]
            .as_str()
            .unwrap()
            .starts_with(lib.to_str().unwrap()),
        "{facts}"
    );
    assert!(
        facts["background"].as_str().unwrap().contains("\"bg-0\""),
        "{facts}"
    );
    assert_ne!(facts["KOALA_INBOUND_ADDR"], facts["KOALA_OUTBOUND_ADDR"]);
    // Stopped, and the background file removed.
    let pid = facts["pid"].as_i64().unwrap() as libc::pid_t;
    // SAFETY: signal 0 only checks for existence.
    assert_eq!(unsafe { libc::kill(pid, 0) }, -1, "the service still runs");
    let background = PathBuf::from(facts["KOALA_REPLAY_BACKGROUND"].as_str().unwrap());
    assert!(!background.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_service_that_dies_during_the_replay_is_reported() {
    let dir = temp_dir("dies");
    let lines: Vec<String> = (1..=3)
        .map(|i| session(&format!("pass-{i}"), Kind::Session).to_json_line())
        .collect();
    write_sessions(&dir, "a.jsonl", &lines);
    let lib = dir.join("libkoala.so");
    std::fs::write(&lib, b"").unwrap();
    let sut = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let junit = dir.join("junit.xml");
    let output = Command::new(env!("CARGO_BIN_EXE_koala"))
        .args([
            "replay",
            dir.to_str().unwrap(),
            "--lib",
            lib.to_str().unwrap(),
        ])
        .args([
            "--sut",
            &sut.to_string(),
            "--junit",
            junit.to_str().unwrap(),
        ])
        .arg("--")
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", "fake_service", "--nocapture", "--test-threads=1"])
        .env("KOALA_FAKE_SERVICE_FACTS", dir.join("facts.json"))
        .env("KOALA_FAKE_EXIT_AFTER", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert_eq!(
        output.status.code(),
        Some(1),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stderr.contains("during the replay, "), "{stderr}");
    assert!(stderr.contains("exited (exit status 5)"), "{stderr}");
    assert!(stdout.contains("    passed             1\n"), "{stdout}");
    assert!(stdout.contains("    errors             2\n"), "{stdout}");
    assert!(stdout.contains("ERROR pass-3"), "{stdout}");
    let xml = std::fs::read_to_string(&junit).unwrap();
    check_xml(&xml).unwrap_or_else(|e| panic!("{e}\n{xml}"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The service of [`starts_replays_and_stops_the_service`]: does nothing
/// unless started by koala. Serves the fake API on KOALA_INBOUND_ADDR,
/// accepts connections on KOALA_SUT_ADDR, writes what it was given.
#[test]
fn fake_service() {
    let Some(facts) = std::env::var_os("KOALA_FAKE_SERVICE_FACTS") else {
        return;
    };
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    let background = std::fs::read_to_string(var("KOALA_REPLAY_BACKGROUND")).unwrap_or_default();
    let summary = serde_json::json!({
        "pid": std::process::id(),
        "KOALA_MODE": var("KOALA_MODE"),
        "KOALA_SUT_ADDR": var("KOALA_SUT_ADDR"),
        "KOALA_INBOUND_ADDR": var("KOALA_INBOUND_ADDR"),
        "KOALA_OUTBOUND_ADDR": var("KOALA_OUTBOUND_ADDR"),
        "KOALA_REPLAY_BACKGROUND": var("KOALA_REPLAY_BACKGROUND"),
        "LD_PRELOAD": var("LD_PRELOAD"),
        "background": background,
    });
    std::fs::write(facts, summary.to_string()).unwrap();
    let sut = TcpListener::bind(var("KOALA_SUT_ADDR")).unwrap();
    thread::spawn(move || for _ in sut.incoming() {});
    let inbound = TcpListener::bind(var("KOALA_INBOUND_ADDR")).unwrap();
    let addr = inbound.local_addr().unwrap();
    println!("fake service up");
    let seen = Arc::new(Seen::default());
    if let Ok(n) = var("KOALA_FAKE_EXIT_AFTER").parse() {
        seen.exit_after_replays.store(n, Ordering::SeqCst);
    }
    for stream in inbound.incoming().flatten() {
        let seen = seen.clone();
        thread::spawn(move || serve_api(stream, addr, &seen, Duration::ZERO));
    }
}

/// An element's name and (unescaped) attributes.
type Element = (String, BTreeMap<String, String>);

/// A small XML 1.0 well-formedness check: balanced elements, quoted
/// attributes, known entities, no raw `<`/`&` in text, no forbidden
/// characters. Returns every element with its (unescaped) attributes.
fn check_xml(xml: &str) -> Result<Vec<Element>, String> {
    if let Some(c) = xml
        .chars()
        .find(|&c| !matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..))
    {
        return Err(format!("forbidden character {c:?}"));
    }
    let unescape = |text: &str| -> Result<String, String> {
        let mut out = String::new();
        let mut rest = text;
        while let Some(amp) = rest.find('&') {
            out.push_str(&rest[..amp]);
            let end = rest[amp..].find(';').ok_or("unterminated entity")? + amp;
            let entity = &rest[amp + 1..end];
            out.push(match entity {
                "amp" => '&',
                "lt" => '<',
                "gt" => '>',
                "quot" => '"',
                "apos" => '\'',
                _ if entity.starts_with("#x") => char::from_u32(
                    u32::from_str_radix(&entity[2..], 16).map_err(|e| e.to_string())?,
                )
                .ok_or("bad reference")?,
                _ if entity.starts_with('#') => {
                    char::from_u32(entity[1..].parse().map_err(|_| "bad reference")?)
                        .ok_or("bad reference")?
                }
                _ => return Err(format!("unknown entity &{entity};")),
            });
            rest = &rest[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    };
    let mut rest = xml
        .strip_prefix("<?xml version=\"1.0\" encoding=\"UTF-8\"?>")
        .ok_or("no XML declaration")?;
    let mut stack: Vec<String> = Vec::new();
    let mut elements = Vec::new();
    let mut roots = 0;
    while !rest.is_empty() {
        let lt = rest.find('<').unwrap_or(rest.len());
        let text = &rest[..lt];
        if stack.is_empty() && !text.trim().is_empty() {
            return Err(format!("text outside the root: {text:?}"));
        }
        unescape(text)?;
        rest = &rest[lt..];
        if rest.is_empty() {
            break;
        }
        let gt = rest.find('>').ok_or("unterminated tag")?;
        let tag = &rest[1..gt];
        rest = &rest[gt + 1..];
        if let Some(name) = tag.strip_prefix('/') {
            if stack.pop().as_deref() != Some(name) {
                return Err(format!("mismatched </{name}>"));
            }
            continue;
        }
        let (tag, empty) = match tag.strip_suffix('/') {
            Some(tag) => (tag, true),
            None => (tag, false),
        };
        let name_end = tag.find(char::is_whitespace).unwrap_or(tag.len());
        let name = &tag[..name_end];
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(format!("bad element name in <{tag}>"));
        }
        let mut attrs = BTreeMap::new();
        let mut a = tag[name_end..].trim_start();
        while !a.is_empty() {
            let eq = a
                .find('=')
                .ok_or_else(|| format!("attribute without value in <{tag}>"))?;
            let key = a[..eq].trim();
            let value_start = a[eq + 1..].strip_prefix('"').ok_or("unquoted attribute")?;
            let close = value_start.find('"').ok_or("unterminated attribute")?;
            let raw = &value_start[..close];
            if raw.contains('<') {
                return Err("raw < in an attribute".into());
            }
            if attrs.insert(key.to_string(), unescape(raw)?).is_some() {
                return Err(format!("duplicate attribute {key}"));
            }
            a = value_start[close + 1..].trim_start();
        }
        if stack.is_empty() {
            roots += 1;
        }
        elements.push((name.to_string(), attrs));
        if !empty {
            stack.push(name.to_string());
        }
    }
    if !stack.is_empty() || roots != 1 {
        return Err(format!("unbalanced: open {stack:?}, {roots} root(s)"));
    }
    Ok(elements)
}
