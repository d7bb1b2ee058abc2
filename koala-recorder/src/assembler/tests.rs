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
    a.sent(5, 10, b"resp", 1200 * MS);
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

/// Ends what `close_idle(now)` ends; the sessions it wrote.
fn idle_at(a: &mut Assembler, now: u64) -> Vec<Session> {
    a.close_idle(now);
    a.take_finished()
}

#[test]
fn a_request_not_yet_answered_is_not_idle() {
    let mut a = assembler();
    accept(&mut a, 5, 5000, 1);
    a.received(5, 10, b"GET /slow HTTP/1.1\r\n\r\n", 2);
    // The thread works for 1.1 idle times before answering.
    assert!(idle_at(&mut a, 2 + IDLE_NS).is_empty());
    assert!(idle_at(&mut a, 2 + IDLE_NS * 11 / 10).is_empty());
    a.sent(5, 10, b"HTTP/1.1 200 OK\r\n\r\n", 3 + IDLE_NS * 11 / 10);
    assert!(idle_at(&mut a, 2 + IDLE_NS * 21 / 10).is_empty());
    let finished = idle_at(&mut a, 3 + IDLE_NS * 21 / 10);
    assert_eq!(finished.len(), 1);
    assert_eq!(finished[0].end, Some(EndReason::Idle));
    assert_eq!(
        text(&finished[0].inbound.request),
        "GET /slow HTTP/1.1\r\n\r\n"
    );
    assert_eq!(
        text(&finished[0].inbound.response),
        "HTTP/1.1 200 OK\r\n\r\n"
    );
    assert_eq!(a.open_sessions(), 0);
}

#[test]
fn a_call_sent_after_the_last_write_and_unanswered_keeps_the_session_waiting() {
    let mut a = assembler();
    accept(&mut a, 5, 5000, 1);
    a.received(5, 10, b"req", 2);
    // A streamed answer: its head, then a slow call for the body.
    a.sent(5, 10, b"head|", 3);
    connect(&mut a, 9, 10, 40000, 8080, 4);
    a.sent(9, 10, b"body?", 5);
    assert!(idle_at(&mut a, 5 + 3 * IDLE_NS).is_empty());
    a.received(9, 10, b"body", 6 + 3 * IDLE_NS);
    a.sent(5, 10, b"body", 7 + 3 * IDLE_NS);
    assert!(idle_at(&mut a, 6 + 4 * IDLE_NS).is_empty());
    let finished = idle_at(&mut a, 7 + 4 * IDLE_NS);
    assert_eq!(finished.len(), 1);
    assert_eq!(text(&finished[0].inbound.response), "head|body");
    assert_eq!(calls(&finished[0]), [("body?", "body")]);
}

#[test]
fn a_call_sent_before_the_answer_does_not_keep_the_session_waiting() {
    let mut a = assembler();
    accept(&mut a, 5, 5000, 1);
    a.received(5, 10, b"req", 2);
    // Fire and forget (a log line to a collector), then the whole answer.
    connect(&mut a, 9, 10, 40000, 5140, 3);
    a.sent(9, 10, b"log req", 4);
    a.sent(5, 10, b"resp", 5);
    let finished = idle_at(&mut a, 5 + IDLE_NS);
    assert_eq!(finished.len(), 1);
    assert_eq!(finished[0].end, Some(EndReason::Idle));
    assert_eq!(calls(&finished[0]), [("log req", "")]);
}

#[test]
fn an_unanswered_call_on_a_closed_connection_does_not_keep_the_session_waiting() {
    let mut a = assembler();
    accept(&mut a, 5, 5000, 1);
    a.received(5, 10, b"req", 2);
    a.sent(5, 10, b"head|", 3);
    connect(&mut a, 9, 10, 40000, 8080, 4);
    a.sent(9, 10, b"body?", 5);
    a.forget_fd(9);
    let finished = idle_at(&mut a, 5 + IDLE_NS);
    assert_eq!(finished.len(), 1);
    assert_eq!(calls(&finished[0]), [("body?", "")]);
}

