//! PostgreSQL frontend/backend protocol, version 3.
//!
//! **Requests.** A client opens with an untyped start-up packet (`Int32`
//! length, `Int32` code): a StartupMessage (protocol 3.x and `name=value`
//! parameters), an SSLRequest or GSSENCRequest (the server answers one byte,
//! `S`/`G` or `N`), or a CancelRequest (no answer: the server closes). Every
//! later message is typed: `Byte1` type, `Int32` length counting itself,
//! body. One framed request is what the server answers as one:
//!
//! - a start-up packet; a password/SASL message `p`; a simple Query `Q`; a
//!   FunctionCall `F`; Terminate `X` (no answer);
//! - an extended-protocol group (Parse, Bind, Describe, Execute, Close) up to
//!   and including the first Sync `S` or Flush `H`;
//! - COPY data: CopyData `d` messages up to and including CopyDone `c` or
//!   CopyFail `f` (the `COPY ... FROM STDIN` query before them is a request
//!   of its own, answered by CopyInResponse `G`). After an extended-protocol
//!   COPY the client's Sync comes after CopyDone and is a request of its
//!   own; such a recorded exchange is not split (it stays one unit).
//!
//! **Responses** end at the ReadyForQuery `Z` of each Query/Sync/copy end in
//! the request, or at CopyInResponse `G` (the server then waits for data).
//! A start-up or `p` reply ends at `Z`, at an ErrorResponse `E`, or at an
//! Authentication request that needs an answer (cleartext, MD5, SASL,
//! SASLContinue, GSS). The reply to a Flush group is predicted message by
//! message (ParseComplete for Parse, rows and a CommandComplete for
//! Execute...); it ends early at an ErrorResponse.
//!
//! **Matching.** The operation key is `pg` and the message types of the
//! request, then its SQL with literals replaced by `?`:
//! `pg Q SELECT * FROM items WHERE id = ?`,
//! `pg PBDES INSERT INTO t (a, b) VALUES ($1, $2)`; a group without Parse
//! (a named prepared statement reused) is keyed by the statement name.
//! Set-up messages are `pg startup`, `pg ssl`, `pg gssenc`, `pg auth`,
//! `pg cancel`. The canonical bytes are the request bytes.
//!
//! **Replaying authentication.** scram-sha-256, PostgreSQL's default, mixes
//! a random client nonce into every exchange, so a recorded server reply
//! never verifies on replay. Replay therefore does not replay
//! authentication: it answers a StartupMessage (or a `p` message, from a
//! client that still sends one) with AuthenticationOk followed by the
//! ParameterStatus, BackendKeyData and ReadyForQuery messages of the
//! recorded set-up. Trust, MD5 and SCRAM clients all accept
//! AuthenticationOk at once, so no password is needed. An SSLRequest is
//! answered `S` when a recorded SSLRequest to the same dependency was (the
//! recording's client then spoke TLS: libkoala.so's TLS hooks answer its
//! handshake and carry its plaintext, docs/tls.md), else refused (`N`):
//! replay speaks plaintext, and libpq with `sslmode=prefer` (its default)
//! goes on unencrypted. A GSSENCRequest is always refused. A client that
//! insists on encryption the recording did not have, or on a SCRAM
//! exchange, cannot be replayed, and fails with libpq's own error (checked
//! with libpq 17 against a server answering as replay does):
//! `sslmode=require` with "server does not support SSL, but SSL was
//! required"; `require_auth=scram-sha-256` with "authentication
//! method requirement "scram-sha-256" failed: server did not complete
//! authentication"; `channel_binding=require` with "channel binding
//! required, but server authenticated client without channel binding".

mod render;
mod setup;
mod wire;

#[cfg(test)]
mod tests;

use crate::sql;
use crate::{Completeness, Exchange, NormalizeOptions, Normalized, Protocol, Side};
use wire::{BACKEND_TYPES, FRONTEND_TYPES, Message, StartupPacket, Step};

