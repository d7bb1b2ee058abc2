//! Hooks on the clock and on randomness: in replay, the threads working for
//! a replayed session see its recorded clock and random bytes
//! (`koala_replayer::determinism`); when recording, the random bytes a
//! session's threads draw are kept in it.
//!
//! The clock hooks sit on very hot paths (nginx, redis, Java read the clock
//! per request or more): unless replay mode changes the clock
//! (`KOALA_REPLAY_TIME` not `real`), each is one relaxed load of a static
//! flag and a tail call to the real function. Only `CLOCK_REALTIME` and
//! `CLOCK_REALTIME_COARSE` are ever changed, after the real call, and only
//! for host threads working for a replay in flight.
//!
//! Written by hand rather than with redhook's macro: nothing but the flag
//! may stand between the caller and the real function.

use libc::{c_int, c_uint, c_void, clockid_t, size_t, ssize_t, time_t, timespec, timeval};

use koala_replayer::determinism;

use crate::layer;
use crate::real::RealSymbol;

type ClockGettimeFn = unsafe extern "C" fn(clockid_t, *mut timespec) -> c_int;
type GettimeofdayFn = unsafe extern "C" fn(*mut timeval, *mut c_void) -> c_int;
type TimeFn = unsafe extern "C" fn(*mut time_t) -> time_t;
type GetrandomFn = unsafe extern "C" fn(*mut c_void, size_t, c_uint) -> ssize_t;
type GetentropyFn = unsafe extern "C" fn(*mut c_void, size_t) -> c_int;

static REAL_CLOCK_GETTIME: RealSymbol = RealSymbol::new(c"clock_gettime");
static REAL_GETTIMEOFDAY: RealSymbol = RealSymbol::new(c"gettimeofday");
static REAL_TIME: RealSymbol = RealSymbol::new(c"time");
static REAL_GETRANDOM: RealSymbol = RealSymbol::new(c"getrandom");
static REAL_GETENTROPY: RealSymbol = RealSymbol::new(c"getentropy");

const NS: i64 = 1_000_000_000;

#[unsafe(no_mangle)]
pub unsafe extern "C" fn clock_gettime(clock: clockid_t, ts: *mut timespec) -> c_int {
    // SAFETY: the symbol is libc's clock_gettime.
    let Some(real) = (unsafe { REAL_CLOCK_GETTIME.function::<ClockGettimeFn>() }) else {
        return -1;
    };
    if !determinism::clock_on() {
        // SAFETY: the caller's arguments, unchanged.
        return unsafe { real(clock, ts) };
    }
    // SAFETY: the caller's arguments, unchanged.
    let result = unsafe { real(clock, ts) };
    if result == 0
        && !ts.is_null()
        && matches!(clock, libc::CLOCK_REALTIME | libc::CLOCK_REALTIME_COARSE)
    {
        // SAFETY: the real call just filled the caller's timespec.
        let real_ns = unsafe { (*ts).tv_sec * NS + (*ts).tv_nsec };
        if let Some(seen) = layer::session_realtime(real_ns) {
            // SAFETY: as above.
            unsafe {
                (*ts).tv_sec = (seen / NS) as libc::time_t;
                (*ts).tv_nsec = (seen % NS) as libc::c_long;
            }
        }
    }
    result
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn gettimeofday(tv: *mut timeval, tz: *mut c_void) -> c_int {
    // SAFETY: the symbol is libc's gettimeofday.
    let Some(real) = (unsafe { REAL_GETTIMEOFDAY.function::<GettimeofdayFn>() }) else {
        return -1;
    };
    if !determinism::clock_on() {
        // SAFETY: the caller's arguments, unchanged.
        return unsafe { real(tv, tz) };
    }
    // SAFETY: the caller's arguments, unchanged.
    let result = unsafe { real(tv, tz) };
    if result == 0 && !tv.is_null() {
        // SAFETY: the real call just filled the caller's timeval.
        let real_ns = unsafe { (*tv).tv_sec * NS + (*tv).tv_usec * 1000 };
        if let Some(seen) = layer::session_realtime(real_ns) {
            // SAFETY: as above.
            unsafe {
                (*tv).tv_sec = (seen / NS) as libc::time_t;
                (*tv).tv_usec = ((seen % NS) / 1000) as libc::suseconds_t;
            }
        }
    }
    result
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn time(out: *mut time_t) -> time_t {
    // SAFETY: the symbol is libc's time.
    let Some(real) = (unsafe { REAL_TIME.function::<TimeFn>() }) else {
        return -1;
    };
    if !determinism::clock_on() {
        // SAFETY: the caller's argument, unchanged.
        return unsafe { real(out) };
    }
    // SAFETY: the caller's argument, unchanged.
    let result = unsafe { real(out) };
    if result == -1 {
        return result;
    }
    match layer::session_realtime(result * NS) {
        Some(seen) => {
            let seen = (seen / NS) as time_t;
            if !out.is_null() {
                // SAFETY: the caller's out-pointer, which the real call wrote.
                unsafe { *out = seen };
            }
            seen
        }
        None => result,
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn getrandom(buffer: *mut c_void, length: size_t, flags: c_uint) -> ssize_t {
    // SAFETY: the symbol is libc's getrandom.
    let Some(real) = (unsafe { REAL_GETRANDOM.function::<GetrandomFn>() }) else {
        return -1;
    };
    // SAFETY: the caller's arguments, unchanged.
    let result = unsafe { real(buffer, length, flags) };
    if result > 0 && layer::is_active() {
        // SAFETY: the real call filled `result` bytes of the caller's buffer.
        let drawn = unsafe { std::slice::from_raw_parts_mut(buffer.cast::<u8>(), result as usize) };
        layer::random_drawn(drawn);
    }
    result
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn getentropy(buffer: *mut c_void, length: size_t) -> c_int {
    // SAFETY: the symbol is libc's getentropy.
    let Some(real) = (unsafe { REAL_GETENTROPY.function::<GetentropyFn>() }) else {
        return -1;
    };
    // SAFETY: the caller's arguments, unchanged.
    let result = unsafe { real(buffer, length) };
    if result == 0 && length > 0 && layer::is_active() {
        // SAFETY: getentropy succeeded: all `length` bytes are filled.
        let drawn = unsafe { std::slice::from_raw_parts_mut(buffer.cast::<u8>(), length) };
        layer::random_drawn(drawn);
    }
    result
}
