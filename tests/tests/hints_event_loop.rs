//! A single-threaded asyncio service (and a Node `http` service) serving
//! three requests at once, each awaiting its own calls to a real
//! redis-server and to a backend: with helper hints
//! (`helpers/koala_hint.py`, `helpers/koala_hint.js`) every session holds
//! exactly its own calls; without them, a call sent after the loop moved on
//! to another request lands in that request's session, as
//! `docs/helper-hints.md` says.
//!
//! The interleaving is driven by the test, not by timing: the backend holds
//! its answers to `ev-a` and `ev-b` until the test releases them, and the
//! test sends each request only once the backend has seen the previous
//! one's call. So the loop reads A, B, C in this order, C runs to its end,
//! then B resumes and ends, then A.

use std::net::TcpStream;

use koala_tests::replay::*;
use koala_tests::*;

const A: &str = "ev-a";
const B: &str = "ev-b";
const C: &str = "ev-c";

struct Request {
    id: &'static str,
    client: String,
    request: Vec<u8>,
    response: Vec<u8>,
}

struct Run {
    /// Kept so a replay can use the recording; the dependencies are stopped.
    dir: TestDir,
    service_port: u16,
    service_pid: u32,
    sessions: Vec<Session>,
    background: Vec<Session>,
    requests: Vec<Request>,
    redis_port: u16,
    redis_peer: String,
    backend_port: u16,
    backend_peer: String,
}

impl Run {
    /// The session whose inbound request is `id`'s.
    fn session(&self, id: &str) -> &Session {
        let request = &self.requests.iter().find(|r| r.id == id).unwrap().request;
        let found: Vec<&Session> = self
            .sessions
            .iter()
            .filter(|s| s.inbound.request.as_bytes() == request.as_slice())
            .collect();
        assert_eq!(
            found.len(),
            1,
            "one session for {id}:\n{}",
            self.sessions
                .iter()
                .map(show)
                .collect::<Vec<_>>()
                .join("\n")
        );
        found[0]
    }
}

/// The service under test.
#[derive(Clone, Copy, PartialEq)]
enum Server {
    /// `hints_event_loop_server.py`: asyncio.
    Asyncio,
    /// `hints_node_server.js`: Node `http`.
    Node,
}

impl Server {
    fn spec(self) -> Spec {
        let command = self.command();
        Spec::new("service", &command[0]).args(&command[1..])
    }

    fn program(self) -> &'static str {
        match self {
            Server::Asyncio => "python3",
            Server::Node => "node",
        }
    }

    /// The program and its arguments before `PORT ...`: how the test and
    /// `koala replay ... -- CMD` start it.
    fn command(self) -> Vec<String> {
        match self {
            Server::Asyncio => vec![
                python().display().to_string(),
                "-u".to_string(),
                fixture("hints_event_loop_server.py").display().to_string(),
            ],
            Server::Node => vec![
                require_program("node", "nodejs").display().to_string(),
                fixture("hints_node_server.js").display().to_string(),
            ],
        }
    }

    fn item_response(self, id: &str) -> Vec<u8> {
        match self {
            Server::Asyncio => item_response(id, 1),
            Server::Node => item_response_with(
                id,
                1,
                "Connection: keep-alive\r\nKeep-Alive: timeout=30\r\n",
            ),
        }
    }
}

fn send(stream: &mut TcpStream, request: &[u8]) {
    use std::io::Write;
    stream.write_all(request).expect("send request");
}

