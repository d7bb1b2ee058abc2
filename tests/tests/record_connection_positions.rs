//! What replay needs to open and close connections where the recording did,
//! recorded from real programs: a threaded Python HTTP service calls an
//! HTTP/1.0 backend (a new connection per call, closed by the backend after
//! its response) and a keep-alive backend (one connection opened by the
//! first request, used by every later one). Each call carries its
//! connection's id and its position on it; the HTTP/1.0 calls are marked
//! `closed`. Two pipelined requests are two sessions, each with its own
//! calls. Readiness probes (connect and close, connect and send a newline)
//! are not written, and counted in the exit summary.

use std::collections::BTreeSet;
use std::io::Write;

use koala_tests::*;

/// The three programs: `backend10 PORT`, `backend11 PORT` and
/// `service PORT BACKEND10_PORT BACKEND11_PORT`. The backends write fixed
/// bytes (no Date header) so the test knows every byte of every call.
const PROGRAMS: &str = r#"
import signal, socket, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Backend10(BaseHTTPRequestHandler):
    # http.server's default protocol: HTTP/1.0, the connection is closed
    # after each response.
    def do_GET(self):
        item = self.path.rsplit("/", 1)[-1]
        self.wfile.write(b"HTTP/1.0 200 OK\r\n\r\nold " + item.encode())

    def log_message(self, *args):
        pass


