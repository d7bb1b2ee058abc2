//! OpenSSL entry points (1.1 and 3): the plaintext of TLS connections.
//!
//! Each exported function is a naked trampoline that passes its return
//! address as one more argument and jumps to its detour, so that the detour
//! can call the libssl *the caller* is linked against (`crate::tls`
//! explains why that matters: two copies of libssl in one process).
//!
//! - Passive: the detour finds the real function (a cached load) and calls
//!   it.
//! - Record: the real function once; the socket I/O it makes ties the
//!   connection to TLS (its ciphertext is not recorded) and the plaintext
//!   it returned or took is handed to the recorder as the connection's bytes.
//! - Replay, on a connection the replayer redirected to its outbound server
//!   (`crate::tls::faked`): the handshake entry points succeed without I/O,
//!   SSL_read/SSL_peek/SSL_write become plain reads and writes on the fd,
//!   SSL_get_error, SSL_get_shutdown, SSL_is_init_finished and
//!   SSL_get_verify_result answer as after a completed handshake,
//!   SSL_get1_peer_certificate (1.1: SSL_get_peer_certificate) returns a
//!   stand-in certificate naming the host the client asked for, and
//!   SSL_shutdown sends nothing. docs/tls.md says why that is safe. The
//!   OpenSSL error queue is never touched.

use std::ffi::{c_int, c_long, c_void};

use crate::layer::Way;
use crate::tls::{self, Call, OpenSsl, Ssl};

/// Exports `$name` as a trampoline to `$detour`, the return address in the
/// argument register after the function's own (`$x86`, `$arm`).
macro_rules! trampoline {
    ($name:ident, $detour:ident, $x86:literal, $arm:literal) => {
        #[cfg(target_arch = "x86_64")]
        #[unsafe(naked)]
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name() {
            core::arch::naked_asm!(
                concat!("mov ", $x86, ", [rsp]"),
                "jmp {detour}",
                detour = sym $detour,
            )
        }

        #[cfg(target_arch = "aarch64")]
        #[unsafe(naked)]
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name() {
            core::arch::naked_asm!(
                concat!("mov ", $arm, ", x30"),
                "b {detour}",
                detour = sym $detour,
            )
        }
    };
}

trampoline!(SSL_read, ssl_read, "rcx", "x3");
trampoline!(SSL_peek, ssl_peek, "rcx", "x3");
trampoline!(SSL_write, ssl_write, "rcx", "x3");
trampoline!(SSL_read_ex, ssl_read_ex, "r8", "x4");
trampoline!(SSL_peek_ex, ssl_peek_ex, "r8", "x4");
trampoline!(SSL_write_ex, ssl_write_ex, "r8", "x4");
trampoline!(SSL_do_handshake, ssl_do_handshake, "rsi", "x1");
trampoline!(SSL_connect, ssl_connect, "rsi", "x1");
trampoline!(SSL_accept, ssl_accept, "rsi", "x1");
trampoline!(SSL_shutdown, ssl_shutdown, "rsi", "x1");
trampoline!(SSL_get_error, ssl_get_error, "rdx", "x2");
trampoline!(SSL_get_shutdown, ssl_get_shutdown, "rsi", "x1");
trampoline!(SSL_is_init_finished, ssl_is_init_finished, "rsi", "x1");
trampoline!(SSL_get_verify_result, ssl_get_verify_result, "rsi", "x1");
trampoline!(SSL_free, ssl_free, "rsi", "x1");
trampoline!(
    SSL_get1_peer_certificate,
    ssl_get1_peer_certificate,
    "rsi",
    "x1"
);
trampoline!(
    SSL_get_peer_certificate,
    ssl_get_peer_certificate,
    "rsi",
    "x1"
);

/// No libssl in the caller's scope (cannot happen for a caller that links
/// one): fail as a TLS call fails, without touching anything.
const NO_LIBRARY: c_int = -1;

type Caller = *const c_void;

// ---- data ------------------------------------------------------------------------

