//! A slow request is one session: while the service has not answered a
//! request at all (its thread is working, or waiting on a dependency), or
//! waits on a call it made after its last write to the client, the session
//! is not idle, however long KOALA_SESSION_IDLE_MS is exceeded. A request
//! that is never answered still ends, after 60 idle times.
//!
//! The idle time here is 100 ms, the slow answers take 600 ms: six idle
//! times, where the recorder used to end the session with the request
//! alone and lose the answer.

use std::time::{Duration, Instant};

use koala_tests::*;

const IDLE_MS: u64 = 100;
/// How long a request stays unanswered before its session ends anyway:
/// 60 idle times (docs/environment.md).
const CEILING: Duration = Duration::from_millis(60 * IDLE_MS);

/// `backend PORT`: HTTP/1.0, answers `GET /slow/ITEM` after 600 ms with
/// `slow ITEM`, then closes. `service PORT BACKEND_PORT`: HTTP/1.1,
/// the path `work/ITEM` answers after 600 ms of work; `/call/ITEM` answers with
/// the backend's whole slow answer; `/stream/ITEM` writes its head, then calls
/// the backend for the body; `/stuck/ITEM` never answers.
const PROGRAMS: &str = r#"
import signal, socket, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DELAY = 0.6


def read_until_close(sock):
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


class Backend(BaseHTTPRequestHandler):
    def do_GET(self):
        time.sleep(DELAY)
        self.wfile.write(b"HTTP/1.0 200 OK\r\n\r\nslow " + self.path.rsplit("/", 1)[-1].encode())

    def log_message(self, *args):
        pass


class Service(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self, body):
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    def call(self, item, backend=None):
        with backend or socket.create_connection(("127.0.0.1", BACKEND)) as backend:
            backend.sendall(b"GET /slow/%s HTTP/1.0\r\n\r\n" % item)
            return read_until_close(backend)

    def do_GET(self):
        kind, item = self.path.strip("/").split("/")
        item = item.encode()
        if kind == "work":
            time.sleep(DELAY)
            self.answer(b"worked " + item)
        elif kind == "call":
            self.answer(self.call(item))
        elif kind == "stream":
            self.close_connection = True
            # Connected first: the call is sent right after the head.
            backend = socket.create_connection(("127.0.0.1", BACKEND))
            self.wfile.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nhead|")
            self.wfile.write(self.call(item, backend))
        else:
            threading.Event().wait()

    def log_message(self, *args):
        pass


signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
role, port = sys.argv[1], int(sys.argv[2])
if role == "service":
    BACKEND = int(sys.argv[3])
handler = {"backend": Backend, "service": Service}[role]
server = ThreadingHTTPServer(("127.0.0.1", port), handler)
server.daemon_threads = True
server.serve_forever()
"#;

fn request(kind: &str, item: &str) -> Vec<u8> {
    format!("GET /{kind}/{item} HTTP/1.1\r\nHost: svc\r\n\r\n").into_bytes()
}

fn sized(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn backend_request(item: &str) -> Vec<u8> {
    format!("GET /slow/{item} HTTP/1.0\r\n\r\n").into_bytes()
}

fn backend_response(item: &str) -> Vec<u8> {
    format!("HTTP/1.0 200 OK\r\n\r\nslow {item}").into_bytes()
}

/// `/call/ITEM`'s answer: the backend's whole answer as the body.
fn call_answer(item: &str) -> Vec<u8> {
    let body = backend_response(item);
    let mut answer =
        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
    answer.extend(body);
    answer
}

/// The one session whose request is `request`.
#[track_caller]
fn session_of<'a>(
    sessions: &'a [koala_session::Session],
    request: &[u8],
) -> &'a koala_session::Session {
    let found: Vec<_> = sessions
        .iter()
        .filter(|s| s.inbound.request.as_bytes() == request)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "sessions of {:?}:\n{}",
        String::from_utf8_lossy(request),
        sessions.iter().map(show).collect::<Vec<_>>().join("\n")
    );
    found[0]
}

