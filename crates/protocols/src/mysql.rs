//! MySQL / MariaDB client/server protocol: greetings, client packets,
//! responses, operation keys, connection set-up and authentication, error
//! replies and rendering.
//!
//! A packet is a 3-byte little-endian payload length, a sequence id and
//! the payload; a payload of 0xFFFFFF bytes continues in the next packet.
//! The server speaks first (the protocol 10 greeting, sequence id 0); the
//! client answers with a handshake response (sequence id 1), then both
//! exchange authentication packets with increasing sequence ids until the
//! server's OK. Each command then starts again at sequence id 0.
//!
//! Authentication in replay. Recorded authentication replies cannot be
//! replayed as they are: the greeting's nonce is recorded, but the client
//! proves its password with a scramble (`mysql_native_password`,
//! `caching_sha2_password` fast auth) or an RSA-encrypted password (full
//! auth, random padding) that differ on every run. So every packet of the
//! authentication phase (sequence id not 0) is set-up, and
//! [`Protocol::answer_setup`] answers it with an OK packet (sequence id =
//! the request's + 1) taken from the recorded set-up exchanges: the OK that
//! ended a recorded authentication (for `caching_sha2_password` fast auth
//! the recorded reply is `01 03`, fast-auth success, then that OK; after an
//! auth switch the OK answers a later packet). With nothing recorded a
//! minimal OK is made up. A `caching_sha2_password` handshake response with
//! a scramble gets `01 03` first, as from the server's fast path: PHP's
//! mysqlnd waits for it. The client is thus accepted straight after its
//! handshake response, whatever its password and plugin: it never reaches
//! the auth switch, public key or full-auth steps. (Checked with PHP's
//! mysqli and PDO and the mariadb client, against both plugins.)

use crate::parse::{Step, printable, step};
use crate::sql;
use crate::{Completeness, Exchange, NormalizeOptions, Normalized, Protocol, Side};

/// The MySQL protocol.
pub struct Mysql;

/// A packet of this payload length is continued by the next packet.
const MAX_PACKET_PAYLOAD: usize = 0xFF_FFFF;
/// Operation keys are cut at this many bytes.
const MAX_KEY_BYTES: usize = 256;
/// MySQL's own limit on error messages (`MYSQL_ERRMSG_SIZE`).
const MAX_ERROR_MESSAGE: usize = 512;
/// Longest server version accepted in a greeting.
const MAX_SERVER_VERSION: usize = 64;

/// `CLIENT_CONNECT_WITH_DB`: the handshake response names a database.
const CLIENT_CONNECT_WITH_DB: u32 = 0x0008;
/// `CLIENT_PROTOCOL_41`: set by every client since MySQL 4.1.
const CLIENT_PROTOCOL_41: u32 = 0x0200;
/// `CLIENT_SECURE_CONNECTION`: the auth response is length-prefixed.
const CLIENT_SECURE_CONNECTION: u32 = 0x8000;
/// `CLIENT_PLUGIN_AUTH`: the handshake response names its auth plugin.
const CLIENT_PLUGIN_AUTH: u32 = 0x0008_0000;
/// `CLIENT_CONNECT_ATTRS`: connection attributes follow the plugin name.
const CLIENT_CONNECT_ATTRS: u32 = 0x0010_0000;
/// `CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA`: the auth response has a
/// length-encoded length.
const CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA: u32 = 0x0020_0000;

/// `SERVER_MORE_RESULTS_EXISTS`: another result follows this one.
const SERVER_MORE_RESULTS_EXISTS: u16 = 0x0008;
/// `SERVER_STATUS_CURSOR_EXISTS`: rows are fetched later (COM_STMT_FETCH).
const SERVER_STATUS_CURSOR_EXISTS: u16 = 0x0040;

/// The payload of an SSL request: the first 32 bytes of a handshake
/// response, after which the client starts TLS.
const SSL_REQUEST_PAYLOAD: usize = 32;

/// `caching_sha2_password`'s fast-auth success: auth-more-data `0x03`.
const FAST_AUTH_SUCCESS: [u8; 2] = [0x01, 0x03];

/// A minimal OK packet payload: no rows, no insert id, autocommit on.
const MINIMAL_OK: [u8; 7] = [0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00];

/// Command bytes.
mod command {
    pub const QUIT: u8 = 0x01;
    pub const INIT_DB: u8 = 0x02;
    pub const QUERY: u8 = 0x03;
    pub const STMT_PREPARE: u8 = 0x16;
    pub const STMT_EXECUTE: u8 = 0x17;
    pub const STMT_SEND_LONG_DATA: u8 = 0x18;
    pub const STMT_CLOSE: u8 = 0x19;
    pub const SET_OPTION: u8 = 0x1b;

    /// Names of the commands 0x00-0x1f, for rendering.
    pub const NAMES: [&str; 32] = [
        "COM_SLEEP",
        "COM_QUIT",
        "COM_INIT_DB",
        "COM_QUERY",
        "COM_FIELD_LIST",
        "COM_CREATE_DB",
        "COM_DROP_DB",
        "COM_REFRESH",
        "COM_SHUTDOWN",
        "COM_STATISTICS",
        "COM_PROCESS_INFO",
        "COM_CONNECT",
        "COM_PROCESS_KILL",
        "COM_DEBUG",
        "COM_PING",
        "COM_TIME",
        "COM_DELAYED_INSERT",
        "COM_CHANGE_USER",
        "COM_BINLOG_DUMP",
        "COM_TABLE_DUMP",
        "COM_CONNECT_OUT",
        "COM_REGISTER_SLAVE",
        "COM_STMT_PREPARE",
        "COM_STMT_EXECUTE",
        "COM_STMT_SEND_LONG_DATA",
        "COM_STMT_CLOSE",
        "COM_STMT_RESET",
        "COM_SET_OPTION",
        "COM_STMT_FETCH",
        "COM_DAEMON",
        "COM_BINLOG_DUMP_GTID",
        "COM_RESET_CONNECTION",
    ];
}

