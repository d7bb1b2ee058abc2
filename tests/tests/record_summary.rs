//! `koala record` ends with a summary on stderr: sessions written, dropped
//! and lost, in which files — or why none: an unusable record directory
//! (the library then logs to its per-user fallback, which the summary
//! reads), a statically linked program (named before it starts), nothing
//! connected. It stays in front of the command, passing signals on, and
//! exits with the command's code.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use koala_tests::replay::koala_bin;
use koala_tests::*;

/// `koala record --to DIR -- CMD...`, with `TMPDIR` (where the fallback
/// log goes) inside the test's directory.
fn koala_record(dir: &TestDir, to: &Path, command: &[&str]) -> Program {
    let tmp = dir.join("tmp");
    fs::create_dir_all(&tmp).unwrap();
    Spec::new("koala", koala_bin())
        .args(["record", "--lib"])
        .arg(koala_lib().display())
        .arg("--to")
        .arg(to.display())
        .arg("--")
        .args(command)
        .env("TMPDIR", tmp.display())
        .spawn(dir)
}

/// A Python HTTP server answering `count` connections (0: until SIGTERM,
/// which it takes as a clean exit), one request each.
fn server_script(port: u16, count: u32) -> String {
    format!(
        "import signal, socket, sys\n\
         signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n\
         s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.bind(('127.0.0.1', {port})); s.listen()\n\
         served = 0\n\
         while {count} == 0 or served < {count}:\n\
         \x20   c, _ = s.accept(); c.recv(65536)\n\
         \x20   c.sendall(b'HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\nok')\n\
         \x20   c.close(); served += 1\n"
    )
}

fn exchange(port: u16, path: &str) {
    let mut stream = connect(port);
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    assert_bytes(
        &read_to_close(&mut stream),
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        "response",
    );
}

/// The `.jsonl` files of `dir`.
fn jsonl_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".jsonl"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// SIGTERM to koala alone (not its process group) reaches the service,
/// which exits cleanly; the summary names the file and its sessions.
#[test]
fn the_summary_counts_the_sessions_of_each_file() {
    let dir = TestDir::new("record-summary");
    let record = dir.join("record");
    let port = free_port();
    let script = server_script(port, 0);
    let python = python().display().to_string();
    let mut koala = koala_record(&dir, &record, &[&python, "-c", &script]);
    koala.wait_for_port(port);
    exchange(port, "/a");
    exchange(port, "/b");
    wait_for_sessions(&record, 2);
    // SAFETY: signalling the child we started.
    unsafe { libc::kill(koala.pid() as i32, libc::SIGTERM) };
    let status = koala.wait_for_exit(Duration::from_secs(30));
    assert!(status.success(), "{status}\n{}", koala.output_report());
    let files = jsonl_files(&record);
    assert_eq!(files.len(), 1, "{}", describe_dir(&record));
    assert_eq!(read_sessions(&record).len(), 2);
    assert_eq!(
        koala.stderr(),
        format!(
            "koala record: 2 sessions written, 0 dropped, 0 lost\n\
             koala record:   {}: 2 sessions\n",
            record.join(&files[0]).display()
        ),
        "{}",
        koala.output_report()
    );
}

/// The record directory is below a regular file: every session is lost.
/// The library's log, which would live there too, goes to the fallback
/// `$TMPDIR/koala-<uid>/`, and the summary says all of it.
#[test]
fn an_unusable_record_directory_is_reported() {
    let dir = TestDir::new("record-unusable");
    fs::write(dir.join("afile"), b"").unwrap();
    let record = dir.join("afile/sub");
    let port = free_port();
    let script = server_script(port, 1);
    let python = python().display().to_string();
    let mut koala = koala_record(&dir, &record, &[&python, "-c", &script]);
    koala.wait_for_port(port);
    exchange(port, "/lost");
    let status = koala.wait_for_exit(Duration::from_secs(30));
    assert!(status.success(), "{status}\n{}", koala.output_report());

    let stderr = koala.stderr();
    let lines: Vec<&str> = stderr.lines().collect();
    let record = record.display().to_string();
    // SAFETY: getuid cannot fail.
    let fallback = dir.join(format!("tmp/koala-{}", unsafe { libc::getuid() }));
    assert_eq!(lines.len(), 5, "{stderr}");
    assert_eq!(
        lines[0], "koala record: 0 sessions written, 0 dropped, 1 lost",
        "{stderr}"
    );
    let lost = lines[1]
        .strip_prefix(&format!("koala record:   lost: cannot write {record}/"))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(
        lost.ends_with(".jsonl: Not a directory (os error 20)"),
        "{stderr}"
    );
    assert_eq!(
        lines[2],
        format!("koala record:   why none: {record}: Not a directory (os error 20)"),
        "{stderr}"
    );
    assert_eq!(
        lines[3],
        format!("koala record:   why none: sessions could not be written to {record} (above)"),
        "{stderr}"
    );
    let log = lines[4]
        .strip_prefix("koala record:   log: ")
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(
        log.starts_with(&format!("{}/koala.log.", fallback.display())),
        "{stderr}"
    );
    let text = fs::read_to_string(log).unwrap();
    assert!(
        text.contains(&format!(
            " ERROR cannot open the log file; logging here instead log={record}/koala.log error=Not a directory (os error 20)"
        )),
        "{text}"
    );
}

