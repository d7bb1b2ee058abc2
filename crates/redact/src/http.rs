//! HTTP/1.x: secret header values, and secret JSON fields in bodies of a
//! known length (`Content-Length` is rewritten to the new length).
//!
//! A payload may hold several messages (pipelined requests, a `100
//! Continue` before the response): each is redacted in turn. A body without
//! `Content-Length` (chunked, or up to the close) ends the walk: its
//! headers are redacted and the rest is kept as is.

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
            // A head cut short: its complete lines.
            redact_head(redactor, rest, at, None, &mut edits);
            break;
        };
        let head = &rest[..head_len];
        let Some(body) = content_length(head).and_then(|len| rest.get(head_len..head_len + len))
        else {
            // Chunked, up to the close, or cut: the head only.
            redact_head(redactor, head, at, None, &mut edits);
            break;
        };
        let new_body = crate::json::redact(redactor, body);
        redact_head(
            redactor,
            head,
            at,
            new_body.as_ref().map(Vec::len),
            &mut edits,
        );
        let body_at = at + head_len;
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
        let colon = line.iter().position(|&b| b == b':');
        let (Some(colon), true) = (colon, index > 0 && line.ends_with(b"\n")) else {
            continue;
        };
        let name = &line[..colon];
        let content = line.len() - if line.ends_with(b"\r\n") { 2 } else { 1 };
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
        let range = this_line + start..this_line + end;
        if let (Some(len), true) = (content_length, name.eq_ignore_ascii_case(b"content-length")) {
            edits.push((range, len.to_string().into_bytes()));
        } else if start < end && redactor.rules.is_secret_header(name) {
            let token = redactor.token(&line[start..end]);
            if token != line[start..end] {
                edits.push((range, token));
            }
        }
    }
}

/// The head's `Content-Length`, unless the body is chunked.
fn content_length(head: &[u8]) -> Option<usize> {
    let mut length = None;
    for line in head.split(|&b| b == b'\n').skip(1) {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = &line[..colon];
        let value = std::str::from_utf8(&line[colon + 1..]).ok()?.trim();
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            return None;
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            length = Some(value.parse().ok()?);
        }
    }
    length
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
        // A head cut short: complete lines only; the torn one is kept.
        assert_eq!(
            redact("GET / HTTP/1.1\r\nCookie: c\r\nAuthorization: Bea").unwrap(),
            format!(
                "GET / HTTP/1.1\r\nCookie: {}\r\nAuthorization: Bea",
                token("c")
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
    fn redacting_twice_changes_nothing() {
        let once = redact("GET / HTTP/1.1\r\nCookie: c\r\n\r\n").unwrap();
        assert_eq!(redact(&once), None);
    }
}
