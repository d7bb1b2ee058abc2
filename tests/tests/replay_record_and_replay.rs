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
    let ids = item_ids(CONNECTIONS, REQUESTS_PER_CONNECTION);
    let deps = Dependencies::start(&dir, &ids);
    let recording = record_items(
        &dir,
        "record",
        "redis_service.py",
        &deps,
        &[],
        CONNECTIONS,
        REQUESTS_PER_CONNECTION,
    );
    let total = ids.len();
    let redis_peer = deps.redis_peer();
    let backend_peer = deps.backend_peer();
    let service_args: Vec<String> = std::iter::once(recording.port.to_string())
        .chain(deps.args())
        .collect();
    deps.stop();

    let run = run_koala(
        &dir,
        "koala-replay",
        &replay_python_args(
            &["record"],
            &[
                "--record-to".into(),
                "rerecord".into(),
                "--report".into(),
                "r.json".into(),
                "--concurrency".into(),
                "4".into(),
            ],
            "redis_service.py",
            &service_args,
        ),
        &[],
    );
    let out = run.output();
    assert_eq!(run.code, Some(0), "{out}");
    assert!(
        run.stdout
            .lines()
            .any(|l| l == format!("OK: all {total} session(s) passed")),
        "{out}"
    );
    let report = read_report(&dir.join("r.json"));
    assert_report_all_replayed(&report, &recording);

    // koala waited for the service to exit: the new recording is complete.
    let rerecord = dir.join("rerecord");
    let again = Recording::read(&dir, "rerecord", recording.port, 0);
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
            assert!(a.peer == redis_peer || a.peer == backend_peer, "{ctx}");
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
        assert_eq!(a.peer, redis_peer, "{ctx}\ncall {index}");
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
    let greeting = unique_greeting("rerecord");
    let greeting_port = free_port();
    let mut greeter = Spec::python_fixture("greeting_server", "greeting_server.py")
        .args([greeting_port.to_string(), greeting.clone()])
        .spawn(&dir);
    greeter.wait_for_port(greeting_port);
    let port = free_port();
    let mut service = Spec::python_fixture("record-service", "greeting_service.py")
        .args([
            port.to_string(),
            greeting_port.to_string(),
            "per-request".into(),
        ])
        .record_to(&dir.join("record"))
        .spawn(&dir);
    service.wait_for_port(port);
    let mut stream = connect(port);
    for id in ["r1", "r2", "r3"] {
        let request = format!("GET /hello/{id} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n");
        let response = http_exchange(&mut stream, request.as_bytes());
        assert!(
            find(&response, greeting.as_bytes()).is_some(),
            "{}",
            String::from_utf8_lossy(&response)
        );
    }
    drop(stream);
    wait_for_sessions(&dir.join("record"), 3);
    service.stop_cleanly();
    greeter.stop();
    assert_port_closed(greeting_port, "the greeting server");
    let recording = Recording::read(&dir, "record", port, service.pid());
    assert_eq!(recording.sessions.len(), 3);

    let run = run_koala(
        &dir,
        "koala-replay",
        &replay_python_args(
            &["record"],
            &["--record-to".into(), "rerecord".into()],
            "greeting_service.py",
            &[
                port.to_string(),
                greeting_port.to_string(),
                "per-request".into(),
            ],
        ),
        &[],
    );
    assert_eq!(run.code, Some(0), "{}", run.output());
    let again = Recording::read(&dir, "rerecord", port, 0);
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
