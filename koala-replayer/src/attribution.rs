//! Which replay a host thread is working for, in this process.
//!
//! The same rules as recording (`docs/session-format.md`), reduced to ids:
//!
//! - an inbound connection carries the id the inbound server wrote into the
//!   shared table for its source port (looked up at the first read: the
//!   inbound server writes it before sending the request);
//! - a thread works for the replay of the inbound connection it last read
//!   from or wrote to — or, once delegated by a helper hint, for its virtual
//!   thread's replay;
//! - before each send on a redirected connection, the sender's replay id is
//!   written into the connection's shared slot, so the outbound server reads
//!   it after the bytes arrive.
//!
//! A virtual thread is bound to a replay when a thread delegated to it
//! writes a replayed connection (the response). A read never binds: an
//! event loop reads requests while still delegated to whichever coroutine
//! ran last. Instead each replayed request a thread reads is queued, and a
//! virtual thread first used for a send, still unbound, claims the oldest
//! request its thread read that no virtual thread has claimed yet. That is
//! a guess (coroutines usually run in arrival order, not always), so the id
//! is marked [`TENTATIVE`]: the outbound server checks it against the
//! request and falls back to the replay in flight that matches best.
//!
//! The data path costs atomics and thread-locals; the lock is only taken by
//! services that use helper hints.

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, TryLockError};

use koala_runtime::fdkind::MAX_TRACKED_FD;

#[allow(clippy::declare_interior_mutable_const)]
const NO_REPLAY: AtomicU64 = AtomicU64::new(0);
#[allow(clippy::declare_interior_mutable_const)]
const NO_SLOT: AtomicU16 = AtomicU16::new(0);
/// Inbound fd → replay id (0: not known yet, or not a replayed connection).
static FD_REPLAY: [AtomicU64; MAX_TRACKED_FD] = [NO_REPLAY; MAX_TRACKED_FD];
/// Inbound fd → the peer's port, the key of its shared-table entry.
static FD_PEER_PORT: [AtomicU16; MAX_TRACKED_FD] = [NO_SLOT; MAX_TRACKED_FD];
#[allow(clippy::declare_interior_mutable_const)]
const NO_PENDING: AtomicU32 = AtomicU32::new(0);
/// Redirected outbound fd → its local port, the key of its shared slot, or
/// [`SLOT_PENDING`] until the connect assigned one.
static FD_SLOT: [AtomicU32; MAX_TRACKED_FD] = [NO_PENDING; MAX_TRACKED_FD];
/// A redirected fd whose slot is written once connect() assigned its port.
const SLOT_PENDING: u32 = 1 << 16;
/// Set once any thread used a helper hint: only then is the lock taken.
static HINTS_USED: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// The replay of the inbound connection this thread last touched.
    static CURRENT: Cell<u64> = const { Cell::new(0) };
    /// The virtual thread this thread works for (0: none).
    static DELEGATED: Cell<u64> = const { Cell::new(0) };
}

#[derive(Default)]
struct VirtualThreads {
    bound: HashMap<u64, u64>,
    /// Per thread: replayed requests read, not yet claimed by a virtual thread.
    unclaimed: HashMap<u32, VecDeque<u64>>,
}

/// Most unclaimed requests remembered per thread.
const MAX_UNCLAIMED: usize = 64;

static VIRTUAL: Mutex<Option<VirtualThreads>> = Mutex::new(None);

/// Set on a replay id obtained by a claim rather than by touching the
/// replayed connection: the outbound server verifies it.
pub const TENTATIVE: u64 = 1 << 63;

