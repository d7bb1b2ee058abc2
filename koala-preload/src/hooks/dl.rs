//! Hooks on the dynamic loader: `dlopen` and `dlmopen` load libraries
//! without `RTLD_DEEPBIND` while the library is active.
//!
//! `RTLD_DEEPBIND` makes the loaded object look its symbols up in its own
//! dependencies (libc among them) before the global scope, where
//! libkoala.so sits. PHP loads every extension that way, so libcurl inside
//! php-fpm called libc's `connect`, `send` and `recv` directly: nothing was
//! recorded, and at replay its connects went to the real address. Without
//! the flag the loaded object binds like every other library: global scope
//! first, i.e. these hooks. docs/architecture.md says why that is safe.
//!
//! **Why a trampoline.** glibc's dlopen takes its caller from its return
//! address: the caller's `DT_RUNPATH`/`DT_RPATH` and `$ORIGIN` decide where
//! a bare name is searched, and the caller's namespace where the library
//! goes. A hook written as an ordinary function would make libkoala.so the
//! caller and change which library loads. So both hooks are naked
//! functions: they ask [`forward_dlopen`] (or [`forward_dlmopen`]) for the
//! real function and the flags to use, restore the caller's arguments and
//! *jump* to the real function, which returns straight to the host —
//! called exactly once, with the host as its caller.

use std::ffi::{CStr, c_char, c_int, c_long, c_void};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::layer;
use crate::real::RealSymbol;

static REAL_DLOPEN: RealSymbol = RealSymbol::new(c"dlopen");
static REAL_DLMOPEN: RealSymbol = RealSymbol::new(c"dlmopen");

/// What a trampoline jumps to, returned in two registers (rax:rdx on
/// x86_64, x0:x1 on aarch64): the real function (null if not found: the
/// trampoline then returns NULL, as a failed dlopen does) and the flags.
#[repr(C)]
struct Forward {
    real: *mut c_void,
    flags: c_int,
}

/// `dlopen(file, flags)`: the real dlopen, and `flags` without
/// RTLD_DEEPBIND when the library is active.
extern "C" fn forward_dlopen(file: *const c_char, flags: c_int) -> Forward {
    Forward {
        real: REAL_DLOPEN.get(),
        flags: flags_to_use(file, flags),
    }
}

/// `dlmopen(namespace, file, flags)`: as dlopen for the base namespace. A
/// new namespace gets its own libc and no preloaded library: clearing the
/// flag would not bring its calls to the hooks, so it is left alone
/// (docs/architecture.md lists this as out of reach).
extern "C" fn forward_dlmopen(namespace: c_long, file: *const c_char, flags: c_int) -> Forward {
    Forward {
        real: REAL_DLMOPEN.get(),
        flags: if namespace == libc::LM_ID_BASE {
            flags_to_use(file, flags)
        } else {
            flags
        },
    }
}

/// `flags` without RTLD_DEEPBIND when the library is active (record or
/// replay); passive, they are untouched after one relaxed load (and the
/// lookup of the real function, a load once resolved). Never
/// panics: it runs inside the host's dlopen call.
fn flags_to_use(file: *const c_char, flags: c_int) -> c_int {
    if flags & libc::RTLD_DEEPBIND == 0 || !layer::is_active() {
        return flags;
    }
    log_first_drop(file);
    flags & !libc::RTLD_DEEPBIND
}

/// Logs the first dropped flag of the process (debug): enough to see it
/// happen without a line per extension.
fn log_first_drop(file: *const c_char) {
    static LOGGED: AtomicBool = AtomicBool::new(false);
    if LOGGED.swap(true, Ordering::Relaxed) {
        return;
    }
    // The logging's own libc calls must pass straight through.
    let Some(_busy) = layer::enter() else { return };
    layer::contain("dlopen", || {
        let library = if file.is_null() {
            "(the main program)".into()
        } else {
            // SAFETY: dlopen's argument is a NUL-terminated path.
            unsafe { CStr::from_ptr(file) }.to_string_lossy()
        };
        tracing::debug!(
            %library,
            "dlopen: RTLD_DEEPBIND dropped, so the library's socket calls reach koala \
             (logged once)"
        );
    });
}

