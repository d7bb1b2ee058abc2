//! Finding libkoala.so and loading it into a command.

use std::ffi::OsString;
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

/// The LD_PRELOAD value for a child: the library first, then what this
/// process's LD_PRELOAD already held.
pub fn preload(lib: &Path) -> OsString {
    preload_before(lib, std::env::var_os("LD_PRELOAD"))
}

fn preload_before(lib: &Path, existing: Option<OsString>) -> OsString {
    let mut value = OsString::from(lib);
    if let Some(existing) = existing.filter(|v| !v.is_empty()) {
        value.push(" ");
        value.push(existing);
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_library_goes_first_in_ld_preload() {
        let lib = Path::new("/opt/koala/libkoala.so");
        assert_eq!(
            preload_before(lib, Some("/usr/lib/libother.so".into())),
            "/opt/koala/libkoala.so /usr/lib/libother.so"
        );
        assert_eq!(
            preload_before(lib, Some("".into())),
            "/opt/koala/libkoala.so"
        );
        assert_eq!(preload_before(lib, None), "/opt/koala/libkoala.so");
        assert!(
            preload(lib)
                .to_str()
                .unwrap()
                .starts_with("/opt/koala/libkoala.so")
        );
    }
}
