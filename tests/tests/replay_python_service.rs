//! `koala replay` against the Python service of `python_redis_backend`
//! (redis + backend), with both dependencies stopped: every session passes
//! and every call is answered from its own recorded call; the service's
//! start-up traffic is answered from the background record. Then one byte
//! of one response changes: exactly that session fails, with a readable
//! diff, and the exit status, report and JUnit file say so.

use koala_tests::replay::*;
use koala_tests::*;

const CONNECTIONS: usize = 4;
const REQUESTS_PER_CONNECTION: usize = 5;
/// The request whose answer the service changes in the second replay.
const ALTERED: &str = "c2r3";

#[test]
fn replay_python_service() {
    let dir = TestDir::new("replay_python_service");
    // Recorded with redis and the backend, which are stopped now.
    let service = record_items(
        &dir,
        "redis_service.py",
        &[],
        CONNECTIONS,
        REQUESTS_PER_CONNECTION,
    );
    let recording = &service.recording;
    let total = CONNECTIONS * REQUESTS_PER_CONNECTION;
    // The start-up traffic (HELLO/CLIENT SETINFO..., PING) is in the
    // background record, and only there.
    assert_eq!(recording.background.len(), 1, "one background record");
    let startup = &recording.background[0];
    assert_bytes(
        startup
            .calls
            .last()
            .expect("start-up calls")
            .request
            .as_bytes(),
        &resp_command(&["PING"]),
        "the last start-up call",
    );

    // --- Replay: everything passes, every call matched.
    let run = replay_python(
        &dir,
        "koala-replay",
        &["--report", "r.json", "--junit", "j.xml"],
        "redis_service.py",
        &service.args,
        &[],
    );
    let out = run.output();
    run.assert_all_passed(total);
    assert!(!run.stdout.contains("FAIL"), "{out}");
    run.assert_summary([total, total, 0, 0], [3 * total, 0, 0, 0]);
    run.assert_replaying(total, 1, 1);

    let report = read_report(&dir.join("r.json"));
    assert_eq!(report["koala_replay_report"].as_u64(), Some(1));
    assert_eq!(report["concurrency"].as_u64(), Some(1));
    assert_eq!(report["interrupted"].as_bool(), Some(false));
    assert_eq!(
        report["sut"].as_str(),
        Some(format!("127.0.0.1:{}", recording.port).as_str()),
        "the recorded inbound address"
    );
    assert_report_summary(&report, [total, total, 0, 0], [3 * total, 0, 0, 0]);
    assert_report_all_replayed(&report, recording);

    let junit = std::fs::read_to_string(dir.join("j.xml")).expect("JUnit file");
    let cases = junit_testcases(&junit);
    assert_eq!(cases.len(), total, "{junit}");
    assert!(
        !junit.contains("<failure") && !junit.contains("<error"),
        "{junit}"
    );
    for attribute in ["tests", "failures", "errors"] {
        let expected = if attribute == "tests" {
            total.to_string()
        } else {
            "0".to_string()
        };
        assert_eq!(
            xml_attribute(&junit, attribute),
            Some(expected),
            "{attribute} in {junit}"
        );
    }
    for (id, location) in &recording.locations {
        let (file, line) = location.rsplit_once(':').unwrap();
        assert!(
            cases.iter().any(|c| c.starts_with(&format!(
                "<testcase name=\"{id}\" classname=\"{file}\" file=\"{file}\" line=\"{line}\""
            )) && c.ends_with("/>")),
            "no passing testcase for {id} at {location}:\n{junit}"
        );
    }

    // --- The service now answers hits=2 instead of hits=1 for one request.
    let run = replay_python(
        &dir,
        "koala-replay-altered",
        &["--report", "r2.json", "--junit", "j2.xml"],
        "redis_service.py",
        &service.args,
        &[("REDIS_SERVICE_ALTER_ITEM", ALTERED.to_string())],
    );
    let out = run.output();
    assert_eq!(run.code, Some(1), "{out}");
    let altered = recording.by_item()[ALTERED];
    let location = &recording.locations[&altered.id];
    let fails: Vec<&str> = run
        .stdout
        .lines()
        .filter(|l| l.starts_with("FAIL  ") || l.starts_with("ERROR "))
        .collect();
    assert_eq!(
        fails,
        vec![format!("FAIL  {}  ({location})", altered.id)],
        "{out}"
    );
    // The body up to the changed byte (the hits digit).
    let body =
        format!("item {ALTERED}: value=value-{ALTERED} backend=backend says {ALTERED} hits=");
    // 40 characters of context before the difference, marked as cut.
    let context = format!("…{}", &body[body.len() - 40..]);
    let expected_diff = [
        "  response differs (body)".to_string(),
        "    response (HTTP, ended: framed):".to_string(),
        format!(
            "      body differs: text: recorded {n} bytes, actual {n} bytes (first difference)",
            n = body.len() + 2
        ),
        format!(
            "        first difference at byte {} (line 1, column {})",
            body.len(),
            body.len() + 1
        ),
        format!("          recorded: {context}1\\n"),
        format!("          actual:   {context}2\\n"),
        // The caret under the changed digit.
        format!(
            "{}^",
            " ".repeat("          actual:   ".len() + context.chars().count())
        ),
    ];
    let lines: Vec<&str> = run.stdout.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with("FAIL  "))
        .expect("FAIL line");
    assert_eq!(
        &lines[at + 1..at + 1 + expected_diff.len()],
        &expected_diff.iter().map(String::as_str).collect::<Vec<_>>()[..],
        "the diff of the altered session\n{out}"
    );
    // Every call still answered from the recording: only the answer differs.
    run.assert_summary([total, total - 1, 1, 0], [3 * total, 0, 0, 0]);
    assert!(
        run.stdout.lines().any(|l| l
            == format!(
                "FAILED: 1 failed, 0 error(s), {} passed, of {total} session(s)",
                total - 1
            )),
        "{out}"
    );

    let report = read_report(&dir.join("r2.json"));
    assert_report_summary(&report, [total, total - 1, 1, 0], [3 * total, 0, 0, 0]);
    let entries = report_entries(&report);
    assert_eq!(entries.len(), total);
    for entry in entries {
        let id = entry_id(entry);
        let recorded = recording.session(id);
        let result = entry_result(entry);
        if id != altered.id {
            assert_eq!(entry["verdict"].as_str(), Some("pass"), "{entry}");
            assert_result_replays(&result, recorded, id);
            continue;
        }
        assert_eq!(entry["verdict"].as_str(), Some("fail"), "{entry}");
        assert_eq!(
            entry["reason"].as_str(),
            Some("response differs (body)"),
            "{entry}"
        );
        assert!(entry["error"].is_null(), "{entry}");
        let diff = entry["diff"].as_str().expect("a diff");
        // The console's explanation without its indentation.
        let expected: Vec<&str> = expected_diff[1..].iter().map(|l| &l[4..]).collect();
        assert_eq!(diff.lines().collect::<Vec<_>>(), expected, "report diff");
        assert_bytes(
            result.response.as_bytes(),
            &item_response(ALTERED, 2),
            "the altered response",
        );
        assert_bytes(
            result.recorded_response.as_bytes(),
            recorded.inbound.response.as_bytes(),
            "the recorded response",
        );
        // The calls were still all answered from the recording, exactly.
        assert_calls_replayed(&result.calls, recorded, "the altered session");
        assert!(result.unmatched.is_empty() && result.missing.is_empty());
    }

    let junit = std::fs::read_to_string(dir.join("j2.xml")).expect("JUnit file");
    let cases = junit_testcases(&junit);
    assert_eq!(cases.len(), total, "{junit}");
    let failing: Vec<&String> = cases.iter().filter(|c| c.contains("<failure")).collect();
    assert_eq!(failing.len(), 1, "{junit}");
    assert!(
        failing[0].starts_with(&format!("<testcase name=\"{}\"", altered.id))
            && failing[0]
                .contains("<failure message=\"response differs (body)\" type=\"mismatch\">"),
        "{junit}"
    );
    assert!(!junit.contains("<error"), "{junit}");
    assert_eq!(xml_attribute(&junit, "failures").as_deref(), Some("1"));
    assert_eq!(xml_attribute(&junit, "errors").as_deref(), Some("0"));
}
