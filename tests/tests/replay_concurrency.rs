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
    assert_eq!(total % TOGETHER, 0, "every handler finds its group");
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
                "--concurrency".into(),
                "8".into(),
                "--report".into(),
                "r.json".into(),
                "--service-log".into(),
                "service.log".into(),
            ],
            "redis_service.py",
            &service_args,
        ),
        // Each GET /item waits (at most 5 s, else 503) until 4 handlers
        // wait together: with sessions replayed one at a time this fails.
        // The listen backlog is raised above socketserver's 5 so that 8
        // connections at once are not delayed by a dropped SYN.
        &[
            ("REDIS_SERVICE_BARRIER", TOGETHER.to_string()),
            ("REDIS_SERVICE_BACKLOG", "64".to_string()),
        ],
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
            "koala: replaying {total} session(s) from 1 file(s), 8 at a time"
        )),
        "{out}"
    );
    assert_eq!(
        run.summary("calls matched"),
        (3 * total).to_string(),
        "{out}"
    );
    assert_eq!(run.summary("unmatched"), "0", "{out}");
    assert_eq!(run.summary("missing"), "0", "{out}");
    assert!(run.stdout.contains(", concurrency 8)"), "{out}");

    // The service's own account: every handler passed the barrier, so at
    // least TOGETHER replays were in the service at the same time, each
    // time.
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
    let mut expected = ids.clone();
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
    let busy_ms: f64 = report
        .array_at("sessions")
        .iter()
        .map(|s| s["latency_ms"].as_f64().expect("latency_ms"))
        .sum();
    let wall_ms = report["duration_s"].as_f64().expect("duration_s") * 1000.0;
    assert!(
        busy_ms > wall_ms,
        "replays did not overlap: {busy_ms} ms of round trips in {wall_ms} ms"
    );
    assert_report_summary(
        &report,
        [total as u64, total as u64, 0, 0],
        [3 * total as u64, 0, 0, 0],
    );
    // Every call of every session answered from its own recorded call,
    // although the sessions' calls interleaved on one redis connection.
    assert_report_all_replayed(&report, &recording);
}
