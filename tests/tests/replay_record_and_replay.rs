//! `koala replay --record-to DIR` (KOALA_MODE=record,replay): the service
//! of `python_redis_backend` is replayed with its dependencies stopped and
//! recorded at the same time. The sessions recorded during the replay equal
//! the replayed ones: the inbound request and response byte for byte
//! (Date aside), the same calls in the same order, each to the ORIGINAL
//! dependency address (not the outbound server it was redirected to), with
//! the same request and the recorded response it was served. The start-up
//! traffic is recorded again as a background record.

use koala_tests::replay::*;
use koala_tests::*;

const CONNECTIONS: usize = 4;
const REQUESTS_PER_CONNECTION: usize = 5;

/// An HTTP message with the value of its Date header (if any) blanked.
fn without_date(message: &[u8]) -> Vec<u8> {
    let Some(head_end) = find(message, b"\r\n\r\n") else {
        return message.to_vec();
    };
    let head = String::from_utf8_lossy(&message[..head_end]);
    let mut out: Vec<u8> = head
        .split("\r\n")
        .map(|line| match line.split_once(':') {
            Some((name, _)) if name.eq_ignore_ascii_case("date") => format!("{name}: <date>"),
            _ => line.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\r\n")
        .into_bytes();
    out.extend_from_slice(&message[head_end..]);
    out
}

#[test]
fn replay_record_and_replay() {
    let dir = TestDir::new("replay_record_and_replay");
    // Recorded with redis and the backend, which are stopped now.
    let service = record_items(
        &dir,
        "redis_service.py",
        &[],
        CONNECTIONS,
        REQUESTS_PER_CONNECTION,
    );
    let recording = &service.recording;
    let total = CONNECTIONS * REQUESTS_PER_CONNECTION;
    let (redis_peer, backend_peer) = (&service.redis_peer, &service.backend_peer);

    let run = replay_python(
        &dir,
        "koala-replay",
        &[
            "--record-to",
            "rerecord",
            "--report",
            "r.json",
            "--concurrency",
            "4",
        ],
        "redis_service.py",
        &service.args,
        &[],
    );
    run.assert_all_passed(total);
    let report = read_report(&dir.join("r.json"));
    assert_report_all_replayed(&report, recording);

    // koala waited for the service to exit: the new recording is complete.
    let rerecord = dir.join("rerecord");
    let again = Recording::read(&dir, "rerecord", recording.port);
    let what = describe_dir(&rerecord);
    assert_eq!(
        again.sessions.len(),
        total,
        "one session per replayed session\n{what}"
    );
    let files: std::collections::BTreeSet<&str> =
        again.sessions.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(files.len(), 1, "{what}");

    let original = recording.by_item();
    let replayed = again.by_item();
    assert_eq!(
        original.keys().collect::<Vec<_>>(),
        replayed.keys().collect::<Vec<_>>(),
        "the same requests\n{what}"
    );
    for (item, before) in &original {
        let after = replayed[item];
        let ctx = format!(
            "{item}:\n  recorded:    {}\n  re-recorded: {}",
            show(before),
            show(after)
        );
        assert_ne!(after.id, before.id, "{ctx}");
        assert_eq!(after.inbound.local, before.inbound.local, "{ctx}");
        assert_bytes(
            after.inbound.request.as_bytes(),
            before.inbound.request.as_bytes(),
            &format!("{ctx}\ninbound request"),
        );
        assert_bytes(
            &without_date(after.inbound.response.as_bytes()),
            &without_date(before.inbound.response.as_bytes()),
            &format!("{ctx}\ninbound response"),
        );
        assert_eq!(after.calls.len(), before.calls.len(), "{ctx}");
        for (index, (a, b)) in after.calls.iter().zip(&before.calls).enumerate() {
            let ctx = format!("{ctx}\ncall {index}");
            // The original dependency, not the outbound server.
            assert_eq!(a.peer, b.peer, "{ctx}");
            assert!(&a.peer == redis_peer || &a.peer == backend_peer, "{ctx}");
            assert_bytes(
                a.request.as_bytes(),
                b.request.as_bytes(),
                &format!("{ctx}: request"),
            );
            assert_bytes(
                a.response.as_bytes(),
                b.response.as_bytes(),
                &format!("{ctx}: response (served from the recording)"),
            );
            assert!(!a.truncated, "{ctx}");
        }
        // In order: request times do not go backwards.
        for pair in after.calls.windows(2) {
            assert!(pair[0].request_ns <= pair[1].request_ns, "{ctx}");
        }
    }

    // The start-up traffic, answered from the background record, is
    // recorded again as a background record: same calls, same peer.
    assert_eq!(again.background.len(), 1, "{what}");
    let before = &recording.background[0];
    let after = &again.background[0];
    let ctx = format!(
        "background:\n  recorded:    {}\n  re-recorded: {}",
        show(before),
        show(after)
    );
    assert_eq!(after.calls.len(), before.calls.len(), "{ctx}");
    for (index, (a, b)) in after.calls.iter().zip(&before.calls).enumerate() {
        assert_eq!(&a.peer, redis_peer, "{ctx}\ncall {index}");
        assert_exchange(
            a,
            &b.peer,
            b.request.as_bytes(),
            b.response.as_bytes(),
            &format!("{ctx}\ncall {index}"),
        );
    }
}

/// The same with a dependency that speaks first: the greeting served on
/// connect during the replay is recorded again as a greeting call (empty
/// request, no request time), to the original address.
#[test]
fn replay_record_and_replay_greeting() {
    let dir = TestDir::new("replay_record_and_replay_greeting");
    // Recorded with the greeting server, which is stopped now.
    let recorded = record_greeting(&dir, "per-request", &["r1", "r2", "r3"]);
    let recording = &recorded.recording;

    let run = replay_python(
        &dir,
        "koala-replay",
        &["--record-to", "rerecord"],
        "greeting_service.py",
        &recorded.args("per-request"),
        &[],
    );
    run.assert_all_passed(3);
    let again = Recording::read(&dir, "rerecord", recording.port);
    let what = describe_dir(&again.dir);
    assert_eq!(again.sessions.len(), 3, "{what}");
    assert!(again.background.is_empty(), "{what}");
    let replayed = again.by_item();
    for (item, before) in recording.by_item() {
        let after = replayed
            .get(&item)
            .unwrap_or_else(|| panic!("{item} not re-recorded\n{what}"));
        let ctx = format!(
            "{item}:\n  recorded:    {}\n  re-recorded: {}",
            show(before),
            show(after)
        );
        assert_bytes(
            after.inbound.request.as_bytes(),
            before.inbound.request.as_bytes(),
            &format!("{ctx}\ninbound request"),
        );
        assert_bytes(
            after.inbound.response.as_bytes(),
            before.inbound.response.as_bytes(),
            &format!("{ctx}\ninbound response"),
        );
        assert_eq!(after.calls.len(), 2, "{ctx}");
        for (index, (a, b)) in after.calls.iter().zip(&before.calls).enumerate() {
            assert_exchange(
                a,
                &b.peer,
                b.request.as_bytes(),
                b.response.as_bytes(),
                &format!("{ctx}\ncall {index}"),
            );
        }
        assert!(after.calls[0].is_greeting(), "{ctx}");
        assert_eq!(after.calls[0].request_ns, 0, "{ctx}");
        assert_eq!(after.calls[0].local, after.calls[1].local, "{ctx}");
    }
}