impl Protocol for Mysql {
    fn name(&self) -> &'static str {
        "mysql"
    }

    /// A command or a handshake response, as [`client_packet`] recognises
    /// them.
    /// A complete command packet or a handshake response (see
    /// [`client_packet`]). A command is only claimed once the whole packet
    /// is there: many binary protocols start with a little-endian length
    /// and a small byte (MongoDB's messages do), and an unfinished "MySQL
    /// packet" would otherwise wait for bytes that never come. A real
    /// MySQL connection is known from its greeting anyway.
    fn detect_request(&self, bytes: &[u8]) -> bool {
        match client_packet(bytes) {
            Completeness::Complete(_) => true,
            Completeness::NeedMore => bytes.get(3) == Some(&1),
            Completeness::Unknown => false,
        }
    }

    /// A protocol 10 greeting: sequence id 0, payload `0x0a`, a printable
    /// server version starting with a digit and ended by NUL, then the
    /// connection id, 8 bytes of nonce and a zero filler.
    fn detect_greeting(&self, bytes: &[u8]) -> bool {
        greeting(bytes).is_some()
    }

    /// One client packet (with its continuation packets), whatever its
    /// sequence id: once the connection is known to be MySQL, every
    /// authentication packet must be framed too.
    fn frame_request(&self, bytes: &[u8]) -> Completeness {
        packet(bytes, 0)
            .map_done(|packet| packet.end)
            .into_completeness()
    }

    /// The server's answer to `request`: the authentication reply (an OK,
    /// ERR, auth switch or auth-more-data packet; fast-auth success `01 03`
    /// with the OK after it), a result (OK, ERR, or a text or binary result
    /// set, with the results that follow while `SERVER_MORE_RESULTS_EXISTS`
    /// is set), a prepared statement's OK with its parameter and column
    /// definitions, or the single packet simple commands get. `Unknown` for
    /// the rest (`LOAD DATA LOCAL`, COM_STMT_FETCH, replication...).
    fn frame_response(&self, request: &[u8], bytes: &[u8]) -> Completeness {
        response(request, bytes).into_completeness()
    }

    /// COM_QUIT, COM_STMT_CLOSE, COM_STMT_SEND_LONG_DATA and the SSL
    /// request get no answer.
    fn expects_response(&self, request: &[u8]) -> bool {
        match (request.get(3), request.get(4)) {
            (Some(0), Some(&command)) => !matches!(
                command,
                command::QUIT | command::STMT_CLOSE | command::STMT_SEND_LONG_DATA
            ),
            (Some(1), _) => payload_len(request) != SSL_REQUEST_PAYLOAD,
            _ => true,
        }
    }

    /// `COM_QUIT`: the server closes the connection, answering nothing.
    fn closes_after(&self, request: &[u8], _response: &[u8]) -> bool {
        matches!(
            (request.get(3), request.get(4)),
            (Some(0), Some(&command::QUIT))
        )
    }

    /// The request as it is; the key is `mysql <command hex>`, plus the
    /// statement with literals replaced by `?` for COM_QUERY and
    /// COM_STMT_PREPARE (see [`normalize_sql`]) and the statement id for
    /// COM_STMT_EXECUTE; `mysql handshake` for the handshake response and
    /// `mysql auth` for later authentication packets.
    fn normalize(&self, request: &[u8], _options: &NormalizeOptions) -> Option<Normalized> {
        let key = operation(request)?;
        Some(Normalized::keyed(request, key, 0))
    }

    /// Authentication packets (sequence id not 0), COM_INIT_DB,
    /// COM_SET_OPTION and `SET ...` statements.
    fn is_setup(&self, request: &[u8]) -> bool {
        let (Some(&sequence), Some(&command)) = (request.get(3), request.get(4)) else {
            return request.get(3).is_some_and(|&sequence| sequence != 0);
        };
        if sequence != 0 {
            return true;
        }
        match command {
            command::INIT_DB | command::SET_OPTION => true,
            command::QUERY => {
                let statement = request.get(5..).unwrap_or_default();
                sql::starts_with_keyword(statement, "SET", &sql::MYSQL)
            }
            _ => false,
        }
    }

    /// For authentication packets: the OK that ended a recorded
    /// authentication, or a minimal OK, with the next sequence id; after
    /// `01 03` for a `caching_sha2_password` handshake response with a
    /// scramble (see the module documentation). `None` for commands and the
    /// SSL request.
    fn answer_setup(&self, request: &[u8], recorded: &[Exchange<'_>]) -> Option<Vec<u8>> {
        let sequence = *request.get(3)?;
        if sequence == 0 || !self.expects_response(request) {
            return None;
        }
        let ok = recorded
            .iter()
            .filter(|exchange| exchange.request.get(3).is_some_and(|&s| s != 0))
            .find_map(|exchange| auth_ok(exchange.response))
            .unwrap_or(&MINIMAL_OK);
        let mut reply = Vec::new();
        let mut sequence = sequence.wrapping_add(1);
        if sequence == 2 && expects_fast_auth_result(request) {
            reply = with_header(sequence, &FAST_AUTH_SUCCESS);
            sequence = sequence.wrapping_add(1);
        }
        reply.extend(with_header(sequence, ok));
        Some(reply)
    }

    /// An ERR packet: error 1105 (`ER_UNKNOWN_ERROR`), SQL state `HY000`,
    /// `message` (at most 512 bytes), with the request's sequence id + 1.
    fn error_reply(&self, request: &[u8], message: &str) -> Option<Vec<u8>> {
        let sequence = request
            .get(3)
            .map_or(1, |sequence| sequence.wrapping_add(1));
        let mut end = message.len().min(MAX_ERROR_MESSAGE);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        let mut payload = vec![0xff, 0x51, 0x04, b'#'];
        payload.extend_from_slice(b"HY000");
        payload.extend_from_slice(&message.as_bytes()[..end]);
        Some(with_header(sequence, &payload))
    }

    /// One line per packet: `COM_QUERY SELECT ...`, `handshake response
    /// user=app db=orders plugin=...`, `greeting server=8.0.36 ...`,
    /// `OK affected_rows=1 ...`, `ERR 1045 (28000): ...`, result set
    /// columns and text rows. Bytes after the last complete packet are
    /// counted. `None` unless the bytes start with a complete packet.
    fn render(&self, bytes: &[u8], side: Side) -> Option<String> {
        let mut lines = Vec::new();
        let mut at = 0;
        let mut state = ResultState::Outside;
        while at < bytes.len() {
            let Step::Done(packet) = packet(bytes, at) else {
                if lines.is_empty() {
                    return None;
                }
                lines.push(format!("({} more bytes)", bytes.len() - at));
                break;
            };
            lines.push(match side {
                Side::Request => render_request(&packet),
                Side::Response => {
                    // A prepared statement's OK is told by the definitions after it.
                    let definitions_next = match self::packet(bytes, packet.end) {
                        Step::Done(next) => is_column_definition(&next),
                        _ => false,
                    };
                    render_response(&packet, lines.is_empty(), definitions_next, &mut state)
                }
            });
            at = packet.end;
        }
        (!lines.is_empty()).then(|| lines.join("\n"))
    }
}

/// One logical packet: its header's sequence id, its payload (the first
/// physical packet's: continuations only carry more of a large row or
/// value) and where it ends.
struct Packet<'a> {
    sequence: u8,
    payload: &'a [u8],
    /// Whether the payload continues in further packets.
    continued: bool,
    end: usize,
}

/// The little-endian payload length in the first 3 bytes of a packet header.
fn payload_len(header: &[u8]) -> usize {
    match header {
        [len0, len1, len2, ..] => {
            usize::from(*len0) | usize::from(*len1) << 8 | usize::from(*len2) << 16
        }
        _ => 0,
    }
}

/// The packet at `at`, with its continuation packets.
fn packet(bytes: &[u8], at: usize) -> Step<Packet<'_>> {
    let Some(&[_, _, _, sequence]) = bytes.get(at..at + 4) else {
        return Step::NeedMore;
    };
    let len = payload_len(&bytes[at..]);
    let Some(payload) = bytes.get(at + 4..at + 4 + len) else {
        return Step::NeedMore;
    };
    let mut end = at + 4 + len;
    let mut last_len = len;
    while last_len == MAX_PACKET_PAYLOAD {
        let Some(header) = bytes.get(end..end + 4) else {
            return Step::NeedMore;
        };
        last_len = payload_len(header);
        end += 4 + last_len;
        if end > bytes.len() {
            return Step::NeedMore;
        }
    }
    Step::Done(Packet {
        sequence,
        payload,
        continued: len == MAX_PACKET_PAYLOAD,
        end,
    })
}

/// `payload` as a packet with sequence id `sequence` (payloads here are
/// small: no continuation).
fn with_header(sequence: u8, payload: &[u8]) -> Vec<u8> {
    let len = payload.len().min(MAX_PACKET_PAYLOAD - 1);
    let mut out = Vec::with_capacity(4 + len);
    out.extend_from_slice(&[len as u8, (len >> 8) as u8, (len >> 16) as u8, sequence]);
    out.extend_from_slice(&payload[..len]);
    out
}

/// Command bytes a client sends at sequence id 0 (`COM_QUIT` 0x01 to
/// `COM_RESET_CONNECTION` 0x1f).
fn is_command(byte: u8) -> bool {
    (0x01..=0x1f).contains(&byte)
}

/// Whether the first MySQL client message in `bytes` is complete, for
/// detection.
///
/// To keep arbitrary binary protocols from being mistaken for MySQL, only
/// two packet kinds are recognised: a command (sequence id 0, command byte
/// 0x01-0x1f) and the handshake response or SSL request (sequence id 1,
/// `CLIENT_PROTOCOL_41` set, the first 19 of the 23 filler bytes zero:
/// MariaDB clients put extended capabilities in the last 4). Recognising
/// the first takes 5 bytes, the second 36; fewer are `Unknown`.
pub fn client_packet(bytes: &[u8]) -> Completeness {
    let Some(&[_, _, _, sequence]) = bytes.get(..4) else {
        return Completeness::Unknown;
    };
    let len = payload_len(bytes);
    let recognised = match sequence {
        0 => len >= 1 && bytes.get(4).is_some_and(|&command| is_command(command)),
        1 => match bytes.get(4..36) {
            Some(payload) => {
                len >= SSL_REQUEST_PAYLOAD
                    && capabilities(payload) & CLIENT_PROTOCOL_41 != 0
                    && payload[9..28].iter().all(|&byte| byte == 0)
            }
            None => false,
        },
        _ => false,
    };
    if !recognised {
        return Completeness::Unknown;
    }
    packet(bytes, 0)
        .map_done(|packet| packet.end)
        .into_completeness()
}

/// The client capabilities at the start of a handshake response payload.
fn capabilities(payload: &[u8]) -> u32 {
    match payload {
        [a, b, c, d, ..] => u32::from_le_bytes([*a, *b, *c, *d]),
        _ => 0,
    }
}

// ---------------------------------------------------------------------------
// Greeting and handshake response

/// What a greeting says.
struct Greeting<'a> {
    server_version: &'a [u8],
    plugin: Option<&'a [u8]>,
}

/// Parses a protocol 10 greeting at the start of `bytes` (sequence id 0).
fn greeting(bytes: &[u8]) -> Option<Greeting<'_>> {
    if bytes.get(3) != Some(&0) {
        return None;
    }
    let payload = bytes.get(4..)?;
    greeting_payload(payload.get(..payload_len(bytes).min(payload.len()))?)
}

/// Parses the payload of a protocol 10 greeting.
fn greeting_payload(payload: &[u8]) -> Option<Greeting<'_>> {
    let (&version_byte, rest) = payload.split_first()?;
    if version_byte != 0x0a {
        return None;
    }
    let nul = rest
        .iter()
        .take(MAX_SERVER_VERSION + 1)
        .position(|&b| b == 0)?;
    let server_version = &rest[..nul];
    if !server_version.first().is_some_and(u8::is_ascii_digit)
        || !server_version.iter().all(|&b| (0x20..0x7f).contains(&b))
    {
        return None;
    }
    // Connection id (4), nonce part 1 (8), filler 0x00.
    let after = rest.get(nul + 1..)?;
    if after.get(12) != Some(&0) {
        return None;
    }
    // Capabilities (2), charset, status (2), capabilities (2), nonce
    // length, reserved (10), nonce part 2 (at least 13), plugin name.
    let plugin = after.get(13..).and_then(|tail| {
        let lower = u32::from(u16::from_le_bytes([*tail.first()?, *tail.get(1)?]));
        let upper = u32::from(u16::from_le_bytes([*tail.get(5)?, *tail.get(6)?]));
        if (lower | upper << 16) & CLIENT_PLUGIN_AUTH == 0 {
            return None;
        }
        let nonce_len = usize::from(*tail.get(7)?);
        let name_start = 18 + 13.max(nonce_len.saturating_sub(8));
        let name = tail.get(name_start..)?;
        Some(name.split(|&b| b == 0).next().unwrap_or(name))
    });
    Some(Greeting {
        server_version,
        plugin,
    })
}

