//! Comparing the service's answer with the recorded one.
//!
//! When the recorded response is HTTP/1.x the comparison is HTTP-aware:
//! the status line, the headers as a multiset of (lower-cased name, trimmed
//! value) in any order, without `Date` and the ignored headers, and the
//! body after removing chunked framing. Anything else is compared byte for
//! byte.

use std::collections::BTreeMap;

/// Headers never compared: they change on every answer.
const ALWAYS_IGNORED: &[&str] = &["date"];

/// One parsed HTTP/1.x response.
#[derive(Debug, PartialEq)]
pub struct HttpResponse {
    pub status_line: String,
    /// Lower-cased names, trimmed values, in the order they came.
    pub headers: Vec<(String, String)>,
    pub chunked: bool,
    /// The body, de-chunked when the response was chunked.
    pub body: Vec<u8>,
    /// Set when a chunked body was malformed; `body` then holds what could
    /// be decoded.
    pub chunk_error: Option<String>,
}

/// Parses an HTTP/1.x response: `None` when `bytes` does not start with a
/// complete HTTP/1.x status line and head. Interim `1xx` answers (but `101`)
/// before the final one are skipped.
pub fn parse_http_response(mut bytes: &[u8]) -> Option<HttpResponse> {
    loop {
        let (head, rest) = split_head(bytes)?;
        let mut lines = head
            .split(|&b| b == b'\n')
            .map(|line| line.strip_suffix(b"\r").unwrap_or(line));
        let status_line = text(lines.next()?).trim().to_string();
        let code = status_code(&status_line)?;
        let mut headers: Vec<(String, String)> = Vec::new();
        for line in lines {
            if line.is_empty() {
                continue;
            }
            if line[0] == b' ' || line[0] == b'\t' {
                // Obsolete line folding: a continuation of the previous field.
                if let Some((_, value)) = headers.last_mut() {
                    value.push(' ');
                    value.push_str(text(line).trim());
                    continue;
                }
            }
            let (name, value) = match line.iter().position(|&b| b == b':') {
                Some(colon) => (&line[..colon], &line[colon + 1..]),
                None => (line, &b""[..]),
            };
            headers.push((
                text(name).trim().to_ascii_lowercase(),
                text(value).trim().to_string(),
            ));
        }
        if (100..200).contains(&code) && code != 101 && !rest.is_empty() {
            bytes = rest;
            continue;
        }
        let chunked = headers.iter().any(|(name, value)| {
            name == "transfer-encoding"
                && value
                    .rsplit(',')
                    .next()
                    .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"))
        });
        let (body, chunk_error) = if chunked {
            match dechunk(rest) {
                Ok(body) => (body, None),
                Err((partial, error)) => (partial, Some(error)),
            }
        } else {
            (rest.to_vec(), None)
        };
        return Some(HttpResponse {
            status_line,
            headers,
            chunked,
            body,
            chunk_error,
        });
    }
}

/// The head (without its final empty line) and what follows it.
fn split_head(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    if !bytes.starts_with(b"HTTP/1.") {
        return None;
    }
    let mut start = 0;
    while let Some(pos) = bytes[start..].iter().position(|&b| b == b'\n') {
        let end = start + pos + 1;
        let next = &bytes[end..];
        if next.starts_with(b"\r\n") {
            return Some((&bytes[..start + pos], &next[2..]));
        }
        if next.starts_with(b"\n") {
            return Some((&bytes[..start + pos], &next[1..]));
        }
        start = end;
    }
    None
}

fn status_code(status_line: &str) -> Option<u16> {
    let mut parts = status_line.split_whitespace();
    let version = parts.next()?;
    let code = parts.next()?;
    if version.len() != 8 || !version.starts_with("HTTP/1.") || code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

/// Bytes as text: UTF-8 as is, anything else with the bad bytes escaped.
fn text(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => text.to_string(),
        Err(_) => bytes.escape_ascii().to_string(),
    }
}

