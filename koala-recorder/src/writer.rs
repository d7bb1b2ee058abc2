//! The internal thread that writes finished sessions to this process's
//! session file, and closes idle sessions.
//!
//! Host threads leave finished sessions in the recorder's outbox; this
//! thread wakes every few milliseconds (or when poked at exit), swaps the
//! outbox out, writes in batches, and flushes at least every second.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
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
    loop {
        std::thread::park_timeout(POLL);
        let sweep = last_sweep.elapsed() >= IDLE_SWEEP;
        if sweep {
            last_sweep = Instant::now();
        }
        let Taken { flushes } = recorder.take_batch(sweep, &mut sessions, &mut spent);
        for mut session in sessions.drain(..) {
            session.write_json_line(&recorder.identity, &mut batch.bytes);
            session.take_buffers(&mut spent);
            batch.lines += 1;
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
            done.store(true, Ordering::Release);
        }
    }
}

/// Session lines waiting to be written together.
#[derive(Default)]
struct Batch {
    bytes: Vec<u8>,
    lines: u64,
}

/// The session file, opened on first use, re-opened if the host closed or
/// replaced its fd behind the library's back.
struct SessionFile {
    path: PathBuf,
    open: Option<(File, u64, u64)>,
}

impl SessionFile {
    fn new(path: PathBuf) -> Self {
        SessionFile { path, open: None }
    }

    fn write_batch(&mut self, recorder: &Recorder, batch: &mut Batch) {
        if batch.bytes.is_empty() {
            return;
        }
        let lines = std::mem::take(&mut batch.lines);
        let result = self.file().and_then(|f| f.write_all(&batch.bytes));
        match result {
            Ok(()) => recorder
                .counters
                .written
                .fetch_add(lines, Ordering::Relaxed),
            Err(error) => {
                tracing::error!(path = %self.path.display(), %error, lines, "cannot write sessions; they are lost");
                recorder
                    .counters
                    .write_errors
                    .fetch_add(lines, Ordering::Relaxed)
            }
        };
        batch.bytes.clear();
    }

    fn file(&mut self) -> io::Result<&mut File> {
        if let Some((file, dev, ino)) = &self.open {
            let still_ours = fs::metadata(format!("/proc/self/fd/{}", file.as_raw_fd()))
                .map(|m| m.dev() == *dev && m.ino() == *ino)
                .unwrap_or(false);
            if !still_ours {
                // The host closed our fd, and the number may now be one of
                // its own: forget it without closing.
                let (file, _, _) = self.open.take().expect("checked above");
                let _ = file.into_raw_fd();
                tracing::warn!(path = %self.path.display(), "session file fd was closed by the host; reopening");
            }
        }
        if self.open.is_none() {
            let file = open_session_file(&self.path)?;
            let metadata = file.metadata()?;
            self.open = Some((file, metadata.dev(), metadata.ino()));
        }
        Ok(&mut self.open.as_mut().expect("opened above").0)
    }
}

/// Creates the directory (0700) if needed and opens the file for appending
/// (0600), close-on-exec at a high fd number.
fn open_session_file(path: &Path) -> io::Result<File> {
    if let Some(dir) = path.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    let fd = koala_runtime::fds::relocate_high(file.into_raw_fd());
    // SAFETY: relocate_high returns an fd we own (the original or its dup).
    Ok(unsafe { File::from_raw_fd(fd) })
}
