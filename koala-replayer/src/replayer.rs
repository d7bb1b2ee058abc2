//! The process-wide replayer the preload hooks talk to.
//!
//! The first process that loads the library in replay mode creates the
//! shared tables and starts the inbound and outbound servers on internal
//! threads. Forked children share the tables through the mapping and reach
//! the servers over loopback; `exec`'d descendants find the tables through
//! `KOALA_REPLAY_TABLE` and do not start servers of their own.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::os::fd::{FromRawFd, IntoRawFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use koala_config::{Bypass, Config, Secret};
use koala_runtime::{FdKind, fdkind, fds};

use crate::attribution;
use crate::matching::MatchConfig;
use crate::registry::Registry;
use crate::table::SharedTables;
use crate::{inbound, outbound};

/// The variable through which `exec`'d descendants find the shared tables.
pub const TABLE_VARIABLE: &str = "KOALA_REPLAY_TABLE";

pub struct Replayer {
    /// `None` only when they could not be created; then `refusing` is set.
    tables: Option<SharedTables>,
    /// The servers' state: only in the process that runs them.
    registry: Option<Registry>,
    pub inbound_addr: SocketAddr,
    pub outbound_addr: SocketAddr,
    pub sut_addr: SocketAddr,
    bypass: Vec<Bypass>,
    pub idle: Duration,
    pub timeout: Duration,
    pub started: Instant,
    /// The replay API's token (`KOALA_REPLAY_TOKEN`); none: every request
    /// is refused.
    pub(crate) token: Option<Secret>,
    /// API connections open at once (`KOALA_REPLAY_MAX_CONNECTIONS`).
    pub(crate) max_connections: usize,
    /// The largest API request body (`KOALA_REPLAY_MAX_BODY_BYTES`).
    pub(crate) max_body_bytes: usize,
    /// What `POST /v1/background` may retain (`KOALA_REPLAY_MAX_BACKGROUND_BYTES`).
    pub(crate) max_background_bytes: usize,
    /// The tables or the servers could not start: redirected connects are
    /// refused, never sent to the real dependencies.
    refusing: AtomicBool,
}

