//! The automatic request-context helpers (`helpers/python`, `helpers/node`)
//! that `koala record` and `koala replay` load into the command by
//! themselves, so an asyncio or Node service needs no hint of its own
//! (`docs/helper-hints.md`). They do nothing where the library is absent.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The Python helper's directory (holds `sitecustomize.py`).
const PYTHON: &str = "python";
/// The Node helper, relative to the helpers' directory.
const NODE: &str = "node/koala-context.js";

/// The helpers' directory: `helpers/` next to the koala binary, in
/// `../share/koala/helpers` (an installed layout), or at the root of the
/// source tree the binary was built in (`target/release/koala`).
pub fn locate() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let bin = exe.parent()?;
    [
        bin.join("helpers"),
        bin.join("../share/koala/helpers"),
        bin.join("../../helpers"),
    ]
    .into_iter()
    .find(|dir| dir.join(PYTHON).join("sitecustomize.py").is_file())
    .and_then(|dir| dir.canonicalize().ok())
}

/// The variables that load the helpers in `dir`, each added to what this
/// process's environment already holds: PYTHONPATH (the Python helper's
/// directory first) and NODE_OPTIONS (`--require` the Node helper).
pub fn environment(dir: &Path) -> Vec<(&'static str, OsString)> {
    let mut vars = vec![(
        "PYTHONPATH",
        python_path(&dir.join(PYTHON), std::env::var_os("PYTHONPATH")),
    )];
    let node = dir.join(NODE);
    if node.is_file()
        && let Some(options) = node_options(&node, std::env::var_os("NODE_OPTIONS"))
    {
        vars.push(("NODE_OPTIONS", options));
    }
    vars
}

/// Adds the helpers' variables to `command`, when the helpers are found.
pub fn load_into(command: &mut Command) {
    if let Some(dir) = locate() {
        command.envs(environment(&dir));
    }
}

fn python_path(helper: &Path, existing: Option<OsString>) -> OsString {
    let mut value = OsString::from(helper);
    if let Some(existing) = existing.filter(|v| !v.is_empty()) {
        value.push(":");
        value.push(existing);
    }
    value
}

/// `--require <helper>` after the existing options; `None` when the path
/// cannot be written there (NODE_OPTIONS splits on spaces, quotes must
/// not appear in it).
fn node_options(helper: &Path, existing: Option<OsString>) -> Option<OsString> {
    let path = helper.to_str()?;
    if path.contains(['"', '\\']) {
        return None;
    }
    let mut value = existing
        .filter(|v| !v.is_empty())
        .map(|mut v| {
            v.push(" ");
            v
        })
        .unwrap_or_default();
    value.push(OsStr::new(&format!("--require \"{path}\"")));
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_python_helper_goes_first_on_pythonpath() {
        let helper = Path::new("/opt/koala/helpers/python");
        assert_eq!(python_path(helper, None), "/opt/koala/helpers/python");
        assert_eq!(
            python_path(helper, Some("/app/lib".into())),
            "/opt/koala/helpers/python:/app/lib"
        );
        assert_eq!(
            python_path(helper, Some("".into())),
            "/opt/koala/helpers/python"
        );
    }

    #[test]
    fn the_node_helper_is_required_after_the_existing_options() {
        let helper = Path::new("/opt/ko ala/koala-context.js");
        assert_eq!(
            node_options(helper, None).unwrap(),
            "--require \"/opt/ko ala/koala-context.js\""
        );
        assert_eq!(
            node_options(helper, Some("--max-old-space-size=64".into())).unwrap(),
            "--max-old-space-size=64 --require \"/opt/ko ala/koala-context.js\""
        );
        assert_eq!(node_options(Path::new("/a\"b.js"), None), None);
    }

    #[test]
    fn the_helpers_of_the_source_tree_are_found() {
        // The test binary lives in target/release/deps: two levels further.
        let tree = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../helpers");
        assert!(tree.join(PYTHON).join("sitecustomize.py").is_file());
    }
}
