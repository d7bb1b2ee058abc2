//! Deterministic replay (issue 10): each replayed session gets the clock and
//! the random bytes it had when recorded.
//!
//! A threaded Python service (`deterministic_service.py`) puts
//! `int(time.time())`, `datetime.now().isoformat()` and `uuid.uuid4()` into
//! a redis `SET`, an HTTP call to a backend, a PostgreSQL `INSERT` and its
//! JSON response, which has a Date header. Four orders are recorded, each
//! in a wall-clock second of its own; redis, the backend and PostgreSQL are
//! stopped; once a later second has begun, the four are replayed at once
//! (`-j 4`, and the service makes each request wait until all four are in
//! flight, so four threads read the clock and draw random bytes together):
//!
//! 1. default (`KOALA_REPLAY_TIME=shifted`), no noise rule: every call is an
//!    exact match (score 1.0), every response equals its recording byte for
//!    byte, Date header included — each thread saw its own session's clock
//!    and random bytes (four different recorded seconds and uuids).
//! 2. `KOALA_REPLAY_TIME=real`: the sessions fail on `$.t` and `$.iso`;
//! 3. with a `--noise` file naming them they pass, the report and JUnit
//!    naming the rules applied;
//! 4. `--learn-noise` learns those rules from two runs; a run with the
//!    learned file passes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use koala_session::replay::ReplayResult;
use koala_tests::python_stacks::*;
use koala_tests::replay::*;
use koala_tests::*;
use serde_json::Value;

const ORDERS: [u32; 4] = [1, 2, 3, 4];

fn request(port: u16, n: u32) -> Vec<u8> {
    format!("GET /order/{n} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").into_bytes()
}

fn now() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap()
}

/// Waits for the wall clock's next second to begin: a request sent then
/// reads the clock well before that second ends.
fn wait_for_next_second() {
    let second = now().as_secs();
    while now().as_secs() == second {
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The service's environment (PostgreSQL's login).
fn pg_env() -> Vec<(&'static str, String)> {
    vec![
        ("KOALA_TEST_PG_USER", PG_USER.to_string()),
        ("KOALA_TEST_PG_PASSWORD", PG_PASSWORD.to_string()),
        ("KOALA_TEST_PG_DATABASE", PG_DATABASE.to_string()),
    ]
}

/// Records the four orders with real dependencies into `<dir>/record`, then
/// stops them. Returns the service's arguments and the answers it gave.
fn record(dir: &TestDir) -> (Vec<String>, Vec<Vec<u8>>) {
    let (mut postgres, pg_port) = start_postgres(dir);
    let deps = Dependencies::start(dir, &[]);
    let port = free_port();
    let mut args = vec![port.to_string()];
    args.extend(deps.args());
    args.push(pg_port.to_string());
    let mut spec = Spec::python_fixture("record-svc", "deterministic_service.py")
        .args(&args)
        .record_to(&dir.join("record"));
    for (key, value) in pg_env() {
        spec = spec.env(key, value);
    }
    let mut service = spec.spawn(dir);
    service.wait_for_port(port);
    let mut answers = Vec::new();
    for n in ORDERS {
        wait_for_next_second();
        answers.push(http_exchange(&mut connect(port), &request(port, n)));
    }
    wait_for_sessions(&dir.join("record"), ORDERS.len());
    service.stop_cleanly();
    deps.stop();
    postgres.stop();
    assert_port_closed(pg_port, "PostgreSQL");
    (args, answers)
}

/// `koala replay record -j 4 OPTIONS -- service`, the service waiting for
/// four requests at a time; `env` adds to koala's (and so the service's).
fn replay(
    dir: &TestDir,
    name: &str,
    options: &[&str],
    args: &[String],
    env: &[(&str, String)],
) -> KoalaRun {
    let mut options = options.to_vec();
    options.extend(["-j", "4", "--report"]);
    let report = format!("{name}.json");
    options.push(&report);
    let mut env: Vec<(&str, String)> = env.to_vec();
    env.extend(pg_env());
    env.push(("TOGETHER", "4".into()));
    replay_python(dir, name, &options, "deterministic_service.py", args, &env)
}

/// The report's sessions: (verdict, noise rules applied, result).
fn report_sessions(dir: &TestDir, name: &str) -> Vec<(String, Vec<String>, ReplayResult)> {
    let text = std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap();
    let report: Value = serde_json::from_str(&text).unwrap();
    report["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["verdict"].as_str().unwrap().to_string(),
                serde_json::from_value(s["noise"].clone()).unwrap(),
                serde_json::from_value(s["result"].clone()).unwrap(),
            )
        })
        .collect()
}

fn body(response: &[u8]) -> Value {
    let at = find(response, b"\r\n\r\n").expect("a response head") + 4;
    serde_json::from_slice(&response[at..]).expect("a JSON body")
}

