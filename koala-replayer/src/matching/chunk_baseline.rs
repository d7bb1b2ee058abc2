//! The original koala's matching ("chunk algorithm"), reimplemented from its
//! description to show, on the same cases, where it serves wrong responses
//! and [`SessionMatcher`](super::SessionMatcher) does not.
//!
//! The request is cut into 16-byte chunks (after skipping a binary prefix
//! for requests longer than 256 bytes: the first printable run longer than
//! 8 bytes becomes the first chunk). Each recorded request after the
//! connection's cursor (the index last matched on it) scores +1 per chunk
//! found in it, in order; when there is no cursor the first chunk scores the
//! number of chunks instead (the first-chunk bonus). The highest score wins,
//! ties going to the candidate that reached it first (chunks in order, each
//! over the candidates in recorded order). The score divided by
//! the number of chunks must reach 0.85 when there is a cursor, 0.1
//! otherwise; when nothing is found the search is repeated without a cursor.
//! Nothing is consumed: a recorded call can be served any number of times.

use std::collections::HashMap;

use koala_session::Exchange;

const CHUNK_LEN: usize = 16;

/// The original algorithm's matching state for one session.
pub(super) struct ChunkMatcher {
    requests: Vec<Vec<u8>>,
    /// Connection → index last matched on it.
    cursors: HashMap<u64, usize>,
}

impl ChunkMatcher {
    pub fn new(calls: &[Exchange]) -> Self {
        ChunkMatcher {
            requests: calls
                .iter()
                .map(|call| call.request.as_bytes().to_vec())
                .collect(),
            cursors: HashMap::new(),
        }
    }

    pub fn match_request(&mut self, request: &[u8], conn: u64) -> Option<usize> {
        let cursor = self.cursors.remove(&conn);
        let matched = self
            .search(request, cursor)
            .or_else(|| cursor.and_then(|_| self.search(request, None)));
        if let Some(index) = matched {
            self.cursors.insert(conn, index);
        }
        matched
    }

