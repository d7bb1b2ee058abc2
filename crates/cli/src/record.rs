//! `koala record -- CMD`: run a command under libkoala.so in record mode,
//! and say at the end what was recorded — or why nothing was.
//!
//! The summary is read from what the library leaves behind, nothing else:
//! the session files (the lines appended to `DIR/*.jsonl` during the run
//! are the sessions written: what can be read back is the truth), and the
//! library's log (the lines appended during the run, at the place the
//! library logs to, and at its per-user fallback): the `koala recording
//! summary` line of each process gives what no file can — sessions dropped
//! and lost — and its error lines say why sessions were lost. Before the
//! command starts, its ELF says whether LD_PRELOAD can see it at all.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, ExitStatus};
use std::sync::atomic::{AtomicI32, Ordering};

use koala_config::{Config, LogTarget};

pub fn run(dir: &Path, lib: Option<&Path>, command: &[String]) -> Result<ExitCode, String> {
    let lib = crate::library::locate(lib)?;
    let (program, args) = command.split_first().ok_or("no command given after --")?;
    let blind = resolve_program(program).and_then(|path| elf::inspect_program(&path));
    if let Some(blind) = &blind {
        eprintln!("koala record: warning: {program} {blind}; nothing will be recorded");
    }
    let logs = log_places(dir);
    let before = Lengths::take(dir, &logs);
    let mut command = Command::new(program);
    command
        .args(args)
        .env("LD_PRELOAD", crate::library::preload(&lib))
        .env("KOALA_MODE", "record")
        .env("KOALA_RECORD_TO", dir);
    // The automatic request context for asyncio and Node services.
    crate::helpers::load_into(&mut command);
    let status = run_forwarding_signals(&mut command)
        .map_err(|error| format!("cannot run {program}: {error}"))?;
    // Looked for again: a worker that switched user made its fallback
    // directory during the run.
    let logs = log_places(dir);
    let outcome = Outcome::read(dir, &logs, &before);
    let context = Context {
        dir,
        program,
        blind: blind.as_ref(),
        log_readable: logs.readable,
        dir_problem: dir_problem(dir),
    };
    eprint!("{}", render(&outcome, &context));
    Ok(exit_code(status))
}

/// The command's own exit code; 128 + the signal that killed it.
fn exit_code(status: ExitStatus) -> ExitCode {
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitCode::from(code as u8),
        (None, Some(signal)) => ExitCode::from((128 + signal) as u8),
        (None, None) => ExitCode::FAILURE,
    }
}

// ---- running the command ---------------------------------------------------

/// The command's pid while it runs, for the signal handler; 0 before.
static CHILD: AtomicI32 = AtomicI32::new(0);
/// A signal that came before the command had a pid.
static PENDING: AtomicI32 = AtomicI32::new(0);
const FORWARDED: [libc::c_int; 6] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

/// koala stays in front of the command (to print the summary), so what
/// `kill` sends to koala goes on to the command. A signal from the terminal
/// (^C: `SI_KERNEL`) reached the command too, as it is in the same process
/// group: it is not sent twice.
extern "C" fn forward(signal: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel hands a valid siginfo to an SA_SIGINFO handler.
    let from_terminal = !info.is_null() && unsafe { (*info).si_code } == libc::SI_KERNEL;
    if from_terminal {
        return;
    }
    match CHILD.load(Ordering::Acquire) {
        // SAFETY: kill is async-signal-safe.
        child if child > 0 => unsafe {
            libc::kill(child, signal);
        },
        _ => PENDING.store(signal, Ordering::Release),
    }
}

fn run_forwarding_signals(command: &mut Command) -> std::io::Result<ExitStatus> {
    for signal in FORWARDED {
        // SAFETY: installing a handler that only makes async-signal-safe calls.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = forward
                as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void)
                as libc::sighandler_t;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
    // (A handled signal is reset to its default in the command at exec.)
    let mut child = command.spawn()?;
    CHILD.store(child.id() as i32, Ordering::Release);
    let pending = PENDING.swap(0, Ordering::AcqRel);
    if pending != 0 {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, pending) };
    }
    let status = child.wait();
    // Its pid may be reused from now on.
    CHILD.store(-1, Ordering::Release);
    status
}

