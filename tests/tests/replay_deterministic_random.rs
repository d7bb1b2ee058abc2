//! Recorded randomness per session, and its bound (issue 10): a service
//! answers 8 bytes read from `/dev/urandom` as `dev`, then `uuid4()` and
//! `secrets.token_hex(16)` as `nonce` (16 random bytes each, drawn with
//! getrandom), in that order.
//!
//! - Recorded as is: each session keeps its 40 bytes, the device's first;
//!   replayed, every response is the recorded one byte for byte.
//! - Recorded with `KOALA_MAX_RANDOM_BYTES=32`: each session keeps 32 bytes
//!   and is flagged `random_truncated`; the library's summary line counts
//!   the 8 bytes cut of each (`random_bytes_cut=24`). Replayed, the device's
//!   bytes, the uuid and the first 8 bytes of the nonce are the recorded
//!   ones, the rest is real randomness: each session fails on `$.nonce`
//!   alone.

use koala_session::replay::ReplayResult;
use koala_tests::replay::*;
use koala_tests::*;
use serde_json::Value;

const REQUESTS: u32 = 3;

fn request(port: u16, n: u32) -> Vec<u8> {
    format!("GET /{n} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").into_bytes()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn body(response: &[u8]) -> Value {
    let at = find(response, b"\r\n\r\n").expect("a response head") + 4;
    serde_json::from_slice(&response[at..]).expect("a JSON body")
}

/// Records the requests into `<dir>/<name>`; `env` adds to the service's.
fn record(dir: &TestDir, name: &str, env: &[(&str, &str)]) -> Vec<Session> {
    let port = free_port();
    let mut spec = Spec::python_fixture(name, "uuid_service.py")
        .arg(port)
        .record_to(&dir.join(name));
    for (key, value) in env {
        spec = spec.env(key, value);
    }
    let mut service = spec.spawn(dir);
    service.wait_for_port(port);
    for n in 1..=REQUESTS {
        http_exchange(&mut connect(port), &request(port, n));
    }
    let sessions = wait_for_sessions(&dir.join(name), REQUESTS as usize);
    service.stop_cleanly();
    sessions
}

/// The `koala recording summary` lines of a record directory's log.
fn summary_lines(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("koala.log"))
        .flat_map(|e| {
            std::fs::read_to_string(e.path())
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains("koala recording summary"))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

fn replay(dir: &TestDir, record: &str) -> (KoalaRun, Vec<ReplayResult>) {
    let report = format!("{record}.json");
    let mut args: Vec<String> = vec!["replay".into(), record.into(), "--lib".into()];
    args.push(koala_lib().display().to_string());
    args.extend(["--report".into(), report.clone(), "--".into()]);
    args.push(python().display().to_string());
    args.push(fixture("uuid_service.py").display().to_string());
    // The service listens where it was recorded (koala's default --sut).
    let local = &read_sessions(&dir.join(record))[0].inbound.local;
    args.push(local.rsplit(':').next().unwrap().to_string());
    let run = run_koala(dir, record, &args, &[]);
    let text = std::fs::read_to_string(dir.join(&report)).unwrap();
    let report: Value = serde_json::from_str(&text).unwrap();
    let results = report["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| serde_json::from_value(s["result"].clone()).unwrap())
        .collect();
    (run, results)
}

#[test]
fn replay_deterministic_random() {
    let dir = TestDir::new("replay_deterministic_random");

    let whole = record(&dir, "whole", &[]);
    for session in &whole {
        assert_eq!(session.random.as_bytes().len(), 40, "{}", show(session));
        assert!(!session.random_truncated, "{}", show(session));
        // The device's bytes, as read.
        let dev = body(session.inbound.response.as_bytes())["dev"].clone();
        assert_eq!(
            dev,
            hex(&session.random.as_bytes()[..8]),
            "{}",
            show(session)
        );
    }
    let cut = record(&dir, "cut", &[("KOALA_MAX_RANDOM_BYTES", "32")]);
    for session in &cut {
        assert_eq!(session.random.as_bytes().len(), 32, "{}", show(session));
        assert!(session.random_truncated, "{}", show(session));
        // The kept bytes are the device's, then the uuid's (version and
        // variant bits aside).
        let answer = body(session.inbound.response.as_bytes());
        let id = answer["id"].as_str().unwrap().replace('-', "");
        let drawn = session.random.as_bytes();
        assert_eq!(answer["dev"], hex(&drawn[..8]), "{}", show(session));
        assert_eq!(id[..12], hex(&drawn[8..24])[..12], "{}", show(session));
    }
    let summaries = summary_lines(&dir.join("cut"));
    assert_eq!(summaries.len(), 1, "{summaries:?}");
    assert!(
        summaries[0].contains(" random_bytes_cut=24 "),
        "{}",
        summaries[0]
    );
    assert!(summary_lines(&dir.join("whole"))[0].contains(" random_bytes_cut=0 "));

    let (run, results) = replay(&dir, "whole");
    run.assert_all_passed(REQUESTS as usize);
    for result in &results {
        assert_bytes(
            result.response.as_bytes(),
            result.recorded_response.as_bytes(),
            &format!("session {}", result.id),
        );
    }

    let (run, results) = replay(&dir, "cut");
    assert_ne!(run.code, Some(0), "{}", run.output());
    assert_eq!(results.len(), REQUESTS as usize);
    for result in &results {
        let (got, want) = (
            body(result.response.as_bytes()),
            body(result.recorded_response.as_bytes()),
        );
        assert_eq!(got["dev"], want["dev"], "the device's bytes were kept");
        assert_eq!(got["id"], want["id"], "the uuid's bytes were kept");
        let (nonce, recorded) = (
            got["nonce"].as_str().unwrap(),
            want["nonce"].as_str().unwrap(),
        );
        assert_eq!(
            nonce[..16],
            recorded[..16],
            "8 bytes kept of the nonce's 16"
        );
        assert_ne!(nonce[16..], recorded[16..], "the rest is real randomness");
    }
    assert_eq!(
        run.stdout.matches("1 JSON value(s) differ:").count(),
        REQUESTS as usize,
        "{}",
        run.output()
    );
}
