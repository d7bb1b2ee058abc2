//! The shipping loop: look at the files, publish what is new and complete,
//! save progress, wait, again.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use koala_session::session_files;
use koala_ship::follow::{self, State};
use koala_ship::jetstream::{self, StreamConfig};
use koala_ship::nats::Options;
use koala_ship::sink::{self, JetStreamSink, Published, Record, RecordKind, Sink};
use koala_ship::url::{NatsUrl, check_stream_name};

use super::{ShipArgs, exit};

/// Bytes of a file read per look.
const CHUNK_BYTES: usize = 4 << 20;
/// Back-off between attempts when the server is away.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// With --once: failed rounds in a row before giving up.
const ONCE_ATTEMPTS: u32 = 3;
/// The progress line is redrawn at most this often.
const REDRAW: Duration = Duration::from_millis(500);

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn catch_signals() {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic; the struct is ours.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as *const () as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}

fn stopped() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Sleeps `duration`, waking early on SIGINT/SIGTERM.
fn pause(duration: Duration) {
    let until = Instant::now() + duration;
    while !stopped() {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

/// This machine's host name.
fn hostname() -> String {
    let mut buffer = [0u8; 256];
    // SAFETY: the buffer is ours and its length is given.
    let ok = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) } == 0;
    let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
    if ok && end > 0 {
        String::from_utf8_lossy(&buffer[..end]).into_owned()
    } else {
        "localhost".into()
    }
}

/// Counts for the progress line and the summary.
#[derive(Default)]
struct Counts {
    shipped: u64,
    shipped_bytes: u64,
    duplicates: u64,
    bad: u64,
    too_large: u64,
    deleted: u64,
    /// Complete bytes not shipped yet, torn last lines, in files.
    waiting_bytes: u64,
    torn: u64,
    waiting_files: u64,
    /// When each file with waiting lines was first seen waiting.
    waiting_since: HashMap<String, Instant>,
    last_error: Option<String>,
}

impl Counts {
    fn lag(&self) -> Duration {
        self.waiting_since
            .values()
            .map(Instant::elapsed)
            .max()
            .unwrap_or_default()
    }

    fn line(&self) -> String {
        let mut text = format!(
            "shipped {} line(s) ({})",
            self.shipped,
            megabytes(self.shipped_bytes)
        );
        if self.duplicates > 0 {
            text.push_str(&format!(", {} already in the stream", self.duplicates));
        }
        if self.bad + self.too_large > 0 {
            text.push_str(&format!(
                ", skipped {} bad and {} too large",
                self.bad, self.too_large
            ));
        }
        text.push_str(&format!(
            "; waiting {} in {} file(s)",
            megabytes(self.waiting_bytes),
            self.waiting_files
        ));
        if self.torn > 0 {
            text.push_str(&format!(", {} torn last line(s)", self.torn));
        }
        text.push_str(&format!("; lag {:.1} s", self.lag().as_secs_f64()));
        if self.deleted > 0 {
            text.push_str(&format!("; deleted {} shipped file(s)", self.deleted));
        }
        text
    }
}

fn megabytes(bytes: u64) -> String {
    match bytes {
        0..1_000 => format!("{bytes} B"),
        1_000..1_000_000 => format!("{:.1} kB", bytes as f64 / 1e3),
        _ => format!("{:.2} MB", bytes as f64 / 1e6),
    }
}

/// stderr: messages, and a progress line on a terminal.
struct Term {
    bar: bool,
    quiet: bool,
    shown: bool,
    last: Option<Instant>,
}

impl Term {
    fn message(&mut self, text: &str) {
        self.clear();
        eprintln!("koala ship: {text}");
    }

    fn info(&mut self, text: &str) {
        if !self.quiet {
            self.message(text);
        }
    }

    fn clear(&mut self) {
        if self.shown {
            eprint!("\r\x1b[K");
            self.shown = false;
        }
    }

    fn progress(&mut self, counts: &Counts) {
        if !self.bar || self.last.is_some_and(|at| at.elapsed() < REDRAW) {
            return;
        }
        self.last = Some(Instant::now());
        eprint!("\r\x1b[Kkoala ship: {}", counts.line());
        let _ = io::stderr().flush();
        self.shown = true;
    }
}

enum Failure {
    /// Try again later.
    Transient(String),
    /// Will not change: stop.
    Fatal(String),
}

