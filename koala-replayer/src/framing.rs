//! Where a message ends: deciding whether the bytes received so far on a
//! connection hold a complete request (or response).
//!
//! Every function looks only at the bytes it is given, never panics, and
//! answers with a [`Completeness`]:
//!
//! - `Complete(n)`: `bytes[..n]` is one whole message; anything after it is
//!   the start of the next (pipelined) one.
//! - `NeedMore`: the bytes are a valid beginning of a message of that kind,
//!   which is not finished yet.
//! - `Unknown`: the bytes are not (or not recognisably) a message of that
//!   kind, or its end cannot be told from the bytes (an HTTP response body
//!   delimited by the connection closing). Callers fall back to another rule
//!   (see [`recorded_prefix`]) or to a silence timeout, and ask again when
//!   more bytes arrive.
//!
//! The rules are described in `docs/matching.md` ("Framing").

pub use koala_protocols::Completeness;

/// A head (request line or status line plus headers) longer than this is
/// not treated as HTTP: real heads are a few KiB, servers reject past 8-64 KiB.
const MAX_HEAD_BYTES: usize = 1 << 20;
/// Longest method token accepted; standard methods are at most 7 bytes, this
/// leaves room for WebDAV and custom ones.
const MAX_METHOD_BYTES: usize = 32;
/// A chunk-size line (hex size plus extensions) longer than this is malformed.
const MAX_CHUNK_LINE_BYTES: usize = 4096;
/// Redis refuses bulk strings longer than 512 MiB (`proto-max-bulk-len`).
const MAX_RESP_BULK_BYTES: u64 = 512 * 1024 * 1024;
/// Redis refuses aggregates with more elements than this.
const MAX_RESP_ELEMENTS: u64 = i32::MAX as u64;
/// Nesting deeper than this is treated as garbage rather than recursed into.
const MAX_RESP_DEPTH: usize = 32;
/// Redis refuses inline commands longer than 64 KiB.
const MAX_RESP_INLINE_BYTES: usize = 64 * 1024;
/// A RESP type line carrying a number is never longer than this.
const MAX_RESP_NUMBER_LINE: usize = 24;
/// A MySQL packet of this payload length is continued by the next packet.
const MYSQL_MAX_PACKET_PAYLOAD: usize = 0xFF_FFFF;

/// Progress of a parse step: a value, or why there is none.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step<T> {
    Done(T),
    NeedMore,
    Invalid,
}

/// Propagates `NeedMore` and `Invalid` out of a function returning `Step`.
macro_rules! step {
    ($expr:expr) => {
        match $expr {
            Step::Done(value) => value,
            Step::NeedMore => return Step::NeedMore,
            Step::Invalid => return Step::Invalid,
        }
    };
}

impl<T> Step<T> {
    fn map_done<U>(self, map: impl FnOnce(T) -> U) -> Step<U> {
        match self {
            Step::Done(value) => Step::Done(map(value)),
            Step::NeedMore => Step::NeedMore,
            Step::Invalid => Step::Invalid,
        }
    }
}

impl Step<usize> {
    fn into_completeness(self) -> Completeness {
        match self {
            Step::Done(len) => Completeness::Complete(len),
            Step::NeedMore => Completeness::NeedMore,
            Step::Invalid => Completeness::Unknown,
        }
    }
}

// ---------------------------------------------------------------------------
// HTTP/1.x

/// A parsed HTTP/1.x head.
#[derive(Debug)]
pub(crate) struct HttpHead<'a> {
    /// The request or status line, without its line ending.
    pub start_line: &'a [u8],
    /// Header fields in order, name and value with surrounding whitespace
    /// trimmed; obsolete line folding is not merged (continuation lines are
    /// returned as their own entry with an empty name).
    pub headers: Vec<(&'a [u8], &'a [u8])>,
    /// Length of the head including the empty line that ends it.
    pub len: usize,
}