/// A static binary is named before it starts (LD_PRELOAD cannot load
/// the library into it); its exit code passes through.
#[test]
fn a_static_program_is_named_before_it_starts() {
    let dir = TestDir::new("record-static");
    let source = dir.join("exit3.c");
    fs::write(&source, "int main(void) { return 3; }\n").unwrap();
    let program = dir.join("exit3");
    compile_c(&source, &["-static"], &program);
    let program = program.display().to_string();
    let mut koala = koala_record(&dir, &dir.join("record"), &[&program]);
    let status = koala.wait_for_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(3), "{}", koala.output_report());
    let blind = "is statically linked: the dynamic loader never runs, so LD_PRELOAD cannot load libkoala.so into it";
    assert_eq!(
        koala.stderr(),
        format!(
            "koala record: warning: {program} {blind}; nothing will be recorded\n\
             koala record: 0 sessions written, 0 dropped, 0 lost\n\
             koala record:   why none: {program} {blind}\n"
        )
    );
}

/// A command that never handles a connection records nothing, and says so.
#[test]
fn nothing_connected_is_said() {
    let dir = TestDir::new("record-nothing");
    let python = python().display().to_string();
    let mut koala = koala_record(&dir, &dir.join("record"), &[&python, "-c", "pass"]);
    let status = koala.wait_for_exit(Duration::from_secs(30));
    assert!(status.success(), "{}", koala.output_report());
    assert_eq!(
        koala.stderr(),
        "koala record: 0 sessions written, 0 dropped, 0 lost\n\
         koala record:   why none: no process of the command handled a TCP connection: nothing listened, nothing connected to it, or the library was not loaded (a setuid program, a cleared environment)\n"
    );
    assert!(
        !dir.join("record").exists(),
        "nothing recorded, nothing created"
    );
}

/// A worker that switched to another user (nginx's `user nobody;`) cannot
/// write to a record directory only root may write to: its log goes to
/// that user's own fallback, `$TMPDIR/koala-<its uid>/`, which the summary
/// reads too.
#[test]
fn a_directory_the_worker_user_cannot_write_is_reported() {
    const NOBODY: u32 = 65534;
    let dir = TestDir::new("record-worker-user");
    let record = dir.join("record");
    fs::DirBuilder::new().mode(0o700).create(&record).unwrap();
    let tmp = dir.join("tmp");
    fs::create_dir_all(&tmp).unwrap();
    // A shared temp dir, as /tmp is.
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o1777)).unwrap();
    // The test directory must be traversable by the worker.
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let port = free_port();
    // Binds as root, then serves as nobody.
    let script = server_script(port, 1).replace(
        "served = 0\n",
        &format!("os.setgid({NOBODY}); os.setuid({NOBODY})\nserved = 0\n"),
    );
    let script = format!("import os\n{script}");
    let python = python().display().to_string();
    let mut koala = koala_record(&dir, &record, &[&python, "-c", &script]);
    koala.wait_for_port(port);
    exchange(port, "/as-nobody");
    let status = koala.wait_for_exit(Duration::from_secs(30));
    assert!(status.success(), "{status}\n{}", koala.output_report());

    let stderr = koala.stderr();
    let lines: Vec<&str> = stderr.lines().collect();
    let record = record.display().to_string();
    assert_eq!(lines.len(), 4, "{stderr}");
    assert_eq!(
        lines[0], "koala record: 0 sessions written, 0 dropped, 1 lost",
        "{stderr}"
    );
    let lost = lines[1]
        .strip_prefix(&format!("koala record:   lost: cannot write {record}/"))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(
        lost.ends_with(".jsonl: Permission denied (os error 13)"),
        "{stderr}"
    );
    assert_eq!(
        lines[2],
        format!("koala record:   why none: sessions could not be written to {record} (above)"),
        "{stderr}"
    );
    let fallback = tmp.join(format!("koala-{NOBODY}/koala.log."));
    assert!(
        lines[3].starts_with(&format!("koala record:   log: {}", fallback.display())),
        "{stderr}"
    );
}
