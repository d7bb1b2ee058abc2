//! A threaded Python HTTP service on memcached through pymemcache (text
//! protocol, `memcached_service.py`): each request stores the time of the
//! visit (`set seen:<id> <time.time_ns()>`) and reads a seeded key. Recorded
//! with a real memcached, which is then stopped; replayed one session at a
//! time and 4 at a time: the timestamped `set` differs from its recording
//! only in its value and still matches its recorded call, every session
//! passes, and no call waited for silence to end its request. The replays
//! run on the real clock (`KOALA_REPLAY_TIME=real`): this test is about a
//! near-miss call; the recorded clock per session has its own tests
//! (replay_deterministic_*).

use std::io::{Read, Write};

use koala_tests::python_stacks::*;
use koala_tests::replay::*;
use koala_tests::*;

const CONNECTIONS: usize = 3;
const REQUESTS_PER_CONNECTION: usize = 2;
/// An id whose `item:<id>` is not in memcached (`get` finds nothing).
const UNSEEDED: &str = "c2r1";
/// The silence that ends a request koala cannot frame, during the replays.
const IDLE_MS: u64 = 2000;
/// A replayed call waiting this long was framed by silence, not by the
/// protocol: far above framing and matching, far below [`IDLE_MS`].
const MAX_WAIT_MS: f64 = 500.0;

fn seeded_value(id: &str) -> Option<String> {
    (id != UNSEEDED).then(|| format!("value-{id}"))
}

/// `set seen:<id> 0 0 <n>\r\n` before the value, as pymemcache writes it.
fn set_head(id: &str, length: usize) -> Vec<u8> {
    format!("set seen:{id} 0 0 {length}\r\n").into_bytes()
}

/// pymemcache's `get item:<id>` and memcached's answer.
fn get_exchange(id: &str) -> (Vec<u8>, Vec<u8>) {
    let request = format!("get item:{id}\r\n").into_bytes();
    let response = match seeded_value(id) {
        Some(value) => format!("VALUE item:{id} 0 {}\r\n{value}\r\nEND\r\n", value.len()),
        None => "END\r\n".to_string(),
    };
    (request, response.into_bytes())
}

