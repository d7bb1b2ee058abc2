//! A dependency that speaks first (`greeting_server.py`), replayed with the
//! greeting server stopped. The service's answer embeds the greeting it
//! read, and the greeting is unique to this run, so a passing replay proves
//! the greeting was served from the recording:
//!
//! - per request: from the session's own greeting call, served on connect;
//! - at start-up: from the background record, before any session.

use koala_tests::replay::*;
use koala_tests::*;

const IDS: [&str; 3] = ["g1", "g2", "g3"];

struct Recorded {
    recording: Recording,
    greeting: String,
    greeting_port: u16,
}

/// Records `greeting_service.py` in `mode` answering IDS on one keep-alive
/// connection, then stops the greeting server.
fn record(dir: &TestDir, mode: &str) -> Recorded {
    let greeting = unique_greeting(mode);
    let greeting_port = free_port();
    let mut greeter = Spec::python_fixture("greeting_server", "greeting_server.py")
        .args([greeting_port.to_string(), greeting.clone()])
        .spawn(dir);
    greeter.wait_for_port(greeting_port);

    let port = free_port();
    let record = dir.join("record");
    let mut service = Spec::python_fixture("record-service", "greeting_service.py")
        .args([
            port.to_string(),
            greeting_port.to_string(),
            mode.to_string(),
        ])
        .record_to(&record)
        .spawn(dir);
    service.wait_for_port(port);
    let mut stream = connect(port);
    for id in IDS {
        let request = format!("GET /hello/{id} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n");
        let response = http_exchange(&mut stream, request.as_bytes());
        assert_bytes(
            &response,
            &hello_response(&greeting, id),
            &format!("answer to {id}"),
        );
    }
    drop(stream);
    wait_for_sessions(&record, IDS.len());
    service.stop_cleanly();
    greeter.stop();
    assert_port_closed(greeting_port, "the greeting server");
    let recording = Recording::read(dir, "record", port, service.pid());
    assert_eq!(
        recording.sessions.len(),
        IDS.len(),
        "{}",
        describe_dir(&record)
    );
    Recorded {
        recording,
        greeting,
        greeting_port,
    }
}

/// The service's answer for `id` when the greeting server said `greeting`.
fn hello_response(greeting: &str, id: &str) -> Vec<u8> {
    let body = format!("greeting={greeting} reply=250 ok HELLO {id}\n");
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// `koala replay record --report r.json -- python greeting_service.py ...`:
/// asserts every session passed, replayed exactly; returns the report.
fn replay_with_koala(dir: &TestDir, recorded: &Recorded, mode: &str) -> Json {
    let recording = &recorded.recording;
    let run = run_koala(
        dir,
        "koala-replay",
        &replay_python_args(
            &["record"],
            &["--report".into(), "r.json".into()],
            "greeting_service.py",
            &[
                recording.port.to_string(),
                recorded.greeting_port.to_string(),
                mode.to_string(),
            ],
        ),
        &[],
    );
    let out = run.output();
    assert_eq!(run.code, Some(0), "{out}");
    assert!(
        run.stdout
            .lines()
            .any(|l| l == format!("OK: all {} session(s) passed", IDS.len())),
        "{out}"
    );
    let report = read_report(&dir.join("r.json"));
    let calls: usize = recording.sessions.iter().map(|(_, s)| s.calls.len()).sum();
    assert_report_summary(
        &report,
        [IDS.len() as u64, IDS.len() as u64, 0, 0],
        [calls as u64, 0, 0, 0],
    );
    assert_report_all_replayed(&report, recording);
    // The answers embed this run's greeting: it came from the recording.
    for entry in report.array_at("sessions") {
        let result = &entry["result"];
        let id = request_item(
            recording
                .session(entry.str_at("id"))
                .inbound
                .request
                .as_bytes(),
        );
        assert_bytes(
            &payload(&result["response"]),
            &hello_response(&recorded.greeting, &id),
            &format!("replayed answer to {id}"),
        );
    }
    report
}

#[test]
fn replay_greeting_per_request() {
    let dir = TestDir::new("replay_greeting_per_request");
    let recorded = record(&dir, "per-request");
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
    for entry in report.array_at("sessions") {
        let result = &entry["result"];
        let greeting = &result["calls"][0];
        assert_eq!(greeting["greeting"].as_bool(), Some(true), "{result}");
        assert_eq!(greeting["matched"].as_u64(), Some(0), "{result}");
        assert_eq!(
            greeting["peer"].as_str(),
            Some(format!("127.0.0.1:{}", recorded.greeting_port).as_str()),
            "{result}"
        );
        assert_bytes(&payload(&greeting["request"]), b"", "greeting request");
        assert_bytes(
            &payload(&greeting["served"]),
            &greeting_line,
            "greeting served on connect",
        );
    }
}

#[test]
fn replay_greeting_at_startup() {
    let dir = TestDir::new("replay_greeting_at_startup");
    let recorded = record(&dir, "startup");
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
    for entry in report.array_at("sessions") {
        let calls = entry["result"].array_at("calls");
        assert_eq!(calls.len(), 1, "{entry}");
        assert_eq!(calls[0]["greeting"].as_bool(), Some(false), "{entry}");
    }

    // The same, with the service started in replay mode by the test: its
    // status shows the greeting served from the background record at
    // start-up, before any session, and never again.
    let ports = ReplayPorts::new(recording.port);
    let mut service = ports
        .apply(
            Spec::python_fixture("replay-service", "greeting_service.py").args([
                recording.port.to_string(),
                recorded.greeting_port.to_string(),
                "startup".to_string(),
            ]),
            "replay",
        )
        .env("KOALA_REPLAY_BACKGROUND", recording.dir.display())
        .env("KOALA_LOG_FILE", dir.join("replay-koala.log").display())
        .spawn(&dir);
    wait_until_replay_ready(&mut service, ports.inbound, ports.sut);
    let status = api_status(ports.inbound);
    let counters = |status: &Json| {
        [
            "background_records",
            "background_calls_served",
            "sessions_replayed",
            "calls_matched",
            "calls_unmatched",
        ]
        .map(|k| status.u64_at(k))
    };
    assert_eq!(counters(&status), [1, 1, 0, 0, 0], "{status}");
    assert_eq!(status["pid"].as_u64(), Some(service.pid() as u64));
    let lines = record_lines(&recording.dir);
    let mut replayed = 0;
    for (line, session) in lines.iter().filter(|(_, s)| !s.is_background()) {
        let answer = api_post(ports.inbound, "/v1/replay", line.as_bytes());
        assert_eq!(answer.status, 200, "{answer}");
        let result = answer.json();
        assert_result_replays(&result, session, "direct replay");
        let id = request_item(session.inbound.request.as_bytes());
        assert_bytes(
            &payload(&result["response"]),
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
        "{status}"
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
    assert_eq!(run.code, Some(0), "{}", run.output());
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
        "{status}"
    );
    assert!(service.exited().is_none(), "{}", service.output_report());
}
