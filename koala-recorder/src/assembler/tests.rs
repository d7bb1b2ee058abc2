//! Session assembly from synthetic event sequences.

use super::*;
use crate::record::ProcessIdentity;
use koala_session::{Exchange, Payload, Session};

const MS: u64 = 1_000_000;
const IDLE_NS: u64 = 1000 * MS;

/// Single-slice byte events, and finished sessions in the session model.
impl Assembler {
    /// The service read `data` from `fd`.
    fn received(&mut self, fd: i32, tid: u32, data: &[u8], now_ns: u64) {
        self.received_parts(fd, tid, Bytes(&[data]), now_ns);
    }

    /// The service wrote `data` to `fd`.
    fn sent(&mut self, fd: i32, tid: u32, data: &[u8], now_ns: u64) {
        self.sent_parts(fd, tid, Bytes(&[data]), now_ns);
    }

    /// Sessions finished so far, as the writer's line would read back for
    /// program `svc` started at second 7.
    fn take_finished(&mut self) -> Vec<Session> {
        let identity = ProcessIdentity {
            program: "svc".into(),
            start_secs: 7,
        };
        self.finished
            .drain(..)
            .map(|s| s.to_session(&identity))
            .collect()
    }

    fn open_sessions(&self) -> usize {
        self.sessions.len()
    }
}

fn assembler() -> Assembler {
    assembler_with(Limits {
        max_payload_bytes: 1 << 20,
        max_calls_per_session: 100,
        idle_ns: IDLE_NS,
    })
}

