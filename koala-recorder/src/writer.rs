//! The internal thread that writes finished sessions to this process's
//! session file, and closes idle sessions.
//!
//! Host threads leave finished sessions in the recorder's outbox; this
//! thread wakes every few milliseconds (or when poked at exit), swaps the
//! outbox out, writes in batches, and flushes at least every second.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{FromRawFd, IntoRawFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::record::FinishedSession;
use crate::recorder::{Recorder, Taken};

/// How often the writer wakes to drain the queue when nobody pokes it.
const POLL: Duration = Duration::from_millis(10);
const IDLE_SWEEP: Duration = Duration::from_millis(100);
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// A batch this large is written without waiting for the next flush.
const BATCH_BYTES: usize = 256 << 10;

/// The writer thread's body.
pub(crate) fn run(recorder: &'static Recorder) {
    let mut file = SessionFile::new(recorder.session_file_path());
    let mut sessions: Vec<FinishedSession> = Vec::new();
    let mut spent: Vec<Vec<u8>> = Vec::new();
    let mut batch = Batch::default();
    let mut last_sweep = Instant::now();
    let mut last_flush = Instant::now();
    let dir = recorder.session_file_path();
    let dir = dir.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut redaction = crate::record::Redaction::new(recorder.redact.clone(), dir);
    loop {
        std::thread::park_timeout(POLL);
        let sweep = last_sweep.elapsed() >= IDLE_SWEEP;
        if sweep {
            last_sweep = Instant::now();
        }
        let Taken { flushes } = recorder.take_batch(sweep, &mut sessions, &mut spent);
        for mut session in sessions.drain(..) {
            redaction.apply(&mut session);
            session.write_json_line(&recorder.identity, &mut batch.bytes);
            session.take_buffers(&mut spent);
            batch.end_line();
            if batch.bytes.len() >= BATCH_BYTES {
                file.write_batch(recorder, &mut batch);
            }
        }
        if sweep {
            recorder.report_drops_if_any();
        }
        // (A batch that reached BATCH_BYTES was written in the loop above.)
        if last_flush.elapsed() >= FLUSH_EVERY || !flushes.is_empty() {
            last_flush = Instant::now();
            file.write_batch(recorder, &mut batch);
        }
        for done in flushes {
            done.set();
        }
    }
}

pub(crate) use koala_runtime::done::Done;

/// Session lines waiting to be written together.
#[derive(Default)]
struct Batch {
    bytes: Vec<u8>,
    /// Where each line ends in `bytes` (just after its newline).
    ends: Vec<usize>,
}

impl Batch {
    fn end_line(&mut self) {
        self.ends.push(self.bytes.len());
    }
}

/// How much of a batch a short write kept: the lines whose newline was
/// written, and their bytes. What follows is a torn line.
fn whole_lines(ends: &[usize], written: usize) -> (usize, usize) {
    let lines = ends.partition_point(|&end| end <= written);
    let bytes = if lines == 0 { 0 } else { ends[lines - 1] };
    (lines, bytes)
}

/// The file being written, as it was when opened.
struct OpenFile {
    file: File,
    path: PathBuf,
    dev: u64,
    ino: u64,
}

/// Why an open session file is not used for the next batch.
#[derive(Debug, PartialEq)]
enum Lost {
    /// The host closed our fd (the number may now be one of its own).
    FdClosed,
    /// The file was deleted (its directory removed, say): lines written to
    /// it would be lost when it is closed.
    Unlinked,
}

/// The session file, opened on first use, re-opened if the host closed or
/// replaced its fd behind the library's back or the file was deleted.
struct SessionFile {
    /// `<dir>/<program>-<pid>.jsonl`: the first name tried.
    wanted: PathBuf,
    open: Option<OpenFile>,
    /// A torn line could not be cut off: start the next write on a fresh line.
    torn: bool,
}

impl SessionFile {
    fn new(wanted: PathBuf) -> Self {
        SessionFile {
            wanted,
            open: None,
            torn: false,
        }
    }

