//! Each replayed session's own clock and randomness.
//!
//! A replayed request runs later than it was recorded, and a service stamps
//! the current time and fresh random ids into what it sends and answers. So
//! the threads working for a replay see:
//!
//! - `CLOCK_REALTIME` shifted so that the service reads the replayed request
//!   at the instant it read it when recorded (`inbound.request_ns`), and time
//!   goes on at the real rate (`KOALA_REPLAY_TIME=shifted`, the default), or
//!   stays at that instant (`frozen`). The shift starts at the service's
//!   first read of the replayed request, the same event `request_ns` was
//!   taken at when recording.
//! - the random bytes the session's threads drew when recorded
//!   (`Session::random`), handed back in order; when they run out, real ones.
//!
//! Which thread works for which replay is [`crate::attribution`]'s business.
//! The clock slots live in a shared anonymous mapping made before the host
//! runs, so forked workers see the replays their parent's servers begin; the
//! random bytes live in the servers' process only (a forked worker draws
//! real randomness). Everything here but [`init`]'s mapping is pure state,
//! unit-tested.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use koala_config::ReplayTime;

/// Replays in flight at once whose clock is kept; more share slots by id
/// (a newer replay takes an older one's slot, whose threads see real time).
const SLOTS: usize = 1024;

/// One replay's clock: the recorded instant and when the replay began.
#[repr(C)]
struct ClockSlot {
    /// The replay id (0: free).
    replay: AtomicU64,
    /// `inbound.request_ns` of the session (Unix ns).
    recorded_ns: AtomicU64,
    /// Real CLOCK_REALTIME ns when the service first read the replayed
    /// request (0: not yet).
    began_ns: AtomicU64,
}

/// The mode (`ReplayTime` as a number); 0 = real (the hooks pass through).
static CLOCK_MODE: AtomicU8 = AtomicU8::new(0);
/// Set when replayed sessions may hand back recorded random bytes.
static RANDOM_ON: AtomicBool = AtomicBool::new(false);
static CLOCKS: OnceLock<&'static [ClockSlot]> = OnceLock::new();
/// Replay id → the random bytes its session drew, in the servers' process.
static RANDOM: Mutex<Option<HashMap<u64, RandomStream>>> = Mutex::new(None);

const MODE_SHIFTED: u8 = 1;
const MODE_FROZEN: u8 = 2;

/// Sets the mode and maps the clock slots. Runs in the library's
/// constructor, before the host forks or starts threads.
pub fn init(time: ReplayTime) {
    let mode = match time {
        ReplayTime::Real => 0,
        ReplayTime::Shifted => MODE_SHIFTED,
        ReplayTime::Frozen => MODE_FROZEN,
    };
    if mode != 0 && CLOCKS.set(map_slots()).is_ok() {
        CLOCK_MODE.store(mode, Ordering::Relaxed);
    }
    RANDOM_ON.store(true, Ordering::Relaxed);
}

/// Whether a replayed session's clock differs from the real one: the
/// clock hooks' one relaxed load.
#[inline]
pub fn clock_on() -> bool {
    CLOCK_MODE.load(Ordering::Relaxed) != 0
}

/// Whether the random hooks may hand back recorded bytes.
#[inline]
pub fn random_on() -> bool {
    RANDOM_ON.load(Ordering::Relaxed)
}

/// The slots, shared with forked children (MAP_SHARED|MAP_ANONYMOUS), or
/// process-local memory when the mapping fails.
fn map_slots() -> &'static [ClockSlot] {
    let bytes = SLOTS * std::mem::size_of::<ClockSlot>();
    // SAFETY: a fresh anonymous mapping; zeroed memory is valid for atomics.
    let mapped = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if mapped == libc::MAP_FAILED {
        let slots: Vec<ClockSlot> = (0..SLOTS)
            .map(|_| ClockSlot {
                replay: AtomicU64::new(0),
                recorded_ns: AtomicU64::new(0),
                began_ns: AtomicU64::new(0),
            })
            .collect();
        return Box::leak(slots.into_boxed_slice());
    }
    // SAFETY: `bytes` of zeroed, suitably aligned shared memory, never unmapped.
    unsafe { std::slice::from_raw_parts(mapped.cast::<ClockSlot>(), SLOTS) }
}

