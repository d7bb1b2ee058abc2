//! The process-wide recorder the preload hooks talk to.
//!
//! One mutex guards the assembler; every event holds it for a map lookup
//! and a copy of the bytes. A finished session goes into an *outbox* under
//! that same lock — no channel, no atomics, no wake-up — bounded by a count
//! and a byte budget: when it is full the session is dropped and counted,
//! so a slow disk never blocks a host thread. The writer thread swaps the
//! whole outbox out every few milliseconds.
//!
//! The mutex is `std::sync::Mutex` (a futex): unlike a parking-lot mutex it
//! needs no process-global wait table, so the forked child can release it
//! safely after `fork` (see [`Recorder::prepare_fork`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::thread::Thread;
use std::time::{Duration, Instant};

use koala_config::{ChildSummary, Config};
use koala_session::EndReason;

use crate::assembler::{Assembler, Bytes, Direction, Limits, Stats};
use crate::record::{FinishedSession, ProcessIdentity};
use crate::writer::{self, Done};

/// Counters shared with the writer thread.
#[derive(Default)]
pub struct Counters {
    pub dropped_queue_full: AtomicU64,
    pub written: AtomicU64,
    pub write_errors: AtomicU64,
    /// The session file was reopened: the host closed its fd, or it was
    /// deleted (with its directory, say).
    pub file_reopened: AtomicU64,
    /// Random bytes drawn by sessions beyond `KOALA_MAX_RANDOM_BYTES`.
    pub random_bytes_cut: AtomicU64,
    drops_reported: AtomicU64,
}

/// Finished sessions waiting for the writer.
#[derive(Default)]
struct Outbox {
    sessions: Vec<FinishedSession>,
    bytes: usize,
}

struct Inner {
    assembler: Assembler,
    outbox: Outbox,
    /// Exit flushes waiting: the writer sets each flag once everything
    /// before it is written.
    flush_requests: Vec<Arc<Done>>,
    /// Started at the first connection, or in a forked child at the first
    /// bytes it records (see [`Recorder::after_fork_in_child`]).
    writer: Option<Thread>,
}

pub struct Recorder {
    inner: Mutex<Inner>,
    pub counters: Counters,
    dir: PathBuf,
    /// What the writer stamps on every session line.
    pub(crate) identity: ProcessIdentity,
    /// The assembler's pid, readable without its lock (for the file name).
    pid: AtomicU64,
    /// The file the writer writes to, once open: not always the wanted
    /// name (a name taken, a reopen).
    session_file: Mutex<Option<PathBuf>>,
    /// KOALA_MAX_PAYLOAD_BYTES, also read by the sendfile hook.
    max_payload_bytes: usize,
    queue_capacity: usize,
    queue_max_bytes: usize,
    /// Set after an internal panic: recording stops, the host goes on.
    disabled: AtomicBool,
    /// This image is a forked child (its summary line is optional).
    forked: AtomicBool,
    /// It was forked from an image that had started recording (a writer):
    /// it has the parent's connections to account for at exit.
    parent_recorded: AtomicBool,
    /// KOALA_CHILD_SUMMARY.
    child_summary: ChildSummary,
    /// What the writer redacts (`KOALA_REDACT`); `None`: nothing.
    pub(crate) redact: Option<koala_redact::Rules>,
    /// Random bytes kept per session (`KOALA_MAX_RANDOM_BYTES`).
    max_random_bytes: usize,
}

/// The counts a summary line reports.
struct Reported {
    written: u64,
    dropped: u64,
    write_errors: u64,
    reopened: u64,
    stats: Stats,
}

impl Reported {
    /// Whether the image did anything of its own worth a line: sessions
    /// left to the parent at fork are the parent's work.
    fn recorded_anything(&self) -> bool {
        let own = Stats {
            sessions_left_to_parent: 0,
            ..self.stats.clone()
        };
        [self.written, self.dropped, self.write_errors, self.reopened]
            .iter()
            .any(|&n| n > 0)
            || own != Stats::default()
    }

    /// Whether a summary line is logged for these counts: always for a
    /// process that was not forked; for a forked child as KOALA_CHILD_SUMMARY
    /// says, and always when it lost sessions (a loss is never silent).
    fn worth_logging(&self, forked: bool, policy: ChildSummary) -> bool {
        !forked
            || self.dropped + self.write_errors > 0
            || match policy {
                ChildSummary::Always => true,
                ChildSummary::Recorded => self.recorded_anything(),
                ChildSummary::Never => false,
            }
    }
}

