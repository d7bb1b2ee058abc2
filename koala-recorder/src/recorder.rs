//! The process-wide recorder the preload hooks talk to.
//!
//! One mutex guards the assembler; every event holds it for a map lookup
//! and a copy of the bytes. Finished sessions leave through a bounded queue
//! with a `try_send`: when the queue (or its byte budget) is full they are
//! dropped and counted, so a slow disk never blocks a host thread.
//!
//! The mutex is `std::sync::Mutex` (a futex): unlike a parking-lot mutex it
//! needs no process-global wait table, so the forked child can release it
//! safely after `fork` (see [`Recorder::prepare_fork`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::thread::Thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, TrySendError};
use koala_config::Config;
use koala_session::{EndReason, Session};

use crate::assembler::{Assembler, Direction, Identity, Limits, Stats};
use crate::writer::{self, Control};

/// Counters shared with the writer thread.
#[derive(Default)]
pub struct Counters {
    pub enqueued: AtomicU64,
    pub dropped_queue_full: AtomicU64,
    pub written: AtomicU64,
    pub write_errors: AtomicU64,
    queued_bytes: AtomicUsize,
    drops_reported: AtomicU64,
}

struct Inner {
    assembler: Assembler,
    sessions_tx: Sender<Session>,
    control_tx: Sender<Control>,
    writer: Option<Thread>,
}

pub struct Recorder {
    inner: Mutex<Inner>,
    pub counters: Counters,
    dir: PathBuf,
    program: String,
    pid: AtomicU64,
    queue_capacity: usize,
    queue_max_bytes: usize,
    /// Set after an internal panic: recording stops, the host goes on.
    disabled: AtomicBool,
}

