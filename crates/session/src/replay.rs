//! The JSON bodies of the replay API (`docs/replay-api.md`), shared by the
//! inbound server inside the service and the `koala replay` command.

use serde::{Deserialize, Serialize};

use crate::Payload;

/// `POST /v1/replay` answer: what the service did with one recorded session.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReplayResult {
    /// The replayed session's `id`.
    pub id: String,
    /// The number the servers gave this replay; calls carry it.
    pub replay: u64,
    /// Where the request was sent (`KOALA_SUT_ADDR`).
    pub sut: String,
    /// What the service answered this time.
    pub response: Payload,
    /// What it answered when recorded.
    pub recorded_response: Payload,
    /// How the response ended: `framed` (HTTP framing said complete, or it
    /// equals the recorded response), `closed` (the service closed the
    /// connection), `idle` (silent for KOALA_REPLAY_IDLE_MS).
    pub response_end: String,
    /// Every outbound request the service made while serving it, in order.
    pub calls: Vec<ReplayedCall>,
    /// Recorded calls the service never made.
    pub missing: Vec<MissingCall>,
    /// Indexes into `calls` of requests no recorded call matched.
    pub unmatched: Vec<usize>,
    pub durations: Durations,
}

/// One request the service sent to a (mocked) dependency during a replay.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReplayedCall {
    /// The address the service tried to reach (before redirection).
    pub peer: String,
    /// What the service sent; empty for a greeting served on connect.
    pub request: Payload,
    /// Index of the recorded call it was served from; `null` if unmatched.
    pub matched: Option<usize>,
    /// Similarity of the chosen (or, if unmatched, the closest) recorded call, 0..=1.
    pub score: f64,
    /// The closest recorded call even when rejected, for the report.
    pub closest: Option<usize>,
    /// Served a recorded call that had been served before (identical request).
    pub reused: bool,
    /// A greeting served on connect (server speaks first).
    pub greeting: bool,
    /// Part of opening a connection (handshake, authentication, session
    /// settings), answered from a recorded set-up to the same dependency:
    /// the session's own, another session's or a background record's.
    /// Never counted unmatched.
    #[serde(default)]
    pub setup: bool,
    /// Answered from a call recorded *unattributed* (sent by a thread
    /// serving no session, in a background record): it may answer a
    /// matching request of any session. Never counted unmatched.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unattributed: bool,
    /// The protocol the connection was recognised as (`postgres`, `redis`...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// What was done with an unmatched request (`KOALA_REPLAY_ON_MISS`):
    /// `closest`, `error` or `close`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_miss: Option<String>,
    /// The bytes sent back to the service.
    pub served: Payload,
    /// Milliseconds since the replay started.
    pub at_ms: f64,
    /// Milliseconds from the request's first byte reaching the outbound
    /// server to its answer being written: framing and matching, plus any
    /// wait for the end of a request koala could not frame.
    #[serde(default)]
    pub wait_ms: f64,
}

/// A recorded call that was not made during the replay.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MissingCall {
    pub index: usize,
    pub peer: String,
    pub request: Payload,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Durations {
    /// Whole replay, from receiving the session to answering.
    pub total_ms: f64,
    /// Connecting to the service.
    pub connect_ms: f64,
    /// From sending the request to the first response byte.
    pub first_byte_ms: f64,
    /// From sending the request to the end of the response.
    pub response_ms: f64,
}

/// `GET /v1/status` answer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// Always `ok` when the servers answer.
    pub status: String,
    /// The process running the servers.
    pub pid: u32,
    pub inbound: String,
    pub outbound: String,
    pub sut: String,
    pub uptime_ms: u64,
    pub sessions_replayed: u64,
    pub sessions_in_flight: u64,
    pub calls_matched: u64,
    pub calls_unmatched: u64,
    /// Requests made outside any replayed session (start-up traffic) and
    /// answered from background records.
    pub background_calls_served: u64,
    /// Background records loaded (KOALA_REPLAY_BACKGROUND, POST /v1/background).
    pub background_records: u64,
    /// Connections to the outbound server that no redirect of the service
    /// registered, refused.
    #[serde(default)]
    pub outbound_refused: u64,
    /// Requests made while replays were in flight that no replayed session
    /// recorded, answered from a call recorded unattributed (a hand-off
    /// thread's, in a background record).
    #[serde(default)]
    pub unattributed_calls_served: u64,
}

/// `POST /v1/background` answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackgroundLoaded {
    /// Records whose calls joined the background pool.
    pub loaded: usize,
}

/// The body of every 4xx/5xx answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}