/// The service's exact answer.
fn seen_response(id: &str) -> Vec<u8> {
    let value = seeded_value(id).unwrap_or_else(|| "(none)".to_string());
    let body = format!("item {id}: {value} stored=True\n");
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The timestamp a `set seen:<id>` request stores, checking the rest of
/// the request byte for byte.
#[track_caller]
fn set_timestamp(request: &[u8], id: &str, what: &str) -> u128 {
    let head_end = find(request, b"\r\n").map(|at| at + 2).unwrap_or(0);
    let value = &request[head_end..request.len().saturating_sub(2)];
    assert_bytes(
        request,
        &[set_head(id, value.len()), value.to_vec(), b"\r\n".to_vec()].concat(),
        what,
    );
    let text = std::str::from_utf8(value).unwrap_or_default();
    assert!(
        text.len() == 19 && text.bytes().all(|b| b.is_ascii_digit()),
        "{what}: the value is not time.time_ns(): {text:?}"
    );
    text.parse().unwrap()
}

/// Stores `item:<id>` for the seeded ids through a plain connection of
/// the test (not recorded).
fn seed(port: u16, ids: &[String]) {
    let mut stream = connect(port);
    for id in ids {
        let Some(value) = seeded_value(id) else {
            continue;
        };
        stream
            .write_all(format!("set item:{id} 0 0 {}\r\n{value}\r\n", value.len()).as_bytes())
            .unwrap();
        let mut reply = [0u8; 8];
        stream.read_exact(&mut reply).expect("memcached reply");
        assert_bytes(&reply, b"STORED\r\n", &format!("seeding item:{id}"));
    }
}

#[test]
fn replay_memcached() {
    let dir = TestDir::new("replay_memcached");
    let ids = item_ids(CONNECTIONS, REQUESTS_PER_CONNECTION);
    let (mut memcached, memcached_port) = start_memcached(&dir);
    seed(memcached_port, &ids);
    let peer = format!("127.0.0.1:{memcached_port}");

    // --- Record: keep-alive connections, open at once, used in turn.
    let port = free_port();
    let record = dir.join("record");
    let args = [port.to_string(), memcached_port.to_string()];
    let mut service = Spec::python_fixture("record-service", "memcached_service.py")
        .args(&args)
        .record_to(&record)
        .spawn(&dir);
    service.wait_for_port(port);
    let mut streams: Vec<_> = (0..CONNECTIONS).map(|_| connect(port)).collect();
    for r in 0..REQUESTS_PER_CONNECTION {
        for (c, stream) in streams.iter_mut().enumerate() {
            let id = format!("c{c}r{r}");
            let request = format!("GET /seen/{id} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n");
            let response = http_exchange(stream, request.as_bytes());
            assert_bytes(&response, &seen_response(&id), &format!("answer to {id}"));
        }
    }
    drop(streams);
    wait_for_sessions(&record, ids.len());
    service.stop_cleanly();
    memcached.stop();
    assert_port_closed(memcached_port, "memcached");

    let recording = Recording::read(&dir, "record", port);
    let what = describe_dir(&record);
    assert_eq!(recording.sessions.len(), ids.len(), "{what}");
    assert!(
        recording.background.is_empty(),
        "no start-up traffic\n{what}"
    );
    let by_item = recording.by_item();
    for id in &ids {
        let session = by_item
            .get(id.as_str())
            .unwrap_or_else(|| panic!("no session for {id}\n{what}"));
        let what = show(session);
        assert_bytes(
            session.inbound.response.as_bytes(),
            &seen_response(id),
            &what,
        );
        assert_eq!(session.calls.len(), 2, "a set and a get\n{what}");
        let (set, get) = (&session.calls[0], &session.calls[1]);
        assert_eq!(set.peer, peer, "{what}");
        let stamp = set_timestamp(set.request.as_bytes(), id, &what);
        // Taken while the request was served.
        assert!(
            (session.inbound.request_ns as u128..=session.inbound.response_ns as u128)
                .contains(&stamp),
            "{what}"
        );
        assert_bytes(set.response.as_bytes(), b"STORED\r\n", &what);
        let (request, response) = get_exchange(id);
        assert_exchange(get, &peer, &request, &response, &what);
    }

    // --- Replay, memcached stopped.
    let total = ids.len();
    for concurrency in [1, 4] {
        let report_file = format!("r{concurrency}.json");
        let run = replay_python(
            &dir,
            &format!("koala-replay-{concurrency}"),
            &[
                "-j",
                &concurrency.to_string(),
                "--report",
                &report_file,
                "--service-log",
                &format!("service{concurrency}.log"),
            ],
            "memcached_service.py",
            &args,
            &[
                ("KOALA_REPLAY_IDLE_MS", IDLE_MS.to_string()),
                ("KOALA_REPLAY_TIME", "real".to_string()),
            ],
        );
        let out = run.output();
        let report = read_report(&dir.join(&report_file));
        let entries = report_entries(&report);
        assert_eq!(entries.len(), total, "{out}");
        for entry in entries {
            let id = entry_id(entry);
            let recorded = recording.session(id);
            let item = request_item(recorded.inbound.request.as_bytes());
            let what = format!("{entry}\n{out}");
            assert_eq!(entry["verdict"].as_str(), Some("pass"), "{what}");
            let result = entry_result(entry);
            assert!(result.unmatched.is_empty(), "unmatched\n{what}");
            assert!(result.missing.is_empty(), "missing\n{what}");
            assert_eq!(result.calls.len(), 2, "{what}");
            for (index, call) in result.calls.iter().enumerate() {
                assert_eq!(call.matched, Some(index), "call {index}\n{what}");
                assert!(!call.setup && !call.reused, "call {index}\n{what}");
                assert_eq!(call.peer, peer, "call {index}\n{what}");
                assert_bytes(
                    call.served.as_bytes(),
                    recorded.calls[index].response.as_bytes(),
                    &format!("call {index} served\n{what}"),
                );
                assert!(
                    call.wait_ms < MAX_WAIT_MS,
                    "call {index} waited {} ms (KOALA_REPLAY_IDLE_MS {IDLE_MS})\n{what}",
                    call.wait_ms
                );
            }
            // The set stores this run's time: only its value differs.
            let recorded_stamp = set_timestamp(recorded.calls[0].request.as_bytes(), &item, &what);
            let stamp = set_timestamp(result.calls[0].request.as_bytes(), &item, &what);
            assert!(stamp > recorded_stamp, "{what}");
            assert_bytes(
                result.calls[1].request.as_bytes(),
                recorded.calls[1].request.as_bytes(),
                &format!("the get\n{what}"),
            );
            assert_bytes(
                result.response.as_bytes(),
                recorded.inbound.response.as_bytes(),
                &what,
            );
        }
        run.assert_all_passed(total);
        run.assert_replaying(total, 1, concurrency);
        run.assert_summary([total, total, 0, 0], [2 * total, 0, 0, 0]);
        assert_report_summary(&report, [total, total, 0, 0], [2 * total, 0, 0, 0]);
    }
}
