//! What the hooks hand their events to: process-wide state, the guard that
//! decides whether a call is observed, and the translation of hook-level
//! facts (an fd was accepted, bytes were read) into recorder calls.
//!
//! Every function here that does bookkeeping runs it through [`contain`]:
//! errno is preserved and a panic disables recording instead of crossing
//! into the host.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use koala_config::Config;
use koala_recorder::{Bytes, Direction, ProcessIdentity, Recorder};
use koala_replayer::Replayer;
use koala_runtime::errno::SavedErrno;
use koala_runtime::guard::{Busy, is_internal_thread};
use koala_runtime::{FdKind, clock, fdkind, fds, sockaddr, thread};

/// Set once initialisation finished with an active mode. Hooks check it
/// first: a passive library costs one relaxed load per call.
static ACTIVE: AtomicBool = AtomicBool::new(false);
/// The process the state belongs to; differs from getpid() in a vfork
/// child, which shares our memory and must not touch it.
static OWNER_PID: AtomicU32 = AtomicU32::new(0);
static RECORDER: OnceLock<&'static Recorder> = OnceLock::new();
static REPLAYER: OnceLock<&'static Replayer> = OnceLock::new();

/// How long exit may wait for the last sessions to reach the disk.
const EXIT_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

// ---- initialisation --------------------------------------------------------

/// Runs from `.init_array` when the library is loaded.
pub fn init() {
    let Some(_busy) = Busy::enter() else { return };
    let (config, errors) = Config::from_env();
    if !config.mode_requested {
        return;
    }
    let program = program_name();
    let pid = thread::current_pid();
    // The default panic hook prints to the host's stderr; ours logs.
    std::panic::set_hook(Box::new(|info| tracing::error!("internal panic: {info}")));
    let _ = koala_log::init(&config.log_target, config.log_level, &program, pid);
    for error in &errors {
        tracing::error!("{error}");
    }
    OWNER_PID.store(pid, Ordering::Relaxed);
    if config.mode.record {
        let identity = ProcessIdentity {
            program: program.into(),
            start_secs: clock::now_ns() / 1_000_000_000,
        };
        let _ = RECORDER.set(Recorder::start(&config, identity, pid));
    }
    if config.mode.replay {
        // Fails closed: if its servers cannot start, every redirected
        // connect is refused, never sent to the real dependencies.
        let _ = REPLAYER.set(Replayer::start(&config));
    }
    if !config.mode.is_active() {
        // `off`/`passive` on purpose, or a typo already logged above as an
        // error; either way only where KOALA_LOG_FILE says (see koala-config).
        tracing::info!("KOALA_MODE names no mode: the library stays passive");
        // No exit handler in a passive process: write these lines now
        // (nothing waits unless KOALA_LOG_FILE set up a log).
        koala_log::flush(Duration::from_millis(500));
        return;
    }
    tracing::debug!(mode = %config.mode, dir = %config.record_to.display(), "koala active");
    // SAFETY: registering a plain extern "C" function.
    unsafe { libc::atexit(at_exit) };
    ACTIVE.store(true, Ordering::Release);
}

/// The short program name (`program_invocation_short_name`), safe for a file name.
fn program_name() -> String {
    unsafe extern "C" {
        static program_invocation_short_name: *const libc::c_char;
    }
    // SAFETY: glibc sets this before any constructor runs; it may be null
    // in exotic loaders, which we handle.
    let raw = unsafe { program_invocation_short_name };
    let name = if raw.is_null() {
        String::new()
    } else {
        // SAFETY: a NUL-terminated string owned by glibc.
        unsafe { std::ffi::CStr::from_ptr(raw) }
            .to_string_lossy()
            .into_owned()
    };
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if clean.is_empty() {
        "unknown".into()
    } else {
        clean
    }
}

extern "C" fn at_exit() {
    flush_before_exit();
}

/// exit() and _exit(): write what is recorded, within a bounded time.
pub fn flush_before_exit() {
    if !is_active() || !is_owner_process() {
        return;
    }
    let Some(_busy) = Busy::enter() else { return };
    contain("exit", || {
        if let Some(recorder) = recorder() {
            recorder.flush_at_exit(EXIT_FLUSH_TIMEOUT);
        }
        if let Some(replayer) = REPLAYER.get() {
            replayer.at_exit();
        }
        koala_log::flush(Duration::from_millis(500));
    });
}