// ---- the trampolines ------------------------------------------------------------
//
// Each saves the argument registers, calls its forward function (whose
// arguments are the caller's, in the same registers), restores them with
// the returned flags in place, and tail-jumps to the real function. Stack
// alignment: 16 bytes at the call, as the ABIs require.

/// `void *dlopen(const char *file, int flags)`.
///
/// # Safety
/// As the real dlopen.
#[cfg(target_arch = "x86_64")]
#[unsafe(naked)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dlopen(file: *const c_char, flags: c_int) -> *mut c_void {
    core::arch::naked_asm!(
        "push rdi",
        "push rsi",
        "sub rsp, 8",
        "call {forward}", // rdi = file, esi = flags
        "add rsp, 8",
        "pop rsi",
        "pop rdi",
        "mov esi, edx", // the flags to use
        "test rax, rax",
        "jz 2f",
        "jmp rax",
        "2:",
        "xor eax, eax",
        "ret",
        forward = sym forward_dlopen,
    )
}

/// `void *dlmopen(Lmid_t namespace, const char *file, int flags)`.
///
/// # Safety
/// As the real dlmopen.
#[cfg(target_arch = "x86_64")]
#[unsafe(naked)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dlmopen(
    namespace: c_long,
    file: *const c_char,
    flags: c_int,
) -> *mut c_void {
    core::arch::naked_asm!(
        "push rdi",
        "push rsi",
        "sub rsp, 8",
        "call {forward}", // rdi = namespace, rsi = file, edx = flags
        "add rsp, 8",
        "pop rsi",
        "pop rdi",
        // The flags to use are already in edx.
        "test rax, rax",
        "jz 2f",
        "jmp rax",
        "2:",
        "xor eax, eax",
        "ret",
        forward = sym forward_dlmopen,
    )
}

/// `void *dlopen(const char *file, int flags)`. The real function is
/// reached with `br x16`, which a BTI landing pad accepts.
///
/// # Safety
/// As the real dlopen.
#[cfg(target_arch = "aarch64")]
#[unsafe(naked)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dlopen(file: *const c_char, flags: c_int) -> *mut c_void {
    core::arch::naked_asm!(
        "stp x29, x30, [sp, #-32]!",
        "mov x29, sp",
        "str x0, [sp, #16]",
        "bl {forward}", // x0 = file, w1 = flags
        "mov x16, x0",
        "ldr x0, [sp, #16]",
        // The flags to use are already in w1.
        "ldp x29, x30, [sp], #32",
        "cbz x16, 2f",
        "br x16",
        "2:",
        "mov x0, xzr",
        "ret",
        forward = sym forward_dlopen,
    )
}

/// `void *dlmopen(Lmid_t namespace, const char *file, int flags)`.
///
/// # Safety
/// As the real dlmopen.
#[cfg(target_arch = "aarch64")]
#[unsafe(naked)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dlmopen(
    namespace: c_long,
    file: *const c_char,
    flags: c_int,
) -> *mut c_void {
    core::arch::naked_asm!(
        "stp x29, x30, [sp, #-32]!",
        "mov x29, sp",
        "stp x0, x1, [sp, #16]",
        "bl {forward}", // x0 = namespace, x1 = file, w2 = flags
        "mov x16, x0",
        "mov w2, w1", // the flags to use
        "ldp x0, x1, [sp, #16]",
        "ldp x29, x30, [sp], #32",
        "cbz x16, 2f",
        "br x16",
        "2:",
        "mov x0, xzr",
        "ret",
        forward = sym forward_dlmopen,
    )
}