#[test]
fn slow_requests_are_one_session_and_stuck_ones_end() {
    let dir = TestDir::new("record_slow_requests");
    let record = dir.join("record");
    let script = dir.join("programs.py");
    std::fs::write(&script, PROGRAMS).unwrap();
    let program = |name: &str, args: &[String]| {
        Spec::new(name, python())
            .arg("-u")
            .arg(script.display())
            .args(args)
    };
    let (backend_port, port) = (free_port(), free_port());
    let mut backend = program("backend", &["backend".into(), backend_port.to_string()]).spawn(&dir);
    backend.wait_for_port(backend_port);
    let mut service = program(
        "service",
        &["service".into(), port.to_string(), backend_port.to_string()],
    )
    .record_to(&record)
    .env("KOALA_SESSION_IDLE_MS", IDLE_MS)
    .spawn(&dir);
    service.wait_for_port(port);

    // The three slow answers, each on its own connection, closed after it.
    let mut stream = connect(port);
    let answer = http_exchange(&mut stream, &request("work", "w1"));
    assert_bytes(&answer, &sized("worked w1"), "work answer");
    drop(stream);
    let mut stream = connect(port);
    let answer = http_exchange(&mut stream, &request("call", "c1"));
    assert_bytes(&answer, &call_answer("c1"), "call answer");
    drop(stream);
    let mut stream = connect(port);
    let answer = http_exchange(&mut stream, &request("stream", "s1"));
    let mut streamed = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nhead|".to_vec();
    streamed.extend(backend_response("s1"));
    assert_bytes(&answer, &streamed, "streamed answer");
    drop(stream);

    // A request never answered, its connection kept open.
    let mut stuck = connect(port);
    let sent_at = Instant::now();
    std::io::Write::write_all(&mut stuck, &request("stuck", "x1")).unwrap();

    let sessions = wait_for_sessions(&record, 3);
    let work = session_of(&sessions, &request("work", "w1"));
    assert_bytes(
        work.inbound.response.as_bytes(),
        &sized("worked w1"),
        "work: recorded answer",
    );
    assert!(work.calls.is_empty());
    let call = session_of(&sessions, &request("call", "c1"));
    assert_bytes(
        call.inbound.response.as_bytes(),
        &call_answer("c1"),
        "call: recorded answer",
    );
    assert_eq!(call.calls.len(), 1, "{}", show(call));
    assert_exchange(
        &call.calls[0],
        &format!("127.0.0.1:{backend_port}"),
        &backend_request("c1"),
        &backend_response("c1"),
        "call: its backend call",
    );
    let stream = session_of(&sessions, &request("stream", "s1"));
    assert_bytes(
        stream.inbound.response.as_bytes(),
        &streamed,
        "stream: recorded answer",
    );
    assert_eq!(stream.calls.len(), 1, "{}", show(stream));
    assert_exchange(
        &stream.calls[0],
        &format!("127.0.0.1:{backend_port}"),
        &backend_request("s1"),
        &backend_response("s1"),
        "stream: its backend call",
    );
    for session in [work, call, stream] {
        assert_eq!(
            session.end,
            Some(koala_session::EndReason::Close),
            "{}",
            show(session)
        );
    }

    // The stuck request ends at the ceiling, not at the idle time.
    let deadline = sent_at + CEILING + Duration::from_secs(20);
    let (sessions, waited) = loop {
        let sessions = read_sessions(&record);
        let waited = sent_at.elapsed();
        if sessions.len() >= 4 {
            break (sessions, waited);
        }
        assert!(
            Instant::now() < deadline,
            "the stuck request's session was not written within {:?}\n{}",
            CEILING + Duration::from_secs(20),
            describe_dir(&record)
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(sessions.len(), 4, "{}", describe_dir(&record));
    let stuck_session = session_of(&sessions, &request("stuck", "x1"));
    assert!(
        waited >= CEILING,
        "the stuck request's session ended after {waited:?}, before {CEILING:?}"
    );
    assert_eq!(stuck_session.end, Some(koala_session::EndReason::Idle));
    assert!(stuck_session.inbound.response.as_bytes().is_empty());
    drop(stuck);
    service.stop();
    backend.stop();
}