/// What a handshake response says.
#[derive(Debug, Default, PartialEq, Eq)]
struct HandshakeResponse<'a> {
    user: &'a [u8],
    /// The proof of the password (a scramble, or empty).
    auth: &'a [u8],
    database: Option<&'a [u8]>,
    plugin: Option<&'a [u8]>,
    /// Connection attributes, names and values.
    attributes: Vec<(&'a [u8], &'a [u8])>,
}

/// A NUL-terminated string at the start of `bytes`, and the rest.
fn nul_string(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let nul = bytes.iter().position(|&b| b == 0)?;
    Some((&bytes[..nul], &bytes[nul + 1..]))
}

/// A length-encoded integer at the start of `bytes`, and the rest.
fn lenenc_int(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let (&first, rest) = bytes.split_first()?;
    let width = match first {
        0..=0xfa => return Some((u64::from(first), rest)),
        0xfc => 2,
        0xfd => 3,
        0xfe => 8,
        _ => return None,
    };
    let digits = rest.get(..width)?;
    let value = digits
        .iter()
        .rev()
        .fold(0u64, |total, &byte| total << 8 | u64::from(byte));
    Some((value, &rest[width..]))
}

/// A length-encoded string at the start of `bytes`, and the rest.
fn lenenc_string(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = lenenc_int(bytes)?;
    let len = usize::try_from(len).ok()?;
    Some((rest.get(..len)?, rest.get(len..)?))
}

/// Whether the client waits for `caching_sha2_password`'s fast-auth
/// result before the OK (PHP's mysqlnd hangs on an OK alone): a handshake
/// response of that plugin with a scramble (an empty password has none, and
/// gets the OK at once).
fn expects_fast_auth_result(request: &[u8]) -> bool {
    request
        .get(4..)
        .and_then(handshake_response)
        .is_some_and(|response| {
            response.plugin == Some(&b"caching_sha2_password"[..]) && !response.auth.is_empty()
        })
}

/// Parses a protocol 41 handshake response payload.
fn handshake_response(payload: &[u8]) -> Option<HandshakeResponse<'_>> {
    let capabilities = capabilities(payload);
    if capabilities & CLIENT_PROTOCOL_41 == 0 {
        return None;
    }
    let (user, rest) = nul_string(payload.get(32..)?)?;
    let (auth, mut rest) = if capabilities & CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA != 0 {
        lenenc_string(rest)?
    } else if capabilities & CLIENT_SECURE_CONNECTION != 0 {
        let (&len, rest) = rest.split_first()?;
        let len = usize::from(len);
        (rest.get(..len)?, rest.get(len..)?)
    } else {
        nul_string(rest)?
    };
    let mut response = HandshakeResponse {
        user,
        auth,
        ..HandshakeResponse::default()
    };
    if capabilities & CLIENT_CONNECT_WITH_DB != 0 {
        let (database, after) = nul_string(rest)?;
        response.database = Some(database);
        rest = after;
    }
    if capabilities & CLIENT_PLUGIN_AUTH != 0 {
        let (plugin, after) = nul_string(rest)?;
        response.plugin = Some(plugin);
        rest = after;
    }
    if capabilities & CLIENT_CONNECT_ATTRS != 0 {
        let (attributes, _) = lenenc_string(rest)?;
        let mut attributes = attributes;
        while !attributes.is_empty() {
            let (name, after) = lenenc_string(attributes)?;
            let (value, after) = lenenc_string(after)?;
            response.attributes.push((name, value));
            attributes = after;
        }
    }
    Some(response)
}

// ---------------------------------------------------------------------------
// Responses

/// The end of the response to `request` at the start of `bytes`.
fn response(request: &[u8], bytes: &[u8]) -> Step<usize> {
    let (Some(&sequence), command) = (request.get(3), request.get(4)) else {
        return Step::Invalid;
    };
    if sequence != 0 {
        return auth_reply(bytes);
    }
    match command.copied().unwrap_or(0) {
        command::QUERY | command::STMT_EXECUTE => results(bytes, 0),
        command::STMT_PREPARE => prepare_ok(bytes),
        // These answer with one OK, ERR, EOF or text packet.
        0x02 | 0x05..=0x0e | 0x11 | 0x1a | 0x1b | 0x1f => {
            packet(bytes, 0).map_done(|packet| packet.end)
        }
        _ => Step::Invalid,
    }
}

/// An authentication-phase reply: one packet, or fast-auth success
/// (`01 03`) followed by the packet that ends the authentication.
fn auth_reply(bytes: &[u8]) -> Step<usize> {
    let first = step!(packet(bytes, 0));
    if first.payload == [0x01, 0x03] {
        return packet(bytes, first.end).map_done(|packet| packet.end);
    }
    Step::Done(first.end)
}

/// The payload of the first OK packet in a recorded authentication reply.
fn auth_ok(response: &[u8]) -> Option<&[u8]> {
    let mut at = 0;
    while let Step::Done(packet) = packet(response, at) {
        if packet.payload.first() == Some(&0x00) && packet.payload.len() >= MINIMAL_OK.len() {
            return Some(packet.payload);
        }
        at = packet.end;
    }
    None
}

/// Status flags of an OK packet (`0x00` or, ending a result set without
/// EOF packets, `0xfe`) or of an EOF packet.
fn status_flags(payload: &[u8]) -> Option<u16> {
    let (&header, rest) = payload.split_first()?;
    if header == 0xfe && payload.len() == 5 {
        // EOF: warnings (2), status (2).
        return Some(u16::from_le_bytes([payload[3], payload[4]]));
    }
    let (_affected_rows, rest) = lenenc_int(rest)?;
    let (_last_insert_id, rest) = lenenc_int(rest)?;
    Some(u16::from_le_bytes([*rest.first()?, *rest.get(1)?]))
}

/// An EOF packet (or the OK packet with an `0xfe` header that ends a
/// result set when EOF packets are deprecated).
fn is_eof(packet: &Packet<'_>) -> bool {
    packet.payload.first() == Some(&0xfe) && !packet.continued
}

/// A column definition packet: its catalog is always `def`.
fn is_column_definition(packet: &Packet<'_>) -> bool {
    packet.payload.starts_with(b"\x03def")
}

/// Results to COM_QUERY or COM_STMT_EXECUTE starting at `at`: OK, ERR, or
/// result sets, repeated while `SERVER_MORE_RESULTS_EXISTS` is set.
fn results(bytes: &[u8], mut at: usize) -> Step<usize> {
    loop {
        let first = step!(packet(bytes, at));
        let status = match first.payload.first() {
            Some(0xff) => return Step::Done(first.end),
            // An OK packet; a shorter one is MySQL's column count with
            // the metadata flag 0 first.
            Some(0x00) if first.payload.len() >= MINIMAL_OK.len() => {
                match status_flags(first.payload) {
                    Some(status) => {
                        at = first.end;
                        status
                    }
                    None => return Step::Invalid,
                }
            }
            // LOCAL INFILE request: the client sends a file next.
            Some(0xfb) | Some(0xfe) | None => return Step::Invalid,
            Some(_) => {
                let (end, status) = step!(result_set(bytes, at));
                at = end;
                status
            }
        };
        if status & SERVER_MORE_RESULTS_EXISTS == 0 {
            return Step::Done(at);
        }
    }
}

/// Definition packets at `at`, `count` of them; returns the position
/// after them.
fn definitions(bytes: &[u8], mut at: usize, count: u64) -> Step<usize> {
    for _ in 0..count {
        let definition = step!(packet(bytes, at));
        if !is_column_definition(&definition) {
            return Step::Invalid;
        }
        at = definition.end;
    }
    Step::Done(at)
}

/// The EOF packet that ends definitions when EOF packets are not
/// deprecated: the position after it and its status flags, or `at` when
/// the next packet is something else (the next definitions, the first row
/// or the terminating OK; only the EOF is 5 bytes). When the bytes end
/// there (or with an incomplete packet), `may_end` says whether the
/// message ends at `at`: the last definitions of a prepared statement, with
/// EOF packets deprecated. (With them, the server writes the EOF packet
/// together with the definitions.)
fn definitions_eof(bytes: &[u8], at: usize, may_end: bool) -> Step<(usize, Option<u16>)> {
    let next = match packet(bytes, at) {
        Step::Done(next) => next,
        Step::NeedMore if may_end => return Step::Done((at, None)),
        Step::NeedMore => return Step::NeedMore,
        Step::Invalid => return Step::Invalid,
    };
    if is_eof(&next) && next.payload.len() == 5 {
        return Step::Done((next.end, status_flags(next.payload)));
    }
    Step::Done((at, None))
}