/// Removes chunked framing. On a malformed body returns what was decoded
/// and why it stopped.
pub fn dechunk(mut bytes: &[u8]) -> Result<Vec<u8>, (Vec<u8>, String)> {
    let mut body = Vec::new();
    loop {
        let Some(eol) = bytes.iter().position(|&b| b == b'\n') else {
            return Err((body, "chunked body ends inside a chunk size line".into()));
        };
        let size_line = text(&bytes[..eol]);
        let size = size_line.split(';').next().unwrap_or_default().trim();
        let Ok(size) = usize::from_str_radix(size, 16) else {
            return Err((body, format!("bad chunk size {size:?}")));
        };
        bytes = &bytes[eol + 1..];
        if size == 0 {
            // Trailer fields are not part of the body.
            return Ok(body);
        }
        if bytes.len() < size {
            body.extend_from_slice(bytes);
            return Err((body, "chunked body ends inside a chunk".into()));
        }
        body.extend_from_slice(&bytes[..size]);
        bytes = &bytes[size..];
        bytes = bytes
            .strip_prefix(b"\r\n")
            .or_else(|| bytes.strip_prefix(b"\n"))
            .unwrap_or(bytes);
    }
}

/// One way the actual response differs from the recorded one.
#[derive(Debug, PartialEq)]
pub enum Difference {
    Status {
        recorded: String,
        actual: String,
    },
    /// A recorded header the service did not send.
    HeaderMissing {
        name: String,
        value: String,
    },
    /// A header the service sent that was not recorded.
    HeaderExtra {
        name: String,
        value: String,
    },
    /// Same header name, other value(s).
    HeaderChanged {
        name: String,
        recorded: Vec<String>,
        actual: Vec<String>,
    },
    /// HTTP bodies (de-chunked).
    Body {
        recorded: Vec<u8>,
        actual: Vec<u8>,
    },
    /// The recorded response is HTTP, the actual one is not.
    NotHttp,
    /// The service sent nothing (a response was recorded).
    NoResponse,
    /// Whole responses, compared byte for byte.
    Bytes {
        recorded: Vec<u8>,
        actual: Vec<u8>,
    },
}

#[derive(Debug, Default)]
pub struct Comparison {
    /// The recorded response is HTTP/1.x and was compared as such.
    pub http: bool,
    pub differences: Vec<Difference>,
    /// Things worth knowing that are not differences.
    pub notes: Vec<String>,
}

impl Comparison {
    pub fn equal(&self) -> bool {
        self.differences.is_empty()
    }

    /// What differs, in a few words: `status, 2 headers, body`.
    pub fn summary(&self) -> String {
        let mut status = false;
        let mut headers = 0;
        let mut body = false;
        let mut other = false;
        for difference in &self.differences {
            match difference {
                Difference::Status { .. } => status = true,
                Difference::HeaderMissing { .. }
                | Difference::HeaderExtra { .. }
                | Difference::HeaderChanged { .. } => headers += 1,
                Difference::Body { .. } => body = true,
                Difference::NotHttp | Difference::Bytes { .. } => other = true,
                Difference::NoResponse => return "no response".into(),
            }
        }
        let mut parts = Vec::new();
        if other {
            parts.push(if self.http {
                "not HTTP".to_string()
            } else {
                "bytes".to_string()
            });
        }
        if status {
            parts.push("status".into());
        }
        match headers {
            0 => {}
            1 => parts.push("1 header".into()),
            n => parts.push(format!("{n} headers")),
        }
        if body {
            parts.push("body".into());
        }
        parts.join(", ")
    }
}

