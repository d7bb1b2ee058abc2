//! The inbound server's answers to bad input (docs/replay-api.md,
//! "Errors"), spoken to with a raw HTTP client. The service is the Python
//! service of `python_redis_backend`, started in replay mode by the test
//! (LD_PRELOAD, KOALA_MODE=replay, KOALA_*_ADDR) with its dependencies
//! stopped. Every bad request gets its documented status and a JSON
//! `{"error": ...}` naming the problem, within a bounded time; after each,
//! `GET /v1/status` still answers, a good session still replays exactly,
//! and the service is still alive.

use std::time::{Duration, Instant};

use koala_tests::replay::*;
use koala_tests::*;
use serde_json::{Value, json};

/// KOALA_REPLAY_TIMEOUT_MS of the service.
const TIMEOUT_MS: u64 = 500;
/// How long `GET /slow/...` sleeps in the service: far beyond TIMEOUT_MS.
const SLOW_MS: u64 = 4000;
/// The longest any error answer may take (the 504 included).
const ANSWER_BOUND: Duration = Duration::from_millis(2500);

struct Service {
    program: Program,
    ports: ReplayPorts,
    /// Good sessions: (line exactly as recorded, session).
    good: Vec<(String, Session)>,
    next_good: usize,
}

impl Service {
    /// After a bad request: the status answers, a good session replays
    /// exactly (pass), and the service is alive.
    #[track_caller]
    fn still_fine(&mut self, after: &str) {
        let status = api_status(self.ports.inbound);
        assert_eq!(status.pid, self.program.pid(), "after {after}: {status:?}");
        let (line, session) = &self.good[self.next_good % self.good.len()];
        self.next_good += 1;
        let answer = api_post(self.ports.inbound, "/v1/replay", line.as_bytes());
        assert_eq!(answer.status, 200, "after {after}: {answer}");
        assert_result_replays(&answer.result(), session, &format!("after {after}"));
        assert!(
            self.program.exited().is_none() && process_alive(self.program.pid()),
            "the service died after {after}\n{}",
            self.program.output_report()
        );
    }
}

/// Sends `request` and asserts the answer: `status`, a JSON error whose
/// message contains every one of `words`, within [`ANSWER_BOUND`].
#[track_caller]
fn expect_error(
    port: u16,
    what: &str,
    request: &[u8],
    shutdown_write: bool,
    status: u16,
    words: &[&str],
) -> String {
    let started = Instant::now();
    let answer = api_raw(port, request, shutdown_write);
    let took = started.elapsed();
    assert_eq!(answer.status, status, "{what}: {answer}");
    assert!(
        answer
            .head
            .to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{what}: {answer}"
    );
    let message = answer.error();
    for word in words {
        assert!(
            message.contains(word),
            "{what}: the error {message:?} does not say {word:?}"
        );
    }
    assert!(took < ANSWER_BOUND, "{what}: answered after {took:?}");
    message
}

/// The JSON of a session line with `change` applied, as text.
fn changed(line: &Value, change: impl FnOnce(&mut Value)) -> String {
    let mut value = line.clone();
    change(&mut value);
    value.to_string()
}

