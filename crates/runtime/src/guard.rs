//! The per-thread guard that keeps the library out of its own way.
//!
//! Two flags in one const-initialised `Cell<u8>` (no destructor, so it works
//! during thread start-up and teardown and costs one TLS access):
//! - `INTERNAL`: a thread the library started. Its I/O is never observed.
//! - `BUSY`: the thread is already inside the library's bookkeeping, so a
//!   libc call made by that bookkeeping (an allocation that logs, a clock
//!   read) passes straight through instead of recursing.

use std::cell::Cell;

const INTERNAL: u8 = 1;
const BUSY: u8 = 2;

thread_local! {
    static FLAGS: Cell<u8> = const { Cell::new(0) };
}

/// Marks the calling thread as one of the library's own.
pub(crate) fn mark_current_thread_internal() {
    FLAGS.with(|f| f.set(f.get() | INTERNAL));
}

pub fn is_internal_thread() -> bool {
    FLAGS.with(|f| f.get() & INTERNAL != 0)
}

/// Held while the library does its bookkeeping on a host thread.
pub struct Busy(());

impl Busy {
    /// `None` on an internal thread or when the thread is already busy.
    #[inline]
    pub fn enter() -> Option<Busy> {
        FLAGS.with(|f| {
            let flags = f.get();
            if flags != 0 {
                return None;
            }
            f.set(BUSY);
            Some(Busy(()))
        })
    }
}

impl Drop for Busy {
    #[inline]
    fn drop(&mut self) {
        FLAGS.with(|f| f.set(f.get() & !BUSY));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_is_not_reentrant() {
        let outer = Busy::enter().expect("first entry");
        assert!(Busy::enter().is_none());
        drop(outer);
        assert!(Busy::enter().is_some());
    }

    #[test]
    fn internal_threads_never_enter() {
        std::thread::spawn(|| {
            mark_current_thread_internal();
            assert!(is_internal_thread());
            assert!(Busy::enter().is_none());
        })
        .join()
        .unwrap();
        assert!(!is_internal_thread());
    }
}
