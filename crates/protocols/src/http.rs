//! HTTP/1.x: framing requests and responses, the canonical form of a
//! request for matching, connection close and error replies.
//!
//! Framing (RFC 9112 §6.3): a request body is delimited by
//! `Transfer-Encoding: chunked`, else by `Content-Length`, else absent (a
//! request never runs to connection close). Responses to HEAD, 1xx
//! (interim, each framed on its own), 204 and 304 have no body; otherwise
//! the body is chunked or `Content-Length` long, and a body read until the
//! connection closes (no length, or a transfer coding other than chunked
//! last) cannot be framed: `Unknown`. Heads longer than 1 MiB, malformed
//! heads and conflicting lengths are `Unknown` too.

use crate::parse::{
    Step, line_end, parse_decimal, printable, step, trim_line_ending, trim_whitespace,
};
use crate::{Completeness, NormalizeOptions, Normalized, Protocol, Side};

/// The HTTP/1.x protocol.
pub struct Http;

/// A head (request line or status line plus headers) longer than this is
/// not treated as HTTP: real heads are a few KiB, servers reject past 8-64 KiB.
const MAX_HEAD_BYTES: usize = 1 << 20;
/// Longest method token accepted; standard methods are at most 7 bytes, this
/// leaves room for WebDAV and custom ones.
const MAX_METHOD_BYTES: usize = 32;
/// A chunk-size line (hex size plus extensions) longer than this is malformed.
const MAX_CHUNK_LINE_BYTES: usize = 4096;

impl Protocol for Http {
    fn name(&self) -> &'static str {
        "http"
    }

    /// A valid (possibly partial) HTTP/1.x request line.
    fn detect_request(&self, bytes: &[u8]) -> bool {
        !bytes.is_empty() && !matches!(request_line(bytes), Step::Invalid)
    }

    fn frame_request(&self, bytes: &[u8]) -> Completeness {
        frame_request(bytes)
    }

    fn frame_response(&self, request: &[u8], bytes: &[u8]) -> Completeness {
        frame_response(bytes, is_head_request(request))
    }

    fn normalize(&self, request: &[u8], options: &NormalizeOptions) -> Option<Normalized> {
        normalize(request, options.volatile_headers)
    }

    /// An HTTP exchange that says `Connection: close`, an HTTP/1.0 response
    /// without keep-alive, or a body delimited by the end of the connection.
    fn closes_after(&self, request: &[u8], response: &[u8]) -> bool {
        if !response.starts_with(b"HTTP/1.") {
            return false;
        }
        let says_close = |message: &[u8]| {
            header(message, b"connection").is_some_and(|v| v.eq_ignore_ascii_case(b"close"))
        };
        if says_close(request) || says_close(response) {
            return true;
        }
        let keep_alive =
            header(response, b"connection").is_some_and(|v| v.eq_ignore_ascii_case(b"keep-alive"));
        if response.starts_with(b"HTTP/1.0") && !keep_alive {
            return true;
        }
        !matches!(
            frame_response(response, is_head_request(request)),
            Completeness::Complete(_)
        )
    }

    /// `502 Bad Gateway` with `message` as a plain-text body; the
    /// connection closes after it.
    fn error_reply(&self, _request: &[u8], message: &str) -> Option<Vec<u8>> {
        let reply = format!(
            "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{message}",
            message.len()
        );
        Some(reply.into_bytes())
    }

    /// The start line and header lines (line endings dropped), an empty
    /// line, then the body (de-chunked) as printable text. A head still
    /// incomplete is shown as it is. `None` unless the bytes start with a
    /// request line (`Side::Request`) or status line (`Side::Response`).
    fn render(&self, bytes: &[u8], side: Side) -> Option<String> {
        let start = match side {
            Side::Request => request_line(bytes),
            Side::Response => status_line(bytes),
        };
        let Step::Done(start_len) = start else {
            return None;
        };
        let Step::Done(head) = http_head(bytes, start_len) else {
            return Some(printable(bytes));
        };
        let mut out = printable(head.start_line);
        for (name, value) in &head.headers {
            out.push('\n');
            if name.is_empty() {
                // A folded continuation line.
                out.push_str("  ");
            } else {
                out.push_str(&printable(name));
                out.push_str(": ");
            }
            out.push_str(&printable(value));
        }
        out.push_str("\n\n");
        let body = bytes.get(head.len..).unwrap_or_default();
        match is_chunked(&head)
            .then(|| dechunk(bytes, head.len))
            .flatten()
        {
            Some((data, end)) => {
                out.push_str(&printable(&data));
                out.push_str(&printable(bytes.get(end..).unwrap_or_default()));
            }
            None => out.push_str(&printable(body)),
        }
        Some(out)
    }
}

