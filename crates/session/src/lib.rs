//! The session model shared by the recorder, the replayer and the CLI.
//!
//! A session is one inbound request, the outbound calls the service made
//! while serving it, and the response. Sessions are stored as JSON Lines:
//! one [`Session`] per line (see `docs/session-format.md`).

mod payload;
mod reader;
pub mod replay;

pub use payload::Payload;
pub use reader::{
    LineError, SessionFileError, read_session_line, read_sessions_file, session_files,
};

use serde::{Deserialize, Serialize};

/// Value of the `koala` field: the version of the session format.
pub const FORMAT_VERSION: u32 = 1;

/// Why the recorder closed a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// The connection delivered the next request after a response was sent.
    NextRequest,
    /// The inbound connection was closed.
    Close,
    /// Nothing happened for `KOALA_SESSION_IDLE_MS`.
    Idle,
    /// A `to-koala!thread-shutdown` helper hint ended it.
    Hint,
    /// The process exited.
    Exit,
    /// A background record reached KOALA_MAX_CALLS_PER_SESSION calls.
    Full,
}

impl EndReason {
    /// The name used in session files.
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::NextRequest => "next_request",
            EndReason::Close => "close",
            EndReason::Idle => "idle",
            EndReason::Hint => "hint",
            EndReason::Exit => "exit",
            EndReason::Full => "full",
        }
    }
}

/// What a line of a session file holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// One inbound request, its calls and its response.
    #[default]
    Session,
    /// Calls made outside any session (start-up handshakes, pools being
    /// filled, background work): no inbound exchange. Replay answers the
    /// service's start-up traffic from these.
    Background,
}

impl Kind {
    fn is_session(&self) -> bool {
        *self == Kind::Session
    }
}

/// One recorded inbound request with the outbound calls made for it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Format version, [`FORMAT_VERSION`].
    pub koala: u32,
    /// `session` (the default, omitted) or `background`.
    #[serde(default, skip_serializing_if = "Kind::is_session")]
    pub kind: Kind,
    /// Unique id: `<process start secs>-<pid>-<sequence>`.
    pub id: String,
    pub pid: u32,
    /// The thread that read the request.
    pub tid: u32,
    /// Short program name of the recording process.
    pub program: String,
    /// Why the session was closed; absent in hand-written sessions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<EndReason>,
    pub inbound: Exchange,
    /// Outbound calls in the order they were made.
    #[serde(default)]
    pub calls: Vec<Exchange>,
    /// The random bytes the session's threads drew (getrandom, getentropy,
    /// reads of /dev/urandom), concatenated in the order they were drawn:
    /// replay hands them back in the same order. Absent when none.
    #[serde(default, skip_serializing_if = "Payload::is_empty")]
    pub random: Payload,
    /// Set when the session drew more than `KOALA_MAX_RANDOM_BYTES`: `random`
    /// holds the first bytes only.
    #[serde(default, skip_serializing_if = "is_false")]
    pub random_truncated: bool,
}

/// Bytes sent one way and the bytes that came back, on one TCP connection.
///
/// For the inbound exchange the request is what the service read and the
/// response what it wrote; for a call the request is what the service sent
/// to its dependency and the response what it read back.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exchange {
    /// The service's end of the connection, `ip:port`.
    pub local: String,
    /// The other end, `ip:port`.
    pub peer: String,
    pub request: Payload,
    pub response: Payload,
    /// Unix-epoch nanoseconds of the first request byte; 0 when there was none.
    #[serde(default)]
    pub request_ns: u64,
    /// Unix-epoch nanoseconds of the first response byte; 0 when there was none.
    #[serde(default)]
    pub response_ns: u64,
    /// Set when a payload hit `KOALA_MAX_PAYLOAD_BYTES` and was cut.
    #[serde(default, skip_serializing_if = "is_false")]
    pub truncated: bool,
    /// Calls: the connection's id, unique within the recording process (a
    /// forked child keeps the ids of the connections it inherited). Absent
    /// on the inbound exchange and in older recordings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conn: Option<u64>,
    /// Calls: the call's position on its connection, counted across
    /// sessions: 0 is the first exchange after connect (a greeting counts),
    /// so a call with `seq` 0 is the one that opened the connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u32>,
    /// Calls: the service read end-of-file on the connection after this
    /// call's response: the dependency closed it there.
    #[serde(default, skip_serializing_if = "is_false")]
    pub closed: bool,
    /// Whether the connection carried TLS, and what was recorded of it.
    #[serde(default, skip_serializing_if = "Tls::is_none")]
    pub tls: Tls,
    /// Calls in a background record: sent by a thread that served no
    /// session, which could not be tied to one without guessing.
    #[serde(default, skip_serializing_if = "is_false")]
    pub unattributed: bool,
}

/// What an exchange holds of a TLS connection: in JSON, absent (not TLS),
/// `true` (the application's plaintext, seen at the TLS library) or
/// `"ciphertext"` (encrypted bytes the library could not see through).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Tls {
    /// Not TLS, as far as the recorder could tell.
    #[default]
    None,
    /// TLS, recorded as plaintext through the TLS library's calls.
    Plaintext,
    /// TLS records on the socket: encrypted, cannot be matched or replayed.
    Ciphertext,
}

impl Tls {
    pub fn is_none(&self) -> bool {
        *self == Tls::None
    }
}

impl Serialize for Tls {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Tls::None => serializer.serialize_bool(false),
            Tls::Plaintext => serializer.serialize_bool(true),
            Tls::Ciphertext => serializer.serialize_str("ciphertext"),
        }
    }
}

impl<'de> Deserialize<'de> for Tls {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Flag(bool),
            Word(String),
        }
        match Form::deserialize(deserializer)? {
            Form::Flag(false) => Ok(Tls::None),
            Form::Flag(true) => Ok(Tls::Plaintext),
            Form::Word(word) if word == "ciphertext" => Ok(Tls::Ciphertext),
            Form::Word(word) => Err(serde::de::Error::custom(format!(
                "tls: expected true, false or \"ciphertext\", found {word:?}"
            ))),
        }
    }
}

fn is_false(value: &bool) -> bool {
    !*value
}

impl Session {
    pub fn is_background(&self) -> bool {
        self.kind == Kind::Background
    }

    /// The session as one JSON line, without the trailing newline.
    pub fn to_json_line(&self) -> String {
        // Serializing plain structs, strings and integers cannot fail.
        serde_json::to_string(self).expect("a session always serializes")
    }
}

impl Exchange {
    /// A server-speaks-first call: nothing was sent before the response.
    pub fn is_greeting(&self) -> bool {
        self.request.is_empty() && !self.response.is_empty()
    }

    /// Whether this call was the first exchange on a new connection (its
    /// `seq` is 0). Unknown (`false`) in recordings without positions.
    pub fn opens_connection(&self) -> bool {
        self.seq == Some(0)
    }
}
