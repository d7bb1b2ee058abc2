//! HTTP/1.x: secret header values, secret JSON fields and user regexes in
//! bodies of a known length (`Content-Length` is rewritten to the new
//! length), user regexes in other header values.
//!
//! A payload may hold several messages (pipelined requests, a `100
//! Continue` before the response): each is redacted in turn. A request
//! without `Content-Length` or `Transfer-Encoding`, and a 1xx, 204 or 304
//! response, have no body: the walk goes on. A chunked body ends the walk
//! (its headers are redacted, the rest kept as is); so does a body up to
//! the close or cut short, which only user regexes look into (no length to
//! fix up). A payload cut inside a header line that names a secret header
//! has the rest of that line replaced by a token.

use crate::Redactor;

/// Whether `payload` starts like an HTTP/1.x request or response.
pub(crate) fn is_http(payload: &[u8]) -> bool {
    if payload.starts_with(b"HTTP/1.") {
        return true;
    }
    let line_end = payload
        .iter()
        .take(8192)
        .position(|&b| b == b'\n')
        .unwrap_or(payload.len().min(8192));
    let line = payload[..line_end]
        .strip_suffix(b"\r")
        .unwrap_or(&payload[..line_end]);
    let method_ok = line
        .iter()
        .position(|&b| b == b' ')
        .is_some_and(|n| n > 0 && line[..n].iter().all(|b| b.is_ascii_uppercase()));
    method_ok && (line.ends_with(b" HTTP/1.1") || line.ends_with(b" HTTP/1.0"))
}

pub(crate) fn redact(redactor: &Redactor, payload: &[u8]) -> Option<Vec<u8>> {
    // Edits first, copy last: most payloads have no secret, and are then
    // neither copied nor compared.
    let mut edits: Vec<Edit> = Vec::new();
    let mut at = 0;
    while at < payload.len() && is_http(&payload[at..]) {
        let rest = &payload[at..];
        let Some(head_len) = find(rest, b"\r\n\r\n").map(|n| n + 4) else {
            // A head cut short, down to its torn last line.
            redact_head(redactor, rest, at, None, &mut edits);
            break;
        };
        let head = &rest[..head_len];
        let body_at = at + head_len;
        let body = match body_length(head) {
            Body::Length(len) => rest.get(head_len..head_len.saturating_add(len)),
            Body::Chunked => {
                redact_head(redactor, head, at, None, &mut edits);
                break;
            }
            Body::ToClose => None,
        };
        let Some(body) = body else {
            // Up to the close, or cut: no length to fix up.
            redact_head(redactor, head, at, None, &mut edits);
            if let Some(new_rest) = crate::regex::redact(redactor, &rest[head_len..]) {
                edits.push((body_at..payload.len(), new_rest));
            }
            break;
        };
        let new_body = redact_body(redactor, body);
        redact_head(
            redactor,
            head,
            at,
            new_body.as_ref().map(Vec::len),
            &mut edits,
        );
        if let Some(new_body) = new_body {
            edits.push((body_at..body_at + body.len(), new_body));
        }
        at = body_at + body.len();
    }
    if edits.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(payload.len() + edits.len() * crate::TOKEN_LEN);
    let mut copied = 0;
    for (range, replacement) in edits {
        out.extend_from_slice(&payload[copied..range.start]);
        out.extend_from_slice(&replacement);
        copied = range.end;
    }
    out.extend_from_slice(&payload[copied..]);
    Some(out)
}

/// A whole body with its JSON fields and regex matches redacted.
fn redact_body(redactor: &Redactor, body: &[u8]) -> Option<Vec<u8>> {
    let json = crate::json::redact(redactor, body);
    let regex = crate::regex::redact(redactor, json.as_deref().unwrap_or(body));
    regex.or(json)
}

/// Bytes of the payload (absolute range) and what replaces them; in order.
type Edit = (std::ops::Range<usize>, Vec<u8>);

/// The edits of a head at `offset`: secret header values replaced and, when
/// `content_length` is given, the `Content-Length` value set to it.
fn redact_head(
    redactor: &Redactor,
    head: &[u8],
    offset: usize,
    content_length: Option<usize>,
    edits: &mut Vec<Edit>,
) {
    let mut line_at = offset;
    for (index, line) in head.split_inclusive(|&b| b == b'\n').enumerate() {
        let this_line = line_at;
        line_at += line.len();
        let Some(colon) = line.iter().position(|&b| b == b':').filter(|_| index > 0) else {
            continue;
        };
        let name = &line[..colon];
        // A torn last line (a cut payload) has no line end.
        let complete = line.ends_with(b"\n");
        let content = line.len()
            - match (complete, line.ends_with(b"\r\n"), line.ends_with(b"\r")) {
                (true, true, _) => 2,
                (true, false, _) => 1,
                (false, _, true) => 1,
                (false, _, false) => 0,
            };
        let content = content.max(colon + 1);
        let start = colon
            + 1
            + line[colon + 1..content]
                .iter()
                .take_while(|&&b| b == b' ' || b == b'\t')
                .count();
        let end = content
            - line[start..content]
                .iter()
                .rev()
                .take_while(|&&b| b == b' ' || b == b'\t')
                .count();
        // A torn value is redacted whole: its trailing blanks may be the
        // secret's.
        let end = if complete { end } else { content };
        let range = this_line + start..this_line + end;
        if let (Some(len), true) = (content_length, name.eq_ignore_ascii_case(b"content-length")) {
            edits.push((range, len.to_string().into_bytes()));
        } else if start < end && redactor.rules.is_secret_header(name) {
            let token = redactor.token(&line[start..end]);
            if token != line[start..end] {
                edits.push((range, token));
            }
        } else if start < end && !is_framing(name) {
            for secret in crate::regex::secrets(redactor, &line[start..end]) {
                let secret_at = this_line + start;
                let token = redactor.token(&line[start + secret.start..start + secret.end]);
                edits.push((secret_at + secret.start..secret_at + secret.end, token));
            }
        }
    }
}

