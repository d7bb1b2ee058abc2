//! Following growing session files: complete lines only, and durable
//! progress per file.
//!
//! The recorder appends whole lines, but a reader may see the file in the
//! middle of a write: the bytes after the last newline are a torn line that
//! waits until its newline arrives. Progress is the offset after the last
//! line the stream confirmed; it is saved with a write to a temporary file
//! and a rename, so a crash leaves the old state or the new one, never a
//! mix. A crash between a confirmation and the save re-sends those lines,
//! which the stream's de-duplication window drops.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Progress in one file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Bytes of the file done with (shipped, or skipped as bad).
    pub offset: u64,
    /// The file's identity: a file replaced under the same name starts
    /// again from 0.
    pub dev: u64,
    pub ino: u64,
    /// Lines shipped from it.
    #[serde(default)]
    pub shipped: u64,
    /// Bad lines skipped in it.
    #[serde(default)]
    pub bad: u64,
}

/// Progress in every file followed, by path.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    /// Where the lines went (`nats://.../STREAM`): a state for another
    /// destination is not used.
    pub destination: String,
    pub files: BTreeMap<String, Progress>,
}

impl State {
    pub fn new(destination: &str) -> State {
        State {
            version: 1,
            destination: destination.to_string(),
            files: BTreeMap::new(),
        }
    }

    /// The saved state, or a new one when there is none.
    pub fn load(path: &Path, destination: &str) -> Result<State, String> {
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(State::new(destination)),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let state: State = serde_json::from_str(&text).map_err(|e| {
            format!(
                "{} is not a koala ship state ({e}); remove it to ship everything again",
                path.display()
            )
        })?;
        if state.destination != destination {
            return Err(format!(
                "{} records progress towards {}, not {destination}: give another --state FILE",
                path.display(),
                state.destination
            ));
        }
        Ok(state)
    }

    /// Saves atomically: a temporary file beside it, synced, renamed over it.
    pub fn save(&self, path: &Path) -> Result<(), String> {
        let temp = path.with_extension(format!("tmp-{}", std::process::id()));
        let text = serde_json::to_string_pretty(self).map_err(|e| e.to_string())?;
        let write = || -> io::Result<()> {
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&temp)?;
            file.write_all(text.as_bytes())?;
            file.write_all(b"\n")?;
            file.sync_all()?;
            fs::rename(&temp, path)?;
            if let Some(dir) = path.parent() {
                let dir = if dir.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    dir
                };
                File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&temp);
            format!("cannot save {}: {e}", path.display())
        })
    }

    /// The progress in `path`, reset when the file there is not the one
    /// recorded (replaced) or is shorter than the offset (truncated).
    pub fn progress(&mut self, path: &str, meta: &fs::Metadata) -> &mut Progress {
        let progress = self.files.entry(path.to_string()).or_default();
        if (progress.dev, progress.ino) != (meta.dev(), meta.ino()) || meta.len() < progress.offset
        {
            *progress = Progress {
                dev: meta.dev(),
                ino: meta.ino(),
                ..Progress::default()
            };
        }
        progress
    }
}

/// A complete line read from a file.
#[derive(Debug, PartialEq)]
pub struct Line {
    /// The line without its `\n` (nor a `\r` before it).
    pub bytes: Vec<u8>,
    /// The offset just after its newline: progress once it is done.
    pub end: u64,
}

/// What [`read_lines`] found after an offset.
#[derive(Debug, Default, PartialEq)]
pub struct Chunk {
    pub lines: Vec<Line>,
    /// Bytes after the last newline: a line still being written.
    pub torn: u64,
}

/// The complete lines of `file` from `offset`, at most about `max_bytes`
/// of them (always at least one whole line if there is one). Blank lines
/// are skipped (their bytes are still passed over).
pub fn read_lines(file: &mut File, offset: u64, max_bytes: usize) -> io::Result<Chunk> {
    file.seek(SeekFrom::Start(offset))?;
    let mut buffer = Vec::new();
    let mut limit = max_bytes.max(1 << 16);
    loop {
        let want = limit - buffer.len();
        let read = Read::by_ref(file)
            .take(want as u64)
            .read_to_end(&mut buffer)?;
        let full = buffer.len() >= limit;
        let has_newline = buffer.contains(&b'\n');
        if !full || has_newline {
            break;
        }
        // One line longer than the limit: read on until its end.
        if read == 0 {
            break;
        }
        limit *= 2;
    }
    Ok(split(&buffer, offset))
}

