//! The exported libc entry points, grouped by what they do.

/// The helpers' in-process channel (`koala_context_set`).
mod context;
// RTLD_DEEPBIND: the trampolines are written for these ABIs.
mod determinism;
#[cfg(all(
    target_env = "gnu",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
mod dl;
mod fd;
mod io;
mod process;
// The TLS trampolines are written for these ABIs too.
#[cfg(all(
    target_env = "gnu",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
mod tls;
