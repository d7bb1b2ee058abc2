//! libkoala's logging.
//!
//! `tracing` events are formatted on the thread that logs and handed to a
//! bounded channel with `try_send` (a full channel drops the line); an
//! internal thread drains it into the configured target: stdout, stderr, or
//! a file rotated every hour (see [`file`]). So a host thread never writes
//! to a file or a terminal itself, and nothing is printed unless
//! `KOALA_LOG_FILE` asks for it.

mod file;
mod subscriber;

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use koala_config::{LogLevel, LogTarget};
use koala_runtime::done::Done;

/// Lines waiting for the drain thread; more are dropped.
const CAPACITY: usize = 4096;

enum Message {
    Line(Vec<u8>),
    /// Write everything before this, then set the flag.
    Flush(Arc<Done>),
}

/// Both ends of the current process's channel.
struct Channel {
    tx: Sender<Message>,
    rx: Receiver<Message>,
}

/// The channel of the current process, made at its first line (its buffer
/// is 4096 slots: a forked child that logs nothing allocates none).
/// Cleared (the old one leaked) in a forked child, whose drain thread is
/// gone: no lock on the log path.
static CHANNEL: AtomicPtr<Channel> = AtomicPtr::new(std::ptr::null_mut());
/// The drain thread starts with the first line: most processes a preload
/// library lands in (shells, tools) never log anything.
static DRAIN_STARTED: AtomicBool = AtomicBool::new(false);

struct Settings {
    target: LogTarget,
    /// For the line prefix, also after fork.
    program: String,
    /// `TMPDIR`, for the fallback of a log file that cannot be opened
    /// (`koala_config::fallback_log_path`): read from the environment at
    /// init, while the process is still single-threaded.
    tmpdir: Option<std::ffi::OsString>,
}

static SETTINGS: std::sync::OnceLock<Settings> = std::sync::OnceLock::new();

/// Installs the global subscriber and starts the drain thread. With
/// `LogTarget::Off` nothing is installed and logging costs nothing.
pub fn init(target: &LogTarget, level: LogLevel, program: &str, pid: u32) -> Result<(), String> {
    if *target == LogTarget::Off {
        return Ok(());
    }
    if SETTINGS
        .set(Settings {
            target: target.clone(),
            program: program.to_owned(),
            tmpdir: std::env::var_os("TMPDIR"),
        })
        .is_err()
    {
        return Err("logging is already initialised".into());
    }
    set_prefix(format!("koala[{program}:{pid}] "));
    let subscriber = subscriber::LineSubscriber::new(tracing_level(level), queue_line);
    tracing::subscriber::set_global_default(subscriber).map_err(|e| e.to_string())
}

/// In a forked child: the new pid in the line prefix; a new channel and
/// drain thread come with its first line, if it logs one.
pub fn after_fork_in_child(pid: u32) {
    let Some(settings) = SETTINGS.get() else {
        return;
    };
    set_prefix(format!("koala[{}:{pid}] ", settings.program));
    CHANNEL.store(std::ptr::null_mut(), Ordering::Release);
    DRAIN_STARTED.store(false, Ordering::Release);
}

/// Writes every line logged so far; waits at most `timeout`.
pub fn flush(timeout: Duration) {
    if !DRAIN_STARTED.load(Ordering::Acquire) {
        return;
    }
    let Some(channel) = current_channel() else {
        return;
    };
    // A futex wait, not a blocking receive: this runs in exit handlers,
    // after the thread's thread-locals (which blocking channel operations
    // use) are gone.
    let done = Arc::new(Done::default());
    if channel.tx.try_send(Message::Flush(done.clone())).is_ok() {
        done.wait_until(Instant::now() + timeout);
    }
}

fn tracing_level(level: LogLevel) -> tracing::Level {
    match level {
        LogLevel::Trace => tracing::Level::TRACE,
        LogLevel::Debug => tracing::Level::DEBUG,
        LogLevel::Info => tracing::Level::INFO,
        LogLevel::Warn => tracing::Level::WARN,
        LogLevel::Error => tracing::Level::ERROR,
    }
}

fn current_channel() -> Option<&'static Channel> {
    let ptr = CHANNEL.load(Ordering::Acquire);
    // SAFETY: pointers stored in CHANNEL come from Box::into_raw and are
    // never freed (a replaced one is leaked).
    unsafe { ptr.as_ref() }
}

/// The current channel, made if there is none yet.
fn channel() -> &'static Channel {
    if let Some(channel) = current_channel() {
        return channel;
    }
    let (tx, rx) = crossbeam_channel::bounded(CAPACITY);
    let fresh = Box::into_raw(Box::new(Channel { tx, rx }));
    match CHANNEL.compare_exchange(
        std::ptr::null_mut(),
        fresh,
        Ordering::AcqRel,
        Ordering::Acquire,
    ) {
        // SAFETY: just made, now published and never freed.
        Ok(_) => unsafe { &*fresh },
        Err(winner) => {
            // Another thread made one first: ours was never shared.
            // SAFETY: `fresh` came from Box::into_raw above and was not published.
            drop(unsafe { Box::from_raw(fresh) });
            // SAFETY: as in current_channel.
            unsafe { &*winner }
        }
    }
}

