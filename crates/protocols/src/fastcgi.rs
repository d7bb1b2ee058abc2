//! FastCGI (the FastCGI Specification 1.0): a web server (nginx) talking to
//! an application server (php-fpm).
//!
//! Everything travels in records: an 8-byte header (version 1, type,
//! request id u16, content length u16, padding length u8, reserved) then
//! the content and the padding. A request is a BEGIN_REQUEST record and the
//! PARAMS, STDIN (and, for the filter role, DATA) streams of the same
//! request id, each ended by an empty record; the application answers with
//! STDOUT/STDERR streams and one END_REQUEST record.
//!
//! Streams, not records, carry meaning: the same request may be cut into
//! records at other points, padded differently or given another request id,
//! so framing reads streams to their end and normalisation concatenates
//! them. Multiplexing several requests on one connection (which nginx and
//! php-fpm never do) is not supported: a record of another request id in
//! the middle of a request makes it `Unknown`.

use crate::{Completeness, NormalizeOptions, Normalized, Protocol, Side};

/// The FastCGI protocol.
pub struct FastCgi;

const VERSION_1: u8 = 1;
const HEADER_LEN: usize = 8;

const BEGIN_REQUEST: u8 = 1;
const ABORT_REQUEST: u8 = 2;
const END_REQUEST: u8 = 3;
const PARAMS: u8 = 4;
const STDIN: u8 = 5;
const STDOUT: u8 = 6;
const STDERR: u8 = 7;
const DATA: u8 = 8;
const GET_VALUES: u8 = 9;
const GET_VALUES_RESULT: u8 = 10;
const UNKNOWN_TYPE: u8 = 11;

const RESPONDER: u16 = 1;
const AUTHORIZER: u16 = 2;
const FILTER: u16 = 3;

/// BEGIN_REQUEST flag: the application keeps the connection open after the
/// request; without it the application closes it after END_REQUEST.
const KEEP_CONN: u8 = 1;

/// END_REQUEST protocol status of a normally completed request.
const REQUEST_COMPLETE: u8 = 0;

/// Parameters that change from run to run without changing what the request
/// asks for: the client's ephemeral port, the web server's own listening
/// port (a test harness picks a free one on every run), timestamps and
/// request ids set by the web server or its clients.
const VOLATILE_PARAMS: &[&[u8]] = &[
    b"REMOTE_PORT",
    b"SERVER_PORT",
    b"REQUEST_TIME",
    b"REQUEST_TIME_FLOAT",
    b"REQUEST_ID",
    b"UNIQUE_ID",
    b"HTTP_X_REQUEST_ID",
];

/// One record.
#[derive(Clone, Copy, Debug)]
struct Record<'a> {
    kind: u8,
    request_id: u16,
    content: &'a [u8],
    /// Header, content and padding.
    len: usize,
}

/// What the start of some bytes holds.
enum Next<'a> {
    Record(Record<'a>),
    /// A valid beginning of a record.
    NeedMore,
    /// Not a FastCGI record.
    Invalid,
}

/// Reads the record at the start of `bytes`.
fn next_record(bytes: &[u8]) -> Next<'_> {
    if bytes.first().is_some_and(|&version| version != VERSION_1) {
        return Next::Invalid;
    }
    if bytes
        .get(1)
        .is_some_and(|kind| !(BEGIN_REQUEST..=UNKNOWN_TYPE).contains(kind))
    {
        return Next::Invalid;
    }
    let Some(header) = bytes.get(..HEADER_LEN) else {
        return Next::NeedMore;
    };
    let content_len = usize::from(u16::from_be_bytes([header[4], header[5]]));
    let len = HEADER_LEN + content_len + usize::from(header[6]);
    match bytes.get(HEADER_LEN..HEADER_LEN + content_len) {
        Some(content) if bytes.len() >= len => Next::Record(Record {
            kind: header[1],
            request_id: u16::from_be_bytes([header[2], header[3]]),
            content,
            len,
        }),
        _ => Next::NeedMore,
    }
}

/// The whole records at the start of `bytes`, and where they end.
fn records(bytes: &[u8]) -> (Vec<Record<'_>>, usize) {
    let mut found = Vec::new();
    let mut at = 0;
    while let Next::Record(record) = next_record(&bytes[at..]) {
        at += record.len;
        found.push(record);
    }
    (found, at)
}

/// The body of a BEGIN_REQUEST record.
struct Begin {
    role: u16,
    flags: u8,
}

fn begin_body(content: &[u8]) -> Option<Begin> {
    let [role_high, role_low, flags, ..] = *content else {
        return None;
    };
    let role = u16::from_be_bytes([role_high, role_low]);
    (content.len() == 8 && (RESPONDER..=FILTER).contains(&role)).then_some(Begin { role, flags })
}

/// The BEGIN_REQUEST body at the start of `request`.
fn begin_of(request: &[u8]) -> Option<Begin> {
    match next_record(request) {
        Next::Record(record) if record.kind == BEGIN_REQUEST => begin_body(record.content),
        _ => None,
    }
}

/// Frames a request begun by `begin`: its streams up to their empty
/// records. An authorizer gets no stdin, a filter also gets a DATA stream.
fn frame_streams(bytes: &[u8], begin: Record<'_>, role: u16) -> Completeness {
    let (mut params_ended, mut stdin_ended, mut data_ended) =
        (false, role == AUTHORIZER, role != FILTER);
    let mut at = begin.len;
    loop {
        if params_ended && stdin_ended && data_ended {
            return Completeness::Complete(at);
        }
        let record = match next_record(&bytes[at..]) {
            Next::Record(record) => record,
            Next::NeedMore => return Completeness::NeedMore,
            Next::Invalid => return Completeness::Unknown,
        };
        if record.request_id != begin.request_id {
            return Completeness::Unknown;
        }
        let ended = record.content.is_empty();
        match record.kind {
            PARAMS => params_ended |= ended,
            STDIN => stdin_ended |= ended,
            DATA => data_ended |= ended,
            // The web server gave up on the request: the application
            // answers it with END_REQUEST, nothing more will come.
            ABORT_REQUEST => return Completeness::Complete(at + record.len),
            _ => return Completeness::Unknown,
        }
        at += record.len;
    }
}