impl Replayer {
    /// Joins an ancestor's tables, or creates them and starts the servers.
    /// Must run before the host starts threads (the library's constructor):
    /// it may set `KOALA_REPLAY_TABLE` in the environment. Never fails:
    /// whatever cannot start is logged and leaves a replayer that refuses
    /// every redirected connect (replay fails closed).
    pub fn start(config: &Config) -> &'static Replayer {
        let make = |tables, registry| Replayer {
            tables,
            registry,
            inbound_addr: config.inbound_addr,
            outbound_addr: config.outbound_addr,
            sut_addr: config.sut_addr,
            bypass: config.outbound_bypass.clone(),
            idle: config.replay_idle,
            timeout: config.replay_timeout,
            started: Instant::now(),
            token: config.replay_token.clone(),
            max_connections: config.replay_max_connections,
            max_body_bytes: config.replay_max_body_bytes,
            max_background_bytes: config.replay_max_background_bytes,
            refusing: AtomicBool::new(false),
        };
        if let Some(path) = std::env::var_os(TABLE_VARIABLE) {
            match SharedTables::open(Path::new(&path)) {
                Ok(tables) if serves_elsewhere(tables.server_pid()) => {
                    tracing::debug!(table = ?path, server = tables.server_pid(), "replay: joined the servers of an ancestor process");
                    return Box::leak(Box::new(make(Some(tables), None)));
                }
                Ok(_) => {
                    // This process ran the servers before it exec'd (a launcher
                    // script, a shim), or their process is gone: start anew,
                    // and remove the table replaced, so that none is left
                    // behind per exec.
                    let _ = std::fs::remove_file(&path);
                    tracing::debug!(table = ?path, "replay: the servers of {TABLE_VARIABLE} are gone, starting new ones");
                }
                Err(error) => {
                    tracing::warn!(table = ?path, %error, "replay: stale {TABLE_VARIABLE}, starting servers")
                }
            }
        }
        let refusing = |tables, error: &dyn std::fmt::Display| -> &'static Replayer {
            tracing::error!(%error, "replay servers not started: outbound connections will be refused");
            let replayer = make(tables, None);
            replayer.refusing.store(true, Ordering::Relaxed);
            Box::leak(Box::new(replayer))
        };
        // Before the host runs: the clock slots are shared with forked workers.
        crate::determinism::init(config.replay_time);
        let tables = match SharedTables::create() {
            Ok(tables) => tables,
            Err(error) => {
                return refusing(None, &format!("cannot create the replay tables: {error}"));
            }
        };
        tables.set_server_pid(std::process::id());
        if let Some(path) = tables.path() {
            // SAFETY: called from the library's constructor, before the
            // host's main: no other thread reads the environment yet.
            unsafe { std::env::set_var(TABLE_VARIABLE, path) };
        }
        let listen = |addr: SocketAddr, what: &str| {
            TcpListener::bind(addr)
                .map(library_fd)
                .map_err(|e| format!("cannot listen on {addr} for the {what} server: {e}"))
        };
        let listeners = listen(config.inbound_addr, "inbound")
            .and_then(|inbound| Ok((inbound, listen(config.outbound_addr, "outbound")?)));
        let (inbound_listener, outbound_listener) = match listeners {
            Ok(listeners) => listeners,
            Err(error) => return refusing(Some(tables), &error),
        };
        let registry =
            Registry::new(MatchConfig::default(), config.on_miss).with_redactor(redactor(config));
        if let Some(path) = &config.replay_background {
            match inbound::load_background_files(path) {
                Ok(records) => {
                    let background = registry.add_background(&records);
                    tracing::info!(
                        background,
                        setup_from_sessions = records.len() - background,
                        path = %path.display(),
                        "replay: background records and connection set-up loaded"
                    );
                }
                Err(error) => {
                    tracing::error!(path = %path.display(), %error, "KOALA_REPLAY_BACKGROUND cannot be read")
                }
            }
        }
        let replayer: &'static Replayer = Box::leak(Box::new(make(Some(tables), Some(registry))));
        let inbound = koala_runtime::thread::spawn_internal("koala-inbound", move || {
            inbound::run(inbound_listener, replayer)
        });
        let outbound = koala_runtime::thread::spawn_internal("koala-outbound", move || {
            outbound::run(outbound_listener, replayer)
        });
        if let Err(error) = inbound.and(outbound) {
            tracing::error!(%error, "cannot start the replay servers' threads: outbound connections will be refused");
            replayer.refusing.store(true, Ordering::Relaxed);
        }
        tracing::info!(inbound = %config.inbound_addr, outbound = %config.outbound_addr, sut = %config.sut_addr, "replay servers started");
        for (what, addr) in [
            ("inbound", config.inbound_addr),
            ("outbound", config.outbound_addr),
        ] {
            if !addr.ip().is_loopback() {
                tracing::warn!(%addr, "replay: the {what} server listens on a non-loopback address: other machines can reach it (the API needs its token; the outbound server answers only the service's redirected connections)");
            }
        }
        if config.replay_token.is_none() {
            tracing::warn!(
                "replay: KOALA_REPLAY_TOKEN is not set: the replay API refuses every request (401); koala replay -- CMD sets it"
            );
        }
        replayer
    }

    /// The servers' state. Only the server threads call this, and they
    /// exist only where the registry does.
    pub(crate) fn registry(&self) -> &Registry {
        self.registry
            .as_ref()
            .expect("server threads run only where the registry exists")
    }

    /// The shared tables. Only the server threads call this, and they run
    /// only where the tables were created.
    pub(crate) fn server_tables(&self) -> &SharedTables {
        self.tables
            .as_ref()
            .expect("server threads run only where the tables exist")
    }

    /// At exit of the process that created the tables: their file goes
    /// (mappings stay valid). Forked children share the memory, not the
    /// duty: their exit leaves the file to the descendants still exec'ing.
    pub fn at_exit(&self) {
        if let Some(tables) = &self.tables
            && tables.server_pid() == std::process::id()
        {
            tables.remove_file();
        }
    }

    /// Held across `fork` by the forking thread, so the child never
    /// inherits the virtual-thread lock held by a thread it does not have.
    pub fn prepare_fork(&self) -> attribution::ForkGuard {
        attribution::lock_for_fork()
    }

    // ---- events from the hooks ------------------------------------------

    /// `fd` was accepted from `peer`: a replayed request if the inbound
    /// server tagged that source port (looked up at the first read).
    pub fn accepted(&self, fd: i32, peer: SocketAddr) {
        attribution::accepted(fd, peer.port());
    }

    /// The calling thread read (`wrote`: wrote) inbound connection `fd`.
    pub fn inbound_io(&self, fd: i32, wrote: bool, tid: u32) {
        let Some(tables) = &self.tables else { return };
        let replay = attribution::replay_of(fd, |port| tables.inbound(port));
        attribution::inbound_io(replay, wrote, tid);
        if replay != 0 && !wrote {
            // The replayed session's clock starts where it started when recorded.
            crate::determinism::request_read(replay, koala_runtime::clock::now_ns());
        }
    }

    /// The replay inbound connection `fd` carries (0: none).
    pub fn replay_of_inbound(&self, fd: i32) -> u64 {
        let Some(tables) = &self.tables else { return 0 };
        attribution::replay_of(fd, |port| tables.inbound(port))
    }

    /// Before the service sends on outbound `fd`: tell the outbound server
    /// which replay the bytes belong to.
    pub fn before_send(&self, fd: i32, tid: u32) {
        if let (Some(port), Some(tables)) = (attribution::slot_of(fd), &self.tables) {
            tables.set_outbound_replay(port, attribution::current(tid));
        }
    }

    /// The service connects `fd` to `destination`: where to connect instead,
    /// or `None` to leave it alone (bypassed, or the library's own servers).
    ///
    /// The target is the outbound server; the connection's shared slot is
    /// written as soon as connect() assigned its local port
    /// ([`Replayer::connected`]), before the service can send. (Binding an
    /// ephemeral port first would tell the port earlier, but bind cannot
    /// reuse ports in TIME_WAIT: services that dial per call would run out.)
    /// Replay fails closed: when the outbound server is not running or
    /// cannot be reached from this socket's family, the connect goes to a
    /// port that refuses it — never to the real dependency.
    pub fn redirect(&self, fd: i32, destination: SocketAddr) -> Option<SocketAddr> {
        if destination == self.outbound_addr
            || destination == self.inbound_addr
            || self.bypass.iter().any(|b| b.matches(&destination))
        {
            return None;
        }
        let refuse = SocketAddr::new(
            if destination.is_ipv4() {
                IpAddr::V4(Ipv4Addr::LOCALHOST)
            } else {
                IpAddr::V6(Ipv6Addr::LOCALHOST)
            },
            0,
        );
        if self.refusing.load(Ordering::Relaxed) {
            return Some(refuse);
        }
        let target = match (destination.is_ipv4(), self.outbound_addr.ip()) {
            (true, IpAddr::V4(_)) | (false, IpAddr::V6(_)) => self.outbound_addr,
            (false, IpAddr::V4(ip)) => {
                SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), self.outbound_addr.port())
            }
            (true, IpAddr::V6(_)) => {
                // Every connect of the service would say it again: once at
                // ERROR, then counted at DEBUG.
                static REFUSED: AtomicU64 = AtomicU64::new(0);
                let refused = REFUSED.fetch_add(1, Ordering::Relaxed) + 1;
                if refused == 1 {
                    tracing::error!(%destination, outbound = %self.outbound_addr, "replay: an IPv4 socket cannot reach an IPv6 outbound server; connect refused (further ones are logged at DEBUG)");
                } else {
                    tracing::debug!(%destination, refused, "replay: IPv4 connect refused (IPv6 outbound server)");
                }
                return Some(refuse);
            }
        };
        attribution::redirected(fd, None);
        Some(target)
    }

    /// connect() on a redirected `fd` started: write its slot now that its
    /// local port is known, before the service can send anything.
    pub fn connected(&self, fd: i32, destination: SocketAddr, tid: u32) {
        if !attribution::slot_pending(fd) {
            return;
        }
        let port = koala_runtime::sockaddr::local_addr(fd).map(|a| a.port());
        if let (Some(port), Some(tables)) = (port.filter(|&p| p != 0), &self.tables) {
            tables.set_outbound(port, attribution::current(tid), destination);
            attribution::redirected(fd, Some(port));
        }
    }

    /// `fd` was closed, or its number is handed out again. A redirected
    /// connection's slot is cleared, so an empty slot means "not written
    /// yet" to the outbound server.
    pub fn forget(&self, fd: i32) {
        if let (Some(port), Some(tables)) = (attribution::slot_of(fd), &self.tables) {
            tables.clear_outbound(port);
        }
        attribution::forget(fd);
    }

    /// Whether inbound `fd` carries a request the inbound server injected
    /// (its TLS calls are then answered in plaintext: see docs/tls.md).
    pub fn is_injected(&self, fd: i32) -> bool {
        let Some(tables) = &self.tables else {
            return false;
        };
        attribution::replay_of(fd, |port| tables.inbound(port)) != 0
    }

    /// Whether `fd` was redirected to the outbound server (its TLS calls
    /// are then answered in plaintext: see docs/tls.md).
    pub fn is_redirected(&self, fd: i32) -> bool {
        attribution::slot_of(fd).is_some() || attribution::slot_pending(fd)
    }

    pub fn delegate(&self, virtual_id: u64) {
        attribution::delegate(virtual_id);
    }

    pub fn end_virtual_thread(&self, virtual_id: Option<u64>) {
        attribution::end(virtual_id);
    }
}

