//! Forked processes make the outbound calls (`replay_prefork_service.py`):
//!
//! - pre-forked workers: the parent only listens; its workers accept and
//!   make the calls (redis, on a connection each worker opened at its
//!   start-up, and the backend);
//! - socketserver's ForkingMixIn: the parent accepts, and a child forked
//!   for the connection reads the request and makes the calls on
//!   connections it opens itself.
//!
//! Recorded, the sessions come from the children; replayed with the
//! dependencies stopped, every session passes and every call is answered
//! from its own recorded call: the attribution works across fork, with
//! several replays in flight in several processes.

use std::collections::BTreeSet;

use koala_tests::replay::*;
use koala_tests::*;

/// Two pre-forked workers; two connections of 4 requests, open at once so
/// that each needs its own worker.
#[test]
fn replay_prefork() {
    replay_forked("replay_prefork", 2, 2, 4);
}

/// ForkingMixIn: a child per connection. One request per connection: the
/// child's redis handshake is part of its first request, and a replay (a
/// new connection, so a new child) makes it again.
#[test]
fn replay_forking_per_connection() {
    replay_forked("replay_forking_per_connection", 0, 4, 1);
}

/// Records the service with `workers` (0: ForkingMixIn) serving
/// `connections` × `per_connection` requests, then replays it with the
/// dependencies stopped, `connections` at a time.
fn replay_forked(test: &str, workers: usize, connections: usize, per_connection: usize) {
    let dir = TestDir::new(test);
    // The client connections are open at once: each needs its own process.
    // Recorded with redis and the backend, which are stopped now.
    let service = record_items(
        &dir,
        "replay_prefork_service.py",
        &[workers.to_string()],
        connections,
        per_connection,
    );
    let recording = &service.recording;
    let total = connections * per_connection;
    let processes = if workers == 0 { connections } else { workers };
    let what = describe_dir(&recording.dir);

    // The sessions come from the children, not from the parent.
    let pids: BTreeSet<u32> = recording.sessions.iter().map(|(_, s)| s.pid).collect();
    assert_eq!(pids.len(), processes, "sessions from each child\n{what}");
    assert!(!pids.contains(&service.pid), "the parent served\n{what}");
    let files: BTreeSet<String> = recording.sessions.iter().map(|(f, _)| f.clone()).collect();
    let expected: BTreeSet<String> = pids.iter().map(|p| format!("python3-{p}.jsonl")).collect();
    assert_eq!(files, expected, "one file per child\n{what}");
    let (redis_peer, backend_peer) = (&service.redis_peer, &service.backend_peer);
    for (_, session) in &recording.sessions {
        let id = request_item(session.inbound.request.as_bytes());
        let requests: Vec<(&str, &[u8])> = session
            .calls
            .iter()
            .map(|c| (c.peer.as_str(), c.request.as_bytes()))
            .collect();
        let get = resp_command(&["GET", &format!("item:{id}")]);
        let backend = format!(
            "GET /backend/{id} HTTP/1.1\r\nHost: {backend_peer}\r\nAccept-Encoding: identity\r\n\r\n"
        );
        let incr = resp_command(&["INCRBY", &format!("hits:{id}"), "1"]);
        let tail = [
            (redis_peer.as_str(), get.as_slice()),
            (backend_peer.as_str(), backend.as_bytes()),
            (redis_peer.as_str(), incr.as_slice()),
        ];
        // ForkingMixIn: the child's redis handshake (to redis) comes first.
        assert!(requests.len() >= 3, "{}", show(session));
        let (handshake, own) = requests.split_at(requests.len() - 3);
        assert_eq!(own, tail, "{}", show(session));
        assert_eq!(handshake.is_empty(), workers > 0, "{}", show(session));
        assert!(
            handshake.iter().all(|(peer, _)| *peer == redis_peer),
            "{}",
            show(session)
        );
        assert_bytes(
            session.inbound.response.as_bytes(),
            &item_response(&id, 1),
            &show(session),
        );
    }
    // Each worker's start-up traffic (its PING) is its background record;
    // ForkingMixIn children have none.
    let background_pids: BTreeSet<u32> = recording.background.iter().map(|b| b.pid).collect();
    if workers == 0 {
        assert!(background_pids.is_empty(), "{what}");
    } else {
        assert_eq!(
            background_pids, pids,
            "a background record per worker\n{what}"
        );
    }
    for record in &recording.background {
        assert_bytes(
            record
                .calls
                .last()
                .expect("start-up calls")
                .request
                .as_bytes(),
            &resp_command(&["PING"]),
            &show(record),
        );
    }

    // Replays at a time as there were processes: they serve at once.
    let run = replay_python(
        &dir,
        "koala-replay",
        &[
            "--concurrency",
            &processes.to_string(),
            "--report",
            "r.json",
            "--service-log",
            "service.log",
        ],
        "replay_prefork_service.py",
        &service.args,
        &[],
    );
    let out = run.output();
    run.assert_all_passed(total);
    run.assert_replaying(total, processes, processes);
    let calls = recording.calls();
    run.assert_summary([total, total, 0, 0], [calls, 0, 0, 0]);
    // The workers started (and got their start-up PING answered from the
    // background records) in the replayed service too.
    assert_eq!(
        run.service_log
            .as_deref()
            .unwrap_or_default()
            .lines()
            .filter(|l| l.ends_with(" ready"))
            .count(),
        workers,
        "{out}"
    );

    let report = read_report(&dir.join("r.json"));
    assert_report_summary(&report, [total, total, 0, 0], [calls, 0, 0, 0]);
    assert_report_all_replayed(&report, recording);
}
