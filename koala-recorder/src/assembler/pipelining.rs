//! Pipelined HTTP: a client that sends its next request before the answer
//! to the previous one (two requests in one read) leaves one inbound
//! session holding several requests and their responses. When the session
//! is written, it is split into one session per request, by framing both
//! sides with the protocol catalogue. The calls go to the request whose
//! response was not complete yet when they started, which is right for a
//! server that serves pipelined requests one after the other (as HTTP/1.1
//! requires it to answer them in order).

use std::ops::Range;

use koala_protocols::{Completeness, Protocol};

/// How many response writes of a session are timed: enough to split a few
/// pipelined responses, a fixed array so the hot path never allocates.
pub(super) const TIMED_WRITES: usize = 8;

/// When the first [`TIMED_WRITES`] writes of a response happened.
#[derive(Clone, Copy, Default)]
pub(super) struct WriteTimes {
    /// (offset in the response of the write's first byte, time).
    marks: [(usize, u64); TIMED_WRITES],
    /// Writes seen, up to `TIMED_WRITES + 1` (one more: some were not timed).
    seen: usize,
}

impl WriteTimes {
    /// A write starting at `offset` of the response happened at `now_ns`.
    pub(super) fn record(&mut self, offset: usize, now_ns: u64) {
        if let Some(mark) = self.marks.get_mut(self.seen) {
            *mark = (offset, now_ns);
        }
        self.seen = (self.seen + 1).min(TIMED_WRITES + 1);
    }

    /// The time of the write that carried byte `at` of the response, when
    /// known.
    fn of_byte(&self, at: usize) -> Option<u64> {
        let timed = self.seen.min(TIMED_WRITES);
        let index = self.marks[..timed]
            .iter()
            .rposition(|&(start, _)| start <= at)?;
        // The last timed write may not be the one: later writes were not timed.
        if index + 1 == timed && self.seen > TIMED_WRITES {
            return None;
        }
        Some(self.marks[index].1)
    }
}

/// One request of a pipelined session and its answer.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Part {
    pub request: Range<usize>,
    pub response: Range<usize>,
    /// Time of the first response byte, when known.
    pub response_ns: Option<u64>,
    /// The calls (indices into the session's calls) made for it.
    pub calls: Range<usize>,
}

/// Splits an HTTP session holding several pipelined requests into one part
/// per request; `None` when it holds one request, is not HTTP, or cannot be
/// split with certainty (a response that cannot be framed, calls that
/// cannot be told apart). `call_starts` are the times the session's calls
/// started, in order.
pub(super) fn split(
    request: &[u8],
    response: &[u8],
    writes: &WriteTimes,
    call_starts: &[u64],
) -> Option<Vec<Part>> {
    if !may_hold_several(request) {
        return None;
    }
    // HTTP only: its responses frame from the request alone. (A protocol
    // whose answers depend on connection state would be split wrongly.)
    let http: &dyn Protocol = &koala_protocols::http::Http;
    if !http.detect_request(request) {
        return None;
    }
    let mut bounds = Vec::new();
    let (mut at, mut answered) = (0, 0);
    while let Completeness::Complete(n) = http.frame_request(&request[at..]) {
        if n == 0 || at + n >= request.len() {
            break;
        }
        let m = frame_answer(http, &request[at..at + n], &response[answered..])?;
        if answered + m >= response.len() {
            return None;
        }
        bounds.push((at..at + n, answered..answered + m));
        at += n;
        answered += m;
    }
    if bounds.is_empty() {
        return None;
    }
    bounds.push((at..request.len(), answered..response.len()));
    // A call belongs to the first request whose response was not complete
    // when it started.
    let done: Vec<Option<u64>> = bounds
        .iter()
        .map(|(_, answer)| writes.of_byte(answer.end - 1))
        .collect();
    let last = bounds.len() - 1;
    let mut owners = Vec::with_capacity(call_starts.len());
    for &start in call_starts {
        let mut owner = last;
        for (index, done) in done[..last].iter().enumerate() {
            match done {
                Some(done) if start > *done => {}
                Some(_) => {
                    owner = index;
                    break;
                }
                None => return None,
            }
        }
        owners.push(owner);
    }
    if owners.windows(2).any(|pair| pair[0] > pair[1]) {
        return None;
    }
    let mut first_call = 0;
    let parts = bounds
        .into_iter()
        .enumerate()
        .map(|(index, (request, response))| {
            let calls_end = first_call
                + owners[first_call..]
                    .iter()
                    .take_while(|&&o| o == index)
                    .count();
            let calls = first_call..calls_end;
            first_call = calls_end;
            Part {
                response_ns: writes.of_byte(response.start),
                request,
                response,
                calls,
            }
        })
        .collect();
    Some(parts)
}

/// The length of the final response to `request` at the start of
/// `response`, after any interim (1xx) ones; `None` when it cannot be
/// framed, or the connection switched protocols (101).
fn frame_answer(http: &dyn Protocol, request: &[u8], response: &[u8]) -> Option<usize> {
    let mut at = 0;
    loop {
        let rest = &response[at..];
        let Completeness::Complete(m) = http.frame_response(request, rest) else {
            return None;
        };
        // "HTTP/1.x " then the status code.
        match rest.get(9..12) {
            _ if m == 0 => return None,
            Some(b"101") => return None,
            Some([b'1', ..]) => at += m,
            _ => return Some(at + m),
        }
    }
}

