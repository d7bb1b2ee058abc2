//! A Node service with the `redis` npm client v4 (node-redis, which
//! pipelines its connection handshake and the commands issued in one tick)
//! and Node 20's global fetch, recorded with a real redis-server and backend,
//! then replayed with both stopped: every session passes, every call is
//! matched, and no call waits on silence.

use koala_tests::php_stacks::*;
use koala_tests::replay::*;
use koala_tests::*;

/// Requests, one at a time on one keep-alive connection.
const REQUESTS: usize = 4;

/// The headers Node's `http` adds to the service's answers.
const NODE_HEADERS: &str = "Connection: keep-alive\r\nKeep-Alive: timeout=5\r\n";

/// `tests/fixtures/node/node_redis_service.js`, after checking that its
/// `node_modules` is installed.
fn service_script() -> String {
    let modules = workspace_root().join("tests/fixtures/node/node_modules/redis");
    assert!(
        modules.is_dir(),
        "{} is missing: run `npm ci` in tests/fixtures/node",
        modules.display()
    );
    fixture("node/node_redis_service.js").display().to_string()
}

/// What fetch (Node 20's undici) sends the backend for `id`.
fn fetch_request(backend_port: u16, id: &str) -> Vec<u8> {
    format!(
        "GET /backend/{id} HTTP/1.1\r\nhost: 127.0.0.1:{backend_port}\r\n\
         connection: keep-alive\r\naccept: */*\r\naccept-language: *\r\n\
         sec-fetch-mode: cors\r\nuser-agent: node\r\naccept-encoding: gzip, deflate\r\n\r\n"
    )
    .into_bytes()
}

#[test]
fn replay_node_redis() {
    let dir = TestDir::new("replay_node_redis");
    let record = dir.join("record");
    let ids = item_ids(1, REQUESTS);
    let deps = Dependencies::start(&dir, &ids);
    let [redis_port, backend_port] = deps.args();
    let port = free_port();
    let command = vec![
        require_program("node", "nodejs").display().to_string(),
        service_script(),
        port.to_string(),
        redis_port.clone(),
        backend_port.clone(),
    ];
    let mut node = Spec::new("node", &command[0])
        .args(&command[1..])
        .record_to(&record)
        .spawn(&dir);
    node.wait_for_port(port);

    let mut stream = connect(port);
    let client = stream.local_addr().unwrap().to_string();
    let answers: Vec<Vec<u8>> = ids
        .iter()
        .map(|id| {
            let response = http_exchange(&mut stream, &item_request(port, id));
            assert_bytes(
                &response,
                &item_response_with(id, 1, NODE_HEADERS),
                &format!("answer to {id}"),
            );
            response
        })
        .collect();
    drop(stream);
    wait_for_sessions(&record, REQUESTS);
    node.stop_cleanly();

    let recording = Recording::read(&dir, "record", port);
    let mut sessions: Vec<&Session> = recording.sessions.iter().map(|(_, s)| s).collect();
    sessions.sort_by_key(|s| s.inbound.request_ns);
    assert_eq!(
        sessions.len(),
        REQUESTS,
        "one session per request\n{}",
        describe_dir(&record)
    );
    let backend_port: u16 = backend_port.parse().unwrap();
    for (index, ((session, id), answer)) in sessions.iter().zip(&ids).zip(&answers).enumerate() {
        let what = format!("session for {id}: {}", show(session));
        assert_eq!(session.program, "node", "{what}");
        assert_eq!(session.pid, node.pid(), "{what}");
        assert_eq!(session.inbound.local, format!("127.0.0.1:{port}"), "{what}");
        assert_exchange(
            &session.inbound,
            &client,
            &item_request(port, id),
            answer,
            &what,
        );
        let end = if index + 1 == REQUESTS {
            EndReason::Close
        } else {
            EndReason::NextRequest
        };
        assert_eq!(session.end, Some(end), "{what}");
        assert_eq!(session.calls.len(), 2, "{what}: redis, backend");
        // GET and INCR issued in one tick: one pipelined write, both replies.
        let mut pipeline = resp_command(&["GET", &format!("item:{id}")]);
        pipeline.extend(resp_command(&["INCR", &format!("hits:{id}")]));
        let mut replies = resp_bulk(&format!("value-{id}"));
        replies.extend_from_slice(b":1\r\n");
        assert_exchange(
            &session.calls[0],
            &deps.redis_peer(),
            &pipeline,
            &replies,
            &format!("{what}\nredis pipeline"),
        );
        assert_exchange(
            &session.calls[1],
            &deps.backend_peer(),
            &fetch_request(backend_port, id),
            &backend_response(id),
            &format!("{what}\nbackend call (fetch)"),
        );
    }

    // The connection handshake, before the service listened: the background
    // record holds it, pipelined in one write.
    assert_eq!(recording.background.len(), 1, "{}", describe_dir(&record));
    let startup = &recording.background[0].calls;
    assert_eq!(startup.len(), 1, "one handshake call: {startup:?}");
    let mut handshake = resp_command(&["CLIENT", "SETINFO", "LIB-NAME", "node-redis"]);
    // The version of @redis/client that package-lock.json pins reports.
    handshake.extend(resp_command(&["CLIENT", "SETINFO", "LIB-VER", "1.6.0"]));
    assert_eq!(startup[0].peer, deps.redis_peer());
    assert_bytes(
        startup[0].request.as_bytes(),
        &handshake,
        "the pipelined handshake",
    );
    // Two replies: +OK each from redis 7.2 and later; older servers answer
    // an error to CLIENT SETINFO, which node-redis ignores.
    let replies = String::from_utf8_lossy(startup[0].response.as_bytes()).into_owned();
    let lines: Vec<&str> = replies.split_terminator("\r\n").collect();
    assert!(
        replies.ends_with("\r\n")
            && lines.len() == 2
            && lines.iter().all(|l| *l == "+OK" || l.starts_with("-ERR ")),
        "handshake replies: {replies:?}"
    );

    deps.stop();
    let (run, report) = replay_stack(&dir, "koala-replay", &command);
    assert_stack_replayed(&run, &report, &recording);
}