/// Whether `request` is a HEAD request, whose response has no body.
pub fn is_head_request(request: &[u8]) -> bool {
    request.starts_with(b"HEAD ")
}

/// A parsed HTTP/1.x head.
#[derive(Debug)]
pub struct Head<'a> {
    /// The request or status line, without its line ending.
    pub start_line: &'a [u8],
    /// Header fields in order, name and value with surrounding whitespace
    /// trimmed; obsolete line folding is not merged (continuation lines are
    /// returned as their own entry with an empty name).
    pub headers: Vec<(&'a [u8], &'a [u8])>,
    /// Length of the head including the empty line that ends it.
    pub len: usize,
}

impl<'a> Head<'a> {
    /// The value of the first header field called `name` (any case).
    pub fn header(&self, name: &[u8]) -> Option<&'a [u8]> {
        header_values(self, name).next()
    }
}

/// The complete, valid HTTP/1.x request head at the start of `bytes`.
pub fn request_head(bytes: &[u8]) -> Option<Head<'_>> {
    parse_request_head(bytes).done()
}

/// The complete, valid HTTP/1.x response head at the start of `bytes`.
pub fn response_head(bytes: &[u8]) -> Option<Head<'_>> {
    let start_len = status_line(bytes).done()?;
    http_head(bytes, start_len).done()
}

/// The value of the first header `name` (any case) in the head of an HTTP
/// message, found leniently: the head runs to the first empty line (or the
/// end), and a line without a colon is skipped.
pub fn header<'a>(message: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let head_end = message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(message.len());
    message[..head_end]
        .split(|&b| b == b'\n')
        .skip(1)
        .find_map(|line| {
            let colon = line.iter().position(|&b| b == b':')?;
            let (field, value) = line.split_at(colon);
            field
                .eq_ignore_ascii_case(name)
                .then(|| value[1..].trim_ascii())
        })
}

/// `bytes` is `literal`, or a prefix of it when `bytes` is shorter.
fn matches_literal(bytes: &[u8], literal: &[u8]) -> Step<()> {
    let shared = bytes.len().min(literal.len());
    if bytes[..shared] != literal[..shared] {
        Step::Invalid
    } else if shared < literal.len() {
        Step::NeedMore
    } else {
        Step::Done(())
    }
}

/// RFC 9110 `tchar`: the characters allowed in a header name.
fn is_token_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

fn is_method_byte(byte: u8) -> bool {
    byte.is_ascii_uppercase() || byte == b'-' || byte == b'_'
}

/// Checks `HTTP/1.<digit>` at `at`; returns the position after it.
fn http_version(bytes: &[u8], at: usize) -> Step<usize> {
    let rest = bytes.get(at..).unwrap_or_default();
    step!(matches_literal(rest, b"HTTP/1."));
    match rest.get(7) {
        None => Step::NeedMore,
        Some(digit) if digit.is_ascii_digit() => Step::Done(at + 8),
        Some(_) => Step::Invalid,
    }
}

/// Checks that a line ending (`\r\n` or `\n`) is at `at`; returns the
/// position after it.
fn line_ending_at(bytes: &[u8], at: usize) -> Step<usize> {
    match bytes.get(at..).unwrap_or_default() {
        [] | [b'\r'] => Step::NeedMore,
        [b'\r', b'\n', ..] => Step::Done(at + 2),
        [b'\n', ..] => Step::Done(at + 1),
        _ => Step::Invalid,
    }
}

/// Validates an HTTP/1.x request line; returns its length including the
/// line ending.
fn request_line(bytes: &[u8]) -> Step<usize> {
    let method_len = bytes
        .iter()
        .take_while(|&&byte| is_method_byte(byte))
        .count();
    if method_len > MAX_METHOD_BYTES {
        return Step::Invalid;
    }
    match bytes.get(method_len) {
        None => return Step::NeedMore,
        Some(b' ') if method_len > 0 => {}
        Some(_) => return Step::Invalid,
    }
    let target_start = method_len + 1;
    // The target: visible characters (and obs-text) up to the next space.
    let target_len = bytes[target_start..]
        .iter()
        .take_while(|&&byte| byte > b' ' && byte != 0x7f)
        .count();
    let after_target = target_start + target_len;
    if after_target > MAX_HEAD_BYTES {
        return Step::Invalid;
    }
    match bytes.get(after_target) {
        None => return Step::NeedMore,
        Some(b' ') if target_len > 0 => {}
        Some(_) => return Step::Invalid,
    }
    let after_version = step!(http_version(bytes, after_target + 1));
    line_ending_at(bytes, after_version)
}