/// A header a token would break the framing of: never regex-redacted.
fn is_framing(name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"transfer-encoding")
}

/// How a message's body is delimited.
enum Body {
    /// `Content-Length`, or none at all (0).
    Length(usize),
    Chunked,
    /// A response's body up to the close.
    ToClose,
}

/// How the body after `head` ends: a `Transfer-Encoding` is chunked; else
/// `Content-Length`; else a request, or a 1xx, 204 or 304 response, has
/// none; any other response runs to the close (as a bad length does).
fn body_length(head: &[u8]) -> Body {
    let mut length = None;
    for line in head.split(|&b| b == b'\n').skip(1) {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = &line[..colon];
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            return Body::Chunked;
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            let value = std::str::from_utf8(&line[colon + 1..]).map(str::trim);
            match value.ok().and_then(|v| v.parse().ok()) {
                Some(len) => length = Some(len),
                None => return Body::ToClose,
            }
        }
    }
    if let Some(len) = length {
        return Body::Length(len);
    }
    if !head.starts_with(b"HTTP/") {
        return Body::Length(0);
    }
    match head.get(9..12) {
        Some([b'1', _, _] | b"204" | b"304") => Body::Length(0),
        _ => Body::ToClose,
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use crate::test_redactor;

    fn token(secret: &str) -> String {
        String::from_utf8(test_redactor().token(secret.as_bytes())).unwrap()
    }

    fn redact(payload: &str) -> Option<String> {
        test_redactor()
            .redact(payload.as_bytes())
            .map(|bytes| String::from_utf8(bytes).unwrap())
    }

    #[test]
    fn secret_headers_are_redacted_in_requests_and_responses() {
        let request = "GET /a HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer abc \r\nCOOKIE:s=1; t=2\r\nX-Api-Key:\r\n\r\n";
        assert_eq!(
            redact(request).unwrap(),
            format!(
                "GET /a HTTP/1.1\r\nHost: x\r\nAuthorization: {} \r\nCOOKIE:{}\r\nX-Api-Key:\r\n\r\n",
                token("Bearer abc"),
                token("s=1; t=2")
            )
        );
        let response = "HTTP/1.1 200 OK\r\nSet-Cookie: sid=42\r\nContent-Length: 2\r\n\r\nok";
        assert_eq!(
            redact(response).unwrap(),
            format!(
                "HTTP/1.1 200 OK\r\nSet-Cookie: {}\r\nContent-Length: 2\r\n\r\nok",
                token("sid=42")
            )
        );
    }

    #[test]
    fn json_bodies_are_redacted_and_their_length_fixed() {
        let body = r#"{"user":"ann","password":"pw"}"#;
        let request = format!(
            "POST /login HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}GET /b HTTP/1.1\r\nCookie: c\r\n\r\n",
            body.len()
        );
        let new_body = format!(r#"{{"user":"ann","password":"{}"}}"#, token("pw"));
        assert_eq!(
            redact(&request).unwrap(),
            format!(
                "POST /login HTTP/1.1\r\nContent-Length: {}\r\n\r\n{new_body}GET /b HTTP/1.1\r\nCookie: {}\r\n\r\n",
                new_body.len(),
                token("c")
            )
        );
    }

    #[test]
    fn chunked_cut_and_plain_messages() {
        let chunked = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nCookie: c\r\n\r\n5\r\n{\"password\":1}";
        assert_eq!(
            redact(chunked).unwrap(),
            format!(
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nCookie: {}\r\n\r\n5\r\n{{\"password\":1}}",
                token("c")
            )
        );
        // A head cut short: the torn last line's value is a secret too.
        assert_eq!(
            redact("GET / HTTP/1.1\r\nCookie: c\r\nAuthorization: Bea").unwrap(),
            format!(
                "GET / HTTP/1.1\r\nCookie: {}\r\nAuthorization: {}",
                token("c"),
                token("Bea")
            )
        );
        assert_eq!(redact("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), None);
        assert_eq!(redact("get / http/1.1\r\nCookie: c\r\n\r\n"), None);
        // A body shorter than its Content-Length is kept whole.
        assert_eq!(
            redact("POST / HTTP/1.1\r\nContent-Length: 99\r\n\r\n{\"password\":\"x\"}"),
            None
        );
    }

    #[test]
    fn messages_without_a_body_do_not_end_the_walk() {
        let response = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nSet-Cookie: sid=42\r\nContent-Length: 2\r\n\r\nok";
        assert_eq!(
            redact(response).unwrap(),
            format!(
                "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nSet-Cookie: {}\r\nContent-Length: 2\r\n\r\nok",
                token("sid=42")
            )
        );
        let pipelined = "GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nCookie: c\r\n\r\n";
        assert_eq!(
            redact(pipelined).unwrap(),
            format!(
                "GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nCookie: {}\r\n\r\n",
                token("c")
            )
        );
        for status in ["204 No Content", "304 Not Modified", "103 Early Hints"] {
            let responses =
                format!("HTTP/1.1 {status}\r\n\r\nHTTP/1.1 200 OK\r\nSet-Cookie: s\r\n\r\n");
            assert_eq!(
                redact(&responses).unwrap(),
                format!(
                    "HTTP/1.1 {status}\r\n\r\nHTTP/1.1 200 OK\r\nSet-Cookie: {}\r\n\r\n",
                    token("s")
                )
            );
        }
        // A 200 without a length runs to the close: what follows is body.
        assert_eq!(
            redact("HTTP/1.1 200 OK\r\n\r\nHTTP/1.1 200 OK\r\nSet-Cookie: s\r\n\r\n"),
            None
        );
    }

    #[test]
    fn a_torn_secret_header_line_is_redacted_whatever_is_left() {
        for (cut, secret) in [
            ("Authorization: Bearer ab", "Bearer ab"),
            ("Authorization: Bearer ab\r", "Bearer ab"),
            ("authorization:Bearer ", "Bearer "),
        ] {
            assert_eq!(
                redact(&format!("GET / HTTP/1.1\r\nHost: x\r\n{cut}")).unwrap(),
                format!(
                    "GET / HTTP/1.1\r\nHost: x\r\n{}{}{}",
                    &cut[..cut.find(secret).unwrap()],
                    token(secret),
                    if cut.ends_with('\r') { "\r" } else { "" }
                )
            );
        }
        // Nothing of the value yet, or not a secret header: as is.
        assert_eq!(redact("GET / HTTP/1.1\r\nAuthorization: "), None);
        assert_eq!(redact("GET / HTTP/1.1\r\nAuthoriz"), None);
        assert_eq!(redact("GET / HTTP/1.1\r\nHost: x"), None);
    }

    fn redact_with(spec: &str, payload: &str) -> Option<String> {
        let rules = crate::Rules::parse(spec).unwrap().unwrap();
        crate::Redactor::new(rules, crate::Key { k0: 1, k1: 2 })
            .redact(payload.as_bytes())
            .map(|bytes| String::from_utf8(bytes).unwrap())
    }

    #[test]
    fn regexes_apply_to_header_values_and_bodies_with_their_length_fixed() {
        let spec = "regex:sk_[a-z0-9]+";
        let body = r#"{"key":"sk_abc","password":"pw"}"#;
        let request = format!(
            "POST /k?sk_url HTTP/1.1\r\nX-Key: a sk_hdr b\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let new_body = format!(
            r#"{{"key":"{}","password":"{}"}}"#,
            token("sk_abc"),
            token("pw")
        );
        assert_eq!(
            redact_with(spec, &request).unwrap(),
            format!(
                "POST /k?sk_url HTTP/1.1\r\nX-Key: a {} b\r\nContent-Length: {}\r\n\r\n{new_body}",
                token("sk_hdr"),
                new_body.len()
            )
        );
        // A body up to the close, or cut: no length to fix.
        assert_eq!(
            redact_with(spec, "HTTP/1.1 200 OK\r\n\r\nkey=sk_1").unwrap(),
            format!("HTTP/1.1 200 OK\r\n\r\nkey={}", token("sk_1"))
        );
        assert_eq!(
            redact_with(spec, "PUT / HTTP/1.1\r\nContent-Length: 99\r\n\r\nsk_2").unwrap(),
            format!(
                "PUT / HTTP/1.1\r\nContent-Length: 99\r\n\r\n{}",
                token("sk_2")
            )
        );
        // Framing headers are never regex-redacted.
        assert_eq!(
            redact_with(
                "regex:\\d+|chunked",
                "HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\n"
            ),
            None
        );
        // A chunked body is not looked into; the default rules miss it all.
        let chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nsk_3\r\n";
        assert_eq!(redact_with(spec, chunked), None);
        assert_eq!(redact("HTTP/1.1 200 OK\r\nX-Key: sk_hdr\r\n\r\n"), None);
        let once = redact_with(spec, &request).unwrap();
        assert_eq!(redact_with(spec, &once), None);
    }

    #[test]
    fn redacting_twice_changes_nothing() {
        let once = redact("GET / HTTP/1.1\r\nCookie: c\r\n\r\n").unwrap();
        assert_eq!(redact(&once), None);
    }
}