/// exec*(): the new program starts with a fresh library, so this image
/// writes what it recorded first, within the bound exit has. Open sessions
/// end here (as at exit: the new image cannot continue them). The replay
/// tables stay: the exec'd program may replay on with them.
pub fn flush_before_exec() {
    if !is_active() || !is_owner_process() {
        return;
    }
    let Some(_busy) = Busy::enter() else { return };
    contain("exec", || {
        if let Some(recorder) = recorder() {
            recorder.flush_before_exec(EXIT_FLUSH_TIMEOUT);
        }
        koala_log::flush(Duration::from_millis(500));
    });
}

#[inline]
pub fn is_active() -> bool {
    ACTIVE.load(Ordering::Relaxed)
}

fn recorder() -> Option<&'static Recorder> {
    RECORDER.get().copied().filter(|r| !r.is_disabled())
}

fn replayer() -> Option<&'static Replayer> {
    REPLAYER.get().copied()
}

/// False in a vfork child (or a raw clone) sharing our memory. A syscall:
/// only for close/dup of sockets, never on the data path.
fn is_owner_process() -> bool {
    OWNER_PID.load(Ordering::Relaxed) == thread::current_pid()
}

/// Runs bookkeeping after a real call: errno is kept, and a panic disables
/// recording for good (logged) instead of unwinding into the host.
pub fn contain(what: &'static str, bookkeeping: impl FnOnce()) {
    if !koala_runtime::contain::contain(bookkeeping) {
        if let Some(recorder) = RECORDER.get() {
            recorder.disable();
        }
        koala_runtime::contain::contain(|| {
            tracing::error!(
                hook = what,
                "internal error: recording disabled, the host goes on"
            )
        });
    }
}

// ---- the guard -------------------------------------------------------------

/// A call on an observed connection by a host thread. Holding it marks the
/// thread busy, so libc calls made by the bookkeeping pass straight through.
pub struct Observed {
    _busy: Busy,
    kind: FdKind,
}

/// `Some` when the bytes of this call on `fd` must be recorded: the library
/// is active, `fd` is an inbound or outbound TCP connection, and the thread
/// is a host thread not already inside the library. Files, pipes and other
/// sockets return after one relaxed load of the fd table.
#[inline]
pub fn observe(fd: i32) -> Option<Observed> {
    if !is_active() {
        return None;
    }
    match fdkind::get(fd) {
        kind @ (FdKind::Inbound | FdKind::Outbound) => {
            let busy = Busy::enter()?;
            if crate::tls::in_call() {
                // The host's TLS library moving ciphertext: the TLS hooks
                // record the plaintext instead.
                crate::tls::saw_fd(fd, kind);
                return None;
            }
            Some(Observed { _busy: busy, kind })
        }
        kind @ (FdKind::InboundTls | FdKind::OutboundTls) => {
            crate::tls::saw_fd(fd, kind);
            None
        }
        FdKind::RandomDevice => Busy::enter().map(|busy| Observed {
            _busy: busy,
            kind: FdKind::RandomDevice,
        }),
        FdKind::Unknown => {
            // First sight of this fd number: classify it once, outside any lock.
            let _busy = Busy::enter()?;
            fdkind::get_or_classify(fd);
            None
        }
        _ => None,
    }
}

/// What a call about to send on `fd` is, decided once before the real call.
pub enum Sending {
    /// Not observed: only the real call.
    Pass,
    /// A helper hint: consumed, never sent.
    Hint,
    /// Bytes on an observed connection, handed over after the real call.
    Observed(Observed),
}

impl Sending {
    pub fn observed(self) -> Option<Observed> {
        match self {
            Sending::Observed(observed) => Some(observed),
            _ => None,
        }
    }
}

