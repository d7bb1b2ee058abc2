//! Issue 8, acceptance test 6: an unmatched call, with each
//! `--on-miss` policy. The service (`notes_service.py`: redis SET then GET
//! per request) is recorded with a real redis, which is then stopped; at
//! replay it writes another note text, so each session's SET matches no
//! recorded call, while its closest candidate is the recorded SET of the
//! same key. Whatever the policy, the service stays up (every session is
//! replayed and judged, none errors), each session fails on exactly that
//! one unmatched call, and the report and the log name the call and its
//! closest candidate. What the service got back differs by policy:
//! `closest` the recorded SET's `+OK` (the GET then answers the recorded
//! note), `error` a RESP `-ERR`, `close` a closed connection.

use koala_tests::replay::*;
use koala_tests::*;

const NOTES: [&str; 2] = ["1", "2"];
const RECORDED_TEXT: &str = "remember the milk";
const REPLAYED_TEXT: &str = "buy two dozen fresh eggs at the market";

fn note_request(port: u16, note: &str) -> Vec<u8> {
    format!("GET /note/{note} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").into_bytes()
}

fn note_response(status: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[test]
fn replay_on_miss() {
    let dir = TestDir::new("replay_on_miss");
    let (mut redis, redis_port) = start_redis(&dir);
    let record = dir.join("record");
    let port = free_port();
    let args = [port.to_string(), redis_port.to_string()];
    let mut service = Spec::python_fixture("record-service", "notes_service.py")
        .args(args.clone())
        .record_to(&record)
        .spawn(&dir);
    service.wait_for_port(port);
    for note in NOTES {
        let mut stream = connect(port);
        let response = http_exchange(&mut stream, &note_request(port, note));
        let body = format!("note {note}: {RECORDED_TEXT}\n");
        assert_bytes(
            &response,
            &note_response("200 OK", &body),
            "recorded answer",
        );
    }
    wait_for_sessions(&record, NOTES.len());
    service.stop_cleanly();
    redis.stop();
    assert_port_closed(redis_port, "redis");
    let recording = Recording::read(&dir, "record", port);
    assert_eq!(recording.sessions.len(), NOTES.len());
    let redis_peer = format!("127.0.0.1:{redis_port}");
    // The recorded SET of each session, by note.
    let recorded_set = |note: &str| -> (String, usize) {
        let set = resp_command(&["SET", &format!("note:{note}"), RECORDED_TEXT]);
        recording
            .sessions
            .iter()
            .map(|(_, s)| s)
            .find_map(|s| {
                let index = s
                    .calls
                    .iter()
                    .position(|c| c.request.as_bytes() == set.as_slice())?;
                Some((s.id.clone(), index))
            })
            .unwrap_or_else(|| panic!("no recorded SET of note {note}\n{}", describe_dir(&record)))
    };

    for policy in ["closest", "error", "close"] {
        let log = dir.join(format!("koala-{policy}.log"));
        let report_name = format!("r-{policy}.json");
        let run = replay_python(
            &dir,
            &format!("replay-{policy}"),
            &["--on-miss", policy, "--report", &report_name],
            "notes_service.py",
            &args,
            &[
                ("NOTE_TEXT", REPLAYED_TEXT.to_string()),
                ("KOALA_LOG_FILE", log.display().to_string()),
            ],
        );
        let out = run.output();
        assert_eq!(run.code, Some(1), "{policy}: sessions fail\n{out}");
        let report = read_report(&dir.join(&report_name));
        let entries = report_entries(&report);
        assert_eq!(entries.len(), NOTES.len(), "{policy}\n{out}");
        for note in NOTES {
            let (id, set_index) = recorded_set(note);
            let entry = entries
                .iter()
                .find(|e| e["id"].as_str() == Some(id.as_str()))
                .unwrap_or_else(|| panic!("{policy}: no entry for {id}\n{out}"));
            // Judged, not an error: the service stayed up.
            assert_eq!(
                entry["verdict"].as_str(),
                Some("fail"),
                "{policy} {id}\n{out}"
            );
            let result = &entry["result"];
            let unmatched = result["unmatched"].as_array().expect("unmatched");
            // redis-py reconnects and retries a command whose connection
            // closed (the cost of `close`): the same SET, several times.
            // The other policies answer, so it is sent once.
            match policy {
                "close" => assert!(unmatched.len() > 1, "{policy} {id}: retried\n{result}"),
                _ => assert_eq!(
                    unmatched.len(),
                    1,
                    "{policy} {id}: one unmatched call\n{result}"
                ),
            }
            let sent = resp_command(&["SET", &format!("note:{note}"), REPLAYED_TEXT]);
            for index in unmatched {
                let call = &result["calls"][index.as_u64().unwrap() as usize];
                assert_eq!(
                    call["request"].as_str().map(str::as_bytes),
                    Some(sent.as_slice()),
                    "{policy} {id}: the unmatched call is the SET\n{call}"
                );
            }
            let call = &result["calls"][unmatched[0].as_u64().unwrap() as usize];
            assert_eq!(call["peer"].as_str(), Some(redis_peer.as_str()));
            assert_eq!(call["closest"].as_u64(), Some(set_index as u64), "{call}");
            assert_eq!(call["on_miss"].as_str(), Some(policy), "{call}");
            assert_eq!(call["protocol"].as_str(), Some("redis"), "{call}");
            let served = call["served"].as_str().unwrap_or_default();
            let (status, body) = match policy {
                "closest" => {
                    assert_eq!(served, "+OK\r\n", "{call}");
                    ("200 OK", format!("note {note}: {RECORDED_TEXT}\n"))
                }
                "error" => {
                    assert!(
                        served.starts_with("-ERR koala replay: no recorded call"),
                        "{call}"
                    );
                    (
                        "500 Internal Server Error",
                        "error: ResponseError\n".to_string(),
                    )
                }
                _ => {
                    assert_eq!(served, "", "{call}");
                    (
                        "500 Internal Server Error",
                        "error: ConnectionError\n".to_string(),
                    )
                }
            };
            assert_eq!(
                result["response"].as_str().map(str::as_bytes),
                Some(note_response(status, &body).as_slice()),
                "{policy} {id}: what the service answered\n{result}"
            );
        }
        // The console names the call and its closest candidate.
        assert!(
            run.stdout.contains("unmatched call") && run.stdout.contains("closest: recorded call"),
            "{policy}\n{out}"
        );
        // So does the log, at WARN.
        let log_text = logged(&dir, &format!("koala-{policy}.log"));
        let warning = log_text
            .lines()
            .find(|l| l.contains("no recorded call matches this request") && l.contains("note:1"))
            .unwrap_or_else(|| panic!("{policy}: no WARN line naming the call in\n{log_text}"));
        assert!(warning.contains("WARN"), "{warning}");
        assert!(warning.contains(&redis_peer), "{warning}");
        assert!(
            warning.contains("closest") && warning.contains("remember the milk"),
            "{warning}"
        );
        assert!(warning.contains(&format!("on_miss={policy}")), "{warning}");
    }
}

/// What the library logged to `KOALA_LOG_FILE=<dir>/<name>` (rotated hourly:
/// `<name>.YYYY-MM-DD-HH`).
fn logged(dir: &TestDir, name: &str) -> String {
    let mut text = String::new();
    for entry in std::fs::read_dir(dir.path()).expect("test dir") {
        let path = entry.expect("entry").path();
        let file = path.file_name().unwrap_or_default().to_string_lossy();
        if file.starts_with(name) {
            text.push_str(&std::fs::read_to_string(&path).unwrap_or_default());
        }
    }
    text
}
