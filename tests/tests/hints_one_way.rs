//! A one-way protocol: messages, one per line, several on one connection,
//! never answered; the service forwards each to redis (`RPUSH`). The
//! `thread-shutdown` hint after each message makes exactly one session per
//! message: its exact bytes, an empty response, `end: hint`, its own call.
//! Without the hint the messages pile up in one session until the
//! connection closes, as `docs/helper-hints.md` says.

use std::io::{Read, Write};
use std::thread;
use std::time::{Duration, Instant};

use koala_tests::*;

/// The messages, each a line; one is not UTF-8 (recorded as base64).
fn messages() -> Vec<Vec<u8>> {
    vec![
        b"event 1 login alice\n".to_vec(),
        b"event 2 \xff\xfe binary \x00 payload\n".to_vec(),
        b"event 3 logout alice\n".to_vec(),
        b"event 4 shutdown\n".to_vec(),
    ]
}

/// RPUSH messages <line without its \n>, as redis-py sends it.
fn rpush(message: &[u8]) -> Vec<u8> {
    let value = &message[..message.len() - 1];
    let mut out = b"*3\r\n$5\r\nRPUSH\r\n$8\r\nmessages\r\n".to_vec();
    out.extend_from_slice(format!("${}\r\n", value.len()).as_bytes());
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
    out
}

/// Waits until the redis list `messages` has `count` items (the service
/// has forwarded that many messages), asking redis from the test.
fn wait_for_list(redis_port: u16, count: usize) {
    let mut stream = connect(redis_port);
    let deadline = Instant::now() + SESSION_TIMEOUT;
    loop {
        stream
            .write_all(&resp_command(&["LLEN", "messages"]))
            .unwrap();
        let mut reply = Vec::new();
        let mut byte = [0u8; 1];
        while !reply.ends_with(b"\r\n") {
            stream.read_exact(&mut byte).expect("redis reply");
            reply.push(byte[0]);
        }
        if reply == format!(":{count}\r\n").as_bytes() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "redis list has {:?}, expected {count} messages",
            String::from_utf8_lossy(&reply)
        );
        thread::sleep(Duration::from_millis(5));
    }
}

struct Run {
    sessions: Vec<Session>,
    background: Vec<Session>,
    client: String,
    redis_peer: String,
    port: u16,
}

fn run(test: &str, mode: &str) -> Run {
    let dir = TestDir::new(test);
    let record = dir.join("record");
    let (_redis, redis_port) = start_redis(&dir);
    let port = free_port();
    let mut service = Spec::python_fixture("service", "hints_one_way_service.py")
        .args([port.to_string(), redis_port.to_string(), mode.to_string()])
        .record_to(&record)
        .env("KOALA_SESSION_IDLE_MS", 10_000)
        .spawn(&dir);
    service.wait_for_port(port);

    let mut stream = connect(port);
    let client = stream.local_addr().unwrap().to_string();
    // One message at a time: the next is sent once the previous one has
    // been forwarded, so the service reads each message alone.
    for (i, message) in messages().iter().enumerate() {
        stream.write_all(message).unwrap();
        wait_for_list(redis_port, i + 1);
    }
    if mode == "hints" {
        // Each message is ended by its hint, the connection still open.
        wait_for_sessions(&record, messages().len());
        drop(stream);
    } else {
        drop(stream);
        wait_for_sessions(&record, 1);
    }
    service.stop_cleanly();
    let sessions = read_sessions(&record);
    for session in &sessions {
        assert_eq!(session.pid, service.pid(), "{}", show(session));
    }
    Run {
        sessions,
        background: background_records(&record),
        client,
        redis_peer: format!("127.0.0.1:{redis_port}"),
        port,
    }
}

fn assert_background(run: &Run) {
    assert_eq!(run.background.len(), 1, "one background record");
    let ping = run.background[0].calls.last().expect("the start-up PING");
    assert_exchange(
        ping,
        &run.redis_peer,
        &resp_command(&["PING"]),
        b"+PONG\r\n",
        &show(&run.background[0]),
    );
    for call in &run.background[0].calls {
        assert!(
            find(call.request.as_bytes(), b"RPUSH").is_none(),
            "a message's call in the background record: {}",
            show(&run.background[0])
        );
    }
}

#[test]
fn hints_one_way() {
    let run = run("hints_one_way", "hints");
    let messages = messages();
    assert_eq!(
        run.sessions.len(),
        messages.len(),
        "exactly one session per message:\n{}",
        run.sessions.iter().map(show).collect::<Vec<_>>().join("\n")
    );
    let mut sessions = run.sessions.clone();
    sessions.sort_by_key(|s| s.inbound.request_ns);
    for (i, (session, message)) in sessions.iter().zip(&messages).enumerate() {
        let what = format!("session of message {}: {}", i + 1, show(session));
        assert_eq!(
            session.inbound.local,
            format!("127.0.0.1:{}", run.port),
            "{what}"
        );
        assert_exchange(
            &session.inbound,
            &run.client,
            message,
            b"",
            &format!("{what}\ninbound"),
        );
        assert_eq!(session.inbound.response_ns, 0, "{what}: no response");
        assert_eq!(session.end, Some(EndReason::Hint), "{what}");
        assert_eq!(session.calls.len(), 1, "{what}: its own call only");
        assert_exchange(
            &session.calls[0],
            &run.redis_peer,
            &rpush(message),
            format!(":{}\r\n", i + 1).as_bytes(),
            &format!("{what}\nRPUSH"),
        );
    }
    assert_background(&run);
}

/// Without the hint nothing ends a message: one session holds them all,
/// until the client closes the connection.
#[test]
fn hints_one_way_without_hints() {
    let run = run("hints_one_way_without_hints", "no-hints");
    let messages = messages();
    assert_eq!(
        run.sessions.len(),
        1,
        "one session for the whole connection:\n{}",
        run.sessions.iter().map(show).collect::<Vec<_>>().join("\n")
    );
    let session = &run.sessions[0];
    let what = show(session);
    assert_exchange(
        &session.inbound,
        &run.client,
        &messages.concat(),
        b"",
        &format!("{what}\ninbound"),
    );
    assert_eq!(session.end, Some(EndReason::Close), "{what}");
    assert_eq!(session.calls.len(), messages.len(), "{what}");
    for (i, (call, message)) in session.calls.iter().zip(&messages).enumerate() {
        assert_exchange(
            call,
            &run.redis_peer,
            &rpush(message),
            format!(":{}\r\n", i + 1).as_bytes(),
            &format!("{what}\nRPUSH {}", i + 1),
        );
    }
    assert_background(&run);
}