extern "C" fn ssl_read(ssl: Ssl, buf: *mut c_void, num: c_int, caller: Caller) -> c_int {
    let Some(lib) = tls::library(caller) else {
        return NO_LIBRARY;
    };
    if let Some(faked) = tls::faked(lib, ssl, true) {
        return faked.read(buf, num.max(0) as usize, false) as c_int;
    }
    read_real(lib, ssl, buf, num, lib.read)
}

extern "C" fn ssl_peek(ssl: Ssl, buf: *mut c_void, num: c_int, caller: Caller) -> c_int {
    let Some(lib) = tls::library(caller) else {
        return NO_LIBRARY;
    };
    if let Some(faked) = tls::faked(lib, ssl, true) {
        return faked.read(buf, num.max(0) as usize, true) as c_int;
    }
    // A peek consumes nothing: only the real call (the read records).
    // SAFETY: the caller's arguments, unchanged.
    unsafe { (lib.peek)(ssl, buf, num) }
}

/// The real SSL_read: its socket I/O ties the connection, its plaintext is
/// recorded.
fn read_real(
    lib: &OpenSsl,
    ssl: Ssl,
    buf: *mut c_void,
    num: c_int,
    real: unsafe extern "C" fn(Ssl, *mut c_void, c_int) -> c_int,
) -> c_int {
    if !crate::layer::is_active() {
        // SAFETY: the caller's arguments, unchanged.
        return unsafe { real(ssl, buf, num) };
    }
    let call = Call::enter(ssl);
    // SAFETY: the caller's arguments, unchanged.
    let n = unsafe { real(ssl, buf, num) };
    call.done(
        lib,
        Way::Received,
        buf,
        n.max(0) as usize,
        n == 0 && num > 0,
    );
    n
}

extern "C" fn ssl_write(ssl: Ssl, buf: *const c_void, num: c_int, caller: Caller) -> c_int {
    let Some(lib) = tls::library(caller) else {
        return NO_LIBRARY;
    };
    if let Some(faked) = tls::faked(lib, ssl, true) {
        return faked.write(buf, num.max(0) as usize) as c_int;
    }
    if !crate::layer::is_active() {
        // SAFETY: the caller's arguments, unchanged.
        return unsafe { (lib.write)(ssl, buf, num) };
    }
    let call = Call::enter(ssl);
    // SAFETY: the caller's arguments, unchanged.
    let n = unsafe { (lib.write)(ssl, buf, num) };
    call.done(lib, Way::Sent, buf, n.max(0) as usize, false);
    n
}

type ExFn = unsafe extern "C" fn(Ssl, *mut c_void, usize, *mut usize) -> c_int;
type WriteExFn = unsafe extern "C" fn(Ssl, *const c_void, usize, *mut usize) -> c_int;

/// `SSL_read_ex`/`SSL_peek_ex`: 1 and `*done` bytes, or 0.
fn ex_result(n: isize, done: *mut usize) -> c_int {
    if n > 0 {
        if !done.is_null() {
            // SAFETY: the caller's out-pointer.
            unsafe { *done = n as usize };
        }
        1
    } else {
        0
    }
}

extern "C" fn ssl_read_ex(
    ssl: Ssl,
    buf: *mut c_void,
    num: usize,
    done: *mut usize,
    caller: Caller,
) -> c_int {
    let Some(lib) = tls::library(caller) else {
        return 0;
    };
    let Some(real) = lib.read_ex else {
        return 0;
    };
    if let Some(faked) = tls::faked(lib, ssl, true) {
        return ex_result(faked.read(buf, num, false), done);
    }
    read_ex_real(lib, ssl, buf, num, done, real, true)
}

extern "C" fn ssl_peek_ex(
    ssl: Ssl,
    buf: *mut c_void,
    num: usize,
    done: *mut usize,
    caller: Caller,
) -> c_int {
    let Some(lib) = tls::library(caller) else {
        return 0;
    };
    let Some(real) = lib.peek_ex else {
        return 0;
    };
    if let Some(faked) = tls::faked(lib, ssl, true) {
        return ex_result(faked.read(buf, num, true), done);
    }
    read_ex_real(lib, ssl, buf, num, done, real, false)
}