/// Connects and checks (or creates) the stream.
fn open_sink(options: &Options, args: &ShipArgs) -> Result<JetStreamSink, Failure> {
    let classify = |e: jetstream::Error| {
        if e.is_transient() {
            Failure::Transient(e.to_string())
        } else {
            Failure::Fatal(e.to_string())
        }
    };
    let mut sink = JetStreamSink::connect(options.clone(), &args.stream).map_err(classify)?;
    let subjects = sink::stream_subjects(&args.stream);
    match sink.js.stream_info(&args.stream) {
        Ok(info) => {
            if !info.subjects.contains(&subjects) {
                return Err(Failure::Fatal(format!(
                    "the stream {} takes {:?}, not {subjects}: koala publishes to {subjects}",
                    args.stream, info.subjects
                )));
            }
        }
        Err(jetstream::Error::StreamNotFound(_)) if args.create => {
            let config = StreamConfig {
                name: args.stream.clone(),
                subjects: vec![subjects],
                replicas: args.replicas,
                retention: args.retention.clone(),
                max_age: Duration::from_secs(args.max_age),
                max_bytes: args.max_bytes,
                duplicate_window: Duration::from_secs(args.duplicate_window.max(1)),
            };
            sink.js.create_stream(&config).map_err(|e| {
                let cannot = |why| format!("cannot create the stream {}: {why}", args.stream);
                match classify(e) {
                    Failure::Fatal(why) => Failure::Fatal(cannot(why)),
                    Failure::Transient(why) => Failure::Transient(cannot(why)),
                }
            })?;
        }
        Err(jetstream::Error::StreamNotFound(_)) => {
            return Err(Failure::Fatal(format!(
                "the stream {} does not exist on {}: create it (koala ship --create [--replicas N], or `nats stream add` with subjects {subjects})",
                args.stream,
                options.url.display()
            )));
        }
        Err(e) => return Err(classify(e)),
    }
    Ok(sink)
}

/// A line, classified.
enum Line {
    Ship {
        kind: RecordKind,
        program: String,
        id: String,
    },
    Bad(String),
    Blank,
}

fn classify(bytes: &[u8]) -> Line {
    if bytes.is_empty() {
        return Line::Blank;
    }
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => return Line::Bad(format!("not valid UTF-8: {e}")),
    };
    match koala_session::read_session_line(text) {
        Ok(session) => Line::Ship {
            kind: if session.is_background() {
                RecordKind::Background
            } else {
                RecordKind::Session
            },
            program: session.program,
            id: session.id,
        },
        Err(message) => Line::Bad(message),
    }
}

/// Whether the process `pid` is gone.
fn gone(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let alive = unsafe { libc::kill(pid as libc::pid_t, 0) } == 0
        || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    !alive
}

