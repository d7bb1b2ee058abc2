//! Hooks that create, connect, duplicate or close fds. They keep the fd
//! table and the recorder's view of connections in step with the kernel.

use libc::{c_char, c_int, c_uint, sockaddr, socklen_t};

use koala_runtime::{FdKind, fdkind, sockaddr as addr};

use crate::layer;
use crate::real::{RealSymbol, hook};

type SocketFn = unsafe extern "C" fn(c_int, c_int, c_int) -> c_int;
type ConnectFn = unsafe extern "C" fn(c_int, *const sockaddr, socklen_t) -> c_int;
type AcceptFn = unsafe extern "C" fn(c_int, *mut sockaddr, *mut socklen_t) -> c_int;
type Accept4Fn = unsafe extern "C" fn(c_int, *mut sockaddr, *mut socklen_t, c_int) -> c_int;
type CloseFn = unsafe extern "C" fn(c_int) -> c_int;
type ShutdownFn = unsafe extern "C" fn(c_int, c_int) -> c_int;
type DupFn = unsafe extern "C" fn(c_int) -> c_int;
type Dup2Fn = unsafe extern "C" fn(c_int, c_int) -> c_int;
type Dup3Fn = unsafe extern "C" fn(c_int, c_int, c_int) -> c_int;

hook! { fn socket(domain: c_int, kind: c_int, protocol: c_int) -> c_int => koala_socket = socket_detour; }
hook! { fn connect(fd: c_int, address: *const sockaddr, len: socklen_t) -> c_int => koala_connect = connect_detour; }
hook! { fn accept(fd: c_int, address: *mut sockaddr, len: *mut socklen_t) -> c_int => koala_accept = accept_detour; }
hook! { fn accept4(fd: c_int, address: *mut sockaddr, len: *mut socklen_t, flags: c_int) -> c_int => koala_accept4 = accept4_detour; }
hook! { fn close(fd: c_int) -> c_int => koala_close = close_detour; }
hook! { fn shutdown(fd: c_int, how: c_int) -> c_int => koala_shutdown = shutdown_detour; }
hook! { fn dup(fd: c_int) -> c_int => koala_dup = dup_detour; }
hook! { fn dup2(old_fd: c_int, new_fd: c_int) -> c_int => koala_dup2 = dup2_detour; }
hook! { fn dup3(old_fd: c_int, new_fd: c_int, flags: c_int) -> c_int => koala_dup3 = dup3_detour; }

unsafe fn socket_detour(real: SocketFn, domain: c_int, kind: c_int, protocol: c_int) -> c_int {
    // SAFETY: the caller's arguments, unchanged.
    let fd = unsafe { real(domain, kind, protocol) };
    layer::fd_created(fd, fdkind::kind_for_new_socket(domain, kind))
}

unsafe fn connect_detour(
    real: ConnectFn,
    fd: c_int,
    address: *const sockaddr,
    len: socklen_t,
) -> c_int {
    let Some(_busy) = layer::enter() else {
        // SAFETY: the caller's arguments, unchanged.
        return unsafe { real(fd, address, len) };
    };
    let kind = fdkind::get_or_classify(fd);
    if matches!(kind, FdKind::Udp | FdKind::Hint) {
        // SAFETY: the caller's arguments, unchanged.
        let result = unsafe { real(fd, address, len) };
        // SAFETY: the caller passes `len` readable bytes at `address`.
        if let (0, Some(to)) = (result, unsafe { addr::from_raw(address, len) }) {
            layer::udp_connected(fd, to);
        }
        return result;
    }
    let peer = match kind {
        // SAFETY: the caller passes `len` readable bytes at `address`.
        FdKind::TcpSocket => unsafe { addr::from_raw(address, len) },
        _ => None,
    };
    // Replay mode sends the connection to the outbound server instead.
    let redirect = peer.and_then(|peer| layer::redirect(fd, peer));
    let result = match &redirect {
        // SAFETY: a valid sockaddr_storage of length `to`.
        Some((target, to)) => unsafe {
            real(fd, (target as *const libc::sockaddr_storage).cast(), *to)
        },
        // SAFETY: the caller's arguments, unchanged.
        None => unsafe { real(fd, address, len) },
    };
    if let Some(peer) = peer.filter(|_| layer::connect_started(result)) {
        layer::connected(fd, peer);
    }
    result
}

unsafe fn accept_detour(
    real: AcceptFn,
    fd: c_int,
    address: *mut sockaddr,
    len: *mut socklen_t,
) -> c_int {
    // SAFETY: the caller's arguments, unchanged.
    let accepted = unsafe { real(fd, address, len) };
    layer::accepted(accepted, address, len)
}

unsafe fn accept4_detour(
    real: Accept4Fn,
    fd: c_int,
    address: *mut sockaddr,
    len: *mut socklen_t,
    flags: c_int,
) -> c_int {
    // SAFETY: the caller's arguments, unchanged.
    let accepted = unsafe { real(fd, address, len, flags) };
    layer::accepted(accepted, address, len)
}

unsafe fn close_detour(real: CloseFn, fd: c_int) -> c_int {
    layer::closing(fd);
    // SAFETY: the caller's argument, unchanged.
    unsafe { real(fd) }
}

unsafe fn shutdown_detour(real: ShutdownFn, fd: c_int, how: c_int) -> c_int {
    // SAFETY: the caller's arguments, unchanged.
    let result = unsafe { real(fd, how) };
    if result == 0 {
        layer::shut_down(fd, how);
    }
    result
}