/// Validates an HTTP/1.x status line; returns its length including the
/// line ending.
fn status_line(bytes: &[u8]) -> Step<usize> {
    let after_version = step!(http_version(bytes, 0));
    match bytes.get(after_version) {
        None => return Step::NeedMore,
        Some(b' ') => {}
        Some(_) => return Step::Invalid,
    }
    let code_start = after_version + 1;
    for at in code_start..code_start + 3 {
        match bytes.get(at) {
            None => return Step::NeedMore,
            Some(digit) if digit.is_ascii_digit() => {}
            Some(_) => return Step::Invalid,
        }
    }
    let after_code = code_start + 3;
    match bytes.get(after_code) {
        None => Step::NeedMore,
        // The reason phrase is free text (some servers omit it).
        Some(b' ') => match line_end(bytes, after_code) {
            Some(end) => Step::Done(end),
            None if bytes.len() > MAX_HEAD_BYTES => Step::Invalid,
            None => Step::NeedMore,
        },
        Some(_) => line_ending_at(bytes, after_code),
    }
}

/// Parses the header lines that follow a start line of `start_len` bytes.
fn http_head(bytes: &[u8], start_len: usize) -> Step<Head<'_>> {
    let mut headers = Vec::new();
    let mut at = start_len;
    loop {
        let Some(end) = line_end(bytes, at) else {
            return if bytes.len() > MAX_HEAD_BYTES {
                Step::Invalid
            } else {
                Step::NeedMore
            };
        };
        if end > MAX_HEAD_BYTES {
            return Step::Invalid;
        }
        let line = trim_line_ending(&bytes[at..end]);
        at = end;
        if line.is_empty() {
            return Step::Done(Head {
                start_line: trim_line_ending(&bytes[..start_len]),
                headers,
                len: end,
            });
        }
        if let [b' ' | b'\t', ..] = line {
            // Obsolete line folding: a continuation of the previous value.
            if headers.is_empty() {
                return Step::Invalid;
            }
            headers.push((&line[..0], trim_whitespace(line)));
            continue;
        }
        let Some(colon) = line.iter().position(|&byte| byte == b':') else {
            return Step::Invalid;
        };
        let name = &line[..colon];
        if name.is_empty() || !name.iter().all(|&byte| is_token_byte(byte)) {
            return Step::Invalid;
        }
        headers.push((name, trim_whitespace(&line[colon + 1..])));
    }
}

/// Parses a complete HTTP/1.x request head; `NeedMore` while it is partial.
fn parse_request_head(bytes: &[u8]) -> Step<Head<'_>> {
    let start_len = step!(request_line(bytes));
    http_head(bytes, start_len)
}

/// How the body after a head is delimited.
enum BodyLength {
    Fixed(usize),
    Chunked,
    /// A transfer coding other than chunked is last: the body runs until
    /// the connection closes.
    UntilClose,
    /// Neither `Transfer-Encoding` nor `Content-Length`: a request has no
    /// body, a response's runs until the connection closes.
    Unspecified,
}

fn header_values<'h, 'a: 'h>(
    head: &'h Head<'a>,
    name: &'h [u8],
) -> impl Iterator<Item = &'a [u8]> + 'h {
    head.headers
        .iter()
        .filter(move |(header, _)| header.eq_ignore_ascii_case(name))
        .map(|(_, value)| *value)
}

/// Body length from `Transfer-Encoding` and `Content-Length` (RFC 9112 §6.3);
/// `None` for conflicting or malformed lengths.
fn body_length(head: &Head<'_>) -> Option<BodyLength> {
    let mut last_coding: Option<&[u8]> = None;
    for value in header_values(head, b"transfer-encoding") {
        for coding in value.split(|&byte| byte == b',') {
            let coding = trim_whitespace(coding);
            if !coding.is_empty() {
                last_coding = Some(coding);
            }
        }
    }
    if let Some(coding) = last_coding {
        // Transfer-Encoding overrides Content-Length.
        return Some(if coding.eq_ignore_ascii_case(b"chunked") {
            BodyLength::Chunked
        } else {
            BodyLength::UntilClose
        });
    }
    let mut length: Option<usize> = None;
    for value in header_values(head, b"content-length") {
        for item in value.split(|&byte| byte == b',') {
            let parsed = parse_decimal(trim_whitespace(item))?;
            match length {
                Some(previous) if previous != parsed => return None,
                _ => length = Some(parsed),
            }
        }
    }
    Some(length.map_or(BodyLength::Unspecified, BodyLength::Fixed))
}

/// Whether the body after `head` is chunked (the last transfer coding).
pub fn is_chunked(head: &Head<'_>) -> bool {
    matches!(body_length(head), Some(BodyLength::Chunked))
}