fn slot(replay: u64) -> Option<&'static ClockSlot> {
    let slots = CLOCKS.get()?;
    Some(&slots[(replay % SLOTS as u64) as usize])
}

/// A replay of a session recorded at `recorded_ns` (its request's arrival)
/// that drew `random` begins.
pub fn begin(replay: u64, recorded_ns: u64, random: Vec<u8>) {
    if let Some(slot) = slot(replay).filter(|_| recorded_ns != 0) {
        slot.replay.store(0, Ordering::Release);
        slot.recorded_ns.store(recorded_ns, Ordering::Relaxed);
        slot.began_ns.store(0, Ordering::Relaxed);
        slot.replay.store(replay, Ordering::Release);
    }
    if !random.is_empty() {
        let mut streams = RANDOM.lock().unwrap_or_else(|e| e.into_inner());
        streams
            .get_or_insert_with(HashMap::new)
            .insert(replay, RandomStream::new(random));
    }
}

/// The replay is over: its threads see the real clock and real randomness.
pub fn end(replay: u64) {
    if let Some(slot) = slot(replay) {
        let _ = slot
            .replay
            .compare_exchange(replay, 0, Ordering::AcqRel, Ordering::Relaxed);
    }
    let mut streams = RANDOM.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(streams) = streams.as_mut() {
        streams.remove(&replay);
    }
}

/// Whether `replay` is in flight with a clock or random bytes of its own.
pub fn in_flight(replay: u64) -> bool {
    if replay == 0 {
        return false;
    }
    if slot(replay).is_some_and(|slot| slot.replay.load(Ordering::Acquire) == replay) {
        return true;
    }
    let streams = RANDOM.lock().unwrap_or_else(|e| e.into_inner());
    streams.as_ref().is_some_and(|s| s.contains_key(&replay))
}

/// The service read the replayed request of `replay` at `now_ns` (real):
/// its clock starts there, once.
pub fn request_read(replay: u64, now_ns: u64) {
    if let Some(slot) = slot(replay)
        && slot.replay.load(Ordering::Acquire) == replay
    {
        let _ = slot
            .began_ns
            .compare_exchange(0, now_ns, Ordering::AcqRel, Ordering::Relaxed);
    }
}

/// What a thread working for `replay` sees of CLOCK_REALTIME when the real
/// clock says `real_ns`; `None`: the real clock (no such replay in flight).
pub fn realtime(replay: u64, real_ns: u64) -> Option<u64> {
    let slot = slot(replay)?;
    if replay == 0 || slot.replay.load(Ordering::Acquire) != replay {
        return None;
    }
    let recorded = slot.recorded_ns.load(Ordering::Relaxed);
    let began = slot.began_ns.load(Ordering::Relaxed);
    let seen = shifted(real_ns, recorded, began, CLOCK_MODE.load(Ordering::Relaxed));
    // The slot may have been retaken meanwhile: then the real clock.
    (slot.replay.load(Ordering::Acquire) == replay).then_some(seen)
}

/// The clock of a session recorded at `recorded_ns` whose replay began at
/// `began_ns` (0: not yet, i.e. now), read at `real_ns`.
fn shifted(real_ns: u64, recorded_ns: u64, began_ns: u64, mode: u8) -> u64 {
    if mode == MODE_FROZEN || began_ns == 0 {
        return recorded_ns;
    }
    recorded_ns.saturating_add(real_ns.saturating_sub(began_ns))
}

