//! Replies koala builds itself: the authentication that replaces a recorded
//! one (see the module documentation of `postgres`), and error replies.

use super::wire::{self, BACKEND_TYPES, Cursor};
use crate::Exchange;

/// ParameterStatus values sent when no recorded set-up has any: what a
/// PostgreSQL 15 server with default settings reports, the values libpq,
/// psycopg, JDBC and asyncpg look at.
const DEFAULT_PARAMETERS: &[(&str, &str)] = &[
    ("server_version", "15.0"),
    ("server_encoding", "UTF8"),
    ("client_encoding", "UTF8"),
    ("DateStyle", "ISO, MDY"),
    ("IntervalStyle", "postgres"),
    ("integer_datetimes", "on"),
    ("standard_conforming_strings", "on"),
    ("TimeZone", "UTC"),
    ("is_superuser", "off"),
];
/// BackendKeyData sent when none was recorded: a process id and secret key
/// (a CancelRequest carrying them is answered by nothing anyway).
const DEFAULT_PROCESS_ID: u32 = 4242;
const DEFAULT_SECRET_KEY: u32 = 0x6b6f_616c;

/// AuthenticationOk, then the session parameters, BackendKeyData and
/// ReadyForQuery of the first recorded authentication that has them (or
/// defaults).
pub(super) fn authentication_ok(recorded: &[Exchange<'_>]) -> Vec<u8> {
    let mut reply = Vec::new();
    wire::push_message(&mut reply, b'R', &0u32.to_be_bytes());
    match recorded
        .iter()
        .find_map(|exchange| recorded_session(exchange.response))
    {
        Some(session) => reply.extend_from_slice(&session),
        None => push_default_session(&mut reply),
    }
    reply
}

/// Whether a recorded SSLRequest was answered `S`: the recording's client
/// went on in TLS, so replay accepts its SSLRequest too.
pub(super) fn recorded_ssl(recorded: &[Exchange<'_>]) -> bool {
    recorded.iter().any(|exchange| {
        matches!(super::classify(exchange.request), Some(super::Request::Ssl))
            && exchange.response == b"S"
    })
}

/// The messages after AuthenticationOk in a recorded response, up to and
/// including ReadyForQuery: each ParameterStatus name once (the first), the
/// first BackendKeyData, the ReadyForQuery. `None` when the response has no
/// AuthenticationOk followed by a ReadyForQuery.
fn recorded_session(response: &[u8]) -> Option<Vec<u8>> {
    let mut authenticated = false;
    let mut names: Vec<&[u8]> = Vec::new();
    let mut session = Vec::new();
    let mut key_data = false;
    for (start, message) in wire::messages(response, BACKEND_TYPES) {
        let raw = &response[start..start + message.wire_len()];
        match message.kind {
            b'R' => authenticated = wire::auth_code(message.body) == Some(0),
            b'S' if authenticated => {
                let name = Cursor::new(message.body).cstr().unwrap_or_default();
                if !names.contains(&name) {
                    names.push(name);
                    session.extend_from_slice(raw);
                }
            }
            b'K' if authenticated && !key_data => {
                key_data = true;
                session.extend_from_slice(raw);
            }
            b'Z' if authenticated => {
                session.extend_from_slice(raw);
                return Some(session);
            }
            _ => {}
        }
    }
    None
}

fn push_default_session(reply: &mut Vec<u8>) {
    for (name, value) in DEFAULT_PARAMETERS {
        let mut body = Vec::with_capacity(name.len() + value.len() + 2);
        push_cstr(&mut body, name);
        push_cstr(&mut body, value);
        wire::push_message(reply, b'S', &body);
    }
    let mut key = DEFAULT_PROCESS_ID.to_be_bytes().to_vec();
    key.extend_from_slice(&DEFAULT_SECRET_KEY.to_be_bytes());
    wire::push_message(reply, b'K', &key);
    wire::push_message(reply, b'Z', b"I");
}

/// An ErrorResponse of `severity` (`ERROR`, `FATAL`) with SQLSTATE XX000
/// (internal error) and `message`.
pub(super) fn error_response(severity: &str, message: &str) -> Vec<u8> {
    let mut body = Vec::with_capacity(message.len() + 32);
    for (field, value) in [
        (b'S', severity),
        (b'V', severity),
        (b'C', "XX000"),
        (b'M', message),
    ] {
        body.push(field);
        push_cstr(&mut body, value);
    }
    body.push(0);
    let mut reply = Vec::with_capacity(body.len() + 5);
    wire::push_message(&mut reply, b'E', &body);
    reply
}

/// Whether the body of an ErrorResponse says the session ends (severity
/// FATAL or PANIC; the non-localised `V` field, else `S`).
pub(super) fn is_fatal(body: &[u8]) -> bool {
    let mut cursor = Cursor::new(body);
    let mut severity = None;
    while let Some(field) = cursor.u8().filter(|&field| field != 0) {
        let Some(value) = cursor.cstr() else { break };
        match field {
            b'V' => severity = Some(value),
            b'S' if severity.is_none() => severity = Some(value),
            _ => {}
        }
    }
    matches!(severity, Some(b"FATAL" | b"PANIC"))
}

/// Appends `text` NUL-terminated; a NUL inside would end the field early,
/// so it becomes a space.
fn push_cstr(out: &mut Vec<u8>, text: &str) {
    out.extend(text.bytes().map(|byte| if byte == 0 { b' ' } else { byte }));
    out.push(0);
}
