//! The log file: `<path>.YYYY-MM-DD-HH`, a new one every hour (UTC), shared
//! by the processes of a recording (they append to it).
//!
//! Every line first checks that the fd is still the file the library opened
//! (fstat: same device and inode) and that the file still has a name: a
//! host that closes all its fds may have handed the number to another file
//! — the session file, reopened — and a deleted directory takes the log
//! with it. Either way the file is opened again, so a log line never lands
//! in another file.
//!
//! Files are created 0600 with O_EXCL|O_NOFOLLOW in a directory created
//! 0700; an existing file is appended to only if it is a private regular
//! file of ours with one name. Anything else at the name (a planted link, a
//! file of another user) is left alone and `<name>.<n>` is used.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{FromRawFd, IntoRawFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::subscriber::civil_from_days;

/// How many other names are tried when the hour's name is unusable.
const FRESH_NAMES: u32 = 100;

pub(crate) struct LogFile {
    /// `KOALA_LOG_FILE` (or the fallback): the name before the hour suffix.
    path: PathBuf,
    open: Option<Open>,
}

struct Open {
    file: File,
    hour: u64,
    dev: u64,
    ino: u64,
}

impl LogFile {
    /// Opens the current hour's file now, so that an unusable directory is
    /// known at once.
    pub(crate) fn open(path: &Path) -> io::Result<LogFile> {
        let hour = current_hour();
        let open = open_hour(path, hour)?;
        Ok(LogFile {
            path: path.to_path_buf(),
            open: Some(open),
        })
    }

    /// Appends a line; a line that cannot be written is dropped.
    pub(crate) fn write_line(&mut self, line: &[u8]) {
        let hour = current_hour();
        if let Some(open) = self.open.take() {
            match open.check() {
                Usable::Yes if open.hour == hour => self.open = Some(open),
                Usable::Yes | Usable::Unlinked => drop(open),
                // Not ours any more: forget the number without closing it.
                Usable::NotOurs => {
                    let _ = open.file.into_raw_fd();
                }
            }
        }
        if self.open.is_none() {
            self.open = open_hour(&self.path, hour).ok();
        }
        if let Some(open) = &mut self.open {
            let _ = open.file.write_all(line);
        }
    }
}

enum Usable {
    Yes,
    /// The fd was closed, or now names another file.
    NotOurs,
    /// Ours, but deleted.
    Unlinked,
}

impl Open {
    fn check(&self) -> Usable {
        match self.file.metadata() {
            Ok(m) if m.dev() == self.dev && m.ino() == self.ino => {
                if m.nlink() == 0 {
                    Usable::Unlinked
                } else {
                    Usable::Yes
                }
            }
            _ => Usable::NotOurs,
        }
    }
}

fn current_hour() -> u64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH);
    now.map_or(0, |d| d.as_secs() / 3600)
}

/// `YYYY-MM-DD-HH` of an hour count since the epoch.
fn hour_suffix(hour: u64) -> String {
    let (year, month, day) = civil_from_days((hour / 24) as i64);
    format!("{year:04}-{month:02}-{day:02}-{:02}", hour % 24)
}

/// `<path>.<hour suffix>`, then `<path>.<hour suffix>.<n>` while a name is
/// unusable.
fn open_hour(path: &Path, hour: u64) -> io::Result<Open> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other("KOALA_LOG_FILE names a directory"))?
        .to_string_lossy()
        .into_owned();
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(".".as_ref());
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let base = format!("{name}.{}", hour_suffix(hour));
    let mut last_error = None;
    for n in 0..=FRESH_NAMES {
        let candidate = if n == 0 {
            dir.join(&base)
        } else {
            dir.join(format!("{base}.{n}"))
        };
        match open_private(&candidate) {
            Ok(file) => {
                let metadata = file.metadata()?;
                return Ok(Open {
                    file,
                    hour,
                    dev: metadata.dev(),
                    ino: metadata.ino(),
                });
            }
            // Something else is at that name: try the next one.
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => last_error = Some(error),
            // The directory itself is unusable: no other name will do.
            Err(error) => return Err(error),
        }
    }
    Err(last_error.unwrap_or_else(|| io::Error::other("no usable log file name")))
}

