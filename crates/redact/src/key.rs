//! A recording's redaction key and its file, `<dir>/.koala-redact-key`.
//!
//! The key is 128 random bits, written as 32 hex digits and a newline in a
//! 0600 file beside the session files, never in them. Every process of a
//! recording (nginx workers, forked children, later runs into the same
//! directory) uses the same key, so a secret has one token across the
//! recording. The file is created atomically: written under a name of its
//! own, then hard-linked to the final name, so a reader never sees it half
//! written, and a second process that loses the race reads the winner's.
//! A key file is used only if it is a regular file of this user that no
//! one else may read or write; any other is refused (an error), never
//! replaced: the recorder then redacts with a random key of its own.

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The key file's name in the sessions directory.
pub const KEY_FILE_NAME: &str = ".koala-redact-key";

#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Key {
    pub k0: u64,
    pub k1: u64,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never printed: a logged key would let tokens be checked.
        f.write_str("Key(..)")
    }
}

impl Key {
    /// 128 bits from the kernel's random source.
    pub fn random() -> io::Result<Key> {
        let mut bytes = [0u8; 16];
        fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
        Ok(Key::from_bytes(bytes))
    }

    fn from_bytes(bytes: [u8; 16]) -> Key {
        let (k0, k1) = bytes.split_at(8);
        Key {
            k0: u64::from_le_bytes(k0.try_into().unwrap_or_default()),
            k1: u64::from_le_bytes(k1.try_into().unwrap_or_default()),
        }
    }

    /// The file's text: 32 hex digits and a newline.
    pub fn to_text(self) -> String {
        format!("{:016x}{:016x}\n", self.k0, self.k1)
    }

    /// Parses the file's text.
    pub fn from_text(text: &str) -> Option<Key> {
        let text = text.trim();
        if text.len() != 32 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        Some(Key {
            k0: u64::from_str_radix(&text[..16], 16).ok()?,
            k1: u64::from_str_radix(&text[16..], 16).ok()?,
        })
    }
}

/// `<dir>/.koala-redact-key`.
pub fn key_path(dir: &Path) -> PathBuf {
    dir.join(KEY_FILE_NAME)
}

/// Reads the key at `path`: a regular file of ours that no one else may
/// read or write (another user's key, or one left readable, would let
/// tokens be checked or chosen), else an error.
pub fn read(path: &Path) -> io::Result<Key> {
    use std::os::unix::fs::MetadataExt;
    let mut text = String::new();
    // O_NONBLOCK: a FIFO planted at the path must not block the open.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    let metadata = file.metadata()?;
    // SAFETY: geteuid cannot fail.
    let ours = metadata.file_type().is_file()
        && metadata.uid() == unsafe { libc::geteuid() }
        && metadata.mode() & 0o077 == 0;
    if !ours {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is not a private key file of ours (a regular file of this user, mode 0600)",
                path.display()
            ),
        ));
    }
    file.take(256).read_to_string(&mut text)?;
    Key::from_text(&text).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is not a koala redaction key", path.display()),
        )
    })
}

/// The key of the recording in `dir`: read from its key file, or created
/// (the directory too, 0700) when there is none.
pub fn load_or_create(dir: &Path) -> io::Result<Key> {
    let path = key_path(dir);
    match read(&path) {
        Ok(key) => return Ok(key),
        Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
        Err(_) => {}
    }
    std::os::unix::fs::DirBuilderExt::mode(fs::DirBuilder::new().recursive(true), 0o700)
        .create(dir)?;
    let key = Key::random()?;
    let temp = dir.join(format!("{KEY_FILE_NAME}.{}", std::process::id()));
    let _ = fs::remove_file(&temp);
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&temp)
        .and_then(|mut file| file.write_all(key.to_text().as_bytes()));
    let linked = written.and_then(|()| fs::hard_link(&temp, &path));
    let _ = fs::remove_file(&temp);
    match linked {
        Ok(()) => Ok(key),
        // Another process made it first: use its key.
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => read(&path),
        Err(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn the_text_round_trips_and_bad_text_is_refused() {
        let key = Key {
            k0: 1,
            k1: u64::MAX,
        };
        assert_eq!(key.to_text(), "0000000000000001ffffffffffffffff\n");
        assert_eq!(Key::from_text(&key.to_text()), Some(key));
        assert_eq!(Key::from_text("abc"), None);
        assert_eq!(Key::from_text(&"g".repeat(32)), None);
        assert_eq!(format!("{key:?}"), "Key(..)");
    }

    #[test]
    fn the_file_is_created_private_once_and_read_back() {
        let dir = std::env::temp_dir().join(format!("koala-redact-key-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let first = load_or_create(&dir.join("rec")).unwrap();
        let second = load_or_create(&dir.join("rec")).unwrap();
        assert_eq!(first, second);
        let path = key_path(&dir.join("rec"));
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert_eq!(fs::metadata(dir.join("rec")).unwrap().mode() & 0o777, 0o700);
        assert_eq!(read(&path).unwrap(), first);
        let listed: Vec<_> = fs::read_dir(dir.join("rec")).unwrap().collect();
        assert_eq!(listed.len(), 1, "no temporary file is left");
        fs::write(&path, "garbage").unwrap();
        assert!(load_or_create(&dir.join("rec")).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_key_file_others_can_read_or_not_a_file_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("koala-redact-open-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let key = load_or_create(&dir).unwrap();
        let path = key_path(&dir);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let error = read(&path).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::PermissionDenied);
        assert!(load_or_create(&dir).is_err(), "not trusted, not replaced");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read(&path).unwrap(), key);
        fs::remove_file(&path).unwrap();
        fs::create_dir(&path).unwrap();
        assert_eq!(
            read(&path).unwrap_err().kind(),
            io::ErrorKind::PermissionDenied
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