fn virtual_threads() -> MutexGuard<'static, Option<VirtualThreads>> {
    VIRTUAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn slot<T>(table: &'static [T], fd: i32) -> Option<&'static T> {
    usize::try_from(fd).ok().and_then(|index| table.get(index))
}

/// `fd` was accepted from `peer_port`.
pub fn accepted(fd: i32, peer_port: u16) {
    if let (Some(replay), Some(port)) = (slot(&FD_REPLAY, fd), slot(&FD_PEER_PORT, fd)) {
        replay.store(0, Ordering::Relaxed);
        port.store(peer_port, Ordering::Relaxed);
    }
}

/// The replay inbound connection `fd` carries; `lookup` reads the shared
/// table for a peer port. Cached once known.
pub fn replay_of(fd: i32, lookup: impl FnOnce(u16) -> u64) -> u64 {
    let (Some(entry), Some(port)) = (slot(&FD_REPLAY, fd), slot(&FD_PEER_PORT, fd)) else {
        return 0;
    };
    let known = entry.load(Ordering::Relaxed);
    if known != 0 {
        return known;
    }
    let port = port.load(Ordering::Relaxed);
    let replay = if port == 0 { 0 } else { lookup(port) };
    if replay != 0 {
        entry.store(replay, Ordering::Relaxed);
    }
    replay
}

/// The calling thread read (or wrote, `wrote`) an inbound connection that
/// carries `replay` (0: not a replayed connection).
pub fn inbound_io(replay: u64, wrote: bool, tid: u32) {
    let delegated = DELEGATED.with(Cell::get);
    if delegated == 0 {
        CURRENT.with(|c| c.set(replay));
    }
    if replay == 0 || !HINTS_USED.load(Ordering::Relaxed) {
        return;
    }
    let mut guard = virtual_threads();
    let state = guard.get_or_insert_with(VirtualThreads::default);
    let tentative = state
        .bound
        .get(&delegated)
        .is_none_or(|&r| r & TENTATIVE != 0);
    if delegated != 0 && wrote && tentative {
        state.bound.insert(delegated, replay);
        for queue in state.unclaimed.values_mut() {
            queue.retain(|&r| r != replay);
        }
        return;
    }
    let claimed = state.bound.values().any(|&r| r & !TENTATIVE == replay);
    if !wrote && !claimed {
        let queue = state.unclaimed.entry(tid).or_default();
        if !queue.contains(&replay) {
            if queue.len() == MAX_UNCLAIMED {
                queue.pop_front();
            }
            queue.push_back(replay);
        }
    }
}

/// The replay the calling thread's next send belongs to (0: none known).
pub fn current(tid: u32) -> u64 {
    let delegated = DELEGATED.with(Cell::get);
    if delegated == 0 {
        return CURRENT.with(Cell::get);
    }
    let mut guard = virtual_threads();
    let state = guard.get_or_insert_with(VirtualThreads::default);
    if let Some(&replay) = state.bound.get(&delegated) {
        return replay;
    }
    let claimed = state.unclaimed.get_mut(&tid).and_then(VecDeque::pop_front);
    match claimed {
        Some(replay) => {
            state.bound.insert(delegated, replay | TENTATIVE);
            replay | TENTATIVE
        }
        None => 0,
    }
}

/// The replays thread `tid` may be working for, for the clock and random
/// hooks, best guess first (0: none); never claims a request. Not
/// delegated: the replay of the inbound connection it last touched. A
/// virtual thread: the replay it is bound to, then the request its next
/// send would claim — the oldest its thread read that no virtual thread
/// claimed. An event loop's handler reads the clock before its first write,
/// while the helper's delegation may still name the previous request's
/// context, whose replay is over: the caller takes the first candidate
/// still in flight.
pub fn replay_candidates(tid: u32) -> [u64; 2] {
    let delegated = DELEGATED.with(Cell::get);
    if delegated == 0 {
        return [CURRENT.with(Cell::get), 0];
    }
    let guard = virtual_threads();
    let Some(state) = guard.as_ref() else {
        return [0, 0];
    };
    let bound = state.bound.get(&delegated).map_or(0, |&r| r & !TENTATIVE);
    let next = state
        .unclaimed
        .get(&tid)
        .and_then(|queue| queue.front().copied())
        .unwrap_or(0);
    [bound, next]
}

/// Helper hint `set-delegated-from-thread-id`: the calling thread works for
/// virtual thread `virtual_id` (0: for itself again).
pub fn delegate(virtual_id: u64) {
    HINTS_USED.store(true, Ordering::Relaxed);
    DELEGATED.with(|d| d.set(virtual_id));
}

/// Helper hint `thread-shutdown`: virtual thread `virtual_id` (or the
/// calling thread's) is done.
pub fn end(virtual_id: Option<u64>) {
    let virtual_id = virtual_id.unwrap_or_else(|| DELEGATED.with(Cell::get));
    if virtual_id == 0 {
        CURRENT.with(|c| c.set(0));
        return;
    }
    if let Some(state) = virtual_threads().as_mut() {
        state.bound.remove(&virtual_id);
    }
}

/// `fd` was redirected; its shared slot is at local port `port`, or
/// (`None`) will be once connect() assigned one.
pub fn redirected(fd: i32, port: Option<u16>) {
    if let Some(entry) = slot(&FD_SLOT, fd) {
        entry.store(port.map_or(SLOT_PENDING, u32::from), Ordering::Relaxed);
    }
}

/// The shared slot of a redirected fd.
pub fn slot_of(fd: i32) -> Option<u16> {
    let value = slot(&FD_SLOT, fd).map_or(0, |e| e.load(Ordering::Relaxed));
    (value != 0 && value != SLOT_PENDING).then_some(value as u16)
}

/// Whether `fd` was redirected without knowing its port yet.
pub fn slot_pending(fd: i32) -> bool {
    slot(&FD_SLOT, fd).is_some_and(|e| e.load(Ordering::Relaxed) == SLOT_PENDING)
}

/// `fd` was closed, or its number handed out again.
pub fn forget(fd: i32) {
    if let (Some(replay), Some(port)) = (slot(&FD_REPLAY, fd), slot(&FD_PEER_PORT, fd)) {
        replay.store(0, Ordering::Relaxed);
        port.store(0, Ordering::Relaxed);
    }
    if let Some(entry) = slot(&FD_SLOT, fd) {
        entry.store(0, Ordering::Relaxed);
    }
}

/// The virtual-thread lock, held across `fork` (see [`lock_for_fork`]).
pub struct ForkGuard {
    _held: Option<MutexGuard<'static, Option<VirtualThreads>>>,
}

/// Held across fork so the child never inherits the lock held elsewhere.
/// Waits at most 100 ms: a signal handler forking on a thread that holds
/// it must not hang the host (the child then risks the lock, nothing more).
pub fn lock_for_fork() -> ForkGuard {
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(100);
    loop {
        match VIRTUAL.try_lock() {
            Ok(held) => return ForkGuard { _held: Some(held) },
            Err(TryLockError::Poisoned(poisoned)) => {
                return ForkGuard {
                    _held: Some(poisoned.into_inner()),
                };
            }
            Err(TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::hint::spin_loop()
            }
            Err(TryLockError::WouldBlock) => return ForkGuard { _held: None },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Each test runs on its own thread (thread-locals are per test) and uses
    // its own fd numbers, tids and replay ids.

    /// The shared table as a test sees it: peer port `p` carries replay `p - 1000`.
    fn table(port: u16) -> u64 {
        u64::from(port).saturating_sub(1000)
    }

    /// A thread reads or writes inbound `fd`, as the hooks report it.
    fn io(fd: i32, wrote: bool, tid: u32) {
        inbound_io(replay_of(fd, table), wrote, tid);
    }

    #[test]
    fn a_connection_s_replay_is_looked_up_once_and_cached() {
        accepted(890, 1005);
        assert_eq!(replay_of(890, table), 5);
        assert_eq!(replay_of(890, |_| panic!("cached")), 5);
        accepted(890, 1009); // the number handed out again
        assert_eq!(replay_of(890, table), 9);
        accepted(891, 999); // not a replayed connection (the table holds 0)
        assert_eq!(replay_of(891, table), 0);
    }

    #[test]
    fn a_thread_follows_the_connection_it_reads() {
        accepted(900, 1011);
        accepted(901, 1012);
        io(900, false, 1);
        assert_eq!(current(1), 11);
        io(901, false, 1);
        assert_eq!(current(1), 12);
        io(900, true, 1);
        assert_eq!(current(1), 11, "writing the response also sets it");
        forget(900);
        io(900, false, 1);
        assert_eq!(current(1), 0, "a connection that is not replayed clears it");
    }

    #[test]
    fn an_event_loop_s_virtual_threads_claim_requests_in_arrival_order() {
        const LOOP: u32 = 2;
        accepted(910, 1021);
        accepted(911, 1022);
        delegate(0);
        HINTS_USED.store(true, Ordering::Relaxed);
        io(910, false, LOOP); // the loop reads both requests...
        io(911, false, LOOP);
        delegate(101); // ...then coroutine A runs and sends
        assert_eq!(current(LOOP), 21 | TENTATIVE);
        delegate(102); // coroutine B
        assert_eq!(current(LOOP), 22 | TENTATIVE);
        delegate(101); // A again, after its await
        assert_eq!(current(LOOP), 21 | TENTATIVE);
        io(910, true, LOOP); // A writes its response: now certain
        assert_eq!(current(LOOP), 21);
        end(Some(101));
        end(Some(102));
        delegate(0);
    }

    #[test]
    fn a_worker_delegated_before_it_reads_claims_that_request() {
        const WORKER: u32 = 3;
        HINTS_USED.store(true, Ordering::Relaxed);
        accepted(920, 1031);
        delegate(201);
        io(920, false, WORKER);
        assert_eq!(current(WORKER), 31 | TENTATIVE);
        io(920, true, WORKER);
        assert_eq!(current(WORKER), 31);
        end(None);
        delegate(0);
    }

    #[test]
    fn a_read_while_delegated_does_not_capture_a_waiting_virtual_thread() {
        const LOOP: u32 = 4;
        HINTS_USED.store(true, Ordering::Relaxed);
        accepted(940, 1041);
        accepted(941, 1042);
        delegate(0);
        io(940, false, LOOP); // the loop reads A
        delegate(301); // A's coroutine waits for a lock, sends nothing yet
        io(941, false, LOOP); // the loop reads B meanwhile
        delegate(302); // B's coroutine runs first: its claim of A is a guess...
        assert_eq!(
            current(LOOP),
            41 | TENTATIVE,
            "...marked for the server to verify"
        );
        delegate(301);
        assert_eq!(current(LOOP), 42 | TENTATIVE);
        end(Some(301));
        end(Some(302));
        delegate(0);
    }

    #[test]
    fn the_clock_follows_a_virtual_thread_without_claiming() {
        const LOOP: u32 = 5;
        HINTS_USED.store(true, Ordering::Relaxed);
        accepted(950, 1051);
        accepted(951, 1052);
        delegate(0);
        io(950, false, LOOP);
        assert_eq!(replay_candidates(LOOP), [51, 0], "the connection read");
        io(951, false, LOOP);
        delegate(401); // the handler of the first request reads the clock
        assert_eq!(replay_candidates(LOOP), [0, 51], "what a send would claim");
        assert_eq!(
            replay_candidates(LOOP),
            [0, 51],
            "nothing claimed by looking"
        );
        assert_eq!(current(LOOP), 51 | TENTATIVE, "the send claims it");
        assert_eq!(replay_candidates(LOOP), [51, 52]);
        io(950, true, LOOP); // 401 writes its response: bound for sure
        delegate(402);
        assert_eq!(replay_candidates(LOOP), [0, 52]);
        io(951, true, LOOP); // 402 writes its response: bound
        assert_eq!(replay_candidates(LOOP), [52, 0]);
        // Still delegated to 402 when the loop reads the next request: 402's
        // replay first, the new request next (the caller skips ended ones).
        accepted(952, 1053);
        io(952, false, LOOP);
        assert_eq!(replay_candidates(LOOP), [52, 53]);
        end(Some(401));
        end(Some(402));
        delegate(0);
    }

    #[test]
    fn redirected_slots_are_remembered_per_fd() {
        redirected(930, Some(40123));
        assert_eq!(slot_of(930), Some(40123));
        forget(930);
        assert_eq!(slot_of(930), None);
        assert_eq!(slot_of(-1), None);
        redirected(931, None);
        assert!(slot_pending(931));
        assert_eq!(slot_of(931), None, "no port until connect assigned one");
        redirected(931, Some(65535));
        assert_eq!(slot_of(931), Some(65535));
        assert!(!slot_pending(931));
    }
}
