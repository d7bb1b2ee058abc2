//! Harness for the real-stack replay tests of `replay_php_fpm` and
//! `replay_node_redis`: MariaDB, php-fpm and nginx with a FastCGI
//! configuration, each in the test's directory on free loopback ports; the
//! exact bytes these programs exchange (FastCGI records, MySQL packets); and
//! the replay checks both tests share.
//!
//! The PHP stack: `client → nginx → (FastCGI) php-fpm → item.php →
//! MariaDB (mysqli) + backend.py (PHP's curl)`. Either php-fpm or nginx runs
//! under the library ([`Recorded`]).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::replay::{
    KoalaRun, Recording, entry_id, entry_result, read_report, report_entries, run_koala,
};
use crate::{
    Program, START_TIMEOUT, Spec, TestDir, assert_bytes, assert_port_closed, clean_command,
    connect, fixture, free_port, koala_lib, read_to_close, require_program,
};

// ---------------------------------------------------------------------------
// Replaying a real stack

/// `KOALA_REPLAY_IDLE_MS` of the real-stack replays: long, so that a call
/// whose request or response koala cannot frame (and so waits on silence)
/// shows in its `wait_ms`.
pub const REPLAY_IDLE_MS: u64 = 2000;
/// The most a replayed call may wait for its answer: well under
/// [`REPLAY_IDLE_MS`], so no call was answered because of silence.
pub const MAX_WAIT_MS: f64 = 500.0;

/// `koala replay record --lib LIB --report <name>.json -- COMMAND...` in
/// `dir`, with `KOALA_REPLAY_IDLE_MS` = [`REPLAY_IDLE_MS`]. Returns the run
/// and the report's path.
pub fn replay_stack(dir: &TestDir, name: &str, command: &[String]) -> (KoalaRun, PathBuf) {
    let report = format!("{name}.json");
    let mut args: Vec<String> = vec!["replay".into(), "record".into(), "--lib".into()];
    args.push(koala_lib().display().to_string());
    args.extend(["--report".to_string(), report.clone(), "--".to_string()]);
    args.extend(command.iter().cloned());
    let run = run_koala(
        dir,
        name,
        &args,
        &[("KOALA_REPLAY_IDLE_MS", REPLAY_IDLE_MS.to_string())],
    );
    (run, dir.join(report))
}

/// The full acceptance of a real-stack replay: exit 0 and every session
/// passed; the report covers each recorded session once, and each replayed
/// it exactly ([`assert_entry_replays`]); no call unmatched, missing or
/// reused; and no call waited on silence ([`assert_no_call_waited`]).
#[track_caller]
pub fn assert_stack_replayed(run: &KoalaRun, report: &Path, recording: &Recording) {
    let total = recording.sessions.len();
    run.assert_all_passed(total);
    let report = read_report(report);
    let summary = &report["summary"];
    assert_eq!(
        ["total", "passed", "failed", "errors"].map(|k| summary["sessions"][k].as_u64()),
        [total, total, 0, 0].map(|n| Some(n as u64)),
        "report summary: {summary}"
    );
    assert_eq!(
        ["unmatched", "missing", "reused"].map(|k| summary["calls"][k].as_u64()),
        [Some(0); 3],
        "report summary: {summary}"
    );
    let entries = report_entries(&report);
    assert_eq!(
        entries.len(),
        total,
        "one report entry per recorded session"
    );
    let mut seen = std::collections::BTreeSet::new();
    for entry in entries {
        let id = entry_id(entry);
        assert!(seen.insert(id.to_string()), "{id} reported twice");
        assert_entry_replays(entry, recording);
    }
    assert_no_call_waited(&report);
}