#[test]
fn replay_bad_input() {
    let dir = TestDir::new("replay_bad_input");
    // Recorded with redis and the backend, which are stopped now.
    let recorded = record_items(&dir, "redis_service.py", &[], 2, 2);
    let recording = &recorded.recording;
    let lines = record_lines(&recording.dir);
    let good: Vec<(String, Session)> = lines
        .iter()
        .filter(|(_, s)| !s.is_background())
        .cloned()
        .collect();
    let background_line = lines
        .iter()
        .find(|(_, s)| s.is_background())
        .map(|(l, _)| l.clone())
        .expect("a background record");
    assert_eq!(good.len(), recording.sessions.len());

    let ports = ReplayPorts::new(recording.port);
    let program = ports
        .apply(
            Spec::python_fixture("replay-service", "redis_service.py").args(&recorded.args),
            "replay",
        )
        .env("KOALA_REPLAY_BACKGROUND", recording.dir.display())
        .env("KOALA_REPLAY_TIMEOUT_MS", TIMEOUT_MS)
        .env("KOALA_LOG_FILE", dir.join("replay-koala.log").display())
        .env("REDIS_SERVICE_SLOW_MS", SLOW_MS)
        .spawn(&dir);
    let mut service = Service {
        program,
        ports,
        good,
        next_good: 0,
    };
    wait_until_replay_ready(&mut service.program, ports.inbound, ports.sut);
    // The start-up traffic (redis-py's handshake and PING) was answered
    // from the background record, before any session.
    let status = api_status(ports.inbound);
    let startup_calls = recording.background[0].calls.len() as u64;
    assert_eq!(
        [
            status.background_records,
            status.background_calls_served,
            status.sessions_replayed
        ],
        [1, startup_calls, 0],
        "background records, calls served from them, sessions replayed: {status:?}"
    );
    assert_eq!(status.sut, format!("127.0.0.1:{}", ports.sut), "{status:?}");
    service.still_fine("start-up");
    let inbound = ports.inbound;
    let good_line = service.good[0].0.clone();
    let good_json: Value = serde_json::from_str(&good_line).expect("a session line");

    // --- 400: not JSON.
    let message = expect_error(
        inbound,
        "invalid JSON",
        &post_request("/v1/replay", br#"{"koala": 1, "id": }"#),
        false,
        400,
        &["invalid session", "line 1 column 20"],
    );
    assert!(message.starts_with("invalid session: "), "{message}");
    service.still_fine("invalid JSON");

    // --- 400: not UTF-8.
    expect_error(
        inbound,
        "a body that is not UTF-8",
        &post_request("/v1/replay", b"{\"koala\": 1, \"id\": \"\xff\xfe\"}"),
        false,
        400,
        &["not UTF-8"],
    );
    service.still_fine("a body that is not UTF-8");

    // --- 400: JSON, but a session without its inbound exchange, or id.
    for field in ["inbound", "id"] {
        let body = changed(&good_json, |v| {
            v.as_object_mut().unwrap().remove(field);
        });
        let what = format!("a session without {field}");
        expect_error(
            inbound,
            &what,
            &post_request("/v1/replay", body.as_bytes()),
            false,
            400,
            &["invalid session", &format!("missing field `{field}`")],
        );
        service.still_fine(&what);
    }

    // --- 400: an unsupported format version.
    let body = changed(&good_json, |v| v["koala"] = json!(2));
    expect_error(
        inbound,
        "format version 2",
        &post_request("/v1/replay", body.as_bytes()),
        false,
        400,
        &["unsupported session format version 2"],
    );
    service.still_fine("format version 2");

    // --- 400: a background record posted to /v1/replay.
    expect_error(
        inbound,
        "a background record",
        &post_request("/v1/replay", background_line.as_bytes()),
        false,
        400,
        &["background record", "/v1/background"],
    );
    service.still_fine("a background record");

    // --- 413: a body over 256 MiB (only the head is sent).
    expect_error(
        inbound,
        "a huge Content-Length",
        format!(
            "POST /v1/replay HTTP/1.1\r\nHost: koala\r\nContent-Length: {}\r\n\r\n",
            (256u64 << 20) + 1
        )
        .as_bytes(),
        false,
        413,
        &["268435457", "268435456"],
    );
    service.still_fine("a huge Content-Length");

    // --- 404, 405.
    expect_error(
        inbound,
        "an unknown path",
        b"GET /v1/nope HTTP/1.1\r\nHost: koala\r\n\r\n",
        false,
        404,
        &["/v1/nope"],
    );
    service.still_fine("an unknown path");
    for (request, words) in [
        (
            &b"GET /v1/replay HTTP/1.1\r\nHost: koala\r\n\r\n"[..],
            &["POST", "/v1/replay"][..],
        ),
        (
            b"DELETE /v1/background HTTP/1.1\r\nHost: koala\r\n\r\n",
            &["POST", "/v1/background"],
        ),
        (
            b"POST /v1/status HTTP/1.1\r\nHost: koala\r\nContent-Length: 0\r\n\r\n",
            &["GET", "/v1/status"],
        ),
    ] {
        let what =
            String::from_utf8_lossy(request.split(|b| *b == b'\r').next().unwrap()).into_owned();
        expect_error(inbound, &what, request, false, 405, words);
        service.still_fine(&what);
    }

    // --- 411: a POST without Content-Length, or chunked.
    expect_error(
        inbound,
        "a POST without Content-Length",
        b"POST /v1/replay HTTP/1.1\r\nHost: koala\r\n\r\n",
        false,
        411,
        &["Content-Length"],
    );
    service.still_fine("a POST without Content-Length");
    expect_error(
        inbound,
        "a chunked POST",
        b"POST /v1/replay HTTP/1.1\r\nHost: koala\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        false,
        411,
        &["Content-Length"],
    );
    service.still_fine("a chunked POST");

    // --- 400: a body shorter than its Content-Length.
    let mut request = format!(
        "POST /v1/replay HTTP/1.1\r\nHost: koala\r\nContent-Length: {}\r\n\r\n",
        good_line.len()
    )
    .into_bytes();
    request.extend_from_slice(&good_line.as_bytes()[..good_line.len() / 2]);
    expect_error(
        inbound,
        "a body cut short",
        &request,
        true,
        400,
        &["body cut short"],
    );
    service.still_fine("a body cut short");

    // --- 400, 431, 505: malformed heads.
    expect_error(
        inbound,
        "a malformed request line",
        b"HELLO\r\n\r\n",
        false,
        400,
        &["malformed request line"],
    );
    service.still_fine("a malformed request line");
    expect_error(
        inbound,
        "a malformed header",
        b"GET /v1/status HTTP/1.1\r\nno colon here\r\n\r\n",
        false,
        400,
        &["malformed header line"],
    );
    service.still_fine("a malformed header");
    // 64 KiB + 1 of head, all of it read by the server (no reset).
    let mut request = b"GET /v1/status HTTP/1.1\r\nX-Big: ".to_vec();
    request.resize(64 * 1024 + 1, b'a');
    expect_error(inbound, "a huge head", &request, false, 431, &["65536"]);
    service.still_fine("a huge head");
    expect_error(
        inbound,
        "HTTP/2.0",
        b"GET /v1/status HTTP/2.0\r\n\r\n",
        false,
        505,
        &["HTTP/2.0"],
    );
    service.still_fine("HTTP/2.0");

    // --- 504: the service takes longer than KOALA_REPLAY_TIMEOUT_MS.
    let slow_request = format!(
        "GET /slow/zzz HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\r\n",
        ports.sut
    );
    let slow = changed(&good_json, |v| {
        v["id"] = json!("slow-session");
        v["inbound"]["request"] = json!(slow_request);
        v["calls"] = json!([]);
    });
    let started = Instant::now();
    let message = expect_error(
        inbound,
        "a service that hangs",
        &post_request("/v1/replay", slow.as_bytes()),
        false,
        504,
        &[
            &format!("within {TIMEOUT_MS} ms"),
            "KOALA_REPLAY_TIMEOUT_MS",
            "0 bytes received",
        ],
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(TIMEOUT_MS) - Duration::from_millis(50),
        "504 after only {took:?}: {message}"
    );
    service.still_fine("a service that hangs");

    // Nothing above made the service call anything unmatched.
    let status = api_status(inbound);
    assert_eq!(status.calls_unmatched, 0, "{status:?}");
    assert_eq!(status.sessions_in_flight, 0, "{status:?}");

    // --- 502: KOALA_SUT_ADDR points at a closed port (another instance).
    let closed = free_port();
    let other_port = free_port();
    let other_ports = ReplayPorts::new(closed);
    let mut other = other_ports
        .apply(
            Spec::python_fixture("replay-service-wrong-sut", "redis_service.py")
                .arg(other_port)
                .args(&recorded.args[1..]),
            "replay",
        )
        .env("KOALA_REPLAY_BACKGROUND", recording.dir.display())
        .env("KOALA_LOG_FILE", dir.join("replay-koala-2.log").display())
        .spawn(&dir);
    wait_until_replay_ready(&mut other, other_ports.inbound, other_port);
    assert_port_closed(closed, "the wrong SUT address");
    let sut = format!("127.0.0.1:{closed}");
    expect_error(
        other_ports.inbound,
        "a closed SUT port",
        &post_request("/v1/replay", good_line.as_bytes()),
        false,
        502,
        &[&sut, "KOALA_SUT_ADDR"],
    );
    let status = api_status(other_ports.inbound);
    assert_eq!(status.sut, sut, "{status:?}");
    assert!(
        other.exited().is_none() && process_alive(other.pid()),
        "{}",
        other.output_report()
    );
    service.still_fine("a closed SUT port (on another instance)");
    other.stop();
    service.program.stop();
}
