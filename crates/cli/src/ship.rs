//! `koala ship`: follows record directories and publishes every complete
//! session line to a NATS JetStream stream, durably and without
//! duplicates.
//!
//! The library itself never talks to the network: it writes session files,
//! and this separate process ships them. Each line is one message, its
//! subject `koala.<STREAM>.<session|background>.<program>.<host>` and its
//! message id `<session id>@<host>`, so a line sent again (after a crash,
//! a lost PubAck, a failover) is dropped by the stream's de-duplication
//! window. Progress (the offset after the last confirmed line of each
//! file) is saved atomically after the stream confirmed the lines, in a
//! state file: a restart resumes there.

mod run;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

pub use run::run;

pub const AFTER_HELP: &str = "\
What is published:
  every complete line of every DIR/*.jsonl file (new files of new processes
  included, as they appear), as one message:
    subject     koala.<STREAM>.session.<program>.<host>
                koala.<STREAM>.background.<program>.<host>  (kind: background)
    message id  <session id>@<host>  (Nats-Msg-Id: a re-send inside the
                stream's duplicate window is stored once)
  A last line without its newline waits until it is complete. A line that is
  not a session is reported and skipped; so is a line over the server's
  max_payload (raise max_payload in nats-server's configuration).

Progress is saved in --state (default DIR/.koala-ship-<STREAM>.state, in the
first DIR) after the stream confirmed the lines: koala ship restarted after a
crash goes on from there; lines confirmed but not yet saved are sent again
and de-duplicated by the stream.

Credentials: nats://USER:PASSWORD@HOST:PORT or nats://TOKEN@HOST:PORT, or
the variables NATS_USER and NATS_PASSWORD, or NATS_TOKEN. Several servers of
one cluster: nats://HOST1:PORT,HOST2:PORT (failover).

TLS: a server that requires TLS gets it; tls://HOST:PORT insists on it. The
server's certificate is checked against NATS_CA (a PEM file of certificate
authorities; default: the system's), for the host or IP address of the URL.
A server that verifies its clients gets NATS_CERT and NATS_KEY (PEM files).

Exit status: 0 stopped (SIGINT/SIGTERM) or, with --once, everything
complete was shipped; 1 with --once, some lines could not be shipped (they
stay in their files, and the next run ships them); 2 usage or setup problem
(unreachable server with --once, refused credentials, a TLS failure, missing
stream).

Examples:
  koala ship ./koala-sessions --to nats://nats1:4222,nats2:4222 --stream KOALA
  koala ship ./koala-sessions --to nats://127.0.0.1:4222 --stream KOALA \\
      --create --replicas 3 --max-age 604800 --delete-shipped --quiet";

/// Follow record directories and publish their sessions to NATS JetStream.
#[derive(clap::Args)]
pub struct ShipArgs {
    /// Record directories (or session files) to follow.
    #[arg(required = true, value_name = "DIR")]
    pub dirs: Vec<PathBuf>,
    /// The NATS servers: nats://[USER:PASSWORD@|TOKEN@]HOST:PORT[,HOST:PORT...]
    /// (tls://... to insist on TLS)
    #[arg(long, value_name = "URL")]
    pub to: String,
    /// The JetStream stream (it takes the subjects koala.<STREAM>.>).
    #[arg(long, value_name = "NAME")]
    pub stream: String,
    /// Create the stream if it does not exist.
    #[arg(long)]
    pub create: bool,
    /// With --create: copies of each message in the cluster (1 to 5, at
    /// most the number of servers; 3 or 5 keep a quorum through failures).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=5))]
    pub replicas: u32,
    /// With --create: `limits` (keep messages until --max-age or
    /// --max-bytes), `interest` or `workqueue`.
    #[arg(long, value_name = "POLICY", default_value = "limits", value_parser = ["limits", "interest", "workqueue"])]
    pub retention: String,
    /// With --create: seconds a message is kept (0: no limit).
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    pub max_age: u64,
    /// With --create: bytes the stream keeps at most, oldest dropped first
    /// (0: no limit).
    #[arg(long, value_name = "BYTES", default_value_t = 0)]
    pub max_bytes: u64,
    /// With --create: seconds a message id is remembered for
    /// de-duplication.
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    pub duplicate_window: u64,
    /// This host's name in subjects and message ids (default: the host
    /// name).
    #[arg(long, value_name = "NAME")]
    pub host: Option<String>,
    /// The progress file (default: DIR/.koala-ship-<STREAM>.state).
    #[arg(long, value_name = "FILE")]
    pub state: Option<PathBuf>,
    /// Ship what is there, then exit (instead of following the files).
    #[arg(long)]
    pub once: bool,
    /// Delete a session file once all of it is shipped and the process
    /// that wrote it has exited.
    #[arg(long)]
    pub delete_shipped: bool,
    /// Only errors on stderr: no progress line, no summary.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Messages published at a time before waiting for their
    /// confirmations.
    #[arg(long, value_name = "N", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=10000))]
    pub batch: u32,
    /// Milliseconds between two looks at the files when caught up.
    #[arg(long, value_name = "MS", default_value_t = 200)]
    pub poll_ms: u64,
    /// Seconds to wait for a server (connect, each confirmation).
    #[arg(long, value_name = "SECS", default_value_t = 5)]
    pub timeout: u64,
}

impl ShipArgs {
    fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout.max(1))
    }
}

pub(crate) fn exit(code: u8) -> ExitCode {
    ExitCode::from(code)
}
