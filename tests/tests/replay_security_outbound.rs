//! The outbound server serves only the connections the library's own
//! redirect registered in the shared table: anyone else on the machine who
//! connects to it during a replay (here a plain TCP client of the test,
//! sending exactly the bytes the service sent when recorded) gets nothing
//! recorded — not one byte, the connection closed — while the service's
//! redirected connections are still answered from the recording. Past 64
//! strangers waiting for a slot, more are refused at once. The
//! refusal is logged once. The service is the Python service of
//! `python_redis_backend`, started in replay mode with its dependencies
//! stopped.

use std::io::{ErrorKind, Read, Write};
use std::time::{Duration, Instant};

use koala_tests::replay::*;
use koala_tests::*;

/// Longer than the outbound server's wait for a connection's slot.
const REFUSAL_BOUND: Duration = Duration::from_secs(5);
/// How many connections may wait for their slot at once.
const MAX_WAITING: usize = 64;
/// Strangers past them in a flood.
const EXTRA: usize = 16;
/// Well short of the outbound server's wait for a slot (1 s).
const AT_ONCE: Duration = Duration::from_millis(700);

/// Connects to the outbound server as a stranger, sends `request`, and
/// reads all it gets until the server closes (or [`REFUSAL_BOUND`]).
/// Returns the bytes and whether the server closed.
fn stranger_exchange(port: u16, request: &[u8]) -> (Vec<u8>, bool) {
    let mut stream = connect(port);
    stream
        .write_all(request)
        .expect("send to the outbound server");
    let deadline = Instant::now() + REFUSAL_BOUND;
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (received, false);
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut chunk) {
            Ok(0) => return (received, true),
            Ok(n) => received.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return (received, false);
            }
            // A reset is a close too.
            Err(_) => return (received, true),
        }
    }
}

#[test]
fn strangers_get_nothing_from_the_outbound_server() {
    let dir = TestDir::new("replay_security_outbound");
    let recorded = record_items(&dir, "redis_service.py", &[], 1, 2);
    let recording = &recorded.recording;
    let lines = record_lines(&recording.dir);
    let ports = ReplayPorts::new(recording.port);
    let log = dir.join("replay-koala.log");
    let mut service = ports
        .apply(
            Spec::python_fixture("replay-service", "redis_service.py").args(&recorded.args),
            "replay",
        )
        .env("KOALA_REPLAY_BACKGROUND", recording.dir.display())
        .env("KOALA_LOG_FILE", log.display())
        .spawn(&dir);
    wait_until_replay_ready(&mut service, ports.inbound, ports.sut);

    // What a stranger would want: the start-up traffic answered from the
    // background record, and a session's redis and backend calls.
    let background = &recording.background[0];
    let (_, session) = &recording.sessions[0];
    let mut requests: Vec<(String, Vec<u8>)> = Vec::new();
    requests.push((
        "the background's first call".into(),
        background.calls[0].request.as_bytes().to_vec(),
    ));
    for (index, call) in session.calls.iter().enumerate() {
        requests.push((
            format!("call {index} of {} to {}", session.id, call.peer),
            call.request.as_bytes().to_vec(),
        ));
    }
    for (what, request) in &requests {
        let (received, closed) = stranger_exchange(ports.outbound, request);
        assert_eq!(
            String::from_utf8_lossy(&received),
            "",
            "a stranger sending {what} got bytes"
        );
        assert!(
            closed,
            "the outbound server closes a stranger's connection ({what})"
        );
    }

    // A flood of strangers costs no wait past the first MAX_WAITING: those
    // wait up to SLOT_WAIT for a slot that never comes, every other one is
    // refused at once.
    let flood: Vec<_> = (0..MAX_WAITING + EXTRA)
        .map(|_| (connect(ports.outbound), Instant::now()))
        .collect();
    let closes: Vec<_> = flood
        .into_iter()
        .map(|(mut stream, connected)| {
            std::thread::spawn(move || {
                stream.set_read_timeout(Some(REFUSAL_BOUND)).unwrap();
                let mut received = Vec::new();
                let closed = stream.read_to_end(&mut received).is_ok();
                (received, closed, connected.elapsed())
            })
        })
        .collect();
    let mut at_once = 0;
    for close in closes {
        let (received, closed, after) = close.join().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&received),
            "",
            "a flooding stranger got bytes"
        );
        assert!(closed, "a flooding stranger's connection is closed");
        if after < AT_ONCE {
            at_once += 1;
        }
    }
    assert!(
        at_once >= EXTRA,
        "{at_once} of {} strangers were refused within {AT_ONCE:?}, at least {EXTRA} should be",
        MAX_WAITING + EXTRA
    );

    // The service's own redirected connections are still served.
    let (line, session) = lines
        .iter()
        .find(|(_, s)| !s.is_background())
        .expect("a session");
    let answer = api_post(ports.inbound, "/v1/replay", line.as_bytes());
    assert_eq!(answer.status, 200, "{answer}");
    assert_result_replays(&answer.result(), session, "after the strangers");

    // Logged once, whatever the number of strangers.
    let logged = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("replay-koala.log")
        })
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect::<String>();
    assert_eq!(
        logged
            .matches("refused a connection that no redirect")
            .count(),
        1,
        "one WARN for {} refused connections:\n{logged}",
        requests.len()
    );
    assert!(service.exited().is_none(), "{}", service.output_report());
}