    /// Writes the batch's lines, each whole or not at all, and counts them:
    /// written, or lost (disk full, EFBIG, unwritable directory).
    fn write_batch(&mut self, recorder: &Recorder, batch: &mut Batch) {
        if batch.bytes.is_empty() {
            return;
        }
        let lines = batch.ends.len();
        let (mut kept, mut error) = self.append(recorder, batch);
        // Deleted between the check and the write: those lines went to a
        // file that is gone. Written again to a new one (ensure_open sees
        // the deletion), they count only if that succeeds.
        if error.is_none()
            && let Some(open) = self.open.as_ref()
            && check(open) == Err(Lost::Unlinked)
        {
            (kept, error) = self.append(recorder, batch);
        }
        let counters = &recorder.counters;
        counters.written.fetch_add(kept as u64, Ordering::Relaxed);
        if let Some(error) = error {
            let lost = (lines - kept) as u64;
            counters.write_errors.fetch_add(lost, Ordering::Relaxed);
            let path = self.open.as_ref().map_or(&self.wanted, |open| &open.path);
            tracing::error!(path = %path.display(), %error, lost, "cannot write sessions; they are lost");
        }
        batch.bytes.clear();
        batch.ends.clear();
    }

    /// One attempt at appending the batch: lines written, and the error.
    fn append(&mut self, recorder: &Recorder, batch: &Batch) -> (usize, Option<io::Error>) {
        match (self.ensure_open(recorder), self.open.as_mut()) {
            (Ok(size), Some(open)) => append_whole_lines(open, size, &mut self.torn, batch),
            (Err(error), _) => (0, Some(error)),
            (Ok(_), None) => (0, Some(io::Error::other("session file not open"))),
        }
    }

    /// Opens or reopens the file as needed; returns its size.
    fn ensure_open(&mut self, recorder: &Recorder) -> io::Result<u64> {
        if let Some(open) = self.open.take() {
            match check(&open) {
                Ok(size) => {
                    self.open = Some(open);
                    return Ok(size);
                }
                Err(lost) => {
                    if lost == Lost::FdClosed {
                        // The number may now be one of the host's: forget
                        // it without closing.
                        let _ = open.file.into_raw_fd();
                    }
                    recorder
                        .counters
                        .file_reopened
                        .fetch_add(1, Ordering::Relaxed);
                    let why = match lost {
                        Lost::FdClosed => "its fd was closed by the host",
                        Lost::Unlinked => "it was deleted",
                    };
                    tracing::warn!(path = %open.path.display(), "session file reopened: {why}");
                    // A torn line in the old file stays there.
                    self.torn = false;
                }
            }
        }
        let (file, path) = create_session_file(&self.wanted)?;
        let metadata = file.metadata()?;
        recorder.set_session_file(&path);
        self.open = Some(OpenFile {
            file,
            path,
            dev: metadata.dev(),
            ino: metadata.ino(),
        });
        Ok(metadata.size())
    }
}

/// Is the open file still ours and still linked? Returns its size.
fn check(open: &OpenFile) -> Result<u64, Lost> {
    // fstat on the fd number: if the host closed it and the number was
    // reused, this is another file.
    let metadata = open.file.metadata().map_err(|_| Lost::FdClosed)?;
    if metadata.dev() != open.dev || metadata.ino() != open.ino {
        return Err(Lost::FdClosed);
    }
    if metadata.nlink() == 0 {
        return Err(Lost::Unlinked);
    }
    Ok(metadata.size())
}

/// Appends the batch to a file of `size` bytes. On a short write the torn
/// line is cut off again, so the file only ever holds whole lines; if that
/// fails, `torn` is set, and the next call first ends the torn line, so
/// that it stays one bad line instead of swallowing the next session.
/// Returns the lines written and the error, if any.
fn append_whole_lines(
    open: &mut OpenFile,
    mut size: u64,
    torn: &mut bool,
    batch: &Batch,
) -> (usize, Option<io::Error>) {
    if *torn {
        if let Err(error) = open.file.write_all(b"\n") {
            return (0, Some(error));
        }
        *torn = false;
        size += 1;
    }
    let mut written = 0;
    let error = loop {
        if written == batch.bytes.len() {
            return (batch.ends.len(), None);
        }
        match open.file.write(&batch.bytes[written..]) {
            Ok(0) => break io::Error::from(io::ErrorKind::WriteZero),
            Ok(n) => written += n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => break error,
        }
    };
    let (lines, bytes) = whole_lines(&batch.ends, written);
    if bytes < written && open.file.set_len(size + bytes as u64).is_err() {
        *torn = true;
    }
    (lines, Some(error))
}

/// How many other names are tried when `<program>-<pid>.jsonl` exists.
const FRESH_NAMES: u32 = 100;