/// Where the line starting at `start` ends (the position after its `\n`);
/// `None` while the `\n` has not arrived.
fn line_end(bytes: &[u8], start: usize) -> Option<usize> {
    let rest = bytes.get(start..)?;
    rest.iter()
        .position(|&byte| byte == b'\n')
        .map(|at| start + at + 1)
}

/// `line` without its trailing `\n` or `\r\n`.
fn trim_line_ending(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn trim_whitespace(mut value: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = value {
        value = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = value {
        value = rest;
    }
    value
}

/// RFC 9110 `tchar`: the characters allowed in a header name.
fn is_token_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

fn is_method_byte(byte: u8) -> bool {
    byte.is_ascii_uppercase() || byte == b'-' || byte == b'_'
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
fn http_head(bytes: &[u8], start_len: usize) -> Step<HttpHead<'_>> {
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
            return Step::Done(HttpHead {
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
pub(crate) fn http_request_head(bytes: &[u8]) -> Step<HttpHead<'_>> {
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

fn header_values<'a>(head: &'a HttpHead<'_>, name: &'a [u8]) -> impl Iterator<Item = &'a [u8]> {
    head.headers
        .iter()
        .filter(move |(header, _)| header.eq_ignore_ascii_case(name))
        .map(|(_, value)| *value)
}

/// Body length from `Transfer-Encoding` and `Content-Length` (RFC 9112 §6.3);
/// `None` for conflicting or malformed lengths.
fn body_length(head: &HttpHead<'_>) -> Option<BodyLength> {
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
pub(crate) fn is_chunked(head: &HttpHead<'_>) -> bool {
    matches!(body_length(head), Some(BodyLength::Chunked))
}

pub(crate) fn parse_decimal(digits: &[u8]) -> Option<usize> {
    if digits.is_empty() || digits.len() > 18 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    digits.iter().try_fold(0usize, |total, &digit| {
        total
            .checked_mul(10)?
            .checked_add(usize::from(digit - b'0'))
    })
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

/// The data of a chunked body starting at `start` and the position after it.
pub(crate) fn dechunk(bytes: &[u8], start: usize) -> Step<(Vec<u8>, usize)> {
    let mut data = Vec::new();
    let end = step!(walk_chunked(bytes, start, |chunk| data.extend_from_slice(chunk)));
    Step::Done((data, end))
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
pub fn http_request(bytes: &[u8]) -> Completeness {
    let head = match http_request_head(bytes) {
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
pub fn http_response(bytes: &[u8], head_request: bool) -> Completeness {
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

// ---------------------------------------------------------------------------
// Redis RESP

/// The line starting at `at` up to its `\r\n`: its content and the position
/// after it. A bare `\n` is not a RESP line ending.
pub(crate) fn resp_line(bytes: &[u8], at: usize, max_len: Option<usize>) -> Step<(&[u8], usize)> {
    let rest = bytes.get(at..).unwrap_or_default();
    match rest.windows(2).position(|pair| pair == b"\r\n") {
        Some(len) if max_len.is_some_and(|max| len > max) => Step::Invalid,
        Some(len) => Step::Done((&rest[..len], at + len + 2)),
        None if max_len.is_some_and(|max| rest.len() > max + 1) => Step::Invalid,
        None => Step::NeedMore,
    }
}

/// A RESP length or count: `-1` (null) or a non-negative decimal.
fn resp_length(line: &[u8], max: u64) -> Step<Option<u64>> {
    if line == b"-1" {
        return Step::Done(None);
    }
    match parse_decimal(line) {
        Some(value) if (value as u64) <= max => Step::Done(Some(value as u64)),
        _ => Step::Invalid,
    }
}

/// Validates one RESP2/RESP3 value at `at`; returns the position after it.
fn resp_value(bytes: &[u8], at: usize, depth: usize) -> Step<usize> {
    if depth > MAX_RESP_DEPTH {
        return Step::Invalid;
    }
    let Some(&kind) = bytes.get(at) else {
        return Step::NeedMore;
    };
    let body = at + 1;
    match kind {
        // Simple string, simple error, big number: one line of text.
        b'+' | b'-' | b'(' => resp_line(bytes, body, None).map_done(|(_, end)| end),
        b':' => {
            let (line, end) = step!(resp_line(bytes, body, Some(MAX_RESP_NUMBER_LINE)));
            let digits = line
                .strip_prefix(b"-")
                .or_else(|| line.strip_prefix(b"+"))
                .unwrap_or(line);
            if parse_decimal(digits).is_none() {
                return Step::Invalid;
            }
            Step::Done(end)
        }
        b'_' => {
            let (line, end) = step!(resp_line(bytes, body, Some(0)));
            if line.is_empty() {
                Step::Done(end)
            } else {
                Step::Invalid
            }
        }
        b'#' => {
            let (line, end) = step!(resp_line(bytes, body, Some(1)));
            if line == b"t" || line == b"f" {
                Step::Done(end)
            } else {
                Step::Invalid
            }
        }
        b',' => resp_line(bytes, body, Some(MAX_RESP_NUMBER_LINE * 4)).map_done(|(_, end)| end),
        // Bulk string, blob error, verbatim string: length-prefixed.
        b'$' | b'!' | b'=' => {
            let (line, data_start) = step!(resp_line(bytes, body, Some(MAX_RESP_NUMBER_LINE)));
            let Some(len) = step!(resp_length(line, MAX_RESP_BULK_BYTES)) else {
                return if kind == b'$' {
                    Step::Done(data_start)
                } else {
                    Step::Invalid
                };
            };
            let data_end = data_start + len as usize;
            match bytes.get(data_end..data_end + 2) {
                Some(b"\r\n") => Step::Done(data_end + 2),
                Some(_) => Step::Invalid,
                None => match bytes.get(data_end..) {
                    // Only "\r" of the terminator so far.
                    Some(b"\r") | None | Some(b"") => Step::NeedMore,
                    Some(_) => Step::Invalid,
                },
            }
        }
        // Array, set, push: `count` values; map and attribute: pairs.
        b'*' | b'~' | b'>' | b'%' | b'|' => {
            let (line, mut next) = step!(resp_line(bytes, body, Some(MAX_RESP_NUMBER_LINE)));
            let Some(count) = step!(resp_length(line, MAX_RESP_ELEMENTS)) else {
                return if kind == b'*' {
                    Step::Done(next)
                } else {
                    Step::Invalid
                };
            };
            let values = if kind == b'%' || kind == b'|' {
                count * 2
            } else {
                count
            };
            // Each value takes at least 3 bytes, so this loop ends with the input.
            for _ in 0..values {
                next = step!(resp_value(bytes, next, depth + 1));
            }
            if kind == b'|' {
                // An attribute annotates the value that follows it.
                return resp_value(bytes, next, depth + 1);
            }
            Step::Done(next)
        }
        _ => Step::Invalid,
    }
}

/// A byte allowed in an inline command line.
fn is_inline_byte(byte: u8) -> bool {
    byte == b' ' || byte == b'\t' || byte.is_ascii_graphic() || byte >= 0x80
}

/// A Redis inline command: one line of printable text.
fn resp_inline(bytes: &[u8]) -> Completeness {
    let newline = bytes.iter().position(|&byte| byte == b'\n');
    let content = match newline {
        Some(at) => trim_line_ending(&bytes[..=at]),
        // A trailing "\r" is the start of the line ending.
        None => bytes.strip_suffix(b"\r").unwrap_or(bytes),
    };
    if content.len() > MAX_RESP_INLINE_BYTES || !content.iter().all(|&byte| is_inline_byte(byte)) {
        return Completeness::Unknown;
    }
    match newline {
        // An HTTP request line is not an inline command.
        Some(_) if looks_like_http_request_line(content) => Completeness::Unknown,
        Some(at) => Completeness::Complete(at + 1),
        None => Completeness::NeedMore,
    }
}

fn looks_like_http_request_line(line: &[u8]) -> bool {
    line.len() >= 9 && line[line.len() - 9..line.len() - 1].eq_ignore_ascii_case(b" HTTP/1.")
}

/// Whether the first Redis RESP message in `bytes` is complete.
///
/// Accepts every RESP2 and RESP3 type (clients send arrays of bulk strings;
/// the other types let the same function frame replies), and inline
/// commands (a line of printable text starting with a letter). `Unknown` for
/// anything else, including an HTTP request line.
pub fn resp(bytes: &[u8]) -> Completeness {
    match bytes.first() {
        None => Completeness::NeedMore,
        Some(first) if first.is_ascii_alphabetic() => resp_inline(bytes),
        Some(_) => resp_value(bytes, 0, 0).into_completeness(),
    }
}

// ---------------------------------------------------------------------------
// MySQL client packets

/// Command bytes a client sends at sequence id 0 (`COM_QUIT` 0x01 to
/// `COM_RESET_CONNECTION` 0x1f).
fn is_mysql_command(byte: u8) -> bool {
    (0x01..=0x1f).contains(&byte)
}

/// The little-endian payload length in the first 3 bytes of a packet header.
fn mysql_payload_len(header: &[u8]) -> usize {
    match header {
        [len0, len1, len2, ..] => {
            usize::from(*len0) | usize::from(*len1) << 8 | usize::from(*len2) << 16
        }
        _ => 0,
    }
}

/// `CLIENT_PROTOCOL_41`: set by every client since MySQL 4.1.
const MYSQL_CLIENT_PROTOCOL_41: u32 = 0x0200;

/// Whether the first MySQL client message in `bytes` is complete.
///
/// A packet is a 3-byte little-endian payload length, a sequence id and the
/// payload; a payload of 0xFFFFFF bytes continues in the next packet. To
/// keep arbitrary binary protocols from being mistaken for MySQL, only two
/// packet kinds are recognised: a command (sequence id 0, command byte
/// 0x01-0x1f) and the handshake response or SSL request (sequence id 1,
/// `CLIENT_PROTOCOL_41` set, 23 zero filler bytes). Recognising the first
/// takes 5 bytes, the second 36; fewer are `Unknown`.
pub fn mysql_client(bytes: &[u8]) -> Completeness {
    let Some(&[_, _, _, sequence]) = bytes.get(..4) else {
        return Completeness::Unknown;
    };
    let payload_len = mysql_payload_len(bytes);
    let recognised = match sequence {
        0 => {
            payload_len >= 1
                && bytes
                    .get(4)
                    .is_some_and(|&command| is_mysql_command(command))
        }
        1 => {
            let Some(payload) = bytes.get(4..36) else {
                return Completeness::Unknown;
            };
            let capabilities = u32::from_le_bytes([payload[0], payload[1], payload[2], payload[3]]);
            payload_len >= 32
                && capabilities & MYSQL_CLIENT_PROTOCOL_41 != 0
                && payload[9..32].iter().all(|&byte| byte == 0)
        }
        _ => false,
    };
    if !recognised {
        return Completeness::Unknown;
    }
    let mut at = 0;
    let mut len = payload_len;
    loop {
        let end = at + 4 + len;
        if end > bytes.len() {
            return Completeness::NeedMore;
        }
        if len < MYSQL_MAX_PACKET_PAYLOAD {
            return Completeness::Complete(end);
        }
        at = end;
        let Some(header) = bytes.get(at..at + 4) else {
            return Completeness::NeedMore;
        };
        len = mysql_payload_len(header);
    }
}

// ---------------------------------------------------------------------------
// Sniffing and recorded requests

/// Whether the first request in `bytes` is complete, for the protocols that
/// can be recognised from their bytes: HTTP/1.x, RESP arrays (`*`), then
/// MySQL client packets. Inline Redis commands are not sniffed here: any
/// line-based text protocol would look like one.
pub fn request(bytes: &[u8]) -> Completeness {
    if bytes.is_empty() {
        return Completeness::NeedMore;
    }
    let http = http_request(bytes);
    if http != Completeness::Unknown {
        return http;
    }
    if bytes[0] == b'*' {
        let resp = resp(bytes);
        if resp != Completeness::Unknown {
            return resp;
        }
    }
    mysql_client(bytes)
}

/// Completeness judged against the requests recorded for the session, for
/// protocols no other rule knows.
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
    use super::Completeness::{Complete, NeedMore, Unknown};
    use super::*;

    /// Every strict prefix of `message` (empty included) gives `NeedMore`
    /// from `frame`, the whole gives `Complete(len)`, and so does the whole
    /// followed by the start of another message.
    fn assert_frames(frame: impl Fn(&[u8]) -> Completeness, message: &[u8]) {
        for split in 0..message.len() {
            assert_eq!(
                frame(&message[..split]),
                NeedMore,
                "prefix {:?}",
                String::from_utf8_lossy(&message[..split])
            );
        }
        assert_eq!(
            frame(message),
            Complete(message.len()),
            "{:?}",
            String::from_utf8_lossy(message)
        );
        let mut pipelined = message.to_vec();
        pipelined.extend_from_slice(&message[..message.len() / 2]);
        assert_eq!(frame(&pipelined), Complete(message.len()));
    }

    /// Like `assert_frames` but the first `unknown_until` prefixes are too
    /// short to recognise.
    fn assert_frames_after(
        frame: impl Fn(&[u8]) -> Completeness,
        message: &[u8],
        unknown_until: usize,
    ) {
        for split in 0..message.len() {
            let expected = if split < unknown_until {
                Unknown
            } else {
                NeedMore
            };
            assert_eq!(
                frame(&message[..split]),
                expected,
                "prefix of {split} bytes"
            );
        }
        assert_eq!(frame(message), Complete(message.len()));
    }

    // HTTP requests -----------------------------------------------------------

    #[test]
    fn http_request_without_body() {
        assert_frames(
            http_request,
            b"GET /items/17?x=1 HTTP/1.1\r\nHost: api\r\nAccept: */*\r\n\r\n",
        );
        assert_frames(http_request, b"DELETE /x HTTP/1.0\r\n\r\n");
        // Bare LF line endings are tolerated.
        assert_frames(http_request, b"GET / HTTP/1.1\nHost: api\n\n");
    }

    #[test]
    fn http_request_with_content_length() {
        assert_frames(
            http_request,
            b"POST /orders HTTP/1.1\r\nHost: api\r\ncontent-length: 11\r\n\r\n{\"id\": 17}\n",
        );
        assert_frames(
            http_request,
            b"PUT /x HTTP/1.1\r\nContent-Length: 3, 3\r\nContent-Length: 3\r\n\r\nabc",
        );
        assert_frames(
            http_request,
            b"POST /empty HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        );
    }

    #[test]
    fn http_request_chunked() {
        let request = b"POST /upload HTTP/1.1\r\nHost: files\r\nTransfer-Encoding: gzip, Chunked\r\nContent-Length: 999\r\n\r\n\
                        5;name=value\r\nhello\r\n6\r\n world\r\nA\r\n0123456789\r\n0\r\nChecksum: abc\r\n\r\n";
        assert_frames(http_request, request);
        let body_start = request
            .windows(4)
            .position(|window| window == b"\r\n\r\n")
            .map_or(0, |at| at + 4);
        assert_eq!(
            dechunk(request, body_start),
            Step::Done((b"hello world0123456789".to_vec(), request.len()))
        );
    }

    #[test]
    fn pipelined_http_requests() {
        let first = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        let second = b"POST /b HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi".to_vec();
        let both = [first.clone(), second.clone()].concat();
        assert_eq!(http_request(&both), Complete(first.len()));
        assert_eq!(http_request(&both[first.len()..]), Complete(second.len()));
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
                http_request(case),
                Unknown,
                "{:?}",
                String::from_utf8_lossy(case)
            );
        }
        let long_method = [b'A'; 40];
        assert_eq!(http_request(&long_method), Unknown);
    }

    #[test]
    fn oversized_http_head_is_not_http() {
        let mut request = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
        request.resize(MAX_HEAD_BYTES + 10, b'a');
        assert_eq!(http_request(&request), Unknown);
        request.truncate(1000);
        assert_eq!(http_request(&request), NeedMore);
    }

    // HTTP responses ----------------------------------------------------------

    #[test]
    fn http_response_with_length_or_chunks() {
        let frame = |bytes: &[u8]| http_response(bytes, false);
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
    fn http_responses_without_body() {
        for status in [
            "100 Continue",
            "101 Switching Protocols",
            "204 No Content",
            "304 Not Modified",
        ] {
            let response = format!("HTTP/1.1 {status}\r\nContent-Length: 10\r\n\r\n");
            assert_frames(|bytes| http_response(bytes, false), response.as_bytes());
        }
        let to_head = b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n";
        assert_frames(|bytes| http_response(bytes, true), to_head);
        assert_eq!(http_response(to_head, false), NeedMore);
    }

    #[test]
    fn http_response_until_close_is_unknown() {
        assert_eq!(
            http_response(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n<html>",
                false
            ),
            Unknown
        );
        assert_eq!(
            http_response(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nxx",
                false
            ),
            Unknown
        );
        // Until the head is complete, it may still get a length.
        assert_eq!(
            http_response(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n", false),
            NeedMore
        );
    }

    #[test]
    fn pipelined_http_responses_and_interim_responses() {
        let continue_then_ok =
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        assert_eq!(http_response(continue_then_ok, false), Complete(25));
        assert_eq!(
            http_response(&continue_then_ok[25..], false),
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
                http_response(case, false),
                Unknown,
                "{:?}",
                String::from_utf8_lossy(case)
            );
        }
    }

    // RESP --------------------------------------------------------------------

    #[test]
    fn resp_commands() {
        assert_frames(resp, b"*2\r\n$3\r\nGET\r\n$6\r\nkey:17\r\n");
        assert_frames(resp, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n");
        assert_frames(resp, b"*1\r\n$4\r\nPING\r\n");
        // Binary-safe bulk strings.
        assert_frames(resp, b"*2\r\n$3\r\nSET\r\n$4\r\n\r\n\x00\xff\r\n");
    }

    #[test]
    fn resp_replies_of_every_type() {
        let replies: [&[u8]; 16] = [
            b"+OK\r\n",
            b"-ERR unknown command\r\n",
            b":-42\r\n",
            b"$-1\r\n",
            b"*-1\r\n",
            b"*0\r\n",
            b"*2\r\n*1\r\n:1\r\n$2\r\nab\r\n",
            b"_\r\n",
            b"#t\r\n",
            b",3.14\r\n",
            b"(3492890328409238509324850943850943825024385\r\n",
            b"!8\r\nSYNTAX x\r\n",
            b"=7\r\ntxt:abc\r\n",
            b"%1\r\n+key\r\n:1\r\n",
            b"~2\r\n+a\r\n+b\r\n",
            b"|1\r\n+ttl\r\n:3600\r\n$5\r\nvalue\r\n",
        ];
        for reply in replies {
            assert_frames(resp, reply);
        }
        assert_frames(resp, b">3\r\n+message\r\n+chan\r\n$2\r\nhi\r\n");
    }

    #[test]
    fn resp_inline_commands() {
        assert_frames(resp, b"PING\r\n");
        assert_frames(resp, b"SET key \"some value\"\n");
        // An HTTP request line is not an inline command.
        assert_eq!(resp(b"GET / HTTP/1.1\r\n"), Unknown);
        assert_eq!(resp(b"PI\x00NG\r\n"), Unknown);
    }

    #[test]
    fn pipelined_resp_commands() {
        let ping = b"*1\r\n$4\r\nPING\r\n";
        let get = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n";
        let both = [&ping[..], &get[..]].concat();
        assert_eq!(resp(&both), Complete(ping.len()));
        assert_eq!(resp(&both[ping.len()..]), Complete(get.len()));
    }

    #[test]
    fn malformed_resp() {
        let cases: [&[u8]; 12] = [
            b"*x\r\n",
            b"*2\r\n$3\r\nGET\r\n$3\r\nabcd\r\n",
            b"$3\r\nabc\n\n",
            b"#x\r\n",
            b"_a\r\n",
            b":12a\r\n",
            b"?\r\n",
            b"$-2\r\n",
            b"%-1\r\n",
            b"$999999999999\r\n",
            b"*1\n$4\r\nPING\r\n",
            b"\x00\x01",
        ];
        for case in cases {
            assert_eq!(resp(case), Unknown, "{:?}", String::from_utf8_lossy(case));
        }
        let deep = b"*1\r\n".repeat(MAX_RESP_DEPTH + 5);
        assert_eq!(resp(&deep), Unknown);
        // A huge count with little data waits, quickly.
        assert_eq!(resp(b"*2147483647\r\n:1\r\n:2\r\n"), NeedMore);
        assert_eq!(resp(b"$536870912\r\nabc"), NeedMore);
    }

    // MySQL -------------------------------------------------------------------

    fn mysql_packet(sequence: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut out = vec![len as u8, (len >> 8) as u8, (len >> 16) as u8, sequence];
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn mysql_commands() {
        let query = mysql_packet(0, b"\x03SELECT * FROM users WHERE id = 7");
        assert_frames_after(mysql_client, &query, 5);
        let quit = mysql_packet(0, b"\x01");
        assert_eq!(mysql_client(&quit), Complete(5));
        let both = [query.clone(), quit].concat();
        assert_eq!(mysql_client(&both), Complete(query.len()));
    }

    #[test]
    fn mysql_handshake_response() {
        let mut payload = 0x000f_a68du32.to_le_bytes().to_vec();
        payload.extend_from_slice(&16_777_216u32.to_le_bytes());
        payload.push(0x21);
        payload.extend_from_slice(&[0; 23]);
        payload.extend_from_slice(b"app\0\x14abcdefghijklmnopqrstmysql_native_password\0");
        let packet = mysql_packet(1, &payload);
        assert_frames_after(mysql_client, &packet, 36);
        // SSL request: exactly the 32 fixed bytes.
        assert_eq!(mysql_client(&mysql_packet(1, &payload[..32])), Complete(36));
        // Without PROTOCOL_41, or with a non-zero filler, it is not recognised.
        let mut old = payload.clone();
        old[1] = 0;
        assert_eq!(mysql_client(&mysql_packet(1, &old)), Unknown);
        let mut filler = payload;
        filler[20] = 1;
        assert_eq!(mysql_client(&mysql_packet(1, &filler)), Unknown);
    }

    #[test]
    fn mysql_multi_packet_payload() {
        let mut first = vec![0xff, 0xff, 0xff, 0, 0x03];
        first.resize(4 + MYSQL_MAX_PACKET_PAYLOAD, b'x');
        assert_eq!(mysql_client(&first), NeedMore);
        let mut whole = first.clone();
        whole.extend_from_slice(&mysql_packet(1, b"end"));
        assert_eq!(mysql_client(&whole), Complete(whole.len()));
        assert_eq!(mysql_client(&whole[..first.len() + 2]), NeedMore);
    }

    #[test]
    fn not_mysql() {
        let cases: [&[u8]; 5] = [
            b"\x05\x00\x00\x02\x03SELECT",       // sequence 2
            b"\x01\x00\x00\x00\x00",             // command 0x00
            b"\x01\x00\x00\x00\x20",             // command 0x20
            b"\x00\x00\x00\x00\x03",             // empty payload
            b"\x00\x00\x00\x08\x04\xd2\x16\x2f", // PostgreSQL SSLRequest
        ];
        for case in cases {
            assert_eq!(mysql_client(case), Unknown, "{case:?}");
        }
    }

    // Sniffing ----------------------------------------------------------------

    #[test]
    fn request_sniffs_the_protocol() {
        assert_eq!(request(b""), NeedMore);
        let http = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(request(http), Complete(http.len()));
        assert_eq!(request(&http[..10]), NeedMore);
        let command = b"*1\r\n$4\r\nPING\r\n";
        assert_eq!(request(command), Complete(command.len()));
        assert_eq!(request(&command[..6]), NeedMore);
        let query = mysql_packet(0, b"\x03SELECT 1");
        assert_eq!(request(&query), Complete(query.len()));
        assert_eq!(request(&query[..7]), NeedMore);
        // A MySQL packet that starts with '*' (a 42-byte payload).
        let star = mysql_packet(0, &[&b"\x03"[..], &[b' '; 41]].concat());
        assert_eq!(star[0], b'*');
        assert_eq!(request(&star), Complete(star.len()));
        // Inline commands and unknown protocols are left to other rules.
        assert_eq!(request(b"PING\r\n"), Unknown);
        assert_eq!(request(b"\x00\x01\x02\x03\x04\x05"), Unknown);
    }

    // Recorded requests -------------------------------------------------------

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
        assert_frames(|bytes| recorded_prefix(bytes, &recorded), &first);
        assert_frames(|bytes| recorded_prefix(bytes, &recorded), &second);
    }

    // Robustness --------------------------------------------------------------

    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, bound: usize) -> usize {
            (self.next() % bound.max(1) as u64) as usize
        }
    }

    type Frame<'a> = dyn Fn(&[u8]) -> Completeness + 'a;

    /// Checks the invariants every answer must keep: a complete message is
    /// not empty and fits, and extra bytes after it do not change it.
    fn check(frame: &Frame<'_>, bytes: &[u8], extra: &[u8]) {
        if let Complete(len) = frame(bytes) {
            assert!(len > 0 && len <= bytes.len(), "{len} of {bytes:?}");
            let longer = [bytes, extra].concat();
            assert_eq!(frame(&longer), Complete(len), "{bytes:?} + {extra:?}");
        }
    }

    #[test]
    fn random_and_mutated_input_never_panics() {
        let seeds: [&[u8]; 8] = [
            b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n\r\n",
            b"*2\r\n$3\r\nGET\r\n$6\r\nkey:17\r\n",
            b"|1\r\n%1\r\n+a\r\n~1\r\n:1\r\n>1\r\n=5\r\ntxt:a\r\n",
            b"\x0a\x00\x00\x00\x03SELECT 1;",
            b"PING\r\n",
        ];
        let recorded: [&[u8]; 3] = [seeds[0], seeds[4], b"\x01\x02\x03"];
        let frames: [&Frame<'_>; 7] = [
            &http_request,
            &|bytes| http_response(bytes, false),
            &|bytes| http_response(bytes, true),
            &resp,
            &mysql_client,
            &request,
            &|bytes| recorded_prefix(bytes, &recorded),
        ];
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let alphabet = b"\r\n:$*+-_#,(!=%~>|0123456789abcdefABCDEF ;\x00\xff";
        for round in 0..20_000 {
            let mut bytes = seeds[rng.below(seeds.len())].to_vec();
            match round % 4 {
                // Random bytes.
                0 => bytes = (0..rng.below(64)).map(|_| rng.next() as u8).collect(),
                // Random bytes from the protocols' alphabet.
                1 => {
                    bytes = (0..rng.below(64))
                        .map(|_| alphabet[rng.below(alphabet.len())])
                        .collect()
                }
                // A seed with bytes replaced.
                2 => {
                    for _ in 0..1 + rng.below(3) {
                        let at = rng.below(bytes.len());
                        bytes[at] = alphabet[rng.below(alphabet.len())];
                    }
                }
                // A seed cut short, with or without junk.
                _ => {
                    bytes.truncate(rng.below(bytes.len() + 1));
                    bytes.extend((0..rng.below(4)).map(|_| rng.next() as u8));
                }
            }
            let extra: Vec<u8> = (0..rng.below(8)).map(|_| rng.next() as u8).collect();
            for frame in &frames {
                check(*frame, &bytes, &extra);
            }
        }
    }
}