/// Parses one chunk-size line at `at`; returns the chunk size and the
/// position after the line.
fn chunk_size_line(bytes: &[u8], at: usize) -> Step<(usize, usize)> {
    let Some(end) = line_end(bytes, at) else {
        return if bytes.len().saturating_sub(at) > MAX_CHUNK_LINE_BYTES {
            Step::Invalid
        } else {
            Step::NeedMore
        };
    };
    if end - at > MAX_CHUNK_LINE_BYTES {
        return Step::Invalid;
    }
    let line = trim_line_ending(&bytes[at..end]);
    // Chunk extensions (`;name=value`) are ignored.
    let size_part = line.split(|&byte| byte == b';').next().unwrap_or_default();
    let size_part = trim_whitespace(size_part);
    if size_part.is_empty() || size_part.len() > 15 || !size_part.iter().all(u8::is_ascii_hexdigit)
    {
        return Step::Invalid;
    }
    let size = size_part.iter().fold(0u64, |total, &digit| {
        // At most 15 hex digits: cannot overflow.
        (total << 4) | u64::from((digit as char).to_digit(16).unwrap_or(0))
    });
    let Ok(size) = usize::try_from(size) else {
        return Step::Invalid;
    };
    Step::Done((size, end))
}

/// Walks a chunked body starting at `start`, handing every chunk's data to
/// `on_data`; returns the position after the last-chunk and trailers.
fn walk_chunked<'a>(
    bytes: &'a [u8],
    start: usize,
    mut on_data: impl FnMut(&'a [u8]),
) -> Step<usize> {
    let mut at = start;
    loop {
        let (size, data_start) = step!(chunk_size_line(bytes, at));
        if size == 0 {
            // Trailer fields, then the empty line.
            let mut trailer_at = data_start;
            loop {
                let Some(end) = line_end(bytes, trailer_at) else {
                    return if bytes.len() - trailer_at > MAX_HEAD_BYTES {
                        Step::Invalid
                    } else {
                        Step::NeedMore
                    };
                };
                let empty = trim_line_ending(&bytes[trailer_at..end]).is_empty();
                trailer_at = end;
                if empty {
                    return Step::Done(trailer_at);
                }
            }
        }
        let Some(data_end) = data_start.checked_add(size) else {
            return Step::Invalid;
        };
        let Some(data) = bytes.get(data_start..data_end) else {
            return Step::NeedMore;
        };
        on_data(data);
        at = step!(line_ending_at(bytes, data_end));
    }
}

/// The data of a complete, well-formed chunked body starting at `start`,
/// and the position after it (after the trailers).
pub fn dechunk(bytes: &[u8], start: usize) -> Option<(Vec<u8>, usize)> {
    let mut data = Vec::new();
    let end = walk_chunked(bytes, start, |chunk| data.extend_from_slice(chunk)).done()?;
    Some((data, end))
}

fn message_end(bytes: &[u8], head_len: usize, length: BodyLength) -> Completeness {
    match length {
        BodyLength::Fixed(body_len) => match head_len.checked_add(body_len) {
            Some(end) if end <= bytes.len() => Completeness::Complete(end),
            Some(_) => Completeness::NeedMore,
            None => Completeness::Unknown,
        },
        BodyLength::Chunked => walk_chunked(bytes, head_len, |_| {}).into_completeness(),
        BodyLength::UntilClose | BodyLength::Unspecified => Completeness::Unknown,
    }
}

/// Whether the first HTTP/1.x request in `bytes` is complete.
///
/// The body is delimited by `Transfer-Encoding: chunked`, else by
/// `Content-Length`, else absent (a request never runs to connection close).
/// `Unknown` when the bytes are not an HTTP/1.x request, the head is
/// malformed or longer than 1 MiB, the lengths conflict, or a transfer coding
/// other than chunked is last (which cannot be delimited).
pub fn frame_request(bytes: &[u8]) -> Completeness {
    let head = match parse_request_head(bytes) {
        Step::Done(head) => head,
        Step::NeedMore => return Completeness::NeedMore,
        Step::Invalid => return Completeness::Unknown,
    };
    match body_length(&head) {
        // A request never runs to connection close: no length, no body.
        Some(BodyLength::Unspecified) => Completeness::Complete(head.len),
        Some(length) => message_end(bytes, head.len, length),
        None => Completeness::Unknown,
    }
}