#[test]
fn a_stuck_request_ends_after_the_waiting_ceiling() {
    let mut a = assembler();
    let limits = a.limits;
    assert_eq!(limits.waiting_ns(), 60 * IDLE_NS);
    accept(&mut a, 5, 5000, 1);
    a.received(5, 10, b"never answered", 2);
    assert!(idle_at(&mut a, 1 + limits.waiting_ns()).is_empty());
    let finished = idle_at(&mut a, 2 + limits.waiting_ns());
    assert_eq!(finished.len(), 1);
    assert_eq!(finished[0].end, Some(EndReason::Idle));
    assert_eq!(text(&finished[0].inbound.request), "never answered");
    assert_eq!(text(&finished[0].inbound.response), "");
    // The ceiling never overflows.
    let huge = Limits {
        idle_ns: u64::MAX / 2,
        ..limits
    };
    assert_eq!(huge.waiting_ns(), u64::MAX);
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
fn a_service_that_speaks_first_starts_the_next_session_at_the_first_request() {
    let mut a = assembler();
    accept(&mut a, 5, 5000, 1);
    a.sent(5, 10, b"220 welcome", 2);
    a.received(5, 10, b"HELO", 3);
    // The banner alone had no request and made no calls: not a session.
    assert!(a.take_finished().is_empty());
    assert_eq!(a.stats().empty_sessions, 1);
    a.sent(5, 10, b"250 hi", 4);
    a.forget_fd(5);
    let finished = a.take_finished();
    assert_eq!(finished.len(), 1);
    assert_eq!(text(&finished[0].inbound.request), "HELO");
    assert_eq!(text(&finished[0].inbound.response), "250 hi");
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

// ---- connection positions, closes, framing, probes ------------------------

/// (conn, seq, closed) of every call.
fn positions(session: &Session) -> Vec<(Option<u64>, Option<u32>, bool)> {
    session
        .calls
        .iter()
        .map(|c| (c.conn, c.seq, c.closed))
        .collect()
}

#[test]
fn positions_on_a_pooled_connection_continue_across_sessions() {
    let mut a = assembler();
    connect(&mut a, 9, 1, 40000, 6379, 1);
    a.sent(9, 1, b"AUTH x\r\n", 2);
    a.received(9, 1, b"+OK\r\n", 3);
    for (fd, peer, key) in [(5, 5001, "a"), (6, 5002, "b")] {
        accept(&mut a, fd, peer, 4);
        a.received(fd, 10, format!("req-{key}").as_bytes(), 5);
        a.sent(9, 10, format!("GET {key}\r\n").as_bytes(), 6);
        a.received(9, 10, b"$1\r\nv\r\n", 7);
        a.sent(fd, 10, b"resp", 8);
        a.forget_fd(fd);
    }
    let finished = a.take_finished();
    assert_eq!(finished.len(), 2);
    let conn = finished[0].calls[0].conn;
    assert!(conn.is_some());
    // The first call of each session is not the first on the connection.
    assert_eq!(positions(&finished[0]), [(conn, Some(1), false)]);
    assert_eq!(positions(&finished[1]), [(conn, Some(2), false)]);
    assert!(!finished[1].calls[0].opens_connection());
    assert_eq!(
        (finished[0].inbound.conn, finished[0].inbound.seq),
        (None, None)
    );
    a.close_all(EndReason::Exit);
    let background = a.take_finished();
    assert_eq!(positions(&background[0]), [(conn, Some(0), false)]);
    assert!(background[0].calls[0].opens_connection());
}

#[test]
fn connections_have_distinct_ids_and_each_counts_from_zero() {
    let mut a = assembler();
    accept(&mut a, 5, 5000, 1);
    a.received(5, 10, b"req", 2);
    connect(&mut a, 8, 10, 40001, 8080, 3);
    a.sent(8, 10, b"q1", 4);
    a.received(8, 10, b"r1", 5);
    a.sent(8, 10, b"q2", 6);
    a.received(8, 10, b"r2", 7);
    connect(&mut a, 9, 10, 40002, 8080, 8);
    a.sent(9, 10, b"q3", 9);
    a.received(9, 10, b"r3", 10);
    a.sent(5, 10, b"resp", 11);
    a.forget_fd(5);
    let finished = a.take_finished();
    let p = positions(&finished[0]);
    let (first, second) = (p[0].0, p[2].0);
    assert!(first.is_some() && second.is_some() && first != second);
    assert_eq!(
        p,
        [
            (first, Some(0), false),
            (first, Some(1), false),
            (second, Some(0), false)
        ]
    );
}

#[test]
fn a_greeting_is_the_first_position_on_its_connection() {
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
    let conn = finished[0].calls[0].conn;
    assert_eq!(
        positions(&finished[0]),
        [(conn, Some(0), false), (conn, Some(1), false)]
    );
    assert!(finished[0].calls[0].is_greeting() && finished[0].calls[0].opens_connection());
}

#[test]
fn calls_over_the_limit_still_take_their_position() {
    let mut a = assembler_with(Limits {
        max_payload_bytes: 1 << 20,
        max_calls_per_session: 1,
        idle_ns: IDLE_NS,
    });
    connect(&mut a, 9, 10, 40000, 8080, 1);
    for (fd, peer) in [(5, 5001), (6, 5002)] {
        accept(&mut a, fd, peer, 2);
        a.received(fd, 10, b"req", 3);
        for call in [&b"c1"[..], b"c2"] {
            a.sent(9, 10, call, 4);
            a.received(9, 10, b"r", 5);
        }
        a.sent(fd, 10, b"resp", 6);
        a.forget_fd(fd);
    }
    let finished = a.take_finished();
    assert_eq!(calls(&finished[0]), [("c1", "r")]);
    assert_eq!(finished[0].calls[0].seq, Some(0));
    assert_eq!(calls(&finished[1]), [("c1", "r")]);
    assert_eq!(
        finished[1].calls[0].seq,
        Some(2),
        "the dropped c2 was seq 1"
    );
    assert_eq!(a.stats().calls_over_limit, 2);
}

#[test]
fn a_forked_child_keeps_the_ids_and_positions_of_inherited_connections() {
    let mut a = assembler();
    connect(&mut a, 9, 10, 40000, 6379, 1);
    a.sent(9, 10, b"PING", 2);
    a.received(9, 10, b"PONG", 3);
    a.close_all(EndReason::Exit);
    let parent_conn = a.take_finished()[0].calls[0].conn;
    a.after_fork_in_child(10, 77, 77);
    connect(&mut a, 8, 77, 40001, 6379, 4);
    accept(&mut a, 5, 5000, 5);
    a.received(5, 77, b"req", 6);
    a.sent(9, 77, b"GET k", 7);
    a.received(9, 77, b"v", 8);
    a.sent(8, 77, b"GET j", 9);
    a.received(8, 77, b"w", 10);
    a.sent(5, 77, b"resp", 11);
    a.forget_fd(5);
    let finished = a.take_finished();
    let p = positions(&finished[0]);
    assert_eq!(p[0], (parent_conn, Some(1), false));
    assert!(p[1].0.is_some() && p[1].0 != parent_conn, "{p:?}");
    assert_eq!(p[1].1, Some(0));
}

#[test]
fn end_of_file_after_a_response_marks_the_call_closed() {
    let mut a = assembler();
    accept(&mut a, 5, 5000, 1);
    a.received(5, 10, b"req", 2);
    // HTTP/1.0: the backend answers and hangs up.
    connect(&mut a, 8, 10, 40001, 8081, 3);
    a.sent(8, 10, b"GET /x HTTP/1.0\r\n\r\n", 4);
    a.received(8, 10, b"HTTP/1.0 200 OK\r\n\r\nx", 5);
    a.peer_closed(8, 6);
    a.peer_closed(8, 6); // read again: still end-of-file
    a.forget_fd(8);
    // A keep-alive backend: no end-of-file.
    connect(&mut a, 9, 10, 40002, 8082, 7);
    a.sent(9, 10, b"GET /y HTTP/1.1\r\n\r\n", 8);
    a.received(9, 10, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\ny", 9);
    // A backend that hangs up without answering.
    connect(&mut a, 7, 10, 40003, 8083, 10);
    a.sent(7, 10, b"GET /z HTTP/1.1\r\n\r\n", 11);
    a.peer_closed(7, 12);
    // End-of-file before anything was exchanged: there is no call to mark.
    connect(&mut a, 6, 10, 40004, 8084, 13);
    a.peer_closed(6, 14);
    // End-of-file on the inbound side changes nothing.
    a.peer_closed(5, 15);
    a.sent(5, 10, b"resp", 16);
    a.forget_fd(5);
    let finished = a.take_finished();
    assert_eq!(finished.len(), 1);
    let s = &finished[0];
    assert_eq!(
        calls(s),
        [
            ("GET /x HTTP/1.0\r\n\r\n", "HTTP/1.0 200 OK\r\n\r\nx"),
            (
                "GET /y HTTP/1.1\r\n\r\n",
                "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\ny"
            ),
            ("GET /z HTTP/1.1\r\n\r\n", "")
        ]
    );
    let closed: Vec<bool> = s.calls.iter().map(|c| c.closed).collect();
    assert_eq!(closed, [true, false, true]);
    assert!(!s.inbound.closed);
    assert_eq!(s.end, Some(EndReason::Close));
}

/// A FastCGI record: version 1, `kind`, request id 1, `content`, no padding.
fn fcgi_record(kind: u8, content: &[u8]) -> Vec<u8> {
    let len = u16::try_from(content.len()).unwrap().to_be_bytes();
    let mut record = vec![1, kind, 0, 1, len[0], len[1], 0, 0];
    record.extend_from_slice(content);
    record
}

const FCGI_BEGIN_REQUEST: u8 = 1;
const FCGI_END_REQUEST: u8 = 3;
const FCGI_PARAMS: u8 = 4;
const FCGI_STDIN: u8 = 5;
const FCGI_STDOUT: u8 = 6;

/// FastCGI name-value pairs, short lengths.
fn fcgi_params(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in pairs {
        out.push(name.len() as u8);
        out.push(value.len() as u8);
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(value.as_bytes());
    }
    out
}

/// What nginx sends php-fpm for `uri`, up to but without the trailing
/// empty stdin record; and that record.
fn fcgi_request(uri: &str) -> (Vec<u8>, Vec<u8>) {
    // Role 1 (responder), flags 1 (keep the connection).
    let mut request = fcgi_record(FCGI_BEGIN_REQUEST, &[0, 1, 1, 0, 0, 0, 0, 0]);
    request.extend(fcgi_record(
        FCGI_PARAMS,
        &fcgi_params(&[("REQUEST_METHOD", "GET"), ("REQUEST_URI", uri)]),
    ));
    request.extend(fcgi_record(FCGI_PARAMS, b""));
    (request, fcgi_record(FCGI_STDIN, b""))
}

fn fcgi_response(body: &str) -> Vec<u8> {
    let mut response = fcgi_record(FCGI_STDOUT, format!("Status: 200\r\n\r\n{body}").as_bytes());
    response.extend(fcgi_record(FCGI_STDOUT, b""));
    response.extend(fcgi_record(FCGI_END_REQUEST, &[0, 0, 0, 0, 0, 0, 0, 0]));
    response
}

#[test]
fn fastcgi_trailing_empty_stdin_read_after_the_response_is_the_same_session() {
    let mut a = assembler();
    accept(&mut a, 5, 5000, 1);
    for (i, uri) in ["/a.php", "/b.php"].iter().enumerate() {
        let at = 10 * i as u64;
        let (request, trailing_stdin) = fcgi_request(uri);
        a.received(5, 10, &request, at + 2);
        a.sent(5, 10, &fcgi_response(uri), at + 3);
        // php-fpm reads nginx's last record after writing its response.
        a.received(5, 10, &trailing_stdin, at + 4);
    }
    a.forget_fd(5);
    let finished = a.take_finished();
    assert_eq!(finished.len(), 2, "one session per request");
    assert_eq!(a.stats().empty_sessions, 0);
    for (session, uri) in finished.iter().zip(["/a.php", "/b.php"]) {
        let (mut request, trailing_stdin) = fcgi_request(uri);
        request.extend(trailing_stdin);
        assert_eq!(session.inbound.request.as_bytes(), &request[..]);
        assert_eq!(session.inbound.response.as_bytes(), &fcgi_response(uri)[..]);
    }
    assert_eq!(finished[0].end, Some(EndReason::NextRequest));
    assert_eq!(finished[1].end, Some(EndReason::Close));
}

#[test]
fn fastcgi_trailing_stdin_drained_after_shutting_the_write_side_is_the_same_session() {
    // php-fpm without keep-conn: response, shutdown(SHUT_WR), then it reads
    // what is left (nginx's trailing empty stdin record) until the close.
    let mut a = assembler();
    accept(&mut a, 5, 5000, 1);
    let (request, trailing_stdin) = fcgi_request("/a.php");
    a.received(5, 10, &request, 2);
    a.sent(5, 10, &fcgi_response("/a.php"), 3);
    a.shutdown_write(5);
    assert!(a.take_finished().is_empty(), "the request is not complete");
    a.received(5, 10, &trailing_stdin, 4);
    a.forget_fd(5);
    let finished = a.take_finished();
    assert_eq!(finished.len(), 1, "one session per request");
    let mut whole = request;
    whole.extend(trailing_stdin);
    assert_eq!(finished[0].inbound.request.as_bytes(), &whole[..]);
    assert_eq!(
        finished[0].inbound.response.as_bytes(),
        &fcgi_response("/a.php")[..]
    );
    assert_eq!(finished[0].end, Some(EndReason::Close));
    // A complete request ends at the shutdown, as any other.
    accept(&mut a, 6, 5001, 5);
    let (mut request, trailing_stdin) = fcgi_request("/b.php");
    request.extend(trailing_stdin);
    a.received(6, 10, &request, 6);
    a.sent(6, 10, &fcgi_response("/b.php"), 7);
    a.shutdown_write(6);
    let finished = a.take_finished();
    assert_eq!(finished.len(), 1);
    assert_eq!(finished[0].inbound.request.as_bytes(), &request[..]);
}

#[test]
fn a_body_sent_after_100_continue_is_the_same_session() {
    let mut a = assembler();
    accept(&mut a, 5, 5000, 1);
    let head =
        "POST /up HTTP/1.1\r\nHost: svc\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n";
    a.received(5, 10, head.as_bytes(), 2);
    a.sent(5, 10, b"HTTP/1.1 100 Continue\r\n\r\n", 3);
    a.received(5, 10, b"hello", 4);
    a.sent(5, 10, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 5);
    a.received(5, 10, b"GET /next HTTP/1.1\r\nHost: svc\r\n\r\n", 6);
    let finished = a.take_finished();
    assert_eq!(finished.len(), 1);
    assert_eq!(text(&finished[0].inbound.request), format!("{head}hello"));
    assert_eq!(
        text(&finished[0].inbound.response),
        "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    );
    assert_eq!(finished[0].end, Some(EndReason::NextRequest));
    a.sent(5, 10, b"HTTP/1.1 204 No Content\r\n\r\n", 7);
    a.forget_fd(5);
    let second = a.take_finished();
    assert_eq!(
        text(&second[0].inbound.request),
        "GET /next HTTP/1.1\r\nHost: svc\r\n\r\n"
    );
}

#[test]
fn requests_of_unknown_protocols_still_end_at_the_next_read() {
    let mut a = assembler();
    accept(&mut a, 5, 5000, 1);
    a.received(5, 10, b"\x00\x01opaque", 2);
    a.sent(5, 10, b"answer", 3);
    a.received(5, 10, b"\x00\x02opaque", 4);
    assert_eq!(a.take_finished().len(), 1);
}

#[test]
fn readiness_probes_are_counted_not_written() {
    let mut a = assembler();
    // Connect and close: not a byte, so never a session (nothing to count).
    accept(&mut a, 5, 5000, 1);
    a.forget_fd(5);
    assert_eq!(a.open_sessions(), 0);
    // Connect and send a newline.
    accept(&mut a, 5, 5001, 2);
    a.received(5, 10, b"\n", 3);
    a.forget_fd(5);
    // Whitespace, answered with an error, then idle.
    accept(&mut a, 6, 5002, 4);
    a.received(6, 10, b" \r\n\t", 5);
    a.sent(6, 10, b"HTTP/1.1 400 Bad Request\r\n\r\n", 6);
    a.close_idle(6 + IDLE_NS);
    assert!(a.take_finished().is_empty());
    assert_eq!(a.stats().empty_sessions, 2);
    // A blank request that made a call is a session.
    accept(&mut a, 7, 5003, 7 + IDLE_NS);
    a.received(7, 11, b"\r\n", 8 + IDLE_NS);
    connect(&mut a, 9, 11, 40000, 6379, 9 + IDLE_NS);
    a.sent(9, 11, b"PING\r\n", 10 + IDLE_NS);
    a.received(9, 11, b"+PONG\r\n", 11 + IDLE_NS);
    a.forget_fd(7);
    // And so is a one-byte request.
    accept(&mut a, 8, 5004, 12 + IDLE_NS);
    a.received(8, 12, b"x", 13 + IDLE_NS);
    a.forget_fd(8);
    let finished = a.take_finished();
    let requests: Vec<&str> = finished.iter().map(|s| text(&s.inbound.request)).collect();
    assert_eq!(requests, ["\r\n", "x"]);
    assert_eq!(calls(&finished[0]), [("PING\r\n", "+PONG\r\n")]);
    assert_eq!(finished[0].id, "7-42-1", "ids stay dense");
    assert_eq!(a.stats().empty_sessions, 2);
}

const GET_A: &str = "GET /a HTTP/1.1\r\nHost: svc\r\n\r\n";
const GET_B: &str = "GET /b HTTP/1.1\r\nHost: svc\r\n\r\n";
const OK_A: &str = "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na";
const OK_B: &str = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nbb";

#[test]
fn pipelined_http_requests_are_one_session_each() {
    let mut a = assembler();
    accept(&mut a, 5, 5000, 1);
    connect(&mut a, 9, 10, 40000, 6379, 1);
    // Both requests in one read; each served in turn, with its own call.
    a.received(5, 10, format!("{GET_A}{GET_B}").as_bytes(), 2);
    a.sent(9, 10, b"GET a\r\n", 3);
    a.received(9, 10, b"va\r\n", 4);
    a.sent(5, 10, OK_A.as_bytes(), 5);
    a.sent(9, 10, b"GET b\r\n", 6);
    a.received(9, 10, b"vb\r\n", 7);
    a.sent(5, 10, OK_B.as_bytes(), 8);
    a.received(5, 10, b"GET /c HTTP/1.1\r\n\r\n", 9);
    let finished = a.take_finished();
    assert_eq!(finished.len(), 2, "one session per pipelined request");
    let (sa, sb) = (&finished[0], &finished[1]);
    assert_eq!(
        (text(&sa.inbound.request), text(&sa.inbound.response)),
        (GET_A, OK_A)
    );
    assert_eq!(
        (text(&sb.inbound.request), text(&sb.inbound.response)),
        (GET_B, OK_B)
    );
    assert_eq!(calls(sa), [("GET a\r\n", "va\r\n")]);
    assert_eq!(calls(sb), [("GET b\r\n", "vb\r\n")]);
    assert_eq!((sa.inbound.request_ns, sa.inbound.response_ns), (2, 5));
    assert_eq!((sb.inbound.request_ns, sb.inbound.response_ns), (2, 8));
    assert_eq!((sa.id.as_str(), sb.id.as_str()), ("7-42-1", "7-42-2"));
    assert_eq!(sa.end, Some(EndReason::NextRequest));
    assert_eq!(sb.end, Some(EndReason::NextRequest));
    assert_eq!((sa.calls[0].seq, sb.calls[0].seq), (Some(0), Some(1)));
    a.sent(5, 10, b"HTTP/1.1 204 No Content\r\n\r\n", 10);
    a.forget_fd(5);
    assert_eq!(
        text(&a.take_finished()[0].inbound.request),
        "GET /c HTTP/1.1\r\n\r\n"
    );
}

#[test]
fn a_pipelined_request_split_across_reads_stays_with_its_session() {
    let mut a = assembler();
    accept(&mut a, 5, 5000, 1);
    let (b_start, b_rest) = GET_B.split_at(10);
    a.received(5, 10, format!("{GET_A}{b_start}").as_bytes(), 2);
    a.sent(5, 10, OK_A.as_bytes(), 3);
    a.received(5, 10, b_rest.as_bytes(), 4);
    a.sent(5, 10, OK_B.as_bytes(), 5);
    a.forget_fd(5);
    let finished = a.take_finished();
    let pairs: Vec<(&str, &str)> = finished
        .iter()
        .map(|s| (text(&s.inbound.request), text(&s.inbound.response)))
        .collect();
    assert_eq!(pairs, [(GET_A, OK_A), (GET_B, OK_B)]);
    assert_eq!(finished[1].end, Some(EndReason::Close));
}

#[test]
fn pipelined_responses_written_together_are_split_without_calls() {
    let mut a = assembler();
    accept(&mut a, 5, 5000, 1);
    a.received(5, 10, format!("{GET_A}{GET_B}").as_bytes(), 2);
    a.sent(5, 10, format!("{OK_A}{OK_B}").as_bytes(), 3);
    a.forget_fd(5);
    let finished = a.take_finished();
    assert_eq!(finished.len(), 2);
    assert_eq!(text(&finished[1].inbound.response), OK_B);
    assert_eq!(finished[1].inbound.response_ns, 3);
}

#[test]
fn stats_minus_what_was_reported_never_goes_below_zero() {
    let now = Stats {
        background_records: 5,
        sessions_without_inbound: 4,
        sessions_left_to_parent: 3,
        late_bytes: 100,
        calls_over_limit: 2,
        truncated_payloads: 1,
        empty_sessions: 7,
        ciphertext_exchanges: 2,
        unattributed_calls: 4,
    };
    let reported = Stats {
        background_records: 2,
        sessions_without_inbound: 4,
        sessions_left_to_parent: 9,
        late_bytes: 40,
        calls_over_limit: 0,
        truncated_payloads: 1,
        empty_sessions: 6,
        ciphertext_exchanges: 3,
        unattributed_calls: 1,
    };
    assert_eq!(
        now.minus(&reported),
        Stats {
            background_records: 3,
            sessions_without_inbound: 0,
            sessions_left_to_parent: 0,
            late_bytes: 60,
            calls_over_limit: 2,
            truncated_payloads: 0,
            empty_sessions: 1,
            ciphertext_exchanges: 0,
            unattributed_calls: 3,
        }
    );
    let mut a = assembler();
    accept(&mut a, 5, 5000, 1);
    a.received(5, 10, b"\n", 2);
    a.forget_fd(5);
    accept(&mut a, 5, 5001, 3);
    a.received(5, 10, b"\n", 4);
    a.forget_fd(5);
    assert_eq!(a.stats().empty_sessions, 2);
    let reported = a.stats().clone();
    accept(&mut a, 5, 5002, 5);
    a.received(5, 10, b"\n", 6);
    a.forget_fd(5);
    a.forget_reported(&reported);
    assert_eq!(a.stats().empty_sessions, 1);
}

// ---- TLS (issue 12) ----------------------------------------------------------

#[test]
fn exchanges_after_the_tls_hooks_took_a_connection_are_plaintext_tls() {
    let mut a = assembler();
    accept(&mut a, 5, 5000, 1);
    a.tls_plaintext(5);
    a.received(5, 10, b"GET /a HTTP/1.1\r\n\r\n", 2);
    connect(&mut a, 7, 10, 40000, 5432, 3);
    // A PostgreSQL SSLRequest is answered in clear before the handshake.
    a.sent(7, 10, &[0, 0, 0, 8, 4, 0xd2, 0x16, 0x2f], 4);
    a.received(7, 10, b"S", 5);
    a.tls_plaintext(7);
    a.sent(7, 10, b"Q\0\0\0\x0dSELECT 1\0", 6);
    a.received(7, 10, b"C", 7);
    a.sent(5, 10, b"HTTP/1.1 200 OK\r\n\r\n", 8);
    a.forget_fd(5);
    let sessions = a.take_finished();
    assert_eq!(sessions.len(), 1);
    let s = &sessions[0];
    assert_eq!(s.inbound.tls, Tls::Plaintext);
    let tls: Vec<Tls> = s.calls.iter().map(|c| c.tls).collect();
    assert_eq!(tls, [Tls::None, Tls::Plaintext]);
    assert_eq!(a.stats().ciphertext_exchanges, 0);
}

#[test]
fn tls_records_on_the_socket_mark_ciphertext_and_are_counted() {
    let hello: &[u8] = &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc];
    let server_hello: &[u8] = &[0x16, 0x03, 0x03, 0x00, 0x7a, 0x02, 0x00];
    let mut a = assembler();
    accept(&mut a, 5, 5000, 1);
    a.received(5, 10, b"GET /a HTTP/1.1\r\n\r\n", 2);
    connect(&mut a, 7, 10, 40000, 443, 3);
    a.sent(7, 10, hello, 4);
    a.received(7, 10, server_hello, 5);
    connect(&mut a, 8, 10, 40001, 6379, 6);
    a.sent(8, 10, b"*1\r\n$4\r\nPING\r\n", 7);
    a.received(8, 10, b"+PONG\r\n", 8);
    a.sent(5, 10, b"HTTP/1.1 200 OK\r\n\r\n", 9);
    // An inbound client speaking TLS the service's library hides from us.
    accept(&mut a, 6, 5001, 10);
    a.received(6, 11, hello, 11);
    a.sent(6, 11, server_hello, 12);
    a.forget_fd(5);
    a.forget_fd(6);
    let sessions = a.take_finished();
    assert_eq!(sessions.len(), 2);
    assert_eq!(sessions[0].inbound.tls, Tls::None);
    let tls: Vec<Tls> = sessions[0].calls.iter().map(|c| c.tls).collect();
    assert_eq!(tls, [Tls::Ciphertext, Tls::None]);
    assert_eq!(sessions[1].inbound.tls, Tls::Ciphertext);
    assert_eq!(a.stats().ciphertext_exchanges, 2);
}

/// At exit, a virtual thread that never wrote to a client (the start-up
/// work of an event loop under the automatic context helper) has its calls
/// written in the background record, not lost.
#[test]
fn at_exit_a_virtual_thread_without_a_client_goes_to_the_background_record() {
    const LOOP: u32 = 10;
    let mut a = assembler();
    connect(&mut a, 8, LOOP, 40001, 6379, 1);
    a.delegate(LOOP, 1 << 48);
    a.sent(8, LOOP, b"PING", 2);
    a.received(8, LOOP, b"+PONG", 3);
    a.close_all(EndReason::Exit);
    let finished = a.take_finished();
    assert_eq!(finished.len(), 1);
    assert!(finished[0].is_background());
    assert_eq!(calls(&finished[0]), [("PING", "+PONG")]);
    assert_eq!(a.stats().sessions_without_inbound, 1);
}

/// An event loop sharing one redis connection: request A's GET, then B's,
/// sent before either answer; both answers come back in one read. Each
/// call gets exactly its own answer (framed), and what follows goes on.
#[test]
fn calls_of_two_sessions_pipelined_on_one_connection_get_their_own_answers() {
    const LOOP: u32 = 10;
    let get = |key: &str| format!("*2\r\n$3\r\nGET\r\n$1\r\n{key}\r\n").into_bytes();
    let mut a = assembler();
    accept(&mut a, 5, 5001, 1);
    accept(&mut a, 6, 5002, 1);
    connect(&mut a, 8, LOOP, 40001, 6379, 1);
    a.received(5, LOOP, b"req-a", 2);
    a.received(6, LOOP, b"req-b", 3);
    a.delegate(LOOP, 1);
    a.sent(8, LOOP, &get("a"), 4);
    a.delegate(LOOP, 2);
    a.sent(8, LOOP, &get("b"), 5);
    a.received(8, LOOP, b"$2\r\nva\r\n$2", 6); // B's answer cut
    a.received(8, LOOP, b"\r\nvb\r\n", 7);
    a.sent(8, LOOP, &get("c"), 8); // B again, after its answer
    a.received(8, LOOP, b"$2\r\nvc\r\n", 9);
    a.delegate(LOOP, 1);
    a.sent(5, LOOP, b"resp-a", 10);
    a.delegate(LOOP, 2);
    a.sent(6, LOOP, b"resp-b", 11);
    a.forget_fd(5);
    a.forget_fd(6);
    let finished = a.take_finished();
    let get = |key: &str| format!("*2\r\n$3\r\nGET\r\n$1\r\n{key}\r\n");
    let (ga, gb, gc) = (get("a"), get("b"), get("c"));
    assert_eq!(text(&finished[0].inbound.request), "req-a");
    assert_eq!(calls(&finished[0]), [(ga.as_str(), "$2\r\nva\r\n")]);
    assert_eq!(text(&finished[1].inbound.request), "req-b");
    assert_eq!(
        calls(&finished[1]),
        [(gb.as_str(), "$2\r\nvb\r\n"), (gc.as_str(), "$2\r\nvc\r\n")]
    );
}

/// Java's HttpClient writes a request from its selector thread, which
/// never touched a client connection (`handoff`).
const SELECTOR: u32 = 99;

/// Two requests read by two workers; the selector thread then sends a
/// backend request carrying `outbound` on a connection of its own.
fn hand_off(a: &mut Assembler, waiting: usize, outbound: &[u8]) -> Vec<Session> {
    accept(a, 5, 5001, 1);
    a.received(5, 10, b"GET /a HTTP/1.1\r\nX-Request-Id: rid-a\r\n\r\n", 2);
    if waiting == 2 {
        accept(a, 6, 5002, 1);
        a.received(6, 11, b"GET /b HTTP/1.1\r\nX-Request-Id: rid-b\r\n\r\n", 3);
    }
    connect(a, 9, SELECTOR, 40000, 8080, 4);
    a.sent(9, SELECTOR, outbound, 5);
    a.received(
        9,
        SELECTOR,
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        6,
    );
    a.sent(5, 10, b"HTTP/1.1 200 OK\r\n\r\n", 7);
    a.forget_fd(5);
    if waiting == 2 {
        a.sent(6, 11, b"HTTP/1.1 200 OK\r\n\r\n", 8);
        a.forget_fd(6);
    }
    a.close_all(EndReason::Exit);
    a.take_finished()
}

#[test]
fn a_hand_off_send_goes_to_the_only_waiting_session() {
    let mut a = assembler();
    let finished = hand_off(&mut a, 1, b"GET /backend HTTP/1.1\r\n\r\n");
    assert_eq!(finished.len(), 1, "no background record");
    assert_eq!(finished[0].calls.len(), 1);
    assert!(!finished[0].calls[0].unattributed);
    assert_eq!(a.stats().unattributed_calls, 0);
}

#[test]
fn a_hand_off_send_with_several_sessions_waiting_is_unattributed() {
    let mut a = assembler();
    let finished = hand_off(&mut a, 2, b"GET /backend HTTP/1.1\r\n\r\n");
    let (background, sessions): (Vec<_>, Vec<_>) = finished.iter().partition(|s| s.is_background());
    assert!(sessions.iter().all(|s| s.calls.is_empty()), "in no session");
    assert_eq!(background.len(), 1);
    assert_eq!(background[0].calls.len(), 1);
    assert!(background[0].calls[0].unattributed);
    assert_eq!(a.stats().unattributed_calls, 1);
}

#[test]
fn a_hand_off_send_carrying_a_request_s_trace_id_goes_to_that_request() {
    let mut a = assembler();
    let finished = hand_off(
        &mut a,
        2,
        b"GET /backend HTTP/1.1\r\nx-request-id: rid-b\r\n\r\n",
    );
    let b = finished
        .iter()
        .find(|s| text(&s.inbound.request).starts_with("GET /b"))
        .unwrap();
    assert_eq!(b.calls.len(), 1);
    assert!(!b.calls[0].unattributed);
    assert!(finished.iter().all(|s| !s.is_background()));
    assert_eq!(a.stats().unattributed_calls, 0);
}

#[test]
fn a_hand_off_send_continuing_an_unanswered_call_joins_it() {
    let mut a = assembler();
    accept(&mut a, 5, 5001, 1);
    accept(&mut a, 6, 5002, 1);
    a.received(5, 10, b"POST /a HTTP/1.1\r\n\r\n", 2);
    a.received(6, 11, b"POST /b HTTP/1.1\r\n\r\n", 3);
    connect(&mut a, 9, 10, 40000, 8080, 4);
    a.sent(
        9,
        10,
        b"POST /backend HTTP/1.1\r\nContent-Length: 4\r\n\r\n",
        5,
    );
    a.sent(9, SELECTOR, b"body", 6); // the body, written by another thread
    a.received(9, SELECTOR, b"HTTP/1.1 204 No Content\r\n\r\n", 7);
    a.sent(5, 10, b"HTTP/1.1 200 OK\r\n\r\n", 8);
    a.forget_fd(5);
    let finished = a.take_finished();
    assert_eq!(
        calls(&finished[0]),
        [(
            "POST /backend HTTP/1.1\r\nContent-Length: 4\r\n\r\nbody",
            "HTTP/1.1 204 No Content\r\n\r\n"
        )]
    );
}

#[test]
fn a_send_with_no_session_waiting_is_plain_background() {
    let mut a = assembler();
    connect(&mut a, 9, SELECTOR, 40000, 6379, 1);
    a.sent(9, SELECTOR, b"PING", 2);
    a.close_all(EndReason::Exit);
    let finished = a.take_finished();
    assert!(finished[0].is_background());
    assert!(!finished[0].calls[0].unattributed);
    assert_eq!(a.stats().unattributed_calls, 0);
}
