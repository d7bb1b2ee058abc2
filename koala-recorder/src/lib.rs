//! The recording half of koala: socket events become sessions, sessions
//! become JSON lines in a per-process file.
//!
//! - [`assembler`]: the pure state machine (events in, finished sessions
//!   out), unit-tested without LD_PRELOAD.
//! - [`record`]: a finished session as handed to the writer, and its JSON
//!   line (formatted on the writer thread, not the host's).
//! - [`writer`]: the internal thread that writes session files and closes
//!   idle sessions.
//! - [`recorder`]: the process-wide object the preload hooks talk to.

pub mod assembler;
pub mod record;
pub mod recorder;
pub mod writer;

pub use assembler::{Assembler, Bytes, Direction, Limits, Stats};
pub use record::ProcessIdentity;
pub use recorder::Recorder;