fn run(test: &str, server: Server, mode: &str) -> Run {
    let dir = TestDir::new(test);
    let record = dir.join("record");

    let (_redis, redis_port) = start_redis(&dir);
    seed_items(redis_port, &[A, B, C]);
    let backend = HintsBackend::start(&dir, &[A, B]);
    let backend_port = backend.port;

    let port = free_port();
    let mut service = server
        .spec()
        .args([
            port.to_string(),
            redis_port.to_string(),
            backend_port.to_string(),
            mode.to_string(),
        ])
        .record_to(&record)
        // No session may end for idleness while the test holds a request.
        .env("KOALA_SESSION_IDLE_MS", 10_000)
        .spawn(&dir);
    service.wait_for_port(port);

    let mut clients: Vec<(&'static str, TcpStream)> = Vec::new();
    let mut requests = Vec::new();
    let mut start = |id: &'static str, clients: &mut Vec<(&'static str, TcpStream)>| {
        let mut stream = connect(port);
        let request = item_request(port, id);
        send(&mut stream, &request);
        requests.push(Request {
            id,
            client: stream.local_addr().unwrap().to_string(),
            request,
            response: Vec::new(),
        });
        clients.push((id, stream));
    };

    // A, then B once A's backend call is held, then C once B's is held:
    // the loop has read all three requests before A or B can go on.
    start(A, &mut clients);
    backend.wait_for_call(A);
    start(B, &mut clients);
    backend.wait_for_call(B);
    start(C, &mut clients);

    let mut finish = |id: &str, clients: &mut Vec<(&'static str, TcpStream)>| {
        let stream = &mut clients.iter_mut().find(|(i, _)| *i == id).unwrap().1;
        let response = read_http_response(stream).expect("read response");
        assert_bytes(
            &response,
            &server.item_response(id),
            &format!("response to {id}\n{}", service.output_report()),
        );
        requests.iter_mut().find(|r| r.id == id).unwrap().response = response;
    };
    // C is not held: it completes while A and B wait.
    finish(C, &mut clients);
    // The backend's own account: each held call had the others in flight.
    backend.release(B, &[A, C]);
    finish(B, &mut clients);
    backend.release(A, &[B, C]);
    finish(A, &mut clients);

    if mode == "hints" {
        // Each session is ended by its shutdown hint, with the connections
        // still open: the sessions are written without a close.
        wait_for_sessions(&record, 3);
        drop(clients);
    } else {
        drop(clients);
        wait_for_sessions(&record, 3);
    }
    service.stop_cleanly();

    let sessions = read_sessions(&record);
    assert_eq!(
        sessions.len(),
        3,
        "one session per request:\n{}",
        describe_dir(&record)
    );
    for session in &sessions {
        assert_eq!(session.pid, service.pid(), "{}", show(session));
        assert_eq!(session.program, server.program(), "{}", show(session));
    }
    Run {
        dir,
        service_port: port,
        service_pid: service.pid(),
        sessions,
        background: background_records(&record),
        requests,
        redis_port,
        redis_peer: format!("127.0.0.1:{redis_port}"),
        backend_port,
        backend_peer: format!("127.0.0.1:{backend_port}"),
    }
}

