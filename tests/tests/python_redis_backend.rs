//! A threaded Python HTTP service sharing one start-up redis connection
//! between its handler threads and calling a backend HTTP service: every
//! call lands in the session of the request it was made for.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Barrier};
use std::thread;

use koala_tests::*;

const CONNECTIONS: usize = 4;
const REQUESTS_PER_CONNECTION: usize = 5;

struct Sent {
    id: String,
    connection: usize,
    index: usize,
    client_addr: String,
    request: Vec<u8>,
    response: Vec<u8>,
}

#[test]
fn python_redis_backend() {
    let dir = TestDir::new("python_redis_backend");
    let record = dir.join("record");

    let ids = item_ids(CONNECTIONS, REQUESTS_PER_CONNECTION);
    let deps = Dependencies::start(&dir, &ids);

    let port = free_port();
    let mut service = Spec::python_fixture("service", "redis_service.py")
        .arg(port)
        .args(deps.args())
        .record_to(&record)
        .spawn(&dir);
    service.wait_for_port(port);

    // 4 concurrent keep-alive connections, 5 requests each.
    let barrier = Arc::new(Barrier::new(CONNECTIONS));
    let clients: Vec<_> = (0..CONNECTIONS)
        .map(|connection| {
            let barrier = barrier.clone();
            thread::spawn(move || {
                let mut stream = connect(port);
                let client_addr = stream.local_addr().unwrap().to_string();
                barrier.wait();
                let mut sent = Vec::new();
                for index in 0..REQUESTS_PER_CONNECTION {
                    let id = format!("c{connection}r{index}");
                    let request = item_request(port, &id);
                    let response = http_exchange(&mut stream, &request);
                    sent.push(Sent {
                        id,
                        connection,
                        index,
                        client_addr: client_addr.clone(),
                        request,
                        response,
                    });
                }
                sent
            })
        })
        .collect();
    let sent: Vec<Sent> = clients
        .into_iter()
        .flat_map(|c| c.join().expect("client thread"))
        .collect();

    // What the service answered is exactly its documented response.
    for s in &sent {
        assert_bytes(
            &s.response,
            &item_response(&s.id, 1),
            &format!("response to {}", s.id),
        );
    }

    let total = CONNECTIONS * REQUESTS_PER_CONNECTION;
    wait_for_sessions(&record, total);
    // Stop the service (its exit flush runs) so that no session can still
    // be on its way: the count below is final.
    service.stop_cleanly();
    let files = session_files(&record);
    let sessions: Vec<Session> = files.iter().flat_map(|(_, s)| s.clone()).collect();
    assert_eq!(
        sessions.len(),
        total,
        "exactly one session per request:\n{}",
        describe_dir(&record)
    );
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        vec![format!("python3-{}.jsonl", service.pid())],
        "one session file, named after the program and its pid"
    );
    let mode = fs::metadata(record.join(names[0]))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "session file mode {mode:o}");

    let by_id: BTreeMap<String, &Session> = sessions
        .iter()
        .map(|s| (request_item(s.inbound.request.as_bytes()), s))
        .collect();
    assert_eq!(
        by_id.keys().cloned().collect::<BTreeSet<_>>(),
        ids.iter().cloned().collect::<BTreeSet<_>>(),
        "one session per request id"
    );

    let redis_peer = deps.redis_peer();
    let backend_peer = deps.backend_peer();
    let mut redis_locals = BTreeSet::new();
    let mut tids_by_connection: BTreeMap<usize, BTreeSet<u32>> = BTreeMap::new();
    for s in &sent {
        let session = by_id[&s.id];
        let what = format!("session of {}: {}", s.id, show(session));
        assert_eq!(session.pid, service.pid(), "{what}");
        assert_eq!(session.program, "python3", "{what}");
        tids_by_connection
            .entry(s.connection)
            .or_default()
            .insert(session.tid);

        assert_eq!(session.inbound.local, format!("127.0.0.1:{port}"), "{what}");
        assert_exchange(
            &session.inbound,
            &s.client_addr,
            &s.request,
            &s.response,
            &format!("{what}\ninbound"),
        );
        let expected_end = if s.index + 1 == REQUESTS_PER_CONNECTION {
            EndReason::Close
        } else {
            EndReason::NextRequest
        };
        assert_eq!(session.end, Some(expected_end), "{what}");

        assert_eq!(session.calls.len(), 3, "{what}");
        let get = &session.calls[0];
        assert_exchange(
            get,
            &redis_peer,
            &resp_command(&["GET", &format!("item:{}", s.id)]),
            &resp_bulk(&format!("value-{}", s.id)),
            &format!("{what}\nredis GET"),
        );
        assert_exchange(
            &session.calls[1],
            &backend_peer,
            format!(
                "GET /backend/{} HTTP/1.1\r\nHost: {backend_peer}\r\n\
                 Accept-Encoding: identity\r\n\r\n",
                s.id
            )
            .as_bytes(),
            &backend_response(&s.id),
            &format!("{what}\nbackend call"),
        );
        let incr = &session.calls[2];
        assert_exchange(
            incr,
            &redis_peer,
            // redis-py sends INCR as INCRBY <key> 1.
            &resp_command(&["INCRBY", &format!("hits:{}", s.id), "1"]),
            b":1\r\n",
            &format!("{what}\nredis INCRBY"),
        );
        assert_eq!(get.local, incr.local, "{what}: one redis connection");
        redis_locals.insert(get.local.clone());
        for pair in session.calls.windows(2) {
            assert!(
                pair[0].request_ns <= pair[1].request_ns,
                "{what}: calls in order"
            );
        }
    }
    assert_eq!(
        redis_locals.len(),
        1,
        "all sessions share the start-up redis connection: {redis_locals:?}"
    );
    for (connection, tids) in &tids_by_connection {
        assert_eq!(
            tids.len(),
            1,
            "the requests of client connection {connection} were read by one thread: {tids:?}"
        );
    }

    // The start-up traffic (redis-py's CLIENT SETINFO and the PING) is in
    // no session, but in the background record, on the shared connection.
    for session in &sessions {
        for call in &session.calls {
            let request = call.request.as_bytes();
            assert!(
                find(request, b"PING").is_none() && call.response.as_bytes() != b"+PONG\r\n",
                "start-up PING recorded in a session: {}",
                show(session)
            );
        }
    }
    let background = background_records(&record);
    assert_eq!(background.len(), 1, "{}", describe_dir(&record));
    let startup = &background[0];
    let ping = startup.calls.last().expect("the start-up PING");
    assert_exchange(
        ping,
        &redis_peer,
        &resp_command(&["PING"]),
        b"+PONG\r\n",
        &show(startup),
    );
    assert!(
        startup
            .calls
            .iter()
            .all(|c| Some(&c.local) == redis_locals.iter().next()),
        "start-up calls are on the shared redis connection: {}",
        show(startup)
    );
}