/// Classifies a send on `fd` (to `destination`, when given). Files and
/// pipes return after one relaxed load. On an observed outbound connection
/// in replay mode, its shared slot is updated *before* the real call, so
/// the outbound server knows which replay the bytes belong to. Hints come
/// from host threads only: the library's own UDP sockets send for real.
#[inline]
pub fn sending(fd: i32, destination: *const libc::sockaddr, len: libc::socklen_t) -> Sending {
    if !is_active() {
        return Sending::Pass;
    }
    let kind = fdkind::get(fd);
    if matches!(kind, FdKind::InboundTls | FdKind::OutboundTls) {
        crate::tls::saw_fd(fd, kind);
        return Sending::Pass;
    }
    if !matches!(
        kind,
        FdKind::Inbound | FdKind::Outbound | FdKind::Udp | FdKind::Hint | FdKind::Unknown
    ) {
        return Sending::Pass;
    }
    let Some(busy) = Busy::enter() else {
        return Sending::Pass;
    };
    // First sight of this fd number: classify it once (never a connection).
    let kind = match kind {
        FdKind::Unknown => fdkind::get_or_classify(fd),
        kind => kind,
    };
    match kind {
        FdKind::Inbound | FdKind::Outbound if crate::tls::in_call() => {
            // Ciphertext of the host's TLS library (see `observe`).
            crate::tls::saw_fd(fd, kind);
            Sending::Pass
        }
        FdKind::Inbound | FdKind::Outbound => {
            if kind == FdKind::Outbound
                && let Some(replayer) = replayer()
            {
                contain("send", || replayer.before_send(fd, thread::current_tid()));
            }
            Sending::Observed(Observed { _busy: busy, kind })
        }
        FdKind::Udp | FdKind::Hint if is_hint(kind, destination, len) => Sending::Hint,
        _ => Sending::Pass,
    }
}

/// Which way bytes moved on an observed connection.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Way {
    /// The service read them.
    Received,
    /// The service wrote them.
    Sent,
}

impl Observed {
    /// The service moved `data` (the slices of its own buffers) on `fd`.
    pub fn moved(&self, fd: i32, way: Way, data: &[&[u8]]) {
        if self.kind == FdKind::RandomDevice {
            // Only `read` of the device is randomness drawn ([`Observed::drew`]);
            // the other reads of it (readv) are not connection bytes either.
            return;
        }
        contain("bytes", || {
            let tid = thread::current_tid();
            if let Some(recorder) = recorder() {
                let now = recording_clock(self.kind, fd);
                match way {
                    Way::Received => recorder.received(fd, tid, Bytes(data), now),
                    Way::Sent => recorder.sent(fd, tid, Bytes(data), now),
                }
            }
            if let (FdKind::Inbound, Some(replayer)) = (self.kind, replayer()) {
                replayer.inbound_io(fd, way == Way::Sent, tid);
            }
        });
    }

    /// Whether this is a read of `/dev/urandom` or `/dev/random`.
    pub fn is_random_device(&self) -> bool {
        self.kind == FdKind::RandomDevice
    }

    /// A read of a random device returned `drawn`: as [`random_drawn`].
    pub fn drew(&self, drawn: &mut [u8]) {
        contain("random", || draw_random(drawn));
    }

    /// A read on `fd` returned end-of-file: on an outbound connection the
    /// dependency closed it (replay closes where the recording did).
    pub fn peer_closed(&self, fd: i32) {
        if self.kind != FdKind::Outbound {
            return;
        }
        contain("eof", || {
            if let Some(recorder) = recorder() {
                recorder.peer_closed(fd, clock::now_ns());
            }
        });
    }

    /// `sendfile` sent `count` bytes of `in_fd` starting at `offset` (or,
    /// if `None`, ending at its file position): when recording, read them
    /// back ourselves, up to KOALA_MAX_PAYLOAD_BYTES.
    pub fn sent_file(&self, fd: i32, in_fd: i32, offset: Option<i64>, count: usize) {
        contain("sendfile", || {
            let Some(recorder) = recorder() else {
                // Replay alone needs only the fact that the service wrote.
                self.moved(fd, Way::Sent, &[]);
                return;
            };
            let start = match offset {
                Some(start) => start,
                // SAFETY: lseek on the host's fd only reads its position.
                None => (unsafe { libc::lseek(in_fd, 0, libc::SEEK_CUR) }) - count as i64,
            };
            let mut bytes = vec![0u8; count.min(recorder.max_payload_bytes())];
            let mut filled = 0;
            while filled < bytes.len() {
                // SAFETY: reading into our own buffer; pread leaves the file position alone.
                let n = unsafe {
                    libc::pread(
                        in_fd,
                        bytes[filled..].as_mut_ptr().cast(),
                        bytes.len() - filled,
                        start + filled as i64,
                    )
                };
                if n <= 0 {
                    break;
                }
                filled += n as usize;
            }
            if filled < count {
                tracing::warn!(
                    fd,
                    in_fd,
                    count,
                    filled,
                    "sendfile: could not read back the bytes sent"
                );
            }
            bytes.truncate(filled);
            self.moved(fd, Way::Sent, &[&bytes]);
        });
    }
}

