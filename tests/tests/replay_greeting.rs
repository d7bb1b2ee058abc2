//! A dependency that speaks first (`greeting_server.py`), replayed with the
//! greeting server stopped. The service's answer embeds the greeting it
//! read, and the greeting is unique to this run, so a passing replay proves
//! the greeting was served from the recording:
//!
//! - per request: from the session's own greeting call, served on connect;
//! - at start-up: from the background record, before any session.

use koala_tests::replay::*;
use koala_tests::*;
use serde_json::Value;

const IDS: [&str; 3] = ["g1", "g2", "g3"];

/// `koala replay record --report r.json -- python greeting_service.py ...`:
/// asserts every session passed, replayed exactly, and answered with the
/// greeting of this run; returns the report.
fn replay_with_koala(dir: &TestDir, recorded: &GreetingRecording, mode: &str) -> Value {
    let recording = &recorded.recording;
    let run = replay_python(
        dir,
        "koala-replay",
        &["--report", "r.json"],
        "greeting_service.py",
        &recorded.args(mode),
        &[],
    );
    run.assert_all_passed(IDS.len());
    let report = read_report(&dir.join("r.json"));
    assert_report_summary(
        &report,
        [IDS.len(), IDS.len(), 0, 0],
        [recording.calls(), 0, 0, 0],
    );
    assert_report_all_replayed(&report, recording);
    // The answers embed this run's greeting: it came from the recording.
    for entry in report_entries(&report) {
        let id = request_item(
            recording
                .session(entry_id(entry))
                .inbound
                .request
                .as_bytes(),
        );
        assert_bytes(
            entry_result(entry).response.as_bytes(),
            &hello_response(&recorded.greeting, &id),
            &format!("replayed answer to {id}"),
        );
    }
    report
}

#[test]
fn replay_greeting_per_request() {
    let dir = TestDir::new("replay_greeting_per_request");
    let recorded = record_greeting(&dir, "per-request", &IDS);
    let greeting_line = format!("{}\r\n", recorded.greeting).into_bytes();
    // Each session has its greeting call (empty request) and its line.
    for (_, session) in &recorded.recording.sessions {
        assert_eq!(session.calls.len(), 2, "{}", show(session));
        assert!(session.calls[0].is_greeting(), "{}", show(session));
        assert_bytes(
            session.calls[0].response.as_bytes(),
            &greeting_line,
            &show(session),
        );
    }
    assert!(recorded.recording.background.is_empty());

    let report = replay_with_koala(&dir, &recorded, "per-request");
    for entry in report_entries(&report) {
        let result = entry_result(entry);
        let greeting = &result.calls[0];
        assert!(greeting.greeting, "{entry}");
        assert_eq!(greeting.matched, Some(0), "{entry}");
        assert_eq!(
            greeting.peer,
            format!("127.0.0.1:{}", recorded.greeting_port),
            "{entry}"
        );
        assert_bytes(greeting.request.as_bytes(), b"", "greeting request");
        assert_bytes(
            greeting.served.as_bytes(),
            &greeting_line,
            "greeting served on connect",
        );
    }
}

#[test]
fn replay_greeting_at_startup() {
    let dir = TestDir::new("replay_greeting_at_startup");
    let recorded = record_greeting(&dir, "startup", &IDS);
    let greeting_line = format!("{}\r\n", recorded.greeting).into_bytes();
    let recording = &recorded.recording;
    // The greeting is only in the background record; sessions have their
    // line only.
    assert_eq!(recording.background.len(), 1);
    let background = &recording.background[0];
    assert_eq!(background.calls.len(), 1, "{}", show(background));
    assert!(background.calls[0].is_greeting(), "{}", show(background));
    assert_bytes(
        background.calls[0].response.as_bytes(),
        &greeting_line,
        &show(background),
    );
    for (_, session) in &recording.sessions {
        assert_eq!(session.calls.len(), 1, "{}", show(session));
        assert!(!session.calls[0].is_greeting(), "{}", show(session));
    }

    let report = replay_with_koala(&dir, &recorded, "startup");
    for entry in report_entries(&report) {
        let calls = entry_result(entry).calls;
        assert_eq!(calls.len(), 1, "{entry}");
        assert!(!calls[0].greeting, "{entry}");
    }

    // The same, with the service started in replay mode by the test: its
    // status shows the greeting served from the background record at
    // start-up, before any session, and never again.
    let ports = ReplayPorts::new(recording.port);
    let mut service = ports
        .apply(
            Spec::python_fixture("replay-service", "greeting_service.py")
                .args(recorded.args("startup")),
            "replay",
        )
        .env("KOALA_REPLAY_BACKGROUND", recording.dir.display())
        .env("KOALA_LOG_FILE", dir.join("replay-koala.log").display())
        .spawn(&dir);
    wait_until_replay_ready(&mut service, ports.inbound, ports.sut);
    let status = api_status(ports.inbound);
    // Background records, background calls served, sessions replayed,
    // calls matched and unmatched.
    let counters = |s: &Status| {
        [
            s.background_records,
            s.background_calls_served,
            s.sessions_replayed,
            s.calls_matched,
            s.calls_unmatched,
        ]
    };
    assert_eq!(counters(&status), [1, 1, 0, 0, 0], "{status:?}");
    assert_eq!(status.pid, service.pid());
    let lines = record_lines(&recording.dir);
    let mut replayed = 0;
    for (line, session) in lines.iter().filter(|(_, s)| !s.is_background()) {
        let answer = api_post(ports.inbound, "/v1/replay", line.as_bytes());
        assert_eq!(answer.status, 200, "{answer}");
        let result = answer.result();
        assert_result_replays(&result, session, "direct replay");
        let id = request_item(session.inbound.request.as_bytes());
        assert_bytes(
            result.response.as_bytes(),
            &hello_response(&recorded.greeting, &id),
            &format!("replayed answer to {id}"),
        );
        replayed += 1;
    }
    assert_eq!(replayed, IDS.len());
    let status = api_status(ports.inbound);
    assert_eq!(
        counters(&status),
        [1, 1, IDS.len() as u64, IDS.len() as u64, 0],
        "{status:?}"
    );
    assert!(service.exited().is_none(), "{}", service.output_report());

    // koala on the running service (no CMD): it posts the background
    // record to /v1/background, then replays; all pass, and the greeting
    // is still the one served at start-up.
    let run = run_koala(
        &dir,
        "koala-replay-running",
        &[
            "replay".to_string(),
            "record".to_string(),
            "--inbound".to_string(),
            format!("127.0.0.1:{}", ports.inbound),
            "--report".to_string(),
            "r-running.json".to_string(),
        ],
        &[],
    );
    run.assert_all_passed(IDS.len());
    let report = read_report(&dir.join("r-running.json"));
    assert_report_all_replayed(&report, recording);
    assert_eq!(
        report["sut"].as_str(),
        Some(format!("127.0.0.1:{}", ports.sut).as_str()),
        "the sut of GET /v1/status"
    );
    let status = api_status(ports.inbound);
    assert_eq!(
        counters(&status),
        [2, 1, 2 * IDS.len() as u64, 2 * IDS.len() as u64, 0],
        "{status:?}"
    );
    assert!(service.exited().is_none(), "{}", service.output_report());
}
