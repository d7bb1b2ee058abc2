//! Hooks on the process: fork (children keep recording), syscall (node
//! closes sockets with syscall(SYS_close)), _exit and the exec family
//! (flush first).

use std::ffi::c_void;

use libc::{c_char, c_int, c_long, pid_t};

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

// ---- exec ----------------------------------------------------------------------
//
// exec replaces the image that holds the recorder: what it recorded is
// written first (see `layer::flush_before_exec`), then the real function is
// called once with the caller's arguments. Every exported entry point is
// hooked: glibc's execv, execvp and execl* reach the kernel through its
// internal __execve, never through the exported execve. posix_spawn does
// not replace the caller and is not hooked.

type Argv = *const *const c_char;
type ExecveFn = unsafe extern "C" fn(*const c_char, Argv, Argv) -> c_int;
type ExecvFn = unsafe extern "C" fn(*const c_char, Argv) -> c_int;
type FexecveFn = unsafe extern "C" fn(c_int, Argv, Argv) -> c_int;
type ExecveatFn = unsafe extern "C" fn(c_int, *const c_char, Argv, Argv, c_int) -> c_int;

hook! { fn execve(path: *const c_char, argv: Argv, envp: Argv) -> c_int => koala_execve = execve_detour; }
hook! { fn execv(path: *const c_char, argv: Argv) -> c_int => koala_execv = execv_detour; }
hook! { fn execvp(file: *const c_char, argv: Argv) -> c_int => koala_execvp = execvp_detour; }
hook! { fn execvpe(file: *const c_char, argv: Argv, envp: Argv) -> c_int => koala_execvpe = execvpe_detour; }
hook! { fn fexecve(fd: c_int, argv: Argv, envp: Argv) -> c_int => koala_fexecve = fexecve_detour; }
hook! { fn execveat(dirfd: c_int, path: *const c_char, argv: Argv, envp: Argv, flags: c_int) -> c_int => koala_execveat = execveat_detour; }

/// Before an exec of `path` (`None`: a PATH search or an fd, not checked).
/// A path that cannot be executed fails without replacing anything, so
/// nothing is flushed: Python's os.execvp tries execv on every PATH entry,
/// and the first miss would otherwise end the open sessions.
fn before_exec(path: Option<*const c_char>) {
    if !layer::is_active() {
        return;
    }
    let errno = SavedErrno::save();
    // With the effective ids, as exec checks (a setuid host's real ids may
    // not be allowed what its effective ones are).
    // SAFETY: the caller's NUL-terminated path, only read.
    let executable = path.is_none_or(|path| unsafe {
        libc::faccessat(libc::AT_FDCWD, path, libc::X_OK, libc::AT_EACCESS) == 0
    });
    if executable {
        layer::flush_before_exec();
    }
    errno.restore();
}

unsafe fn execve_detour(real: ExecveFn, path: *const c_char, argv: Argv, envp: Argv) -> c_int {
    before_exec(Some(path));
    // SAFETY: the caller's arguments, unchanged.
    unsafe { real(path, argv, envp) }
}

unsafe fn execv_detour(real: ExecvFn, path: *const c_char, argv: Argv) -> c_int {
    before_exec(Some(path));
    // SAFETY: the caller's arguments, unchanged.
    unsafe { real(path, argv) }
}

unsafe fn execvp_detour(real: ExecvFn, file: *const c_char, argv: Argv) -> c_int {
    before_exec(None);
    // SAFETY: the caller's arguments, unchanged.
    unsafe { real(file, argv) }
}

unsafe fn execvpe_detour(real: ExecveFn, file: *const c_char, argv: Argv, envp: Argv) -> c_int {
    before_exec(None);
    // SAFETY: the caller's arguments, unchanged.
    unsafe { real(file, argv, envp) }
}

unsafe fn fexecve_detour(real: FexecveFn, fd: c_int, argv: Argv, envp: Argv) -> c_int {
    before_exec(None);
    // SAFETY: the caller's arguments, unchanged.
    unsafe { real(fd, argv, envp) }
}

unsafe fn execveat_detour(
    real: ExecveatFn,
    dirfd: c_int,
    path: *const c_char,
    argv: Argv,
    envp: Argv,
    flags: c_int,
) -> c_int {
    before_exec(None);
    // SAFETY: the caller's arguments, unchanged.
    unsafe { real(dirfd, path, argv, envp, flags) }
}