/// For calls that create, duplicate or close fds: `Some` on host threads
/// when the library is active.
#[inline]
pub fn enter() -> Option<Busy> {
    if is_active() { Busy::enter() } else { None }
}

// ---- helper hints ------------------------------------------------------------

/// Whether a send on a UDP socket of `kind` (to `destination`, when given)
/// is a helper hint: a datagram to 127.127.127.127:127, or any send on a
/// socket connected there.
fn is_hint(kind: FdKind, destination: *const libc::sockaddr, len: libc::socklen_t) -> bool {
    // SAFETY: the caller passes `len` readable bytes at `destination` (or null).
    let to = unsafe { sockaddr::from_raw(destination, len) };
    match kind {
        FdKind::Hint => to.is_none_or(|to| to == koala_hints::HINT_ADDRESS),
        _ => to == Some(koala_hints::HINT_ADDRESS),
    }
}

/// Applies a hint datagram sent with `flags`. Bad hints are logged and
/// ignored; nothing reaches the network either way.
pub fn consume_hint(payload: &[u8], flags: i32) {
    let Some(_busy) = Busy::enter() else { return };
    contain("hint", || match koala_hints::parse(payload, flags) {
        Ok(hint) => apply_hint(hint),
        Err(error) => log_bad_hint(&error),
    });
}

fn apply_hint(hint: koala_hints::Hint) {
    let tid = thread::current_tid();
    tracing::debug!(?hint, tid, "helper hint");
    match hint {
        koala_hints::Hint::Delegate { virtual_id } => {
            // A service instrumented by hand: its hints win over the
            // automatic context helpers from now on.
            HAND_HINTS.store(true, Ordering::Relaxed);
            if let Some(recorder) = recorder() {
                recorder.delegate(tid, virtual_id);
            }
            if let Some(replayer) = replayer() {
                replayer.delegate(virtual_id);
            }
        }
        koala_hints::Hint::Shutdown { virtual_id } => {
            if let Some(recorder) = recorder() {
                recorder.end_session_by_hint(tid, virtual_id);
            }
            if let Some(replayer) = replayer() {
                replayer.end_virtual_thread(virtual_id);
            }
        }
    }
}

/// Set once the service sent a `set-delegated-from-thread-id` hint of its
/// own: [`set_context`] then steps aside, so hand-written hints are never
/// overridden by the automatic helpers.
static HAND_HINTS: AtomicBool = AtomicBool::new(false);

/// The helpers' in-process channel (`koala_context_set`): the calling
/// thread now works for virtual thread `virtual_id`, as with a delegate
/// hint, without the datagram. 0: applied; 1: ignored (the service's own
/// hints take precedence); -1: the library is not active.
pub fn set_context(virtual_id: u64) -> i32 {
    if !is_active() {
        return -1;
    }
    if HAND_HINTS.load(Ordering::Relaxed) {
        return 1;
    }
    let Some(_busy) = Busy::enter() else { return 1 };
    contain("context", || {
        let tid = thread::current_tid();
        if let Some(recorder) = recorder() {
            recorder.delegate(tid, virtual_id);
        }
        if let Some(replayer) = replayer() {
            replayer.delegate(virtual_id);
        }
    });
    0
}

/// Logs the first bad hints, then one in a thousand: a service sending
/// garbage in a loop must not flood the log.
fn log_bad_hint(error: &koala_hints::HintError) {
    static BAD_HINTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let count = BAD_HINTS.fetch_add(1, Ordering::Relaxed) + 1;
    if count <= 10 || count.is_multiple_of(1000) {
        tracing::warn!(bad_hints_so_far = count, "helper hint ignored: {error}");
    }
}