/// The calls `id`'s coroutine makes, by name.
enum Call {
    Get(&'static str),
    Backend(&'static str),
    Incr(&'static str),
}

/// Asserts the inbound exchange, the end reason and exactly `calls`, in
/// this order, with their exact bytes.
fn assert_session(run: &Run, id: &str, end: EndReason, calls: &[Call]) {
    let session = run.session(id);
    let what = format!("session of {id}: {}", show(session));
    let sent = run.requests.iter().find(|r| r.id == id).unwrap();
    assert_exchange(
        &session.inbound,
        &sent.client,
        &sent.request,
        &sent.response,
        &format!("{what}\ninbound"),
    );
    assert_eq!(session.end, Some(end), "{what}");
    let names: Vec<String> = calls
        .iter()
        .map(|c| match c {
            Call::Get(i) => format!("GET {i}"),
            Call::Backend(i) => format!("backend {i}"),
            Call::Incr(i) => format!("INCR {i}"),
        })
        .collect();
    assert_eq!(
        session.calls.len(),
        calls.len(),
        "{what}\nexpected exactly the calls {names:?}"
    );
    for ((call, expected), name) in session.calls.iter().zip(calls).zip(&names) {
        let what = format!("{what}\ncall {name}");
        match expected {
            Call::Get(i) => assert_exchange(
                call,
                &run.redis_peer,
                &resp_command(&["GET", &format!("item:{i}")]),
                &resp_bulk(&format!("value-{i}")),
                &what,
            ),
            Call::Incr(i) => assert_exchange(
                call,
                &run.redis_peer,
                &resp_command(&["INCR", &format!("hits:{i}")]),
                b":1\r\n",
                &what,
            ),
            Call::Backend(i) => assert_exchange(
                call,
                &run.backend_peer,
                format!(
                    "GET /backend/{i} HTTP/1.1\r\nHost: {}\r\n\r\n",
                    run.backend_peer
                )
                .as_bytes(),
                &backend_response(i),
                &what,
            ),
        }
    }
    for pair in session.calls.windows(2) {
        assert!(pair[0].request_ns <= pair[1].request_ns, "{what}: in order");
    }
}

/// The start-up PING, alone in the background record, on the connection
/// every session's redis calls share.
fn assert_background(run: &Run) {
    assert_eq!(
        run.background.len(),
        1,
        "one background record: {:?}",
        run.background.iter().map(show).collect::<Vec<_>>()
    );
    let record = &run.background[0];
    assert_eq!(record.calls.len(), 1, "only the PING: {}", show(record));
    assert_exchange(
        &record.calls[0],
        &run.redis_peer,
        &resp_command(&["PING"]),
        b"+PONG\r\n",
        &show(record),
    );
    for session in &run.sessions {
        for call in &session.calls {
            if call.peer == run.redis_peer {
                assert_eq!(
                    call.local,
                    record.calls[0].local,
                    "one shared redis connection: {}",
                    show(session)
                );
            }
        }
    }
}

/// With hints: every request's calls, and only them, each session ended
/// by its shutdown hint; all requests read by the one event-loop thread.
fn assert_with_hints(run: &Run) {
    use Call::*;
    assert_session(run, A, EndReason::Hint, &[Get(A), Backend(A), Incr(A)]);
    assert_session(run, B, EndReason::Hint, &[Get(B), Backend(B), Incr(B)]);
    assert_session(run, C, EndReason::Hint, &[Get(C), Backend(C), Incr(C)]);
    assert_background(run);
    let tids: Vec<u32> = run.sessions.iter().map(|s| s.tid).collect();
    assert!(
        tids.iter().all(|&t| t == run.service_pid),
        "one thread (the main thread) read every request: {tids:?}"
    );
}

/// Without hints, a call belongs to the inbound connection the sending
/// thread last read from or wrote to: B's INCR is sent after the loop
/// wrote C's response, A's INCR after it wrote B's. Each lands in the
/// other request's session, which its own session misses; the calls sent
/// before the next request was read stay right.
fn assert_without_hints(run: &Run) {
    use Call::*;
    assert_session(run, A, EndReason::Close, &[Get(A), Backend(A)]);
    assert_session(run, B, EndReason::Close, &[Get(B), Backend(B), Incr(A)]);
    assert_session(
        run,
        C,
        EndReason::Close,
        &[Get(C), Backend(C), Incr(C), Incr(B)],
    );
    assert_background(run);
}

#[test]
fn hints_event_loop() {
    assert_with_hints(&run("hints_event_loop", Server::Asyncio, "hints"));
}

/// Records the hinted server, then replays the recording with redis and the
/// backend stopped: every session passes, every call answered from its own
/// session — one at a time, and with the requests interleaved again on the
/// event loop (`--concurrency 3`).
fn replay_recording(test: &str, server: Server) {
    let run = run(test, server, "hints");
    assert_with_hints(&run);
    assert!(!is_listening(run.redis_port), "redis is stopped");
    assert!(!is_listening(run.backend_port), "the backend is stopped");
    let recording = Recording::read(&run.dir, "record", run.service_port);
    for concurrency in ["1", "3"] {
        let report = format!("r-{concurrency}.json");
        let mut args: Vec<String> = ["replay", "record", "--lib"].map(String::from).to_vec();
        args.push(koala_lib().display().to_string());
        args.extend(["--concurrency", concurrency, "--report", &report, "--"].map(String::from));
        args.extend(server.command());
        args.extend([run.service_port, run.redis_port, run.backend_port].map(|p| p.to_string()));
        args.push("hints".into());
        let replay = run_koala(&run.dir, &format!("replay-{concurrency}"), &args, &[]);
        replay.assert_all_passed(3);
        replay.assert_summary([3, 3, 0, 0], [9, 0, 0, 0]);
        assert_report_all_replayed(&read_report(&run.dir.join(&report)), &recording);
    }
}

#[test]
fn hints_event_loop_replay() {
    replay_recording("hints_event_loop_replay", Server::Asyncio);
}

#[test]
fn hints_event_loop_node_replay() {
    replay_recording("hints_event_loop_node_replay", Server::Node);
}

#[test]
fn hints_event_loop_without_hints() {
    assert_without_hints(&run(
        "hints_event_loop_without_hints",
        Server::Asyncio,
        "no-hints",
    ));
}

/// The same with Node 20 and `helpers/koala_hint.js`.
#[test]
fn hints_event_loop_node() {
    assert_with_hints(&run("hints_event_loop_node", Server::Node, "hints"));
}

#[test]
fn hints_event_loop_node_without_hints() {
    assert_without_hints(&run(
        "hints_event_loop_node_without_hints",
        Server::Node,
        "no-hints",
    ));
}