/// The content of the records of `kind` for `request_id`, concatenated.
fn stream(records: &[Record<'_>], kind: u8, request_id: u16) -> Vec<u8> {
    records
        .iter()
        .filter(|record| record.kind == kind && record.request_id == request_id)
        .flat_map(|record| record.content.iter().copied())
        .collect()
}

/// A name-value pair length at `at`: one byte below 128, else four bytes
/// with the high bit set. Returns the length and the position after it.
fn pair_length(bytes: &[u8], at: usize) -> Option<(usize, usize)> {
    let first = *bytes.get(at)?;
    if first & 0x80 == 0 {
        return Some((usize::from(first), at + 1));
    }
    let wide = bytes.get(at..at.checked_add(4)?)?;
    let len = u32::from_be_bytes([wide[0] & 0x7f, wide[1], wide[2], wide[3]]);
    Some((usize::try_from(len).ok()?, at + 4))
}

/// The name-value pairs of a PARAMS (or GET_VALUES) stream, up to the first
/// malformed or truncated one.
fn pairs(stream: &[u8]) -> Vec<(&[u8], &[u8])> {
    let mut found = Vec::new();
    let mut at = 0;
    while at < stream.len() {
        let Some((name_len, next)) = pair_length(stream, at) else {
            break;
        };
        let Some((value_len, start)) = pair_length(stream, next) else {
            break;
        };
        let Some(name_end) = start.checked_add(name_len) else {
            break;
        };
        let Some(value_end) = name_end.checked_add(value_len) else {
            break;
        };
        let (Some(name), Some(value)) =
            (stream.get(start..name_end), stream.get(name_end..value_end))
        else {
            break;
        };
        found.push((name, value));
        at = value_end;
    }
    found
}

/// The value of parameter `name`, when present and not empty.
fn param<'a>(pairs: &[(&'a [u8], &'a [u8])], name: &[u8]) -> Option<&'a [u8]> {
    pairs
        .iter()
        .find(|(found, value)| *found == name && !value.is_empty())
        .map(|&(_, value)| value)
}

/// Whether parameter `name` is volatile: listed in [`VOLATILE_PARAMS`], or
/// the CGI form (`HTTP_X_TRACE_ID`) of a volatile HTTP header
/// (`x-trace-id`).
fn is_volatile(name: &[u8], volatile_headers: &[String]) -> bool {
    if VOLATILE_PARAMS
        .iter()
        .any(|volatile| name.eq_ignore_ascii_case(volatile))
    {
        return true;
    }
    let Some(header) = name.strip_prefix(b"HTTP_") else {
        return false;
    };
    volatile_headers.iter().any(|volatile| {
        volatile.len() == header.len()
            && volatile.bytes().zip(header).all(|(left, &right)| {
                let left = if left == b'-' { b'_' } else { left };
                left.eq_ignore_ascii_case(&right)
            })
    })
}

/// Appends `query` with its parameters sorted by name (stable), as HTTP
/// normalisation does with the request target.
fn push_sorted_query(out: &mut Vec<u8>, query: &[u8]) {
    let mut parameters: Vec<&[u8]> = query.split(|&byte| byte == b'&').collect();
    parameters.sort_by_key(|parameter| {
        parameter
            .split(|&byte| byte == b'=')
            .next()
            .unwrap_or_default()
    });
    for (position, parameter) in parameters.iter().enumerate() {
        if position > 0 {
            out.push(b'&');
        }
        out.extend_from_slice(parameter);
    }
}

/// Canonical form of a BEGIN_REQUEST request:
///
/// ```text
/// METHOD SCRIPT?sorted-query\r\n
/// NAME=value\r\n       (every parameter but the volatile ones, sorted by name)
/// \r\n
/// stdin, then data
/// ```
///
/// The parameters are the header range: mostly the same boilerplate on every
/// request (server software, document root), like HTTP headers.
fn normalize_request(
    records: &[Record<'_>],
    request_id: u16,
    options: &NormalizeOptions,
) -> Normalized {
    let params_stream = stream(records, PARAMS, request_id);
    let mut params = pairs(&params_stream);
    let method = param(&params, b"REQUEST_METHOD").unwrap_or_default();
    let script = param(&params, b"SCRIPT_NAME")
        .or_else(|| param(&params, b"DOCUMENT_URI"))
        .or_else(|| {
            param(&params, b"REQUEST_URI").and_then(|uri| uri.split(|&byte| byte == b'?').next())
        })
        .unwrap_or_default();
    let query = param(&params, b"QUERY_STRING");

    let mut key = b"fastcgi ".to_vec();
    key.extend_from_slice(method);
    key.push(b' ');
    key.extend_from_slice(script);

    let mut bytes = Vec::with_capacity(params_stream.len() + 64);
    bytes.extend_from_slice(method);
    bytes.push(b' ');
    bytes.extend_from_slice(script);
    let scored_from = bytes.len();
    if let Some(query) = query {
        bytes.push(b'?');
        push_sorted_query(&mut bytes, query);
    }
    bytes.extend_from_slice(b"\r\n");

    params.retain(|(name, _)| !is_volatile(name, options.volatile_headers));
    params.sort_by_key(|&(name, _)| name);
    let header_start = bytes.len();
    for (name, value) in &params {
        bytes.extend_from_slice(name);
        bytes.push(b'=');
        bytes.extend_from_slice(value);
        bytes.extend_from_slice(b"\r\n");
    }
    let header_range = header_start..bytes.len();
    bytes.extend_from_slice(b"\r\n");
    bytes.extend(stream(records, STDIN, request_id));
    bytes.extend(stream(records, DATA, request_id));
    Normalized {
        bytes,
        header_range,
        key,
        scored_from,
    }
}

/// A one-line operation (`GET_VALUES`, `ABORT_REQUEST`): the canonical bytes
/// are the key and its sorted names, without the request id.
fn normalize_management(operation: &[u8], names: &[&[u8]]) -> Normalized {
    let mut key = b"fastcgi ".to_vec();
    key.extend_from_slice(operation);
    let mut bytes = operation.to_vec();
    let scored_from = bytes.len();
    let mut names = names.to_vec();
    names.sort();
    for name in names {
        bytes.push(b' ');
        bytes.extend_from_slice(name);
    }
    Normalized {
        bytes,
        header_range: 0..0,
        key,
        scored_from,
    }
}

/// Appends a record to `out`, unpadded.
fn push_record(out: &mut Vec<u8>, kind: u8, request_id: u16, content: &[u8]) {
    let len = u16::try_from(content.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&[VERSION_1, kind]);
    out.extend_from_slice(&request_id.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&content[..usize::from(len)]);
}

fn role_name(role: u16) -> String {
    match role {
        RESPONDER => "RESPONDER".to_owned(),
        AUTHORIZER => "AUTHORIZER".to_owned(),
        FILTER => "FILTER".to_owned(),
        other => other.to_string(),
    }
}

fn protocol_status_name(status: u8) -> String {
    match status {
        REQUEST_COMPLETE => "REQUEST_COMPLETE".to_owned(),
        1 => "CANT_MPX_CONN".to_owned(),
        2 => "OVERLOADED".to_owned(),
        3 => "UNKNOWN_ROLE".to_owned(),
        other => other.to_string(),
    }
}

/// Appends `bytes` to `out`, printable ASCII as is, anything else as `\xNN`.
fn push_escaped(out: &mut String, bytes: &[u8]) {
    for &byte in bytes {
        if byte == b' ' || byte.is_ascii_graphic() {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("\\x{byte:02x}"));
        }
    }
}

/// `bytes` as text when they are UTF-8 without control characters other
/// than line breaks and tabs; line breaks become `\n`.
fn as_text(bytes: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(bytes).ok()?;
    text.chars()
        .all(|c| !c.is_control() || matches!(c, '\r' | '\n' | '\t'))
        .then(|| text.replace("\r\n", "\n"))
}

/// Renders the streams and records of `bytes`, one line per record or
/// stream (a stream is shown once, when its empty record or the END_REQUEST
/// ends it, or at the end of the bytes).
fn render_records(records: &[Record<'_>]) -> Vec<String> {
    let mut lines = Vec::new();
    // The stream being collected: its type and content so far.
    let mut open: Option<(u8, Vec<u8>)> = None;
    for record in records {
        if open.as_ref().is_some_and(|(kind, _)| *kind != record.kind) {
            lines.extend(
                open.take()
                    .map(|(kind, content)| render_stream(kind, &content)),
            );
        }
        match record.kind {
            PARAMS | STDIN | STDOUT | STDERR | DATA => {
                let (_, content) = open.get_or_insert_with(|| (record.kind, Vec::new()));
                content.extend_from_slice(record.content);
                if record.content.is_empty() {
                    lines.extend(
                        open.take()
                            .map(|(kind, content)| render_stream(kind, &content)),
                    );
                }
            }
            _ => lines.push(render_record(record)),
        }
    }
    lines.extend(open.map(|(kind, content)| render_stream(kind, &content)));
    lines
}

fn render_stream(kind: u8, content: &[u8]) -> String {
    let mut line = String::new();
    match kind {
        PARAMS => {
            let mut params = pairs(content);
            params.sort_by_key(|&(name, _)| name);
            line.push_str("PARAMS");
            for (name, value) in params {
                line.push(' ');
                push_escaped(&mut line, name);
                line.push('=');
                push_escaped(&mut line, value);
            }
        }
        STDOUT => match as_text(content) {
            // The CGI output as it is: header lines, blank line, body.
            Some(text) => line.push_str(text.trim_end_matches('\n')),
            None => line.push_str(&format!("STDOUT {} bytes", content.len())),
        },
        _ => {
            let name = match kind {
                STDIN => "STDIN",
                STDERR => "STDERR",
                _ => "DATA",
            };
            line.push_str(&format!("{name} {} bytes", content.len()));
            if let Some(text) = as_text(content).filter(|text| !text.is_empty()) {
                line.push('\n');
                line.push_str(text.trim_end_matches('\n'));
            }
        }
    }
    line
}

fn render_record(record: &Record<'_>) -> String {
    let id = record.request_id;
    match record.kind {
        BEGIN_REQUEST => match begin_body(record.content) {
            Some(begin) => format!(
                "BEGIN_REQUEST id={id} role={} keep_conn={}",
                role_name(begin.role),
                begin.flags & KEEP_CONN != 0
            ),
            None => format!("BEGIN_REQUEST id={id} (malformed)"),
        },
        ABORT_REQUEST => format!("ABORT_REQUEST id={id}"),
        END_REQUEST => match *record.content {
            [a, b, c, d, status, ..] => {
                let app_status = u32::from_be_bytes([a, b, c, d]);
                if status == REQUEST_COMPLETE {
                    format!("END_REQUEST app_status={app_status}")
                } else {
                    format!(
                        "END_REQUEST app_status={app_status} protocol_status={}",
                        protocol_status_name(status)
                    )
                }
            }
            _ => format!("END_REQUEST id={id} (malformed)"),
        },
        GET_VALUES | GET_VALUES_RESULT => {
            let mut line = if record.kind == GET_VALUES {
                "GET_VALUES".to_owned()
            } else {
                "GET_VALUES_RESULT".to_owned()
            };
            for (name, value) in pairs(record.content) {
                line.push(' ');
                push_escaped(&mut line, name);
                if record.kind == GET_VALUES_RESULT {
                    line.push('=');
                    push_escaped(&mut line, value);
                }
            }
            line
        }
        _ => format!(
            "UNKNOWN_TYPE type={}",
            record.content.first().copied().unwrap_or_default()
        ),
    }
}

impl Protocol for FastCgi {
    fn name(&self) -> &'static str {
        "fastcgi"
    }

    /// A well-formed BEGIN_REQUEST header (and role, once its body is
    /// there) or a GET_VALUES management record.
    fn detect_request(&self, bytes: &[u8]) -> bool {
        let Some(header) = bytes.get(..HEADER_LEN) else {
            return false;
        };
        if header[0] != VERSION_1 {
            return false;
        }
        match header[1] {
            BEGIN_REQUEST => {
                let content_len = u16::from_be_bytes([header[4], header[5]]);
                let role = match bytes.get(HEADER_LEN..HEADER_LEN + 2) {
                    Some(&[high, low]) => u16::from_be_bytes([high, low]),
                    _ => RESPONDER,
                };
                content_len == 8 && (RESPONDER..=FILTER).contains(&role)
            }
            GET_VALUES => header[2..4] == [0, 0],
            _ => false,
        }
    }

    /// BEGIN_REQUEST and its streams up to and including their empty
    /// records; GET_VALUES and ABORT_REQUEST are one record each. Waiting
    /// for the empty STDIN record matters: the application reads it, so a
    /// request cut before it would leave bytes that belong to no request.
    fn frame_request(&self, bytes: &[u8]) -> Completeness {
        let first = match next_record(bytes) {
            Next::Record(record) => record,
            Next::NeedMore => return Completeness::NeedMore,
            Next::Invalid => return Completeness::Unknown,
        };
        match first.kind {
            GET_VALUES | ABORT_REQUEST => Completeness::Complete(first.len),
            BEGIN_REQUEST => match begin_body(first.content) {
                Some(begin) => frame_streams(bytes, first, begin.role),
                None => Completeness::Unknown,
            },
            _ => Completeness::Unknown,
        }
    }

    /// STDOUT and STDERR records up to and including the END_REQUEST of the
    /// request's id (php-fpm sends no empty STDOUT before it); one
    /// GET_VALUES_RESULT for GET_VALUES.
    fn frame_response(&self, request: &[u8], bytes: &[u8]) -> Completeness {
        let Next::Record(request) = next_record(request) else {
            return Completeness::Unknown;
        };
        match request.kind {
            GET_VALUES => match next_record(bytes) {
                Next::Record(record) if matches!(record.kind, GET_VALUES_RESULT | UNKNOWN_TYPE) => {
                    Completeness::Complete(record.len)
                }
                Next::NeedMore => Completeness::NeedMore,
                _ => Completeness::Unknown,
            },
            BEGIN_REQUEST | ABORT_REQUEST => {
                let mut at = 0;
                loop {
                    let record = match next_record(&bytes[at..]) {
                        Next::Record(record) => record,
                        Next::NeedMore => return Completeness::NeedMore,
                        Next::Invalid => return Completeness::Unknown,
                    };
                    if record.request_id != request.request_id {
                        return Completeness::Unknown;
                    }
                    at += record.len;
                    match record.kind {
                        STDOUT | STDERR => {}
                        END_REQUEST => return Completeness::Complete(at),
                        _ => return Completeness::Unknown,
                    }
                }
            }
            _ => Completeness::Unknown,
        }
    }

    /// Key `fastcgi METHOD SCRIPT`; canonical bytes built from the streams,
    /// so the request id, padding and record boundaries do not matter (see
    /// `normalize_request`).
    fn normalize(&self, request: &[u8], options: &NormalizeOptions) -> Option<Normalized> {
        let (records, _) = records(request);
        let first = records.first()?;
        match first.kind {
            BEGIN_REQUEST => Some(normalize_request(&records, first.request_id, options)),
            GET_VALUES => {
                let names: Vec<&[u8]> = pairs(first.content)
                    .into_iter()
                    .map(|(name, _)| name)
                    .collect();
                Some(normalize_management(b"GET_VALUES", &names))
            }
            ABORT_REQUEST => Some(normalize_management(b"ABORT_REQUEST", &[])),
            _ => None,
        }
    }

    /// GET_VALUES asks the application for its limits (connections,
    /// multiplexing), not for a page.
    fn is_setup(&self, request: &[u8]) -> bool {
        matches!(next_record(request), Next::Record(record) if record.kind == GET_VALUES)
    }

    /// A CGI `502 Bad Gateway` response on STDOUT, the empty STDOUT record
    /// and END_REQUEST (app status 0, request complete), for the request's
    /// id. `None` for GET_VALUES, which has no error shape.
    fn error_reply(&self, request: &[u8], message: &str) -> Option<Vec<u8>> {
        let Next::Record(first) = next_record(request) else {
            return None;
        };
        if !matches!(first.kind, BEGIN_REQUEST | ABORT_REQUEST) {
            return None;
        }
        let id = first.request_id;
        let mut output = b"Status: 502 Bad Gateway\r\nContent-Type: text/plain\r\n\r\n".to_vec();
        output.extend_from_slice(message.as_bytes());
        let mut reply = Vec::with_capacity(output.len() + 4 * HEADER_LEN);
        // A record holds at most 65535 bytes: a longer message is cut.
        push_record(&mut reply, STDOUT, id, &output);
        push_record(&mut reply, STDOUT, id, &[]);
        push_record(
            &mut reply,
            END_REQUEST,
            id,
            &[0, 0, 0, 0, REQUEST_COMPLETE, 0, 0, 0],
        );
        Some(reply)
    }

    /// Without FCGI_KEEP_CONN in BEGIN_REQUEST the application closes the
    /// connection once it has sent END_REQUEST (nginx without
    /// `fastcgi_keep_conn on`).
    fn closes_after(&self, request: &[u8], _response: &[u8]) -> bool {
        begin_of(request).is_some_and(|begin| begin.flags & KEEP_CONN == 0)
    }

    /// The CGI output (STDOUT) as an HTTP/1.1 response: the `Status:`
    /// header becomes the status line (`200 OK` without one); STDERR text and
    /// a non-zero application status become `FastCGI-Stderr` and
    /// `FastCGI-App-Status` headers. Record boundaries, request ids, padding
    /// and reserved bytes (php-fpm leaves END_REQUEST's unset) do not count.
    fn comparable_response(&self, _request: &[u8], response: &[u8]) -> Option<Vec<u8>> {
        let (records, _) = records(response);
        let end = records.iter().find(|record| record.kind == END_REQUEST)?;
        let collect = |kind: u8| -> Vec<u8> {
            records
                .iter()
                .filter(|record| record.kind == kind)
                .flat_map(|record| record.content.iter().copied())
                .collect()
        };
        let (stdout, stderr) = (collect(STDOUT), collect(STDERR));
        let head_end = stdout
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|at| (at, at + 4))
            .or_else(|| {
                stdout
                    .windows(2)
                    .position(|w| w == b"\n\n")
                    .map(|at| (at, at + 2))
            })
            .unwrap_or((0, 0));
        let (head, body) = (&stdout[..head_end.0], &stdout[head_end.1..]);
        let mut status = b"200 OK".to_vec();
        let mut headers = Vec::new();
        for line in head.split(|&byte| byte == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            match line.split_at_checked(7) {
                Some((name, value)) if name.eq_ignore_ascii_case(b"status:") => {
                    status = value.trim_ascii().to_vec();
                }
                _ if !line.is_empty() => {
                    headers.extend_from_slice(line);
                    headers.extend_from_slice(b"\r\n");
                }
                _ => {}
            }
        }
        if !stderr.is_empty() {
            headers.extend_from_slice(b"FastCGI-Stderr: ");
            headers.extend(stderr.escape_ascii());
            headers.extend_from_slice(b"\r\n");
        }
        let app_status = end.content.get(..4).map_or(0, |bytes| {
            u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
        });
        if app_status != 0 {
            headers.extend_from_slice(format!("FastCGI-App-Status: {app_status}\r\n").as_bytes());
        }
        let mut http = b"HTTP/1.1 ".to_vec();
        http.extend_from_slice(&status);
        http.extend_from_slice(b"\r\n");
        http.extend_from_slice(&headers);
        http.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
        http.extend_from_slice(body);
        Some(http)
    }

    fn render(&self, bytes: &[u8], _side: Side) -> Option<String> {
        let (records, end) = records(bytes);
        if records.is_empty() {
            return None;
        }
        let mut lines = render_records(&records);
        if end < bytes.len() {
            lines.push(format!("({} more bytes)", bytes.len() - end));
        }
        Some(lines.join("\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Unit, split_exchange};

    // Captured on loopback from nginx 1.22.1 (`fastcgi_pass`, Debian's
    // fastcgi_params) in front of php-fpm 8.2 running
    // `echo "hello ", $_GET['name'] ?? 'world', " ", file_get_contents('php://input'), "\n";`.
    // GET /index.php?name=koala without keep-conn; POST /index.php?x=1 with
    // body `a=1&b=2`; then two GETs (?name=a, ?name=b) on one connection
    // with `fastcgi_keep_conn on`.
    const GET_REQUEST: &str = "\
        0101000100080000000100000000000001040001020800000c0a51554552595f535452494e476e616d653d6b\
        6f616c610e03524551554553545f4d4554484f444745540c00434f4e54454e545f545950450e00434f4e5445\
        4e545f4c454e4754480b0a5343524950545f4e414d452f696e6465782e7068700b15524551554553545f5552\
        492f696e6465782e7068703f6e616d653d6b6f616c610c0a444f43554d454e545f5552492f696e6465782e70\
        68700d11444f43554d454e545f524f4f542f746d702f666367692d6361702f7777770f085345525645525f50\
        524f544f434f4c485454502f312e310e04524551554553545f534348454d4568747470110747415445574159\
        5f494e544552464143454347492f312e310f0c5345525645525f534f4654574152456e67696e782f312e3232\
        2e310b0952454d4f54455f414444523132372e302e302e310b0552454d4f54455f504f525435373934340b00\
        52454d4f54455f555345520b095345525645525f414444523132372e302e302e310b055345525645525f504f\
        525433333732350b005345525645525f4e414d450f0352454449524543545f53544154555332303009094854\
        54505f484f53543132372e302e302e310f1b5343524950545f46494c454e414d452f746d702f666367692d63\
        61702f7777772f696e6465782e7068700f0b485454505f555345525f4147454e546375726c2f372e38382e31\
        0b03485454505f4143434550542a2f2a01040001000000000105000100000000\
    ";
    const GET_RESPONSE: &str = "\
        0106000100370100436f6e74656e742d747970653a20746578742f68746d6c3b20636861727365743d555446\
        2d380d0a0d0a68656c6c6f206b6f616c61200a0001030001000800000000000000000000\
    ";
    const POST_REQUEST: &str = "\
        0101000100080000000100000000000001040001026701000c0351554552595f535452494e47783d310e0452\
        4551554553545f4d4554484f44504f53540c21434f4e54454e545f545950456170706c69636174696f6e2f78\
        2d7777772d666f726d2d75726c656e636f6465640e01434f4e54454e545f4c454e475448370b0a5343524950\
        545f4e414d452f696e6465782e7068700b0e524551554553545f5552492f696e6465782e7068703f783d310c\
        0a444f43554d454e545f5552492f696e6465782e7068700d11444f43554d454e545f524f4f542f746d702f66\
        6367692d6361702f7777770f085345525645525f50524f544f434f4c485454502f312e310e04524551554553\
        545f534348454d45687474701107474154455741595f494e544552464143454347492f312e310f0c53455256\
        45525f534f4654574152456e67696e782f312e32322e310b0952454d4f54455f414444523132372e302e302e\
        310b0552454d4f54455f504f525435373934360b0052454d4f54455f555345520b095345525645525f414444\
        523132372e302e302e310b055345525645525f504f525433333732350b005345525645525f4e414d450f0352\
        454449524543545f5354415455533230300909485454505f484f53543132372e302e302e310f1b5343524950\
        545f46494c454e414d452f746d702f666367692d6361702f7777772f696e6465782e7068700f0b485454505f\
        555345525f4147454e546375726c2f372e38382e310b03485454505f4143434550542a2f2a1301485454505f\
        434f4e54454e545f4c454e475448371121485454505f434f4e54454e545f545950456170706c69636174696f\
        6e2f782d7777772d666f726d2d75726c656e636f6465640001040001000000000105000100070100613d3126\
        623d32000105000100000000\
    ";
    const POST_RESPONSE: &str = "\
        01060001003e0200436f6e74656e742d747970653a20746578742f68746d6c3b20636861727365743d555446\
        2d380d0a0d0a68656c6c6f20776f726c6420613d3126623d320a000001030001000800000000000000000000\
    ";
    const KEEP_REQUEST_A: &str = "\
        0101000100080000000101000000000001040001020000000c0651554552595f535452494e476e616d653d61\
        0e03524551554553545f4d4554484f444745540c00434f4e54454e545f545950450e00434f4e54454e545f4c\
        454e4754480b0a5343524950545f4e414d452f696e6465782e7068700b11524551554553545f5552492f696e\
        6465782e7068703f6e616d653d610c0a444f43554d454e545f5552492f696e6465782e7068700d11444f4355\
        4d454e545f524f4f542f746d702f666367692d6361702f7777770f085345525645525f50524f544f434f4c48\
        5454502f312e310e04524551554553545f534348454d45687474701107474154455741595f494e5445524641\
        43454347492f312e310f0c5345525645525f534f4654574152456e67696e782f312e32322e310b0952454d4f\
        54455f414444523132372e302e302e310b0552454d4f54455f504f525435373732340b0052454d4f54455f55\
        5345520b095345525645525f414444523132372e302e302e310b055345525645525f504f525433333732350b\
        005345525645525f4e414d450f0352454449524543545f5354415455533230300909485454505f484f535431\
        32372e302e302e310f1b5343524950545f46494c454e414d452f746d702f666367692d6361702f7777772f69\
        6e6465782e7068700f0b485454505f555345525f4147454e546375726c2f372e38382e310b03485454505f41\
        43434550542a2f2a01040001000000000105000100000000\
    ";
    const KEEP_RESPONSE_A: &str = "\
        0106000100330500436f6e74656e742d747970653a20746578742f68746d6c3b20636861727365743d555446\
        2d380d0a0d0a68656c6c6f2061200a000000000001030001000800000000000000080000\
    ";
    const KEEP_REQUEST_B: &str = "\
        0101000100080000000101000000000001040001020000000c0651554552595f535452494e476e616d653d62\
        0e03524551554553545f4d4554484f444745540c00434f4e54454e545f545950450e00434f4e54454e545f4c\
        454e4754480b0a5343524950545f4e414d452f696e6465782e7068700b11524551554553545f5552492f696e\
        6465782e7068703f6e616d653d620c0a444f43554d454e545f5552492f696e6465782e7068700d11444f4355\
        4d454e545f524f4f542f746d702f666367692d6361702f7777770f085345525645525f50524f544f434f4c48\
        5454502f312e310e04524551554553545f534348454d45687474701107474154455741595f494e5445524641\
        43454347492f312e310f0c5345525645525f534f4654574152456e67696e782f312e32322e310b0952454d4f\
        54455f414444523132372e302e302e310b0552454d4f54455f504f525435373733340b0052454d4f54455f55\
        5345520b095345525645525f414444523132372e302e302e310b055345525645525f504f525433333732350b\
        005345525645525f4e414d450f0352454449524543545f5354415455533230300909485454505f484f535431\
        32372e302e302e310f1b5343524950545f46494c454e414d452f746d702f666367692d6361702f7777772f69\
        6e6465782e7068700f0b485454505f555345525f4147454e546375726c2f372e38382e310b03485454505f41\
        43434550542a2f2a01040001000000000105000100000000\
    ";
    const KEEP_RESPONSE_B: &str = "\
        0106000100330500436f6e74656e742d747970653a20746578742f68746d6c3b20636861727365743d555446\
        2d380d0a0d0a68656c6c6f2062200a000000000001030001000800000000000000080000\
    ";

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|at| u8::from_str_radix(&text[at..at + 2], 16).expect("hex"))
            .collect()
    }

    fn record(kind: u8, id: u16, content: &[u8], padding: u8) -> Vec<u8> {
        let mut bytes = vec![1, kind];
        bytes.extend_from_slice(&id.to_be_bytes());
        bytes.extend_from_slice(&(content.len() as u16).to_be_bytes());
        bytes.extend_from_slice(&[padding, 0]);
        bytes.extend_from_slice(content);
        bytes.extend(std::iter::repeat_n(0, usize::from(padding)));
        bytes
    }

    fn length(len: usize) -> Vec<u8> {
        if len < 128 {
            vec![len as u8]
        } else {
            ((len as u32) | 0x8000_0000).to_be_bytes().to_vec()
        }
    }

    fn pairs_bytes(pairs: &[(&str, &str)]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for (name, value) in pairs {
            bytes.extend(length(name.len()));
            bytes.extend(length(value.len()));
            bytes.extend_from_slice(name.as_bytes());
            bytes.extend_from_slice(value.as_bytes());
        }
        bytes
    }

    fn begin(id: u16, role: u16, keep_conn: bool) -> Vec<u8> {
        let mut body = role.to_be_bytes().to_vec();
        body.extend_from_slice(&[u8::from(keep_conn), 0, 0, 0, 0, 0]);
        record(BEGIN_REQUEST, id, &body, 0)
    }

    const API_PARAMS: &[(&str, &str)] = &[
        ("REQUEST_METHOD", "POST"),
        ("SCRIPT_NAME", "/api.php"),
        ("QUERY_STRING", "b=2&a=1"),
        ("REMOTE_PORT", "51234"),
        ("HTTP_X_TRACE_ID", "abc"),
        ("CONTENT_LENGTH", "5"),
    ];

    /// An nginx-style request: BEGIN, PARAMS in the given pieces, empty
    /// PARAMS, STDIN `hello` in the given pieces, empty STDIN.
    fn api_request(id: u16, params_cuts: &[usize], stdin_cuts: &[usize], padding: u8) -> Vec<u8> {
        let mut bytes = begin(id, RESPONDER, false);
        let params = pairs_bytes(API_PARAMS);
        for piece in pieces(&params, params_cuts) {
            bytes.extend(record(PARAMS, id, piece, padding));
        }
        bytes.extend(record(PARAMS, id, b"", 0));
        for piece in pieces(b"hello", stdin_cuts) {
            bytes.extend(record(STDIN, id, piece, padding));
        }
        bytes.extend(record(STDIN, id, b"", 0));
        bytes
    }

    fn pieces<'a>(bytes: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
        let mut found = Vec::new();
        let mut at = 0;
        for &cut in cuts {
            found.push(&bytes[at..cut]);
            at = cut;
        }
        found.push(&bytes[at..]);
        found
    }

    fn options(volatile: &[String]) -> NormalizeOptions<'_> {
        NormalizeOptions {
            volatile_headers: volatile,
        }
    }

    #[test]
    fn detects_begin_request_and_get_values_only() {
        assert!(FastCgi.detect_request(&hex(GET_REQUEST)));
        assert!(FastCgi.detect_request(&hex(GET_REQUEST)[..8]));
        assert!(FastCgi.detect_request(&record(
            GET_VALUES,
            0,
            &pairs_bytes(&[("FCGI_MAX_CONNS", "")]),
            0
        )));
        assert!(!FastCgi.detect_request(b"GET / HTTP/1.1\r\n\r\n"));
        assert!(!FastCgi.detect_request(&hex(GET_REQUEST)[..7]));
        // Version 2, role 4, a PARAMS record first, a BEGIN of 9 bytes.
        let mut version_2 = hex(GET_REQUEST);
        version_2[0] = 2;
        assert!(!FastCgi.detect_request(&version_2));
        assert!(!FastCgi.detect_request(&begin(1, 4, false)));
        assert!(!FastCgi.detect_request(&record(PARAMS, 1, b"", 0)));
        assert!(!FastCgi.detect_request(&record(
            BEGIN_REQUEST,
            1,
            &[0, 1, 0, 0, 0, 0, 0, 0, 0],
            0
        )));
        assert_eq!(
            crate::detect_request(&hex(GET_REQUEST)).map(|p| p.name()),
            Some("fastcgi")
        );
    }

    #[test]
    fn frames_nginx_requests_and_every_prefix_needs_more() {
        for (vector, len) in [
            (GET_REQUEST, 560),
            (POST_REQUEST, 672),
            (KEEP_REQUEST_A, 552),
        ] {
            let request = hex(vector);
            assert_eq!(request.len(), len);
            assert_eq!(FastCgi.frame_request(&request), Completeness::Complete(len));
            for end in 0..len {
                assert_eq!(
                    FastCgi.frame_request(&request[..end]),
                    Completeness::NeedMore,
                    "{vector:.20} cut at {end}"
                );
            }
        }
    }

    #[test]
    fn request_without_its_empty_stdin_record_needs_more() {
        // What php-fpm had not yet read when it answered: the request ends
        // with the empty STDIN record `01 05 00 01 00 00 00 00`.
        let request = hex(GET_REQUEST);
        assert_eq!(&request[552..], &[1, 5, 0, 1, 0, 0, 0, 0]);
        assert_eq!(
            FastCgi.frame_request(&request[..552]),
            Completeness::NeedMore
        );
        let post = hex(POST_REQUEST);
        assert_eq!(
            FastCgi.frame_request(&post[..post.len() - 8]),
            Completeness::NeedMore
        );
    }

    #[test]
    fn frames_two_requests_on_one_connection_one_by_one() {
        let mut both = hex(KEEP_REQUEST_A);
        both.extend(hex(KEEP_REQUEST_B));
        assert_eq!(FastCgi.frame_request(&both), Completeness::Complete(552));
        assert_eq!(
            FastCgi.frame_request(&both[552..]),
            Completeness::Complete(552)
        );

        let mut responses = hex(KEEP_RESPONSE_A);
        responses.extend(hex(KEEP_RESPONSE_B));
        assert_eq!(
            split_exchange(&FastCgi, &both, &responses),
            Some(vec![
                Unit {
                    request: 0..552,
                    response: 0..80,
                },
                Unit {
                    request: 552..1104,
                    response: 80..160,
                },
            ])
        );
    }

    #[test]
    fn frames_php_fpm_responses_to_end_request() {
        for (request, response, len) in [
            (GET_REQUEST, GET_RESPONSE, 80),
            (POST_REQUEST, POST_RESPONSE, 88),
            (KEEP_REQUEST_A, KEEP_RESPONSE_A, 80),
        ] {
            let (request, response) = (hex(request), hex(response));
            assert_eq!(
                FastCgi.frame_response(&request, &response),
                Completeness::Complete(len)
            );
            for end in 0..len {
                assert_eq!(
                    FastCgi.frame_response(&request, &response[..end]),
                    Completeness::NeedMore
                );
            }
        }
        // STDERR, an empty STDOUT, then END_REQUEST: all one response.
        let request = api_request(3, &[], &[], 0);
        let mut response = record(STDERR, 3, b"PHP Notice: x", 3);
        response.extend(record(STDOUT, 3, b"Status: 200 OK\r\n\r\nok", 0));
        response.extend(record(STDOUT, 3, b"", 0));
        response.extend(record(END_REQUEST, 3, &[0, 0, 0, 0, 0, 0, 0, 0], 0));
        let len = response.len();
        response.extend(b"trailing");
        assert_eq!(
            FastCgi.frame_response(&request, &response),
            Completeness::Complete(len)
        );
        // Records of another request id are not this response.
        let other = record(END_REQUEST, 4, &[0, 0, 0, 0, 0, 0, 0, 0], 0);
        assert_eq!(
            FastCgi.frame_response(&request, &other),
            Completeness::Unknown
        );
        assert_eq!(
            FastCgi.frame_response(b"junk", &hex(GET_RESPONSE)),
            Completeness::Unknown
        );
    }

    #[test]
    fn roles_decide_which_streams_end_a_request() {
        // A filter also sends DATA up to its empty record.
        let mut filter = begin(1, FILTER, false);
        filter.extend(record(PARAMS, 1, b"", 0));
        filter.extend(record(STDIN, 1, b"", 0));
        assert_eq!(FastCgi.frame_request(&filter), Completeness::NeedMore);
        filter.extend(record(DATA, 1, b"file", 4));
        filter.extend(record(DATA, 1, b"", 0));
        assert_eq!(
            FastCgi.frame_request(&filter),
            Completeness::Complete(filter.len())
        );
        // An authorizer gets no stdin.
        let mut authorizer = begin(1, AUTHORIZER, true);
        authorizer.extend(record(PARAMS, 1, b"", 0));
        assert_eq!(
            FastCgi.frame_request(&authorizer),
            Completeness::Complete(24)
        );
        // A record of another request, or a response record, is no part of it.
        let mut mixed = begin(1, RESPONDER, false);
        mixed.extend(record(PARAMS, 2, b"", 0));
        assert_eq!(FastCgi.frame_request(&mixed), Completeness::Unknown);
        let mut wrong = begin(1, RESPONDER, false);
        wrong.extend(record(STDOUT, 1, b"", 0));
        assert_eq!(FastCgi.frame_request(&wrong), Completeness::Unknown);
        // ABORT_REQUEST ends a request early, and is a request of its own.
        let mut aborted = begin(1, RESPONDER, false);
        aborted.extend(record(ABORT_REQUEST, 1, b"", 0));
        assert_eq!(FastCgi.frame_request(&aborted), Completeness::Complete(24));
        assert_eq!(
            FastCgi.frame_request(&record(ABORT_REQUEST, 1, b"", 0)),
            Completeness::Complete(8)
        );
        assert_eq!(
            FastCgi.frame_request(&begin(1, 4, false)),
            Completeness::Unknown
        );
        assert_eq!(
            FastCgi.frame_request(b"GET / HTTP/1.1\r\n"),
            Completeness::Unknown
        );
    }

    #[test]
    fn get_values_is_set_up_answered_by_one_record() {
        let request = record(
            GET_VALUES,
            0,
            &pairs_bytes(&[("FCGI_MPXS_CONNS", ""), ("FCGI_MAX_CONNS", "")]),
            0,
        );
        assert_eq!(
            FastCgi.frame_request(&request),
            Completeness::Complete(request.len())
        );
        assert!(FastCgi.is_setup(&request));
        assert!(!FastCgi.is_setup(&hex(GET_REQUEST)));
        let response = record(
            GET_VALUES_RESULT,
            0,
            &pairs_bytes(&[("FCGI_MAX_CONNS", "1"), ("FCGI_MPXS_CONNS", "0")]),
            3,
        );
        assert_eq!(
            FastCgi.frame_response(&request, &response),
            Completeness::Complete(response.len())
        );
        assert_eq!(
            FastCgi.frame_response(&request, &response[..5]),
            Completeness::NeedMore
        );
        let normalized = FastCgi.normalize(&request, &options(&[])).expect("fastcgi");
        assert_eq!(normalized.key, b"fastcgi GET_VALUES");
        assert_eq!(
            normalized.bytes,
            b"GET_VALUES FCGI_MAX_CONNS FCGI_MPXS_CONNS"
        );
        assert_eq!(normalized.scored_from, 10);
        assert_eq!(
            FastCgi.render(&response, Side::Response).as_deref(),
            Some("GET_VALUES_RESULT FCGI_MAX_CONNS=1 FCGI_MPXS_CONNS=0")
        );
    }

    #[test]
    fn closes_after_unless_keep_conn() {
        assert!(FastCgi.closes_after(&hex(GET_REQUEST), &hex(GET_RESPONSE)));
        assert!(FastCgi.closes_after(&hex(POST_REQUEST), &hex(POST_RESPONSE)));
        assert!(!FastCgi.closes_after(&hex(KEEP_REQUEST_A), &hex(KEEP_RESPONSE_A)));
        assert!(!FastCgi.closes_after(&record(GET_VALUES, 0, b"", 0), b""));
        assert!(!FastCgi.closes_after(b"", b""));
    }

    #[test]
    fn normalizes_to_sorted_params_then_body() {
        let request = api_request(1, &[], &[], 0);
        let normalized = FastCgi.normalize(&request, &options(&[])).expect("fastcgi");
        assert_eq!(normalized.key, b"fastcgi POST /api.php");
        let expected: &[u8] = b"POST /api.php?a=1&b=2\r\n\
            CONTENT_LENGTH=5\r\n\
            HTTP_X_TRACE_ID=abc\r\n\
            QUERY_STRING=b=2&a=1\r\n\
            REQUEST_METHOD=POST\r\n\
            SCRIPT_NAME=/api.php\r\n\
            \r\n\
            hello";
        assert_eq!(normalized.bytes, expected);
        assert_eq!(normalized.scored_from, b"POST /api.php".len());
        assert_eq!(normalized.header_range, 23..expected.len() - 7);
        // A volatile HTTP header is dropped in its CGI form.
        let volatile = vec!["x-trace-id".to_owned()];
        let normalized = FastCgi
            .normalize(&request, &options(&volatile))
            .expect("fastcgi");
        let expected: &[u8] = b"POST /api.php?a=1&b=2\r\n\
            CONTENT_LENGTH=5\r\n\
            QUERY_STRING=b=2&a=1\r\n\
            REQUEST_METHOD=POST\r\n\
            SCRIPT_NAME=/api.php\r\n\
            \r\n\
            hello";
        assert_eq!(normalized.bytes, expected);
    }

    #[test]
    fn request_id_padding_and_record_boundaries_do_not_matter() {
        let reference = FastCgi
            .normalize(&api_request(1, &[], &[], 0), &options(&[]))
            .expect("fastcgi");
        // Cut inside a name, inside a length, between pairs; stdin in three.
        for request in [
            api_request(0x1234, &[], &[], 0),
            api_request(1, &[], &[], 7),
            api_request(1, &[1, 20, 33], &[2, 3], 0),
            api_request(9, &[15], &[4], 5),
        ] {
            assert_eq!(
                FastCgi.normalize(&request, &options(&[])).as_ref(),
                Some(&reference)
            );
        }
    }

    #[test]
    fn real_requests_differing_only_in_remote_port_normalize_the_same() {
        // The second GET asked for ?name=b from another client port; asking
        // it for ?name=a leaves the client port as the only difference.
        let a = hex(KEEP_REQUEST_A);
        let b_as_a: Vec<u8> = String::from_utf8_lossy(&hex(KEEP_REQUEST_B))
            .replace("name=b", "name=a")
            .into_bytes();
        assert_ne!(a, b_as_a);
        assert_eq!(a.len(), b_as_a.len());
        let left = FastCgi.normalize(&a, &options(&[])).expect("fastcgi");
        let right = FastCgi.normalize(&b_as_a, &options(&[])).expect("fastcgi");
        assert_eq!(left, right);
        assert_eq!(left.key, b"fastcgi GET /index.php");
        assert!(
            left.bytes
                .starts_with(b"GET /index.php?name=a\r\nCONTENT_LENGTH=\r\n")
        );
        let b = FastCgi
            .normalize(&hex(KEEP_REQUEST_B), &options(&[]))
            .expect("fastcgi");
        assert_eq!(b.key, left.key);
        assert_ne!(b.bytes, left.bytes);
    }

    #[test]
    fn error_reply_is_a_cgi_502_for_the_request_id() {
        let request = api_request(0x0102, &[], &[], 0);
        let reply = FastCgi.error_reply(&request, "no match").expect("reply");
        let output: &[u8] = b"Status: 502 Bad Gateway\r\nContent-Type: text/plain\r\n\r\nno match";
        let mut expected = vec![1, STDOUT, 1, 2, 0, output.len() as u8, 0, 0];
        expected.extend_from_slice(output);
        expected.extend_from_slice(&[1, STDOUT, 1, 2, 0, 0, 0, 0]);
        expected.extend_from_slice(&[1, END_REQUEST, 1, 2, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(reply, expected);
        assert_eq!(
            FastCgi.frame_response(&request, &reply),
            Completeness::Complete(reply.len())
        );
        assert_eq!(
            FastCgi.error_reply(&record(GET_VALUES, 0, b"", 0), "x"),
            None
        );
        assert_eq!(FastCgi.error_reply(b"GET / HTTP/1.1\r\n", "x"), None);
        // A message longer than a record holds is cut, not a panic.
        let long = FastCgi
            .error_reply(&request, &"x".repeat(70_000))
            .expect("reply");
        assert_eq!(&long[4..6], &[0xff, 0xff]);
        assert_eq!(
            FastCgi.frame_response(&request, &long),
            Completeness::Complete(long.len())
        );
    }

    #[test]
    fn renders_requests_and_responses() {
        let mut request = begin(1, RESPONDER, false);
        request.extend(record(
            PARAMS,
            1,
            &pairs_bytes(&[
                ("SCRIPT_FILENAME", "/www/index.php"),
                ("REQUEST_METHOD", "GET"),
            ]),
            0,
        ));
        request.extend(record(PARAMS, 1, b"", 0));
        request.extend(record(STDIN, 1, b"", 0));
        assert_eq!(
            FastCgi.render(&request, Side::Request).as_deref(),
            Some(
                "BEGIN_REQUEST id=1 role=RESPONDER keep_conn=false\n\
                 PARAMS REQUEST_METHOD=GET SCRIPT_FILENAME=/www/index.php\n\
                 STDIN 0 bytes"
            )
        );
        assert_eq!(
            FastCgi
                .render(&hex(POST_RESPONSE), Side::Response)
                .as_deref(),
            Some(
                "Content-type: text/html; charset=UTF-8\n\
                 \n\
                 hello world a=1&b=2\n\
                 END_REQUEST app_status=0"
            )
        );
        let post = FastCgi
            .render(&hex(POST_REQUEST), Side::Request)
            .expect("fastcgi");
        assert!(post.starts_with(
            "BEGIN_REQUEST id=1 role=RESPONDER keep_conn=false\nPARAMS CONTENT_LENGTH=7 "
        ));
        assert!(post.ends_with("\nSTDIN 7 bytes\na=1&b=2"), "{post}");
        let mut cut = hex(GET_RESPONSE);
        cut.truncate(70);
        assert_eq!(
            FastCgi.render(&cut, Side::Response).as_deref(),
            Some("Content-type: text/html; charset=UTF-8\n\nhello koala \n(6 more bytes)")
        );
        assert_eq!(FastCgi.render(b"GET / HTTP/1.1\r\n", Side::Request), None);
    }

    #[test]
    fn never_panics_on_cut_or_corrupted_bytes() {
        let mut inputs = vec![hex(GET_REQUEST), hex(GET_RESPONSE), hex(POST_REQUEST)];
        let mut corrupted = hex(POST_REQUEST);
        for at in (0..corrupted.len()).step_by(7) {
            corrupted[at] ^= 0xa5;
            inputs.push(corrupted.clone());
        }
        // Four-byte pair lengths claiming nearly 2^31 bytes.
        let mut huge = begin(1, RESPONDER, false);
        huge.extend(record(
            PARAMS,
            1,
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, b'x'],
            0,
        ));
        inputs.push(huge);
        let volatile = vec!["x-trace-id".to_owned(), String::new()];
        for input in &inputs {
            for end in 0..=input.len() {
                let bytes = &input[..end];
                FastCgi.detect_request(bytes);
                FastCgi.frame_request(bytes);
                FastCgi.frame_response(bytes, bytes);
                FastCgi.normalize(bytes, &options(&volatile));
                FastCgi.is_setup(bytes);
                FastCgi.error_reply(bytes, "x");
                FastCgi.closes_after(bytes, bytes);
                FastCgi.render(bytes, Side::Request);
            }
        }
    }

    #[test]
    fn responses_compare_as_their_cgi_output() {
        let stdout = b"Status: 404 Not Found\r\nX-Powered-By: PHP/8.2.29\r\nContent-type: text/html; charset=UTF-8\r\n\r\nno such item";
        let mut one = Vec::new();
        push_record(&mut one, STDOUT, 1, &stdout[..20]);
        push_record(&mut one, STDOUT, 1, &stdout[20..]);
        one.extend_from_slice(&[1, END_REQUEST, 0, 1, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        // Another request id, one record, and garbage in END_REQUEST's
        // reserved bytes, as php-fpm leaves them.
        let mut other = Vec::new();
        push_record(&mut other, STDOUT, 7, stdout);
        other.extend_from_slice(&[
            1,
            END_REQUEST,
            0,
            7,
            0,
            8,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            b'y',
            b's',
            b' ',
        ]);
        let expected = b"HTTP/1.1 404 Not Found\r\nX-Powered-By: PHP/8.2.29\r\nContent-type: text/html; charset=UTF-8\r\nContent-Length: 12\r\n\r\nno such item";
        assert_eq!(
            FastCgi.comparable_response(b"", &one).as_deref(),
            Some(&expected[..])
        );
        assert_eq!(
            FastCgi.comparable_response(b"", &other).as_deref(),
            Some(&expected[..])
        );
        // Incomplete (no END_REQUEST): nothing to compare as FastCGI.
        assert_eq!(
            FastCgi.comparable_response(b"", &one[..one.len() - 16]),
            None
        );
    }
}