/// connect() on a UDP socket: connected to the hint address, every later
/// send on it is a hint.
pub fn udp_connected(fd: i32, destination: SocketAddr) {
    let kind = if destination == koala_hints::HINT_ADDRESS {
        FdKind::Hint
    } else {
        FdKind::Udp
    };
    fdkind::set(fd, kind);
}

// ---- fd lifecycle ------------------------------------------------------------

/// A new fd number from socket(), open() and friends. The library's own
/// threads get theirs moved high and close-on-exec; for the host, whatever
/// the number carried before is forgotten (its close may have been missed).
/// Returns the fd the caller must see.
pub fn fd_created(fd: i32, kind: FdKind) -> i32 {
    if fd < 0 || !is_active() {
        return fd;
    }
    if is_internal_thread() {
        let errno = SavedErrno::save();
        let high = fds::relocate_high(fd);
        fdkind::set(high, FdKind::Library);
        errno.restore();
        return high;
    }
    let Some(_busy) = Busy::enter() else {
        return fd;
    };
    forget_stale(fd);
    fdkind::set(fd, kind);
    fd
}

/// Replay state of an fd number that is being handed out again.
fn forget_replay_state(fd: i32) {
    if let Some(replayer) = replayer() {
        replayer.forget(fd);
    }
}

/// If `fd` still looks like a connection, its close was missed: end it.
fn forget_stale(fd: i32) {
    forget_replay_state(fd);
    if fdkind::get(fd).is_connection() {
        contain("stale fd", || {
            if let Some(recorder) = recorder() {
                recorder.fd_closed(fd);
            }
        });
    }
}

/// accept()/accept4() returned `fd`. `addr` is what the caller asked the
/// kernel to fill in (may be null).
pub fn accepted(fd: i32, addr: *const libc::sockaddr, addr_len: *const libc::socklen_t) -> i32 {
    if fd < 0 || !is_active() {
        return fd;
    }
    if is_internal_thread() {
        return fd_created(fd, FdKind::Library);
    }
    let Some(_busy) = Busy::enter() else {
        return fd;
    };
    contain("accept", || {
        forget_stale(fd);
        let Some(local) = sockaddr::local_addr(fd) else {
            fdkind::set(fd, FdKind::OtherSocket); // unix sockets and the like
            return;
        };
        // SAFETY: the kernel just filled addr/addr_len for this connection.
        let peer = unsafe {
            if addr.is_null() || addr_len.is_null() {
                None
            } else {
                sockaddr::from_raw(addr, *addr_len)
            }
        };
        let Some(peer) = peer.or_else(|| sockaddr::peer_addr(fd)) else {
            fdkind::set(fd, FdKind::OtherSocket);
            return;
        };
        fdkind::set(fd, FdKind::Inbound);
        connection_opened(fd, Direction::Inbound, local, peer);
        if let Some(replayer) = replayer() {
            replayer.accepted(fd, peer);
        }
    });
    fd
}

/// In replay mode, where connect() on `fd` to `destination` must go
/// instead (the outbound server), as a raw address for the real call.
pub fn redirect(
    fd: i32,
    destination: SocketAddr,
) -> Option<(libc::sockaddr_storage, libc::socklen_t)> {
    let replayer = replayer()?;
    let mut target = None;
    contain("redirect", || {
        target = replayer.redirect(fd, destination);
    });
    target.map(|addr| sockaddr::to_raw(&addr))
}

/// Whether connect() on `fd` started a TCP connection worth recording.
pub fn connect_started(result: i32) -> bool {
    result == 0 || koala_runtime::errno::get() == libc::EINPROGRESS
}

/// connect() on a TCP socket succeeded or is in progress.
pub fn connected(fd: i32, peer: SocketAddr) {
    contain("connect", || {
        let Some(local) = sockaddr::local_addr(fd) else {
            return;
        };
        fdkind::set(fd, FdKind::Outbound);
        crate::tls::connected(fd, peer);
        if let Some(replayer) = replayer() {
            replayer.connected(fd, peer, thread::current_tid());
        }
        connection_opened(fd, Direction::Outbound, local, peer);
    });
}

fn connection_opened(fd: i32, direction: Direction, local: SocketAddr, peer: SocketAddr) {
    if let Some(recorder) = recorder() {
        recorder.connection_opened(
            fd,
            direction,
            local,
            peer,
            thread::current_tid(),
            clock::now_ns(),
        );
    }
}

