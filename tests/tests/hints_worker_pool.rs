//! Worker pools: one thread reads each request, another makes its calls and
//! writes its response. With helper hints (`delegate(id)` before the calls
//! and before the response, `shutdown(id)` after it) every session holds
//! exactly its own calls: in Python (`helpers/koala_hint.py`), in C
//! (`helpers/koala_hint.h`), and in C with the original koala's form (the
//! id in sendto's flags). Without hints, a worker's calls go to the session
//! it touched last, as `docs/helper-hints.md` says.

use std::io::Write;
use std::path::PathBuf;
use std::thread;

use koala_tests::*;

/// The request held at the backend while the others are served.
const HELD: &str = "wp-0";
const OTHERS: [&str; 4] = ["wp-1", "wp-2", "wp-3", "wp-4"];

#[derive(Clone, Copy, PartialEq)]
enum Service {
    Python,
    C,
}

struct Sent {
    id: String,
    client: String,
    request: Vec<u8>,
    response: Vec<u8>,
}

fn build_c(dir: &TestDir) -> PathBuf {
    let binary = dir.join("hints_worker_pool");
    let include = format!("-I{}", workspace_root().join("helpers").display());
    compile_c(
        &fixture("hints_worker_pool.c"),
        &["-O2", "-Wall", "-Werror", "-pthread", &include],
        &binary,
    );
    binary
}

/// One request on a new connection that the service closes after its
/// response.
fn request_close(port: u16, id: &str) -> (std::net::TcpStream, Sent) {
    let mut stream = connect(port);
    let request =
        format!("GET /item/{id} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n")
            .into_bytes();
    stream.write_all(&request).expect("send request");
    let sent = Sent {
        id: id.to_string(),
        client: stream.local_addr().unwrap().to_string(),
        request,
        response: Vec::new(),
    };
    (stream, sent)
}

/// The test's directory, redis seeded for `ids`, and `hints_backend.py`
/// holding its answer to `held`.
struct Setup {
    dir: TestDir,
    _redis: Program,
    redis_port: u16,
    backend: HintsBackend,
}

fn setup(test: &str, held: &[&str], ids: &[&str]) -> Setup {
    let dir = TestDir::new(test);
    let (redis, redis_port) = start_redis(&dir);
    seed_items(redis_port, ids);
    let backend = HintsBackend::start(&dir, held);
    Setup {
        dir,
        _redis: redis,
        redis_port,
        backend,
    }
}

