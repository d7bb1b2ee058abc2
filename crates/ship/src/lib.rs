//! Shipping koala's session lines to a streaming engine, and reading them
//! back.
//!
//! The recording library never talks to the network: it writes session
//! files, and `koala ship` (a separate process) follows them and publishes
//! each complete line. This crate holds what that process needs:
//!
//! - [`url`]: `nats://[user:pass@]host:port[,host:port...][/STREAM]` URLs;
//! - [`nats`]: a small synchronous NATS client on `std::net` (the text
//!   protocol: INFO/CONNECT/PING, PUB/HPUB, SUB, MSG/HMSG), with failover
//!   across the servers of a cluster and user/password or token auth;
//! - [`tls`]: TLS to the server (rustls), when it requires it or the URL
//!   is `tls://`;
//! - [`jetstream`]: the JetStream API on top of it (streams, publish with a
//!   message id for de-duplication, direct reads, durable pull consumers);
//! - [`sink`]: the small boundary `koala ship` and `koala replay` use
//!   ([`sink::Sink`], [`sink::Source`]), so another engine (Kafka) can be
//!   added beside JetStream;
//! - [`follow`]: the pure logic of following growing session files
//!   (complete lines only, durable per-file progress).

pub mod follow;
pub mod jetstream;
pub mod nats;
pub mod sink;
pub mod tls;
pub mod url;
