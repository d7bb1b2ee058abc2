//! The library's own threads, and the kernel thread id of host threads.

use std::cell::Cell;
use std::io;
use std::thread::JoinHandle;

/// Starts a thread that is invisible to the hooks and never runs the host's
/// signal handlers (all signals blocked).
pub fn spawn_internal<F>(name: &str, body: F) -> io::Result<JoinHandle<()>>
where
    F: FnOnce() + Send + 'static,
{
    std::thread::Builder::new()
        .name(name.to_string())
        .stack_size(256 << 10)
        .spawn(move || {
            crate::guard::mark_current_thread_internal();
            block_all_signals();
            body();
        })
}

fn block_all_signals() {
    // SAFETY: sigset is a valid out-pointer; blocking signals only affects this thread.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, std::ptr::null_mut());
    }
}

thread_local! {
    static TID: Cell<u32> = const { Cell::new(0) };
}

/// The calling thread's kernel id, cached (gettid is a real syscall).
#[inline]
pub fn current_tid() -> u32 {
    TID.with(|cached| {
        let tid = cached.get();
        if tid != 0 {
            return tid;
        }
        // SAFETY: gettid cannot fail.
        let tid = unsafe { libc::gettid() } as u32;
        cached.set(tid);
        tid
    })
}

/// After fork the surviving thread has a new id: drop the cached one.
pub fn forget_cached_tid() {
    TID.with(|cached| cached.set(0));
}

/// This process's id (a syscall: not for hot paths).
pub fn current_pid() -> u32 {
    // SAFETY: getpid cannot fail.
    unsafe { libc::getpid() as u32 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_threads_are_marked() {
        let handle = spawn_internal("koala-test", || {
            assert!(crate::guard::is_internal_thread());
        })
        .unwrap();
        handle.join().unwrap();
    }

    #[test]
    fn tid_is_cached_per_thread() {
        let main = current_tid();
        // SAFETY: gettid cannot fail.
        assert_eq!(main, unsafe { libc::gettid() } as u32);
        assert_eq!(TID.with(Cell::get), main, "cached by the first call");
        assert_eq!(main, current_tid());
        let other = std::thread::spawn(current_tid).join().unwrap();
        assert_ne!(main, other);
        forget_cached_tid();
        assert_eq!(TID.with(Cell::get), 0, "forgotten");
        assert_eq!(current_tid(), main, "read again");
    }
}