class Backend11(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = b"new " + self.path.rsplit("/", 1)[-1].encode()
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    def log_message(self, *args):
        pass


def read_until_close(sock):
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def read_sized_response(sock):
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


class Service(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    pooled = None
    lock = threading.Lock()

    def do_GET(self):
        item = self.path.rsplit("/", 1)[-1]
        with socket.create_connection(("127.0.0.1", BACKEND10)) as old:
            old.sendall(b"GET /old/%s HTTP/1.0\r\n\r\n" % item.encode())
            old_answer = read_until_close(old)
        with Service.lock:
            if Service.pooled is None:
                Service.pooled = socket.create_connection(("127.0.0.1", BACKEND11))
            Service.pooled.sendall(b"GET /new/%s HTTP/1.1\r\nHost: b\r\n\r\n" % item.encode())
            new_answer = read_sized_response(Service.pooled)
        body = old_answer + b"|" + new_answer
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    def log_message(self, *args):
        pass


signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
role, port = sys.argv[1], int(sys.argv[2])
if role == "service":
    BACKEND10, BACKEND11 = int(sys.argv[3]), int(sys.argv[4])
handler = {"backend10": Backend10, "backend11": Backend11, "service": Service}[role]
ThreadingHTTPServer(("127.0.0.1", port), handler).serve_forever()
"#;

/// Requests one at a time on a keep-alive connection, then two pipelined
/// (sent together) on another.
const ONE_AT_A_TIME: usize = 3;
const PIPELINED: usize = 2;
const REQUESTS: usize = ONE_AT_A_TIME + PIPELINED;

fn item_request(id: &str) -> String {
    format!("GET /item/{id} HTTP/1.1\r\nHost: svc\r\n\r\n")
}

fn old_request(id: &str) -> Vec<u8> {
    format!("GET /old/{id} HTTP/1.0\r\n\r\n").into_bytes()
}

fn old_response(id: &str) -> Vec<u8> {
    format!("HTTP/1.0 200 OK\r\n\r\nold {id}").into_bytes()
}

fn new_request(id: &str) -> Vec<u8> {
    format!("GET /new/{id} HTTP/1.1\r\nHost: b\r\n\r\n").into_bytes()
}

fn new_response(id: &str) -> Vec<u8> {
    let body = format!("new {id}");
    format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn service_response(id: &str) -> Vec<u8> {
    let mut body = old_response(id);
    body.push(b'|');
    body.extend(new_response(id));
    let mut response =
        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
    response.extend(body);
    response
}

#[test]
fn calls_carry_connection_positions_and_closes_and_probes_are_not_sessions() {
    let dir = TestDir::new("record_connection_positions");
    let record = dir.join("record");
    let script = dir.join("programs.py");
    std::fs::write(&script, PROGRAMS).unwrap();
    let program = |name: &str, args: &[String]| {
        Spec::new(name, python())
            .arg("-u")
            .arg(script.display())
            .args(args)
    };

    let (port10, port11, port) = (free_port(), free_port(), free_port());
    let mut backend10 = program("backend10", &["backend10".into(), port10.to_string()]).spawn(&dir);
    let mut backend11 = program("backend11", &["backend11".into(), port11.to_string()]).spawn(&dir);
    backend10.wait_for_port(port10);
    backend11.wait_for_port(port11);
    let mut service = program(
        "service",
        &[
            "service".into(),
            port.to_string(),
            port10.to_string(),
            port11.to_string(),
        ],
    )
    .record_to(&record)
    .env("KOALA_LOG_FILE", "stderr")
    .spawn(&dir);
    service.wait_for_port(port);

    let ids: Vec<String> = (0..REQUESTS).map(|i| format!("i{i}")).collect();
    let mut stream = connect(port);
    for id in &ids[..ONE_AT_A_TIME] {
        let response = http_exchange(&mut stream, item_request(id).as_bytes());
        assert_bytes(
            &response,
            &service_response(id),
            &format!("response to {id}"),
        );
    }
    drop(stream);
    // Pipelined: the service reads both requests at once and answers them
    // in turn, each after its own calls.
    let mut stream = connect(port);
    let pipelined: String = ids[ONE_AT_A_TIME..]
        .iter()
        .map(|id| item_request(id))
        .collect();
    stream.write_all(pipelined.as_bytes()).unwrap();
    for id in &ids[ONE_AT_A_TIME..] {
        let response = read_http_response(&mut stream).unwrap();
        assert_bytes(
            &response,
            &service_response(id),
            &format!("response to {id}"),
        );
    }
    drop(stream);
    wait_for_sessions(&record, REQUESTS);

    // Readiness probes: connect and close; connect and send a newline (the
    // service gives up on the empty request line and closes).
    drop(connect(port));
    let mut probe = connect(port);
    probe.write_all(b"\n").unwrap();
    assert_eq!(read_to_close(&mut probe), b"", "no answer to a newline");

    service.stop_cleanly();
    let mut sessions = read_sessions(&record);
    assert_eq!(
        sessions.len(),
        REQUESTS,
        "only the requests are sessions:\n{}",
        describe_dir(&record)
    );
    sessions.sort_by_key(|s| s.inbound.request_ns);
    let old_peer = format!("127.0.0.1:{port10}");
    let new_peer = format!("127.0.0.1:{port11}");
    let mut old_conns = BTreeSet::new();
    let mut new_conns = BTreeSet::new();
    for (index, (session, id)) in sessions.iter().zip(&ids).enumerate() {
        let what = show(session);
        assert_bytes(
            session.inbound.request.as_bytes(),
            item_request(id).as_bytes(),
            &format!("{what}\ninbound request"),
        );
        assert_bytes(
            session.inbound.response.as_bytes(),
            &service_response(id),
            &format!("{what}\ninbound response"),
        );
        assert_eq!(
            (
                session.inbound.conn,
                session.inbound.seq,
                session.inbound.closed
            ),
            (None, None, false),
            "{what}: the inbound exchange has no position"
        );
        assert_eq!(session.calls.len(), 2, "{what}");
        let (old, new) = (&session.calls[0], &session.calls[1]);
        assert_exchange(old, &old_peer, &old_request(id), &old_response(id), &what);
        assert_exchange(new, &new_peer, &new_request(id), &new_response(id), &what);
        // HTTP/1.0: a new connection per call, closed by the backend.
        assert_eq!(
            old.seq,
            Some(0),
            "{what}: the HTTP/1.0 call opens its connection"
        );
        assert!(
            old.closed,
            "{what}: the HTTP/1.0 backend closed after its response"
        );
        old_conns.insert(old.conn.expect("a connection id"));
        // Keep-alive: one connection, positions counted across sessions.
        assert_eq!(
            new.seq,
            Some(index as u32),
            "{what}: position on the pooled connection"
        );
        assert!(!new.closed, "{what}: the keep-alive backend did not close");
        new_conns.insert(new.conn.expect("a connection id"));
    }
    assert_eq!(
        old_conns.len(),
        REQUESTS,
        "one HTTP/1.0 connection per call"
    );
    assert_eq!(new_conns.len(), 1, "one keep-alive connection");
    assert!(old_conns.is_disjoint(&new_conns));
    assert!(background_records(&record).is_empty());

    let log = service.stderr();
    let summary = log
        .lines()
        .find(|line| line.contains("koala recording summary"))
        .unwrap_or_else(|| panic!("no summary line in the log:\n{log}"));
    assert!(
        summary.contains(&format!(" sessions_written={REQUESTS} ")),
        "{summary}"
    );
    assert!(
        summary.contains(" empty_sessions=1 "),
        "the newline probe: {summary}"
    );
}
