//! Calls of different sessions pipelined on one outbound connection: an
//! event loop sharing one client connection (node-redis, a multiplexing
//! driver) sends request A's command, then request B's, before A's answer
//! is back. The answers come back in order, often in one read; the
//! protocol catalogue frames them, so each call gets exactly its own
//! answer. Where the bytes cannot be framed the assembler falls back to
//! giving what follows to the latest call, as for any connection.

use koala_protocols::Completeness;

/// What the bytes received next do to the answer of a call.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Answer {
    /// The first `n` bytes finish it; the rest answers the next call.
    Completes(usize),
    /// All of them belong to it, and more is to come.
    Continues,
    /// The request or the answer cannot be framed.
    Unknown,
}

/// How `data`, received after `answered`, finishes the answer to
/// `request` (one or several framed requests, each answered in turn).
pub(super) fn answer_len(request: &[u8], answered: &[u8], data: &[u8]) -> Answer {
    let Some(protocol) = koala_protocols::detect_request(request) else {
        return Answer::Unknown;
    };
    let mut response = Vec::with_capacity(answered.len() + data.len());
    response.extend_from_slice(answered);
    response.extend_from_slice(data);
    let (mut at_request, mut at_response) = (0, 0);
    while at_request < request.len() {
        let Completeness::Complete(len) = protocol.frame_request(&request[at_request..]) else {
            return Answer::Unknown;
        };
        if len == 0 {
            return Answer::Unknown;
        }
        let unit = &request[at_request..at_request + len];
        at_request += len;
        if !protocol.expects_response(unit) {
            continue;
        }
        match protocol.frame_response(unit, &response[at_response..]) {
            Completeness::Complete(len) => at_response += len,
            Completeness::NeedMore => return Answer::Continues,
            Completeness::Unknown => return Answer::Unknown,
        }
    }
    match at_response.checked_sub(answered.len()) {
        Some(n) => Answer::Completes(n),
        None => Answer::Unknown, // more was answered than asked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GET: &[u8] = b"*2\r\n$3\r\nGET\r\n$1\r\na\r\n";
    const INCR: &[u8] = b"*2\r\n$4\r\nINCR\r\n$1\r\nh\r\n";

    #[test]
    fn the_first_answer_goes_to_the_first_call() {
        let data = b"$2\r\nva\r\n:1\r\n";
        assert_eq!(answer_len(GET, b"", data), Answer::Completes(8));
        assert_eq!(answer_len(INCR, b"", &data[8..]), Answer::Completes(4));
    }

    #[test]
    fn a_call_of_several_commands_takes_one_answer_each() {
        let request = [GET, INCR].concat();
        assert_eq!(
            answer_len(&request, b"", b"$2\r\nva\r\n:1\r\n+OK\r\n"),
            Answer::Completes(12)
        );
    }

    #[test]
    fn an_answer_cut_between_reads_continues() {
        assert_eq!(answer_len(GET, b"", b"$2\r\nv"), Answer::Continues);
        assert_eq!(
            answer_len(GET, b"$2\r\nv", b"a\r\n:1\r\n"),
            Answer::Completes(3)
        );
    }

    #[test]
    fn bytes_of_no_known_protocol_are_not_framed() {
        assert_eq!(answer_len(b"hello", b"", b"world"), Answer::Unknown);
        assert_eq!(answer_len(GET, b"", b"not resp"), Answer::Unknown);
    }
}