fn read_ex_real(
    lib: &OpenSsl,
    ssl: Ssl,
    buf: *mut c_void,
    num: usize,
    done: *mut usize,
    real: ExFn,
    records: bool,
) -> c_int {
    if !records || !crate::layer::is_active() {
        // SAFETY: the caller's arguments, unchanged.
        return unsafe { real(ssl, buf, num, done) };
    }
    let call = Call::enter(ssl);
    // SAFETY: the caller's arguments, unchanged.
    let ok = unsafe { real(ssl, buf, num, done) };
    let moved = if ok == 1 && !done.is_null() {
        // SAFETY: the real call filled the caller's out-pointer.
        unsafe { *done }
    } else {
        0
    };
    // SAFETY: accessor on the caller's SSL* (reads the error queue's head,
    // never pops it): end-of-file only at the peer's close.
    let eof =
        ok != 1 && num > 0 && unsafe { (lib.get_error)(ssl, ok) } == tls::SSL_ERROR_ZERO_RETURN;
    call.done(lib, Way::Received, buf, moved, eof);
    ok
}

extern "C" fn ssl_write_ex(
    ssl: Ssl,
    buf: *const c_void,
    num: usize,
    done: *mut usize,
    caller: Caller,
) -> c_int {
    let Some(lib) = tls::library(caller) else {
        return 0;
    };
    let Some(real): Option<WriteExFn> = lib.write_ex else {
        return 0;
    };
    if let Some(faked) = tls::faked(lib, ssl, true) {
        return ex_result(faked.write(buf, num), done);
    }
    if !crate::layer::is_active() {
        // SAFETY: the caller's arguments, unchanged.
        return unsafe { real(ssl, buf, num, done) };
    }
    let call = Call::enter(ssl);
    // SAFETY: the caller's arguments, unchanged.
    let ok = unsafe { real(ssl, buf, num, done) };
    let moved = if ok == 1 && !done.is_null() {
        // SAFETY: the real call filled the caller's out-pointer.
        unsafe { *done }
    } else {
        0
    };
    call.done(lib, Way::Sent, buf, moved, false);
    ok
}

// ---- handshake and state -------------------------------------------------------------

/// A handshake entry point: the real one (its I/O ties the connection), or
/// success without I/O on a faked connection.
/// `server`: the side the entry point implies (`SSL_connect`, `SSL_accept`),
/// `None` for `SSL_do_handshake`.
fn handshake(
    ssl: Ssl,
    caller: Caller,
    server: Option<bool>,
    real: impl FnOnce(&OpenSsl) -> unsafe extern "C" fn(Ssl) -> c_int,
) -> c_int {
    let Some(lib) = tls::library(caller) else {
        return NO_LIBRARY;
    };
    if tls::faked_as(lib, ssl, true, server).is_some() {
        return 1;
    }
    let real = real(lib);
    if !crate::layer::is_active() {
        // SAFETY: the caller's argument, unchanged.
        return unsafe { real(ssl) };
    }
    let call = Call::enter(ssl);
    // SAFETY: the caller's argument, unchanged.
    let result = unsafe { real(ssl) };
    call.done(lib, Way::Sent, std::ptr::null(), 0, false);
    result
}

extern "C" fn ssl_do_handshake(ssl: Ssl, caller: Caller) -> c_int {
    handshake(ssl, caller, None, |lib| lib.do_handshake)
}

extern "C" fn ssl_connect(ssl: Ssl, caller: Caller) -> c_int {
    handshake(ssl, caller, Some(false), |lib| lib.connect)
}

extern "C" fn ssl_accept(ssl: Ssl, caller: Caller) -> c_int {
    handshake(ssl, caller, Some(true), |lib| lib.accept)
}