/// Splits `buffer` (read at `offset`) into complete lines and a torn tail.
pub fn split(buffer: &[u8], offset: u64) -> Chunk {
    let mut chunk = Chunk::default();
    let mut start = 0;
    while let Some(at) = buffer[start..].iter().position(|&b| b == b'\n') {
        let end = start + at;
        let mut line = &buffer[start..end];
        line = line.strip_suffix(b"\r").unwrap_or(line);
        if !line.iter().all(u8::is_ascii_whitespace) {
            chunk.lines.push(Line {
                bytes: line.to_vec(),
                end: offset + end as u64 + 1,
            });
        } else if let Some(last) = chunk.lines.last_mut() {
            // A blank line is done with along with the line before it.
            last.end = offset + end as u64 + 1;
        } else {
            chunk.lines.push(Line {
                bytes: Vec::new(),
                end: offset + end as u64 + 1,
            });
        }
        start = end + 1;
    }
    chunk.torn = (buffer.len() - start) as u64;
    chunk
}

/// The pid in a session file's name (`<program>-<pid>.jsonl`,
/// `<program>-<pid>-<n>.jsonl`).
pub fn writer_pid(name: &str) -> Option<u32> {
    let stem = name.strip_suffix(".jsonl")?;
    let parts: Vec<&str> = stem.rsplit('-').collect();
    // Last token a pid, or the one before it (with a -<n> suffix).
    let numeric = |s: &&str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match parts.as_slice() {
        [n, pid, _, ..] if numeric(n) && numeric(pid) => pid.parse().ok(),
        [pid, _, ..] if numeric(pid) => pid.parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complete_lines_and_a_torn_tail() {
        let chunk = split(b"{\"a\":1}\n\n{\"b\":2}\r\n{\"c\":", 100);
        assert_eq!(
            chunk.lines,
            vec![
                Line {
                    bytes: b"{\"a\":1}".to_vec(),
                    end: 109
                },
                Line {
                    bytes: b"{\"b\":2}".to_vec(),
                    end: 118
                },
            ]
        );
        assert_eq!(chunk.torn, 5);
        // Only blank lines: passed over as one empty line.
        let chunk = split(b"\n \n", 0);
        assert_eq!(chunk.lines.len(), 1);
        assert!(chunk.lines[0].bytes.is_empty());
        assert_eq!(chunk.lines[0].end, 3);
        assert_eq!(split(b"", 7), Chunk::default());
    }

    #[test]
    fn reading_from_an_offset_and_long_lines() {
        let dir = std::env::temp_dir().join(format!("koala-ship-follow-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.jsonl");
        let long = "x".repeat(200_000);
        fs::write(&path, format!("one\n{long}\nthree")).unwrap();
        let mut file = File::open(&path).unwrap();
        let chunk = read_lines(&mut file, 0, 10).unwrap();
        assert_eq!(chunk.lines.len(), 1, "up to the limit");
        let chunk = read_lines(&mut file, 4, 10).unwrap();
        assert_eq!(
            chunk.lines.len(),
            1,
            "a line longer than the limit is read whole"
        );
        assert_eq!(chunk.lines[0].bytes.len(), 200_000);
        assert_eq!(chunk.lines[0].end, 4 + 200_001);
        assert_eq!(chunk.torn, 5);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn state_is_saved_atomically_and_checked() {
        let dir = std::env::temp_dir().join(format!("koala-ship-state-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.json");
        let mut state = State::load(&path, "nats://h:1/S").unwrap();
        assert!(state.files.is_empty());
        let meta = fs::metadata(&dir).unwrap();
        state.progress("a.jsonl", &meta).offset = 0;
        state.progress("a.jsonl", &meta).shipped = 3;
        state.save(&path).unwrap();
        assert_eq!(State::load(&path, "nats://h:1/S").unwrap(), state);
        let e = State::load(&path, "nats://h:1/T").unwrap_err();
        assert!(e.contains("--state"), "{e}");
        let leftovers: Vec<_> = fs::read_dir(&dir).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn pids_from_file_names() {
        assert_eq!(writer_pid("python3-1234.jsonl"), Some(1234));
        assert_eq!(writer_pid("php-fpm8.2-77-2.jsonl"), Some(77));
        assert_eq!(writer_pid("notes.jsonl"), None);
        assert_eq!(writer_pid("x-12.txt"), None);
    }
}