/// Whether another, living process runs the servers of a table. After
/// `exec` the pid stays the same but the servers' threads are gone.
fn serves_elsewhere(server_pid: u32) -> bool {
    if server_pid == 0 || server_pid == std::process::id() {
        return false;
    }
    // SAFETY: signal 0 only checks that the process exists.
    (unsafe { libc::kill(server_pid as libc::pid_t, 0) }) == 0
        || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Moves a listener the library created on a host thread to a high,
/// close-on-exec fd marked as the library's own.
fn library_fd<T: IntoRawFd + FromRawFd>(socket: T) -> T {
    let fd = fds::relocate_high(socket.into_raw_fd());
    fdkind::set(fd, FdKind::Library);
    // SAFETY: relocate_high returns an fd we own.
    unsafe { T::from_raw_fd(fd) }
}

/// Redacts what the service sends as the recording was redacted: the
/// recording's key (`KOALA_REDACT_KEY_FILE`) and rules (`KOALA_REDACT`; `off`
/// at replay still redacts what the recording did by default). No key file
/// named: requests are matched as they are.
fn redactor(config: &Config) -> Option<koala_redact::Redactor> {
    let path = config.redact_key_file.as_deref()?;
    match koala_redact::key::read(path) {
        Ok(key) => Some(koala_redact::Redactor::new(
            config.redact.clone().unwrap_or_default(),
            key,
        )),
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "KOALA_REDACT_KEY_FILE cannot be read: requests carrying secrets will not match their recorded calls");
            None
        }
    }
}
