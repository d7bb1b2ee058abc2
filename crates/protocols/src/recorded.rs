//! Framing by the recording, for any protocol: bytes that equal a complete
//! recorded request are a complete request, answered at once rather than
//! after a silence.

use crate::Completeness;

/// Completeness judged against the requests recorded for a dependency, for
/// protocols no module frames (and as a fallback for those that do).
///
/// - `NeedMore` if `bytes` is a strict prefix of some recorded request: the
///   client may still be sending it, and answering early would be wrong
///   even when `bytes` also equals a shorter recorded request.
/// - else `Complete(n)` for the longest recorded request equal to
///   `bytes[..n]` (the rest is the start of a pipelined request);
/// - else `Unknown`.
///
/// Empty recorded requests (server-speaks-first calls) are ignored. Cost is
/// linear in the total length compared, at most `bytes.len()` per request.
pub fn recorded_prefix(bytes: &[u8], recorded: &[&[u8]]) -> Completeness {
    let mut longest_prefix = None;
    for request in recorded.iter().filter(|request| !request.is_empty()) {
        if request.len() > bytes.len() {
            if request.starts_with(bytes) {
                return Completeness::NeedMore;
            }
        } else if bytes.starts_with(request)
            && longest_prefix.is_none_or(|longest| request.len() > longest)
        {
            longest_prefix = Some(request.len());
        }
    }
    match longest_prefix {
        Some(len) => Completeness::Complete(len),
        None => Completeness::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Completeness::{Complete, NeedMore, Unknown};

    #[test]
    fn recorded_prefix_rules() {
        let recorded: [&[u8]; 4] = [b"HELLO", b"HELLO WORLD", b"BYE", b""];
        // Equal to a recorded request that nothing longer extends.
        assert_eq!(recorded_prefix(b"BYE", &recorded), Complete(3));
        // Equal to HELLO, but HELLO WORLD may be on its way.
        assert_eq!(recorded_prefix(b"HELLO", &recorded), NeedMore);
        assert_eq!(recorded_prefix(b"HELLO W", &recorded), NeedMore);
        assert_eq!(recorded_prefix(b"", &recorded), NeedMore);
        // The longest recorded request at the start; the rest is pipelined.
        assert_eq!(recorded_prefix(b"HELLO WORLDBYE", &recorded), Complete(11));
        assert_eq!(recorded_prefix(b"HELLO THERE", &recorded), Complete(5));
        assert_eq!(recorded_prefix(b"BYEBYE", &recorded), Complete(3));
        // Nothing recorded looks like it.
        assert_eq!(recorded_prefix(b"HOLA", &recorded), Unknown);
        assert_eq!(recorded_prefix(b"anything", &[]), Unknown);
        assert_eq!(recorded_prefix(b"", &[b""]), Unknown);
    }

    #[test]
    fn recorded_prefix_every_split_point() {
        let first = b"\x00\x07\x01binary-request-one".to_vec();
        let second = b"\x00\x07\x02binary-request-two".to_vec();
        let recorded = [first.as_slice(), second.as_slice()];
        for message in [&first, &second] {
            for split in 0..message.len() {
                assert_eq!(recorded_prefix(&message[..split], &recorded), NeedMore);
            }
            assert_eq!(recorded_prefix(message, &recorded), Complete(message.len()));
            let pipelined = [message.as_slice(), &first[..5]].concat();
            assert_eq!(
                recorded_prefix(&pipelined, &recorded),
                Complete(message.len())
            );
        }
    }
}