/// Whether the first HTTP/1.x response in `bytes` is complete.
///
/// Responses to HEAD (`head_request`), 1xx (interim responses, each
/// reported on its own), 204 and 304 have no body. Otherwise the body is
/// chunked or `Content-Length` long; a body read until the connection closes
/// (no length, or a transfer coding other than chunked) is `Unknown`.
pub fn frame_response(bytes: &[u8], head_request: bool) -> Completeness {
    let start_len = match status_line(bytes) {
        Step::Done(len) => len,
        Step::NeedMore => return Completeness::NeedMore,
        Step::Invalid => return Completeness::Unknown,
    };
    let head = match http_head(bytes, start_len) {
        Step::Done(head) => head,
        Step::NeedMore => return Completeness::NeedMore,
        Step::Invalid => return Completeness::Unknown,
    };
    // "HTTP/1.x " is 9 bytes, the status code the next 3 (checked above).
    let status = head
        .start_line
        .get(9..12)
        .and_then(parse_decimal)
        .unwrap_or(0);
    if head_request || (100..200).contains(&status) || status == 204 || status == 304 {
        return Completeness::Complete(head.len);
    }
    match body_length(&head) {
        Some(length) => message_end(bytes, head.len, length),
        None => Completeness::Unknown,
    }
}

/// Canonical HTTP/1.x request, for requests with a complete head:
/// - the query parameters are sorted by name (stable, so repeated names keep
///   their order);
/// - header names are lower-cased, values trimmed, folded lines joined,
///   fields sorted by name (stable);
/// - volatile headers (`volatile_headers`, lower-case names) and framing
///   headers (`content-length`, `transfer-encoding`) are dropped;
/// - a chunked body (last transfer coding `chunked`, as in framing) is
///   de-chunked.
///
/// The operation key is `http METHOD /path` (the target before `?`);
/// scoring starts after the path.
pub fn normalize(request: &[u8], volatile_headers: &[String]) -> Option<Normalized> {
    let head = request_head(request)?;
    let mut parts = head.start_line.splitn(3, |&byte| byte == b' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);

    let chunked = is_chunked(&head);
    let mut fields: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(head.headers.len());
    for &(name, value) in &head.headers {
        if name.is_empty() {
            // A folded continuation line belongs to the previous field.
            if let Some((_, previous)) = fields.last_mut() {
                previous.push(b' ');
                previous.extend_from_slice(value);
            }
            continue;
        }
        fields.push((name.to_ascii_lowercase(), value.to_vec()));
    }
    fields.retain(|(name, _)| {
        name != b"content-length"
            && name != b"transfer-encoding"
            && !volatile_headers
                .iter()
                .any(|volatile| volatile.as_bytes().eq_ignore_ascii_case(name))
    });
    fields.sort_by(|(left, _), (right, _)| left.cmp(right));

    let mut bytes = Vec::with_capacity(request.len());
    bytes.extend_from_slice(method);
    bytes.push(b' ');
    let path = push_normalized_target(&mut bytes, target);
    let scored_from = method.len() + 1 + path.len();
    bytes.push(b' ');
    bytes.extend_from_slice(version);
    bytes.extend_from_slice(b"\r\n");
    let header_start = bytes.len();
    for (name, value) in &fields {
        bytes.extend_from_slice(name);
        bytes.extend_from_slice(b": ");
        bytes.extend_from_slice(value);
        bytes.extend_from_slice(b"\r\n");
    }
    let header_range = header_start..bytes.len();
    bytes.extend_from_slice(b"\r\n");
    let body_start = head.len;
    match chunked.then(|| dechunk(request, body_start)).flatten() {
        Some((data, end)) => {
            bytes.extend_from_slice(&data);
            bytes.extend_from_slice(request.get(end..).unwrap_or_default());
        }
        None => bytes.extend_from_slice(request.get(body_start..).unwrap_or_default()),
    }

    let mut key = Vec::with_capacity(6 + method.len() + path.len());
    key.extend_from_slice(b"http ");
    key.extend_from_slice(method);
    key.push(b' ');
    key.extend_from_slice(path);
    Some(Normalized {
        bytes,
        header_range,
        key,
        scored_from,
    })
}

/// Appends `target` with its query parameters sorted by name; returns the
/// path (the part before `?`).
fn push_normalized_target<'a>(out: &mut Vec<u8>, target: &'a [u8]) -> &'a [u8] {
    let Some(question) = target.iter().position(|&byte| byte == b'?') else {
        out.extend_from_slice(target);
        return target;
    };
    let (path, query) = (&target[..question], &target[question + 1..]);
    let mut parameters: Vec<&[u8]> = query.split(|&byte| byte == b'&').collect();
    parameters.sort_by_key(|parameter| {
        parameter
            .split(|&byte| byte == b'=')
            .next()
            .unwrap_or_default()
    });
    out.extend_from_slice(path);
    out.push(b'?');
    for (position, parameter) in parameters.iter().enumerate() {
        if position > 0 {
            out.push(b'&');
        }
        out.extend_from_slice(parameter);
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Completeness::{Complete, NeedMore, Unknown};
    use crate::parse::testing::{Frame, assert_frames, check_frame, fuzz_inputs};

    // Requests ----------------------------------------------------------------

    #[test]
    fn request_without_body() {
        assert_frames(
            frame_request,
            b"GET /items/17?x=1 HTTP/1.1\r\nHost: api\r\nAccept: */*\r\n\r\n",
        );
        assert_frames(frame_request, b"DELETE /x HTTP/1.0\r\n\r\n");
        // Bare LF line endings are tolerated.
        assert_frames(frame_request, b"GET / HTTP/1.1\nHost: api\n\n");
    }

    #[test]
    fn request_with_content_length() {
        assert_frames(
            frame_request,
            b"POST /orders HTTP/1.1\r\nHost: api\r\ncontent-length: 11\r\n\r\n{\"id\": 17}\n",
        );
        assert_frames(
            frame_request,
            b"PUT /x HTTP/1.1\r\nContent-Length: 3, 3\r\nContent-Length: 3\r\n\r\nabc",
        );
        assert_frames(
            frame_request,
            b"POST /empty HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        );
    }

    #[test]
    fn chunked_request() {
        let request = b"POST /upload HTTP/1.1\r\nHost: files\r\nTransfer-Encoding: gzip, Chunked\r\nContent-Length: 999\r\n\r\n\
                        5;name=value\r\nhello\r\n6\r\n world\r\nA\r\n0123456789\r\n0\r\nChecksum: abc\r\n\r\n";
        assert_frames(frame_request, request);
        let head = request_head(request).expect("complete head");
        assert!(is_chunked(&head));
        assert_eq!(head.header(b"HOST"), Some(&b"files"[..]));
        assert_eq!(
            dechunk(request, head.len),
            Some((b"hello world0123456789".to_vec(), request.len()))
        );
        assert_eq!(dechunk(&request[..request.len() - 1], head.len), None);
    }

    #[test]
    fn pipelined_requests() {
        let first = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        let second = b"POST /b HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi".to_vec();
        let both = [first.clone(), second.clone()].concat();
        assert_eq!(frame_request(&both), Complete(first.len()));
        assert_eq!(frame_request(&both[first.len()..]), Complete(second.len()));
    }

    #[test]
    fn not_http_requests() {
        let cases: [&[u8]; 16] = [
            b"get / HTTP/1.1\r\n\r\n",             // lower-case method
            b"GET / HTTP/2.0\r\n\r\n",             // not 1.x
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",   // h2 preface
            b"GET /\r\n",                          // HTTP/0.9
            b"GET  / HTTP/1.1\r\n\r\n",            // empty target
            b"*2\r\n$3\r\nGET\r\n",                // RESP
            b"\x16\x03\x01\x02\x00",               // TLS
            b"GET / HTTP/1.1\r\nHost x\r\n\r\n",   // no colon
            b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", // space in name
            b"GET / HTTP/1.1\r\n folded\r\n\r\n",  // fold without field
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", // conflicting
            b"POST / HTTP/1.1\r\nContent-Length: -5\r\n\r\n", // negative
            b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n", // overflow
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\nxx", // undelimitable
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", // bad chunk size
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n", // chunk overrun
        ];
        for case in cases {
            assert_eq!(
                frame_request(case),
                Unknown,
                "{:?}",
                String::from_utf8_lossy(case)
            );
        }
        let long_method = [b'A'; 40];
        assert_eq!(frame_request(&long_method), Unknown);
    }

    #[test]
    fn oversized_head_is_not_http() {
        let mut request = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
        request.resize(MAX_HEAD_BYTES + 10, b'a');
        assert_eq!(frame_request(&request), Unknown);
        request.truncate(1000);
        assert_eq!(frame_request(&request), NeedMore);
    }

    #[test]
    fn detects_request_lines() {
        let http = Http;
        assert!(http.detect_request(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(http.detect_request(b"GET /"), "a beginning is enough");
        assert!(http.detect_request(b"POST"));
        assert!(!http.detect_request(b""));
        assert!(!http.detect_request(b"*1\r\n$4\r\nPING\r\n"));
        assert!(!http.detect_request(b"get / HTTP/1.1\r\n"));
        assert!(!http.detect_request(b"\x05\x00\x00\x00\x03SELECT"));
        assert!(!http.detect_request(b"HTTP/1.1 200 OK\r\n\r\n"));
    }

    // Responses ---------------------------------------------------------------

    #[test]
    fn response_with_length_or_chunks() {
        let frame = |bytes: &[u8]| frame_response(bytes, false);
        assert_frames(
            frame,
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello",
        );
        assert_frames(
            frame,
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        );
        assert_frames(frame, b"HTTP/1.0 404\r\nContent-Length: 0\r\n\r\n");
    }

    #[test]
    fn responses_without_body() {
        for status in [
            "100 Continue",
            "101 Switching Protocols",
            "204 No Content",
            "304 Not Modified",
        ] {
            let response = format!("HTTP/1.1 {status}\r\nContent-Length: 10\r\n\r\n");
            assert_frames(|bytes| frame_response(bytes, false), response.as_bytes());
        }
        let to_head = b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n";
        assert_frames(|bytes| frame_response(bytes, true), to_head);
        assert_eq!(frame_response(to_head, false), NeedMore);
        // Through the trait, HEAD is told from the request.
        assert_eq!(
            Http.frame_response(b"HEAD / HTTP/1.1\r\n\r\n", to_head),
            Complete(to_head.len())
        );
        assert_eq!(
            Http.frame_response(b"GET / HTTP/1.1\r\n\r\n", to_head),
            NeedMore
        );
    }

    #[test]
    fn response_until_close_is_unknown() {
        assert_eq!(
            frame_response(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n<html>",
                false
            ),
            Unknown
        );
        assert_eq!(
            frame_response(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nxx",
                false
            ),
            Unknown
        );
        // Until the head is complete, it may still get a length.
        assert_eq!(
            frame_response(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n", false),
            NeedMore
        );
    }

    #[test]
    fn pipelined_and_interim_responses() {
        let continue_then_ok =
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        assert_eq!(frame_response(continue_then_ok, false), Complete(25));
        assert_eq!(
            frame_response(&continue_then_ok[25..], false),
            Complete(continue_then_ok.len() - 25)
        );
    }

    #[test]
    fn not_http_responses() {
        let cases: [&[u8]; 6] = [
            b"HTTP/2 200\r\n\r\n",
            b"HTTP/1.1 20 OK\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"http/1.1 200 OK\r\n\r\n",
            b"+OK\r\n",
            b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
        ];
        for case in cases {
            assert_eq!(
                frame_response(case, false),
                Unknown,
                "{:?}",
                String::from_utf8_lossy(case)
            );
        }
        assert!(response_head(b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n").is_none());
        let head = response_head(b"HTTP/1.1 200 OK\r\nA: b\r\n\r\nbody").expect("head");
        assert_eq!((head.start_line, head.len), (&b"HTTP/1.1 200 OK"[..], 25));
    }

    // Normalisation -----------------------------------------------------------

    fn normalized(request: &[u8], volatile: &[&str]) -> Normalized {
        let volatile: Vec<String> = volatile.iter().map(|name| name.to_string()).collect();
        let options = NormalizeOptions {
            volatile_headers: &volatile,
        };
        Http.normalize(request, &options).expect("an HTTP request")
    }

    #[test]
    fn canonical_form() {
        let request = b"GET /a?b=2&a=1 HTTP/1.1\r\nHost:  x \r\nX-Long: one\r\n  two\r\nDate: now\r\nAccept: */*\r\n\r\n";
        let normalized = normalized(request, &["date"]);
        assert_eq!(
            String::from_utf8_lossy(&normalized.bytes),
            "GET /a?a=1&b=2 HTTP/1.1\r\naccept: */*\r\nhost: x\r\nx-long: one two\r\n\r\n"
        );
        assert_eq!(
            &normalized.bytes[normalized.header_range.clone()],
            b"accept: */*\r\nhost: x\r\nx-long: one two\r\n"
        );
        assert_eq!(normalized.key, b"http GET /a");
        assert_eq!(normalized.scored_from, b"GET /a".len());
    }

    #[test]
    fn header_order_case_and_volatile_headers_do_not_matter() {
        let recorded =
            b"POST /api/orders HTTP/1.1\r\nHost: api\r\nDate: Mon, 01 Jan 2024 10:00:00 GMT\r\n\
                    Content-Type: application/json\r\nX-Request-Id: 1111\r\n\
                    Content-Length: 9\r\n\r\n{\"id\": 7}";
        let replayed = b"POST /api/orders HTTP/1.1\r\ncontent-type:   application/json\r\n\
                    Content-Length: 9\r\nx-request-id: 2222\r\nHost: api\r\ndate: Tue, 02 Jan 2024 11:11:11 GMT\r\n\r\n{\"id\": 7}";
        let volatile = ["date", "x-request-id"];
        assert_eq!(
            normalized(recorded, &volatile),
            normalized(replayed, &volatile)
        );
        assert_ne!(normalized(recorded, &[]), normalized(replayed, &[]));
    }

    #[test]
    fn chunked_body_normalizes_like_its_content_length_form() {
        let recorded =
            b"POST /upload HTTP/1.1\r\nHost: files\r\nContent-Length: 11\r\n\r\nhello world";
        let replayed = b"POST /upload HTTP/1.1\r\nHost: files\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
        assert_eq!(normalized(recorded, &[]), normalized(replayed, &[]));
        assert_eq!(
            normalized(replayed, &[]).bytes,
            b"POST /upload HTTP/1.1\r\nhost: files\r\n\r\nhello world"
        );
    }

    #[test]
    fn query_parameter_order_does_not_matter() {
        let first = b"GET /search?q=shoes&page=2&sort=price HTTP/1.1\r\n\r\n";
        let second = b"GET /search?sort=price&q=shoes&page=2 HTTP/1.1\r\n\r\n";
        assert_eq!(normalized(first, &[]), normalized(second, &[]));
        assert_eq!(normalized(first, &[]).key, b"http GET /search");
    }

    #[test]
    fn partial_heads_are_not_normalized() {
        let options = NormalizeOptions::default();
        assert_eq!(
            Http.normalize(b"GET /users/7 HTTP/1.1\r\nHost: a\r\n", &options),
            None
        );
        assert_eq!(Http.normalize(b"*1\r\n$4\r\nPING\r\n", &options), None);
    }

    // Connection close, errors, rendering -------------------------------------

    #[test]
    fn connections_close_when_the_recording_says_so() {
        let closes = |request: &[u8], response: &[u8]| Http.closes_after(request, response);
        let get = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        assert!(!closes(get, ok));
        assert!(closes(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", ok));
        assert!(closes(
            get,
            b"HTTP/1.1 200 OK\r\nConnection: Close\r\nContent-Length: 2\r\n\r\nok"
        ));
        assert!(closes(
            get,
            b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"
        ));
        assert!(!closes(
            get,
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok"
        ));
        assert!(closes(get, b"HTTP/1.1 200 OK\r\n\r\nbody until close"));
        // A HEAD response has no body, whatever its Content-Length says.
        assert!(!closes(
            b"HEAD / HTTP/1.1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n"
        ));
        assert!(
            !closes(b"*1\r\n$4\r\nPING\r\n", b"+PONG\r\n"),
            "other protocols stay open"
        );
    }

    #[test]
    fn headers_are_found_case_insensitively_in_the_head_only() {
        let message = b"HTTP/1.1 200 OK\r\nCONNECTION:  close \r\n\r\nConnection: keep-alive";
        assert_eq!(header(message, b"connection"), Some(&b"close"[..]));
        assert_eq!(header(message, b"date"), None);
    }

    #[test]
    fn error_reply_is_a_502_that_closes() {
        let reply = Http
            .error_reply(b"GET / HTTP/1.1\r\n\r\n", "koala: no match\n")
            .expect("HTTP has error replies");
        assert_eq!(
            reply,
            b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\nContent-Length: 16\r\nConnection: close\r\n\r\nkoala: no match\n"
        );
        assert_eq!(frame_response(&reply, false), Complete(reply.len()));
        assert!(Http.closes_after(b"GET / HTTP/1.1\r\n\r\n", &reply));
    }

    #[test]
    fn renders_start_line_headers_and_body() {
        let request = b"POST /a HTTP/1.1\r\nHost: x\r\nX-Long: one\r\n two\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        assert_eq!(
            Http.render(request, Side::Request).as_deref(),
            Some(
                "POST /a HTTP/1.1\nHost: x\nX-Long: one\n  two\nTransfer-Encoding: chunked\n\nabc"
            )
        );
        let response = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n\x00\x01ok";
        assert_eq!(
            Http.render(response, Side::Response).as_deref(),
            Some("HTTP/1.1 200 OK\nContent-Length: 4\n\n\\x00\\x01ok")
        );
        assert_eq!(
            Http.render(b"GET / HTTP/1.1\r\nHost:", Side::Request)
                .as_deref(),
            Some("GET / HTTP/1.1\\r\nHost:")
        );
        assert_eq!(Http.render(response, Side::Request), None);
        assert_eq!(Http.render(b"+OK\r\n", Side::Response), None);
    }

    // Robustness --------------------------------------------------------------

    #[test]
    fn random_and_mutated_input_never_panics() {
        let seeds: [&[u8]; 5] = [
            b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n\r\n",
            b"GET /a?b=1&a HTTP/1.1\r\nX: y\r\n z\r\n\r\n",
        ];
        let alphabet = b"\r\n:;, 0123456789abcdefABCDEF/?&=GETPOSHTP.\x00\xff";
        let frames: [&Frame<'_>; 3] = [
            &frame_request,
            &|bytes| frame_response(bytes, false),
            &|bytes| frame_response(bytes, true),
        ];
        let options = NormalizeOptions::default();
        fuzz_inputs(&seeds, alphabet, 20_000, |bytes, extra| {
            for frame in frames {
                check_frame(frame, bytes, extra);
            }
            let _ = Http.normalize(bytes, &options);
            let _ = Http.render(bytes, Side::Request);
            let _ = Http.render(bytes, Side::Response);
            let _ = Http.closes_after(bytes, extra);
            let _ = Http.closes_after(extra, bytes);
        });
    }
}
