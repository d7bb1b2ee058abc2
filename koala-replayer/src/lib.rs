//! The replay half of koala: the servers started inside the process under
//! test, and the matching that picks which recorded call answers a request.
//!
//! - [`replayer`]: the process-wide object the preload hooks talk to; it
//!   starts the servers in the first process and redirects outbound connects.
//! - [`inbound`]: the replay API (`POST /v1/replay`, `GET /v1/status`, ...).
//! - [`outbound`]: answers the service's redirected connections.
//! - [`registry`]: the replays in flight and the background pool.
//! - [`table`], [`attribution`]: which replay a request belongs to, across
//!   threads and forked processes.
//! - [`matching`], [`units`]: pure logic, unit-tested; what each protocol
//!   looks like is the protocol catalogue's (`koala_protocols`).

pub mod attribution;
pub mod determinism;
pub mod http;
pub mod inbound;
pub mod matching;
pub mod outbound;
pub mod registry;
pub mod replayer;
pub mod table;
pub mod units;

pub use replayer::Replayer;
