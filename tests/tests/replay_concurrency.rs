//! `koala replay --concurrency 8` against the Python service of
//! `python_redis_backend`: replays really overlap (the service makes each
//! request wait until 4 handlers wait together), all handler threads share
//! the start-up redis connection, and still every call of every session is
//! answered from that session's own recorded calls.

use koala_tests::replay::*;
use koala_tests::*;

const CONNECTIONS: usize = 4;
const REQUESTS_PER_CONNECTION: usize = 5;
/// Handlers that must be in the service at once before any goes on.
const TOGETHER: usize = 4;

#[test]
fn replay_concurrency() {
    let dir = TestDir::new("replay_concurrency");
    // Recorded with redis and the backend, which are stopped now.
    let service = record_items(
        &dir,
        "redis_service.py",
        &[],
        CONNECTIONS,
        REQUESTS_PER_CONNECTION,
    );
    let total = CONNECTIONS * REQUESTS_PER_CONNECTION;
    assert_eq!(total % TOGETHER, 0, "every handler finds its group");

    let run = replay_python(
        &dir,
        "koala-replay",
        &[
            "--concurrency",
            "8",
            "--report",
            "r.json",
            "--service-log",
            "service.log",
        ],
        "redis_service.py",
        &service.args,
        // Each GET /item waits (at most 5 s, else 503) until 4 handlers
        // wait together: with sessions replayed one at a time this fails.
        // The listen backlog is raised above socketserver's 5 so that 8
        // connections at once are not delayed by a dropped SYN.
        &[
            ("REDIS_SERVICE_BARRIER", TOGETHER.to_string()),
            ("REDIS_SERVICE_BACKLOG", "64".to_string()),
        ],
    );
    let out = run.output();
    run.assert_all_passed(total);
    run.assert_replaying(total, 1, 8);
    run.assert_summary([total, total, 0, 0], [3 * total, 0, 0, 0]);
    assert!(run.stdout.contains(", concurrency 8)"), "{out}");

    // The service's own account: every handler passed the barrier, so at
    // least TOGETHER replays were in the service at the same time, each
    // time.
    let log = run.service_log.as_deref().unwrap_or_default();
    let passed: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("barrier passed: "))
        .collect();
    assert_eq!(passed.len(), total, "{out}");
    let mut items: Vec<String> = passed
        .iter()
        .map(|l| {
            l["barrier passed: ".len()..]
                .split(' ')
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    items.sort();
    let mut expected = item_ids(CONNECTIONS, REQUESTS_PER_CONNECTION);
    expected.sort();
    assert_eq!(items, expected, "each request passed the barrier once");
    let most = passed
        .iter()
        .filter_map(|l| {
            l.split(" with ")
                .nth(1)?
                .split(' ')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .max()
        .unwrap_or(0);
    assert!(
        most >= TOGETHER,
        "at most {most} handlers active at once\n{out}"
    );

    let report = read_report(&dir.join("r.json"));
    assert_eq!(report["concurrency"].as_u64(), Some(8));
    // Round trips that overlap add up to more than the run's wall time;
    // one at a time they could not.
    let busy_ms: f64 = report_entries(&report)
        .iter()
        .map(|s| s["latency_ms"].as_f64().expect("latency_ms"))
        .sum();
    let wall_ms = report["duration_s"].as_f64().expect("duration_s") * 1000.0;
    assert!(
        busy_ms > wall_ms,
        "replays did not overlap: {busy_ms} ms of round trips in {wall_ms} ms"
    );
    assert_report_summary(&report, [total, total, 0, 0], [3 * total, 0, 0, 0]);
    // Every call of every session answered from its own recorded call,
    // although the sessions' calls interleaved on one redis connection.
    assert_report_all_replayed(&report, &service.recording);
}