/// Asserts one report entry passed and replayed its recorded session
/// exactly: the recorded response (HTTP `Date` aside, which koala's
/// comparison leaves out too); and every recorded call answered, in order,
/// by the replayed calls:
///
/// - a call matched to recorded call `i` may come in several replayed
///   calls (the commands of a pipeline, each answered on its own): their
///   requests and served answers, joined, are call `i`'s request and
///   response, byte for byte;
/// - a set-up call (a login, answered from a recorded connection set-up,
///   `matched: null`) stands for the recorded call with its request, and
///   was served that call's response.
///
/// Nothing unmatched, missing or reused, and every recorded call covered.
#[track_caller]
pub fn assert_entry_replays(entry: &Value, recording: &Recording) {
    let id = entry_id(entry);
    let recorded = recording.session(id);
    let result = entry_result(entry);
    let what = format!(
        "report entry {id}: {entry}\nrecorded {}",
        crate::show(recorded)
    );
    assert_eq!(entry["verdict"].as_str(), Some("pass"), "{what}");
    assert!(entry["error"].is_null(), "{what}");
    assert_eq!(
        entry["location"].as_str(),
        Some(recording.locations[id].as_str()),
        "{what}"
    );
    assert_eq!(
        ["unmatched", "missing", "reused"].map(|k| entry["calls"][k].as_u64()),
        [Some(0); 3],
        "{what}"
    );
    assert!(
        result.unmatched.is_empty() && result.missing.is_empty(),
        "{what}"
    );
    let response = result.response.as_bytes();
    let expected = with_volatile_bytes_of(recorded.inbound.response.as_bytes(), response);
    assert_bytes(response, &expected, &format!("{what}\nresponse"));
    assert_bytes(
        result.recorded_response.as_bytes(),
        recorded.inbound.response.as_bytes(),
        &format!("{what}\nrecorded_response"),
    );

    // Recorded call index -> (requests, served) of the replayed calls.
    let mut answered: Vec<Option<(Vec<u8>, Vec<u8>)>> = vec![None; recorded.calls.len()];
    let mut last = None;
    for (n, call) in result.calls.iter().enumerate() {
        let what = format!("{what}\nreplayed call {n}");
        assert!(!call.reused, "{what}: reused");
        let index = match call.matched {
            Some(index) => index,
            None => {
                assert!(call.setup, "{what}: neither matched nor set-up");
                // The recorded call of this session it stands for.
                recorded
                    .calls
                    .iter()
                    .enumerate()
                    .position(|(i, rec)| {
                        answered[i].is_none() && rec.request.as_bytes() == call.request.as_bytes()
                    })
                    .unwrap_or_else(|| panic!("{what}: no recorded call has its request"))
            }
        };
        assert!(index < recorded.calls.len(), "{what}: matched {index}");
        // Calls come in the recorded order; a pipeline's come together. A
        // message that gets no reply (COM_QUIT) is not waited for: the
        // service's next call, on another connection, may reach the
        // outbound server first.
        let unanswered = recorded.calls[index].response.is_empty() && !call.greeting;
        assert!(
            unanswered || last.is_none_or(|last| index >= last),
            "{what}: call {index} after call {last:?}"
        );
        if last != Some(index) {
            assert!(
                answered[index].is_none(),
                "{what}: call {index} answered twice"
            );
        }
        if !unanswered {
            last = Some(index);
        }
        let rec = &recorded.calls[index];
        assert_eq!(call.peer, rec.peer, "{what}");
        assert_eq!(call.greeting, rec.is_greeting(), "{what}: greeting");
        let (request, served) = answered[index].get_or_insert_with(Default::default);
        request.extend_from_slice(call.request.as_bytes());
        served.extend_from_slice(call.served.as_bytes());
    }
    for (index, (rec, answer)) in recorded.calls.iter().zip(&answered).enumerate() {
        let what = format!("{what}\nrecorded call {index}");
        let (request, served) = answer
            .as_ref()
            .unwrap_or_else(|| panic!("{what}: never made"));
        assert_bytes(
            request,
            rec.request.as_bytes(),
            &format!("{what}: requests"),
        );
        assert_bytes(served, rec.response.as_bytes(), &format!("{what}: served"));
    }
}

