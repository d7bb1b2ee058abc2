//! Hand-off threads: a Java 17 `HttpServer` with a pool of 4 threads calls
//! a backend through `java.net.http.HttpClient`, which writes requests from
//! its own selector thread (serving no session), and redis through a raw
//! socket from the request's thread (`fixtures/java/HandoffService.java`,
//! run from source by `java`, under `koala record`).
//!
//! - One request at a time: every call is attributed (the selector thread's
//!   sends go to the only session waiting), and the replay passes.
//! - Four requests in flight: no call lands in a wrong session; the
//!   selector thread's sends that cannot be told go to the background
//!   record flagged `unattributed`, counted in `koala record`'s summary.
//! - Four in flight, each request carrying `X-Request-Id`, which the
//!   service copies into its backend request: every call attributed by it.

use koala_tests::event_loop::*;
use koala_tests::*;

fn stack() -> Stack {
    Stack {
        command: vec![
            require_program("java", "openjdk-17-jdk-headless")
                .display()
                .to_string(),
            // IPv4 sockets: addresses as the other tests see them.
            "-Djava.net.preferIPv4Stack=true".to_string(),
            fixture("java/HandoffService.java").display().to_string(),
        ],
        program: "java",
        incr: &["INCR"],
    }
}

fn plan(at_once: bool, request_ids: bool) -> Plan {
    Plan {
        requests: vec![("jv1", 300), ("jv2", 0), ("jv3", 200), ("jv4", 50)],
        at_once,
        request_ids,
    }
}

#[test]
fn handoff_java_one_at_a_time_every_call_attributed_and_replayed() {
    let stack = stack();
    let mut run = record_plan(
        "handoff_java_one_at_a_time",
        &stack,
        &plan(false, false),
        &[],
    );
    assert_own_calls(&run, &stack);
    assert!(
        !run.koala_stderr.contains("unattributed"),
        "{}",
        run.koala_stderr
    );
    run.stop_dependencies();
    assert_replays(&run, &stack, 1);
}

#[test]
fn handoff_java_in_flight_no_call_in_a_wrong_session() {
    let stack = stack();
    let run = record_plan("handoff_java_in_flight", &stack, &plan(true, false), &[]);
    let all: Vec<String> = run.sessions.iter().map(show).collect();
    let all = all.join("\n");
    assert_eq!(run.sessions.len(), run.sent.len(), "{all}");
    let mentions = |call: &Exchange| -> Vec<&'static str> {
        let request = String::from_utf8_lossy(call.request.as_bytes()).into_owned();
        run.sent
            .iter()
            .map(|s| s.id)
            .filter(|id| request.contains(id))
            .collect()
    };
    let backend_peer = format!("127.0.0.1:{}", run.backend_port);
    let mut backend_calls = Vec::new();
    for sent in &run.sent {
        let session = run
            .sessions
            .iter()
            .find(|s| s.inbound.request.as_bytes() == sent.request.as_slice())
            .unwrap_or_else(|| panic!("a session for {}:\n{all}", sent.id));
        let what = format!("session of {}: {}", sent.id, show(session));
        for call in &session.calls {
            assert_eq!(mentions(call), [sent.id], "{what}: only its own calls");
            assert!(!call.unattributed, "{what}");
            if call.peer == backend_peer {
                backend_calls.push(sent.id);
            }
        }
        // The request's thread sends its redis calls itself.
        let redis: Vec<&Exchange> = session
            .calls
            .iter()
            .filter(|c| c.peer != backend_peer)
            .collect();
        assert_eq!(redis.len(), 2, "{what}: its GET and INCR");
    }
    let mut unattributed = 0;
    for record in &run.background {
        for call in &record.calls {
            let ids = mentions(call);
            if ids.is_empty() {
                continue;
            }
            assert_eq!(call.peer, backend_peer, "{}", show(record));
            assert!(call.unattributed, "flagged: {}", show(record));
            assert_eq!(ids.len(), 1, "{}", show(record));
            backend_calls.push(ids[0]);
            unattributed += 1;
        }
    }
    backend_calls.sort_unstable();
    let mut expected: Vec<&str> = run.sent.iter().map(|s| s.id).collect();
    expected.sort_unstable();
    assert_eq!(backend_calls, expected, "each backend call once, somewhere");
    if unattributed > 0 {
        let said = format!(
            "{unattributed} call{} unattributed",
            if unattributed == 1 { "" } else { "s" }
        );
        assert!(
            run.koala_stderr.contains(&said),
            "{said}\n{}",
            run.koala_stderr
        );
    }
    // Replayed with redis and the backend stopped: the unattributed calls
    // answer the backend requests of whichever session makes them.
    let mut run = run;
    run.stop_dependencies();
    for concurrency in [1, 4] {
        assert_replays(&run, &stack, concurrency);
    }
}

#[test]
fn handoff_java_in_flight_with_request_ids_every_call_attributed() {
    let stack = stack();
    let run = record_plan("handoff_java_request_ids", &stack, &plan(true, true), &[]);
    assert_own_calls(&run, &stack);
}