/// A new file (0600), or an existing private regular file of ours with one
/// name; never through a link. Close-on-exec, at a high fd number. Anything
/// else at the name is an `AlreadyExists` error.
fn open_private(path: &Path) -> io::Result<File> {
    let options = |create: bool| {
        let mut options = OpenOptions::new();
        options
            .append(true)
            .create_new(create)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC);
        options
    };
    let file = match options(true).open(path) {
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
            // A link (ELOOP), another user's file (EACCES), anything not
            // ours: not a reason to give up on the directory.
            let taken = |why: &str| io::Error::new(io::ErrorKind::AlreadyExists, why.to_string());
            let file = options(false)
                .open(path)
                .map_err(|error| taken(&error.to_string()))?;
            let metadata = file.metadata()?;
            // SAFETY: geteuid cannot fail.
            let ours = metadata.file_type().is_file()
                && metadata.uid() == unsafe { libc::geteuid() }
                && metadata.nlink() == 1
                && metadata.mode() & 0o077 == 0;
            if !ours {
                return Err(taken("not a private log file of ours"));
            }
            file
        }
        result => result?,
    };
    let fd = koala_runtime::fds::relocate_high(file.into_raw_fd());
    // SAFETY: relocate_high returns an fd we own (the original or its dup).
    Ok(unsafe { File::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("koala-log-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn mode(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().mode() & 0o777
    }

    #[test]
    fn hours_are_named_in_utc() {
        assert_eq!(hour_suffix(0), "1970-01-01-00");
        // 2026-11-21T13:23:59Z
        assert_eq!(hour_suffix(1_795_267_439 / 3600), "2026-11-21-13");
    }

    #[test]
    fn files_are_private_and_shared_by_appending() {
        let dir = temp_dir("private");
        let path = dir.join("logs/koala.log");
        let name = dir.join(format!("logs/koala.log.{}", hour_suffix(current_hour())));
        let mut first = LogFile::open(&path).unwrap();
        let mut second = LogFile::open(&path).unwrap();
        first.write_line(b"one\n");
        second.write_line(b"two\n");
        assert_eq!(fs::read_to_string(&name).unwrap(), "one\ntwo\n");
        assert_eq!((mode(&name), mode(&dir.join("logs"))), (0o600, 0o700));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_planted_link_or_a_foreign_file_is_left_alone() {
        let dir = temp_dir("link");
        fs::create_dir_all(&dir).unwrap();
        let hour = current_hour();
        let path = dir.join("koala.log");
        let name = |suffix: &str| dir.join(format!("koala.log.{}{suffix}", hour_suffix(hour)));
        let target = dir.join("target");
        fs::write(&target, "secret\n").unwrap();
        std::os::unix::fs::symlink(&target, name("")).unwrap();
        // A readable file (not created by koala) at the next name.
        fs::write(name(".1"), "other\n").unwrap();
        fs::set_permissions(
            name(".1"),
            std::os::unix::fs::PermissionsExt::from_mode(0o644),
        )
        .unwrap();
        // A private file of another user (when the test can make one).
        fs::write(name(".2"), "nobody's\n").unwrap();
        fs::set_permissions(
            name(".2"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        let c_path = std::ffi::CString::new(name(".2").into_os_string().into_encoded_bytes());
        // SAFETY: a valid C string; chown only changes the test's file.
        let foreign = unsafe { libc::chown(c_path.unwrap().as_ptr(), 65534, 65534) } == 0;
        let mut log = LogFile::open(&path).unwrap();
        log.write_line(b"line\n");
        assert_eq!(fs::read_to_string(&target).unwrap(), "secret\n");
        assert_eq!(fs::read_to_string(name(".1")).unwrap(), "other\n");
        let used = if foreign {
            assert_eq!(fs::read_to_string(name(".2")).unwrap(), "nobody's\n");
            name(".3")
        } else {
            // Not root: the file stayed ours, private, so it is shared.
            assert_eq!(fs::read_to_string(name(".2")).unwrap(), "nobody's\nline\n");
            name(".2")
        };
        assert_eq!(
            fs::read_to_string(&used).unwrap().lines().last(),
            Some("line")
        );
        assert_eq!(mode(&used), 0o600);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_closed_fd_or_a_deleted_file_is_reopened_never_written_through() {
        let dir = temp_dir("reopen");
        let path = dir.join("koala.log");
        let name = dir.join(format!("koala.log.{}", hour_suffix(current_hour())));
        let mut log = LogFile::open(&path).unwrap();
        log.write_line(b"one\n");
        // The host closes the fd and the number goes to another file.
        let fd = log.open.as_ref().unwrap().file.as_raw_fd();
        let other = dir.join("other.jsonl");
        let other_file = File::create(&other).unwrap();
        // SAFETY: test-owned fds; dup2 replaces the log's number.
        unsafe { libc::dup2(other_file.as_raw_fd(), fd) };
        log.write_line(b"two\n");
        assert_eq!(
            fs::read_to_string(&other).unwrap(),
            "",
            "nothing lands in another file"
        );
        assert_eq!(fs::read_to_string(&name).unwrap(), "one\ntwo\n");
        // SAFETY: the number is the dup of other_file now, ours to close.
        unsafe { libc::close(fd) };
        // The directory deleted: recreated, with a new file.
        fs::remove_dir_all(&dir).unwrap();
        log.write_line(b"three\n");
        assert_eq!(fs::read_to_string(&name).unwrap(), "three\n");
        assert_eq!(mode(&dir), 0o700);
        fs::remove_dir_all(&dir).unwrap();
    }
}
