//! The recording half of koala: socket events become sessions, sessions
//! become JSON lines in a per-process file.
//!
//! - [`assembler`]: the pure state machine (events in, finished sessions
//!   out), unit-tested without LD_PRELOAD.
//! - [`writer`]: the bounded queue and the internal thread that writes
//!   session files and closes idle sessions.
//! - [`recorder`]: the process-wide object the preload hooks talk to.

pub mod assembler;
pub mod recorder;
pub mod writer;

pub use assembler::{Assembler, Direction, Identity, Limits, Stats};
pub use recorder::Recorder;