/// Overwrites `buffer` (what a random call just returned) with the next
/// recorded bytes of `replay`'s session, as far as they go: the rest stays
/// real. Returns how many bytes came from the recording.
pub fn draw(replay: u64, buffer: &mut [u8]) -> usize {
    if replay == 0 || buffer.is_empty() {
        return 0;
    }
    let mut streams = RANDOM.lock().unwrap_or_else(|e| e.into_inner());
    let Some(stream) = streams.as_mut().and_then(|s| s.get_mut(&replay)) else {
        return 0;
    };
    let recorded = stream.take(buffer.len());
    buffer[..recorded.len()].copy_from_slice(recorded);
    recorded.len()
}

/// The random bytes a session drew, handed back in order.
#[derive(Debug)]
pub struct RandomStream {
    bytes: Vec<u8>,
    next: usize,
}

impl RandomStream {
    pub fn new(bytes: Vec<u8>) -> Self {
        RandomStream { bytes, next: 0 }
    }

    /// The next bytes, at most `wanted`; fewer (or none) once the
    /// recording runs out.
    pub fn take(&mut self, wanted: usize) -> &[u8] {
        let start = self.next;
        let end = start.saturating_add(wanted).min(self.bytes.len());
        self.next = end;
        &self.bytes[start..end]
    }

    /// Bytes not handed back yet.
    pub fn remaining(&self) -> usize {
        self.bytes.len() - self.next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_random_stream_hands_bytes_back_in_order_then_runs_out() {
        let mut stream = RandomStream::new((0u8..20).collect());
        assert_eq!(stream.take(16), (0u8..16).collect::<Vec<_>>());
        assert_eq!(stream.remaining(), 4);
        assert_eq!(
            stream.take(8),
            [16, 17, 18, 19],
            "a larger draw gets what is left"
        );
        assert!(
            stream.take(4).is_empty(),
            "then none: the caller keeps real bytes"
        );
        assert!(RandomStream::new(Vec::new()).take(1).is_empty());
    }

    #[test]
    fn shifted_time_starts_at_the_recorded_instant_and_ticks() {
        let recorded = 1_700_000_000_000_000_000;
        let began = 1_800_000_000_000_000_000;
        assert_eq!(shifted(began, recorded, began, MODE_SHIFTED), recorded);
        assert_eq!(
            shifted(began + 1_500, recorded, began, MODE_SHIFTED),
            recorded + 1_500
        );
        assert_eq!(
            shifted(began + 1_500, recorded, began, MODE_FROZEN),
            recorded
        );
        assert_eq!(
            shifted(began, recorded, 0, MODE_SHIFTED),
            recorded,
            "before the request is read: the recorded instant"
        );
        assert_eq!(
            shifted(began - 5, recorded, began, MODE_SHIFTED),
            recorded,
            "never before it"
        );
    }

    #[test]
    fn replays_have_their_own_clock_and_bytes_until_they_end() {
        init(ReplayTime::Shifted);
        begin(7, 1_000_000_000_000, vec![1, 2, 3]);
        begin(8, 2_000_000_000_000, vec![9]);
        request_read(7, 5_000_000_000_000);
        assert_eq!(realtime(7, 5_000_000_000_250), Some(1_000_000_000_250));
        assert_eq!(
            realtime(8, 5_000_000_000_250),
            Some(2_000_000_000_000),
            "not read yet"
        );
        assert_eq!(realtime(9, 5), None, "no such replay: the real clock");
        let mut buffer = [0xaau8; 2];
        assert_eq!(draw(7, &mut buffer), 2);
        assert_eq!(buffer, [1, 2]);
        let mut buffer = [0xaau8; 2];
        assert_eq!(draw(7, &mut buffer), 1);
        assert_eq!(buffer, [3, 0xaa], "the rest stays as the real call left it");
        let mut buffer = [0u8; 1];
        assert_eq!(draw(8, &mut buffer), 1);
        assert_eq!(buffer, [9]);
        end(7);
        assert_eq!(realtime(7, 5), None);
        assert_eq!(draw(7, &mut [0u8; 1]), 0);
        assert_eq!(draw(0, &mut [0u8; 1]), 0);
        assert_eq!(
            realtime(7 + SLOTS as u64, 5),
            None,
            "another replay, same slot"
        );
        end(8);
    }
}