/// Before close(fd) (or syscall(SYS_close)): once the kernel frees the
/// number another thread may get it, so the state goes first.
pub fn closing(fd: i32) {
    if !is_active() {
        return;
    }
    let kind = fdkind::get(fd);
    if matches!(kind, FdKind::Unknown | FdKind::NotSocket | FdKind::Library) {
        fdkind::set(fd, FdKind::Unknown);
        return;
    }
    let Some(_busy) = Busy::enter() else { return };
    if !is_owner_process() {
        return;
    }
    fdkind::set(fd, FdKind::Unknown);
    forget_replay_state(fd);
    if kind.is_connection() {
        contain("close", || {
            if let Some(recorder) = recorder() {
                recorder.fd_closed(fd);
            }
        });
    }
}

/// dup()/dup2()/dup3()/fcntl(F_DUPFD*) made `new_fd` a copy of `old_fd`.
pub fn duplicated(old_fd: i32, new_fd: i32) {
    if new_fd < 0 || old_fd == new_fd || !is_active() {
        return;
    }
    let kind = fdkind::get(old_fd);
    let replaced = fdkind::get(new_fd);
    let sockets_involved = |k: FdKind| !matches!(k, FdKind::Unknown | FdKind::NotSocket);
    if !sockets_involved(kind) && !sockets_involved(replaced) {
        fdkind::set(new_fd, kind);
        return;
    }
    let Some(_busy) = Busy::enter() else { return };
    if !is_owner_process() {
        return;
    }
    contain("dup", || {
        fdkind::set(new_fd, kind);
        if let Some(recorder) = recorder() {
            if kind.is_connection() {
                recorder.fd_duplicated(old_fd, new_fd);
            } else if replaced.is_connection() {
                recorder.fd_closed(new_fd);
            }
        }
    });
}

/// shutdown(fd, how) on an inbound connection ends its session when the
/// write side is shut.
pub fn shut_down(fd: i32, how: i32) {
    if how == libc::SHUT_RD || fdkind::get(fd) != FdKind::Inbound {
        return;
    }
    let Some(_busy) = enter() else { return };
    contain("shutdown", || {
        if let Some(recorder) = recorder() {
            recorder.write_side_shut(fd);
        }
    });
}

// ---- fork --------------------------------------------------------------------

/// State carried across the real fork(): the library's locks, held by the
/// forking thread so the child never inherits one held by a thread it
/// does not have, and released on both sides.
pub struct ForkState {
    recorder: Option<koala_recorder::recorder::ForkGuard>,
    replayer: Option<koala_replayer::attribution::ForkGuard>,
    parent_tid: u32,
}

pub fn before_fork() -> ForkState {
    ForkState {
        recorder: RECORDER.get().map(|r| r.prepare_fork()),
        replayer: replayer().map(|r| r.prepare_fork()),
        parent_tid: thread::current_tid(),
    }
}

pub fn after_fork(state: ForkState, pid: libc::pid_t) {
    let ForkState {
        recorder: guard,
        replayer: _released_on_return,
        parent_tid,
    } = state;
    if pid != 0 {
        return;
    }
    contain("fork", || {
        thread::forget_cached_tid();
        let child_pid = thread::current_pid();
        OWNER_PID.store(child_pid, Ordering::Relaxed);
        koala_log::after_fork_in_child(child_pid);
        if let (Some(recorder), Some(guard)) = (RECORDER.get(), guard) {
            recorder.after_fork_in_child(guard, parent_tid, thread::current_tid(), child_pid);
        }
    });
}

// ---- the session's clock and randomness ---------------------------------------

/// What the calling thread sees of CLOCK_REALTIME when the real clock says
/// `real_ns`: its replayed session's clock, or `None` (the real one) for
/// the library's threads, threads working for no replay in flight, and
/// calls the library's bookkeeping makes.
pub fn session_realtime(real_ns: i64) -> Option<i64> {
    let _busy = Busy::enter()?;
    replayer()?;
    let replay = session_replay();
    if replay == 0 || real_ns < 0 {
        return None;
    }
    koala_replayer::determinism::realtime(replay, real_ns as u64).map(|ns| ns as i64)
}