/// Compares the service's `actual` answer with the `recorded` one.
/// `ignore` holds lower-cased header names left out of the comparison.
/// When the recording was truncated, only the recorded prefix is compared.
pub fn compare(
    recorded: &[u8],
    actual: &[u8],
    recorded_truncated: bool,
    ignore: &[String],
) -> Comparison {
    let mut comparison = Comparison::default();
    if actual.is_empty() && !recorded.is_empty() {
        comparison.http = recorded.starts_with(b"HTTP/1.");
        comparison.differences.push(Difference::NoResponse);
        return comparison;
    }
    if recorded_truncated {
        comparison.notes.push(format!(
            "the recorded response was truncated at {} bytes (KOALA_MAX_PAYLOAD_BYTES): only that prefix is compared",
            recorded.len()
        ));
    }
    let Some(expected) = parse_http_response(recorded) else {
        if !same(recorded, actual, recorded_truncated) {
            comparison.differences.push(Difference::Bytes {
                recorded: recorded.to_vec(),
                actual: actual.to_vec(),
            });
        }
        return comparison;
    };
    comparison.http = true;
    let Some(got) = parse_http_response(actual) else {
        comparison.differences.push(Difference::NotHttp);
        comparison.differences.push(Difference::Bytes {
            recorded: recorded.to_vec(),
            actual: actual.to_vec(),
        });
        return comparison;
    };
    for (side, response) in [("recorded", &expected), ("actual", &got)] {
        if let Some(error) = &response.chunk_error {
            comparison.notes.push(format!(
                "the {side} chunked body is malformed ({error}): compared what could be decoded"
            ));
        }
    }
    if expected.status_line != got.status_line {
        comparison.differences.push(Difference::Status {
            recorded: expected.status_line.clone(),
            actual: got.status_line.clone(),
        });
    }
    let chunked = expected.chunked || got.chunked;
    if expected.chunked != got.chunked {
        comparison.notes.push(format!(
            "the recorded body was {}, the actual one {}: compared after de-chunking",
            framing(&expected),
            framing(&got)
        ));
    }
    let recorded_headers = header_multiset(&expected, chunked, ignore);
    let actual_headers = header_multiset(&got, chunked, ignore);
    comparison
        .differences
        .extend(header_differences(recorded_headers, actual_headers));
    if !same(&expected.body, &got.body, recorded_truncated) {
        comparison.differences.push(Difference::Body {
            recorded: expected.body,
            actual: got.body,
        });
    }
    comparison
}

fn framing(response: &HttpResponse) -> &'static str {
    if response.chunked {
        "chunked"
    } else if response
        .headers
        .iter()
        .any(|(name, _)| name == "content-length")
    {
        "sent with Content-Length"
    } else {
        "unframed"
    }
}

fn same(recorded: &[u8], actual: &[u8], recorded_truncated: bool) -> bool {
    if recorded_truncated {
        actual.starts_with(recorded)
    } else {
        recorded == actual
    }
}

/// name -> values, without the ignored headers and, when either side is
/// chunked, without what only chunking explains: `Content-Length` and the
/// `chunked` coding of `Transfer-Encoding`.
fn header_multiset(
    response: &HttpResponse,
    chunked: bool,
    ignore: &[String],
) -> BTreeMap<String, Vec<String>> {
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in &response.headers {
        if ALWAYS_IGNORED.contains(&name.as_str()) || ignore.iter().any(|ignored| ignored == name) {
            continue;
        }
        let value = match name.as_str() {
            "content-length" if chunked => continue,
            "transfer-encoding" => {
                let codings: Vec<&str> = value
                    .split(',')
                    .map(str::trim)
                    .filter(|coding| !coding.eq_ignore_ascii_case("chunked") && !coding.is_empty())
                    .collect();
                if codings.is_empty() {
                    continue;
                }
                codings.join(", ")
            }
            _ => value.clone(),
        };
        headers.entry(name.clone()).or_default().push(value);
    }
    headers
}

