//! A Node `http` server (libuv: accept4, read, write/writev, and close via
//! syscall(SYS_close)): one session per request on keep-alive and separate
//! connections; a closed connection ends its session.

use koala_tests::*;

fn response(method: &str, url: &str, body_len: usize, keep_alive: bool) -> Vec<u8> {
    let body = format!("node {method} {url} body={body_len}\n");
    let connection = if keep_alive {
        "Connection: keep-alive\r\nKeep-Alive: timeout=30\r\n"
    } else {
        "Connection: close\r\n"
    };
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{connection}\r\n{body}",
        body.len()
    )
    .into_bytes()
}

struct Done {
    client: String,
    request: Vec<u8>,
    response: Vec<u8>,
    end: EndReason,
}

#[test]
fn node_http() {
    let dir = TestDir::new("node_http");
    let record = dir.join("record");
    let port = free_port();
    let mut node = Spec::new("node", require_program("node", "nodejs"))
        .arg(fixture("node_server.js").display())
        .arg(port)
        .record_to(&record)
        .spawn(&dir);
    node.wait_for_port(port);

    let host = format!("Host: 127.0.0.1:{port}\r\n");
    let mut done = Vec::new();

    // Connection 1: three requests on keep-alive, then the client closes.
    {
        let mut stream = connect(port);
        let client = stream.local_addr().unwrap().to_string();
        let body = "x".repeat(3000);
        let requests = [
            (
                format!("GET /one HTTP/1.1\r\n{host}\r\n"),
                response("GET", "/one", 0, true),
            ),
            (
                format!(
                    "POST /two HTTP/1.1\r\n{host}Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                ),
                response("POST", "/two", body.len(), true),
            ),
            (
                format!("GET /three?q=1 HTTP/1.1\r\n{host}\r\n"),
                response("GET", "/three?q=1", 0, true),
            ),
        ];
        let count = requests.len();
        for (i, (request, expected)) in requests.into_iter().enumerate() {
            let got = http_exchange(&mut stream, request.as_bytes());
            assert_bytes(&got, &expected, &format!("response to {request:?}"));
            let end = if i + 1 == count {
                EndReason::Close
            } else {
                EndReason::NextRequest
            };
            done.push(Done {
                client: client.clone(),
                request: request.into_bytes(),
                response: got,
                end,
            });
        }
    }

    // Connection 2: `Connection: close`: the server closes after answering.
    {
        let mut stream = connect(port);
        let client = stream.local_addr().unwrap().to_string();
        let request = format!("GET /four HTTP/1.1\r\n{host}Connection: close\r\n\r\n");
        let got = http_exchange(&mut stream, request.as_bytes());
        assert_bytes(
            &got,
            &response("GET", "/four", 0, false),
            "response to /four",
        );
        assert!(read_to_close(&mut stream).is_empty(), "server closes");
        done.push(Done {
            client,
            request: request.into_bytes(),
            response: got,
            end: EndReason::Close,
        });
    }

    // Connection 3: one request, then the client closes.
    {
        let mut stream = connect(port);
        let client = stream.local_addr().unwrap().to_string();
        let request = format!("GET /five HTTP/1.1\r\n{host}\r\n");
        let got = http_exchange(&mut stream, request.as_bytes());
        assert_bytes(
            &got,
            &response("GET", "/five", 0, true),
            "response to /five",
        );
        done.push(Done {
            client,
            request: request.into_bytes(),
            response: got,
            end: EndReason::Close,
        });
    }

    // Each closed connection must end its session by itself (well before
    // the idle timeout): wait for all of them while node still runs.
    let mut sessions = wait_for_sessions(&record, done.len());
    node.stop_cleanly();
    let after_exit = read_sessions(&record);
    assert_eq!(
        after_exit.len(),
        done.len(),
        "one session per request:\n{}",
        describe_dir(&record)
    );

    sessions.sort_by_key(|s| s.inbound.request_ns);
    for (session, expected) in sessions.iter().zip(&done) {
        let what = show(session);
        assert_eq!(session.pid, node.pid(), "{what}");
        assert_eq!(session.program, "node", "{what}");
        assert_eq!(session.inbound.local, format!("127.0.0.1:{port}"), "{what}");
        assert_exchange(
            &session.inbound,
            &expected.client,
            &expected.request,
            &expected.response,
            &what,
        );
        assert!(session.calls.is_empty(), "{what}: no calls");
        assert_eq!(session.end, Some(expected.end), "{what}");
    }
}
