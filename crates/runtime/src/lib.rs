//! Primitives the library needs inside the host process, shared by the
//! preload hooks, the recorder and the replayer.
//!
//! Everything here is safe to call from any hook: no locks, no allocation,
//! no panics on the paths the hooks use.

pub mod clock;
pub mod contain;
pub mod done;
pub mod errno;
pub mod fdkind;
pub mod fds;
pub mod guard;
pub mod sockaddr;
pub mod thread;

pub use fdkind::FdKind;