/// Operation keys are capped at this many bytes.
const MAX_KEY_LEN: usize = 256;

/// The PostgreSQL protocol.
pub struct Postgres;

/// What a framed request is, for knowing how it is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Request {
    /// StartupMessage.
    Startup,
    Ssl,
    GssEnc,
    /// CancelRequest: the server answers nothing and closes.
    Cancel,
    /// A password, SASL or GSSAPI message `p`.
    Auth,
    /// Messages answered up to ReadyForQuery: `ready` of them (one per
    /// Query, Sync, FunctionCall, CopyDone/CopyFail).
    Ready {
        ready: usize,
    },
    /// An extended-protocol group ending in Flush.
    Flush,
    /// Nothing is answered: Terminate, a lone Flush.
    Silent,
}

/// How `request` is answered, from its messages; `None` when it is not
/// PostgreSQL.
fn classify(request: &[u8]) -> Option<Request> {
    match wire::read_startup(request) {
        Step::Done((startup, _)) => {
            return Some(match startup {
                StartupPacket::Startup { .. } => Request::Startup,
                StartupPacket::Ssl => Request::Ssl,
                StartupPacket::GssEnc => Request::GssEnc,
                StartupPacket::Cancel { .. } => Request::Cancel,
            });
        }
        Step::NeedMore => return None,
        Step::Invalid => {}
    }
    let (mut first, mut ready, mut extended) = (None, 0, false);
    for (_, message) in wire::messages(request, FRONTEND_TYPES) {
        first.get_or_insert(message.kind);
        match message.kind {
            b'Q' | b'S' | b'F' | b'c' | b'f' => ready += 1,
            b'P' | b'B' | b'D' | b'E' | b'C' => extended = true,
            _ => {}
        }
    }
    Some(match first? {
        b'p' => Request::Auth,
        _ if ready > 0 => Request::Ready { ready },
        _ if extended => Request::Flush,
        _ => Request::Silent,
    })
}

/// How far a framed request reaches, by the type of its first message.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Group {
    /// One message.
    Single,
    /// Extended protocol, up to Sync or Flush.
    Extended,
    /// Copy data, up to CopyDone or CopyFail.
    Copy,
}

fn group_of(kind: u8) -> Group {
    match kind {
        b'P' | b'B' | b'D' | b'E' | b'C' | b'S' | b'H' => Group::Extended,
        b'd' | b'c' | b'f' => Group::Copy,
        _ => Group::Single,
    }
}

/// What a backend message means for the end of a response.
enum Verdict {
    More,
    End,
    Invalid,
}

