//! `koala show`: one line per message, e.g. `Query: SELECT 1`,
//! `RowDescription id int4, name text`, `DataRow 17, 'apple'`.

use std::fmt::Write;

use super::wire::{self, BACKEND_TYPES, Cursor, FRONTEND_TYPES, Message, StartupPacket, Step};

/// Values (a DataRow field, a Bind parameter) longer than this are cut.
const MAX_VALUE_CHARS: usize = 64;
/// Statements and other text longer than this are cut.
const MAX_TEXT_CHARS: usize = 1024;

/// Client bytes: an optional start-up packet, then typed messages. `None`
/// when the bytes do not start with a PostgreSQL message.
pub(super) fn render_request(bytes: &[u8]) -> Option<String> {
    let mut lines = Vec::new();
    let mut at = 0;
    if let Step::Done((startup, len)) = wire::read_startup(bytes) {
        lines.push(startup_line(startup));
        at = len;
    }
    render_typed(bytes, at, FRONTEND_TYPES, frontend_line, lines)
}

/// Server bytes: typed messages, or the one-byte answer to an SSLRequest or
/// GSSENCRequest.
pub(super) fn render_response(bytes: &[u8]) -> Option<String> {
    match bytes {
        b"N" => return Some("EncryptionResponse N (plaintext)".to_string()),
        b"S" => return Some("EncryptionResponse S (TLS follows)".to_string()),
        b"G" => return Some("EncryptionResponse G (GSSAPI encryption follows)".to_string()),
        _ => {}
    }
    render_typed(bytes, 0, BACKEND_TYPES, backend_line, Vec::new())
}