fn ensure_drain(channel: &'static Channel) {
    if DRAIN_STARTED.load(Ordering::Acquire) || DRAIN_STARTED.swap(true, Ordering::AcqRel) {
        return;
    }
    let rx = &channel.rx;
    // The output is opened on the drain thread, so its fd is the library's
    // own (moved high, close-on-exec). A log file that cannot be opened is
    // replaced by the per-user fallback; if that fails too, lines are
    // dropped: there is nowhere else to say so.
    let _ = koala_runtime::thread::spawn_internal("koala-log", move || {
        if let Ok(output) = open_output() {
            drain(rx.clone(), output);
        }
    });
}

enum Output {
    Fd(i32),
    File(file::LogFile),
}

fn open_output() -> io::Result<Output> {
    let settings = SETTINGS.get().expect("set before the drain starts");
    Ok(match &settings.target {
        LogTarget::Stdout => Output::Fd(1),
        LogTarget::Stderr => Output::Fd(2),
        LogTarget::Off => Output::Fd(-1),
        LogTarget::File(path) => match file::LogFile::open(path) {
            Ok(file) => Output::File(file),
            // The default log lives in the record directory: when that is
            // unusable, the one line saying so must go somewhere.
            Err(error) => {
                // The uid of now, not of init: a worker that switched
                // user (nginx's `user nobody;`) gets a directory of its own.
                // SAFETY: getuid cannot fail.
                let uid = unsafe { libc::getuid() };
                let fallback = koala_config::fallback_log_path(settings.tmpdir.as_deref(), uid);
                let mut file = open_fallback(&fallback)?;
                // Written at once, ahead of the lines already queued: an
                // exit flush may be queued too, and the process gone before
                // a line queued now would be drained.
                let line = subscriber::plain_line(
                    tracing::Level::ERROR,
                    &format!(
                        "cannot open the log file; logging here instead log={} error={error}",
                        path.display()
                    ),
                );
                file.write_line(format!("{}{line}", prefix()).as_bytes());
                Output::File(file)
            }
        },
    })
}

/// The fallback log, in a directory of the user's own (0700) under the
/// shared temp dir: one planted by another user, or a symlink, is refused.
fn open_fallback(path: &Path) -> io::Result<file::LogFile> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let dir = path.parent().unwrap_or(Path::new("/tmp"));
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Err(error) if error.kind() != io::ErrorKind::AlreadyExists => return Err(error),
        _ => {}
    }
    let metadata = std::fs::symlink_metadata(dir)?;
    // SAFETY: getuid cannot fail.
    let ours = metadata.is_dir()
        && metadata.uid() == unsafe { libc::getuid() }
        && metadata.mode() & 0o077 == 0;
    if !ours {
        return Err(io::Error::other("fallback log directory is not private"));
    }
    file::LogFile::open(path)
}

fn drain(rx: Receiver<Message>, mut output: Output) {
    while let Ok(message) = rx.recv() {
        match message {
            Message::Line(line) => output.write_line(&line),
            Message::Flush(done) => {
                output.flush();
                done.set();
            }
        }
    }
}

impl Output {
    fn write_line(&mut self, line: &[u8]) {
        match self {
            Output::Fd(fd) => write_all_fd(*fd, line),
            Output::File(file) => file.write_line(line),
        }
    }

    /// Lines are written unbuffered: nothing waits but in the channel.
    fn flush(&mut self) {}
}

/// Raw write(2): the host may have replaced fd 1/2, and std's handles
/// would take locks the host's own printing may hold.
fn write_all_fd(fd: i32, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: writing a valid buffer to an fd number.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n <= 0 {
            return;
        }
        bytes = &bytes[n as usize..];
    }
}

/// `koala[program:pid] `, swapped (old one leaked) in a forked child.
static PREFIX: AtomicPtr<String> = AtomicPtr::new(std::ptr::null_mut());

fn set_prefix(prefix: String) {
    PREFIX.store(Box::leak(Box::new(prefix)), Ordering::Release);
}

fn prefix() -> &'static str {
    let ptr = PREFIX.load(Ordering::Acquire);
    // SAFETY: leaked, never freed.
    unsafe { ptr.as_ref() }.map_or("koala ", String::as_str)
}

/// Queues a formatted line for the drain thread (dropped if the queue is full).
fn queue_line(line: String) {
    let mut bytes = Vec::with_capacity(prefix().len() + line.len());
    bytes.extend_from_slice(prefix().as_bytes());
    bytes.extend_from_slice(line.as_bytes());
    let channel = channel();
    if channel.tx.try_send(Message::Line(bytes)).is_ok() {
        ensure_drain(channel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flush_wakes_at_once_when_done_and_gives_up_at_its_deadline() {
        let done = Arc::new(Done::default());
        let setter = done.clone();
        let thread = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            setter.set();
        });
        let started = Instant::now();
        assert!(done.wait_until(started + Duration::from_secs(30)));
        assert!(started.elapsed() < Duration::from_secs(30));
        thread.join().unwrap();

        let never = Done::default();
        let deadline = Instant::now() + Duration::from_millis(30);
        assert!(!never.wait_until(deadline));
        assert!(Instant::now() >= deadline);
    }

    #[test]
    fn the_channel_is_made_at_first_use_and_again_after_a_fork() {
        let first = channel() as *const Channel;
        assert_eq!(channel() as *const Channel, first, "made once");
        CHANNEL.store(std::ptr::null_mut(), Ordering::Release);
        assert!(current_channel().is_none());
        assert_ne!(channel() as *const Channel, first, "a new one on demand");
    }
}
