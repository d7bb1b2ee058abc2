//! Keeping the library's own fds out of the host's way: close-on-exec and at
//! high numbers, so hosts that close or dup2 over low fds never hit them.

use std::sync::atomic::{AtomicI32, Ordering};

static HIGH_FD_BASE: AtomicI32 = AtomicI32::new(0);

/// The lowest number the library's own fds are moved to: 128 below the soft
/// RLIMIT_NOFILE, capped at 8192 so the kernel's fd table is not grown
/// needlessly in hosts with huge limits.
fn high_fd_base() -> i32 {
    let cached = HIGH_FD_BASE.load(Ordering::Relaxed);
    if cached > 0 {
        return cached;
    }
    let mut limit = libc::rlimit {
        rlim_cur: 1024,
        rlim_max: 1024,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    let soft = limit.rlim_cur.min(8192) as i32;
    let base = (soft - 128).max(64);
    HIGH_FD_BASE.store(base, Ordering::Relaxed);
    base
}

/// Moves `fd` to a high number with FD_CLOEXEC and returns the new number.
/// If no high slot is free it keeps `fd`, still marking it close-on-exec.
pub fn relocate_high(fd: i32) -> i32 {
    if fd < 0 {
        return fd;
    }
    // SAFETY: fcntl/close on an fd the library owns.
    unsafe {
        if fd >= high_fd_base() {
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
            return fd;
        }
        let high = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, high_fd_base());
        if high < 0 {
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
            return fd;
        }
        libc::close(fd);
        high
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::IntoRawFd;

    #[test]
    fn relocated_fds_are_high_and_cloexec() {
        let fd = std::fs::File::open("/proc/self/stat")
            .unwrap()
            .into_raw_fd();
        let high = relocate_high(fd);
        assert!(high >= high_fd_base(), "{high}");
        // SAFETY: fd numbers owned by this test.
        unsafe {
            assert_eq!(
                libc::fcntl(high, libc::F_GETFD) & libc::FD_CLOEXEC,
                libc::FD_CLOEXEC
            );
            assert_eq!(libc::fcntl(fd, libc::F_GETFD), -1, "the low fd is closed");
            libc::close(high);
        }
    }
}
