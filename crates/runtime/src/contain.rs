//! Running the library's bookkeeping inside a host's call.

use std::panic::AssertUnwindSafe;

use crate::errno::SavedErrno;

/// Runs `bookkeeping` so that it cannot disturb the host: errno is the same
/// afterwards as before, and a panic is caught (returning `false`) instead
/// of unwinding into the host's C frames.
pub fn contain(bookkeeping: impl FnOnce()) -> bool {
    let errno = SavedErrno::save();
    let completed = std::panic::catch_unwind(AssertUnwindSafe(bookkeeping)).is_ok();
    errno.restore();
    completed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::errno;

    #[test]
    fn errno_survives_bookkeeping_that_changes_it() {
        errno::set(libc::EAGAIN);
        assert!(contain(|| {
            // A failing syscall inside the bookkeeping sets errno.
            unsafe { libc::close(-1) };
            assert_eq!(errno::get(), libc::EBADF);
        }));
        assert_eq!(errno::get(), libc::EAGAIN);
    }

    #[test]
    fn a_panic_is_caught_and_reported() {
        std::panic::set_hook(Box::new(|_| {})); // keep the test output clean
        errno::set(libc::EINTR);
        let caught = !contain(|| {
            errno::set(libc::ENOMEM);
            panic!("bookkeeping bug");
        });
        assert!(caught, "the panic is reported, not propagated");
        assert_eq!(errno::get(), libc::EINTR);
        let _ = std::panic::take_hook();
    }
}