/// Runs a worker pool of 2 with hints: `wp-0` is held at the backend (one
/// worker waits on it) while 4 more requests, from 2 concurrent clients,
/// are read by the reader thread and served by the other worker. Then
/// `wp-0` is released. Asserts every session exactly.
fn run_with_hints(test: &str, service: Service, c_mode: &str) {
    let all: Vec<&str> = [HELD].iter().chain(&OTHERS).copied().collect();
    let setup = setup(test, &[HELD], &all);
    let record = setup.dir.join("record");
    let port = free_port();
    let args = [
        port.to_string(),
        setup.redis_port.to_string(),
        setup.backend.port.to_string(),
        "2".to_string(),
    ];
    let spec = match service {
        Service::Python => Spec::python_fixture("service", "hints_worker_pool_service.py")
            .args(args)
            .arg("hints"),
        Service::C => Spec::new("service", build_c(&setup.dir))
            .args(args)
            .arg(c_mode),
    };
    let mut service_program = spec
        .record_to(&record)
        .env("KOALA_SESSION_IDLE_MS", 10_000)
        .spawn(&setup.dir);
    service_program.wait_for_port(port);

    let (mut held_stream, mut held_sent) = request_close(port, HELD);
    setup.backend.wait_for_call(HELD);
    let clients: Vec<_> = [&OTHERS[..2], &OTHERS[2..]]
        .into_iter()
        .map(|ids| {
            let ids: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
            thread::spawn(move || {
                ids.iter()
                    .map(|id| {
                        let (mut stream, mut sent) = request_close(port, id);
                        sent.response = read_to_close(&mut stream);
                        sent
                    })
                    .collect::<Vec<Sent>>()
            })
        })
        .collect();
    let mut sent: Vec<Sent> = clients
        .into_iter()
        .flat_map(|c| c.join().expect("client thread"))
        .collect();
    // The backend's account: the others were served while the held call
    // waited.
    setup.backend.release(HELD, &OTHERS);
    held_sent.response = read_to_close(&mut held_stream);
    sent.push(held_sent);
    for s in &sent {
        assert_bytes(
            &s.response,
            &item_response_with(&s.id, 1, "Connection: close\r\n"),
            &format!("response to {}\n{}", s.id, service_program.output_report()),
        );
    }

    wait_for_sessions(&record, sent.len());
    service_program.stop_cleanly();
    assert_eq!(
        service_program.stderr(),
        "",
        "the service reported an error"
    );
    let sessions = read_sessions(&record);
    assert_eq!(
        sessions.len(),
        sent.len(),
        "one session per request:\n{}",
        describe_dir(&record)
    );

    let redis_peer = format!("127.0.0.1:{}", setup.redis_port);
    let backend_peer = format!("127.0.0.1:{}", setup.backend.port);
    for s in &sent {
        let session = sessions
            .iter()
            .find(|session| session.inbound.request.as_bytes() == s.request.as_slice())
            .unwrap_or_else(|| panic!("no session for {}:\n{}", s.id, describe_dir(&record)));
        let what = format!("session of {}: {}", s.id, show(session));
        assert_eq!(session.pid, service_program.pid(), "{what}");
        assert_eq!(
            session.tid,
            service_program.pid(),
            "{what}: read by the main (reader) thread"
        );
        assert_exchange(
            &session.inbound,
            &s.client,
            &s.request,
            &s.response,
            &format!("{what}\ninbound"),
        );
        assert_eq!(session.end, Some(EndReason::Hint), "{what}");
        assert_eq!(session.calls.len(), 3, "{what}: exactly its 3 calls");
        assert_exchange(
            &session.calls[0],
            &redis_peer,
            &resp_command(&["GET", &format!("item:{}", s.id)]),
            &resp_bulk(&format!("value-{}", s.id)),
            &format!("{what}\nredis GET"),
        );
        let backend_request = match service {
            Service::Python => format!(
                "GET /backend/{} HTTP/1.1\r\nHost: {backend_peer}\r\nAccept-Encoding: identity\r\n\r\n",
                s.id
            ),
            Service::C => format!(
                "GET /backend/{} HTTP/1.1\r\nHost: {backend_peer}\r\n\r\n",
                s.id
            ),
        };
        assert_exchange(
            &session.calls[1],
            &backend_peer,
            backend_request.as_bytes(),
            &backend_response(&s.id),
            &format!("{what}\nbackend"),
        );
        let incr = match service {
            // redis-py sends INCR as INCRBY <key> 1.
            Service::Python => resp_command(&["INCRBY", &format!("hits:{}", s.id), "1"]),
            Service::C => resp_command(&["INCR", &format!("hits:{}", s.id)]),
        };
        assert_exchange(
            &session.calls[2],
            &redis_peer,
            &incr,
            b":1\r\n",
            &format!("{what}\nredis INCR"),
        );
    }

    // Start-up traffic only in the background record: no request's call.
    let background = background_records(&record);
    assert_eq!(background.len(), 1, "{}", describe_dir(&record));
    let ping = background[0].calls.last().expect("the start-up PING");
    assert_exchange(
        ping,
        &redis_peer,
        &resp_command(&["PING"]),
        b"+PONG\r\n",
        &show(&background[0]),
    );
    for call in &background[0].calls {
        assert_eq!(
            call.peer,
            redis_peer,
            "only start-up redis traffic: {}",
            show(&background[0])
        );
        assert!(
            find(call.request.as_bytes(), b"item:").is_none()
                && find(call.request.as_bytes(), b"hits:").is_none(),
            "a request's call in the background record: {}",
            show(&background[0])
        );
    }
}

#[test]
fn hints_worker_pool() {
    run_with_hints("hints_worker_pool", Service::Python, "");
}

/// The same pool in C, with `koala_hint.h`.
#[test]
fn hints_worker_pool_c() {
    run_with_hints("hints_worker_pool_c", Service::C, "header");
}

