//! A flag one thread sleeps on until another sets it.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

/// A flag an exit flush sleeps on until a library thread (the session
/// writer, the log thread) sets it: a futex, so the waiter wakes the moment
/// the work is done instead of at its next poll, and uses no thread-local
/// (exit handlers run after the thread's thread-locals are destroyed, so no
/// channel or condition variable).
#[derive(Default)]
pub struct Done(AtomicU32);

impl Done {
    /// Sets the flag and wakes every waiter.
    pub fn set(&self) {
        self.0.store(1, Ordering::Release);
        // SAFETY: a futex wake on a live u32 of ours; wakes every waiter.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                self.0.as_ptr(),
                libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
                i32::MAX,
            );
        }
    }

    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire) != 0
    }

    /// Sleeps until set or `deadline`, whichever first; whether it was set.
    pub fn wait_until(&self, deadline: Instant) -> bool {
        loop {
            if self.is_set() {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let timeout = libc::timespec {
                tv_sec: left.as_secs().min(i64::MAX as u64) as libc::time_t,
                tv_nsec: left.subsec_nanos() as libc::c_long,
            };
            // SAFETY: sleeps while the u32 still reads 0 (else returns at
            // once), at most `timeout`; EINTR and spurious wake-ups loop.
            unsafe {
                libc::syscall(
                    libc::SYS_futex,
                    self.0.as_ptr(),
                    libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                    0u32,
                    &timeout as *const libc::timespec,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn a_waiter_wakes_when_set_and_gives_up_at_its_deadline() {
        let never = Done::default();
        let started = Instant::now();
        assert!(!never.wait_until(started + Duration::from_millis(20)));
        assert!(started.elapsed() >= Duration::from_millis(20));
        let done = Arc::new(Done::default());
        let setter = {
            let done = done.clone();
            std::thread::spawn(move || done.set())
        };
        assert!(done.wait_until(Instant::now() + Duration::from_secs(10)));
        setter.join().unwrap();
        assert!(done.is_set());
    }
}
