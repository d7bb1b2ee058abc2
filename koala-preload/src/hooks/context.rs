//! The helpers' in-process channel: what the automatic request-context
//! helpers (`helpers/python/koala_context.py`) call instead of sending a
//! hint datagram. Found by name in the process's global scope (Python:
//! `ctypes.CDLL(None).koala_context_set`), it costs a function call, not a
//! system call; `docs/helper-hints.md` describes it.

use crate::layer;

/// The calling thread now works for request context `virtual_id` (a
/// virtual thread, as the `set-delegated-from-thread-id` hint names it; 0:
/// for itself again). Returns 0 when applied; 1 when ignored because the
/// service sends hand-written hints of its own (they take precedence); -1
/// when the library is not active, so a helper can stay out of the way.
/// Never fails, never blocks, keeps errno.
#[unsafe(no_mangle)]
pub extern "C" fn koala_context_set(virtual_id: u64) -> i32 {
    layer::set_context(virtual_id)
}
