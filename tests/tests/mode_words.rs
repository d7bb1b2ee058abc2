//! KOALA_MODE, word by word: a library that names no mode (`off`,
//! `passive`, a typo) creates nothing anywhere — no `./koala-sessions`, no
//! log, no fallback log — and logs only where KOALA_LOG_FILE says; an
//! unknown word next to a known one is reported and the known mode kept.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::Stdio;

use koala_tests::*;

/// Every path under `dir`, recursively, sorted.
fn tree(dir: &Path) -> Vec<String> {
    let mut paths = Vec::new();
    for entry in fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        paths.push(path.display().to_string());
        if path.is_dir() {
            paths.extend(tree(&path));
        }
    }
    paths.sort();
    paths
}

/// The text of every file under `dir` whose name starts with `prefix`.
fn files_text(dir: &Path, prefix: &str) -> String {
    let Ok(entries) = fs::read_dir(dir) else {
        return String::new();
    };
    let mut text = String::new();
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(prefix) {
            text.push_str(&fs::read_to_string(entry.path()).unwrap());
        }
    }
    text
}

/// Runs `ls -A` in an empty directory under the library with `KOALA_MODE`
/// set to `mode`; returns what it printed, its cwd and its TMPDIR.
fn ls_under(dir: &TestDir, name: &str, mode: &str, log: Option<&Path>) -> Vec<u8> {
    let cwd = dir.join(format!("{name}-cwd"));
    let tmp = dir.join(format!("{name}-tmp"));
    fs::create_dir_all(&cwd).unwrap();
    fs::create_dir_all(&tmp).unwrap();
    let mut command = clean_command("ls");
    command
        .arg("-A")
        .current_dir(&cwd)
        .env("LD_PRELOAD", koala_lib())
        .env("KOALA_MODE", mode)
        .env("TMPDIR", &tmp)
        .stdin(Stdio::null());
    if let Some(log) = log {
        command.env("KOALA_LOG_FILE", log);
    }
    let output = command.output().expect("run ls");
    assert!(
        output.status.success(),
        "ls under KOALA_MODE={mode}: {output:?}"
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        "",
        "KOALA_MODE={mode}: nothing on stderr"
    );
    assert_eq!(
        tree(&cwd),
        Vec::<String>::new(),
        "KOALA_MODE={mode} created files in the cwd"
    );
    assert_eq!(
        tree(&tmp),
        Vec::<String>::new(),
        "KOALA_MODE={mode} created files in TMPDIR"
    );
    output.stdout
}

#[test]
fn an_inactive_library_creates_nothing() {
    let dir = TestDir::new("mode-inactive");
    for (name, mode) in [
        ("off", "off"),
        ("passive", "passive"),
        ("both", "OFF, passive"),
        ("typo", "recrod"),
    ] {
        // `ls` of an empty directory prints nothing: no koala-sessions.
        assert_bytes(&ls_under(&dir, name, mode, None), b"", mode);
    }
}

/// With no known word the library is off, and says so where told.
#[test]
fn a_mistyped_mode_is_logged_where_koala_log_file_says() {
    let dir = TestDir::new("mode-typo-log");
    let logs = dir.join("logs");
    assert_bytes(
        &ls_under(&dir, "typo", "recrod", Some(&logs.join("k.log"))),
        b"",
        "ls",
    );
    let log = files_text(&logs, "k.log");
    assert!(
        log.contains(
            r#" ERROR KOALA_MODE="recrod" ignored: unknown mode "recrod"; expected record, replay, record,replay or off; the library stays off"#
        ),
        "the log says why the library is off:\n{log}"
    );
}

/// `record,typo` records, and the default log (next to the sessions) says
/// which word was ignored.
#[test]
fn an_unknown_word_keeps_the_known_mode() {
    let dir = TestDir::new("mode-record-typo");
    let record = dir.join("record");
    let port = free_port();
    // One HTTP exchange, then a clean exit (which writes the session).
    let script = format!(
        "import socket\n\
         s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.bind(('127.0.0.1', {port})); s.listen()\n\
         c, _ = s.accept(); c.recv(65536)\n\
         c.sendall(b'HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\nok')\n\
         c.close()\n"
    );
    let mut service = Spec::new("service", python())
        .args(["-c", &script])
        .preload()
        .env("KOALA_MODE", "record,typo")
        .env("KOALA_RECORD_TO", record.display())
        .spawn(&dir);
    service.wait_for_port(port);
    let mut stream = connect(port);
    let request = b"GET /x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    stream.write_all(request).unwrap();
    let response = read_to_close(&mut stream);
    assert_bytes(
        &response,
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        "response",
    );
    let sessions = wait_for_sessions(&record, 1);
    assert_eq!(sessions.len(), 1, "{}", describe_dir(&record));
    let peer = stream.local_addr().unwrap().to_string();
    assert_exchange(
        &sessions[0].inbound,
        &peer,
        request,
        &response,
        &show(&sessions[0]),
    );
    service.stop();
    let log = files_text(&record, "koala.log");
    assert!(
        log.contains(
            r#" ERROR KOALA_MODE="record,typo": unknown mode "typo"; expected record, replay, record,replay or off ("typo" ignored); using record"#
        ),
        "the log names the ignored word:\n{log}"
    );
}