/// A host thread drew random bytes (already in `drawn`): in replay, a
/// replayed session's threads get its recorded bytes back instead, as far
/// as they go; when recording, the bytes the service got are kept in the
/// thread's session.
pub fn random_drawn(drawn: &mut [u8]) {
    let Some(_busy) = Busy::enter() else { return };
    contain("random", || draw_random(drawn));
}

/// In replay, `drawn` becomes the next recorded bytes of the thread's
/// session; when recording, what it holds then is kept in the session.
fn draw_random(drawn: &mut [u8]) {
    if let Some(_replayer) = replayer() {
        let replay = session_replay();
        koala_replayer::determinism::draw(replay, drawn);
    }
    if let Some(recorder) = recorder() {
        recorder.random_drawn(thread::current_tid(), drawn);
    }
}

/// A file was opened as `fd` (the real `open` returned it): a file from now
/// on, whatever the number was, and `/dev/urandom` or `/dev/random` marked
/// so that its reads count as randomness drawn. One relaxed load when the
/// library is passive.
///
/// # Safety
/// `path` is null or the caller's NUL-terminated path.
pub unsafe fn file_opened(fd: i32, path: *const libc::c_char) -> i32 {
    if fd < 0 || !is_active() {
        return fd;
    }
    // SAFETY: per the caller.
    let random = !path.is_null()
        && fdkind::is_random_device(unsafe { std::ffi::CStr::from_ptr(path) }.to_bytes());
    let kind = if random {
        FdKind::RandomDevice
    } else {
        FdKind::NotSocket
    };
    fd_created(fd, kind)
}

/// The time stamped on bytes recorded on `fd`: with `KOALA_MODE=record,replay`,
/// a replayed request's own clock (what the service saw), so that the session
/// recorded then replays with that clock again; otherwise the real clock.
fn recording_clock(kind: FdKind, fd: i32) -> u64 {
    let now = clock::now_ns();
    if kind != FdKind::Inbound || !koala_replayer::determinism::clock_on() {
        return now;
    }
    replayer()
        .map(|replayer| replayer.replay_of_inbound(fd))
        .and_then(|replay| koala_replayer::determinism::realtime(replay, now))
        .unwrap_or(now)
}

// ---- TLS (crate::tls, hooks/tls.rs) ----------------------------------------------

/// Plaintext moved by a TLS call on connection `fd`, observed as the socket
/// hooks observe a plain connection (its kind without the TLS mark).
pub fn observe_tls(fd: i32) -> Option<Observed> {
    if !is_active() {
        return None;
    }
    match fdkind::get(fd) {
        kind @ (FdKind::InboundTls | FdKind::OutboundTls) => Busy::enter().map(|busy| Observed {
            _busy: busy,
            kind: kind.without_tls(),
        }),
        _ => None,
    }
}

/// Connection `fd` (of `kind`) carries TLS from now on: the socket hooks
/// pass its ciphertext through, the TLS hooks record its plaintext.
pub fn tie_tls(fd: i32, kind: FdKind) {
    if !kind.is_connection() {
        return;
    }
    fdkind::set(fd, kind.with_tls());
    contain("tls", || {
        if let Some(recorder) = recorder() {
            recorder.tls_plaintext(fd);
        }
    });
}

/// In replay: whether `fd` is an outbound connection the replayer
/// redirected to its outbound server (never a real dependency).
pub fn tls_redirected(fd: i32) -> bool {
    replayer().is_some_and(|r| r.is_redirected(fd))
}

/// In replay: whether inbound `fd` carries a request the replayer's inbound
/// server injected (not a real client).
pub fn tls_injected(fd: i32) -> bool {
    replayer().is_some_and(|r| r.is_injected(fd))
}

/// In replay: tell the outbound server which replay the plaintext about to
/// be written on redirected `fd` belongs to (what `sending` does for plain
/// connections).
pub fn tls_before_send(fd: i32) {
    if let Some(replayer) = replayer() {
        contain("tls send", || {
            replayer.before_send(fd, thread::current_tid())
        });
    }
}

/// The replay in flight the calling thread works for (0: none): the first
/// of the attribution's candidates still in flight.
fn session_replay() -> u64 {
    koala_replayer::attribution::replay_candidates(thread::current_tid())
        .into_iter()
        .find(|&replay| koala_replayer::determinism::in_flight(replay))
        .unwrap_or(0)
}
