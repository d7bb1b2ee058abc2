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
    let ids = item_ids(connections, per_connection);
    let deps = Dependencies::start(&dir, &ids);
    // The client connections are open at once: each needs its own process.
    let recording = record_items(
        &dir,
        "record",
        "replay_prefork_service.py",
        &deps,
        &[workers.to_string()],
        connections,
        per_connection,
    );
    let total = ids.len();
    let processes = if workers == 0 { connections } else { workers };
    let what = describe_dir(&recording.dir);

    // The sessions come from the children, not from the parent.
    let pids: BTreeSet<u32> = recording.sessions.iter().map(|(_, s)| s.pid).collect();
    assert_eq!(pids.len(), processes, "sessions from each child\n{what}");
    assert!(!pids.contains(&recording.pid), "the parent served\n{what}");
    let files: BTreeSet<String> = recording.sessions.iter().map(|(f, _)| f.clone()).collect();
    let expected: BTreeSet<String> = pids.iter().map(|p| format!("python3-{p}.jsonl")).collect();
    assert_eq!(files, expected, "one file per child\n{what}");
    let redis_peer = deps.redis_peer();
    let backend_peer = deps.backend_peer();
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

    let service_args: Vec<String> = std::iter::once(recording.port.to_string())
        .chain(deps.args())
        .chain([workers.to_string()])
        .collect();
    deps.stop();

    // Replays at a time as there were processes: they serve at once.
    let run = run_koala(
        &dir,
        "koala-replay",
        &replay_python_args(
            &["record"],
            &[
                "--concurrency".into(),
                processes.to_string(),
                "--report".into(),
                "r.json".into(),
                "--service-log".into(),
                "service.log".into(),
            ],
            "replay_prefork_service.py",
            &service_args,
        ),
        &[],
    );
    let log = std::fs::read_to_string(dir.join("service.log")).unwrap_or_default();
    let out = format!("{}\n--- service log ---\n{log}", run.output());
    assert_eq!(run.code, Some(0), "{out}");
    assert!(
        run.stdout
            .lines()
            .any(|l| l == format!("OK: all {total} session(s) passed")),
        "{out}"
    );
    assert!(
        run.stderr.contains(&format!(
            "koala: replaying {total} session(s) from {processes} file(s), {processes} at a time"
        )),
        "{out}"
    );
    let calls: usize = recording.sessions.iter().map(|(_, s)| s.calls.len()).sum();
    assert_eq!(run.summary("calls matched"), calls.to_string(), "{out}");
    assert_eq!(run.summary("unmatched"), "0", "{out}");
    assert_eq!(run.summary("missing"), "0", "{out}");
    // The workers started (and got their start-up PING answered from the
    // background records) in the replayed service too.
    assert_eq!(
        log.lines().filter(|l| l.ends_with(" ready")).count(),
        workers,
        "{out}"
    );

    let report = read_report(&dir.join("r.json"));
    assert_report_summary(
        &report,
        [total as u64, total as u64, 0, 0],
        [calls as u64, 0, 0, 0],
    );
    assert_report_all_replayed(&report, &recording);
}