// The variadic execl, execle and execlp: stable Rust cannot read a C
// variadic list, so a naked trampoline saves the argument registers (and
// rax, the vector-register count of a variadic call), calls its forward
// function, restores them and tail-jumps to the real function, which finds
// the caller's registers and stack untouched. 16-byte stack alignment at
// the call, as the ABIs require.

static REAL_EXECL: RealSymbol = RealSymbol::new(c"execl");
static REAL_EXECLE: RealSymbol = RealSymbol::new(c"execle");
static REAL_EXECLP: RealSymbol = RealSymbol::new(c"execlp");

/// Flushes, then the real function's address; null (errno ENOSYS) when no
/// later object defines it, and the trampoline returns -1.
fn forward_exec(symbol: &RealSymbol, path: Option<*const c_char>) -> *mut c_void {
    before_exec(path);
    let real = symbol.get();
    if real.is_null() {
        koala_runtime::errno::set(libc::ENOSYS);
    }
    real
}

extern "C" fn forward_execl(path: *const c_char) -> *mut c_void {
    forward_exec(&REAL_EXECL, Some(path))
}

extern "C" fn forward_execle(path: *const c_char) -> *mut c_void {
    forward_exec(&REAL_EXECLE, Some(path))
}

extern "C" fn forward_execlp() -> *mut c_void {
    forward_exec(&REAL_EXECLP, None)
}

/// Saves the six integer argument registers and rax, calls `$forward`
/// (its first argument still in rdi), restores them and jumps to the
/// address it returned, or returns -1.
#[cfg(target_arch = "x86_64")]
macro_rules! exec_trampoline {
    ($forward:path) => {
        core::arch::naked_asm!(
            "push rdi", // entry: rsp = 8 mod 16
            "push rsi",
            "push rdx",
            "push rcx",
            "push r8",
            "push r9",
            "push rax", // seven pushes: rsp = 0 mod 16
            "call {forward}",
            "mov r11, rax",
            "pop rax",
            "pop r9",
            "pop r8",
            "pop rcx",
            "pop rdx",
            "pop rsi",
            "pop rdi",
            "test r11, r11",
            "jz 2f",
            "jmp r11",
            "2:",
            "mov eax, -1",
            "ret",
            forward = sym $forward,
        )
    };
}

/// Saves x0-x7 (variadic arguments come in the same registers as fixed
/// ones on Linux), calls `$forward` (x0 still its first argument),
/// restores them and branches to the returned address with `br x16`,
/// which a BTI landing pad accepts; or returns -1.
#[cfg(target_arch = "aarch64")]
macro_rules! exec_trampoline {
    ($forward:path) => {
        core::arch::naked_asm!(
            "stp x29, x30, [sp, #-80]!",
            "mov x29, sp",
            "stp x0, x1, [sp, #16]",
            "stp x2, x3, [sp, #32]",
            "stp x4, x5, [sp, #48]",
            "stp x6, x7, [sp, #64]",
            "bl {forward}",
            "mov x16, x0",
            "ldp x0, x1, [sp, #16]",
            "ldp x2, x3, [sp, #32]",
            "ldp x4, x5, [sp, #48]",
            "ldp x6, x7, [sp, #64]",
            "ldp x29, x30, [sp], #80",
            "cbz x16, 2f",
            "br x16",
            "2:",
            "mov w0, #-1",
            "ret",
            forward = sym $forward,
        )
    };
}

/// `int execl(const char *path, const char *arg, ... /*, NULL */)`; the
/// Rust signature names the fixed arguments only.
///
/// # Safety
/// As the real execl.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[unsafe(naked)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn execl(path: *const c_char, arg: *const c_char) -> c_int {
    exec_trampoline!(forward_execl)
}

/// `int execle(const char *path, const char *arg, ... /*, NULL, char *const envp[] */)`.
///
/// # Safety
/// As the real execle.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[unsafe(naked)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn execle(path: *const c_char, arg: *const c_char) -> c_int {
    exec_trampoline!(forward_execle)
}

/// `int execlp(const char *file, const char *arg, ... /*, NULL */)`.
///
/// # Safety
/// As the real execlp.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[unsafe(naked)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn execlp(file: *const c_char, arg: *const c_char) -> c_int {
    exec_trampoline!(forward_execlp)
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
