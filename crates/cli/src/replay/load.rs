//! Finding the sessions to replay.
//!
//! Every line of every session file becomes an [`Item`]: a session to
//! replay, a background record, or a bad line. Payloads are not kept in
//! memory: an item remembers where its line is, and the worker that replays
//! it reads the line again ([`Loaded::read_line`]), so a directory of
//! recordings much larger than memory can be replayed.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use koala_session::{Session, read_session_line, session_files};

/// One non-blank line of a session file.
#[derive(Debug)]
pub struct Item {
    /// Index into [`Loaded::files`].
    pub file: usize,
    /// 1-based line number.
    pub line: usize,
    /// Where the line starts in the file, and its length without the newline.
    pub offset: u64,
    pub len: usize,
    pub kind: ItemKind,
}

#[derive(Debug, PartialEq)]
pub enum ItemKind {
    /// A session to replay: its id and the recorded `inbound.local`.
    Session { id: String, local: String },
    /// A `kind: background` record: not replayed, loaded as the pool for
    /// start-up traffic.
    Background,
    /// A line that is not a valid session.
    Bad(String),
}

pub struct Loaded {
    pub files: Vec<PathBuf>,
    handles: Vec<File>,
    pub items: Vec<Item>,
}

impl Loaded {
    /// Expands `paths` (files and directories of `.jsonl` files) and reads
    /// every line. Only a file that cannot be opened or read is an error; a
    /// bad line becomes an [`ItemKind::Bad`] item.
    pub fn read(paths: &[PathBuf]) -> Result<Loaded, String> {
        let files = session_files(paths).map_err(|e| e.to_string())?;
        let mut handles = Vec::with_capacity(files.len());
        let mut items = Vec::new();
        for (index, path) in files.iter().enumerate() {
            let file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
            read_items(index, path, &file, &mut items)?;
            handles.push(file);
        }
        Ok(Loaded {
            files,
            handles,
            items,
        })
    }

    /// Lines read from elsewhere (a stream), kept in `file` (a private
    /// temporary file, already unlinked): each line's `line` number is
    /// its position in the source (the stream sequence), and `name` (the
    /// source's URL) stands for the file in locations and reports.
    pub fn from_lines(name: PathBuf, file: File, lines: &[(u64, u64, usize)]) -> Loaded {
        let items = lines
            .iter()
            .map(|&(seq, offset, len)| {
                let mut buffer = vec![0; len];
                let kind = match file.read_exact_at(&mut buffer, offset) {
                    Ok(()) => classify(&buffer),
                    Err(e) => ItemKind::Bad(format!("cannot read it back: {e}")),
                };
                Item {
                    file: 0,
                    line: seq as usize,
                    offset,
                    len,
                    kind,
                }
            })
            .collect();
        Loaded {
            files: vec![name],
            handles: vec![file],
            items,
        }
    }

    /// The raw bytes of an item's line, as in the file (no newline).
    pub fn read_line(&self, item: &Item) -> std::io::Result<Vec<u8>> {
        let mut buffer = vec![0; item.len];
        self.handles[item.file].read_exact_at(&mut buffer, item.offset)?;
        Ok(buffer)
    }

    /// `file:line` of an item.
    pub fn location(&self, item: &Item) -> String {
        format!("{}:{}", self.files[item.file].display(), item.line)
    }

    pub fn sessions(&self) -> impl Iterator<Item = (usize, &Item)> {
        self.items
            .iter()
            .enumerate()
            .filter(|(_, item)| matches!(item.kind, ItemKind::Session { .. }))
    }

    pub fn background(&self) -> impl Iterator<Item = &Item> {
        self.items
            .iter()
            .filter(|item| item.kind == ItemKind::Background)
    }

    pub fn session_count(&self) -> usize {
        self.sessions().count()
    }

    pub fn bad_count(&self) -> usize {
        self.items
            .iter()
            .filter(|item| matches!(item.kind, ItemKind::Bad(_)))
            .count()
    }

    /// The distinct recorded `inbound.local` addresses of the sessions.
    pub fn recorded_locals(&self) -> BTreeSet<&str> {
        self.items
            .iter()
            .filter_map(|item| match &item.kind {
                ItemKind::Session { local, .. } => Some(local.as_str()),
                _ => None,
            })
            .collect()
    }
}

