//! Clock readings for `*_ns` fields and for ordering events.

/// Nanoseconds of CLOCK_MONOTONIC: the same clock in every process of the
/// machine, for ordering events across processes (vDSO: no syscall).
pub fn monotonic_ns() -> u64 {
    read(libc::CLOCK_MONOTONIC)
}

/// Unix-epoch nanoseconds (CLOCK_REALTIME, served by the vDSO: no syscall).
pub fn now_ns() -> u64 {
    read(libc::CLOCK_REALTIME)
}

fn read(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid out-pointer; both clocks always exist.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
}