/// A cheap first look, as every session is asked when it ends: an HTTP
/// request starts with a method (upper-case letters), and holds anything
/// after its head — a body or another request. A GET without a body, the
/// common case, is ruled out by finding the end of its head at the end.
pub(super) fn may_hold_several(request: &[u8]) -> bool {
    if !request.first().is_some_and(u8::is_ascii_uppercase) {
        return false;
    }
    request
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .is_some_and(|end| end + 4 < request.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQ_A: &[u8] = b"GET /a HTTP/1.1\r\nHost: s\r\n\r\n";
    const REQ_B: &[u8] = b"GET /b HTTP/1.1\r\nHost: s\r\n\r\n";
    const RESP_A: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na";
    const RESP_B: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nbb";

    fn both(a: &[u8], b: &[u8]) -> Vec<u8> {
        [a, b].concat()
    }

    /// Responses written one write each, A at time 10, B at time 20.
    fn two_writes() -> WriteTimes {
        let mut writes = WriteTimes::default();
        writes.record(0, 10);
        writes.record(RESP_A.len(), 20);
        writes
    }

    #[test]
    fn two_pipelined_requests_become_two_parts_with_their_calls() {
        let request = both(REQ_A, REQ_B);
        let response = both(RESP_A, RESP_B);
        let parts = split(&request, &response, &two_writes(), &[5, 15, 16]).unwrap();
        let (a, b) = (REQ_A.len(), RESP_A.len());
        assert_eq!(
            parts,
            [
                Part {
                    request: 0..a,
                    response: 0..b,
                    response_ns: Some(10),
                    calls: 0..1
                },
                Part {
                    request: a..request.len(),
                    response: b..response.len(),
                    response_ns: Some(20),
                    calls: 1..3
                },
            ]
        );
    }

    #[test]
    fn one_request_or_other_protocols_are_not_split() {
        assert_eq!(split(REQ_A, RESP_A, &two_writes(), &[]), None);
        let fastcgi_like = [1u8, 1, 0, 1, 0, 8, 0, 0];
        assert_eq!(split(&fastcgi_like, b"x", &two_writes(), &[]), None);
        // 100 Continue then the final response: one request.
        let request = b"POST /u HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\nhi";
        let response = both(b"HTTP/1.1 100 Continue\r\n\r\n", RESP_A);
        assert_eq!(split(request, &response, &two_writes(), &[]), None);
    }

    #[test]
    fn interim_responses_belong_to_their_request() {
        let post = b"POST /u HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\nhi";
        let request = both(post, REQ_B);
        let continue_then_a = both(b"HTTP/1.1 100 Continue\r\n\r\n", RESP_A);
        let response = both(&continue_then_a, RESP_B);
        let parts = split(&request, &response, &WriteTimes::default(), &[]).unwrap();
        assert_eq!(parts[0].request, 0..post.len());
        assert_eq!(parts[0].response, 0..continue_then_a.len());
        assert_eq!(parts[1].response, continue_then_a.len()..response.len());
        // After 101 Switching Protocols the bytes are no longer HTTP.
        let upgraded = both(b"HTTP/1.1 101 Switching Protocols\r\n\r\n", b"\x81\x00");
        assert_eq!(
            split(&request, &upgraded, &WriteTimes::default(), &[]),
            None
        );
    }

    #[test]
    fn responses_that_do_not_frame_leave_the_session_whole() {
        let request = both(REQ_A, REQ_B);
        // Only A answered so far.
        assert_eq!(split(&request, RESP_A, &two_writes(), &[]), None);
        // A response without a length (ends at the close): unknown.
        let unframed = both(b"HTTP/1.1 200 OK\r\n\r\nrest", RESP_B);
        assert_eq!(split(&request, &unframed, &two_writes(), &[]), None);
    }

    #[test]
    fn calls_that_cannot_be_told_apart_leave_the_session_whole() {
        let request = both(REQ_A, REQ_B);
        let response = both(RESP_A, RESP_B);
        // Out of order: a call of B before a call of A.
        assert_eq!(split(&request, &response, &two_writes(), &[15, 5]), None);
        // The writes were not timed beyond the first TIMED_WRITES.
        let mut untimed = WriteTimes::default();
        for index in 0..=TIMED_WRITES {
            untimed.record(index, 1);
        }
        assert_eq!(split(&request, &response, &untimed, &[5]), None);
        // Without calls nothing needs the times.
        assert_eq!(split(&request, &response, &untimed, &[]).unwrap().len(), 2);
    }

    #[test]
    fn only_requests_with_bytes_after_their_head_are_framed() {
        assert!(!may_hold_several(REQ_A));
        assert!(may_hold_several(&both(REQ_A, REQ_B)));
        assert!(may_hold_several(
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\n\r\nx"
        ));
        assert!(!may_hold_several(b"\x01\x01\r\n\r\nrest"));
        assert!(!may_hold_several(b""));
    }

    #[test]
    fn the_time_of_a_byte_is_its_write() {
        let mut writes = WriteTimes::default();
        assert_eq!(writes.of_byte(0), None);
        writes.record(0, 10);
        writes.record(5, 20);
        assert_eq!(
            [
                writes.of_byte(0),
                writes.of_byte(4),
                writes.of_byte(5),
                writes.of_byte(99)
            ],
            [Some(10), Some(10), Some(20), Some(20)]
        );
    }
}