/// The column count that starts a result set, and whether the column
/// definitions follow. Clients that cache metadata get a flag with it (0:
/// definitions left out, 1: sent): a byte after the count from MariaDB
/// (`MARIADB_CLIENT_CACHE_METADATA`), before it from MySQL 8
/// (`CLIENT_OPTIONAL_RESULTSET_METADATA`).
fn column_count(payload: &[u8]) -> Option<(u64, bool)> {
    match lenenc_int(payload) {
        Some((columns, [])) if columns > 0 => return Some((columns, true)),
        Some((columns, [flag @ (0 | 1)])) if columns > 0 => return Some((columns, *flag == 1)),
        _ => {}
    }
    let (&flag, rest) = payload.split_first()?;
    match lenenc_int(rest)? {
        (columns, []) if columns > 0 && flag <= 1 => Some((columns, flag == 1)),
        _ => None,
    }
}

/// A text or binary result set at `at`: column count, column definitions,
/// rows, and the EOF or OK packet that ends it; returns its end and that
/// packet's status flags.
fn result_set(bytes: &[u8], at: usize) -> Step<(usize, u16)> {
    let count = step!(packet(bytes, at));
    let Some((columns, follow)) = column_count(count.payload) else {
        return Step::Invalid;
    };
    let at = step!(definitions(
        bytes,
        count.end,
        if follow { columns } else { 0 }
    ));
    let (mut at, eof_status) = step!(definitions_eof(bytes, at, false));
    if let Some(status) = eof_status
        && status & SERVER_STATUS_CURSOR_EXISTS != 0
    {
        // The rows are fetched later with COM_STMT_FETCH.
        return Step::Done((at, status));
    }
    loop {
        let row = step!(packet(bytes, at));
        at = row.end;
        if row.payload.first() == Some(&0xff) {
            // An error instead of the remaining rows.
            return Step::Done((at, 0));
        }
        if is_eof(&row) {
            return match status_flags(row.payload) {
                Some(status) => Step::Done((at, status)),
                None => Step::Invalid,
            };
        }
    }
}

/// The answer to COM_STMT_PREPARE: ERR, or the statement's OK followed by
/// its parameter and column definitions.
fn prepare_ok(bytes: &[u8]) -> Step<usize> {
    let ok = step!(packet(bytes, 0));
    match ok.payload {
        [0xff, ..] => Step::Done(ok.end),
        // Status, statement id (4), columns (2), parameters (2), filler...
        [0x00, _, _, _, _, c0, c1, p0, p1, ..] => {
            let (columns, parameters) = (
                u16::from_le_bytes([*c0, *c1]),
                u16::from_le_bytes([*p0, *p1]),
            );
            let mut at = ok.end;
            for (count, last) in [(parameters, columns == 0), (columns, true)] {
                if count > 0 {
                    at = step!(definitions(bytes, at, u64::from(count)));
                    at = step!(definitions_eof(bytes, at, last)).0;
                }
            }
            Step::Done(at)
        }
        _ => Step::Invalid,
    }
}

// ---------------------------------------------------------------------------
// Operation keys and SQL

/// The operation key of a client packet (see [`Protocol::normalize`]).
fn operation(request: &[u8]) -> Option<Vec<u8>> {
    let sequence = *request.get(3)?;
    match sequence {
        0 | 1 if client_packet(request) == Completeness::Unknown => return None,
        1 => return Some(b"mysql handshake".to_vec()),
        0 => {}
        // Later authentication packets: one whole packet.
        _ if payload_len(request) + 4 == request.len() => return Some(b"mysql auth".to_vec()),
        _ => return None,
    }
    let command = *request.get(4)?;
    let mut key = format!("mysql {command:02x}").into_bytes();
    let argument = request.get(5..).unwrap_or_default();
    match command {
        command::QUERY | command::STMT_PREPARE => {
            key.push(b' ');
            normalize_sql(argument, &mut key, MAX_KEY_BYTES);
        }
        command::STMT_EXECUTE => {
            if let Some(&[a, b, c, d]) = argument.get(..4) {
                key.extend_from_slice(format!(" {}", u32::from_le_bytes([a, b, c, d])).as_bytes());
            }
        }
        _ => {}
    }
    Some(key)
}

/// Appends `sql` to `out` in a form that leaves out what changes between
/// runs, stopping when `out` holds `max_len` bytes: number literals and
/// quoted strings (`'...'`, `"..."`) become `?`, comments are dropped, runs
/// of whitespace become one space, SQL keywords are upper-cased;
/// identifiers (also `` `quoted` ``) and punctuation are kept. (The
/// crate's one SQL normaliser, in its MySQL dialect.)
///
/// `select *  from t where id=7 -- x` gives `SELECT * FROM t WHERE id=?`.
pub fn normalize_sql(sql: &[u8], out: &mut Vec<u8>, max_len: usize) {
    let start = out.len();
    sql::push_key(out, sql, &sql::MYSQL, max_len.saturating_sub(start));
    out.truncate(max_len.max(start));
}

// ---------------------------------------------------------------------------
// Rendering

/// A client packet as one line.
fn render_request(packet: &Packet<'_>) -> String {
    let payload = packet.payload;
    match packet.sequence {
        0 => {
            let Some((&command, argument)) = payload.split_first() else {
                return "empty packet".to_owned();
            };
            let name = command::NAMES.get(usize::from(command)).map_or_else(
                || format!("command 0x{command:02x}"),
                |name| name.to_string(),
            );
            match command {
                command::QUERY | command::STMT_PREPARE | command::INIT_DB => {
                    format!("{name} {}", printable(argument))
                }
                command::STMT_EXECUTE | command::STMT_CLOSE | command::STMT_SEND_LONG_DATA => {
                    match argument.get(..4) {
                        Some(&[a, b, c, d]) => {
                            format!("{name} stmt={}", u32::from_le_bytes([a, b, c, d]))
                        }
                        _ => name,
                    }
                }
                _ => name,
            }
        }
        1 if payload.len() == SSL_REQUEST_PAYLOAD => "SSL request".to_owned(),
        sequence => match (sequence, handshake_response(payload)) {
            (1, Some(response)) => {
                let mut line = format!("handshake response user={}", printable(response.user));
                if let Some(database) = response.database {
                    line.push_str(&format!(" db={}", printable(database)));
                }
                if let Some(plugin) = response.plugin {
                    line.push_str(&format!(" plugin={}", printable(plugin)));
                }
                if !response.attributes.is_empty() {
                    line.push_str(&format!(" attributes={}", response.attributes.len()));
                }
                line
            }
            _ if payload == [0x02] => format!("auth seq={sequence}: public key request"),
            _ => format!("auth seq={sequence}: {} bytes", payload.len()),
        },
    }
}

/// Where rendering is in a result set, so that rows can be told from
/// other packets.
#[derive(Clone, Copy, Default)]
enum ResultState {
    #[default]
    Outside,
    /// Column definitions still to come.
    Definitions { columns: u64, left: u64 },
    /// Rows: after the definitions (and the EOF that may follow them).
    Rows {
        columns: u64,
        started: bool,
        eof_passed: bool,
    },
}

/// A server packet as one line.
fn render_response(
    packet: &Packet<'_>,
    first: bool,
    definitions_next: bool,
    state: &mut ResultState,
) -> String {
    let payload = packet.payload;
    if first
        && packet.sequence == 0
        && let Some(greeting) = greeting_payload(payload)
    {
        let mut line = format!("greeting server={}", printable(greeting.server_version));
        if let Some(plugin) = greeting.plugin {
            line.push_str(&format!(" plugin={}", printable(plugin)));
        }
        return line;
    }
    match (*state, payload) {
        (_, [0xff, code0, code1, rest @ ..]) => {
            *state = ResultState::Outside;
            let code = u16::from_le_bytes([*code0, *code1]);
            match rest {
                [b'#', state @ ..] if state.len() >= 5 => {
                    format!(
                        "ERR {code} ({}): {}",
                        printable(&state[..5]),
                        printable(&state[5..])
                    )
                }
                _ => format!("ERR {code}: {}", printable(rest)),
            }
        }
        (ResultState::Definitions { columns, left }, _) if is_column_definition(packet) => {
            *state = if left <= 1 {
                ResultState::Rows {
                    columns,
                    started: false,
                    eof_passed: false,
                }
            } else {
                ResultState::Definitions {
                    columns,
                    left: left - 1,
                }
            };
            render_column(payload)
        }
        (
            ResultState::Rows {
                columns,
                started,
                eof_passed,
            },
            [0xfe, ..],
        ) if !packet.continued => {
            if payload.len() == 5 && !started && !eof_passed {
                *state = ResultState::Rows {
                    columns,
                    started,
                    eof_passed: true,
                };
            } else {
                *state = ResultState::Outside;
            }
            "EOF".to_owned()
        }
        (ResultState::Rows { columns, .. }, _) => {
            *state = ResultState::Rows {
                columns,
                started: true,
                eof_passed: true,
            };
            render_row(payload, columns)
        }
        (_, [0x00, s0, s1, s2, s3, c0, c1, p0, p1, 0x00, ..]) if definitions_next => format!(
            "statement prepared: id={} columns={} params={}",
            u32::from_le_bytes([*s0, *s1, *s2, *s3]),
            u16::from_le_bytes([*c0, *c1]),
            u16::from_le_bytes([*p0, *p1])
        ),
        (_, [0x00, rest @ ..]) => match (lenenc_int(rest), status_flags(payload)) {
            (Some((affected, rest)), Some(_)) => {
                let last_insert_id = lenenc_int(rest).map_or(0, |(id, _)| id);
                format!("OK affected_rows={affected} last_insert_id={last_insert_id}")
            }
            _ => format!("{} bytes", payload.len()),
        },
        (_, [0xfe, ..]) if payload.len() < 9 => "EOF".to_owned(),
        (_, [0xfe, rest @ ..]) => match nul_string(rest) {
            Some((plugin, _)) => format!("auth switch plugin={}", printable(plugin)),
            None => format!("{} bytes", payload.len()),
        },
        (_, [0x01, 0x03]) => "auth more data: fast auth success".to_owned(),
        (_, [0x01, 0x04]) => "auth more data: perform full authentication".to_owned(),
        (_, _) if is_column_definition(packet) => render_column(payload),
        (_, _) => match column_count(payload) {
            Some((columns, follow)) => {
                *state = if follow {
                    ResultState::Definitions {
                        columns,
                        left: columns,
                    }
                } else {
                    ResultState::Rows {
                        columns,
                        started: false,
                        eof_passed: false,
                    }
                };
                format!("result set: {columns} columns")
            }
            _ if payload.first() == Some(&0x01) => {
                format!("auth more data: {} bytes", payload.len() - 1)
            }
            _ => format!("{} bytes", payload.len()),
        },
    }
}