fn header_differences(
    mut recorded: BTreeMap<String, Vec<String>>,
    mut actual: BTreeMap<String, Vec<String>>,
) -> Vec<Difference> {
    let mut names: Vec<String> = recorded.keys().chain(actual.keys()).cloned().collect();
    names.sort();
    names.dedup();
    let mut differences = Vec::new();
    for name in names {
        let mut expected = recorded.remove(&name).unwrap_or_default();
        let mut got = actual.remove(&name).unwrap_or_default();
        // Multiset difference: drop the values both sides have.
        expected.retain(|value| match got.iter().position(|other| other == value) {
            Some(index) => {
                got.remove(index);
                false
            }
            None => true,
        });
        match (expected.is_empty(), got.is_empty()) {
            (true, true) => {}
            (false, true) => {
                differences.extend(expected.into_iter().map(|value| Difference::HeaderMissing {
                    name: name.clone(),
                    value,
                }))
            }
            (true, false) => {
                differences.extend(got.into_iter().map(|value| Difference::HeaderExtra {
                    name: name.clone(),
                    value,
                }))
            }
            (false, false) => differences.push(Difference::HeaderChanged {
                name,
                recorded: expected,
                actual: got,
            }),
        }
    }
    differences
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ignore(names: &[&str]) -> Vec<String> {
        names.iter().map(|name| name.to_string()).collect()
    }

    fn diff(recorded: &str, actual: &str) -> Comparison {
        compare(recorded.as_bytes(), actual.as_bytes(), false, &[])
    }

    #[test]
    fn header_order_case_and_whitespace_do_not_matter() {
        let c = diff(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-A: 1\r\nX-A: 2\r\nContent-Length: 2\r\n\r\nok",
            "HTTP/1.1 200 OK\r\nx-a: 2\r\ncontent-length:2\r\nX-A:   1  \r\nCONTENT-TYPE: text/plain\r\n\r\nok",
        );
        assert!(c.http && c.equal(), "{:?}", c.differences);
    }

    #[test]
    fn date_and_ignored_headers_are_left_out() {
        let recorded = "HTTP/1.1 200 OK\r\nDate: Mon, 01 Jan 2024 00:00:00 GMT\r\nX-Request-Id: a\r\nServer: s\r\n\r\n";
        let actual = "HTTP/1.1 200 OK\r\nX-Request-Id: b\r\nServer: s\r\ndate: Tue, 02 Jan 2024 10:00:00 GMT\r\nETag: \"x\"\r\n\r\n";
        let c = compare(
            recorded.as_bytes(),
            actual.as_bytes(),
            false,
            &ignore(&["x-request-id", "etag"]),
        );
        assert!(c.equal(), "{:?}", c.differences);
        let c = compare(
            recorded.as_bytes(),
            actual.as_bytes(),
            false,
            &ignore(&["etag"]),
        );
        assert_eq!(
            c.differences,
            vec![Difference::HeaderChanged {
                name: "x-request-id".into(),
                recorded: vec!["a".into()],
                actual: vec!["b".into()]
            }]
        );
    }

    #[test]
    fn missing_extra_and_changed_headers() {
        let c = diff(
            "HTTP/1.1 200 OK\r\nX-Cache: HIT\r\nContent-Type: application/json\r\nVary: a\r\nVary: b\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nX-Debug: 1\r\nVary: b\r\n\r\n",
        );
        assert_eq!(
            c.differences,
            vec![
                Difference::HeaderChanged {
                    name: "content-type".into(),
                    recorded: vec!["application/json".into()],
                    actual: vec!["text/html".into()]
                },
                Difference::HeaderMissing {
                    name: "vary".into(),
                    value: "a".into()
                },
                Difference::HeaderMissing {
                    name: "x-cache".into(),
                    value: "HIT".into()
                },
                Difference::HeaderExtra {
                    name: "x-debug".into(),
                    value: "1".into()
                },
            ]
        );
        assert_eq!(c.summary(), "4 headers");
    }

    #[test]
    fn chunked_and_content_length_bodies_compare_equal() {
        let recorded =
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n\r\nhello world";
        let actual = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n";
        let c = diff(recorded, actual);
        assert!(c.equal(), "{:?}", c.differences);
        assert!(
            c.notes.iter().any(|note| note.contains("de-chunking")),
            "{:?}",
            c.notes
        );
        // Both directions.
        assert!(diff(actual, recorded).equal());
        // Other codings of Transfer-Encoding still count.
        let gzip = actual.replace(
            "Transfer-Encoding: chunked",
            "Transfer-Encoding: gzip, chunked",
        );
        assert_eq!(
            diff(recorded, &gzip).differences,
            vec![Difference::HeaderExtra {
                name: "transfer-encoding".into(),
                value: "gzip".into()
            }]
        );
    }

    #[test]
    fn a_chunked_body_that_differs_is_reported_de_chunked() {
        let c = diff(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabd\r\n0\r\n\r\n",
        );
        assert_eq!(
            c.differences,
            vec![Difference::Body {
                recorded: b"abc".to_vec(),
                actual: b"abd".to_vec()
            }]
        );
    }

    #[test]
    fn status_and_body_changes() {
        let c = diff(
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\nfail",
        );
        assert_eq!(
            c.differences,
            vec![
                Difference::Status {
                    recorded: "HTTP/1.1 200 OK".into(),
                    actual: "HTTP/1.1 500 Internal Server Error".into()
                },
                Difference::HeaderChanged {
                    name: "content-length".into(),
                    recorded: vec!["2".into()],
                    actual: vec!["4".into()]
                },
                Difference::Body {
                    recorded: b"ok".to_vec(),
                    actual: b"fail".to_vec()
                },
            ]
        );
        assert_eq!(c.summary(), "status, 1 header, body");
    }

    #[test]
    fn non_http_is_byte_exact() {
        let c = compare(b"+PONG\r\n", b"+PONG\r\n", false, &[]);
        assert!(!c.http && c.equal());
        let c = compare(b"+PONG\r\n", b"-ERR\r\n", false, &[]);
        assert_eq!(c.summary(), "bytes");
        let c = diff("HTTP/1.1 200 OK\r\n\r\n", "garbage");
        assert_eq!(c.differences[0], Difference::NotHttp);
        assert_eq!(c.summary(), "not HTTP");
        let c = diff("HTTP/1.1 200 OK\r\n\r\n", "");
        assert_eq!(c.differences, vec![Difference::NoResponse]);
        assert_eq!(c.summary(), "no response");
        assert!(diff("", "").equal());
    }

    #[test]
    fn interim_answers_and_folded_headers() {
        let c = diff(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nX-Long: a\r\n  b\r\n\r\n",
            "HTTP/1.1 200 OK\r\nX-Long: a b\r\n\r\n",
        );
        assert!(c.equal(), "{:?}", c.differences);
        // A bare-LF head parses too.
        let response = parse_http_response(b"HTTP/1.0 204 No Content\nServer: x\n\n").unwrap();
        assert_eq!(response.status_line, "HTTP/1.0 204 No Content");
        assert_eq!(response.headers, vec![("server".into(), "x".into())]);
        assert!(parse_http_response(b"HTTP/1.1 200 OK\r\nno end of head").is_none());
        assert!(parse_http_response(b"HTTP/2 200\r\n\r\n").is_none());
    }

    #[test]
    fn truncated_recordings_compare_their_prefix() {
        let recorded = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234";
        assert!(
            compare(
                recorded,
                b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789",
                true,
                &[]
            )
            .equal()
        );
        assert!(
            !compare(
                recorded,
                b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123x56789",
                true,
                &[]
            )
            .equal()
        );
        assert!(compare(b"abc", b"abcdef", true, &[]).equal());
    }

    #[test]
    fn malformed_chunks_are_noted() {
        assert_eq!(dechunk(b"2\r\nab\r\n0\r\n\r\n").unwrap(), b"ab");
        let (partial, error) = dechunk(b"2\r\nab\r\nzz\r\n").unwrap_err();
        assert_eq!(partial, b"ab");
        assert!(error.contains("bad chunk size"), "{error}");
        let c = diff(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n",
        );
        assert!(c.equal());
        assert!(
            c.notes[0].contains("recorded chunked body is malformed"),
            "{:?}",
            c.notes
        );
    }
}