/// The command as `Command` will find it: a path, or the first match in PATH.
fn resolve_program(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        return Some(PathBuf::from(program));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| {
            candidate
                .metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

// ---- what was left behind ----------------------------------------------------

/// Where the library will log, seen from here: the child gets this
/// environment plus KOALA_MODE and KOALA_RECORD_TO.
struct LogPlaces {
    /// `(directory, file name prefix)` of the rotated log files.
    places: Vec<(PathBuf, String)>,
    /// False when the log goes to stdout/stderr or nowhere.
    readable: bool,
}

fn log_places(dir: &Path) -> LogPlaces {
    let record_to = dir.to_string_lossy().into_owned();
    let (config, _) = Config::from_lookup(|name| match name {
        "KOALA_MODE" => Some("record".into()),
        "KOALA_RECORD_TO" => Some(record_to.clone()),
        _ => std::env::var_os(name).map(|v| v.to_string_lossy().into_owned()),
    });
    let mut places = Vec::new();
    let readable = matches!(config.log_target, LogTarget::File(_));
    if let LogTarget::File(path) = &config.log_target {
        places.push(rotated(path));
    }
    // The fallback of every user the command may run as (workers that
    // switch user): those this user can read.
    let fallback = koala_config::fallback_log_path(std::env::var_os("TMPDIR").as_deref(), 0);
    if let Some(tmp) = fallback.parent().and_then(Path::parent)
        && let Ok(entries) = std::fs::read_dir(tmp)
    {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let uid = name.to_str().and_then(|n| n.strip_prefix("koala-"));
            if uid.is_some_and(|u| !u.is_empty() && u.bytes().all(|b| b.is_ascii_digit())) {
                places.push((entry.path(), "koala.log.".into()));
            }
        }
    }
    // The current user's, even if it does not exist yet.
    // SAFETY: getuid cannot fail.
    let own = koala_config::fallback_log_path(std::env::var_os("TMPDIR").as_deref(), unsafe {
        libc::getuid()
    });
    let own = rotated(&own);
    if !places.contains(&own) {
        places.push(own);
    }
    LogPlaces { places, readable }
}

/// koala's hourly log files: `<path>.YYYY-MM-DD-HH`, or `.N` when that name was unusable.
fn rotated(path: &Path) -> (PathBuf, String) {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or(OsStr::new("koala.log"));
    (dir.to_path_buf(), format!("{}.", name.to_string_lossy()))
}

/// Files of `dir` whose name starts with `prefix`.
fn files_with_prefix(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_name().as_bytes().starts_with(prefix.as_bytes()))
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

fn session_files(dir: &Path) -> Vec<PathBuf> {
    files_with_prefix(dir, "")
        .into_iter()
        .filter(|p| p.extension() == Some(OsStr::new("jsonl")))
        .collect()
}

/// The length of every session and log file before the run: only what is
/// appended after counts (the directory may hold earlier recordings, a pid
/// may be reused, a log is shared).
struct Lengths(BTreeMap<PathBuf, u64>);

impl Lengths {
    fn take(dir: &Path, logs: &LogPlaces) -> Lengths {
        let mut lengths = BTreeMap::new();
        let logs = logs
            .places
            .iter()
            .flat_map(|(dir, prefix)| files_with_prefix(dir, prefix));
        for path in session_files(dir).into_iter().chain(logs) {
            if let Ok(metadata) = path.metadata() {
                lengths.insert(path, metadata.len());
            }
        }
        Lengths(lengths)
    }

    /// `path` opened where the run started appending (0: a new file, or
    /// one that shrank).
    fn open_appended(&self, path: &Path) -> Option<File> {
        let mut file = File::open(path).ok()?;
        let length = file.metadata().ok()?.len();
        let start = self.0.get(path).copied().filter(|&s| s <= length);
        file.seek(SeekFrom::Start(start.unwrap_or(0))).ok()?;
        Some(file)
    }
}

/// What one session file got during the run.
#[derive(Debug, Default, PartialEq, Eq)]
struct FileCount {
    sessions: u64,
    background: u64,
    /// Lines that are not a session (a torn write, another writer).
    unreadable: u64,
}

/// Counts the lines of `reader`: sessions, background records, and lines
/// that are not records. A last line without its newline is unreadable.
fn count_lines(reader: impl BufRead) -> FileCount {
    #[derive(serde::Deserialize)]
    struct Kind {
        #[serde(default)]
        kind: Option<String>,
    }
    let mut count = FileCount::default();
    for line in reader.split(b'\n') {
        let Ok(line) = line else {
            count.unreadable += 1;
            break;
        };
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<Kind>(&line) {
            Ok(Kind { kind: Some(kind) }) if kind == "background" => count.background += 1,
            Ok(_) => count.sessions += 1,
            Err(_) => count.unreadable += 1,
        }
    }
    count
}

/// A line of the library's log that the summary uses.
#[derive(Debug, PartialEq, Eq)]
enum LogEvent {
    /// A process's `koala recording summary` at exit.
    Summary {
        dropped: u64,
        lost: u64,
        empty: u64,
        /// Calls no session could be told for (`unattributed_calls`).
        unattributed: u64,
        /// Exchanges recorded as TLS koala could not see into
        /// (`ciphertext_exchanges`).
        ciphertext: u64,
    },
    /// Sessions that could not be written, and why.
    WriteError { path: String, error: String },
}

/// Reads one log line (`koala[prog:pid] <time> LEVEL message key=value...`).
fn parse_log_line(line: &str) -> Option<LogEvent> {
    let after = |message: &str| line.split_once(message).map(|(_, rest)| fields(rest));
    if let Some(fields) = after(" koala recording summary") {
        let number = |key: &str| {
            fields
                .get(key)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        return Some(LogEvent::Summary {
            dropped: number("sessions_dropped_queue_full"),
            lost: number("sessions_lost_write_error"),
            empty: number("empty_sessions"),
            unattributed: number("unattributed_calls"),
            ciphertext: number("ciphertext_exchanges"),
        });
    }
    if let Some(fields) = after(" cannot write sessions") {
        return Some(LogEvent::WriteError {
            path: fields.get("path").cloned().unwrap_or_default(),
            error: fields.get("error").cloned().unwrap_or_default(),
        });
    }
    None
}

/// ` key=value key=value`: a value runs to the next ` word=` (values are
/// written unquoted, and an error message has spaces).
fn fields(text: &str) -> BTreeMap<String, String> {
    let mut starts = Vec::new();
    for (at, _) in text.match_indices('=') {
        let key_start = text[..at]
            .rfind(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .map_or(0, |i| i + 1);
        let key = &text[key_start..at];
        let after_space = key_start > 0 && text.as_bytes()[key_start - 1] == b' ';
        if !key.is_empty() && after_space {
            starts.push((key_start, at));
        }
    }
    let mut fields = BTreeMap::new();
    for (index, &(key_start, at)) in starts.iter().enumerate() {
        let end = starts
            .get(index + 1)
            .map_or(text.len(), |&(next, _)| next - 1);
        let value = text.get(at + 1..end).unwrap_or_default();
        fields.insert(
            text[key_start..at].to_string(),
            value.trim_end().to_string(),
        );
    }
    fields
}

/// Everything the run left behind.
#[derive(Debug, Default)]
struct Outcome {
    files: Vec<(PathBuf, FileCount)>,
    /// Summary lines found, and their sums.
    summaries: u64,
    dropped: u64,
    lost: u64,
    empty: u64,
    unattributed: u64,
    ciphertext: u64,
    /// `(path, error)` of sessions that could not be written, once each.
    write_errors: Vec<(String, String)>,
    /// Log files that got lines during the run.
    logs: Vec<PathBuf>,
}

impl Outcome {
    fn read(dir: &Path, logs: &LogPlaces, before: &Lengths) -> Outcome {
        let mut outcome = Outcome::default();
        for path in session_files(dir) {
            let Some(file) = before.open_appended(&path) else {
                continue;
            };
            let count = count_lines(BufReader::new(file));
            if count != FileCount::default() {
                outcome.files.push((path, count));
            }
        }
        let log_files = logs
            .places
            .iter()
            .flat_map(|(dir, prefix)| files_with_prefix(dir, prefix));
        for path in log_files {
            let Some(file) = before.open_appended(&path) else {
                continue;
            };
            // Bounded: a log shared with a flood of other lines.
            let mut text = Vec::new();
            let _ = file.take(64 << 20).read_to_end(&mut text);
            if text.is_empty() {
                continue;
            }
            outcome.logs.push(path);
            for line in String::from_utf8_lossy(&text).lines() {
                outcome.add(parse_log_line(line));
            }
        }
        outcome
    }

    fn add(&mut self, event: Option<LogEvent>) {
        match event {
            Some(LogEvent::Summary {
                dropped,
                lost,
                empty,
                unattributed,
                ciphertext,
            }) => {
                self.summaries += 1;
                self.dropped += dropped;
                self.lost += lost;
                self.empty += empty;
                self.unattributed += unattributed;
                self.ciphertext += ciphertext;
            }
            Some(LogEvent::WriteError { path, error }) => {
                let error = (path, error);
                if !self.write_errors.contains(&error) {
                    self.write_errors.push(error);
                }
            }
            None => {}
        }
    }

    fn sessions(&self) -> u64 {
        self.files.iter().map(|(_, c)| c.sessions).sum()
    }
}

/// Why `dir` cannot hold session files, as far as this user can tell.
fn dir_problem(dir: &Path) -> Option<String> {
    match dir.metadata() {
        Ok(m) if !m.is_dir() => Some(format!("{} is not a directory", dir.display())),
        Ok(_) => {
            let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
            // SAFETY: a NUL-terminated path.
            let writable = unsafe { libc::access(path.as_ptr(), libc::W_OK | libc::X_OK) } == 0;
            (!writable).then(|| format!("{} is not writable by this user", dir.display()))
        }
        // Not created: normal when nothing connected.
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
        Err(error) => Some(format!("{}: {error}", dir.display())),
    }
}

/// What the summary needs besides the outcome.
struct Context<'a> {
    dir: &'a Path,
    program: &'a str,
    blind: Option<&'a elf::Blind>,
    log_readable: bool,
    dir_problem: Option<String>,
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The summary, one `koala record:` line each.
fn render(outcome: &Outcome, context: &Context<'_>) -> String {
    let mut lines = Vec::new();
    let sessions = outcome.sessions();
    let written = plural(sessions, "session", "sessions");
    lines.push(if context.log_readable {
        format!(
            "{written} written, {} dropped, {} lost",
            outcome.dropped, outcome.lost
        )
    } else {
        format!(
            "{written} written (dropped and lost: see the library's summary line, KOALA_LOG_FILE is not a file)"
        )
    });
    for (path, count) in &outcome.files {
        let mut parts = vec![plural(count.sessions, "session", "sessions")];
        if count.background > 0 {
            parts.push(plural(
                count.background,
                "background record",
                "background records",
            ));
        }
        if count.unreadable > 0 {
            parts.push(plural(
                count.unreadable,
                "unreadable line",
                "unreadable lines",
            ));
        }
        lines.push(format!("  {}: {}", path.display(), parts.join(", ")));
    }
    for (path, error) in &outcome.write_errors {
        lines.push(format!("  lost: cannot write {path}: {error}"));
    }
    if outcome.unattributed > 0 {
        lines.push(format!(
            "  {}: sent by a thread serving no request while several were in flight, in the background records flagged \"unattributed\" (docs/helper-hints.md, hand-off threads)",
            plural(outcome.unattributed, "call unattributed", "calls unattributed")
        ));
    }
    if outcome.ciphertext > 0 {
        lines.push(format!(
            "  {}: TLS koala could not see into (Java's JSSE, Go, a statically linked TLS library, OpenSSL on memory BIOs), recorded as ciphertext and marked \"tls\": \"ciphertext\"; sessions holding one cannot be replayed (docs/tls.md)",
            plural(outcome.ciphertext, "exchange encrypted", "exchanges encrypted")
        ));
    }
    if sessions == 0 {
        for why in why_none(outcome, context) {
            lines.push(format!("  why none: {why}"));
        }
    }
    let troubled = sessions == 0 || outcome.dropped > 0 || outcome.lost > 0;
    if troubled {
        for log in &outcome.logs {
            lines.push(format!("  log: {}", log.display()));
        }
    }
    lines
        .iter()
        .map(|line| format!("koala record: {line}\n"))
        .collect()
}

fn why_none(outcome: &Outcome, context: &Context<'_>) -> Vec<String> {
    let mut why = Vec::new();
    if let Some(blind) = context.blind {
        why.push(format!("{} {blind}", context.program));
    }
    if let Some(problem) = &context.dir_problem {
        why.push(problem.clone());
    }
    if outcome.lost > 0 || !outcome.write_errors.is_empty() {
        why.push(format!(
            "sessions could not be written to {} (above)",
            context.dir.display()
        ));
    }
    if outcome.dropped > 0 {
        why.push(
            "the writer's queue was full (KOALA_QUEUE_CAPACITY, KOALA_QUEUE_MAX_BYTES)".into(),
        );
    }
    if !why.is_empty() {
        return why;
    }
    if outcome.summaries > 0 {
        why.push(format!(
            "connections were seen, but no request made a session ({} empty: a probe that sent nothing or a newline)",
            outcome.empty
        ));
    } else if context.log_readable {
        why.push(
            "no process of the command handled a TCP connection: nothing listened, nothing connected to it, or the library was not loaded (a setuid program, a cleared environment)"
                .into(),
        );
    } else {
        why.push("no process wrote a session; the library's log may say why".into());
    }
    why
}

// ---- ELF: can LD_PRELOAD see this program? ------------------------------------

mod elf {
    //! Reads just enough of an ELF file to tell whether the dynamic loader
    //! will load libkoala.so into it and whether its traffic goes through
    //! libc: a static binary has no program interpreter (PT_INTERP), a Go
    //! binary carries a Go build-id note and makes its system calls itself.

    use std::fmt;
    use std::fs::File;
    use std::os::unix::fs::FileExt;
    use std::path::{Path, PathBuf};

    /// Why LD_PRELOAD cannot see a program's traffic.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub enum Blind {
        /// A Go program: its network calls bypass libc.
        Go,
        /// No program interpreter: the dynamic loader never runs.
        Static,
        /// Dynamically linked, but not against libc.
        NoLibc,
    }

    impl fmt::Display for Blind {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(match self {
                Blind::Go => {
                    "is a Go program: Go makes its system calls itself, so LD_PRELOAD cannot see its traffic"
                }
                Blind::Static => {
                    "is statically linked: the dynamic loader never runs, so LD_PRELOAD cannot load libkoala.so into it"
                }
                Blind::NoLibc => {
                    "is not linked against libc: LD_PRELOAD cannot see calls that do not go through libc"
                }
            })
        }
    }

    /// How deep `#!` interpreters are followed (the kernel allows 4).
    const MAX_SCRIPT_DEPTH: usize = 4;

    /// Follows `#!` lines to the ELF that will run, and inspects it.
    /// `None` when it can be seen, or when the file cannot be read.
    pub fn inspect_program(path: &Path) -> Option<Blind> {
        let mut path = path.to_path_buf();
        for _ in 0..MAX_SCRIPT_DEPTH {
            let file = File::open(&path).ok()?;
            let read = |offset: u64, len: usize| read_at(&file, offset, len);
            let head = read(0, 256)?;
            if let Some(interpreter) = script_interpreter(&head) {
                path = interpreter;
                continue;
            }
            return inspect(&read);
        }
        None
    }

    fn read_at(file: &File, offset: u64, len: usize) -> Option<Vec<u8>> {
        let mut buf = vec![0; len];
        let mut done = 0;
        while done < len {
            match file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(_) => return None,
            }
        }
        buf.truncate(done);
        Some(buf)
    }

    /// The interpreter of a `#!` script; `#!/usr/bin/env prog` is looked up in PATH.
    fn script_interpreter(head: &[u8]) -> Option<PathBuf> {
        let line = head.strip_prefix(b"#!")?;
        let line = line.split(|b| *b == b'\n').next()?;
        let line = String::from_utf8_lossy(line);
        let mut words = line.split_whitespace();
        let interpreter = PathBuf::from(words.next()?);
        if interpreter.file_name().is_some_and(|n| n == "env") {
            let program = words.find(|w| !w.starts_with('-') && !w.contains('='))?;
            return super::resolve_program(program);
        }
        Some(interpreter)
    }

    const PT_LOAD: u32 = 1;
    const PT_DYNAMIC: u32 = 2;
    const PT_INTERP: u32 = 3;
    const PT_NOTE: u32 = 4;
    const DT_NEEDED: u64 = 1;
    const DT_STRTAB: u64 = 5;
    const NT_GO_BUILDID: u32 = 4;
    /// Bounds on what is read, whatever the headers claim.
    const MAX_HEADERS: usize = 4096;
    const MAX_SEGMENT: usize = 1 << 20;

    /// One program header of a 64-bit ELF.
    struct Segment {
        kind: u32,
        offset: u64,
        vaddr: u64,
        filesz: u64,
    }

    fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
        Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
    }

    fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
        Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
    }

    fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
        Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
    }

    /// Inspects a 64-bit little-endian ELF through `read(offset, len)`
    /// (which may return fewer bytes). Anything else, or a malformed
    /// file, gives `None`: no warning is better than a wrong one.
    pub fn inspect(read: &dyn Fn(u64, usize) -> Option<Vec<u8>>) -> Option<Blind> {
        let header = read(0, 64)?;
        if header.get(..6)? != b"\x7fELF\x02\x01" {
            return None;
        }
        let phoff = u64_at(&header, 0x20)?;
        let phentsize = usize::from(u16_at(&header, 0x36)?);
        let phnum = usize::from(u16_at(&header, 0x38)?).min(MAX_HEADERS);
        if phentsize < 56 || phnum == 0 {
            return None;
        }
        let table_len = phentsize.checked_mul(phnum)?;
        let table = read(phoff, table_len)?;
        // A table cut short (a truncated file, a bad offset) would look
        // like a program without an interpreter.
        if table.len() < table_len {
            return None;
        }
        let segments: Vec<Segment> = table
            .chunks_exact(phentsize)
            .filter_map(|entry| {
                Some(Segment {
                    kind: u32_at(entry, 0)?,
                    offset: u64_at(entry, 8)?,
                    vaddr: u64_at(entry, 16)?,
                    filesz: u64_at(entry, 32)?,
                })
            })
            .collect();
        let segment_bytes = |segment: &Segment| {
            read(
                segment.offset,
                usize::try_from(segment.filesz).ok()?.min(MAX_SEGMENT),
            )
        };
        let go = segments
            .iter()
            .filter(|s| s.kind == PT_NOTE)
            .filter_map(segment_bytes)
            .any(|notes| has_go_note(&notes))
            || has_go_section(&header, read);
        if go {
            return Some(Blind::Go);
        }
        if !segments.iter().any(|s| s.kind == PT_INTERP) {
            return Some(Blind::Static);
        }
        let dynamic = segments.iter().find(|s| s.kind == PT_DYNAMIC)?;
        let needed = needed_libraries(&segment_bytes(dynamic)?, &segments, read)?;
        let libc = needed
            .iter()
            .any(|name| name.starts_with(b"libc.so") || name.starts_with(b"libc.musl"));
        (!libc).then_some(Blind::NoLibc)
    }

    /// A `Go` note of type 4 (the Go build id) among `notes`.
    fn has_go_note(notes: &[u8]) -> bool {
        let mut at = 0usize;
        while let (Some(namesz), Some(descsz), Some(kind)) = (
            u32_at(notes, at),
            u32_at(notes, at + 4),
            u32_at(notes, at + 8),
        ) {
            let name_start = at + 12;
            let name = notes.get(name_start..name_start + namesz as usize);
            if kind == NT_GO_BUILDID && name == Some(b"Go\0") {
                return true;
            }
            let padded = |n: u32| (n as usize).div_ceil(4) * 4;
            at = name_start + padded(namesz) + padded(descsz);
        }
        false
    }

    /// A `.note.go.buildid` or `.go.buildinfo` section (binaries whose
    /// note is not in a segment).
    fn has_go_section(header: &[u8], read: &dyn Fn(u64, usize) -> Option<Vec<u8>>) -> bool {
        let check = || -> Option<bool> {
            let shoff = u64_at(header, 0x28)?;
            let shentsize = usize::from(u16_at(header, 0x3A)?);
            let shnum = usize::from(u16_at(header, 0x3C)?).min(MAX_HEADERS);
            let shstrndx = usize::from(u16_at(header, 0x3E)?);
            if shoff == 0 || shentsize < 64 || shstrndx >= shnum {
                return Some(false);
            }
            let table = read(shoff, shentsize.checked_mul(shnum)?)?;
            let names_header = table.get(shstrndx * shentsize..(shstrndx + 1) * shentsize)?;
            let names = read(
                u64_at(names_header, 24)?,
                usize::try_from(u64_at(names_header, 32)?)
                    .ok()?
                    .min(MAX_SEGMENT),
            )?;
            Some(table.chunks_exact(shentsize).any(|section| {
                let name = u32_at(section, 0).and_then(|at| c_string(&names, at as usize));
                matches!(name, Some(b".note.go.buildid" | b".go.buildinfo"))
            }))
        };
        check().unwrap_or(false)
    }

    fn c_string(bytes: &[u8], at: usize) -> Option<&[u8]> {
        let rest = bytes.get(at..)?;
        let end = rest.iter().position(|b| *b == 0)?;
        Some(&rest[..end])
    }

    /// The DT_NEEDED names of a dynamic section.
    fn needed_libraries(
        dynamic: &[u8],
        segments: &[Segment],
        read: &dyn Fn(u64, usize) -> Option<Vec<u8>>,
    ) -> Option<Vec<Vec<u8>>> {
        let entries: Vec<(u64, u64)> = dynamic
            .chunks_exact(16)
            .filter_map(|entry| Some((u64_at(entry, 0)?, u64_at(entry, 8)?)))
            .take_while(|(tag, _)| *tag != 0)
            .collect();
        let strtab = entries.iter().find(|(tag, _)| *tag == DT_STRTAB)?.1;
        // DT_STRTAB is an address: find the file offset of the load segment holding it.
        let load = segments
            .iter()
            .find(|s| s.kind == PT_LOAD && s.vaddr <= strtab && strtab - s.vaddr < s.filesz)?;
        let strtab_offset = load.offset.checked_add(strtab - load.vaddr)?;
        let mut names = Vec::new();
        for (_, at) in entries.iter().filter(|(tag, _)| *tag == DT_NEEDED) {
            let bytes = read(strtab_offset.checked_add(*at)?, 256)?;
            names.push(c_string(&bytes, 0)?.to_vec());
        }
        Some(names)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        /// A minimal ELF64: `segments` are `(type, bytes)`, laid out after
        /// the headers, each also loaded at vaddr = 0x400000 + offset.
        fn elf(segments: &[(u32, Vec<u8>)]) -> Vec<u8> {
            let mut out = vec![0u8; 64];
            out[..6].copy_from_slice(b"\x7fELF\x02\x01");
            out[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
            out[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
            let count = segments.len() as u16 + 1;
            out[0x38..0x3A].copy_from_slice(&count.to_le_bytes());
            let data_start = 64 + 56 * count as u64;
            let mut data = Vec::new();
            let mut headers = Vec::new();
            for (kind, bytes) in segments {
                headers.push((*kind, data_start + data.len() as u64, bytes.len() as u64));
                data.extend_from_slice(bytes);
            }
            // One load segment covering everything.
            headers.push((PT_LOAD, 0, data_start + data.len() as u64));
            for (kind, offset, size) in headers {
                let mut header = [0u8; 56];
                header[0..4].copy_from_slice(&kind.to_le_bytes());
                header[8..16].copy_from_slice(&offset.to_le_bytes());
                header[16..24].copy_from_slice(&(0x400000 + offset).to_le_bytes());
                header[32..40].copy_from_slice(&size.to_le_bytes());
                out.extend_from_slice(&header);
            }
            out.extend_from_slice(&data);
            out
        }

        fn inspect_bytes(bytes: &[u8]) -> Option<Blind> {
            inspect(&|offset, len| {
                let start = usize::try_from(offset).ok()?.min(bytes.len());
                Some(bytes[start..(start + len).min(bytes.len())].to_vec())
            })
        }

        fn note(name: &[u8], kind: u32) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(&(name.len() as u32).to_le_bytes());
            out.extend_from_slice(&4u32.to_le_bytes());
            out.extend_from_slice(&kind.to_le_bytes());
            out.extend_from_slice(name);
            out.resize(out.len().div_ceil(4) * 4, 0);
            out.extend_from_slice(b"desc");
            out
        }

        /// A dynamically linked ELF needing `libs`: segment 0 is the
        /// interpreter (28 bytes), segment 1 a string table (64 bytes)
        /// followed by the dynamic entries, which the PT_DYNAMIC header
        /// points at.
        fn dynamic_elf(libs: &[&str]) -> Vec<u8> {
            const INTERP: &[u8; 28] = b"/lib64/ld-linux-x86-64.so.2\0";
            // Where elf() puts segment 1: after 3 headers and segment 0.
            let strtab_offset = 64 + 56 * 3 + INTERP.len() as u64;
            let mut strings = vec![0u8];
            let mut entries = Vec::new();
            for lib in libs {
                entries.push((DT_NEEDED, strings.len() as u64));
                strings.extend_from_slice(lib.as_bytes());
                strings.push(0);
            }
            entries.push((DT_STRTAB, 0x400000 + strtab_offset));
            entries.push((0, 0));
            let mut segment = strings;
            segment.resize(64, 0);
            for (tag, value) in entries {
                segment.extend_from_slice(&tag.to_le_bytes());
                segment.extend_from_slice(&value.to_le_bytes());
            }
            let mut bytes = elf(&[(PT_INTERP, INTERP.to_vec()), (PT_DYNAMIC, segment)]);
            // The dynamic header (the second) points past the strings.
            let header = 64 + 56;
            let entries_offset = strtab_offset + 64;
            bytes[header + 8..header + 16].copy_from_slice(&entries_offset.to_le_bytes());
            bytes
        }

        #[test]
        fn a_dynamic_program_linked_to_libc_is_seen() {
            assert_eq!(
                inspect_bytes(&dynamic_elf(&["libm.so.6", "libc.so.6"])),
                None
            );
        }

        #[test]
        fn a_dynamic_program_without_libc_is_named() {
            assert_eq!(
                inspect_bytes(&dynamic_elf(&["libfoo.so"])),
                Some(Blind::NoLibc)
            );
        }

        #[test]
        fn no_interpreter_means_static() {
            assert_eq!(
                inspect_bytes(&elf(&[(PT_NOTE, note(b"GNU\0", 3))])),
                Some(Blind::Static)
            );
        }

        #[test]
        fn a_go_build_id_note_means_go_even_when_dynamic() {
            let notes = [note(b"GNU\0", 3), note(b"Go\0", NT_GO_BUILDID)].concat();
            assert_eq!(
                inspect_bytes(&elf(&[(PT_NOTE, notes.clone())])),
                Some(Blind::Go)
            );
            assert_eq!(
                inspect_bytes(&elf(&[
                    (PT_INTERP, b"/lib/ld.so\0".to_vec()),
                    (PT_NOTE, notes)
                ])),
                Some(Blind::Go)
            );
        }

        /// Appends a section header table naming `names` (after a null
        /// section and `.shstrtab`).
        fn with_sections(mut bytes: Vec<u8>, names: &[&str]) -> Vec<u8> {
            let mut strings = b"\0.shstrtab\0".to_vec();
            let mut name_offsets = Vec::new();
            for name in names {
                name_offsets.push(strings.len() as u32);
                strings.extend_from_slice(name.as_bytes());
                strings.push(0);
            }
            let strings_at = bytes.len() as u64;
            bytes.extend_from_slice(&strings);
            let table_at = bytes.len() as u64;
            let mut section = |name: u32, offset: u64, size: u64| {
                let mut header = [0u8; 64];
                header[0..4].copy_from_slice(&name.to_le_bytes());
                header[24..32].copy_from_slice(&offset.to_le_bytes());
                header[32..40].copy_from_slice(&size.to_le_bytes());
                bytes.extend_from_slice(&header);
            };
            section(0, 0, 0);
            section(1, strings_at, strings.len() as u64);
            for name in name_offsets {
                section(name, 0, 0);
            }
            bytes[0x28..0x30].copy_from_slice(&table_at.to_le_bytes());
            bytes[0x3A..0x3C].copy_from_slice(&64u16.to_le_bytes());
            let count = names.len() as u16 + 2;
            bytes[0x3C..0x3E].copy_from_slice(&count.to_le_bytes());
            bytes[0x3E..0x40].copy_from_slice(&1u16.to_le_bytes());
            bytes
        }

        #[test]
        fn a_go_section_means_go() {
            let interp = (PT_INTERP, b"/lib/ld.so\0".to_vec());
            let go = with_sections(
                elf(std::slice::from_ref(&interp)),
                &[".text", ".go.buildinfo"],
            );
            assert_eq!(inspect_bytes(&go), Some(Blind::Go));
            let go = with_sections(elf(std::slice::from_ref(&interp)), &[".note.go.buildid"]);
            assert_eq!(inspect_bytes(&go), Some(Blind::Go));
            // Other sections: no verdict from them (and no PT_DYNAMIC here).
            let other = with_sections(elf(&[interp]), &[".text", ".go.other"]);
            assert_eq!(inspect_bytes(&other), None);
        }

        #[test]
        fn malformed_or_foreign_files_give_no_verdict() {
            assert_eq!(inspect_bytes(b""), None);
            assert_eq!(inspect_bytes(b"#!/bin/sh\n"), None);
            // 32-bit and big-endian ELF: not inspected.
            assert_eq!(inspect_bytes(b"\x7fELF\x01\x01\0\0"), None);
            assert_eq!(inspect_bytes(b"\x7fELF\x02\x02\0\0"), None);
            // Truncated anywhere, absurd counts and offsets: no panic.
            let full = dynamic_elf(&["libc.so.6"]);
            for len in 0..full.len() {
                let _ = inspect_bytes(&full[..len]);
            }
            let mut absurd = full.clone();
            absurd[0x20..0x28].copy_from_slice(&u64::MAX.to_le_bytes());
            assert_eq!(inspect_bytes(&absurd), None);
            let mut notes = elf(&[(PT_NOTE, vec![0xff; 64])]);
            notes[0x38..0x3A].copy_from_slice(&u16::MAX.to_le_bytes());
            let _ = inspect_bytes(&notes);
        }

        #[test]
        fn scripts_name_their_interpreter() {
            assert_eq!(
                script_interpreter(b"#!/usr/bin/python3 -u\nprint()"),
                Some(PathBuf::from("/usr/bin/python3"))
            );
            assert_eq!(script_interpreter(b"\x7fELF"), None);
            assert_eq!(script_interpreter(b"#!"), None);
        }

        #[test]
        fn the_real_ls_is_seen() {
            assert_eq!(inspect_program(Path::new("/bin/ls")), None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_lines_give_drops_and_losses() {
        let line = "koala[nginx:12] 2026-12-02T18:05:07.833976Z  INFO koala recording summary sessions_written=3 sessions_dropped_queue_full=2 sessions_lost_write_error=5 sessions_without_inbound=0 empty_sessions=1 file=/d/nginx-12.jsonl";
        assert_eq!(
            parse_log_line(line),
            Some(LogEvent::Summary {
                dropped: 2,
                lost: 5,
                empty: 1,
                unattributed: 0,
                ciphertext: 0,
            })
        );
    }

    #[test]
    fn write_errors_keep_their_spaces() {
        let line = "koala[python3:10221] 2026-12-02T18:05:07.832888Z ERROR cannot write sessions; they are lost path=/tmp/a file/sub/python3-10221.jsonl error=Not a directory (os error 20) lines=2";
        assert_eq!(
            parse_log_line(line),
            Some(LogEvent::WriteError {
                path: "/tmp/a file/sub/python3-10221.jsonl".into(),
                error: "Not a directory (os error 20)".into(),
            })
        );
        assert_eq!(
            parse_log_line("koala[x:1] t  WARN session queue full dropped_now=1"),
            None
        );
        assert_eq!(parse_log_line(""), None);
        assert_eq!(
            fields("=== a=x y c=d =e"),
            BTreeMap::from([("a".into(), "x y".into()), ("c".into(), "d =e".into())])
        );
    }

    #[test]
    fn lines_are_counted_by_kind() {
        let text = b"{\"koala\":1,\"id\":\"a\"}\n{\"kind\":\"background\",\"x\":[1,2]}\n\n{\"id\":\"b\"}\n{\"torn\n{\"id\":\"c\"";
        assert_eq!(
            count_lines(&text[..]),
            FileCount {
                sessions: 2,
                background: 1,
                unreadable: 2
            }
        );
    }

    fn context<'a>(dir: &'a Path, blind: Option<&'a elf::Blind>) -> Context<'a> {
        Context {
            dir,
            program: "./svc",
            blind,
            log_readable: true,
            dir_problem: None,
        }
    }

    #[test]
    fn a_summary_names_every_file() {
        let outcome = Outcome {
            files: vec![
                (
                    PathBuf::from("/d/python3-7.jsonl"),
                    FileCount {
                        sessions: 1,
                        background: 1,
                        unreadable: 0,
                    },
                ),
                (
                    PathBuf::from("/d/python3-8.jsonl"),
                    FileCount {
                        sessions: 2,
                        background: 0,
                        unreadable: 1,
                    },
                ),
            ],
            summaries: 2,
            ..Outcome::default()
        };
        assert_eq!(
            render(&outcome, &context(Path::new("/d"), None)),
            "koala record: 3 sessions written, 0 dropped, 0 lost\n\
             koala record:   /d/python3-7.jsonl: 1 session, 1 background record\n\
             koala record:   /d/python3-8.jsonl: 2 sessions, 1 unreadable line\n"
        );
    }

    #[test]
    fn no_session_says_why() {
        let mut outcome = Outcome::default();
        outcome.add(Some(LogEvent::WriteError {
            path: "/f/sub/a-1.jsonl".into(),
            error: "Not a directory (os error 20)".into(),
        }));
        outcome.add(Some(LogEvent::Summary {
            dropped: 0,
            lost: 2,
            empty: 0,
            unattributed: 0,
            ciphertext: 0,
        }));
        outcome.logs.push(PathBuf::from("/tmp/koala-0/koala.log.x"));
        assert_eq!(
            render(&outcome, &context(Path::new("/f/sub"), None)),
            "koala record: 0 sessions written, 0 dropped, 2 lost\n\
             koala record:   lost: cannot write /f/sub/a-1.jsonl: Not a directory (os error 20)\n\
             koala record:   why none: sessions could not be written to /f/sub (above)\n\
             koala record:   log: /tmp/koala-0/koala.log.x\n"
        );
        let nothing = Outcome::default();
        assert_eq!(
            render(
                &nothing,
                &context(Path::new("/d"), Some(&elf::Blind::Static))
            ),
            format!(
                "koala record: 0 sessions written, 0 dropped, 0 lost\n\
                 koala record:   why none: ./svc {}\n",
                elf::Blind::Static
            )
        );
        assert!(
            render(&nothing, &context(Path::new("/d"), None))
                .contains("why none: no process of the command handled a TCP connection")
        );
    }

    #[test]
    fn exit_codes_pass_through() {
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), ExitCode::from(3));
        assert_eq!(
            exit_code(ExitStatus::from_raw(libc::SIGTERM)),
            ExitCode::from(128 + 15)
        );
    }

    #[test]
    fn unattributed_calls_are_summed_and_said() {
        let line = "koala[java:7] 2026-12-02T18:05:07.833976Z  INFO koala recording summary sessions_written=6 sessions_dropped_queue_full=0 sessions_lost_write_error=0 empty_sessions=0 unattributed_calls=2 file=/d/java-7.jsonl";
        let mut outcome = Outcome::default();
        outcome.add(parse_log_line(line));
        outcome.add(parse_log_line(&line.replace("=2 ", "=1 ")));
        outcome.add(parse_log_line(&line.replace("=2 ", "=1 ")));
        assert_eq!(outcome.unattributed, 4);
        let rendered = render(&outcome, &context(Path::new("/d"), None));
        assert!(
            rendered.contains(
                "koala record:   4 calls unattributed: sent by a thread serving no request"
            ),
            "{rendered}"
        );
    }

    #[test]
    fn ciphertext_exchanges_are_summed_and_said() {
        let line = "koala[java:8] 2026-12-03T08:05:07.833976Z  INFO koala recording summary sessions_written=2 sessions_dropped_queue_full=0 sessions_lost_write_error=0 empty_sessions=0 ciphertext_exchanges=2 unattributed_calls=0 file=/d/java-8.jsonl";
        let mut outcome = Outcome::default();
        assert!(!render(&outcome, &context(Path::new("/d"), None)).contains("encrypted"));
        outcome.add(parse_log_line(line));
        outcome.add(parse_log_line(&line.replace("=2 ", "=1 ")));
        assert_eq!(outcome.ciphertext, 3);
        let rendered = render(&outcome, &context(Path::new("/d"), None));
        assert!(
            rendered.contains(
                "koala record:   3 exchanges encrypted: TLS koala could not see into (Java's JSSE"
            ),
            "{rendered}"
        );
    }
}