extern "C" fn ssl_shutdown(ssl: Ssl, caller: Caller) -> c_int {
    let Some(lib) = tls::library(caller) else {
        return NO_LIBRARY;
    };
    if let Some(faked) = tls::faked(lib, ssl, false) {
        return faked.shutdown();
    }
    if !crate::layer::is_active() {
        // SAFETY: the caller's argument, unchanged.
        return unsafe { (lib.shutdown)(ssl) };
    }
    // Its close_notify is ciphertext: tied, not recorded.
    let call = Call::enter(ssl);
    // SAFETY: the caller's argument, unchanged.
    let result = unsafe { (lib.shutdown)(ssl) };
    call.done(lib, Way::Sent, std::ptr::null(), 0, false);
    result
}

extern "C" fn ssl_get_error(ssl: Ssl, ret: c_int, caller: Caller) -> c_int {
    let Some(lib) = tls::library(caller) else {
        return tls::SSL_ERROR_SYSCALL;
    };
    if let Some(faked) = tls::faked(lib, ssl, false) {
        return faked.error(ret);
    }
    // SAFETY: the caller's arguments, unchanged.
    unsafe { (lib.get_error)(ssl, ret) }
}

extern "C" fn ssl_get_shutdown(ssl: Ssl, caller: Caller) -> c_int {
    let Some(lib) = tls::library(caller) else {
        return 0;
    };
    // SAFETY: the caller's argument, unchanged.
    let flags = unsafe { (lib.get_shutdown)(ssl) };
    match tls::faked(lib, ssl, false) {
        Some(faked) => flags | faked.shutdown_flags(),
        None => flags,
    }
}

extern "C" fn ssl_is_init_finished(ssl: Ssl, caller: Caller) -> c_int {
    let Some(lib) = tls::library(caller) else {
        return 0;
    };
    if tls::is_faked(ssl) && crate::layer::is_active() {
        return 1;
    }
    match lib.is_init_finished {
        // SAFETY: the caller's argument, unchanged.
        Some(real) => unsafe { real(ssl) },
        None => 0,
    }
}

/// X509_V_OK for a faked connection (the certificate the recording's
/// server showed was verified when it was recorded).
extern "C" fn ssl_get_verify_result(ssl: Ssl, caller: Caller) -> c_long {
    let Some(lib) = tls::library(caller) else {
        return 1; // X509_V_ERR_UNSPECIFIED
    };
    if tls::is_faked(ssl) && crate::layer::is_active() {
        return 0;
    }
    // SAFETY: the caller's argument, unchanged.
    unsafe { (lib.get_verify_result)(ssl) }
}

extern "C" fn ssl_free(ssl: Ssl, caller: Caller) {
    let Some(lib) = tls::library(caller) else {
        return;
    };
    tls::forget(ssl);
    // SAFETY: the caller's argument, unchanged.
    unsafe { (lib.free)(ssl) }
}

/// `SSL_get1_peer_certificate` (OpenSSL 3), and 1.1's
/// `SSL_get_peer_certificate`: a new reference. On the client side of a
/// faked connection, a stand-in certificate naming the host the client
/// asked for; otherwise (passive, record, any other `SSL*`) the real
/// function once.
extern "C" fn ssl_get1_peer_certificate(ssl: Ssl, caller: Caller) -> *mut c_void {
    peer_certificate(ssl, caller)
}

extern "C" fn ssl_get_peer_certificate(ssl: Ssl, caller: Caller) -> *mut c_void {
    peer_certificate(ssl, caller)
}

fn peer_certificate(ssl: Ssl, caller: Caller) -> *mut c_void {
    let Some(lib) = tls::library(caller) else {
        return std::ptr::null_mut();
    };
    if let Some(faked) = tls::faked(lib, ssl, false) {
        return faked.peer_certificate(lib);
    }
    match lib.get1_peer_certificate {
        // SAFETY: the caller's argument, unchanged.
        Some(real) => unsafe { real(ssl) },
        None => std::ptr::null_mut(),
    }
}