#[test]
fn replay_deterministic_python() {
    let dir = TestDir::new("replay_deterministic_python");
    let (args, answers) = record(&dir);
    let sessions = read_sessions(&dir.join("record"));
    assert_eq!(
        sessions.len(),
        ORDERS.len(),
        "{}",
        describe_dir(&dir.join("record"))
    );
    // Each session drew its uuid's 16 bytes (first: the uuid is made
    // before anything else draws; libpq's OpenSSL seeds itself after).
    for session in &sessions {
        assert!(session.random.as_bytes().len() >= 16, "{}", show(session));
        assert!(!session.random_truncated);
    }
    let recorded: Vec<Value> = answers.iter().map(|a| body(a)).collect();
    let seconds: std::collections::BTreeSet<u64> =
        recorded.iter().map(|b| b["t"].as_u64().unwrap()).collect();
    assert_eq!(seconds.len(), ORDERS.len(), "one second each: {recorded:?}");
    // Replay later: a wall-clock second has passed since the last order.
    let last = *seconds.iter().max().unwrap();
    while now().as_secs() <= last {
        std::thread::sleep(Duration::from_millis(5));
    }

    // 1. The session's own clock and randomness: exact.
    let run = replay(&dir, "shifted", &[], &args, &[]);
    run.assert_all_passed(ORDERS.len());
    run.assert_summary([4, 4, 0, 0], [run_matched(&run), 0, 0, 0]);
    for (verdict, noise, result) in report_sessions(&dir, "shifted") {
        assert_eq!(verdict, "pass");
        assert!(noise.is_empty(), "no noise rule: {noise:?}");
        assert_bytes(
            result.response.as_bytes(),
            result.recorded_response.as_bytes(),
            &format!("session {}: the whole response, Date included", result.id),
        );
        assert!(result.unmatched.is_empty(), "{result:?}");
        let own_calls = result.calls.iter().filter(|c| !c.setup).count();
        assert_eq!(own_calls, 3, "SET, backend GET, INSERT: {:?}", result.calls);
        for call in &result.calls {
            assert_eq!(call.on_miss, None, "{call:?}");
            if !call.setup {
                assert!(call.matched.is_some(), "{call:?}");
                assert_eq!(call.score, 1.0, "an exact match: {call:?}");
            }
        }
    }

    // 2. The real clock: the timestamps differ.
    let real = [("KOALA_REPLAY_TIME", "real".to_string())];
    let run = replay(&dir, "real", &[], &args, &real);
    assert_ne!(run.code, Some(0), "{}", run.output());
    for (verdict, _, result) in report_sessions(&dir, "real") {
        assert_eq!(verdict, "fail", "{result:?}");
        let (got, want) = (
            body(result.response.as_bytes()),
            body(result.recorded_response.as_bytes()),
        );
        assert_ne!(got["t"], want["t"]);
        assert_ne!(got["iso"], want["iso"]);
        assert_eq!(
            got["id"], want["id"],
            "randomness is replayed whatever the clock"
        );
    }
    assert!(run.stdout.contains("$.t: "), "{}", run.output());

    // 3. ...and pass with a noise file naming them.
    std::fs::write(
        dir.join("noise.txt"),
        "# the service's timestamps\nGET /order/* json:$.t\njson:$.iso\n",
    )
    .unwrap();
    let run = replay(
        &dir,
        "real-noise",
        &["--noise", "noise.txt", "--junit", "j.xml"],
        &args,
        &real,
    );
    run.assert_all_passed(ORDERS.len());
    for (_, noise, _) in report_sessions(&dir, "real-noise") {
        assert_eq!(noise, ["GET /order/* json:$.t", "json:$.iso"]);
    }
    let junit = std::fs::read_to_string(dir.join("j.xml")).unwrap();
    assert_eq!(
        junit
            .matches(
                "<system-out>noise rules applied: GET /order/* json:$.t, json:$.iso</system-out>"
            )
            .count(),
        ORDERS.len(),
        "{junit}"
    );

    // 4. Learned: two runs a second apart differ in the same fields.
    let run = replay(
        &dir,
        "learn",
        &["--learn-noise", "learned.txt"],
        &args,
        &real,
    );
    run.assert_all_passed(ORDERS.len());
    let learned = std::fs::read_to_string(dir.join("learned.txt")).unwrap();
    let rules: Vec<&str> = learned.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(
        rules,
        ["GET /order/* json:$.iso", "GET /order/* json:$.t"],
        "{learned}"
    );
    let run = replay(&dir, "learned", &["--noise", "learned.txt"], &args, &real);
    run.assert_all_passed(ORDERS.len());
}

/// The calls matched in a run (3 per order, plus PostgreSQL's set-up calls
/// matched from the session's own recording), as its summary says.
fn run_matched(run: &KoalaRun) -> usize {
    let line = run
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with("calls matched"))
        .unwrap_or_else(|| panic!("{}", run.output()));
    let matched: usize = line.split_whitespace().last().unwrap().parse().unwrap();
    assert!(matched >= 3 * ORDERS.len(), "{}", run.output());
    matched
}