/// A column definition: `column name`.
fn render_column(payload: &[u8]) -> String {
    let name = (|| {
        let (_catalog, rest) = lenenc_string(payload)?;
        let (_schema, rest) = lenenc_string(rest)?;
        let (_table, rest) = lenenc_string(rest)?;
        let (_org_table, rest) = lenenc_string(rest)?;
        let (name, _) = lenenc_string(rest)?;
        Some(name)
    })();
    match name {
        Some(name) => format!("column {}", printable(name)),
        None => "column".to_owned(),
    }
}

/// A text row: its `count` values separated by ` | `; other rows by size.
fn render_row(payload: &[u8], count: u64) -> String {
    let mut values = Vec::new();
    let mut rest = payload;
    while !rest.is_empty() && (values.len() as u64) < count {
        if let [0xfb, after @ ..] = rest {
            values.push("NULL".to_owned());
            rest = after;
            continue;
        }
        let Some((value, after)) = lenenc_string(rest) else {
            break;
        };
        values.push(printable(value));
        rest = after;
    }
    if rest.is_empty() && values.len() as u64 == count {
        format!("row: {}", values.join(" | "))
    } else {
        format!("row: {} bytes", payload.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Completeness::{Complete, NeedMore, Unknown};
    use crate::parse::testing::{Frame, check_frame, fuzz_inputs};
    use crate::{Unit, split_exchange};

    /// A packet on the wire.
    fn wire(sequence: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut out = vec![len as u8, (len >> 8) as u8, (len >> 16) as u8, sequence];
        out.extend_from_slice(payload);
        out
    }

    fn query(sql: &str) -> Vec<u8> {
        wire(0, &[&[command::QUERY], sql.as_bytes()].concat())
    }

    fn lenenc(text: &[u8]) -> Vec<u8> {
        [&[text.len() as u8], text].concat()
    }

    /// An OK packet payload with these status flags.
    fn ok_payload(status: u16) -> Vec<u8> {
        let [low, high] = status.to_le_bytes();
        vec![0x00, 0x00, 0x00, low, high, 0x00, 0x00]
    }

    /// An EOF packet payload with these status flags.
    fn eof_payload(status: u16) -> Vec<u8> {
        let [low, high] = status.to_le_bytes();
        vec![0xfe, 0x00, 0x00, low, high]
    }

    /// A column definition (protocol 41) of column `name` in table `t`.
    fn column(name: &str) -> Vec<u8> {
        let mut payload = Vec::new();
        for part in [
            &b"def"[..],
            b"shop",
            b"t",
            b"t",
            name.as_bytes(),
            name.as_bytes(),
        ] {
            payload.extend(lenenc(part));
        }
        // Fixed fields: charset, length, type (VARCHAR), flags, decimals.
        payload.extend_from_slice(&[
            0x0c, 0xff, 0x00, 0x00, 0x01, 0x00, 0x00, 0xfd, 0, 0, 0, 0, 0,
        ]);
        payload
    }

    /// A MySQL 8 greeting offering `caching_sha2_password`.
    fn greeting_bytes() -> Vec<u8> {
        let mut payload = vec![0x0a];
        payload.extend_from_slice(b"8.0.36\0");
        payload.extend_from_slice(&[0x0b, 0x00, 0x00, 0x00]); // connection id
        payload.extend_from_slice(b"\x3a\x1b\x44\x07\x5e\x29\x10\x6c"); // nonce part 1
        payload.push(0x00); // filler
        payload.extend_from_slice(&[0xff, 0xff]); // capabilities, lower
        payload.push(0xff); // utf8mb4_0900_ai_ci
        payload.extend_from_slice(&[0x02, 0x00]); // status: autocommit
        payload.extend_from_slice(&[0xff, 0xdf]); // capabilities, upper
        payload.push(21); // nonce length
        payload.extend_from_slice(&[0; 10]);
        payload.extend_from_slice(b"\x0f\x2c\x61\x33\x4e\x52\x17\x08\x6a\x2d\x5c\x41\x00");
        payload.extend_from_slice(b"caching_sha2_password\0");
        wire(0, &payload)
    }

    const CAPABILITIES: u32 = 0x0000_0001 // CLIENT_LONG_PASSWORD
        | 0x0000_0004 // CLIENT_LONG_FLAG
        | CLIENT_CONNECT_WITH_DB
        | CLIENT_PROTOCOL_41
        | 0x0000_2000 // CLIENT_TRANSACTIONS
        | CLIENT_SECURE_CONNECTION
        | 0x0002_0000 // CLIENT_MULTI_RESULTS
        | CLIENT_PLUGIN_AUTH
        | CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA;

    /// A handshake response of user `app` to database `orders`, with `auth`
    /// from `plugin` and libmysqlclient's connection attributes.
    fn handshake(plugin: &str, auth: &[u8]) -> Vec<u8> {
        let mut payload = (CAPABILITIES | CLIENT_CONNECT_ATTRS).to_le_bytes().to_vec();
        payload.extend_from_slice(&16_777_216u32.to_le_bytes());
        payload.push(0xff);
        payload.extend_from_slice(&[0; 23]);
        payload.extend_from_slice(b"app\0");
        payload.extend(lenenc(auth));
        payload.extend_from_slice(b"orders\0");
        payload.extend_from_slice(plugin.as_bytes());
        payload.push(0);
        let mut attributes = Vec::new();
        for (name, value) in [
            ("_pid", "4242"),
            ("_platform", "x86_64"),
            ("_os", "Linux"),
            ("_client_name", "libmysql"),
            ("os_user", "app"),
            ("_client_version", "8.0.36"),
            ("program_name", "mysql"),
        ] {
            attributes.extend(lenenc(name.as_bytes()));
            attributes.extend(lenenc(value.as_bytes()));
        }
        payload.extend(lenenc(&attributes));
        wire(1, &payload)
    }

    fn key(request: &[u8]) -> String {
        let normalized = Mysql.normalize(request, &NormalizeOptions::default());
        String::from_utf8_lossy(&normalized.map(|n| n.key).unwrap_or_default()).into_owned()
    }

    fn respond(request: &[u8], bytes: &[u8]) -> Completeness {
        Mysql.frame_response(request, bytes)
    }

    /// Every strict prefix of `response` needs more, the whole is complete,
    /// and the start of another response after it changes nothing.
    fn assert_response(request: &[u8], response: &[u8]) {
        for split in 0..response.len() {
            assert_eq!(
                respond(request, &response[..split]),
                NeedMore,
                "prefix {split}"
            );
        }
        assert_eq!(respond(request, response), Complete(response.len()));
        let followed = [response, &wire(1, &[0x02])[..3]].concat();
        assert_eq!(respond(request, &followed), Complete(response.len()));
    }

    // Client packets ----------------------------------------------------------

    #[test]
    fn commands() {
        let query = query("SELECT * FROM users WHERE id = 7");
        for split in 0..query.len() {
            let expected = if split < 5 { Unknown } else { NeedMore };
            assert_eq!(client_packet(&query[..split]), expected, "prefix {split}");
            assert_eq!(Mysql.frame_request(&query[..split]), NeedMore);
        }
        assert_eq!(client_packet(&query), Complete(query.len()));
        let quit = wire(0, b"\x01");
        assert_eq!(client_packet(&quit), Complete(5));
        let both = [query.clone(), quit].concat();
        assert_eq!(client_packet(&both), Complete(query.len()));
        assert_eq!(Mysql.frame_request(&both), Complete(query.len()));
    }

    #[test]
    fn handshake_responses_are_recognised() {
        let mut payload = 0x000f_a68du32.to_le_bytes().to_vec();
        payload.extend_from_slice(&16_777_216u32.to_le_bytes());
        payload.push(0x21);
        payload.extend_from_slice(&[0; 23]);
        payload.extend_from_slice(b"app\0\x14abcdefghijklmnopqrstmysql_native_password\0");
        let packet = wire(1, &payload);
        for split in 0..packet.len() {
            let expected = if split < 36 { Unknown } else { NeedMore };
            assert_eq!(client_packet(&packet[..split]), expected, "prefix {split}");
        }
        assert_eq!(client_packet(&packet), Complete(packet.len()));
        // SSL request: exactly the 32 fixed bytes.
        let ssl = wire(1, &payload[..32]);
        assert_eq!(client_packet(&ssl), Complete(36));
        assert!(!Mysql.expects_response(&ssl));
        assert_eq!(Mysql.answer_setup(&ssl, &[]), None);
        // MariaDB clients put extended capabilities in the last 4 filler bytes.
        let mut mariadb = payload.clone();
        mariadb[28..32].copy_from_slice(&0x0000_0004u32.to_le_bytes());
        assert_eq!(client_packet(&wire(1, &mariadb)), Complete(packet.len()));
        // Without PROTOCOL_41, or with a non-zero filler, it is not recognised.
        let mut old = payload.clone();
        old[1] = 0;
        assert_eq!(client_packet(&wire(1, &old)), Unknown);
        let mut filler = payload;
        filler[20] = 1;
        assert_eq!(client_packet(&wire(1, &filler)), Unknown);
    }

    #[test]
    fn multi_packet_payload() {
        let mut first = vec![0xff, 0xff, 0xff, 0, 0x03];
        first.resize(4 + MAX_PACKET_PAYLOAD, b'x');
        assert_eq!(client_packet(&first), NeedMore);
        let mut whole = first.clone();
        whole.extend_from_slice(&wire(1, b"end"));
        assert_eq!(client_packet(&whole), Complete(whole.len()));
        assert_eq!(client_packet(&whole[..first.len() + 2]), NeedMore);
        assert_eq!(Mysql.frame_request(&whole), Complete(whole.len()));
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
            assert_eq!(client_packet(case), Unknown, "{case:?}");
            assert!(!Mysql.detect_request(case), "{case:?}");
        }
        // Once the connection is known to be MySQL, later authentication
        // packets are framed (an empty auth switch response included).
        assert_eq!(Mysql.frame_request(cases[0]), Complete(9));
        assert_eq!(Mysql.frame_request(b"\x00\x00\x00\x03"), Complete(4));
        assert_eq!(Mysql.frame_request(b"\x00\x00\x00"), NeedMore);
    }

    #[test]
    fn greetings() {
        let greeting = greeting_bytes();
        assert!(Mysql.detect_greeting(&greeting));
        let parsed = super::greeting(&greeting).expect("a greeting");
        assert_eq!(parsed.server_version, b"8.0.36");
        assert_eq!(parsed.plugin, Some(&b"caching_sha2_password"[..]));
        // MariaDB's version prefix.
        let mut mariadb = greeting[4..].to_vec();
        mariadb.splice(1..7, b"5.5.5-10.11.6-MariaDB".iter().copied());
        assert!(Mysql.detect_greeting(&wire(0, &mariadb)));
        let mut not_greetings = vec![
            wire(1, &greeting[4..]),                // sequence 1
            b"220 smtp.example ESMTP\r\n".to_vec(), // another server-first protocol
            b"SSH-2.0-OpenSSH_9.6\r\n".to_vec(),
            greeting[..20].to_vec(), // cut before the filler
        ];
        let mut protocol_9 = greeting.clone();
        protocol_9[4] = 0x09;
        let mut letters = greeting.clone();
        letters[5] = b'v';
        let mut filler = greeting.clone();
        filler[4 + 1 + 7 + 12] = 1;
        not_greetings.extend([protocol_9, letters, filler]);
        for bytes in not_greetings {
            assert!(!Mysql.detect_greeting(&bytes), "{bytes:?}");
        }
        assert_eq!(
            Mysql.render(&greeting, Side::Response).as_deref(),
            Some("greeting server=8.0.36 plugin=caching_sha2_password")
        );
    }

    // Authentication ----------------------------------------------------------

    #[test]
    fn caching_sha2_fast_auth_is_answered_with_the_recorded_ok() {
        let greeting = greeting_bytes();
        let recorded_request = handshake("caching_sha2_password", &[0x5a; 32]);
        let recorded_ok = ok_payload(0x4002);
        let recorded_response = [wire(2, &[0x01, 0x03]), wire(3, &recorded_ok)].concat();
        // The reply is framed as one: fast-auth success, then the OK.
        assert_response(&recorded_request, &recorded_response);
        assert_eq!(
            split_exchange(&Mysql, &recorded_request, &recorded_response),
            Some(vec![Unit {
                request: 0..recorded_request.len(),
                response: 0..recorded_response.len(),
            }])
        );
        assert_eq!(
            Mysql.render(&recorded_response, Side::Response).as_deref(),
            Some("auth more data: fast auth success\nOK affected_rows=0 last_insert_id=0")
        );
        // Replay: another scramble, answered with the recorded OK at sequence 2.
        let request = handshake("caching_sha2_password", &[0xa5; 32]);
        assert!(Mysql.is_setup(&request));
        let recorded = [
            Exchange {
                request: b"",
                response: &greeting,
            },
            Exchange {
                request: &recorded_request,
                response: &recorded_response,
            },
        ];
        // Fast-auth success first: PHP's mysqlnd waits for it.
        assert_eq!(
            Mysql.answer_setup(&request, &recorded),
            Some(vec![
                2, 0, 0, 2, 0x01, 0x03, // fast-auth success
                7, 0, 0, 3, 0x00, 0x00, 0x00, 0x02, 0x40, 0x00, 0x00, // the recorded OK
            ])
        );
        // Nothing recorded: a minimal OK.
        assert_eq!(
            Mysql.answer_setup(&request, &recorded[..1]),
            Some(vec![
                2, 0, 0, 2, 0x01, 0x03, // fast-auth success
                7, 0, 0, 3, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, // a minimal OK
            ])
        );
        // An empty password sends no scramble, and gets the OK at once.
        assert_eq!(
            Mysql.answer_setup(&handshake("caching_sha2_password", b""), &recorded),
            Some(vec![7, 0, 0, 2, 0x00, 0x00, 0x00, 0x02, 0x40, 0x00, 0x00])
        );
    }

    #[test]
    fn the_auth_switch_path_is_answered_with_the_ok_that_ended_it() {
        let request = handshake("mysql_native_password", &[0x11; 20]);
        let switch = wire(
            2,
            &[&b"\xfecaching_sha2_password\0"[..], &[0x33; 20], b"\0"].concat(),
        );
        let switch_response = wire(3, &[0x77; 32]);
        let ok = wire(4, &ok_payload(0x0002));
        assert_response(&request, &switch);
        assert_response(&switch_response, &ok);
        assert_eq!(
            Mysql.render(&switch, Side::Response).as_deref(),
            Some("auth switch plugin=caching_sha2_password")
        );
        assert!(Mysql.is_setup(&switch_response));
        assert_eq!(key(&switch_response), "mysql auth");
        assert_eq!(
            Mysql.render(&switch_response, Side::Request).as_deref(),
            Some("auth seq=3: 32 bytes")
        );
        let recorded = [
            Exchange {
                request: &request,
                response: &switch,
            },
            Exchange {
                request: &switch_response,
                response: &ok,
            },
        ];
        // The handshake response gets the OK at once, at sequence 2...
        assert_eq!(
            Mysql.answer_setup(&handshake("mysql_native_password", &[0x22; 20]), &recorded),
            Some(wire(2, &ok_payload(0x0002)))
        );
        // ...and a switch response (a client that got a recorded switch) at 4.
        assert_eq!(
            Mysql.answer_setup(&wire(3, &[0x66; 32]), &recorded),
            Some(wire(4, &ok_payload(0x0002)))
        );
        // Commands are matched like any other request.
        assert_eq!(
            Mysql.answer_setup(&query("SET NAMES utf8mb4"), &recorded),
            None
        );
    }

    #[test]
    fn a_handshake_response_with_attributes_has_the_handshake_key() {
        let request = handshake("caching_sha2_password", &[0x5a; 32]);
        assert!(Mysql.detect_request(&request));
        assert_eq!(Mysql.frame_request(&request), Complete(request.len()));
        assert_eq!(key(&request), "mysql handshake");
        // The same key whatever the scramble and attributes.
        assert_eq!(
            key(&handshake("mysql_native_password", &[1; 20])),
            "mysql handshake"
        );
        let parsed = handshake_response(&request[4..]).expect("a handshake response");
        assert_eq!(parsed.user, b"app");
        assert_eq!(parsed.database, Some(&b"orders"[..]));
        assert_eq!(parsed.attributes.len(), 7);
        assert_eq!(
            parsed.attributes[3],
            (&b"_client_name"[..], &b"libmysql"[..])
        );
        assert_eq!(
            Mysql.render(&request, Side::Request).as_deref(),
            Some("handshake response user=app db=orders plugin=caching_sha2_password attributes=7")
        );
    }

    // Commands and results ----------------------------------------------------

    #[test]
    fn prepared_statements() {
        let prepare = wire(0, b"\x16SELECT * FROM t WHERE id = ?");
        let prepared = [0x00, 1, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0];
        let classic = [
            wire(1, &prepared),
            wire(2, &column("?")),
            wire(3, &eof_payload(0x0002)),
            wire(4, &column("id")),
            wire(5, &eof_payload(0x0002)),
        ]
        .concat();
        // Its EOF comes with the definitions: without it, the response ends
        // after the last definition as it does with EOF deprecated.
        let last_definition_end = classic.len() - 9;
        for split in 0..last_definition_end {
            assert_eq!(
                respond(&prepare, &classic[..split]),
                NeedMore,
                "prefix {split}"
            );
        }
        assert_eq!(
            respond(&prepare, &classic[..last_definition_end + 4]),
            Complete(last_definition_end)
        );
        assert_eq!(respond(&prepare, &classic), Complete(classic.len()));
        let deprecated = [
            wire(1, &prepared),
            wire(2, &column("?")),
            wire(3, &column("id")),
        ]
        .concat();
        assert_eq!(respond(&prepare, &deprecated), Complete(deprecated.len()));
        assert_eq!(
            respond(&prepare, &deprecated[..deprecated.len() - 1]),
            NeedMore
        );
        assert_eq!(key(&prepare), "mysql 16 SELECT * FROM t WHERE id = ?");
        assert_eq!(
            Mysql.render(&classic, Side::Response).as_deref(),
            Some("statement prepared: id=1 columns=1 params=1\ncolumn ?\nEOF\ncolumn id\nEOF")
        );

        // Statement 1, no flags, one iteration, one BIGINT parameter: 42.
        let mut execute = vec![0x17, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0x00, 0x01, 0x08, 0x00];
        execute.extend_from_slice(&42u64.to_le_bytes());
        let execute = wire(0, &execute);
        let mut row = vec![0x00, 0x00];
        row.extend_from_slice(&42u64.to_le_bytes());
        let rows = [
            wire(1, &[0x01]),
            wire(2, &column("id")),
            wire(3, &eof_payload(0x0002)),
            wire(4, &row),
            wire(5, &eof_payload(0x0002)),
        ]
        .concat();
        assert_response(&execute, &rows);
        assert_eq!(key(&execute), "mysql 17 1");
        assert!(!Mysql.is_setup(&execute) && !Mysql.is_setup(&prepare));
        assert_eq!(
            Mysql.render(&execute, Side::Request).as_deref(),
            Some("COM_STMT_EXECUTE stmt=1")
        );

        // Both in one go split into their exchanges.
        let requests = [prepare.clone(), execute.clone()].concat();
        let responses = [classic.clone(), rows.clone()].concat();
        assert_eq!(
            split_exchange(&Mysql, &requests, &responses),
            Some(vec![
                Unit {
                    request: 0..prepare.len(),
                    response: 0..classic.len(),
                },
                Unit {
                    request: prepare.len()..requests.len(),
                    response: classic.len()..responses.len(),
                },
            ])
        );
        // A closed statement gets no answer.
        let close = wire(0, &[0x19, 1, 0, 0, 0]);
        assert!(!Mysql.expects_response(&close));
        let with_close = [close.clone(), execute.clone()].concat();
        assert_eq!(
            split_exchange(&Mysql, &with_close, &rows).map(|units| units[0].response.clone()),
            Some(0..0)
        );
    }

    #[test]
    fn text_result_sets() {
        let select = query("SELECT id, name FROM users");
        let classic = [
            wire(1, &[0x02]),
            wire(2, &column("id")),
            wire(3, &column("name")),
            wire(4, &eof_payload(0x0002)),
            wire(5, &[lenenc(b"1"), lenenc(b"alice")].concat()),
            wire(6, &[&lenenc(b"2")[..], &[0xfb]].concat()),
            wire(7, &eof_payload(0x0002)),
        ]
        .concat();
        assert_response(&select, &classic);
        assert_eq!(
            Mysql.render(&classic, Side::Response).as_deref(),
            Some(
                "result set: 2 columns\ncolumn id\ncolumn name\nEOF\nrow: 1 | alice\nrow: 2 | NULL\nEOF"
            )
        );
        // EOF deprecated: no EOF after the columns, an OK with 0xfe at the end.
        let deprecated = [
            wire(1, &[0x02]),
            wire(2, &column("id")),
            wire(3, &column("name")),
            wire(4, &[lenenc(b"1"), lenenc(b"alice")].concat()),
            wire(5, &[0xfe, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00]),
        ]
        .concat();
        assert_response(&select, &deprecated);
        // No rows at all.
        let empty = [
            wire(1, &[0x01]),
            wire(2, &column("id")),
            wire(3, &eof_payload(2)),
            wire(4, &eof_payload(2)),
        ]
        .concat();
        assert_response(&select, &empty);
        // An error instead of the rows.
        let failed = [
            wire(1, &[0x01]),
            wire(2, &column("id")),
            wire(3, &eof_payload(2)),
            wire(4, b"\xff\x0c\x05#HY000Query execution was interrupted"),
        ]
        .concat();
        assert_response(&select, &failed);
    }

    /// Clients that cache metadata get a flag with the column count: after
    /// it from MariaDB (as the mariadb command-line client gets), before it
    /// from MySQL 8; 0 leaves the column definitions out.
    #[test]
    fn result_sets_with_a_metadata_flag() {
        let select = query("SELECT * FROM t");
        let row = [lenenc(b"1"), lenenc(b"alice")].concat();
        let mariadb = [
            wire(1, &[0x02, 0x01]),
            wire(2, &column("id")),
            wire(3, &column("name")),
            wire(4, &eof_payload(0x0022)),
            wire(5, &row),
            wire(6, &eof_payload(0x0022)),
        ]
        .concat();
        assert_response(&select, &mariadb);
        assert_eq!(
            Mysql.render(&mariadb, Side::Response).as_deref(),
            Some("result set: 2 columns\ncolumn id\ncolumn name\nEOF\nrow: 1 | alice\nEOF")
        );
        let skipped = [
            wire(1, &[0x02, 0x00]),
            wire(2, &eof_payload(0x0022)),
            wire(3, &row),
            wire(4, &eof_payload(0x0022)),
        ]
        .concat();
        assert_response(&select, &skipped);
        assert_eq!(
            Mysql.render(&skipped, Side::Response).as_deref(),
            Some("result set: 2 columns\nEOF\nrow: 1 | alice\nEOF")
        );
        let mysql = [
            wire(1, &[0x01, 0x02]),
            wire(2, &column("id")),
            wire(3, &column("name")),
            wire(4, &row),
            wire(5, &[0xfe, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00]),
        ]
        .concat();
        assert_response(&select, &mysql);
        let mysql_skipped = [
            wire(1, &[0x00, 0x02]),
            wire(2, &row),
            wire(3, &[0xfe, 0, 0, 2, 0, 0, 0]),
        ]
        .concat();
        assert_response(&select, &mysql_skipped);
        // Neither: a flag of 2, or no columns.
        for count in [&[0x02, 0x02][..], &[0x00, 0x00], &[0x01, 0x00, 0x05]] {
            let response = [wire(1, count), wire(2, &row), wire(3, &eof_payload(2))].concat();
            assert_eq!(respond(&select, &response), Unknown, "{count:?}");
        }
    }

    #[test]
    fn results_that_announce_more_results() {
        let call = query("CALL report(7)");
        let more = SERVER_MORE_RESULTS_EXISTS | 0x0002;
        let result = [
            wire(1, &[0x01]),
            wire(2, &column("total")),
            wire(3, &eof_payload(more)),
            wire(4, &lenenc(b"99")),
            wire(5, &eof_payload(more)),
            wire(6, &ok_payload(0x0002)),
        ]
        .concat();
        assert_response(&call, &result);
        let two_statements = [wire(1, &ok_payload(more)), wire(2, &ok_payload(0x0002))].concat();
        assert_response(
            &query("UPDATE a SET x=1; UPDATE b SET y=2"),
            &two_statements,
        );
        // The column definitions of a cursor end the result.
        let execute = wire(0, &[0x17, 1, 0, 0, 0, 0x01, 1, 0, 0, 0]);
        let cursor = [
            wire(1, &[0x01]),
            wire(2, &column("id")),
            wire(3, &eof_payload(0x0042)),
        ]
        .concat();
        assert_response(&execute, &cursor);
    }

    #[test]
    fn simple_commands_and_unframed_answers() {
        let ok = wire(1, &ok_payload(0x0002));
        for command in [0x02, 0x0e, 0x1a, 0x1b, 0x1f] {
            assert_response(&wire(0, &[command, b'x']), &ok);
        }
        assert!(!Mysql.expects_response(&wire(0, &[command::QUIT])));
        assert!(Mysql.expects_response(&query("SELECT 1")));
        // LOAD DATA LOCAL INFILE: the client sends a file next.
        assert_eq!(
            respond(
                &query("LOAD DATA LOCAL INFILE 'x' INTO TABLE t"),
                &wire(1, b"\xfbx")
            ),
            Unknown
        );
        // COM_STMT_FETCH and replication are not framed.
        assert_eq!(
            respond(&wire(0, &[0x1c, 1, 0, 0, 0, 1, 0, 0, 0]), &ok),
            Unknown
        );
        // A result set whose column definitions are not: garbage.
        let garbage = [wire(1, &[0x01]), wire(2, b"not a column")].concat();
        assert_eq!(respond(&query("SELECT 1"), &garbage), Unknown);
        assert_eq!(respond(b"", &ok), Unknown);
    }

    // Keys, set-up, errors, rendering -----------------------------------------

    #[test]
    fn sql_is_normalized_into_the_key() {
        let cases = [
            ("  /* app=svc */ select 1", "mysql 03 SELECT ?"),
            (
                "-- note\n(SELECT 1) UNION (SELECT 2)",
                "mysql 03 (SELECT ?) UNION (SELECT ?)",
            ),
            (
                "select *  from orders\n\twhere user_id=7 and created_at > '2024-05-01 10:00:00' # why",
                "mysql 03 SELECT * FROM orders WHERE user_id=? AND created_at > ?",
            ),
            (
                "INSERT INTO `t1` (a, b) VALUES (-3.5e2, \"it\\\"s\"), (0x1F, 'O''Brien')",
                "mysql 03 INSERT INTO `t1` (a, b) VALUES (-?, ?), (?, ?)",
            ),
            (
                "update t set n = n + 1 where id in (1,2)",
                "mysql 03 UPDATE t SET n = n + ? WHERE id IN (?,?)",
            ),
            ("SELECT id2, t.x FROM t", "mysql 03 SELECT id2, t.x FROM t"),
            ("", "mysql 03 "),
            ("select 'unclosed", "mysql 03 SELECT ?"),
        ];
        for (sql, expected) in cases {
            assert_eq!(key(&query(sql)), expected, "{sql:?}");
        }
        let long = format!("SELECT {} FROM t", "column_name, ".repeat(40));
        let key = key(&query(&long));
        assert_eq!(key.len(), MAX_KEY_BYTES);
        assert!(key.starts_with("mysql 03 SELECT column_name, column_name,"));
        assert_eq!(self::key(&wire(0, &[0x0e])), "mysql 0e");
        assert_eq!(self::key(b"\x00\x01binary"), "");
    }

    #[test]
    fn set_up_packets() {
        for setup in [
            query("SET NAMES utf8mb4"),
            query(" /* driver */ set autocommit=1"),
            wire(0, b"\x02orders"),
            wire(0, &[0x1b, 0x00, 0x00]),
            wire(3, &[0x02]),
            wire(5, &[0x44; 256]),
            handshake("caching_sha2_password", &[0; 32]),
        ] {
            assert!(Mysql.is_setup(&setup), "{setup:?}");
        }
        for not_setup in [
            query("SELECT 1"),
            query("UPDATE t SET a = 1"),
            wire(0, &[0x0e]),
            b"\x01\x00".to_vec(),
        ] {
            assert!(!Mysql.is_setup(&not_setup), "{not_setup:?}");
        }
    }

    #[test]
    fn error_replies_are_err_packets() {
        let reply = Mysql
            .error_reply(&query("SELECT 1"), "koala: no match")
            .expect("MySQL has error replies");
        assert_eq!(reply, b"\x18\x00\x00\x01\xff\x51\x04#HY000koala: no match");
        assert_eq!(
            Mysql.render(&reply, Side::Response).as_deref(),
            Some("ERR 1105 (HY000): koala: no match")
        );
        let during_auth = Mysql
            .error_reply(&wire(3, &[1; 32]), "no")
            .expect("an ERR packet");
        assert_eq!(during_auth[3], 4);
        let long = "é".repeat(400);
        let reply = Mysql
            .error_reply(&query("SELECT 1"), &long)
            .expect("an ERR packet");
        assert_eq!(reply.len(), 4 + 9 + 512);
    }

    #[test]
    fn renders_commands() {
        let pipeline = [
            query("SELECT 1"),
            wire(0, b"\x02orders"),
            wire(0, &[0x0e]),
            wire(0, &[0x19, 2, 0, 0, 0]),
        ]
        .concat();
        assert_eq!(
            Mysql.render(&pipeline, Side::Request).as_deref(),
            Some("COM_QUERY SELECT 1\nCOM_INIT_DB orders\nCOM_PING\nCOM_STMT_CLOSE stmt=2")
        );
        assert_eq!(
            Mysql.render(&pipeline[..14], Side::Request).as_deref(),
            Some("COM_QUERY SELECT 1\n(1 more bytes)")
        );
        assert_eq!(Mysql.render(b"\x05\x00", Side::Request), None);
        let ok = [wire(1, &[0x00, 0x03, 0x07, 0x02, 0x00, 0x00, 0x00])].concat();
        assert_eq!(
            Mysql.render(&ok, Side::Response).as_deref(),
            Some("OK affected_rows=3 last_insert_id=7")
        );
    }

    // The catalogue ------------------------------------------------------------

    /// Requests sniffed the way koala-replayer's framing did: HTTP, RESP
    /// arrays, then MySQL client packets; the other protocols claim none.
    #[test]
    fn the_catalogue_frames_each_protocol() {
        assert_eq!(crate::frame_request(b""), NeedMore);
        let http = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(crate::frame_request(http), Complete(http.len()));
        assert_eq!(crate::frame_request(&http[..10]), NeedMore);
        let command = b"*1\r\n$4\r\nPING\r\n";
        assert_eq!(crate::frame_request(command), Complete(command.len()));
        assert_eq!(crate::frame_request(&command[..6]), NeedMore);
        let select = query("SELECT 1");
        assert_eq!(crate::frame_request(&select), Complete(select.len()));
        // An unfinished command is claimed by no protocol (see
        // commands_are_detected_only_when_complete).
        assert_eq!(crate::frame_request(&select[..7]), Unknown);
        // A MySQL packet that starts with '*' (a 42-byte payload).
        let star = wire(0, &[&b"\x03"[..], &[b' '; 41]].concat());
        assert_eq!(star[0], b'*');
        assert_eq!(crate::frame_request(&star), Complete(star.len()));
        let handshake = handshake("caching_sha2_password", &[0x5a; 32]);
        assert_eq!(crate::frame_request(&handshake), Complete(handshake.len()));
        for (bytes, name) in [
            (&http[..], "http"),
            (&command[..], "redis"),
            (&select[..], "mysql"),
            (&star[..], "mysql"),
            (&handshake[..], "mysql"),
        ] {
            assert_eq!(crate::detect_request(bytes).map(|p| p.name()), Some(name));
        }
        assert_eq!(
            crate::detect_greeting(&greeting_bytes()).map(|p| p.name()),
            Some("mysql")
        );
        assert_eq!(
            crate::normalize(&select, &NormalizeOptions::default()).key,
            b"mysql 03 SELECT ?"
        );
    }

    // Robustness --------------------------------------------------------------

    #[test]
    fn random_and_mutated_input_never_panics() {
        let greeting = greeting_bytes();
        let handshake = handshake("caching_sha2_password", &[0x5a; 32]);
        let result = [
            wire(1, &[0x01]),
            wire(2, &column("id")),
            wire(3, &eof_payload(0x000a)),
            wire(4, &lenenc(b"7")),
            wire(5, &eof_payload(2)),
            wire(6, &ok_payload(2)),
        ]
        .concat();
        let prepared = [
            wire(1, &[0x00, 1, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0]),
            wire(2, &column("?")),
            wire(3, &column("id")),
        ]
        .concat();
        let seeds: [&[u8]; 6] = [
            &greeting,
            &handshake,
            &result,
            &prepared,
            b"\x0a\x00\x00\x00\x03SELECT 1;",
            b"\x02\x00\x00\x02\x01\x03\x07\x00\x00\x03\x00\x00\x00\x02\x00\x00\x00",
        ];
        let alphabet = b"\x00\x01\x02\x03\x05\x0a\x16\x17\xfb\xfc\xfd\xfe\xffdef?' 0123456789";
        let requests: [Vec<u8>; 5] = [
            query("SELECT 1"),
            wire(0, b"\x16SELECT ?"),
            wire(0, &[0x17, 1, 0, 0, 0]),
            handshake.clone(),
            wire(0, &[0x0e]),
        ];
        let frames: [&Frame<'_>; 7] = [
            &client_packet,
            &|bytes| Mysql.frame_request(bytes),
            &|bytes| respond(&requests[0], bytes),
            &|bytes| respond(&requests[1], bytes),
            &|bytes| respond(&requests[2], bytes),
            &|bytes| respond(&requests[3], bytes),
            &|bytes| respond(&requests[4], bytes),
        ];
        let options = NormalizeOptions::default();
        fuzz_inputs(&seeds, alphabet, 20_000, |bytes, extra| {
            for frame in frames {
                check_frame(frame, bytes, extra);
            }
            let _ = Mysql.detect_greeting(bytes);
            let _ = Mysql.normalize(bytes, &options);
            let _ = Mysql.is_setup(bytes);
            let _ = Mysql.expects_response(bytes);
            let recorded = [
                Exchange {
                    request: bytes,
                    response: extra,
                },
                Exchange {
                    request: &handshake,
                    response: bytes,
                },
            ];
            let _ = Mysql.answer_setup(bytes, &recorded);
            let _ = Mysql.error_reply(bytes, "x");
            let _ = Mysql.render(bytes, Side::Request);
            let _ = Mysql.render(bytes, Side::Response);
            let mut sql = Vec::new();
            normalize_sql(bytes, &mut sql, 64);
            assert!(sql.len() <= 64);
        });
    }

    /// A command is claimed only whole: the start of another binary
    /// protocol with a little-endian length (a MongoDB message: length,
    /// request id...) must not wait for a MySQL packet that never comes.
    #[test]
    fn commands_are_detected_only_when_complete() {
        let query = [&[9, 0, 0, 0, 0x03][..], b"SELECT 1"].concat();
        assert!(Mysql.detect_request(&query));
        assert!(!Mysql.detect_request(&query[..query.len() - 1]));
        // A MongoDB OP_MSG header: messageLength 45, requestID 5, ...
        let mongo = [45, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0xdd, 7, 0, 0];
        assert!(!Mysql.detect_request(&mongo));
        assert!(crate::detect_request(&mongo).is_none());
        assert!(Mysql.closes_after(&[1, 0, 0, 0, 0x01], b""));
        assert!(!Mysql.closes_after(&query, b""));
    }
}