/// The assembler lock, held across `fork` by the forking thread.
pub struct ForkGuard(Option<MutexGuard<'static, Inner>>);

impl Recorder {
    /// Creates the process-wide recorder; its writer thread starts with the
    /// first connection.
    pub fn start(config: &Config, identity: Identity) -> std::io::Result<&'static Recorder> {
        let limits = Limits {
            max_payload_bytes: config.max_payload_bytes,
            max_calls_per_session: config.max_calls_per_session,
            idle_ns: config.session_idle.as_nanos() as u64,
        };
        let (sessions_tx, _) = crossbeam_channel::bounded(1);
        let (control_tx, _) = crossbeam_channel::bounded(1);
        let recorder: &'static Recorder = Box::leak(Box::new(Recorder {
            dir: config.record_to.clone(),
            program: identity.program.clone(),
            pid: AtomicU64::new(identity.pid as u64),
            inner: Mutex::new(Inner {
                assembler: Assembler::new(identity, limits),
                sessions_tx,
                control_tx,
                writer: None,
            }),
            counters: Counters::default(),
            queue_capacity: config.queue_capacity,
            queue_max_bytes: config.queue_max_bytes,
            disabled: AtomicBool::new(false),
        }));
        Ok(recorder)
    }

    /// New channels and a new writer thread (at start, and in a forked child
    /// where the parent's writer does not exist).
    fn start_writer(&'static self, inner: &mut Inner) -> std::io::Result<()> {
        let (sessions_tx, sessions_rx) = crossbeam_channel::bounded(self.queue_capacity);
        let (control_tx, control_rx) = crossbeam_channel::bounded(16);
        // The old channels may be mid-operation in a thread that no longer
        // exists (fork): leak them rather than touch their internals.
        std::mem::forget(std::mem::replace(&mut inner.sessions_tx, sessions_tx));
        std::mem::forget(std::mem::replace(&mut inner.control_tx, control_tx));
        self.counters.queued_bytes.store(0, Ordering::Relaxed);
        let handle = koala_runtime::thread::spawn_internal("koala-writer", move || {
            writer::run(self, sessions_rx, control_rx)
        })?;
        inner.writer = Some(handle.thread().clone());
        Ok(())
    }

    /// `<dir>/<program>-<pid>.jsonl`
    pub fn session_file_path(&self) -> PathBuf {
        self.dir.join(format!(
            "{}-{}.jsonl",
            self.program,
            self.pid.load(Ordering::Relaxed)
        ))
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
    fn with_assembler(&self, operation: impl FnOnce(&mut Assembler)) {
        let Some(mut inner) = self.lock() else { return };
        operation(&mut inner.assembler);
        self.enqueue_finished(&mut inner);
    }

    fn enqueue_finished(&self, inner: &mut Inner) {
        for session in inner.assembler.take_finished() {
            self.enqueue(&inner.sessions_tx, session);
        }
    }

    fn enqueue(&self, tx: &Sender<Session>, session: Session) {
        let size = session_bytes(&session);
        let queued = self
            .counters
            .queued_bytes
            .fetch_add(size, Ordering::Relaxed);
        let result = if queued + size > self.queue_max_bytes {
            Err(TrySendError::Full(session))
        } else {
            tx.try_send(session)
        };
        match result {
            Ok(()) => {
                self.counters.enqueued.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                self.counters
                    .queued_bytes
                    .fetch_sub(size, Ordering::Relaxed);
                self.counters
                    .dropped_queue_full
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Called by the writer for each session it takes off the queue.
    pub(crate) fn dequeued(&self, session: &Session) {
        self.counters
            .queued_bytes
            .fetch_sub(session_bytes(session), Ordering::Relaxed);
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
        if inner.writer.is_none() && self.start_writer(&mut inner).is_err() {
            tracing::error!("cannot start the session writer thread: recording disabled");
            self.disable();
            return;
        }
        inner
            .assembler
            .open_connection(fd, direction, local, peer, tid, now_ns);
        self.enqueue_finished(&mut inner);
    }

    pub fn fd_duplicated(&self, old_fd: i32, new_fd: i32, now_ns: u64) {
        self.with_assembler(|a| a.duplicate_fd(old_fd, new_fd, now_ns));
    }

    pub fn fd_closed(&self, fd: i32, now_ns: u64) {
        self.with_assembler(|a| a.forget_fd(fd, now_ns));
    }

    pub fn write_side_shut(&self, fd: i32) {
        self.with_assembler(|a| a.shutdown_write(fd));
    }

    pub fn received(&self, fd: i32, tid: u32, data: &[u8], now_ns: u64) {
        self.with_assembler(|a| a.received(fd, tid, data, now_ns));
    }

    pub fn sent(&self, fd: i32, tid: u32, data: &[u8], now_ns: u64) {
        self.with_assembler(|a| a.sent(fd, tid, data, now_ns));
    }

    pub fn delegate(&self, tid: u32, virtual_id: u64) {
        self.with_assembler(|a| a.delegate(tid, virtual_id));
    }

    pub fn end_session_by_hint(&self, tid: u32, virtual_id: Option<u64>) {
        self.with_assembler(|a| a.end_session_by_hint(tid, virtual_id));
    }

    // ---- the writer's periodic work ------------------------------------

    pub(crate) fn close_idle_sessions(&self) -> Vec<Session> {
        let Some(mut inner) = self.lock() else {
            return Vec::new();
        };
        inner.assembler.close_idle(koala_runtime::clock::now_ns());
        inner.assembler.take_finished()
    }

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
    /// summary line. Waits at most `timeout`: never hangs the host's exit.
    pub fn flush_at_exit(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        // No writer: this process never saw a connection, nothing to say.
        let Some((control_tx, Some(writer))) = self.close_all_sessions(deadline) else {
            return;
        };
        // Polled, not a blocking receive: exit handlers run after the
        // thread's thread-locals (which blocking channel operations use) are gone.
        let done = Arc::new(AtomicBool::new(false));
        if control_tx.try_send(Control::Flush(done.clone())).is_ok() {
            writer.unpark();
            while !done.load(Ordering::Acquire) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        self.log_summary();
    }

    fn close_all_sessions(&self, deadline: Instant) -> Option<(Sender<Control>, Option<Thread>)> {
        // try_lock: exit() may run in a signal handler that interrupted a
        // thread holding the lock.
        let mut inner = loop {
            match self.inner.try_lock() {
                Ok(inner) => break inner,
                Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                Err(_) => return None,
            }
        };
        if self.is_disabled() {
            return None;
        }
        inner.assembler.close_all(EndReason::Exit);
        self.enqueue_finished(&mut inner);
        Some((inner.control_tx.clone(), inner.writer.clone()))
    }

    pub fn stats(&self) -> Option<Stats> {
        self.lock().map(|inner| inner.assembler.stats().clone())
    }

    fn log_summary(&self) {
        let stats = self.stats().unwrap_or_default();
        let c = &self.counters;
        tracing::info!(
            sessions_written = c.written.load(Ordering::Relaxed),
            sessions_dropped_queue_full = c.dropped_queue_full.load(Ordering::Relaxed),
            sessions_lost_write_error = c.write_errors.load(Ordering::Relaxed),
            sessions_without_inbound = stats.sessions_without_inbound,
            background_records = stats.background_records,
            late_bytes = stats.late_bytes,
            calls_over_limit = stats.calls_over_limit,
            truncated_payloads = stats.truncated_payloads,
            file = %self.session_file_path().display(),
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

    pub fn after_fork_in_parent(&self, guard: ForkGuard) {
        drop(guard);
    }

    /// In the child: new pid, a new writer, sessions left to the parent
    /// unless the child continues them.
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
            &self.counters.enqueued,
            &self.counters.dropped_queue_full,
            &self.counters.written,
            &self.counters.write_errors,
            &self.counters.drops_reported,
        ] {
            counter.store(0, Ordering::Relaxed);
        }
        let had_writer = inner.writer.take().is_some();
        if had_writer && self.start_writer(&mut inner).is_err() {
            self.disable();
        }
    }
}

/// What a queued session weighs against the byte budget.
fn session_bytes(session: &Session) -> usize {
    let exchange = |e: &koala_session::Exchange| e.request.len() + e.response.len() + 64;
    exchange(&session.inbound) + session.calls.iter().map(exchange).sum::<usize>()
}

#[cfg(test)]
mod tests;