/// Creates the directory (0700) if needed and a new session file (0600),
/// close-on-exec at a high fd number. The file is always new (O_EXCL) and
/// never reached through a symlink (O_NOFOLLOW): a file or link already at
/// the name (a pid reused, a link planted by another user, our own file
/// after a reopen) is left alone and `<program>-<pid>-<n>.jsonl` used.
fn create_session_file(wanted: &Path) -> io::Result<(File, PathBuf)> {
    if let Some(dir) = wanted.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let mut path = wanted.to_path_buf();
    for n in 1..=FRESH_NAMES {
        match OpenOptions::new()
            .append(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
        {
            Ok(file) => {
                let fd = koala_runtime::fds::relocate_high(file.into_raw_fd());
                // SAFETY: relocate_high returns an fd we own (the original or its dup).
                return Ok((unsafe { File::from_raw_fd(fd) }, path));
            }
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
                path = fresh_name(wanted, n);
            }
            Err(error) => return Err(error),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!("{} and {FRESH_NAMES} other names exist", wanted.display()),
    ))
}

/// `<program>-<pid>-<n>.jsonl` for `<program>-<pid>.jsonl`.
fn fresh_name(wanted: &Path, n: u32) -> PathBuf {
    let stem = wanted.file_stem().unwrap_or_default().to_string_lossy();
    wanted.with_file_name(format!("{stem}-{n}.jsonl"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_done_flag_wakes_its_waiter_at_once() {
        let done = std::sync::Arc::new(Done::default());
        let setter = done.clone();
        let started = Instant::now();
        let thread = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            setter.set();
        });
        assert!(done.wait_until(Instant::now() + Duration::from_secs(30)));
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "woken, not timed out"
        );
        thread.join().unwrap();
        assert!(done.wait_until(Instant::now()), "set stays set");
    }

    #[test]
    fn a_done_flag_never_set_waits_until_the_deadline_only() {
        let done = Done::default();
        let deadline = Instant::now() + Duration::from_millis(30);
        assert!(!done.wait_until(deadline));
        assert!(Instant::now() >= deadline);
        assert!(!done.wait_until(Instant::now() - Duration::from_millis(1)));
    }

    #[test]
    fn a_short_write_keeps_the_lines_whose_newline_was_written() {
        let ends = [10, 25, 40];
        assert_eq!(whole_lines(&ends, 0), (0, 0));
        assert_eq!(whole_lines(&ends, 9), (0, 0));
        assert_eq!(whole_lines(&ends, 10), (1, 10));
        assert_eq!(whole_lines(&ends, 24), (1, 10));
        assert_eq!(whole_lines(&ends, 25), (2, 25));
        assert_eq!(whole_lines(&ends, 40), (3, 40));
        assert_eq!(whole_lines(&[], 0), (0, 0));
    }

    #[test]
    fn fresh_names_keep_the_extension() {
        assert_eq!(
            fresh_name(Path::new("/r/python3-12.jsonl"), 2),
            Path::new("/r/python3-12-2.jsonl")
        );
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("koala-writer-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn session_files_are_new_private_files_never_reached_through_a_link() {
        let dir = temp_dir("create");
        let wanted = dir.join("sub/svc-7.jsonl");
        let (_, first) = create_session_file(&wanted).unwrap();
        assert_eq!(first, wanted);
        let mode = |p: &Path| fs::symlink_metadata(p).unwrap().mode() & 0o777;
        assert_eq!((mode(&first), mode(&dir.join("sub"))), (0o600, 0o700));
        // Taken: a fresh name, the existing file untouched.
        let (_, second) = create_session_file(&wanted).unwrap();
        assert_eq!(second, dir.join("sub/svc-7-1.jsonl"));
        // A link planted at the next names is not followed.
        let target = dir.join("target");
        fs::write(&target, "secret\n").unwrap();
        std::os::unix::fs::symlink(&target, dir.join("sub/svc-8.jsonl")).unwrap();
        let (mut file, third) = create_session_file(&dir.join("sub/svc-8.jsonl")).unwrap();
        assert_eq!(third, dir.join("sub/svc-8-1.jsonl"));
        file.write_all(b"line\n").unwrap();
        assert_eq!(fs::read_to_string(&target).unwrap(), "secret\n");
        fs::remove_dir_all(&dir).unwrap();
    }
}
