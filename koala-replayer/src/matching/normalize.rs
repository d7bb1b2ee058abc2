//! Canonical form of a request, and the operation it performs.
//!
//! Two requests that mean the same thing should normalise to the same bytes
//! (so the exact index finds them), and two requests for different
//! operations should get different operation keys (so they are never
//! compared at all).

use std::ops::Range;

use crate::framing::{self, Step};

/// A request prepared for matching.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Normalized {
    /// Canonical bytes: the exact index key and what scoring compares.
    pub bytes: Vec<u8>,
    /// The part of `bytes` holding HTTP header fields, which weighs less in
    /// scoring; empty for other protocols.
    pub header_range: Range<usize>,
    /// The operation: requests are only compared with recorded requests of
    /// the same key. Empty for protocols that are not recognised.
    pub key: Vec<u8>,
    /// Where scoring starts: the bytes before it spell the operation key,
    /// equal for every candidate, and would only dilute the differences.
    pub scored_from: usize,
}

impl Normalized {
    /// The bytes scoring compares, and the header range within them.
    pub fn scored(&self) -> (&[u8], Range<usize>) {
        let start = self.scored_from.min(self.bytes.len());
        let shift = |at: usize| at.saturating_sub(start);
        (
            &self.bytes[start..],
            shift(self.header_range.start)..shift(self.header_range.end),
        )
    }
}

/// Normalises `request`. HTTP/1.x requests with a complete head are
/// canonicalised (see [`normalize_http`]); everything else is kept as is.
pub(crate) fn normalize(request: &[u8], volatile_headers: &[String]) -> Normalized {
    if let Some(normalized) = normalize_http(request, volatile_headers) {
        return normalized;
    }
    let (key, scored_from) = resp_key(request)
        .or_else(|| mysql_key(request).map(|key| (key, 0)))
        .unwrap_or_default();
    Normalized {
        bytes: request.to_vec(),
        header_range: 0..0,
        key,
        scored_from,
    }
}

/// Canonical HTTP/1.x request:
/// - the query parameters are sorted by name (stable, so repeated names keep
///   their order);
/// - header names are lower-cased, values trimmed, folded lines joined,
///   fields sorted by name (stable);
/// - volatile headers (`volatile_headers`, lower-case names) and framing
///   headers (`content-length`, `transfer-encoding`) are dropped;
/// - a chunked body (last transfer coding `chunked`, as in framing) is
///   de-chunked.
///
/// The operation key is the method and the path (the target before `?`).
fn normalize_http(request: &[u8], volatile_headers: &[String]) -> Option<Normalized> {
    let Step::Done(head) = framing::http_request_head(request) else {
        return None;
    };
    let mut parts = head.start_line.splitn(3, |&byte| byte == b' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);

    let chunked = framing::is_chunked(&head);
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
    match chunked.then(|| framing::dechunk(request, body_start)) {
        Some(Step::Done((data, end))) => {
            bytes.extend_from_slice(&data);
            bytes.extend_from_slice(request.get(end..).unwrap_or_default());
        }
        _ => bytes.extend_from_slice(request.get(body_start..).unwrap_or_default()),
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

/// The RESP line after the type byte `kind` at `at`: its content and the
/// position after it.
fn resp_typed_line(bytes: &[u8], at: usize, kind: u8) -> Option<(&[u8], usize)> {
    if bytes.get(at) != Some(&kind) {
        return None;
    }
    match framing::resp_line(bytes, at + 1, None) {
        Step::Done(line) => Some(line),
        Step::NeedMore | Step::Invalid => None,
    }
}

/// Reads one RESP bulk string (`$len\r\ndata\r\n`) at `at`.
fn resp_bulk(bytes: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let (digits, data_start) = resp_typed_line(bytes, at, b'$')?;
    let len = framing::parse_decimal(digits)?;
    let data = bytes.get(data_start..data_start.checked_add(len)?)?;
    Some((data, data_start + len + 2))
}

/// Redis command arrays: the command name (upper-cased) and its first
/// argument, which for nearly every command is the key operated on; and
/// where the bytes after them start.
fn resp_key(request: &[u8]) -> Option<(Vec<u8>, usize)> {
    let (digits, first) = resp_typed_line(request, 0, b'*')?;
    let count = framing::parse_decimal(digits)?;
    if count == 0 {
        return None;
    }
    let (command, next) = resp_bulk(request, first)?;
    let mut key = b"resp ".to_vec();
    key.extend(command.iter().map(u8::to_ascii_uppercase));
    if count < 2 {
        return Some((key, next));
    }
    let (argument, after) = resp_bulk(request, next)?;
    key.push(b' ');
    key.extend_from_slice(argument);
    Some((key, after))
}

/// MySQL client packets: the command byte, plus the first SQL keyword for
/// `COM_QUERY` and `COM_STMT_PREPARE`; the handshake response has its own key.
fn mysql_key(request: &[u8]) -> Option<Vec<u8>> {
    if framing::mysql_client(request) == framing::Completeness::Unknown {
        return None;
    }
    let sequence = *request.get(3)?;
    if sequence == 1 {
        return Some(b"mysql handshake".to_vec());
    }
    let command = *request.get(4)?;
    let mut key = format!("mysql {command:02x}").into_bytes();
    const COM_QUERY: u8 = 0x03;
    const COM_STMT_PREPARE: u8 = 0x16;
    if command == COM_QUERY || command == COM_STMT_PREPARE {
        let keyword = sql_first_keyword(request.get(5..).unwrap_or_default());
        key.push(b' ');
        key.extend(keyword.iter().map(u8::to_ascii_uppercase));
    }
    Some(key)
}

/// The first word of an SQL statement, after whitespace, comments and
/// opening parentheses.
fn sql_first_keyword(mut sql: &[u8]) -> &[u8] {
    loop {
        let trimmed = sql.trim_ascii_start();
        if let Some(rest) = trimmed.strip_prefix(b"/*") {
            let end = rest
                .windows(2)
                .position(|pair| pair == b"*/")
                .map_or(rest.len(), |at| at + 2);
            sql = &rest[end..];
        } else if let Some(rest) = trimmed
            .strip_prefix(b"--")
            .or_else(|| trimmed.strip_prefix(b"#"))
        {
            let end = rest
                .iter()
                .position(|&byte| byte == b'\n')
                .unwrap_or(rest.len());
            sql = &rest[end..];
        } else if let Some(rest) = trimmed.strip_prefix(b"(") {
            sql = rest;
        } else {
            let len = trimmed
                .iter()
                .take_while(|byte| byte.is_ascii_alphabetic())
                .count();
            return &trimmed[..len];
        }
    }
}
