//! The protocol catalogue: everything koala knows about the protocols it
//! records and replays, one module per protocol behind one small trait.
//!
//! | module | protocol |
//! | --- | --- |
//! | [`http`] | HTTP/1.x |
//! | [`redis`] | Redis RESP (2 and 3) |
//! | [`postgres`] | PostgreSQL frontend/backend protocol v3 |
//! | [`mysql`] | MySQL / MariaDB client/server protocol |
//! | [`fastcgi`] | FastCGI |
//! | [`memcached`] | memcached text and meta protocol |
//!
//! Everything here is pure: no I/O, no clock, no allocation beyond what a
//! result needs, and no panic on any input. The recorder (inbound framing),
//! the replayer (framing, matching, connection set-up, error replies) and
//! the CLI (`koala show`) use it. Adding a protocol means adding a module
//! that implements [`Protocol`] and listing it in [`CATALOGUE`].

pub mod fastcgi;
pub mod http;
pub mod memcached;
pub mod mysql;
pub mod postgres;
pub mod redis;
/// TLS recognised on the wire (not a catalogued protocol).
pub mod tls;

mod exchange;
mod normalized;
mod parse;
mod recorded;
mod sql;

pub use exchange::{Unit, split_exchange};
pub use normalized::{NormalizeOptions, Normalized};
pub use recorded::recorded_prefix;

/// How much of a message the bytes received so far hold.
///
/// - `Complete(n)`: `bytes[..n]` is one whole message; anything after it is
///   the start of the next (pipelined) one.
/// - `NeedMore`: a valid beginning of a message of that kind, not finished.
/// - `Unknown`: not (recognisably) a message of that kind, or its end cannot
///   be told from the bytes (an HTTP body delimited by the connection
///   closing). Callers fall back to another rule or to silence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Completeness {
    /// `bytes[..n]` is the first complete message.
    Complete(usize),
    /// A valid beginning; the message is not complete yet.
    NeedMore,
    /// Not this kind of message, or its end cannot be told from the bytes.
    Unknown,
}

/// A recorded request and the response it got, as bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exchange<'a> {
    pub request: &'a [u8],
    pub response: &'a [u8],
}

/// Which way bytes travel, for rendering.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// Client to server.
    Request,
    /// Server to client.
    Response,
}

/// What koala knows about one protocol. Every method is pure and must not
/// panic on any input; the defaults say "nothing known".
pub trait Protocol: Sync {
    /// Short lower-case name used in reports and logs: `http`, `redis`...
    fn name(&self) -> &'static str;

    /// Whether `bytes`, what a client sent first on a connection (or any
    /// later request), look like this protocol. Cheap; must not claim the
    /// bytes of a protocol listed before it in [`CATALOGUE`].
    fn detect_request(&self, bytes: &[u8]) -> bool;

    /// Whether `bytes`, sent by a server before any request (a
    /// server-speaks-first protocol), are this protocol's greeting.
    fn detect_greeting(&self, _bytes: &[u8]) -> bool {
        false
    }

    /// Frames the first request at the start of `bytes`: the client
    /// messages the server answers as one (a PostgreSQL Parse/Bind/
    /// Describe/Execute/Sync group, one RESP command, one FastCGI request
    /// up to its empty stdin record).
    fn frame_request(&self, bytes: &[u8]) -> Completeness;

    /// Frames the response to `request` at the start of `bytes`.
    fn frame_response(&self, _request: &[u8], _bytes: &[u8]) -> Completeness {
        Completeness::Unknown
    }

    /// Whether the server answers `request` at all (PostgreSQL Terminate,
    /// memcached `noreply` do not).
    fn expects_response(&self, _request: &[u8]) -> bool {
        true
    }

    /// Canonical bytes and operation key of `request`, for matching; `None`
    /// when the bytes are not this protocol's.
    fn normalize(&self, request: &[u8], options: &NormalizeOptions) -> Option<Normalized>;