pub fn run(args: &ShipArgs) -> Result<ExitCode, String> {
    let url = NatsUrl::parse(&args.to)?.with_env_auth();
    if let Some(stream) = &url.stream {
        return Err(format!(
            "--to names a stream ({stream}): give the servers in --to and the stream with --stream"
        ));
    }
    check_stream_name(&args.stream)?;
    let host = sink::token(&args.host.clone().unwrap_or_else(hostname));
    // Progress belongs to the stream (the servers of its cluster may change).
    let destination = format!("{}/{}", url.display(), args.stream);
    let state_key = args.stream.clone();
    let state_path = match &args.state {
        Some(path) => path.clone(),
        None => {
            let first = &args.dirs[0];
            let dir = if first.is_dir() {
                first.clone()
            } else {
                first
                    .parent()
                    .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
            };
            dir.join(format!(".koala-ship-{}.state", args.stream))
        }
    };
    for dir in &args.dirs {
        fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let mut state = State::load(&state_path, &state_key)?;
    catch_signals();
    let mut term = Term {
        bar: !args.quiet && unsafe { libc::isatty(libc::STDERR_FILENO) } == 1,
        quiet: args.quiet,
        shown: false,
        last: None,
    };
    let options = Options {
        url: url.clone(),
        name: format!("koala ship {host}"),
        timeout: args.timeout(),
    };

    let mut backoff = FIRST_BACKOFF;
    let mut sink = loop {
        match open_sink(&options, args) {
            Ok(sink) => break sink,
            Err(Failure::Fatal(message)) => return Err(message),
            Err(Failure::Transient(message)) if args.once => {
                return Err(format!(
                    "{message} (nothing shipped; the files are untouched)"
                ));
            }
            Err(Failure::Transient(message)) => {
                term.message(&format!(
                    "{message}; retrying in {:.1} s",
                    backoff.as_secs_f64()
                ));
                pause(backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
                if stopped() {
                    return Ok(exit(0));
                }
            }
        }
    };
    term.info(&format!(
        "shipping {} to {destination} as host {host} (progress in {})",
        args.dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        state_path.display()
    ));
    let max_record = sink.max_record();
    let mut counts = Counts::default();
    let mut failed_rounds = 0;
    backoff = FIRST_BACKOFF;
    let mut reported_error = None;
    loop {
        if stopped() {
            break;
        }
        let round = ship_round(
            args,
            &host,
            &mut sink,
            max_record,
            &mut state,
            &state_path,
            &mut counts,
            &mut term,
        );
        term.progress(&counts);
        match round {
            Ok(published) => {
                failed_rounds = 0;
                backoff = FIRST_BACKOFF;
                if reported_error.take().is_some() {
                    term.message(&format!(
                        "the stream takes lines again ({})",
                        sink.js.connection().server()
                    ));
                }
                if args.once && published == 0 {
                    break;
                }
                if stopped() {
                    break;
                }
                if published == 0 {
                    pause(Duration::from_millis(args.poll_ms.max(10)));
                }
            }
            Err(Failure::Fatal(message)) => {
                term.clear();
                return Err(message);
            }
            Err(Failure::Transient(message)) => {
                failed_rounds += 1;
                if reported_error.as_ref() != Some(&message) {
                    term.message(&format!(
                        "{message}: lines wait in their files; retrying with back-off"
                    ));
                    reported_error = Some(message.clone());
                }
                counts.last_error = Some(message);
                if args.once && failed_rounds >= ONCE_ATTEMPTS {
                    term.message(&counts.line());
                    return Ok(exit(1));
                }
                pause(backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
                if stopped() {
                    break;
                }
            }
        }
    }
    term.clear();
    if !args.quiet {
        term.message(&counts.line());
    }
    Ok(exit(0))
}

/// One look at every file: publishes what is new and complete. Returns the
/// number of lines done with (published or skipped).
#[allow(clippy::too_many_arguments)]
fn ship_round(
    args: &ShipArgs,
    host: &str,
    sink: &mut JetStreamSink,
    max_record: usize,
    state: &mut State,
    state_path: &Path,
    counts: &mut Counts,
    term: &mut Term,
) -> Result<u64, Failure> {
    let files = session_files(&args.dirs).map_err(|e| Failure::Transient(e.to_string()))?;
    let mut done = 0;
    let (mut waiting_bytes, mut torn, mut waiting_files) = (0, 0, 0);
    let mut seen = Vec::new();
    let mut failure = None;
    // Stopped (SIGINT/SIGTERM) before every file was looked at: the files
    // not looked at are not gone, their progress and counts stay.
    let mut interrupted = false;
    for path in files {
        if stopped() {
            interrupted = true;
            break;
        }
        let path = fs::canonicalize(&path).unwrap_or(path);
        let key = path.display().to_string();
        let Ok(mut file) = File::open(&path) else {
            continue; // deleted meanwhile
        };
        let Ok(meta) = file.metadata() else { continue };
        seen.push(key.clone());
        let mut offset = state.progress(&key, &meta).offset;
        let mut chunk_torn = 0;
        if failure.is_none() {
            while offset < meta.len() && !stopped() {
                let chunk = follow::read_lines(&mut file, offset, CHUNK_BYTES)
                    .map_err(|e| Failure::Transient(format!("cannot read {key}: {e}")))?;
                chunk_torn = chunk.torn;
                if chunk.lines.is_empty() {
                    break;
                }
                let before = offset;
                let result = ship_lines(
                    &chunk.lines,
                    &key,
                    host,
                    sink,
                    max_record,
                    args.batch as usize,
                    state,
                    state_path,
                    &mut offset,
                    counts,
                    term,
                );
                done += counts_done(before, offset, &chunk.lines);
                if let Err(e) = result {
                    failure = Some(e);
                    break;
                }
            }
        }
        let len = fs::metadata(&path).map_or(meta.len(), |m| m.len());
        let left = len.saturating_sub(offset);
        if left > 0 {
            waiting_files += 1;
            waiting_bytes += left;
            if chunk_torn > 0 && left == chunk_torn {
                // Only a line being written: no lag.
                torn += 1;
                counts.waiting_since.remove(&key);
            } else {
                counts
                    .waiting_since
                    .entry(key.clone())
                    .or_insert_with(Instant::now);
            }
        } else {
            counts.waiting_since.remove(&key);
            if args.delete_shipped
                && let Some(pid) = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(follow::writer_pid)
                && gone(pid)
            {
                match fs::remove_file(&path) {
                    Ok(()) => {
                        counts.deleted += 1;
                        state.files.remove(&key);
                        seen.pop();
                        save(state, state_path)?;
                    }
                    Err(e) => term.message(&format!("cannot delete {key}: {e}")),
                }
            }
        }
    }
    if !interrupted {
        // Files gone (deleted by someone) are forgotten.
        let before = state.files.len();
        state.files.retain(|key, _| seen.contains(key));
        counts.waiting_since.retain(|key, _| seen.contains(key));
        if state.files.len() != before && failure.is_none() {
            save(state, state_path)?;
        }
        counts.waiting_bytes = waiting_bytes;
        counts.torn = torn;
        counts.waiting_files = waiting_files;
    }
    match failure {
        Some(failure) => Err(failure),
        None => Ok(done),
    }
}

fn counts_done(before: u64, after: u64, lines: &[follow::Line]) -> u64 {
    lines
        .iter()
        .filter(|line| line.end > before && line.end <= after)
        .count() as u64
}

fn save(state: &State, path: &Path) -> Result<(), Failure> {
    state.save(path).map_err(Failure::Fatal)
}

/// Publishes the lines in batches; `offset` follows the last line done
/// with, and the state is saved after every batch.
#[allow(clippy::too_many_arguments)]
fn ship_lines(
    lines: &[follow::Line],
    key: &str,
    host: &str,
    sink: &mut JetStreamSink,
    max_record: usize,
    batch: usize,
    state: &mut State,
    state_path: &Path,
    offset: &mut u64,
    counts: &mut Counts,
    term: &mut Term,
) -> Result<(), Failure> {
    let classified: Vec<Line> = lines.iter().map(|l| classify(&l.bytes)).collect();
    let mut index = 0;
    while index < lines.len() {
        // Skipped lines before the next batch are done with at once.
        let mut records = Vec::new();
        let mut members = Vec::new();
        while index < lines.len() && records.len() < batch {
            let line = &lines[index];
            match &classified[index] {
                Line::Blank => {}
                Line::Bad(reason) => {
                    if records.is_empty() {
                        counts.bad += 1;
                        state.files.get_mut(key).expect("progress").bad += 1;
                        term.message(&format!(
                            "{key}: the line ending at byte {} is not a session, skipped: {reason}",
                            line.end
                        ));
                    } else {
                        break; // after the batch, in order
                    }
                }
                Line::Ship { .. } if max_record > 0 && line.bytes.len() > max_record => {
                    if records.is_empty() {
                        counts.too_large += 1;
                        term.message(&format!(
                            "{key}: the line ending at byte {} ({} bytes) is over the server's max_payload ({max_record} bytes usable), skipped: raise max_payload in nats-server's configuration",
                            line.end,
                            line.bytes.len()
                        ));
                    } else {
                        break;
                    }
                }
                Line::Ship { kind, program, id } => {
                    records.push((
                        *kind,
                        program.as_str(),
                        format!("{id}@{host}"),
                        line.bytes.as_slice(),
                    ));
                    members.push(index);
                }
            }
            if records.is_empty() {
                *offset = line.end;
            }
            index += 1;
        }
        if records.is_empty() {
            state.files.get_mut(key).expect("progress").offset = *offset;
            save(state, state_path)?;
            continue;
        }
        let batch_records: Vec<Record> = records
            .iter()
            .map(|(kind, program, id, line)| Record {
                kind: *kind,
                program,
                host,
                id,
                line,
            })
            .collect();
        let results = sink.publish(&batch_records);
        let mut failure = None;
        for (result, &member) in results.into_iter().zip(&members) {
            match result {
                Ok(published) => {
                    match published {
                        Published::Stored(_) => {
                            counts.shipped += 1;
                            counts.shipped_bytes += lines[member].bytes.len() as u64;
                            state.files.get_mut(key).expect("progress").shipped += 1;
                        }
                        Published::Duplicate(_) => counts.duplicates += 1,
                    }
                    // Blank lines between are done with too.
                    *offset = lines[member].end;
                }
                Err(e) => {
                    failure = Some(if e.transient {
                        Failure::Transient(e.message)
                    } else {
                        Failure::Fatal(e.message)
                    });
                    break;
                }
            }
        }
        state.files.get_mut(key).expect("progress").offset = *offset;
        save(state, state_path)?;
        if let Some(failure) = failure {
            return Err(failure);
        }
    }
    Ok(())
}
