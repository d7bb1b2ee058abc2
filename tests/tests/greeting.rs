//! A dependency that speaks first: its greeting is a call with an empty
//! request, in the session that opened the connection, or, when the
//! connection was opened at start-up, in the process's background record.

use std::collections::BTreeSet;

use koala_tests::*;

const GREETING: &[u8] = b"220 koala-greeting\r\n";

struct Run {
    sessions: Vec<Session>,
    background: Vec<Session>,
    greeting_peer: String,
    /// (id, client address, request, response) in the order sent.
    sent: Vec<(String, String, Vec<u8>, Vec<u8>)>,
}

/// Starts the greeting server and the recorded service in `mode`, sends
/// `ids` as requests on one keep-alive connection, and returns the sessions.
fn run(test: &str, mode: &str, ids: &[&str]) -> Run {
    let dir = TestDir::new(test);
    let record = dir.join("record");

    let greeting_port = free_port();
    let mut greeter = Spec::python_fixture("greeting_server", "greeting_server.py")
        .arg(greeting_port)
        .spawn(&dir);
    greeter.wait_for_port(greeting_port);

    let port = free_port();
    let mut service = Spec::python_fixture("service", "greeting_service.py")
        .args([
            port.to_string(),
            greeting_port.to_string(),
            mode.to_string(),
        ])
        .record_to(&record)
        .spawn(&dir);
    service.wait_for_port(port);

    let mut stream = connect(port);
    let client = stream.local_addr().unwrap().to_string();
    let mut sent = Vec::new();
    for id in ids {
        let request = format!("GET /hello/{id} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n");
        let response = http_exchange(&mut stream, request.as_bytes());
        assert_bytes(
            &response,
            &hello_response("220 koala-greeting", id),
            &format!("response to {id}"),
        );
        sent.push((
            id.to_string(),
            client.clone(),
            request.into_bytes(),
            response,
        ));
    }
    drop(stream);

    wait_for_sessions(&record, ids.len());
    service.stop_cleanly();
    let mut sessions = read_sessions(&record);
    assert_eq!(
        sessions.len(),
        ids.len(),
        "one session per request:\n{}",
        describe_dir(&record)
    );
    sessions.sort_by_key(|s| s.inbound.request_ns);
    for (session, (_, client, request, response)) in sessions.iter().zip(&sent) {
        assert_eq!(session.pid, service.pid(), "{}", show(session));
        assert_exchange(&session.inbound, client, request, response, &show(session));
    }
    Run {
        sessions,
        background: background_records(&record),
        greeting_peer: format!("127.0.0.1:{greeting_port}"),
        sent,
    }
}

/// Asserts `call` is the greeting call: an empty request answered with
/// [`GREETING`], no request time.
#[track_caller]
fn assert_greeting(call: &Exchange, peer: &str, what: &str) {
    assert_exchange(call, peer, b"", GREETING, &format!("{what}\ngreeting"));
    assert!(call.is_greeting(), "{what}");
    assert_eq!(call.request_ns, 0, "{what}: a greeting has no request time");
}

fn hello(id: &str) -> Vec<u8> {
    format!("HELLO {id}\r\n").into_bytes()
}

fn reply(id: &str) -> Vec<u8> {
    format!("250 ok HELLO {id}\r\n").into_bytes()
}

/// Each request connects, reads the greeting, sends a line: its session has
/// the greeting call, then the line call, on that one connection.
#[test]
fn greeting_per_request() {
    let run = run("greeting_per_request", "per-request", &["g1", "g2", "g3"]);
    let mut locals = BTreeSet::new();
    for (session, (id, ..)) in run.sessions.iter().zip(&run.sent) {
        let what = show(session);
        assert_eq!(session.calls.len(), 2, "{what}");
        let greeting = &session.calls[0];
        assert_greeting(greeting, &run.greeting_peer, &what);
        let line = &session.calls[1];
        assert_exchange(
            line,
            &run.greeting_peer,
            &hello(id),
            &reply(id),
            &format!("{what}\nline"),
        );
        assert_eq!(greeting.local, line.local, "{what}: one connection");
        locals.insert(line.local.clone());
    }
    assert_eq!(
        locals.len(),
        run.sent.len(),
        "a new connection per request: {locals:?}"
    );
}

/// The connection is opened and its greeting read at start-up, outside any
/// session: the greeting is start-up traffic, in the background record, and
/// each session holds only its own line on that connection.
#[test]
fn greeting_at_startup() {
    let run = run("greeting_at_startup", "startup", &["s1", "s2", "s3"]);
    assert_eq!(run.background.len(), 1, "one background record");
    let background = &run.background[0];
    let what = show(background);
    assert_eq!(background.calls.len(), 1, "{what}: only the greeting");
    let greeting = &background.calls[0];
    assert_greeting(greeting, &run.greeting_peer, &what);
    // Written when idle for a second, or at exit if the test was quicker.
    assert!(
        matches!(background.end, Some(EndReason::Idle | EndReason::Exit)),
        "{what}"
    );
    for (session, (id, ..)) in run.sessions.iter().zip(&run.sent) {
        let what = show(session);
        assert_eq!(session.calls.len(), 1, "{what}: only the line");
        let line_call = &session.calls[0];
        assert_exchange(
            line_call,
            &run.greeting_peer,
            &hello(id),
            &reply(id),
            &format!("{what}\nline"),
        );
        assert_eq!(
            line_call.local, greeting.local,
            "{what}: the start-up connection"
        );
    }
}