/// What ending every session at exit left to wait for.
enum Closed {
    /// Nothing to report: this image never recorded (or is disabled).
    Nothing,
    /// Counts to report, nothing to write: a forked child that recorded
    /// nothing has no writer to wait for.
    Unwritten,
    /// Sessions handed to this writer, which sets the flag when done.
    Queued(Thread),
}

/// The assembler lock, held across `fork` by the forking thread.
pub struct ForkGuard(Option<MutexGuard<'static, Inner>>);

/// What the writer takes at each wake-up.
pub(crate) struct Taken {
    pub flushes: Vec<Arc<Done>>,
}

impl Recorder {
    /// Creates the process-wide recorder; its writer thread starts with the
    /// first connection.
    pub fn start(config: &Config, identity: ProcessIdentity, pid: u32) -> &'static Recorder {
        let limits = Limits {
            max_payload_bytes: config.max_payload_bytes,
            max_calls_per_session: config.max_calls_per_session,
            idle_ns: config.session_idle.as_nanos() as u64,
        };
        Box::leak(Box::new(Recorder {
            dir: config.record_to.clone(),
            identity,
            pid: AtomicU64::new(u64::from(pid)),
            session_file: Mutex::new(None),
            max_payload_bytes: config.max_payload_bytes,
            inner: Mutex::new(Inner {
                assembler: Assembler::new(pid, limits),
                outbox: Outbox::default(),
                flush_requests: Vec::new(),
                writer: None,
            }),
            counters: Counters::default(),
            queue_capacity: config.queue_capacity,
            queue_max_bytes: config.queue_max_bytes,
            disabled: AtomicBool::new(false),
            forked: AtomicBool::new(false),
            parent_recorded: AtomicBool::new(false),
            child_summary: config.child_summary,
            redact: config.redact.clone(),
            max_random_bytes: config.max_random_bytes,
        }))
    }

    /// Starts the writer thread (at the first connection, and in a forked
    /// child, where the parent's writer does not exist).
    fn start_writer(&'static self, inner: &mut Inner) -> std::io::Result<()> {
        let handle =
            koala_runtime::thread::spawn_internal("koala-writer", move || writer::run(self))?;
        inner.writer = Some(handle.thread().clone());
        Ok(())
    }

    /// `<dir>/<program>-<pid>.jsonl`
    pub fn session_file_path(&self) -> PathBuf {
        self.dir.join(format!(
            "{}-{}.jsonl",
            self.identity.program,
            self.pid.load(Ordering::Relaxed)
        ))
    }

    /// The writer opened `path` for this process's sessions.
    pub(crate) fn set_session_file(&self, path: &std::path::Path) {
        // try_lock: in a forked child the lock may have been inherited held.
        if let Ok(mut file) = self.session_file.try_lock() {
            *file = Some(path.to_path_buf());
        }
    }

    /// The file sessions are written to: the last one opened, or the
    /// wanted name before any.
    fn current_session_file(&self) -> PathBuf {
        let opened = self.session_file.try_lock().ok().and_then(|f| f.clone());
        opened.unwrap_or_else(|| self.session_file_path())
    }

    /// The most bytes kept per request or response (KOALA_MAX_PAYLOAD_BYTES).
    pub fn max_payload_bytes(&self) -> usize {
        self.max_payload_bytes
    }

    pub fn is_disabled(&self) -> bool {
        self.disabled.load(Ordering::Relaxed)
    }

    /// Stops recording for good (after an internal panic).
    pub fn disable(&self) {
        self.disabled.store(true, Ordering::Relaxed);
    }

    fn lock(&self) -> Option<MutexGuard<'_, Inner>> {
        if self.is_disabled() {
            return None;
        }
        // A panic while locked disables recording, so a poisoned lock is
        // never used again.
        self.inner.lock().ok()
    }

    /// Runs one assembler operation and queues the sessions it finished.
    /// `records`: the operation moves bytes, so a forked child that had no
    /// writer yet needs one now.
    fn with_assembler(&'static self, records: bool, operation: impl FnOnce(&mut Assembler)) {
        let Some(mut inner) = self.lock() else { return };
        operation(&mut inner.assembler);
        self.enqueue_finished(&mut inner);
        if inner.writer.is_none() && (records || !inner.outbox.sessions.is_empty()) {
            self.ensure_writer(&mut inner);
        }
    }

    /// Starts the writer if there is none; a writer that cannot start
    /// disables recording.
    fn ensure_writer(&'static self, inner: &mut Inner) -> bool {
        if inner.writer.is_some() {
            return true;
        }
        if self.start_writer(inner).is_err() {
            tracing::error!("cannot start the session writer thread: recording disabled");
            self.disable();
            return false;
        }
        true
    }

    /// Moves the sessions the assembler finished into the outbox, or drops
    /// and counts them when it is full.
    fn enqueue_finished(&self, inner: &mut Inner) {
        let Inner {
            assembler, outbox, ..
        } = inner;
        assembler.drain_finished(|session| {
            let size = session.payload_bytes();
            if outbox.sessions.len() >= self.queue_capacity
                || outbox.bytes + size > self.queue_max_bytes
            {
                self.counters
                    .dropped_queue_full
                    .fetch_add(1, Ordering::Relaxed);
                return;
            }
            outbox.bytes += size;
            outbox.sessions.push(session);
        });
    }

    /// The writer's wake-up: hands back `spent` payload buffers, closes idle
    /// sessions (when `sweep`), and swaps the outbox with `into` (empty,
    /// with capacity: no allocation).
    pub(crate) fn take_batch(
        &self,
        sweep: bool,
        into: &mut Vec<FinishedSession>,
        spent: &mut Vec<Vec<u8>>,
    ) -> Taken {
        let Some(mut inner) = self.lock() else {
            return Taken {
                flushes: Vec::new(),
            };
        };
        inner.assembler.recycle(spent);
        if sweep {
            inner.assembler.close_idle(koala_runtime::clock::now_ns());
            self.enqueue_finished(&mut inner);
        }
        std::mem::swap(&mut inner.outbox.sessions, into);
        inner.outbox.bytes = 0;
        Taken {
            flushes: std::mem::take(&mut inner.flush_requests),
        }
    }

    // ---- events from the hooks ----------------------------------------

    pub fn connection_opened(
        &'static self,
        fd: i32,
        direction: Direction,
        local: SocketAddr,
        peer: SocketAddr,
        tid: u32,
        now_ns: u64,
    ) {
        let Some(mut inner) = self.lock() else { return };
        // The writer starts with the first connection: most processes a
        // preload library lands in (shells, tools) never open one.
        if !self.ensure_writer(&mut inner) {
            return;
        }
        inner
            .assembler
            .open_connection(fd, direction, local, peer, tid, now_ns);
        self.enqueue_finished(&mut inner);
    }

    pub fn fd_duplicated(&'static self, old_fd: i32, new_fd: i32) {
        self.with_assembler(false, |a| a.duplicate_fd(old_fd, new_fd));
    }

    pub fn fd_closed(&'static self, fd: i32) {
        self.with_assembler(false, |a| a.forget_fd(fd));
    }

    pub fn write_side_shut(&'static self, fd: i32) {
        self.with_assembler(false, |a| a.shutdown_write(fd));
    }

    pub fn received(&'static self, fd: i32, tid: u32, data: Bytes<'_>, now_ns: u64) {
        self.with_assembler(true, |a| a.received_parts(fd, tid, data, now_ns));
    }

    pub fn sent(&'static self, fd: i32, tid: u32, data: Bytes<'_>, now_ns: u64) {
        self.with_assembler(true, |a| a.sent_parts(fd, tid, data, now_ns));
    }

    /// `fd`'s bytes go through the host's TLS library, whose hooks hand
    /// over the plaintext: its exchanges from now on are `"tls": true`.
    pub fn tls_plaintext(&'static self, fd: i32) {
        self.with_assembler(false, |a| a.tls_plaintext(fd));
    }

    /// A read on `fd` returned end-of-file.
    pub fn peer_closed(&'static self, fd: i32, now_ns: u64) {
        self.with_assembler(false, |a| a.peer_closed(fd, now_ns));
    }

    /// `tid` drew random bytes: kept in its session for replay, bounded.
    pub fn random_drawn(&'static self, tid: u32, bytes: &[u8]) {
        let mut cut = 0;
        self.with_assembler(false, |a| {
            cut = a.random_drawn(tid, bytes, self.max_random_bytes)
        });
        if cut > 0 {
            self.counters
                .random_bytes_cut
                .fetch_add(cut, Ordering::Relaxed);
        }
    }

    pub fn delegate(&'static self, tid: u32, virtual_id: u64) {
        self.with_assembler(false, |a| a.delegate(tid, virtual_id));
    }

    pub fn end_session_by_hint(&'static self, tid: u32, virtual_id: Option<u64>) {
        self.with_assembler(false, |a| a.end_session_by_hint(tid, virtual_id));
    }

    // ---- the writer's periodic work ------------------------------------

    /// Logs new queue drops, at most once per sweep.
    pub(crate) fn report_drops_if_any(&self) {
        let dropped = self.counters.dropped_queue_full.load(Ordering::Relaxed);
        let reported = self
            .counters
            .drops_reported
            .swap(dropped, Ordering::Relaxed);
        if dropped > reported {
            tracing::warn!(
                dropped_now = dropped - reported,
                dropped_total = dropped,
                "session queue full: sessions dropped (raise KOALA_QUEUE_CAPACITY / KOALA_QUEUE_MAX_BYTES)"
            );
        }
    }

    // ---- exit ------------------------------------------------------------

    /// Ends every open session, writes everything queued and logs the
    /// summary line (a forked child's as KOALA_CHILD_SUMMARY says). Waits
    /// at most `timeout`: never hangs the host's exit.
    pub fn flush_at_exit(&'static self, timeout: Duration) {
        if let Some(reported) = self.flush(timeout)
            && reported.worth_logging(self.is_forked(), self.child_summary)
        {
            self.log_summary(&reported);
        }
    }

    fn is_forked(&self) -> bool {
        self.forked.load(Ordering::Relaxed)
    }

    /// Before exec: as at exit; then what the summary reported is taken off
    /// the counts, so that if the exec fails and the process goes on, its
    /// exit summary counts only what came after: the summary lines of a
    /// process add up to its totals. An image that recorded nothing of its
    /// own (a forked child exec'ing a program per request) logs nothing.
    pub fn flush_before_exec(&'static self, timeout: Duration) {
        if let Some(reported) = self.flush(timeout)
            && reported.recorded_anything()
            && reported.worth_logging(self.is_forked(), self.child_summary)
        {
            self.log_summary(&reported);
            self.forget_reported(&reported);
        }
    }

    /// Ends every session and waits for the writer; the counts then, for
    /// the summary (`None`: nothing was ever recorded).
    fn flush(&'static self, timeout: Duration) -> Option<Reported> {
        let deadline = Instant::now() + timeout;
        let done = Arc::new(Done::default());
        match self.close_all_sessions(deadline, done.clone()) {
            Closed::Nothing => return None,
            Closed::Unwritten => {}
            Closed::Queued(writer) => {
                writer.unpark();
                // A futex wait, woken the moment the writer is done (no
                // polling); no thread-local: exit handlers run after the
                // thread's thread-locals are gone.
                done.wait_until(deadline);
            }
        }
        Some(self.counts())
    }

    /// Takes `reported` off the counts (never below zero); counts added
    /// since the summary stay.
    fn forget_reported(&self, reported: &Reported) {
        let c = &self.counters;
        for (counter, value) in [
            (&c.written, reported.written),
            (&c.dropped_queue_full, reported.dropped),
            (&c.drops_reported, reported.dropped),
            (&c.write_errors, reported.write_errors),
            (&c.file_reopened, reported.reopened),
        ] {
            let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_sub(value))
            });
        }
        // try_lock: exec may run in a signal handler (see close_all_sessions).
        if let Ok(mut inner) = self.inner.try_lock() {
            inner.assembler.forget_reported(&reported.stats);
        }
    }

    /// Ends every session and asks the writer to set `done` once written.
    fn close_all_sessions(&'static self, deadline: Instant, done: Arc<Done>) -> Closed {
        // try_lock: exit() may run in a signal handler that interrupted a
        // thread holding the lock.
        let mut inner = loop {
            match self.inner.try_lock() {
                Ok(inner) => break inner,
                Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                Err(_) => return Closed::Nothing,
            }
        };
        if self.is_disabled() {
            return Closed::Nothing;
        }
        if inner.writer.is_none() && !self.parent_recorded.load(Ordering::Relaxed) {
            // This process never saw a connection: nothing to say.
            return Closed::Nothing;
        }
        inner.assembler.close_all(EndReason::Exit);
        self.enqueue_finished(&mut inner);
        if inner.writer.is_none() {
            // A forked child that moved no bytes: the parent's sessions
            // are left to it, none of its own is queued, no thread to
            // start. (Should one be queued after all, it is written.)
            if inner.outbox.sessions.is_empty() {
                return Closed::Unwritten;
            }
            if !self.ensure_writer(&mut inner) {
                return Closed::Nothing;
            }
        }
        let Some(writer) = inner.writer.clone() else {
            return Closed::Nothing;
        };
        inner.flush_requests.push(done);
        Closed::Queued(writer)
    }

    pub fn stats(&self) -> Option<Stats> {
        self.lock().map(|inner| inner.assembler.stats().clone())
    }

    /// The counts a summary line reports.
    fn counts(&self) -> Reported {
        let c = &self.counters;
        Reported {
            written: c.written.load(Ordering::Relaxed),
            dropped: c.dropped_queue_full.load(Ordering::Relaxed),
            write_errors: c.write_errors.load(Ordering::Relaxed),
            reopened: c.file_reopened.load(Ordering::Relaxed),
            stats: self.stats().unwrap_or_default(),
        }
    }

    fn log_summary(&self, reported: &Reported) {
        let stats = &reported.stats;
        tracing::info!(
            sessions_written = reported.written,
            sessions_dropped_queue_full = reported.dropped,
            sessions_lost_write_error = reported.write_errors,
            session_file_reopened = reported.reopened,
            sessions_without_inbound = stats.sessions_without_inbound,
            sessions_left_to_parent = stats.sessions_left_to_parent,
            background_records = stats.background_records,
            late_bytes = stats.late_bytes,
            calls_over_limit = stats.calls_over_limit,
            truncated_payloads = stats.truncated_payloads,
            empty_sessions = stats.empty_sessions,
            ciphertext_exchanges = stats.ciphertext_exchanges,
            unattributed_calls = stats.unattributed_calls,
            random_bytes_cut = self.counters.random_bytes_cut.load(Ordering::Relaxed),
            file = %self.current_session_file().display(),
            "koala recording summary"
        );
    }

    // ---- fork ------------------------------------------------------------

    /// Before `fork`: take the lock so the child never inherits it held by
    /// a thread that does not exist there.
    pub fn prepare_fork(&'static self) -> ForkGuard {
        let deadline = Instant::now() + Duration::from_millis(100);
        loop {
            match self.inner.try_lock() {
                Ok(inner) => return ForkGuard(Some(inner)),
                Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::hint::spin_loop()
                }
                // Held too long (a signal handler forking?): fork without it;
                // the child then disables itself.
                Err(_) => return ForkGuard(None),
            }
        }
    }

    /// In the child: new pid, sessions left to the parent unless the child
    /// continues them. No writer yet: a child that records nothing (a
    /// helper run per request, a daemon's double fork) starts no thread and
    /// writes nothing; its first recorded bytes start one.
    pub fn after_fork_in_child(
        &'static self,
        guard: ForkGuard,
        parent_tid: u32,
        child_tid: u32,
        child_pid: u32,
    ) {
        let ForkGuard(Some(mut inner)) = guard else {
            self.disable();
            return;
        };
        self.pid.store(child_pid as u64, Ordering::Relaxed);
        inner
            .assembler
            .after_fork_in_child(parent_tid, child_tid, child_pid);
        for counter in [
            &self.counters.dropped_queue_full,
            &self.counters.written,
            &self.counters.write_errors,
            &self.counters.file_reopened,
            &self.counters.drops_reported,
        ] {
            counter.store(0, Ordering::Relaxed);
        }
        if let Ok(mut file) = self.session_file.try_lock() {
            *file = None;
        }
        // Sessions the parent finished are the parent's to write.
        inner.outbox = Outbox::default();
        inner.flush_requests.clear();
        let had_writer = inner.writer.take().is_some();
        self.forked.store(true, Ordering::Relaxed);
        if had_writer {
            self.parent_recorded.store(true, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests;
