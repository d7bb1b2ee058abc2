//! `libkoala.so`: loaded with LD_PRELOAD into the service, it exports the
//! libc socket entry points, passes every call to the real function, and
//! hands what it observed to the recorder (`koala-recorder`).
//!
//! - [`hooks`]: the exported functions. Each reads: guard → real call →
//!   event → return.
//! - [`layer`]: process-wide state, the guard, and the translation of
//!   hook-level facts into recorder calls.
//! - [`real`]: finding the real functions (`dlsym(RTLD_NEXT)`).
//!
//! `docs/architecture.md` explains the design.

mod hooks;
mod layer;
mod real;
mod tls;

/// Runs when the library is loaded, before the host's `main`.
extern "C" fn koala_init() {
    layer::init();
}

#[used]
#[unsafe(link_section = ".init_array")]
static INIT: extern "C" fn() = koala_init;