    /// Whether `request` is part of opening a connection (handshake,
    /// authentication, session settings such as `SELECT db` or
    /// `SET NAMES`), which replay answers from any recorded set-up to the
    /// same dependency when the session has none of its own.
    fn is_setup(&self, _request: &[u8]) -> bool {
        false
    }

    /// A reply to set-up `request` built from recorded set-up exchanges to
    /// the same dependency, for protocols whose recorded replies cannot be
    /// replayed as they are (authentication with fresh random nonces).
    /// `None`: match the request like any other.
    fn answer_setup(&self, _request: &[u8], _recorded: &[Exchange<'_>]) -> Option<Vec<u8>> {
        None
    }

    /// An error reply in the protocol's own shape (RESP `-ERR`, HTTP 502, a
    /// PostgreSQL ErrorResponse, a MySQL ERR packet) telling the client
    /// that `message`; `None` when the protocol has none.
    fn error_reply(&self, _request: &[u8], _message: &str) -> Option<Vec<u8>> {
        None
    }

    /// Whether the server closes the connection after sending `response`
    /// (HTTP `Connection: close`, a close-delimited body).
    fn closes_after(&self, _request: &[u8], _response: &[u8]) -> bool {
        false
    }

    /// `response` as `koala replay` compares it with another answer to
    /// `request`, when the bytes on the wire hold more than the answer:
    /// FastCGI's records (request ids, padding, php-fpm's unset reserved
    /// bytes) around a CGI response, given as an HTTP/1.1 response so that
    /// headers compare as headers. `None`: compare the bytes as they are.
    fn comparable_response(&self, _request: &[u8], _response: &[u8]) -> Option<Vec<u8>> {
        None
    }

    /// A readable rendering of `bytes` for `koala show`; `None` when the
    /// bytes are not this protocol's.
    fn render(&self, _bytes: &[u8], _side: Side) -> Option<String> {
        None
    }
}

/// Every protocol koala knows, in detection order: earlier entries win.
pub static CATALOGUE: &[&dyn Protocol] = &[
    &http::Http,
    &redis::Redis,
    &postgres::Postgres,
    &fastcgi::FastCgi,
    &mysql::Mysql,
    &memcached::Memcached,
];

/// The protocol whose requests look like `bytes`.
pub fn detect_request(bytes: &[u8]) -> Option<&'static dyn Protocol> {
    CATALOGUE
        .iter()
        .copied()
        .find(|protocol| protocol.detect_request(bytes))
}

/// The server-speaks-first protocol whose greeting looks like `bytes`.
pub fn detect_greeting(bytes: &[u8]) -> Option<&'static dyn Protocol> {
    CATALOGUE
        .iter()
        .copied()
        .find(|protocol| protocol.detect_greeting(bytes))
}

/// The protocol called `name`.
pub fn by_name(name: &str) -> Option<&'static dyn Protocol> {
    CATALOGUE
        .iter()
        .copied()
        .find(|protocol| protocol.name() == name)
}

/// Whether the first request in `bytes` is complete, for any protocol
/// recognisable from its bytes (`Unknown` when none is).
pub fn frame_request(bytes: &[u8]) -> Completeness {
    if bytes.is_empty() {
        return Completeness::NeedMore;
    }
    match detect_request(bytes) {
        Some(protocol) => protocol.frame_request(bytes),
        None => Completeness::Unknown,
    }
}

/// Normalises `request` with the protocol it belongs to; unrecognised
/// bytes are kept as they are, with an empty operation key.
pub fn normalize(request: &[u8], options: &NormalizeOptions) -> Normalized {
    detect_request(request)
        .and_then(|protocol| protocol.normalize(request, options))
        .unwrap_or_else(|| Normalized::raw(request))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_found() {
        for protocol in CATALOGUE {
            let found = by_name(protocol.name()).expect("listed");
            assert_eq!(found.name(), protocol.name());
        }
        let mut names: Vec<_> = CATALOGUE.iter().map(|p| p.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), CATALOGUE.len());
    }
}