/// The original koala's form: `sendto(fd, "to-koala!set-delegated-from-
/// thread-id\n", len, id, ...)`, the id in the flags (and the same for
/// thread-shutdown). Works like the body form; every such sendto returned
/// the full length (else the service says so on stderr, asserted empty).
#[test]
fn hints_worker_pool_c_flags_form() {
    run_with_hints("hints_worker_pool_c_flags_form", Service::C, "flags");
}

/// Without hints, one worker, three requests one after the other on three
/// keep-alive connections kept open: the worker's calls go to the session
/// of the connection it touched last — the previous request it answered,
/// still open. For the first request the worker had touched no client: its
/// calls go to the only session waiting for an answer, its own (the
/// hand-off rules, `docs/helper-hints.md`).
#[test]
fn hints_worker_pool_without_hints() {
    let ids = ["wn-1", "wn-2", "wn-3"];
    let setup = setup("hints_worker_pool_without_hints", &[], &ids);
    let record = setup.dir.join("record");
    let port = free_port();
    let mut service = Spec::python_fixture("service", "hints_worker_pool_service.py")
        .args([
            port.to_string(),
            setup.redis_port.to_string(),
            setup.backend.port.to_string(),
            "1".to_string(),
            "no-hints".to_string(),
        ])
        .record_to(&record)
        .env("KOALA_SESSION_IDLE_MS", 10_000)
        .spawn(&setup.dir);
    service.wait_for_port(port);

    let mut streams = Vec::new();
    let mut sent = Vec::new();
    for id in ids {
        let mut stream = connect(port);
        let request = format!("GET /item/{id} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n");
        let response = http_exchange(&mut stream, request.as_bytes());
        assert_bytes(&response, &item_response(id, 1), id);
        sent.push((stream.local_addr().unwrap().to_string(), request, response));
        streams.push(stream);
    }
    drop(streams);
    wait_for_sessions(&record, ids.len());
    service.stop_cleanly();

    let redis_peer = format!("127.0.0.1:{}", setup.redis_port);
    let backend_peer = format!("127.0.0.1:{}", setup.backend.port);
    let calls_of = |id: &str| {
        vec![
            (
                redis_peer.clone(),
                resp_command(&["GET", &format!("item:{id}")]),
            ),
            (
                backend_peer.clone(),
                format!(
                    "GET /backend/{id} HTTP/1.1\r\nHost: {backend_peer}\r\nAccept-Encoding: identity\r\n\r\n"
                )
                .into_bytes(),
            ),
            (
                redis_peer.clone(),
                resp_command(&["INCRBY", &format!("hits:{id}"), "1"]),
            ),
        ]
    };
    let requests_of = |calls: &[Exchange]| -> Vec<(String, Vec<u8>)> {
        calls
            .iter()
            .map(|c| (c.peer.clone(), c.request.as_bytes().to_vec()))
            .collect()
    };

    let sessions = read_sessions(&record);
    assert_eq!(sessions.len(), 3, "{}", describe_dir(&record));
    for (i, (client, request, response)) in sent.iter().enumerate() {
        let session = sessions
            .iter()
            .find(|s| s.inbound.request.as_bytes() == request.as_bytes())
            .expect("a session per request");
        let what = format!("session of {}: {}", ids[i], show(session));
        assert_exchange(
            &session.inbound,
            client,
            request.as_bytes(),
            response,
            &what,
        );
        assert_eq!(session.end, Some(EndReason::Close), "{what}");
        // The next request's calls, not its own — but the first request
        // also has its own (the worker served no session yet).
        let mut expected = match i {
            0 => calls_of(ids[0]),
            _ => Vec::new(),
        };
        if let Some(next) = ids.get(i + 1) {
            expected.extend(calls_of(next));
        }
        assert_eq!(requests_of(&session.calls), expected, "{what}");
    }
    // No request's call is background traffic.
    for record in background_records(&record) {
        for call in &record.calls {
            assert!(!call.unattributed, "{}", show(&record));
            let request = String::from_utf8_lossy(call.request.as_bytes()).into_owned();
            assert!(
                !ids.iter().any(|id| request.contains(id)),
                "{}",
                show(&record)
            );
        }
    }
}