/// Frames a response by reading backend messages until `verdict` says one
/// ends it.
fn scan_backend(bytes: &[u8], mut verdict: impl FnMut(Message<'_>) -> Verdict) -> Completeness {
    let mut at = 0;
    loop {
        let rest = bytes.get(at..).unwrap_or_default();
        match wire::read_typed(rest, BACKEND_TYPES) {
            Step::Done(message) => {
                at += message.wire_len();
                match verdict(message) {
                    Verdict::More => {}
                    Verdict::End => return Completeness::Complete(at),
                    Verdict::Invalid => return Completeness::Unknown,
                }
            }
            Step::NeedMore => return Completeness::NeedMore,
            Step::Invalid => return Completeness::Unknown,
        }
    }
}

/// The end of a reply to a StartupMessage or `p`: ReadyForQuery, an error,
/// or an Authentication request the client must answer.
fn authentication_verdict(message: Message<'_>) -> Verdict {
    match message.kind {
        b'R' => match wire::auth_code(message.body) {
            // AuthenticationOk and SASLFinal are followed by more.
            Some(0 | 12) => Verdict::More,
            Some(_) => Verdict::End,
            None => Verdict::Invalid,
        },
        b'Z' | b'E' => Verdict::End,
        // ParameterStatus, BackendKeyData, notices, NegotiateProtocolVersion.
        b'S' | b'K' | b'N' | b'v' => Verdict::More,
        _ => Verdict::Invalid,
    }
}

/// What the server sends for one message of a Flush group.
#[derive(Clone, Copy)]
enum Expect {
    /// One message of one of these types.
    One(&'static [u8]),
    /// An Execute: rows (or COPY TO data), then CommandComplete,
    /// EmptyQueryResponse or PortalSuspended.
    Execute,
}

/// Frames the reply to an extended group ending in Flush, by predicting it
/// message by message; an ErrorResponse ends it (the server then skips
/// everything up to the next Sync).
fn frame_flush_response(request: &[u8], bytes: &[u8]) -> Completeness {
    let mut expected = Vec::new();
    for (_, message) in wire::messages(request, FRONTEND_TYPES) {
        match (message.kind, message.body.first()) {
            (b'P', _) => expected.push(Expect::One(b"1")),
            (b'B', _) => expected.push(Expect::One(b"2")),
            (b'C', _) => expected.push(Expect::One(b"3")),
            (b'D', Some(b'S')) => {
                expected.push(Expect::One(b"t"));
                expected.push(Expect::One(b"Tn"));
            }
            (b'D', _) => expected.push(Expect::One(b"Tn")),
            (b'E', _) => expected.push(Expect::Execute),
            _ => {}
        }
    }
    if expected.is_empty() {
        return Completeness::Complete(0);
    }
    let mut next = 0;
    scan_backend(bytes, |message| {
        let Some(&expect) = expected.get(next) else {
            return Verdict::Invalid;
        };
        let advance = match (message.kind, expect) {
            (b'E', _) => return Verdict::End,
            // Asynchronous: notices, notifications, parameter changes.
            (b'N' | b'A' | b'S', _) => false,
            (kind, Expect::One(kinds)) if kinds.contains(&kind) => true,
            // COPY FROM STDIN: the server waits for the data.
            (b'G' | b'W', Expect::Execute) => return Verdict::End,
            (b'D' | b'H' | b'd' | b'c', Expect::Execute) => false,
            (b'C' | b'I' | b's', Expect::Execute) => true,
            _ => return Verdict::Invalid,
        };
        if advance {
            next += 1;
        }
        if next == expected.len() {
            Verdict::End
        } else {
            Verdict::More
        }
    })
}

/// The text a request runs: the Query's, else the first Parse's.
fn statement_text(request: &[u8]) -> Option<&[u8]> {
    wire::messages(request, FRONTEND_TYPES).find_map(|(_, message)| {
        let mut cursor = wire::Cursor::new(message.body);
        match message.kind {
            b'Q' => cursor.cstr(),
            b'P' => wire::parse(&mut cursor).map(|(_, query, _)| query),
            _ => None,
        }
    })
}

/// The operation key of `request`, `None` when it is not PostgreSQL.
fn operation_key(request: &[u8]) -> Option<Vec<u8>> {
    let setup: Option<&[u8]> = match classify(request)? {
        Request::Startup => Some(b"pg startup"),
        Request::Ssl => Some(b"pg ssl"),
        Request::GssEnc => Some(b"pg gssenc"),
        Request::Cancel => Some(b"pg cancel"),
        Request::Auth => Some(b"pg auth"),
        _ => None,
    };
    if let Some(key) = setup {
        return Some(key.to_vec());
    }
    let mut key = b"pg ".to_vec();
    // Without a statement text, the name of the prepared statement bound,
    // or the function called.
    let mut name = None;
    for (_, message) in wire::messages(request, FRONTEND_TYPES) {
        // A run of CopyData is one `d`: the number of chunks means nothing.
        if key.len() < MAX_KEY_LEN && !(message.kind == b'd' && key.last() == Some(&b'd')) {
            key.push(message.kind);
        }
        let mut cursor = wire::Cursor::new(message.body);
        if name.is_none() {
            name = match message.kind {
                b'B' => wire::bind(&mut cursor).map(|bind| bind.statement.to_vec()),
                b'F' => cursor.i32().map(|oid| oid.to_string().into_bytes()),
                _ => None,
            };
        }
    }
    if key.len() + 1 < MAX_KEY_LEN {
        if let Some(text) = statement_text(request) {
            key.push(b' ');
            let room = MAX_KEY_LEN - key.len();
            sql::push_key(&mut key, text, &sql::POSTGRES, room);
        } else if let Some(name) = name.filter(|name| !name.is_empty()) {
            key.push(b' ');
            key.extend_from_slice(&name);
        }
    }
    truncate_key(&mut key);
    Some(key)
}

/// Caps `key` at [`MAX_KEY_LEN`] bytes, without splitting a UTF-8 sequence.
fn truncate_key(key: &mut Vec<u8>) {
    if key.len() <= MAX_KEY_LEN {
        return;
    }
    let mut end = MAX_KEY_LEN;
    while end > 0 && key[end] & 0xC0 == 0x80 {
        end -= 1;
    }
    key.truncate(end);
}

impl Protocol for Postgres {
    fn name(&self) -> &'static str {
        "postgres"
    }

    /// A start-up packet, or typed frontend messages of which the first is
    /// complete and well formed (a Query NUL-terminated, a Parse's fields
    /// exactly filling it...) and the following ones have frontend types
    /// and sane lengths. A first message not received whole is not claimed:
    /// its length alone cannot tell PostgreSQL from text.
    fn detect_request(&self, bytes: &[u8]) -> bool {
        match wire::read_startup(bytes) {
            Step::Done(_) => return true,
            Step::NeedMore => return false,
            Step::Invalid => {}
        }
        let Step::Done(first) = wire::read_typed(bytes, FRONTEND_TYPES) else {
            return false;
        };
        if !wire::frontend_body_ok(first.kind, first.body) {
            return false;
        }
        let mut at = first.wire_len();
        while at < bytes.len() {
            match wire::read_typed(&bytes[at..], FRONTEND_TYPES) {
                Step::Done(message) => at += message.wire_len(),
                Step::NeedMore => return true,
                Step::Invalid => return false,
            }
        }
        true
    }

    fn frame_request(&self, bytes: &[u8]) -> Completeness {
        match wire::read_startup(bytes) {
            Step::Done((_, len)) => return Completeness::Complete(len),
            Step::NeedMore => return Completeness::NeedMore,
            Step::Invalid => {}
        }
        let Some(&first) = bytes.first() else {
            return Completeness::NeedMore;
        };
        let group = group_of(first);
        let mut at = 0;
        loop {
            let message = match wire::read_typed(&bytes[at..], FRONTEND_TYPES) {
                Step::Done(message) => message,
                Step::NeedMore => return Completeness::NeedMore,
                Step::Invalid => return Completeness::Unknown,
            };
            at += message.wire_len();
            let ends = match (group, message.kind) {
                (Group::Single, _) => true,
                (Group::Extended, b'S' | b'H') | (Group::Copy, b'c' | b'f') => true,
                (Group::Extended, b'P' | b'B' | b'D' | b'E' | b'C') | (Group::Copy, b'd') => false,
                // Another kind of message before the group ended.
                _ => return Completeness::Unknown,
            };
            if ends {
                return Completeness::Complete(at);
            }
            if at == bytes.len() {
                return Completeness::NeedMore;
            }
        }
    }

    fn frame_response(&self, request: &[u8], bytes: &[u8]) -> Completeness {
        let Some(request_kind) = classify(request) else {
            return Completeness::Unknown;
        };
        let one_byte = |answers: &[u8]| match bytes.first() {
            None => Completeness::NeedMore,
            Some(answer) if answers.contains(answer) => Completeness::Complete(1),
            Some(_) => Completeness::Unknown,
        };
        match request_kind {
            Request::Ssl => one_byte(b"SN"),
            Request::GssEnc => one_byte(b"GN"),
            Request::Cancel | Request::Silent => Completeness::Complete(0),
            Request::Startup | Request::Auth => scan_backend(bytes, authentication_verdict),
            Request::Ready { ready } => {
                let mut seen = 0;
                scan_backend(bytes, |message| match message.kind {
                    b'Z' => {
                        seen += 1;
                        if seen == ready {
                            Verdict::End
                        } else {
                            Verdict::More
                        }
                    }
                    // CopyInResponse, CopyBothResponse: the server waits
                    // for the client's data.
                    b'G' | b'W' => Verdict::End,
                    _ => Verdict::More,
                })
            }
            Request::Flush => frame_flush_response(request, bytes),
        }
    }

    fn expects_response(&self, request: &[u8]) -> bool {
        !matches!(classify(request), Some(Request::Cancel | Request::Silent))
    }

    /// After a CancelRequest, a Terminate, and a FATAL (or PANIC)
    /// ErrorResponse, which every error during start-up is.
    fn closes_after(&self, request: &[u8], response: &[u8]) -> bool {
        let starting = match classify(request) {
            Some(Request::Cancel) => return true,
            Some(Request::Startup | Request::Auth) => true,
            Some(_) => false,
            None => return false,
        };
        let terminated = wire::messages(request, FRONTEND_TYPES).any(|(_, m)| m.kind == b'X');
        terminated
            || wire::messages(response, BACKEND_TYPES).any(|(_, message)| {
                message.kind == b'E' && (starting || setup::is_fatal(message.body))
            })
    }

    fn normalize(&self, request: &[u8], _options: &NormalizeOptions) -> Option<Normalized> {
        let key = operation_key(request)?;
        Some(Normalized::keyed(request, key, 0))
    }

    /// The start-up packets, authentication messages, and `SET`/`SHOW`
    /// statements (psycopg, JDBC, asyncpg configure the session with them
    /// right after connecting).
    fn is_setup(&self, request: &[u8]) -> bool {
        match classify(request) {
            Some(Request::Startup | Request::Ssl | Request::GssEnc | Request::Auth) => true,
            Some(Request::Ready { .. } | Request::Flush) => {
                statement_text(request).is_some_and(|text| {
                    sql::starts_with_keyword(text, "SET", &sql::POSTGRES)
                        || sql::starts_with_keyword(text, "SHOW", &sql::POSTGRES)
                })
            }
            _ => false,
        }
    }

    fn answer_setup(&self, request: &[u8], recorded: &[Exchange<'_>]) -> Option<Vec<u8>> {
        match classify(request)? {
            // `S` when the recording's server said so: the client's TLS is
            // then answered in plaintext by libkoala.so's TLS hooks.
            Request::Ssl => Some(if setup::recorded_ssl(recorded) {
                b"S".to_vec()
            } else {
                b"N".to_vec()
            }),
            Request::GssEnc => Some(b"N".to_vec()),
            Request::Startup | Request::Auth => Some(setup::authentication_ok(recorded)),
            _ => None,
        }
    }

    fn error_reply(&self, request: &[u8], message: &str) -> Option<Vec<u8>> {
        match classify(request)? {
            Request::Startup | Request::Auth => Some(setup::error_response("FATAL", message)),
            Request::Flush => Some(setup::error_response("ERROR", message)),
            Request::Ready { ready } => {
                // Each Sync (Query...) gets its ReadyForQuery, so the client
                // can go on.
                let mut reply = Vec::new();
                for _ in 0..ready {
                    reply.extend_from_slice(&setup::error_response("ERROR", message));
                    wire::push_message(&mut reply, b'Z', b"I");
                }
                Some(reply)
            }
            Request::Ssl | Request::GssEnc | Request::Cancel | Request::Silent => None,
        }
    }

    fn render(&self, bytes: &[u8], side: Side) -> Option<String> {
        match side {
            Side::Request => render::render_request(bytes),
            Side::Response => render::render_response(bytes),
        }
    }
}
