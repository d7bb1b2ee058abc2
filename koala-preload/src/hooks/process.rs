//! Hooks on the process: fork (children keep recording), syscall (node
//! closes sockets with syscall(SYS_close)), and _exit (flush first).

use libc::{c_int, c_long, pid_t};

use koala_runtime::errno::SavedErrno;

use crate::layer;
use crate::real::{RealSymbol, hook};

type ForkFn = unsafe extern "C" fn() -> pid_t;

hook! { fn fork() -> pid_t => koala_fork = fork_detour; }

/// The recorder's lock is taken before the real fork and released on both
/// sides, so the child never inherits it held by a thread it does not have.
unsafe fn fork_detour(real: ForkFn) -> pid_t {
    let Some(_busy) = layer::enter() else {
        // SAFETY: no arguments.
        return unsafe { real() };
    };
    let state = layer::before_fork();
    // SAFETY: no arguments.
    let pid = unsafe { real() };
    let errno = SavedErrno::save();
    layer::after_fork(state, pid);
    errno.restore();
    pid
}

// ---- variadic and noreturn: written by hand ------------------------------------

type SyscallFn = unsafe extern "C" fn(c_long, ...) -> c_long;
type ExitFn = unsafe extern "C" fn(c_int) -> !;

static REAL_SYSCALL: RealSymbol = RealSymbol::new(c"syscall");
static REAL_EXIT: RealSymbol = RealSymbol::new(c"_exit");
static REAL_EXIT_UPPER: RealSymbol = RealSymbol::new(c"_Exit");

/// `syscall(number, ...)`: every number passes through unchanged but two.
/// SYS_close: the socket is forgotten first. SYS_connect, while the library
/// is active, takes the path of connect() — recorded, and redirected in
/// replay mode (else a raw connect would reach the real dependency); libc's
/// connect, the same system call, is then the one real call made.
/// Six argument slots are read and forwarded, as glibc's own syscall does.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn syscall(
    number: c_long,
    a1: c_long,
    a2: c_long,
    a3: c_long,
    a4: c_long,
    a5: c_long,
    a6: c_long,
) -> c_long {
    // SAFETY: the symbol is libc's variadic syscall.
    let Some(real) = (unsafe { REAL_SYSCALL.function::<SyscallFn>() }) else {
        return -1;
    };
    if number == libc::SYS_close {
        layer::closing(a1 as c_int);
    }
    if number == libc::SYS_connect && layer::is_active() {
        // SAFETY: the caller's arguments of connect(2), unchanged.
        let result = unsafe {
            super::fd::koala_connect(
                a1 as c_int,
                a2 as *const libc::sockaddr,
                a3 as libc::socklen_t,
            )
        };
        return c_long::from(result);
    }
    // SAFETY: the caller's arguments, unchanged.
    unsafe { real(number, a1, a2, a3, a4, a5, a6) }
}

/// `_exit` skips atexit handlers: write the sessions first (Python's
/// os._exit in forked children, prefork servers).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn _exit(status: c_int) -> ! {
    // SAFETY: forwarding the caller's argument.
    unsafe { exit_detour(&REAL_EXIT, status) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn _Exit(status: c_int) -> ! {
    // SAFETY: forwarding the caller's argument.
    unsafe { exit_detour(&REAL_EXIT_UPPER, status) }
}

unsafe fn exit_detour(symbol: &RealSymbol, status: c_int) -> ! {
    layer::flush_before_exit();
    // SAFETY: the symbol is libc's _exit, which never returns.
    match unsafe { symbol.function::<ExitFn>() } {
        // SAFETY: as above.
        Some(real) => unsafe { real(status) },
        None => {
            // SAFETY: exit_group never returns.
            unsafe { libc::syscall(libc::SYS_exit_group, status as c_long) };
            unreachable!("exit_group returned");
        }
    }
}