fn read_items(index: usize, path: &Path, file: &File, items: &mut Vec<Item>) -> Result<(), String> {
    let mut reader = BufReader::with_capacity(1 << 16, file);
    let mut buffer = Vec::new();
    let mut offset = 0u64;
    let mut number = 0;
    loop {
        buffer.clear();
        let read = reader
            .read_until(b'\n', &mut buffer)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if read == 0 {
            return Ok(());
        }
        number += 1;
        let start = offset;
        offset += read as u64;
        let mut line = buffer.as_slice();
        line = line.strip_suffix(b"\n").unwrap_or(line);
        line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        items.push(Item {
            file: index,
            line: number,
            offset: start,
            len: line.len(),
            kind: classify(line),
        });
    }
}

/// A line as read from a session file, parsed: UTF-8, then a session.
pub fn parse_line(line: &[u8]) -> Result<Session, String> {
    let text = std::str::from_utf8(line).map_err(|e| format!("not valid UTF-8: {e}"))?;
    read_session_line(text)
}

fn classify(line: &[u8]) -> ItemKind {
    match parse_line(line) {
        Ok(session) if session.is_background() => ItemKind::Background,
        Ok(session) => ItemKind::Session {
            id: session.id,
            local: session.inbound.local,
        },
        Err(message) => ItemKind::Bad(message),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use koala_session::{Exchange, FORMAT_VERSION, Kind, Payload, Session};

    pub fn session(id: &str, local: &str, kind: Kind) -> Session {
        Session {
            koala: FORMAT_VERSION,
            kind,
            id: id.into(),
            pid: 1,
            tid: 1,
            program: "svc".into(),
            end: None,
            inbound: Exchange {
                local: local.into(),
                peer: "127.0.0.1:40000".into(),
                request: Payload::from("GET / HTTP/1.1\r\n\r\n"),
                response: Payload::from("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
                ..Exchange::default()
            },
            calls: Vec::new(),
            ..Session::default()
        }
    }

    pub fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "koala-cli-{name}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn sessions_background_and_bad_lines() {
        let dir = temp_dir("load");
        let a = session("a-1", "127.0.0.1:8080", Kind::Session).to_json_line();
        let bg = session("bg-1", "", Kind::Background).to_json_line();
        let b = session("b-2", "127.0.0.1:8081", Kind::Session).to_json_line();
        std::fs::write(
            dir.join("one.jsonl"),
            format!("{a}\r\n\n{bg}\n{{broken\n   \n{b}"),
        )
        .unwrap();
        std::fs::write(dir.join("two.jsonl"), [b"\xff\xfe\n".as_slice()].concat()).unwrap();
        std::fs::write(dir.join("notes.txt"), "not a session").unwrap();

        let loaded = Loaded::read(std::slice::from_ref(&dir)).unwrap();
        assert_eq!(loaded.files.len(), 2, "only .jsonl files of a directory");
        assert_eq!(loaded.items.len(), 5);
        assert_eq!(loaded.session_count(), 2);
        assert_eq!(loaded.bad_count(), 2);
        assert_eq!(loaded.background().count(), 1);

        let lines: Vec<usize> = loaded.items.iter().map(|item| item.line).collect();
        assert_eq!(lines, vec![1, 3, 4, 6, 1]);
        assert!(
            matches!(&loaded.items[2].kind, ItemKind::Bad(m) if m.contains("key must be a string"))
        );
        assert!(matches!(&loaded.items[4].kind, ItemKind::Bad(m) if m.contains("UTF-8")));
        assert_eq!(
            loaded.location(&loaded.items[2]),
            format!("{}:4", dir.join("one.jsonl").display())
        );

        // Lines are read back exactly, without their line end.
        assert_eq!(loaded.read_line(&loaded.items[0]).unwrap(), a.as_bytes());
        assert_eq!(loaded.read_line(&loaded.items[1]).unwrap(), bg.as_bytes());
        assert_eq!(loaded.read_line(&loaded.items[3]).unwrap(), b.as_bytes());
        assert_eq!(
            loaded.recorded_locals().into_iter().collect::<Vec<_>>(),
            vec!["127.0.0.1:8080", "127.0.0.1:8081"]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_path_is_an_error() {
        let error = Loaded::read(&[PathBuf::from("/nonexistent/koala/sessions")])
            .err()
            .unwrap();
        assert!(error.contains("/nonexistent/koala/sessions"), "{error}");
    }
}
