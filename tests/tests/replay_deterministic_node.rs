//! Deterministic replay (issue 10), Node: `Date.now()` and
//! `new Date().toISOString()` (to the second) go into a redis `SET`, a
//! fetch to a backend and the JSON response; recorded a second apart,
//! replayed once a later second has begun with redis and the backend
//! stopped:
//!
//! - default clock: every call an exact match (score 1.0) and every
//!   response equal but for `$.id`, the `crypto.randomUUID()` Node draws
//!   from OpenSSL's generator, seeded at start-up inside the process, which
//!   deterministic replay cannot reach (docs/replay.md): the sessions pass
//!   with `--ignore json:$.id`, that rule applied to each, and fail without
//!   it on `$.id` alone;
//! - `KOALA_REPLAY_TIME=real`: they fail on `$.t` and `$.iso` too.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use koala_session::replay::ReplayResult;
use koala_tests::replay::*;
use koala_tests::*;
use serde_json::Value;

const ORDERS: [u32; 3] = [1, 2, 3];

fn request(port: u16, n: u32) -> Vec<u8> {
    format!("GET /order/{n} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").into_bytes()
}

fn now() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap()
}

/// Waits for the wall clock's next second to begin.
fn wait_for_next_second() {
    let second = now().as_secs();
    while now().as_secs() == second {
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn service_script() -> String {
    let modules = workspace_root().join("tests/fixtures/node/node_modules/redis");
    assert!(
        modules.is_dir(),
        "{} is missing: run `npm ci` in tests/fixtures/node",
        modules.display()
    );
    fixture("node/deterministic_node_service.js")
        .display()
        .to_string()
}

fn body(response: &[u8]) -> Value {
    let at = find(response, b"\r\n\r\n").expect("a response head") + 4;
    serde_json::from_slice(&response[at..]).expect("a JSON body")
}

/// The report's sessions: (verdict, noise rules applied, result).
fn report_sessions(dir: &TestDir, name: &str) -> Vec<(String, Vec<String>, ReplayResult)> {
    let text = std::fs::read_to_string(dir.join(name)).unwrap();
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

#[test]
fn replay_deterministic_node() {
    let dir = TestDir::new("replay_deterministic_node");
    let deps = Dependencies::start(&dir, &[]);
    let [redis_port, backend_port] = deps.args();
    let port = free_port();
    let node = require_program("node", "nodejs").display().to_string();
    let args = vec![service_script(), port.to_string(), redis_port, backend_port];
    let mut service = Spec::new("node", &node)
        .args(&args)
        .record_to(&dir.join("record"))
        .spawn(&dir);
    service.wait_for_port(port);
    let mut seconds = Vec::new();
    for n in ORDERS {
        wait_for_next_second();
        let answer = http_exchange(&mut connect(port), &request(port, n));
        seconds.push(body(&answer)["t"].as_u64().unwrap());
    }
    wait_for_sessions(&dir.join("record"), ORDERS.len());
    service.stop_cleanly();
    deps.stop();
    let last = *seconds.iter().max().unwrap();
    while now().as_secs() <= last {
        std::thread::sleep(Duration::from_millis(5));
    }

    let replay = |name: &str, options: &[&str], env: &[(&str, String)]| {
        let mut all: Vec<String> = vec!["replay".into(), "record".into(), "--lib".into()];
        all.push(koala_lib().display().to_string());
        all.extend(["--report".to_string(), format!("{name}.json")]);
        all.extend(options.iter().map(|o| o.to_string()));
        all.push("--".into());
        all.push(node.clone());
        all.extend(args.iter().cloned());
        run_koala(&dir, name, &all, env)
    };

    // The recorded clock: every call exact; only the uuid differs.
    let run = replay("shifted", &["--ignore", "json:$.id"], &[]);
    run.assert_all_passed(ORDERS.len());
    for (verdict, noise, result) in report_sessions(&dir, "shifted.json") {
        assert_eq!(verdict, "pass");
        assert_eq!(noise, ["json:$.id"], "{result:?}");
        let (mut got, mut want) = (
            body(result.response.as_bytes()),
            body(result.recorded_response.as_bytes()),
        );
        assert_ne!(got["id"], want["id"], "randomUUID is not reached");
        got["id"] = Value::Null;
        want["id"] = Value::Null;
        assert_eq!(got, want, "all but the uuid, t and iso included");
        let calls: Vec<_> = result.calls.iter().filter(|c| !c.setup).collect();
        assert_eq!(
            calls.len(),
            2,
            "SET and the backend fetch: {:?}",
            result.calls
        );
        for call in calls {
            assert_eq!(call.on_miss, None, "{call:?}");
            assert!(call.matched.is_some(), "{call:?}");
            assert_eq!(call.score, 1.0, "an exact match: {call:?}");
        }
    }
    // Without the rule: the uuid alone fails them.
    let run = replay("uuid", &[], &[]);
    assert_ne!(run.code, Some(0), "{}", run.output());
    assert_eq!(
        run.stdout.matches("1 JSON value(s) differ:").count(),
        ORDERS.len(),
        "{}",
        run.output()
    );
    assert_eq!(
        run.stdout.matches("$.id: ").count(),
        ORDERS.len(),
        "{}",
        run.output()
    );

    // The real clock: the timestamps fail them too.
    let real = [("KOALA_REPLAY_TIME", "real".to_string())];
    let run = replay("real", &["--ignore", "json:$.id"], &real);
    assert_ne!(run.code, Some(0), "{}", run.output());
    for (verdict, _, result) in report_sessions(&dir, "real.json") {
        assert_eq!(verdict, "fail");
        let (got, want) = (
            body(result.response.as_bytes()),
            body(result.recorded_response.as_bytes()),
        );
        assert_ne!(got["t"], want["t"]);
        assert_ne!(got["iso"], want["iso"]);
    }
}