    /// One scoring pass over the candidates after `cursor`.
    fn search(&self, request: &[u8], cursor: Option<usize>) -> Option<usize> {
        let chunks = cut_to_chunks(request);
        let mut remaining: Vec<&[u8]> = self.requests.iter().map(Vec::as_slice).collect();
        let mut scores = vec![0usize; self.requests.len()];
        let (mut best_score, mut best_index) = (0usize, 0usize);
        for (chunk_index, chunk) in chunks.iter().enumerate() {
            for (index, candidate) in remaining.iter_mut().enumerate() {
                if cursor.is_some_and(|cursor| index <= cursor) || candidate.len() < chunk.len() {
                    continue;
                }
                let Some(position) = find(candidate, chunk) else {
                    continue;
                };
                // Later chunks are searched from where this one was found.
                *candidate = &candidate[position..];
                scores[index] += if chunk_index == 0 && cursor.is_none() {
                    chunks.len()
                } else {
                    1
                };
                if scores[index] > best_score {
                    best_score = scores[index];
                    best_index = index;
                }
            }
        }
        if best_score == 0 {
            return None;
        }
        let mark = best_score as f64 / chunks.len() as f64;
        let threshold = if cursor.is_some() { 0.85 } else { 0.1 };
        (mark >= threshold).then_some(best_index)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

fn is_readable(byte: u8) -> bool {
    (32..127).contains(&byte)
}

/// Start and length of the first run of printable ASCII in `bytes`.
fn readable_run(bytes: &[u8]) -> Option<(usize, usize)> {
    let start = bytes.iter().position(|&byte| is_readable(byte))?;
    let len = bytes[start..]
        .iter()
        .take_while(|&&byte| is_readable(byte))
        .count();
    Some((start, len))
}

fn cut_to_chunks(request: &[u8]) -> Vec<&[u8]> {
    let mut chunks = Vec::new();
    let mut key = request;
    if key.len() > 256 {
        let mut offset = 0;
        while let Some((start, len)) = readable_run(&key[offset..]) {
            if len > 8 {
                let first_len = len.min(CHUNK_LEN);
                let first_start = offset + start;
                chunks.push(&key[first_start..first_start + first_len]);
                key = &key[first_start + first_len..];
                break;
            }
            offset += start + len;
        }
    }
    chunks.extend(key.chunks(CHUNK_LEN));
    chunks
}

// ---------------------------------------------------------------------------
// The same cases on both algorithms.

#[cfg(test)]
mod comparison {
    use super::*;
    use crate::matching::tests::{call, call_on, http_post_json, matcher as ours};

    #[test]
    fn chunks_skip_a_binary_prefix_of_long_requests() {
        let mut request = vec![0u8, 1, 2, b'a', b'b', 3];
        request.extend_from_slice(b"readable-text-longer-than-sixteen");
        request.resize(300, b'x');
        let chunks = cut_to_chunks(&request);
        assert_eq!(chunks[0], b"readable-text-lo");
        assert_eq!(chunks[1], b"nger-than-sixtee");
        let short = cut_to_chunks(b"\x00\x01short request, 33 bytes long..");
        assert_eq!(short[0], b"\x00\x01short request,");
    }

    /// Request A recorded three times with responses r1, r2, r3, asked on
    /// three connections (a client without keep-alive): the original serves
    /// r1 three times, since nothing is consumed and every new connection
    /// starts without a cursor.
    #[test]
    fn repeated_identical_requests_on_new_connections() {
        let request = "GET /counter HTTP/1.1\r\nHost: counter\r\n\r\n";
        let calls: Vec<Exchange> = ["r1", "r2", "r3"]
            .iter()
            .map(|response| call(request, response))
            .collect();

        let mut original = ChunkMatcher::new(&calls);
        let original_answers: Vec<Option<usize>> = (0..3)
            .map(|conn| original.match_request(request.as_bytes(), conn))
            .collect();
        assert_eq!(original_answers, [Some(0), Some(0), Some(0)]);

        let mut matcher = ours(&calls);
        let answers: Vec<Option<usize>> = (0..3)
            .map(|conn| {
                matcher
                    .match_request(request.as_bytes(), None, conn)
                    .matched
            })
            .collect();
        assert_eq!(answers, [Some(0), Some(1), Some(2)]);
    }

    /// 50 JSON requests that differ only in their id, asked in reverse order
    /// on one connection. After the first answer the cursor sits on a late
    /// call, and a sibling after it shares all chunks but the id's: its mark
    /// passes 0.85 and its response is served instead of the right one.
    #[test]
    fn fifty_requests_differing_in_one_number_in_reverse_order() {
        let calls: Vec<Exchange> = (0..50)
            .map(|id| {
                call(
                    &http_post_json(
                        "/api/items",
                        &format!(r#"{{"id": {id}, "fields": ["name", "price"]}}"#),
                    ),
                    &format!("item {id}"),
                )
            })
            .collect();
        let requests: Vec<&[u8]> = (0..50)
            .rev()
            .map(|id| calls[id].request.as_bytes())
            .collect();

        let mut original = ChunkMatcher::new(&calls);
        let original_answers: Vec<Option<usize>> = requests
            .iter()
            .map(|request| original.match_request(request, 7))
            .collect();
        // Asked 49, 48, 47, ...: 49 and 48 are right, then 47 gets 49's response.
        assert_eq!(&original_answers[..3], &[Some(49), Some(48), Some(49)]);
        let wrong = original_answers
            .iter()
            .zip((0..50).rev())
            .filter(|(answer, id)| **answer != Some(*id))
            .count();
        assert_eq!(wrong, 40, "{original_answers:?}");

        let mut matcher = ours(&calls);
        for (request, id) in requests.iter().zip((0..50).rev()) {
            assert_eq!(matcher.match_request(request, None, 7).matched, Some(id));
        }
    }

    /// Calls recorded A, B on one connection, replayed B, A, B: the original
    /// serves B twice (nothing consumed) and never reports A's second use.
    #[test]
    fn calls_in_another_order_and_repeated() {
        let a = http_post_json(
            "/api/report",
            r#"{"report": "daily", "format": "csv", "rows": 1000}"#,
        );
        let b = http_post_json(
            "/api/report",
            r#"{"report": "weekly", "format": "csv", "rows": 1000}"#,
        );
        let calls = vec![
            call_on("10.0.0.1:5000", "10.0.0.9:80", &a, "A"),
            call_on("10.0.0.1:5000", "10.0.0.9:80", &b, "B"),
        ];

        let mut original = ChunkMatcher::new(&calls);
        let original_answers: Vec<Option<usize>> = [&b, &a, &b]
            .iter()
            .map(|request| original.match_request(request.as_bytes(), 1))
            .collect();
        assert_eq!(original_answers, [Some(1), Some(0), Some(1)]);

        let mut matcher = ours(&calls);
        assert_eq!(
            matcher.match_request(b.as_bytes(), None, 1).matched,
            Some(1)
        );
        assert_eq!(
            matcher.match_request(a.as_bytes(), None, 1).matched,
            Some(0)
        );
        // B again: identical to a served call, re-served and reported as such.
        let again = matcher.match_request(b.as_bytes(), None, 1);
        assert_eq!((again.matched, again.reused), (Some(1), true));
    }

    /// A request recorded nowhere but sharing its first 16 bytes with a
    /// recorded one: the first-chunk bonus alone passes the 0.1 threshold,
    /// and the original serves the other request's response.
    #[test]
    fn unrelated_request_sharing_a_prefix() {
        let calls = vec![
            call("*2\r\n$3\r\nGET\r\n$6\r\nkey:17\r\n", "$9\r\nvalue: 17\r\n"),
            call(
                "GET /api/v1/users/17/profile HTTP/1.1\r\nHost: users\r\n\r\n",
                "HTTP/1.1 200 OK\r\n\r\n",
            ),
        ];
        let other_key = b"*2\r\n$3\r\nGET\r\n$6\r\nkey:99\r\n";
        let other_path = b"GET /api/v1/users/17/orders HTTP/1.1\r\nHost: users\r\n\r\n";

        let mut original = ChunkMatcher::new(&calls);
        assert_eq!(original.match_request(other_key, 1), Some(0));
        assert_eq!(original.match_request(other_path, 2), Some(1));

        let mut matcher = ours(&calls);
        assert_eq!(matcher.match_request(other_key, None, 1).matched, None);
        assert_eq!(matcher.match_request(other_path, None, 2).matched, None);
        assert_eq!(matcher.unserved(), vec![0, 1]);
    }
}