unsafe fn dup_detour(real: DupFn, fd: c_int) -> c_int {
    // SAFETY: the caller's argument, unchanged.
    let new_fd = unsafe { real(fd) };
    layer::duplicated(fd, new_fd);
    new_fd
}

unsafe fn dup2_detour(real: Dup2Fn, old_fd: c_int, new_fd: c_int) -> c_int {
    // SAFETY: the caller's arguments, unchanged.
    let result = unsafe { real(old_fd, new_fd) };
    layer::duplicated(old_fd, result);
    result
}

unsafe fn dup3_detour(real: Dup3Fn, old_fd: c_int, new_fd: c_int, flags: c_int) -> c_int {
    // SAFETY: the caller's arguments, unchanged.
    let result = unsafe { real(old_fd, new_fd, flags) };
    layer::duplicated(old_fd, result);
    result
}

// ---- variadic: written by hand on the same guard -------------------------------
//
// C variadic functions cannot be defined in stable Rust, and redhook's macro
// has no form for them. On the Linux ABIs koala supports (x86_64, aarch64)
// the variadic arguments of these calls travel in the same registers as
// fixed ones, so each is exported with its widest fixed signature and
// forwarded to the real variadic function with every argument.

type FcntlFn = unsafe extern "C" fn(c_int, c_int, ...) -> c_int;
type OpenFn = unsafe extern "C" fn(*const c_char, c_int, ...) -> c_int;
type OpenAtFn = unsafe extern "C" fn(c_int, *const c_char, c_int, ...) -> c_int;

static REAL_FCNTL: RealSymbol = RealSymbol::new(c"fcntl");
static REAL_FCNTL64: RealSymbol = RealSymbol::new(c"fcntl64");
static REAL_OPEN: RealSymbol = RealSymbol::new(c"open");
static REAL_OPEN64: RealSymbol = RealSymbol::new(c"open64");
static REAL_OPENAT: RealSymbol = RealSymbol::new(c"openat");
static REAL_OPENAT64: RealSymbol = RealSymbol::new(c"openat64");

/// `fcntl(fd, cmd, arg)`: only F_DUPFD and F_DUPFD_CLOEXEC hand out fds.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fcntl(fd: c_int, cmd: c_int, arg: usize) -> c_int {
    // SAFETY: forwarding the caller's arguments.
    unsafe { fcntl_detour(&REAL_FCNTL, fd, cmd, arg) }
}

/// glibc's 64-bit-offset alias: nginx, python and node import only this one.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fcntl64(fd: c_int, cmd: c_int, arg: usize) -> c_int {
    // SAFETY: forwarding the caller's arguments.
    unsafe { fcntl_detour(&REAL_FCNTL64, fd, cmd, arg) }
}

unsafe fn fcntl_detour(symbol: &RealSymbol, fd: c_int, cmd: c_int, arg: usize) -> c_int {
    // SAFETY: the symbol is libc's variadic fcntl.
    let Some(real) = (unsafe { symbol.function::<FcntlFn>() }) else {
        return -1;
    };
    // SAFETY: the caller's arguments, unchanged.
    let result = unsafe { real(fd, cmd, arg) };
    if cmd == libc::F_DUPFD || cmd == libc::F_DUPFD_CLOEXEC {
        layer::duplicated(fd, result);
    }
    result
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn open(path: *const c_char, flags: c_int, mode: c_uint) -> c_int {
    // SAFETY: forwarding the caller's arguments.
    unsafe { open_detour(&REAL_OPEN, path, flags, mode) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn open64(path: *const c_char, flags: c_int, mode: c_uint) -> c_int {
    // SAFETY: forwarding the caller's arguments.
    unsafe { open_detour(&REAL_OPEN64, path, flags, mode) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn openat(
    dir_fd: c_int,
    path: *const c_char,
    flags: c_int,
    mode: c_uint,
) -> c_int {
    // SAFETY: forwarding the caller's arguments.
    unsafe { openat_detour(&REAL_OPENAT, dir_fd, path, flags, mode) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn openat64(
    dir_fd: c_int,
    path: *const c_char,
    flags: c_int,
    mode: c_uint,
) -> c_int {
    // SAFETY: forwarding the caller's arguments.
    unsafe { openat_detour(&REAL_OPENAT64, dir_fd, path, flags, mode) }
}

/// A file opened: the number is a file now, whatever it was (a missed
/// close of a socket must not make file I/O look like traffic), and the
/// random devices are marked (their reads are randomness drawn).
unsafe fn open_detour(
    symbol: &RealSymbol,
    path: *const c_char,
    flags: c_int,
    mode: c_uint,
) -> c_int {
    // SAFETY: the symbol is libc's variadic open.
    let Some(real) = (unsafe { symbol.function::<OpenFn>() }) else {
        return -1;
    };
    // SAFETY: the caller's arguments, unchanged (mode is ignored without O_CREAT/O_TMPFILE).
    let fd = unsafe { real(path, flags, mode) };
    // SAFETY: the caller's path, which the real open just read.
    unsafe { layer::file_opened(fd, path) }
}

unsafe fn openat_detour(
    symbol: &RealSymbol,
    dir_fd: c_int,
    path: *const c_char,
    flags: c_int,
    mode: c_uint,
) -> c_int {
    // SAFETY: the symbol is libc's variadic openat.
    let Some(real) = (unsafe { symbol.function::<OpenAtFn>() }) else {
        return -1;
    };
    // SAFETY: the caller's arguments, unchanged.
    let fd = unsafe { real(dir_fd, path, flags, mode) };
    // SAFETY: the caller's path, which the real openat just read.
    unsafe { layer::file_opened(fd, path) }
}