fn assembler_with(limits: Limits) -> Assembler {
    Assembler::new(42, limits)
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Accepts `fd` from client port `peer` on the service port 80.
fn accept(a: &mut Assembler, fd: i32, peer: u16, now: u64) {
    a.open_connection(fd, Direction::Inbound, addr(80), addr(peer), 0, now);
}

/// Connects `fd` from local port `local` to dependency port `peer`.
fn connect(a: &mut Assembler, fd: i32, tid: u32, local: u16, peer: u16, now: u64) {
    a.open_connection(fd, Direction::Outbound, addr(local), addr(peer), tid, now);
}

fn text(payload: &Payload) -> &str {
    std::str::from_utf8(payload.as_bytes()).unwrap()
}

/// (request, response) of every call, as text.
fn calls(session: &Session) -> Vec<(&str, &str)> {
    session
        .calls
        .iter()
        .map(|c| (text(&c.request), text(&c.response)))
        .collect()
}

#[test]
fn keep_alive_yields_one_session_per_request() {
    let mut a = assembler();
    accept(&mut a, 5, 5000, 1);
    a.received(5, 10, b"GET /a HTTP/1.1\r\n", 2);
    a.received(5, 10, b"\r\n", 3);
    a.sent(5, 10, b"HTTP/1.1 200 OK\r\n\r\n", 4);
    a.sent(5, 10, b"body-a", 5);
    assert!(
        a.take_finished().is_empty(),
        "the session lasts until the next request"
    );
    a.received(5, 10, b"GET /b HTTP/1.1\r\n\r\n", 6);
    let first = a.take_finished();
    assert_eq!(first.len(), 1);
    let s = &first[0];
    assert_eq!(text(&s.inbound.request), "GET /a HTTP/1.1\r\n\r\n");
    assert_eq!(text(&s.inbound.response), "HTTP/1.1 200 OK\r\n\r\nbody-a");
    assert_eq!((s.inbound.request_ns, s.inbound.response_ns), (2, 4));
    assert_eq!(
        (s.inbound.local.as_str(), s.inbound.peer.as_str()),
        ("127.0.0.1:80", "127.0.0.1:5000")
    );
    assert_eq!(
        (s.pid, s.tid, s.program.as_str(), s.id.as_str()),
        (42, 10, "svc", "7-42-1")
    );
    assert_eq!(s.end, Some(EndReason::NextRequest));
    a.sent(5, 10, b"HTTP/1.1 200 OK\r\n\r\nbody-b", 7);
    a.forget_fd(5);
    let second = a.take_finished();
    assert_eq!(second.len(), 1);
    assert_eq!(text(&second[0].inbound.request), "GET /b HTTP/1.1\r\n\r\n");
    assert_eq!(
        text(&second[0].inbound.response),
        "HTTP/1.1 200 OK\r\n\r\nbody-b"
    );
    assert_eq!(second[0].end, Some(EndReason::Close));
    assert_eq!(second[0].id, "7-42-2");
    assert_eq!(a.open_sessions(), 0);
}

#[test]
fn a_pooled_connection_gives_each_call_to_the_sending_threads_session() {
    let mut a = assembler();
    // Opened at start-up, outside any session, and used twice there.
    connect(&mut a, 9, 1, 40000, 6379, 1);
    a.sent(9, 1, b"CLIENT SETNAME x\r\n", 2);
    a.received(9, 1, b"+OK\r\n", 2);
    a.sent(9, 1, b"PING\r\n", 2);
    a.received(9, 1, b"+PONG\r\n", 3);
    accept(&mut a, 5, 5001, 4);
    accept(&mut a, 6, 5002, 4);
    a.received(5, 11, b"req-a", 5);
    a.received(6, 12, b"req-b", 6);
    a.sent(9, 11, b"GET a\r\n", 7);
    a.received(9, 12, b"va\r\n", 8); // read by another thread: still a's call
    a.sent(9, 12, b"GET b\r\n", 9);
    a.received(9, 12, b"vb", 10);
    a.received(9, 12, b"\r\n", 11);
    a.sent(6, 12, b"resp-b", 12);
    a.sent(5, 11, b"resp-a", 13);
    a.forget_fd(5);
    a.forget_fd(6);
    let finished = a.take_finished();
    assert_eq!(finished.len(), 2);
    let (sa, sb) = (&finished[0], &finished[1]);
    assert!(!sa.is_background() && !sb.is_background());
    assert_eq!(text(&sa.inbound.request), "req-a");
    assert_eq!(calls(sa), [("GET a\r\n", "va\r\n")]);
    assert_eq!(sa.calls[0].peer, "127.0.0.1:6379");
    assert_eq!(sa.calls[0].local, "127.0.0.1:40000");
    assert_eq!((sa.calls[0].request_ns, sa.calls[0].response_ns), (7, 8));
    assert_eq!(text(&sb.inbound.request), "req-b");
    assert_eq!(calls(sb), [("GET b\r\n", "vb\r\n")]);
    // The start-up calls are the background record, written at exit.
    a.close_all(EndReason::Exit);
    let background = a.take_finished();
    assert_eq!(background.len(), 1);
    assert!(background[0].is_background());
    assert_eq!(background[0].end, Some(EndReason::Exit));
    assert_eq!(
        calls(&background[0]),
        [
            ("CLIENT SETNAME x\r\n", "+OK\r\n"),
            ("PING\r\n", "+PONG\r\n")
        ]
    );
    assert_eq!(background[0].inbound, Exchange::default());
    assert_eq!(a.stats().background_records, 1);
}

#[test]
fn several_calls_keep_the_order_they_were_made_in() {
    let mut a = assembler();
    accept(&mut a, 5, 5000, 1);
    a.received(5, 10, b"req", 2);
    connect(&mut a, 8, 10, 40001, 3306, 3);
    connect(&mut a, 9, 10, 40002, 6379, 3);
    a.sent(8, 10, b"q1", 4);
    a.sent(9, 10, b"q2", 5);
    a.received(9, 10, b"r2", 6);
    a.received(8, 10, b"r1", 7);
    a.sent(8, 10, b"q3", 8);
    a.sent(8, 10, b"q3-more", 9);
    a.received(8, 10, b"r3", 10);
    a.sent(5, 10, b"resp", 11);
    a.forget_fd(5);
    let finished = a.take_finished();
    assert_eq!(
        calls(&finished[0]),
        [("q1", "r1"), ("q2", "r2"), ("q3q3-more", "r3")]
    );
}

#[test]
fn a_greeting_on_a_connection_opened_in_the_session_is_an_empty_request_call() {
    let mut a = assembler();
    accept(&mut a, 5, 5000, 1);
    a.received(5, 10, b"req", 2);
    connect(&mut a, 9, 10, 40000, 3306, 3);
    a.received(9, 10, b"hello-from-db", 4);
    a.sent(9, 10, b"login", 5);
    a.received(9, 10, b"ok", 6);
    a.sent(5, 10, b"resp", 7);
    a.forget_fd(5);
    let finished = a.take_finished();
    assert_eq!(
        calls(&finished[0]),
        [("", "hello-from-db"), ("login", "ok")]
    );
    assert!(finished[0].calls[0].is_greeting());
    assert_eq!(
        (
            finished[0].calls[0].request_ns,
            finished[0].calls[0].response_ns
        ),
        (0, 4)
    );
}

#[test]
fn a_start_up_handshake_is_background_traffic() {
    let mut a = assembler();
    // A pool connection opened at start-up: greeting and login happen there.
    connect(&mut a, 9, 1, 40000, 3306, 1);
    a.received(9, 1, b"hello", 2);
    a.received(9, 1, b"-more", 3);
    a.sent(9, 1, b"login", 4);
    a.received(9, 1, b"ok", 5);
    accept(&mut a, 5, 5000, 6);
    a.received(5, 10, b"req", 7);
    a.sent(9, 10, b"query", 8);
    a.received(9, 10, b"rows", 9);
    a.sent(5, 10, b"resp", 10);
    a.forget_fd(5);
    let finished = a.take_finished();
    assert_eq!(finished.len(), 1);
    assert_eq!(calls(&finished[0]), [("query", "rows")]);
    a.close_idle(5 + IDLE_NS);
    let background = a.take_finished();
    assert_eq!(background.len(), 1);
    assert!(background[0].is_background());
    assert_eq!(background[0].end, Some(EndReason::Idle));
    assert_eq!(calls(&background[0]), [("", "hello-more"), ("login", "ok")]);
    assert!(background[0].calls[0].is_greeting());
}

#[test]
fn a_greeting_after_its_session_ended_is_background_traffic() {
    let mut a = assembler();
    accept(&mut a, 5, 5000, 1);
    a.received(5, 10, b"req", 2);
    connect(&mut a, 9, 10, 40000, 3306, 3);
    a.sent(5, 10, b"resp", 4);
    a.forget_fd(5);
    assert!(a.take_finished()[0].calls.is_empty());
    a.received(9, 10, b"hello", 6);
    a.close_all(EndReason::Exit);
    let background = a.take_finished();
    assert_eq!(calls(&background[0]), [("", "hello")]);
    assert!(background[0].is_background());
    assert!(background[0].calls[0].is_greeting());
}

#[test]
fn a_full_background_record_is_written_and_a_new_one_started() {
    let mut a = assembler_with(Limits {
        max_payload_bytes: 1 << 20,
        max_calls_per_session: 2,
        idle_ns: IDLE_NS,
    });
    connect(&mut a, 9, 1, 40000, 6379, 1);
    for (i, key) in ["a", "b", "c"].iter().enumerate() {
        a.sent(9, 1, format!("GET {key}").as_bytes(), 2 + i as u64);
        a.received(9, 1, key.as_bytes(), 2 + i as u64);
    }
    let full = a.take_finished();
    assert_eq!(full.len(), 1);
    assert_eq!(full[0].end, Some(EndReason::Full));
    assert_eq!(calls(&full[0]), [("GET a", "a"), ("GET b", "b")]);
    a.close_all(EndReason::Exit);
    assert_eq!(calls(&a.take_finished()[0]), [("GET c", "c")]);
    assert_eq!(
        a.stats().calls_over_limit,
        0,
        "background records never drop calls"
    );
}

#[test]
fn a_reused_fd_number_after_a_missed_close_starts_afresh() {
    let mut a = assembler();
    accept(&mut a, 5, 5000, 1);
    a.received(5, 10, b"req-1", 2);
    a.sent(5, 10, b"resp-1", 3);
    // The close of fd 5 was never seen (raw syscall, fclose...).
    accept(&mut a, 5, 5009, 4);
    let finished = a.take_finished();
    assert_eq!(finished.len(), 1);
    assert_eq!(finished[0].end, Some(EndReason::Close));
    assert_eq!(text(&finished[0].inbound.response), "resp-1");
    a.received(5, 10, b"req-2", 5);
    a.sent(5, 10, b"resp-2", 6);
    a.forget_fd(5);
    let finished = a.take_finished();
    assert_eq!(text(&finished[0].inbound.request), "req-2");
    assert_eq!(finished[0].inbound.peer, "127.0.0.1:5009");

    // An outbound fd reused as inbound: the old call state must not leak.
    connect(&mut a, 6, 10, 40000, 6379, 8);
    a.sent(6, 10, b"orphan", 9);
    accept(&mut a, 6, 5010, 10);
    a.received(6, 11, b"req-3", 11);
    a.sent(6, 11, b"resp-3", 12);
    a.forget_fd(6);
    let finished = a.take_finished();
    assert_eq!(text(&finished[0].inbound.request), "req-3");
    assert!(finished[0].calls.is_empty());
    a.close_all(EndReason::Exit);
    let background = a.take_finished();
    assert_eq!(background.len(), 1);
    assert!(background[0].is_background());
    assert_eq!(calls(&background[0]), [("orphan", "")]);
}

#[test]
fn an_idle_session_is_written_after_the_idle_time() {
    let mut a = assembler();
    accept(&mut a, 5, 5000, 1);
    a.received(5, 10, b"req", 2 * MS);
    a.sent(5, 10, b"resp", 3 * MS);
    a.close_idle(3 * MS + IDLE_NS - 1);
    assert!(a.take_finished().is_empty());
    a.close_idle(3 * MS + IDLE_NS);
    let finished = a.take_finished();
    assert_eq!(finished.len(), 1);
    assert_eq!(finished[0].end, Some(EndReason::Idle));
    // The connection stays open: the next request starts a new session.
    a.received(5, 10, b"req-2", 2000 * MS);
    a.sent(5, 10, b"resp-2", 2001 * MS);
    a.forget_fd(5);
    assert_eq!(text(&a.take_finished()[0].inbound.request), "req-2");
}

#[test]
fn activity_on_a_call_keeps_the_session_alive() {
    let mut a = assembler();
    accept(&mut a, 5, 5000, 1);
    a.received(5, 10, b"req", 0);
    connect(&mut a, 9, 10, 40000, 8080, 0);
    a.sent(9, 10, b"slow?", 600 * MS);
    a.received(9, 10, b"yes", 1200 * MS);
    a.close_idle(1500 * MS);
    assert!(a.take_finished().is_empty());
    // Idle since the send, but not since the response.
    a.close_idle(600 * MS + IDLE_NS);
    assert!(a.take_finished().is_empty());
    a.close_idle(1200 * MS + IDLE_NS);
    let finished = a.take_finished();
    assert_eq!(finished.len(), 1);
    assert_eq!(finished[0].end, Some(EndReason::Idle));
    assert_eq!(calls(&finished[0]), [("slow?", "yes")]);
}

#[test]
fn duplicated_fds_share_the_connection() {
    let mut a = assembler();
    accept(&mut a, 5, 5000, 1);
    a.received(5, 10, b"req", 2);
    a.duplicate_fd(5, 5);
    assert!(a.take_finished().is_empty(), "dup2(fd, fd) changes nothing");
    a.duplicate_fd(5, 7);
    a.forget_fd(5);
    assert!(
        a.take_finished().is_empty(),
        "fd 7 still holds the connection"
    );
    a.sent(7, 10, b"resp", 5);
    a.forget_fd(7);
    let finished = a.take_finished();
    assert_eq!(text(&finished[0].inbound.response), "resp");
}

#[test]
fn shutting_down_the_write_side_ends_the_session() {
    let mut a = assembler();
    accept(&mut a, 5, 5000, 1);
    a.received(5, 10, b"req", 2);
    a.sent(5, 10, b"resp", 3);
    a.shutdown_write(5);
    assert_eq!(a.take_finished()[0].end, Some(EndReason::Close));
}

#[test]
fn a_service_that_speaks_first_gets_a_session_with_an_empty_request() {
    let mut a = assembler();
    accept(&mut a, 5, 5000, 1);
    a.sent(5, 10, b"220 welcome", 2);
    a.received(5, 10, b"HELO", 3);
    let finished = a.take_finished();
    assert_eq!(text(&finished[0].inbound.request), "");
    assert_eq!(text(&finished[0].inbound.response), "220 welcome");
}

#[test]
fn payloads_are_cut_at_the_limit_and_flagged() {
    let mut a = assembler_with(Limits {
        max_payload_bytes: 8,
        max_calls_per_session: 1,
        idle_ns: IDLE_NS,
    });
    accept(&mut a, 5, 5000, 1);
    a.received(5, 10, b"0123456", 2);
    a.received(5, 10, b"789", 3);
    connect(&mut a, 9, 10, 40000, 8080, 4);
    a.sent(9, 10, b"call-1", 5);
    a.received(9, 10, b"r1", 6);
    a.sent(9, 10, b"call-2", 7);
    a.received(9, 10, b"r2", 8);
    a.sent(5, 10, b"ok", 9);
    a.forget_fd(5);
    let finished = a.take_finished();
    assert_eq!(text(&finished[0].inbound.request), "01234567");
    assert!(finished[0].inbound.truncated);
    assert_eq!(calls(&finished[0]), [("call-1", "r1")]);
    assert_eq!(a.stats().truncated_payloads, 1);
    assert_eq!(a.stats().calls_over_limit, 1);
}

#[test]
fn vectored_bytes_are_appended_in_order_and_cut_at_the_limit() {
    let mut a = assembler_with(Limits {
        max_payload_bytes: 10,
        max_calls_per_session: 10,
        idle_ns: IDLE_NS,
    });
    accept(&mut a, 5, 5000, 1);
    a.received_parts(5, 10, Bytes(&[b"GET ", b"", b"/x"]), 2);
    a.sent_parts(5, 10, Bytes(&[b"HTTP/1.1 ", b"200 OK\r\n"]), 3);
    a.forget_fd(5);
    let finished = a.take_finished();
    assert_eq!(text(&finished[0].inbound.request), "GET /x");
    assert_eq!(
        text(&finished[0].inbound.response),
        "HTTP/1.1 2",
        "cut at 10 bytes, across parts"
    );
    assert!(finished[0].inbound.truncated);
}

#[test]
fn buffers_handed_back_are_reused_and_big_ones_dropped() {
    let mut a = assembler();
    let small = Vec::with_capacity(100);
    let small_at = small.as_ptr();
    let big = Vec::with_capacity(1 << 20);
    // The pool is a stack: the big one would come first if it were kept.
    a.recycle(&mut vec![small, big]);
    accept(&mut a, 5, 5000, 1);
    a.received(5, 10, b"req", 2);
    a.sent(5, 10, b"resp", 3);
    a.forget_fd(5);
    let mut finished = Vec::new();
    a.drain_finished(|s| finished.push(s));
    let request = &finished[0].inbound.request;
    assert_eq!(request, b"req");
    assert_eq!(
        request.as_ptr(),
        small_at,
        "the handed-back buffer holds the request"
    );
    assert!(
        finished[0].inbound.response.capacity() < 1 << 20,
        "the 1 MiB buffer was not kept"
    );
}

#[test]
fn bytes_arriving_after_their_session_was_written_are_counted() {
    let mut a = assembler();
    accept(&mut a, 5, 5000, 1);
    a.received(5, 10, b"req", 2);
    connect(&mut a, 9, 10, 40000, 8080, 3);
    a.sent(9, 10, b"fire-and-forget", 4);
    a.sent(5, 10, b"resp", 5);
    a.forget_fd(5);
    assert_eq!(a.take_finished().len(), 1);
    a.received(9, 10, b"late", 7);
    assert_eq!(a.stats().late_bytes, 4);
}

#[test]
fn a_forked_child_writes_only_the_sessions_it_continues() {
    let mut a = assembler();
    accept(&mut a, 5, 5000, 1);
    a.received(5, 10, b"req-parent", 2);
    accept(&mut a, 6, 5001, 3);
    a.received(6, 10, b"req-handed-to-child", 4);
    a.after_fork_in_child(10, 77, 77);
    a.sent(6, 77, b"resp-from-child", 5);
    connect(&mut a, 9, 77, 40000, 8080, 6);
    a.sent(9, 77, b"call", 7);
    a.received(9, 77, b"answer", 8);
    a.close_all(EndReason::Exit);
    let finished = a.take_finished();
    assert_eq!(finished.len(), 1);
    let s = &finished[0];
    assert_eq!(text(&s.inbound.request), "req-handed-to-child");
    assert_eq!(text(&s.inbound.response), "resp-from-child");
    assert_eq!(
        calls(s),
        [("call", "answer")],
        "the forking thread keeps its session"
    );
    assert_eq!((s.pid, s.id.as_str()), (77, "7-77-1"));
    assert_eq!(a.stats().sessions_left_to_parent, 1);
}

/// One event-loop thread serving two requests at once, each awaiting its
/// own call, as asyncio does: the loop reads both requests, then each
/// coroutine sends under its own virtual thread.
fn interleaved_event_loop(a: &mut Assembler, hints: bool) -> Vec<Session> {
    const LOOP: u32 = 10;
    accept(a, 5, 5001, 1);
    accept(a, 6, 5002, 1);
    connect(a, 8, LOOP, 40001, 6379, 1);
    connect(a, 9, LOOP, 40002, 6379, 1);
    a.received(5, LOOP, b"req-a", 2);
    if hints {
        a.delegate(LOOP, 1);
    }
    a.sent(8, LOOP, b"GET a", 3);
    a.received(6, LOOP, b"req-b", 4);
    if hints {
        a.delegate(LOOP, 2);
    }
    a.sent(9, LOOP, b"GET b", 5);
    a.received(8, LOOP, b"va", 6);
    a.received(9, LOOP, b"vb", 7);
    if hints {
        a.delegate(LOOP, 1);
    }
    a.sent(5, LOOP, b"resp-a", 8);
    if hints {
        a.delegate(LOOP, 2);
    }
    a.sent(6, LOOP, b"resp-b", 9);
    a.forget_fd(5);
    a.forget_fd(6);
    a.take_finished()
}

#[test]
fn virtual_threads_separate_requests_interleaved_on_one_thread() {
    let mut a = assembler();
    let finished = interleaved_event_loop(&mut a, true);
    assert_eq!(text(&finished[0].inbound.request), "req-a");
    assert_eq!(calls(&finished[0]), [("GET a", "va")]);
    assert_eq!(text(&finished[1].inbound.request), "req-b");
    assert_eq!(calls(&finished[1]), [("GET b", "vb")]);
}

#[test]
fn without_hints_interleaved_calls_follow_the_last_request_read() {
    let mut a = assembler();
    let finished = interleaved_event_loop(&mut a, false);
    assert_eq!(
        calls(&finished[0]),
        [("GET a", "va")],
        "a's call came before b was read"
    );
    // b's call is attributed right here only because it came after b was
    // read; a call of a's made after that lands in b's session:
    assert_eq!(calls(&finished[1]), [("GET b", "vb")]);
    const LOOP: u32 = 10;
    let mut a = assembler();
    accept(&mut a, 5, 5001, 1);
    accept(&mut a, 6, 5002, 1);
    connect(&mut a, 8, LOOP, 40001, 6379, 1);
    a.received(5, LOOP, b"req-a", 2);
    a.received(6, LOOP, b"req-b", 3);
    a.sent(8, LOOP, b"GET a", 4); // a's coroutine, after b was read
    a.received(8, LOOP, b"va", 5);
    a.sent(5, LOOP, b"resp-a", 6);
    a.sent(6, LOOP, b"resp-b", 7);
    a.forget_fd(5);
    a.forget_fd(6);
    let finished = a.take_finished();
    assert_eq!(text(&finished[0].inbound.request), "req-a");
    assert!(finished[0].calls.is_empty(), "a's session misses its call");
    assert_eq!(text(&finished[1].inbound.request), "req-b");
    assert_eq!(calls(&finished[1]), [("GET a", "va")]);
}

#[test]
fn a_request_read_on_one_thread_and_served_on_another_is_linked_by_delegation() {
    let mut a = assembler();
    const READER: u32 = 10;
    const WORKER: u32 = 20;
    accept(&mut a, 5, 5000, 1);
    connect(&mut a, 9, WORKER, 40000, 6379, 1);
    a.received(5, READER, b"req", 2);
    a.delegate(WORKER, 7);
    a.sent(9, WORKER, b"GET k", 3);
    a.received(9, READER, b"v", 4);
    a.sent(5, WORKER, b"resp", 5);
    a.end_session_by_hint(WORKER, None);
    let finished = a.take_finished();
    assert_eq!(finished.len(), 1);
    assert_eq!(finished[0].end, Some(EndReason::Hint));
    assert_eq!(text(&finished[0].inbound.request), "req");
    assert_eq!(calls(&finished[0]), [("GET k", "v")]);
}

/// A coroutine delegates, then waits for something that sends nothing (a
/// lock, a pool); meanwhile the loop reads another request. That read must
/// not tie the waiting coroutine's virtual thread to the other request.
#[test]
fn a_read_while_delegated_does_not_capture_the_virtual_thread() {
    const LOOP: u32 = 10;
    let mut a = assembler();
    accept(&mut a, 5, 5001, 1);
    accept(&mut a, 6, 5002, 1);
    connect(&mut a, 8, LOOP, 40001, 6379, 1);
    a.received(5, LOOP, b"req-a", 2);
    a.delegate(LOOP, 1); // A's coroutine, now awaiting a lock
    a.received(6, LOOP, b"req-b", 3); // the loop reads B meanwhile
    a.delegate(LOOP, 2); // B's coroutine sends its call
    a.sent(8, LOOP, b"GET b", 4);
    a.received(8, LOOP, b"vb", 5);
    a.delegate(LOOP, 1); // A's coroutine got the lock
    a.sent(8, LOOP, b"GET a", 6);
    a.received(8, LOOP, b"va", 7);
    a.sent(5, LOOP, b"resp-a", 8);
    a.delegate(LOOP, 2);
    a.sent(6, LOOP, b"resp-b", 9);
    a.forget_fd(5);
    a.forget_fd(6);
    let finished = a.take_finished();
    assert_eq!(text(&finished[0].inbound.request), "req-a");
    assert_eq!(calls(&finished[0]), [("GET a", "va")]);
    assert_eq!(text(&finished[1].inbound.request), "req-b");
    assert_eq!(calls(&finished[1]), [("GET b", "vb")]);
}

#[test]
fn a_shutdown_hint_cuts_one_way_requests() {
    let mut a = assembler();
    accept(&mut a, 5, 5000, 1);
    for (i, message) in [b"msg-1", b"msg-2"].iter().enumerate() {
        a.received(5, 10, *message, 2 + i as u64);
        a.end_session_by_hint(10, None);
    }
    let finished = a.take_finished();
    let requests: Vec<&str> = finished.iter().map(|s| text(&s.inbound.request)).collect();
    assert_eq!(requests, ["msg-1", "msg-2"]);
    assert!(finished.iter().all(|s| s.inbound.response.is_empty()));
    assert!(finished.iter().all(|s| s.end == Some(EndReason::Hint)));
}

#[test]
fn calls_of_a_virtual_thread_that_never_meets_a_client_are_background_traffic() {
    let mut a = assembler();
    connect(&mut a, 9, 10, 40000, 6379, 1);
    a.delegate(10, 3);
    a.sent(9, 10, b"GET k", 2);
    a.received(9, 10, b"v", 3);
    a.end_session_by_hint(10, Some(3));
    assert!(a.take_finished().is_empty());
    assert_eq!(a.stats().sessions_without_inbound, 1);
    a.close_all(EndReason::Exit);
    let background = a.take_finished();
    assert!(background[0].is_background());
    assert_eq!(calls(&background[0]), [("GET k", "v")]);
}