/// Waits until the session files of `dir` satisfy `done` (described by
/// `what`) and returns their sessions; on timeout panics, showing them.
pub fn wait_for_recorded(
    dir: &Path,
    what: &str,
    done: impl Fn(&[crate::Session]) -> bool,
) -> Vec<crate::Session> {
    let deadline = Instant::now() + crate::SESSION_TIMEOUT;
    loop {
        let sessions = crate::read_sessions(dir);
        if done(&sessions) {
            return sessions;
        }
        assert!(
            Instant::now() < deadline,
            "not recorded within {:?}: {what}\n{}",
            crate::SESSION_TIMEOUT,
            crate::describe_dir(dir)
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// `recorded` with the bytes that legitimately change between two runs
/// taken from `actual`, so the rest can be compared exactly: an HTTP
/// response's `Date` value (koala's comparison leaves it out), and the 3
/// reserved bytes of a FastCGI END_REQUEST, which php-fpm never sets
/// ([`assert_fcgi_response`]).
pub fn with_volatile_bytes_of(recorded: &[u8], actual: &[u8]) -> Vec<u8> {
    if let (Some(now), Some(then)) = (date_header(actual), date_header(recorded)) {
        return String::from_utf8_lossy(recorded)
            .replacen(
                &format!("\r\nDate: {then}\r\n"),
                &format!("\r\nDate: {now}\r\n"),
                1,
            )
            .into_bytes();
    }
    let mut out = recorded.to_vec();
    let ends_request = fcgi_records(recorded).is_ok_and(|r| {
        r.last()
            .is_some_and(|r| r.kind == FCGI_END_REQUEST && r.content.len() == 8)
    });
    if ends_request && actual.len() == recorded.len() {
        // END_REQUEST's 8 bytes of content, unpadded, end the response.
        let at = out.len() - 3;
        out[at..].copy_from_slice(&actual[at..]);
    }
    out
}

/// Asserts every replayed call of the report was answered within
/// [`MAX_WAIT_MS`] of its request's first byte (`wait_ms`): koala knew
/// where each request ended instead of waiting for `KOALA_REPLAY_IDLE_MS`
/// of silence. A greeting (served on connect, no request) may have none.
#[track_caller]
pub fn assert_no_call_waited(report: &Value) {
    for entry in report_entries(report) {
        let id = entry_id(entry);
        let calls = entry["result"]["calls"]
            .as_array()
            .unwrap_or_else(|| panic!("{id}: no result.calls in the report entry {entry}"));
        for (index, call) in calls.iter().enumerate() {
            let greeting = call["greeting"].as_bool() == Some(true);
            let wait = match call["wait_ms"].as_f64() {
                Some(wait) => wait,
                None if greeting && call["wait_ms"].is_null() => continue,
                None => panic!("{id} call {index}: no wait_ms in {call}"),
            };
            assert!(
                wait < MAX_WAIT_MS,
                "{id} call {index} waited {wait} ms for its answer (KOALA_REPLAY_IDLE_MS is \
                 {REPLAY_IDLE_MS}): {call}"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// MariaDB

/// The database user of `item.php` (mysql_native_password).
pub const DB_USER: &str = "koala";
pub const DB_PASSWORD: &str = "koala-secret";
pub const DB_NAME: &str = "koala";

/// The rows of `koala.items`: `(id, name, price)`.
pub const DB_ITEMS: [(&str, &str, u32); 3] = [
    ("apple", "Apple", 120),
    ("pear", "Pear", 95),
    ("plum", "Plum", 80),
];

/// A `mariadbd` of its own: data directory, socket and logs in the test
/// directory, on a free loopback port, with [`DB_USER`] and [`DB_ITEMS`].
pub struct MariaDb {
    program: Program,
    pub port: u16,
}

impl MariaDb {
    /// Creates the data directory (`mariadb-install-db`), starts `mariadbd`
    /// with an init file that creates the user, the database and its rows,
    /// and waits until it says it is ready for connections.
    pub fn start(dir: &TestDir) -> MariaDb {
        let root = dir.join("db");
        let data = root.join("data");
        // Its own temporary directory: in /tmp, parallel bootstraps clash
        // on their temporary tables' names.
        let tmp = root.join("tmp");
        fs::create_dir_all(&tmp).unwrap();
        let out = clean_command(require_program("mariadb-install-db", "mariadb-server"))
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .env("TMPDIR", &tmp)
            .args([
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--user=root",
            ])
            .output()
            .expect("run mariadb-install-db");
        assert!(
            out.status.success(),
            "mariadb-install-db failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );

        let rows: Vec<String> = DB_ITEMS
            .iter()
            .map(|(id, name, price)| format!("('{id}', '{name}', {price})"))
            .collect();
        let init = format!(
            "CREATE DATABASE {DB_NAME};\n\
             CREATE USER '{DB_USER}'@'127.0.0.1' IDENTIFIED VIA mysql_native_password \
             USING PASSWORD('{DB_PASSWORD}');\n\
             GRANT ALL ON {DB_NAME}.* TO '{DB_USER}'@'127.0.0.1';\n\
             CREATE TABLE {DB_NAME}.items (id VARCHAR(32) PRIMARY KEY, \
             name VARCHAR(64) NOT NULL, price INT NOT NULL);\n\
             INSERT INTO {DB_NAME}.items VALUES {};\n",
            rows.join(", ")
        );
        let init_path = root.join("init.sql");
        fs::write(&init_path, init).unwrap();

        let port = free_port();
        let log = root.join("error.log");
        let mut program = Spec::new("mariadb", require_program("mariadbd", "mariadb-server"))
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", root.join("sock").display()))
            .arg(format!(
                "--pid-file={}",
                root.join("mariadbd.pid").display()
            ))
            .arg(format!("--log-error={}", log.display()))
            .arg(format!("--init-file={}", init_path.display()))
            .arg(format!("--tmpdir={}", tmp.display()))
            .arg(format!("--port={port}"))
            .args([
                "--bind-address=127.0.0.1",
                "--user=root",
                "--skip-name-resolve",
            ])
            .spawn(dir);
        program.wait_for_port(port);
        // The init file runs before this line is logged.
        let deadline = Instant::now() + START_TIMEOUT;
        while !fs::read_to_string(&log).is_ok_and(|l| l.contains("ready for connections")) {
            assert!(
                program.exited().is_none() && Instant::now() < deadline,
                "mariadbd is not ready:\n{}\n{}",
                fs::read_to_string(&log).unwrap_or_default(),
                program.output_report()
            );
            thread::sleep(Duration::from_millis(20));
        }
        MariaDb { program, port }
    }

    pub fn peer(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Stops it and asserts its port is closed.
    pub fn stop(mut self) {
        self.program.stop();
        assert_port_closed(self.port, "mariadbd");
    }
}

// ---------------------------------------------------------------------------
// MySQL packets (what mysqlnd and MariaDB exchange for item.php)

/// A MySQL packet: 3-byte little-endian length, sequence id, payload.
pub fn mysql_packet(seq: u8, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = len.to_le_bytes()[..3].to_vec();
    out.push(seq);
    out.extend_from_slice(payload);
    out
}

/// A length-encoded string (short strings: one length byte).
fn lenenc(text: &str) -> Vec<u8> {
    assert!(text.len() < 251, "long lenenc strings are not needed here");
    let mut out = vec![text.len() as u8];
    out.extend_from_slice(text.as_bytes());
    out
}

/// `COM_QUIT`: mysqli's close. The server answers nothing and closes.
pub const MYSQL_COM_QUIT: &[u8] = b"\x01\x00\x00\x00\x01";

/// The OK packet that ends a successful login (sequence 2, autocommit).
pub const MYSQL_AUTH_OK: &[u8] = b"\x07\x00\x00\x02\x00\x00\x00\x02\x00\x00\x00";

/// item.php's `COM_QUERY` for `id`.
pub fn item_query(id: &str) -> Vec<u8> {
    let mut payload = vec![0x03];
    payload
        .extend_from_slice(format!("SELECT name, price FROM items WHERE id = '{id}'").as_bytes());
    mysql_packet(0, &payload)
}

/// A column definition of `koala.items` (MariaDB, protocol 41).
fn column(seq: u8, name: &str, charset: u16, length: u32, kind: u8) -> Vec<u8> {
    let mut payload = Vec::new();
    for part in ["def", DB_NAME, "items", "items", name, name] {
        payload.extend(lenenc(part));
    }
    payload.push(0x0c);
    payload.extend(charset.to_le_bytes());
    payload.extend(length.to_le_bytes());
    payload.push(kind);
    // NOT_NULL | NO_DEFAULT_VALUE, 0 decimals, filler.
    payload.extend([0x01, 0x10, 0x00, 0x00, 0x00]);
    mysql_packet(seq, &payload)
}

/// MariaDB's exact answer to [`item_query`]: the text result set with its
/// two column definitions, EOF packets (no CLIENT_DEPRECATE_EOF), and the
/// row `(name, price)` if there is one.
pub fn item_query_response(row: Option<(&str, u32)>) -> Vec<u8> {
    const EOF: [u8; 5] = [0xfe, 0x00, 0x00, 0x02, 0x00];
    let mut out = mysql_packet(1, &[2]);
    // name VARCHAR(64) latin1 (charset 8), price INT (binary, 63).
    out.extend(column(2, "name", 8, 64, 0xfd));
    out.extend(column(3, "price", 63, 11, 0x03));
    out.extend(mysql_packet(4, &EOF));
    let mut seq = 5;
    if let Some((name, price)) = row {
        let mut payload = lenenc(name);
        payload.extend(lenenc(&price.to_string()));
        out.extend(mysql_packet(seq, &payload));
        seq += 1;
    }
    out.extend(mysql_packet(seq, &EOF));
    out
}

/// Asserts a recorded MariaDB greeting: a greeting call (empty request)
/// whose answer is one packet of protocol 10 from MariaDB offering
/// mysql_native_password. (Its scramble and thread id change every time.)
#[track_caller]
pub fn assert_mysql_greeting(call: &crate::Exchange, peer: &str, what: &str) {
    assert_eq!(call.peer, peer, "{what}: peer");
    assert!(call.is_greeting(), "{what}: not a greeting (empty request)");
    let response = call.response.as_bytes();
    assert!(response.len() > 5, "{what}: short greeting {response:?}");
    let len = u32::from_le_bytes([response[0], response[1], response[2], 0]) as usize;
    assert_eq!(response.len(), len + 4, "{what}: one packet");
    assert_eq!(response[3], 0, "{what}: sequence 0");
    assert_eq!(response[4], 10, "{what}: protocol 10");
    assert!(
        crate::find(response, b"-MariaDB").is_some()
            && response.ends_with(b"mysql_native_password\0"),
        "{what}: {:?}",
        String::from_utf8_lossy(response)
    );
}

/// Asserts mysqlnd's login call: a handshake response (sequence 1) for
/// [`DB_USER`] whose mysql_native_password scramble is redacted (a
/// 31-byte `koala:redacted:` token, KOALA_REDACT's default) and the
/// database, answered by [`MYSQL_AUTH_OK`].
#[track_caller]
pub fn assert_mysql_login(call: &crate::Exchange, peer: &str, what: &str) {
    assert_eq!(call.peer, peer, "{what}: peer");
    let request = call.request.as_bytes();
    assert!(request.len() > 4, "{what}: short login {request:?}");
    let len = u32::from_le_bytes([request[0], request[1], request[2], 0]) as usize;
    assert_eq!(request.len(), len + 4, "{what}: one packet");
    assert_eq!(request[3], 1, "{what}: sequence 1");
    let user = format!("{DB_USER}\0\x1fkoala:redacted:");
    let database = format!("{DB_NAME}\0mysql_native_password\0");
    assert!(
        crate::find(request, user.as_bytes()).is_some()
            && crate::find(request, database.as_bytes()).is_some(),
        "{what}: {:?}",
        String::from_utf8_lossy(request)
    );
    assert_bytes(
        call.response.as_bytes(),
        MYSQL_AUTH_OK,
        &format!("{what}: response"),
    );
    assert!(!call.truncated, "{what}: truncated");
}

// ---------------------------------------------------------------------------
// FastCGI records (what nginx and php-fpm exchange)

pub const FCGI_BEGIN_REQUEST: u8 = 1;
pub const FCGI_END_REQUEST: u8 = 3;
pub const FCGI_PARAMS: u8 = 4;
pub const FCGI_STDIN: u8 = 5;
pub const FCGI_STDOUT: u8 = 6;

/// One FastCGI record as nginx and php-fpm write it: version 1, the content
/// padded with zeros to a multiple of 8 bytes.
pub fn fcgi_record(kind: u8, id: u16, content: &[u8]) -> Vec<u8> {
    let padding = (8 - content.len() % 8) % 8;
    let mut out = vec![1, kind];
    out.extend(id.to_be_bytes());
    out.extend((content.len() as u16).to_be_bytes());
    out.push(padding as u8);
    out.push(0);
    out.extend_from_slice(content);
    out.resize(out.len() + padding, 0);
    out
}

/// FastCGI name-value pairs: lengths below 128 in one byte, others in four
/// with the high bit set.
pub fn fcgi_name_values(pairs: &[(&str, &str)]) -> Vec<u8> {
    fn length(out: &mut Vec<u8>, len: usize) {
        if len < 128 {
            out.push(len as u8);
        } else {
            out.extend((len as u32 | 0x8000_0000).to_be_bytes());
        }
    }
    let mut out = Vec::new();
    for (name, value) in pairs {
        length(&mut out, name.len());
        length(&mut out, value.len());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(value.as_bytes());
    }
    out
}

/// The FastCGI parameters `nginx_fastcgi.conf.in` makes nginx send for
/// [`stack_request`]`(port, id)`, in nginx's order: the configured ones,
/// then the client's headers.
pub fn fcgi_params_for(port: u16, id: &str) -> Vec<(String, String)> {
    let script = fixture("php/item.php").display().to_string();
    [
        ("SCRIPT_FILENAME", script),
        ("REQUEST_METHOD", "GET".into()),
        ("REQUEST_URI", format!("/item/{id}")),
        ("QUERY_STRING", String::new()),
        ("CONTENT_TYPE", String::new()),
        ("CONTENT_LENGTH", String::new()),
        ("SERVER_PROTOCOL", "HTTP/1.1".into()),
        ("GATEWAY_INTERFACE", "CGI/1.1".into()),
        ("REMOTE_ADDR", "127.0.0.1".into()),
        ("SERVER_NAME", String::new()),
        ("SERVER_PORT", port.to_string()),
        ("HTTP_HOST", format!("127.0.0.1:{port}")),
        ("HTTP_CONNECTION", "close".into()),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_string(), value))
    .collect()
}

/// The FastCGI request nginx sends for [`stack_request`]`(port, id)`,
/// request id 1: BEGIN_REQUEST (responder; keep the connection with
/// `fastcgi_keep_conn on`), the parameters in one record, the empty PARAMS
/// record, and — with `stdin_end` — the empty STDIN record that ends the
/// (empty) body.
pub fn fcgi_request(port: u16, id: &str, keep_conn: bool, stdin_end: bool) -> Vec<u8> {
    let params = fcgi_params_for(port, id);
    let pairs: Vec<(&str, &str)> = params
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let mut out = fcgi_record(
        FCGI_BEGIN_REQUEST,
        1,
        &[0, 1, u8::from(keep_conn), 0, 0, 0, 0, 0],
    );
    out.extend(fcgi_record(FCGI_PARAMS, 1, &fcgi_name_values(&pairs)));
    out.extend(fcgi_record(FCGI_PARAMS, 1, &[]));
    if stdin_end {
        out.extend(fcgi_record(FCGI_STDIN, 1, &[]));
    }
    out
}

/// php-fpm's answer for `id`: item.php's output in one STDOUT record, then
/// END_REQUEST (application status 0, request complete).
pub fn fcgi_response(id: &str) -> Vec<u8> {
    let (status, body) = item_answer(id);
    let head = match status {
        200 => String::new(),
        _ => format!("Status: {status} Not Found\r\n"),
    };
    let stdout = format!("{head}Content-type: text/plain;charset=UTF-8\r\n\r\n{body}");
    let mut out = fcgi_record(FCGI_STDOUT, 1, stdout.as_bytes());
    out.extend(fcgi_record(FCGI_END_REQUEST, 1, &[0; 8]));
    out
}

/// Asserts `actual` is php-fpm's answer for `id` ([`fcgi_response`]),
/// except END_REQUEST's 3 reserved bytes, which php-fpm never sets: they
/// are whatever its output buffer held before (seen: `ys `).
#[track_caller]
pub fn assert_fcgi_response(actual: &[u8], id: &str, what: &str) {
    assert_bytes(
        actual,
        &with_volatile_bytes_of(&fcgi_response(id), actual),
        what,
    );
}

/// One FastCGI record read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FcgiRecord {
    pub kind: u8,
    pub id: u16,
    pub content: Vec<u8>,
}

/// Splits bytes into FastCGI records; an error names the first malformed
/// or incomplete one. For failure messages and the stray-record checks.
pub fn fcgi_records(mut bytes: &[u8]) -> Result<Vec<FcgiRecord>, String> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let Some(head) = bytes.get(..8) else {
            return Err(format!("{} bytes, not a record header", bytes.len()));
        };
        if head[0] != 1 {
            return Err(format!("record {}: version {}", out.len(), head[0]));
        }
        let len = u16::from_be_bytes([head[4], head[5]]) as usize;
        let total = 8 + len + head[6] as usize;
        if bytes.len() < total {
            return Err(format!(
                "record {}: {total} bytes announced, {} left",
                out.len(),
                bytes.len()
            ));
        }
        out.push(FcgiRecord {
            kind: head[1],
            id: u16::from_be_bytes([head[2], head[3]]),
            content: bytes[8..8 + len].to_vec(),
        });
        bytes = &bytes[total..];
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// The PHP stack: item.php behind php-fpm behind nginx

/// The item that [`DB_ITEMS`] does not have: item.php answers 404 after
/// the query, without calling the backend.
pub const MISSING_ITEM: &str = "kiwi";

/// item.php's status and body for `id`.
pub fn item_answer(id: &str) -> (u16, String) {
    match DB_ITEMS.iter().find(|(item, _, _)| *item == id) {
        Some((_, name, price)) => (
            200,
            format!("item {id}: name={name} price={price} backend=backend says {id}\n"),
        ),
        None => (404, format!("no item {id}\n")),
    }
}

/// The test client's request for `id` to nginx on `port`: each on its own
/// connection, which nginx closes after answering.
pub fn stack_request(port: u16, id: &str) -> Vec<u8> {
    format!("GET /item/{id} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n")
        .into_bytes()
}

/// nginx's answer to [`stack_request`] for `id`, with its `Date` header's
/// value as `date`.
pub fn nginx_response(id: &str, date: &str) -> Vec<u8> {
    let (status, body) = item_answer(id);
    let reason = if status == 200 { "OK" } else { "Not Found" };
    format!(
        "HTTP/1.1 {status} {reason}\r\nServer: nginx\r\nDate: {date}\r\n\
         Content-Type: text/plain;charset=UTF-8\r\nTransfer-Encoding: chunked\r\n\
         Connection: close\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        body.len()
    )
    .into_bytes()
}

/// The value of the `Date` header of an HTTP response head, if any.
pub fn date_header(response: &[u8]) -> Option<String> {
    let head_end = crate::find(response, b"\r\n\r\n")?;
    String::from_utf8_lossy(&response[..head_end])
        .split("\r\n")
        .find_map(|line| line.strip_prefix("Date: ").map(str::to_string))
}

/// Asserts `response` is nginx's exact answer for `id` (its own `Date`).
#[track_caller]
pub fn assert_nginx_response(response: &[u8], id: &str, what: &str) {
    let date = date_header(response).unwrap_or_else(|| {
        panic!(
            "{what}: no Date header in {:?}",
            String::from_utf8_lossy(response)
        )
    });
    assert_bytes(response, &nginx_response(id, &date), what);
}

/// The request PHP's curl sends the backend for `id`.
pub fn curl_request(backend_port: u16, id: &str) -> Vec<u8> {
    format!("GET /backend/{id} HTTP/1.1\r\nHost: 127.0.0.1:{backend_port}\r\nAccept: */*\r\n\r\n")
        .into_bytes()
}

/// Which program of the stack runs under the library.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recorded {
    PhpFpm,
    Nginx,
}

/// `php-fpm.conf` for a pool on `port` whose script reaches MariaDB on
/// `db_port` and the backend on `backend_port`, in `<dir>/fpm`.
pub fn php_fpm_conf(dir: &TestDir, port: u16, db_port: u16, backend_port: u16) -> PathBuf {
    let fpm_dir = dir.join("fpm");
    fs::create_dir_all(&fpm_dir).unwrap();
    let conf = fs::read_to_string(fixture("php/php-fpm.conf.in"))
        .unwrap()
        .replace("@DIR@", fpm_dir.to_str().unwrap())
        .replace("@PORT@", &port.to_string())
        .replace("@DB_PORT@", &db_port.to_string())
        .replace("@BACKEND_PORT@", &backend_port.to_string());
    let path = fpm_dir.join("php-fpm.conf");
    fs::write(&path, conf).unwrap();
    path
}

/// `php-fpm8.2 -F -y CONF -R`: in the foreground, as root.
pub fn php_fpm_command(conf: &Path) -> Vec<String> {
    vec![
        require_program("php-fpm8.2", "php8.2-fpm")
            .display()
            .to_string(),
        "-F".into(),
        "-y".into(),
        conf.display().to_string(),
        "-R".into(),
    ]
}

/// `nginx.conf` (from `nginx_fastcgi.conf.in`) on `port` passing `/item/`
/// to php-fpm on `fpm_port`, in `<dir>/nginx`; with `keep_conn`, the
/// FastCGI connections are kept (`keepalive`, `fastcgi_keep_conn on`).
pub fn nginx_fastcgi_conf(dir: &TestDir, port: u16, fpm_port: u16, keep_conn: bool) -> PathBuf {
    let nginx_dir = dir.join("nginx");
    fs::create_dir_all(&nginx_dir).unwrap();
    let (keepalive, keep) = if keep_conn {
        ("keepalive 4;", "fastcgi_keep_conn on;")
    } else {
        ("", "")
    };
    let conf = fs::read_to_string(fixture("nginx_fastcgi.conf.in"))
        .unwrap()
        .replace("@DIR@", nginx_dir.to_str().unwrap())
        .replace("@PORT@", &port.to_string())
        .replace("@FPM_PORT@", &fpm_port.to_string())
        .replace("@SCRIPT@", fixture("php/item.php").to_str().unwrap())
        .replace("@KEEPALIVE@", keepalive)
        .replace("@KEEP_CONN@", keep);
    let path = nginx_dir.join("nginx.conf");
    fs::write(&path, conf).unwrap();
    path
}

/// `nginx -p DIR/ -c CONF -e DIR/error.log` for a configuration written
/// by [`nginx_fastcgi_conf`].
pub fn nginx_command(conf: &Path) -> Vec<String> {
    let nginx_dir = conf.parent().expect("the configuration's directory");
    vec![
        require_program("nginx", "nginx-light")
            .display()
            .to_string(),
        "-p".into(),
        format!("{}/", nginx_dir.display()),
        "-c".into(),
        conf.display().to_string(),
        "-e".into(),
        nginx_dir.join("error.log").display().to_string(),
    ]
}

/// One answered request of [`PhpStack::get`].
pub struct StackAnswer {
    pub id: String,
    /// The client's address: the inbound peer of nginx's session.
    pub client: String,
    pub request: Vec<u8>,
    pub response: Vec<u8>,
}

/// MariaDB, the backend, php-fpm and nginx, running; one of php-fpm and
/// nginx recording into `record`.
pub struct PhpStack {
    pub db: MariaDb,
    pub backend: Program,
    pub backend_port: u16,
    pub fpm: Program,
    pub fpm_port: u16,
    pub fpm_conf: PathBuf,
    /// php-fpm's workers (its 2 children).
    pub fpm_workers: Vec<u32>,
    pub nginx: Program,
    pub nginx_port: u16,
    pub nginx_conf: PathBuf,
    pub nginx_workers: Vec<u32>,
}

impl PhpStack {
    /// Starts the stack with `recorded` under the library, recording into
    /// `record`; waits for every port and for both programs' 2 workers.
    pub fn start(dir: &TestDir, recorded: Recorded, record: &Path, keep_conn: bool) -> PhpStack {
        let db = MariaDb::start(dir);
        let backend_port = free_port();
        let mut backend = Spec::python_fixture("backend", "backend.py")
            .arg(backend_port)
            .spawn(dir);
        backend.wait_for_port(backend_port);

        let fpm_port = free_port();
        let fpm_conf = php_fpm_conf(dir, fpm_port, db.port, backend_port);
        let command = php_fpm_command(&fpm_conf);
        let mut spec = Spec::new("php-fpm", &command[0]).args(&command[1..]);
        if recorded == Recorded::PhpFpm {
            spec = spec.record_to(record);
        }
        let mut fpm = spec.spawn(dir);
        fpm.wait_for_port(fpm_port);
        let fpm_workers = crate::wait_for_children(&mut fpm, 2);

        let nginx_port = free_port();
        let nginx_conf = nginx_fastcgi_conf(dir, nginx_port, fpm_port, keep_conn);
        let command = nginx_command(&nginx_conf);
        let mut spec = Spec::new("nginx", &command[0]).args(&command[1..]);
        if recorded == Recorded::Nginx {
            spec = spec.record_to(record);
        }
        let mut nginx = spec.spawn(dir);
        nginx.wait_for_port(nginx_port);
        let nginx_workers = crate::wait_for_children(&mut nginx, 2);

        PhpStack {
            db,
            backend,
            backend_port,
            fpm,
            fpm_port,
            fpm_conf,
            fpm_workers,
            nginx,
            nginx_port,
            nginx_conf,
            nginx_workers,
        }
    }

    /// `GET /item/<id>` through nginx on a connection of its own; asserts
    /// the exact answer ([`assert_nginx_response`]).
    pub fn get(&self, id: &str) -> StackAnswer {
        let request = stack_request(self.nginx_port, id);
        let mut stream = connect(self.nginx_port);
        let client = stream.local_addr().unwrap().to_string();
        stream.write_all(&request).expect("send request");
        // Connection: close: the answer ends when nginx closes.
        let response = read_to_close(&mut stream);
        assert_nginx_response(&response, id, &format!("nginx's answer to /item/{id}"));
        StackAnswer {
            id: id.to_string(),
            client,
            request,
            response,
        }
    }

    pub fn db_peer(&self) -> String {
        self.db.peer()
    }

    pub fn backend_peer(&self) -> String {
        format!("127.0.0.1:{}", self.backend_port)
    }

    pub fn fpm_peer(&self) -> String {
        format!("127.0.0.1:{}", self.fpm_port)
    }

    /// Stops every program still running (the recorded one must have been
    /// stopped cleanly already) and asserts every port closed: nothing can
    /// answer a replay but the recording.
    pub fn stop(mut self) {
        self.nginx.stop();
        self.fpm.stop();
        self.backend.stop();
        assert_port_closed(self.nginx_port, "nginx");
        assert_port_closed(self.fpm_port, "php-fpm");
        assert_port_closed(self.backend_port, "the backend");
        self.db.stop();
    }
}

/// Stops php-fpm gracefully and asserts it exited with status 0: SIGQUIT
/// to the master, which passes it to the workers; they finish and exit
/// normally, so the library writes their sessions at exit. (On SIGTERM
/// the workers die by the signal, and sessions not yet written are lost.)
pub fn stop_php_fpm(fpm: &mut Program) {
    // SAFETY: kill has no memory effects.
    unsafe {
        libc::kill(fpm.pid() as i32, libc::SIGQUIT);
    }
    let deadline = Instant::now() + START_TIMEOUT;
    let status = loop {
        if let Some(status) = fpm.exited() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "php-fpm did not stop on SIGQUIT\n{}",
            fpm.output_report()
        );
        thread::sleep(Duration::from_millis(20));
    };
    assert!(
        status.success(),
        "php-fpm exited with {status} on SIGQUIT\n{}",
        fpm.output_report()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fcgi_records_are_padded_to_eight_and_read_back() {
        let record = fcgi_record(FCGI_STDOUT, 1, b"hello");
        assert_eq!(record, b"\x01\x06\x00\x01\x00\x05\x03\x00hello\x00\x00\x00");
        assert_eq!(
            fcgi_record(FCGI_STDIN, 1, &[]),
            b"\x01\x05\x00\x01\x00\x00\x00\x00"
        );
        let mut two = record.clone();
        two.extend(fcgi_record(FCGI_END_REQUEST, 1, &[0; 8]));
        let records = fcgi_records(&two).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].content, b"hello");
        assert_eq!((records[1].kind, records[1].id), (FCGI_END_REQUEST, 1));
        assert!(fcgi_records(&two[..two.len() - 1]).is_err());
        assert!(fcgi_records(b"\x02\x06\x00\x01\x00\x00\x00\x00").is_err());
    }

    #[test]
    fn fcgi_lengths_of_128_and_more_take_four_bytes() {
        let long = "v".repeat(200);
        let encoded = fcgi_name_values(&[("A", "b"), ("N", &long)]);
        assert_eq!(&encoded[..4], b"\x01\x01Ab");
        assert_eq!(&encoded[4..9], b"\x01\x80\x00\x00\xc8");
        assert_eq!(encoded.len(), 4 + 5 + 1 + 200);
    }

    #[test]
    fn mysql_packets_carry_length_and_sequence() {
        assert_eq!(mysql_packet(0, &[0x01]), MYSQL_COM_QUIT);
        assert_eq!(
            item_query("a"),
            b"\x2d\x00\x00\x00\x03SELECT name, price FROM items WHERE id = 'a'"
        );
    }

    #[test]
    fn only_volatile_bytes_are_taken_from_the_actual_answer() {
        let then = b"HTTP/1.1 200 OK\r\nDate: Mon\r\nServer: x\r\n\r\nbody";
        let now = b"HTTP/1.1 200 OK\r\nDate: Tue\r\nServer: y\r\n\r\nbody";
        assert_eq!(
            with_volatile_bytes_of(then, now),
            b"HTTP/1.1 200 OK\r\nDate: Tue\r\nServer: x\r\n\r\nbody"
        );
        let mut recorded = fcgi_record(FCGI_STDOUT, 1, b"out");
        recorded.extend(fcgi_record(FCGI_END_REQUEST, 1, b"\0\0\0\0\0ys "));
        let mut actual = fcgi_record(FCGI_STDOUT, 1, b"out");
        actual.extend(fcgi_record(FCGI_END_REQUEST, 1, &[0; 8]));
        assert_eq!(with_volatile_bytes_of(&recorded, &actual), actual);
        // Anything else is kept: a different status, or other records.
        let mut failed = fcgi_record(FCGI_STDOUT, 1, b"out");
        failed.extend(fcgi_record(FCGI_END_REQUEST, 1, &[0, 0, 0, 1, 0, 0, 0, 0]));
        assert_ne!(with_volatile_bytes_of(&recorded, &failed), failed);
        assert_eq!(with_volatile_bytes_of(b"+OK\r\n", b"+NO\r\n"), b"+OK\r\n");
    }

    #[test]
    fn date_header_is_found() {
        let response =
            b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Wed, 02 Dec 2026\r\n\r\nDate: no";
        assert_eq!(date_header(response).as_deref(), Some("Wed, 02 Dec 2026"));
        assert_eq!(date_header(b"HTTP/1.1 200 OK\r\n\r\n"), None);
    }
}
