//! Finding libkoala.so.

use std::path::{Path, PathBuf};

/// `--lib`, else `$KOALA_LIB`, else `libkoala.so` next to this binary.
pub fn locate(explicit: Option<&Path>) -> Result<PathBuf, String> {
    let candidate = match explicit {
        Some(path) => path.to_path_buf(),
        None => match std::env::var_os("KOALA_LIB") {
            Some(path) => PathBuf::from(path),
            None => std::env::current_exe()
                .map_err(|e| format!("cannot find this program's path: {e}"))?
                .with_file_name("libkoala.so"),
        },
    };
    if !candidate.is_file() {
        return Err(format!(
            "libkoala.so not found at {} (build it with `make build`, or pass --lib PATH)",
            candidate.display()
        ));
    }
    // LD_PRELOAD resolves relative paths against the child's working
    // directory: always hand it an absolute one.
    candidate
        .canonicalize()
        .map_err(|e| format!("{}: {e}", candidate.display()))
}
