//! Hand-off threads: a send by a thread that serves no session — a client
//! library's own I/O thread (Java HttpClient's selector thread), a thread
//! whose last request is over — is attributed only when that needs no
//! guess (`docs/helper-hints.md`, hand-off threads):
//!
//! 1. the bytes continue the connection's current call, which has no answer
//!    yet and whose session is open (a request written in parts by two
//!    threads);
//! 2. exactly one session of the process is waiting for its answer (its
//!    request read, nothing written back yet);
//! 3. among the waiting sessions, exactly one's request carries the trace
//!    header value the bytes carry (`traceparent`, `X-Request-Id`... copied
//!    from the inbound request into the outbound one).
//!
//! Otherwise, with sessions waiting, the call is *unattributed*: written in
//! the background record, flagged, and counted. With none waiting it is
//! background traffic as before.

/// Headers whose value identifies one inbound request when a service copies
/// it into its own requests.
const TRACE_HEADERS: &[&[u8]] = &[
    b"traceparent",
    b"x-request-id",
    b"x-correlation-id",
    b"x-b3-traceid",
    b"x-amzn-trace-id",
    b"uber-trace-id",
];

/// The trace header values of an HTTP/1.x request head at the start of
/// `bytes`, as (header index, value); empty when it is no HTTP request.
pub(super) fn trace_ids(bytes: &[u8]) -> Vec<(usize, &[u8])> {
    let head_end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(bytes.len());
    let mut lines = bytes[..head_end].split(|&b| b == b'\n');
    let request_line = lines.next().unwrap_or_default();
    if !request_line.ends_with(b"\r") || !request_line.windows(6).any(|w| w == b" HTTP/") {
        return Vec::new();
    }
    let mut found = Vec::new();
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = &line[..colon];
        let Some(index) = TRACE_HEADERS
            .iter()
            .position(|header| header.eq_ignore_ascii_case(name))
        else {
            continue;
        };
        let value = line[colon + 1..].trim_ascii();
        if !value.is_empty() {
            found.push((index, value));
        }
    }
    found
}

/// Whether `outbound` (a request the service sends) carries a trace header
/// value that `inbound` (a request it received) carries under the same name.
pub(super) fn shares_trace_id(outbound: &[(usize, &[u8])], inbound: &[u8]) -> bool {
    let inbound = trace_ids(inbound);
    outbound.iter().any(|id| inbound.contains(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_headers_are_found_in_any_case() {
        let request = b"GET /b HTTP/1.1\r\nHost: x\r\nX-Request-ID:  rid-7 \r\ntraceparent: 00-ab-cd-01\r\n\r\n";
        assert_eq!(
            trace_ids(request),
            [(1, &b"rid-7"[..]), (0, &b"00-ab-cd-01"[..])]
        );
        assert!(trace_ids(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n").is_empty());
        assert!(trace_ids(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n").is_empty());
    }

    #[test]
    fn a_trace_id_is_shared_only_under_the_same_header() {
        let outbound = b"GET /backend HTTP/1.1\r\nx-request-id: rid-1\r\n\r\n";
        let ids = trace_ids(outbound);
        assert!(shares_trace_id(
            &ids,
            b"GET /a HTTP/1.1\r\nX-Request-Id: rid-1\r\n\r\n"
        ));
        assert!(!shares_trace_id(
            &ids,
            b"GET /a HTTP/1.1\r\nX-Request-Id: rid-2\r\n\r\n"
        ));
        assert!(!shares_trace_id(
            &ids,
            b"GET /a HTTP/1.1\r\nX-Correlation-Id: rid-1\r\n\r\n"
        ));
    }
}