/// Renders the typed messages from `at` on, after `lines`; says how many
/// bytes at the end are not understood.
fn render_typed(
    bytes: &[u8],
    mut at: usize,
    types: &[u8],
    line: fn(Message<'_>) -> String,
    mut lines: Vec<String>,
) -> Option<String> {
    while at < bytes.len() {
        match wire::read_typed(&bytes[at..], types) {
            Step::Done(message) => {
                lines.push(line(message));
                at += message.wire_len();
            }
            Step::NeedMore | Step::Invalid if lines.is_empty() => return None,
            Step::NeedMore => {
                lines.push(format!("(incomplete message: {} bytes)", bytes.len() - at));
                break;
            }
            Step::Invalid => {
                lines.push(format!("({} bytes not understood)", bytes.len() - at));
                break;
            }
        }
    }
    (!lines.is_empty()).then(|| lines.join("\n"))
}

fn startup_line(startup: StartupPacket<'_>) -> String {
    match startup {
        StartupPacket::Startup { minor, parameters } => {
            let mut line = "StartupMessage".to_string();
            if minor != 0 {
                let _ = write!(line, " protocol=3.{minor}");
            }
            for (name, value) in wire::startup_parameters(parameters).unwrap_or_default() {
                let _ = write!(line, " {}={}", text(name), text(value));
            }
            line
        }
        StartupPacket::Ssl => "SSLRequest".to_string(),
        StartupPacket::GssEnc => "GSSENCRequest".to_string(),
        StartupPacket::Cancel { pid } => format!("CancelRequest pid={pid}"),
    }
}

fn frontend_line(message: Message<'_>) -> String {
    let mut cursor = Cursor::new(message.body);
    let line = match message.kind {
        b'Q' => cursor.cstr().map(|sql| format!("Query: {}", text(sql))),
        b'P' => wire::parse(&mut cursor).map(|(name, query, types)| {
            let mut line = format!("Parse {} {}", quoted_name(name), text(query));
            if !types.is_empty() {
                let names: Vec<_> = types.into_iter().map(type_name).collect();
                let _ = write!(line, " [{}]", names.join(", "));
            }
            line
        }),
        b'B' => wire::bind(&mut cursor).map(|bind| {
            let mut line = "Bind".to_string();
            if !bind.portal.is_empty() || !bind.statement.is_empty() {
                let _ = write!(
                    line,
                    " portal {} statement {}",
                    quoted_name(bind.portal),
                    quoted_name(bind.statement)
                );
            }
            let values: Vec<_> = bind
                .values
                .iter()
                .enumerate()
                .map(|(index, value)| match value {
                    Some(bytes) if bind.is_binary(index) => hex(bytes),
                    Some(bytes) => value_text(bytes),
                    None => "NULL".to_string(),
                })
                .collect();
            if !values.is_empty() {
                let _ = write!(line, " ({})", values.join(", "));
            }
            line
        }),
        b'D' | b'C' => {
            let verb = if message.kind == b'D' {
                "Describe"
            } else {
                "Close"
            };
            let what = match cursor.u8() {
                Some(b'S') => Some("statement"),
                Some(b'P') => Some("portal"),
                _ => None,
            };
            what.zip(cursor.cstr())
                .map(|(what, name)| format!("{verb} {what} {}", quoted_name(name)))
        }
        b'E' => cursor.cstr().zip(cursor.i32()).map(|(portal, rows)| {
            let mut line = "Execute".to_string();
            if !portal.is_empty() {
                let _ = write!(line, " {}", quoted_name(portal));
            }
            if rows != 0 {
                let _ = write!(line, " max_rows={rows}");
            }
            line
        }),
        b'S' => Some("Sync".to_string()),
        b'H' => Some("Flush".to_string()),
        b'X' => Some("Terminate".to_string()),
        b'c' => Some("CopyDone".to_string()),
        b'd' => Some(format!("CopyData {}", text(message.body))),
        b'f' => cursor
            .cstr()
            .map(|reason| format!("CopyFail {}", text(reason))),
        b'F' => wire::function_call(&mut cursor).map(|(oid, values)| {
            let values: Vec<_> = values
                .iter()
                .map(|value| value.map_or("NULL".to_string(), hex))
                .collect();
            format!("FunctionCall oid={oid} ({})", values.join(", "))
        }),
        b'p' => Some(password_line(message.body)),
        _ => None,
    };
    line.unwrap_or_else(|| malformed(message))
}

/// A `p` message: which one it is depends on what the server asked for,
/// which these bytes do not say; told apart by shape. Passwords are not
/// shown.
fn password_line(body: &[u8]) -> String {
    let mut cursor = Cursor::new(body);
    if let Some(mechanism) = cursor.cstr() {
        let data = cursor.value();
        let sasl = mechanism.starts_with(b"SCRAM-") || mechanism.starts_with(b"OAUTH");
        if sasl && let Some(data) = data.filter(|_| cursor.is_empty()) {
            return format!(
                "SASLInitialResponse {} {}",
                text(mechanism),
                data.map(text).unwrap_or_default()
            );
        }
        // One NUL-terminated string: a cleartext or MD5 password.
        if body.len() == mechanism.len() + 1 {
            return format!("PasswordMessage ({} bytes)", mechanism.len());
        }
    }
    if is_printable(body) {
        format!("SASLResponse {}", text(body))
    } else {
        format!("GSSResponse ({} bytes)", body.len())
    }
}

fn backend_line(message: Message<'_>) -> String {
    let mut cursor = Cursor::new(message.body);
    let line =
        match message.kind {
            b'R' => authentication_line(&mut cursor),
            b'S' => cursor
                .cstr()
                .zip(cursor.cstr())
                .map(|(name, value)| format!("ParameterStatus {}={}", text(name), text(value))),
            b'K' => cursor.i32().map(|pid| format!("BackendKeyData pid={pid}")),
            b'Z' => cursor
                .u8()
                .map(|status| format!("ReadyForQuery {}", char::from(status))),
            b'T' => row_description(&mut cursor),
            b'D' => (0..cursor.count().unwrap_or_default())
                .map(|_| cursor.value())
                .collect::<Option<Vec<_>>>()
                .map(|values| {
                    let values: Vec<_> = values
                        .into_iter()
                        .map(|value| value.map_or("NULL".to_string(), value_text))
                        .collect();
                    format!("DataRow {}", values.join(", "))
                }),
            b'C' => cursor
                .cstr()
                .map(|tag| format!("CommandComplete {}", text(tag))),
            b'E' => Some(format!("ErrorResponse {}", notice_fields(message.body))),
            b'N' => Some(format!("NoticeResponse {}", notice_fields(message.body))),
            b'1' => Some("ParseComplete".to_string()),
            b'2' => Some("BindComplete".to_string()),
            b'3' => Some("CloseComplete".to_string()),
            b'n' => Some("NoData".to_string()),
            b'I' => Some("EmptyQueryResponse".to_string()),
            b's' => Some("PortalSuspended".to_string()),
            b'c' => Some("CopyDone".to_string()),
            b'd' => Some(format!("CopyData {}", text(message.body))),
            b't' => (0..cursor.count().unwrap_or_default())
                .map(|_| cursor.i32().map(type_name))
                .collect::<Option<Vec<_>>>()
                .map(|types| format!("ParameterDescription {}", types.join(", "))),
            b'G' | b'H' | b'W' => {
                let name = match message.kind {
                    b'G' => "CopyInResponse",
                    b'H' => "CopyOutResponse",
                    _ => "CopyBothResponse",
                };
                cursor.u8().zip(cursor.count()).map(|(format, columns)| {
                    let format = if format == 1 { "binary" } else { "text" };
                    format!("{name} {format} {columns} columns")
                })
            }
            b'A' => cursor.i32().zip(cursor.cstr()).zip(cursor.cstr()).map(
                |((pid, channel), payload)| {
                    format!(
                        "NotificationResponse pid={pid} {} {}",
                        text(channel),
                        text(payload)
                    )
                },
            ),
            b'V' => cursor.value().map(|value| {
                format!(
                    "FunctionCallResponse {}",
                    value.map_or("NULL".to_string(), hex)
                )
            }),
            b'v' => cursor.i32().map(|version| {
                let mut line = format!("NegotiateProtocolVersion 3.{}", version & 0xFFFF);
                let unrecognised: Vec<_> = (0..cursor.i32().unwrap_or_default())
                    .map_while(|_| cursor.cstr().map(text))
                    .collect();
                if !unrecognised.is_empty() {
                    let _ = write!(line, " unrecognised {}", unrecognised.join(", "));
                }
                line
            }),
            _ => None,
        };
    line.unwrap_or_else(|| malformed(message))
}

fn authentication_line(cursor: &mut Cursor<'_>) -> Option<String> {
    let code = cursor.i32()?;
    let data = cursor.rest();
    Some(match code {
        0 => "Authentication Ok".to_string(),
        2 => "Authentication KerberosV5".to_string(),
        3 => "Authentication CleartextPassword".to_string(),
        5 => "Authentication MD5Password".to_string(),
        7 => "Authentication GSS".to_string(),
        8 => format!("Authentication GSSContinue ({} bytes)", data.len()),
        9 => "Authentication SSPI".to_string(),
        10 => {
            let mechanisms: Vec<_> = data
                .split(|&byte| byte == 0)
                .filter(|name| !name.is_empty())
                .map(text)
                .collect();
            format!("Authentication SASL {}", mechanisms.join(" "))
        }
        11 => format!("Authentication SASLContinue {}", text(data)),
        12 => format!("Authentication SASLFinal {}", text(data)),
        other => format!("Authentication {other}"),
    })
}

fn row_description(cursor: &mut Cursor<'_>) -> Option<String> {
    let columns = (0..cursor.count()?)
        .map(|_| {
            let name = cursor.cstr()?;
            // Table oid, column number, type oid, size, modifier, format.
            cursor.take(6)?;
            let oid = cursor.i32()?;
            cursor.take(8)?;
            Some(format!("{} {}", text(name), type_name(oid)))
        })
        .collect::<Option<Vec<_>>>()?;
    Some(format!("RowDescription {}", columns.join(", ")))
}

/// An ErrorResponse or NoticeResponse: severity, SQLSTATE, message.
fn notice_fields(body: &[u8]) -> String {
    let mut cursor = Cursor::new(body);
    let (mut severity, mut code, mut message) = (None, None, None);
    while let Some(field) = cursor.u8().filter(|&field| field != 0) {
        let Some(value) = cursor.cstr() else { break };
        match field {
            b'V' => severity = Some(value),
            b'S' if severity.is_none() => severity = Some(value),
            b'C' => code = Some(value),
            b'M' => message = Some(value),
            _ => {}
        }
    }
    [severity, code, message]
        .into_iter()
        .flatten()
        .map(text)
        .collect::<Vec<_>>()
        .join(" ")
}

fn malformed(message: Message<'_>) -> String {
    format!(
        "{} (malformed, {} bytes)",
        char::from(message.kind),
        message.body.len()
    )
}

/// Common type oids by name (`pg_type`), others as `oid N`.
fn type_name(oid: i32) -> String {
    let name = match oid {
        0 => "unspecified",
        16 => "bool",
        17 => "bytea",
        18 => "char",
        19 => "name",
        20 => "int8",
        21 => "int2",
        23 => "int4",
        25 => "text",
        26 => "oid",
        114 => "json",
        700 => "float4",
        701 => "float8",
        1007 => "int4[]",
        1009 => "text[]",
        1042 => "bpchar",
        1043 => "varchar",
        1082 => "date",
        1083 => "time",
        1114 => "timestamp",
        1184 => "timestamptz",
        1186 => "interval",
        1700 => "numeric",
        2950 => "uuid",
        3802 => "jsonb",
        _ => return format!("oid {oid}"),
    };
    name.to_string()
}

/// `""` for the unnamed statement or portal, the name in quotes otherwise.
fn quoted_name(name: &[u8]) -> String {
    format!("\"{}\"", text(name))
}

/// A value in text format: numbers bare, NULL-free text quoted, binary in
/// hex.
fn value_text(bytes: &[u8]) -> String {
    let numeric = !bytes.is_empty()
        && bytes
            .iter()
            .all(|&byte| byte.is_ascii_digit() || matches!(byte, b'-' | b'+' | b'.' | b'e'))
        && bytes.iter().any(u8::is_ascii_digit);
    if numeric {
        return cut(&String::from_utf8_lossy(bytes), MAX_VALUE_CHARS);
    }
    if !is_printable(bytes) {
        return hex(bytes);
    }
    let quoted = String::from_utf8_lossy(bytes).replace('\'', "''");
    format!("'{}'", cut(&escape(&quoted), MAX_VALUE_CHARS))
}

/// Text on one line: control characters escaped, long text cut.
fn text(bytes: &[u8]) -> String {
    cut(&escape(&String::from_utf8_lossy(bytes)), MAX_TEXT_CHARS)
}

fn escape(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

fn cut(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_string(),
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::from("\\x");
    for byte in bytes.iter().take(MAX_VALUE_CHARS / 2) {
        let _ = write!(out, "{byte:02x}");
    }
    if bytes.len() > MAX_VALUE_CHARS / 2 {
        out.push_str("...");
    }
    out
}

/// Valid UTF-8 without control characters other than tab and newline.
fn is_printable(bytes: &[u8]) -> bool {
    std::str::from_utf8(bytes).is_ok_and(|text| {
        text.chars()
            .all(|c| !c.is_control() || c == '\t' || c == '\n' || c == '\r')
    })
}
