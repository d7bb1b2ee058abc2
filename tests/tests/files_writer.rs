//! The files the library writes, under faults: a full disk, a record
//! directory deleted while recording, a host that closes every fd, and
//! links planted at the names the library creates.
//!
//! The service is a small Python HTTP server (written into the test's
//! directory), recorded with the library preloaded; the log goes outside
//! the record directory so that its summary line can be read whatever
//! happens to that directory.

use std::fs;
use std::net::TcpStream;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use koala_tests::*;

/// `GET /item/<id>/<size>`: a body of `<id>:` and `<size>` dots.
/// `GET /closefds`: closes every fd but stdio, the listening socket and
/// the connection (as daemons and closerange-per-request hosts do), then
/// opens two files of its own, which take the lowest free numbers.
const SERVICE: &str = r#"
import os, signal, sys
from http.server import BaseHTTPRequestHandler, HTTPServer

kept_files = []

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *args):
        pass
    def do_GET(self):
        parts = self.path.strip("/").split("/")
        if parts[0] == "closefds":
            keep = {0, 1, 2, self.server.fileno(), self.connection.fileno()}
            for name in os.listdir("/proc/self/fd"):
                if int(name) not in keep:
                    try:
                        os.close(int(name))
                    except OSError:
                        pass
            kept_files.append(open(os.devnull, "rb"))
            kept_files.append(open(os.devnull, "rb"))
            body = b"closed\n"
        else:
            body = (parts[1] + ":" + "." * int(parts[2]) + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"#;

/// The recorded service, its port, and the log file it was given.
struct Service {
    program: Program,
    port: u16,
    log: PathBuf,
}

/// Starts the service recording into `record`, logging (at `level`) to
/// `<dir>/koala.log`.
fn start(dir: &TestDir, record: &Path, level: &str) -> Service {
    start_with(dir, record, level, &[])
}

/// [`start`], the service started through `wrapper` (a command and its
/// arguments, which end with the command they run).
fn start_with(dir: &TestDir, record: &Path, level: &str, wrapper: &[&str]) -> Service {
    let script = dir.join("item_service.py");
    fs::write(&script, SERVICE).unwrap();
    let port = free_port();
    let log = dir.join("koala.log");
    let spec = match wrapper.split_first() {
        Some((program, args)) => Spec::new("service", program)
            .args(args)
            .arg(python().display()),
        None => Spec::new("service", python()),
    };
    let mut program = spec
        .arg(script.display())
        .arg(port)
        .record_to(record)
        .env("KOALA_LOG_FILE", log.display())
        .env("KOALA_LOG_LEVEL", level)
        .spawn(dir);
    program.wait_for_port(port);
    Service { program, port, log }
}

/// `GET /item/<id>/<size>` on `stream`; checks the answer.
fn get_item(stream: &mut TcpStream, id: &str, size: usize) {
    let request = format!("GET /item/{id}/{size} HTTP/1.1\r\nHost: x\r\n\r\n");
    let response = http_exchange(stream, request.as_bytes());
    let body = format!("{id}:{}\n", ".".repeat(size));
    assert!(
        response.ends_with(body.as_bytes()),
        "{}",
        String::from_utf8_lossy(&response)
    );
}

/// The ids the recorded sessions asked for (`/item/<id>/...`), in order.
fn recorded_ids(sessions: &[Session]) -> Vec<String> {
    sessions
        .iter()
        .map(|s| {
            let request = String::from_utf8_lossy(s.inbound.request.as_bytes()).into_owned();
            request
                .split('/')
                .nth(2)
                .unwrap_or(request.as_str())
                .to_string()
        })
        .collect()
}

/// Every koala log line of the files `<log>.*`.
fn log_text(log: &Path) -> String {
    let prefix = log.file_name().unwrap().to_string_lossy().into_owned();
    let mut text = String::new();
    for entry in fs::read_dir(log.parent().unwrap()).unwrap().flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            text.push_str(&fs::read_to_string(entry.path()).unwrap_or_default());
        }
    }
    text
}

/// The numeric fields of the log's `koala recording summary` line.
fn summary_field(log: &Path, field: &str) -> u64 {
    let text = log_text(log);
    let line = text
        .lines()
        .find(|l| l.contains("koala recording summary"))
        .unwrap_or_else(|| panic!("no summary line in the log:\n{text}"));
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(&format!("{field}=")))
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {line}"))
}

/// Every line of a session file is a whole session: the file ends with a
/// newline and each line parses. Returns the sessions.
fn whole_lines(path: &Path) -> Vec<Session> {
    let bytes = fs::read(path).unwrap();
    assert!(
        bytes.is_empty() || bytes.ends_with(b"\n"),
        "{} ends with a torn line: …{}",
        path.display(),
        String::from_utf8_lossy(&bytes[bytes.len().saturating_sub(80)..])
    );
    bytes
        .split_inclusive(|b| *b == b'\n')
        .enumerate()
        .map(|(index, line)| {
            let text = std::str::from_utf8(line).unwrap_or_else(|e| {
                panic!("{} line {}: not UTF-8 ({e})", path.display(), index + 1)
            });
            koala_session::read_session_line(text.trim_end()).unwrap_or_else(|e| {
                panic!(
                    "{} line {}: not a session ({e}): {}",
                    path.display(),
                    index + 1,
                    &text[..text.len().min(200)]
                )
            })
        })
        .collect()
}

/// A small tmpfs, unmounted when dropped.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(path: PathBuf, size: &str) -> SmallDisk {
        fs::create_dir_all(&path).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test fills a small tmpfs and must run as root (mount failed: {})",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk(path)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Disk full (ENOSPC, on a 256 KiB tmpfs): the file holds whole sessions
/// only — the line a short write tore is cut off again — and the summary's
/// counts are the truth: written = the lines in the file, written + lost =
/// the requests.
#[test]
fn a_full_disk_leaves_whole_lines_and_true_counts() {
    let dir = TestDir::new("files-full");
    let disk = SmallDisk::mount(dir.join("disk"), "256k");
    let record = disk.0.join("record");
    let mut service = start(&dir, &record, "INFO");
    const REQUESTS: usize = 40;
    let mut stream = connect(service.port);
    for n in 0..REQUESTS {
        // 8000 to 23000 bytes: lines end at no particular page boundary.
        get_item(&mut stream, &format!("i{n}"), 8000 + n * 383);
    }
    drop(stream);
    service.program.stop_cleanly();

    let file = record.join(format!("python3-{}.jsonl", service.program.pid()));
    let sessions = whole_lines(&file);
    let written = summary_field(&service.log, "sessions_written");
    let lost = summary_field(&service.log, "sessions_lost_write_error");
    assert!(
        lost > 0 && !sessions.is_empty(),
        "the disk filled up: {} written, {lost} lost",
        sessions.len()
    );
    assert_eq!(
        (written, written + lost),
        (sessions.len() as u64, REQUESTS as u64),
        "summary: written = lines in the file, written + lost = requests"
    );
    let expected: Vec<String> = (0..sessions.len()).map(|n| format!("i{n}")).collect();
    assert_eq!(
        recorded_ids(&sessions),
        expected,
        "the first sessions, in order"
    );
}

/// File too large (EFBIG: the service runs under a 256 KiB RLIMIT_FSIZE):
/// the same whole lines and true counts, and the host is not killed by the
/// SIGXFSZ that comes with EFBIG (the writer thread blocks it).
#[test]
fn a_file_size_limit_leaves_whole_lines_and_true_counts() {
    let dir = TestDir::new("files-efbig");
    let record = dir.join("record");
    let prlimit = require_program("prlimit", "util-linux");
    let prlimit = prlimit.to_str().unwrap();
    let mut service = start_with(&dir, &record, "INFO", &[prlimit, "--fsize=262144"]);
    const REQUESTS: usize = 40;
    let mut stream = connect(service.port);
    for n in 0..REQUESTS {
        get_item(&mut stream, &format!("i{n}"), 8000 + n * 383);
    }
    drop(stream);
    service.program.stop_cleanly();

    let file = record.join(format!("python3-{}.jsonl", service.program.pid()));
    let sessions = whole_lines(&file);
    let written = summary_field(&service.log, "sessions_written");
    let lost = summary_field(&service.log, "sessions_lost_write_error");
    assert!(
        lost > 0 && !sessions.is_empty(),
        "{written} written, {lost} lost"
    );
    assert_eq!(
        (written, written + lost),
        (sessions.len() as u64, REQUESTS as u64),
        "summary: written = lines in the file, written + lost = requests"
    );
    assert!(
        log_text(&service.log).contains("File too large"),
        "the loss is logged with its reason"
    );
}

/// The record directory deleted while recording: the library notices
/// (the file is unlinked), recreates the directory (0700) and a new file,
/// and counts the reopen.
#[test]
fn a_deleted_record_directory_is_recreated() {
    let dir = TestDir::new("files-deleted");
    let record = dir.join("record");
    let mut service = start(&dir, &record, "INFO");
    let mut stream = connect(service.port);
    for id in ["a1", "a2", "a3"] {
        get_item(&mut stream, id, 10);
    }
    assert_eq!(
        recorded_ids(&wait_for_sessions(&record, 3)),
        ["a1", "a2", "a3"]
    );
    fs::remove_dir_all(&record).unwrap();
    for id in ["b1", "b2", "b3"] {
        get_item(&mut stream, id, 10);
    }
    drop(stream);
    service.program.stop_cleanly();

    let file = record.join(format!("python3-{}.jsonl", service.program.pid()));
    assert_eq!(
        recorded_ids(&whole_lines(&file)),
        ["b1", "b2", "b3"],
        "{}",
        describe_dir(&record)
    );
    let mode = fs::metadata(&record).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "the recreated directory is private");
    assert_eq!(summary_field(&service.log, "session_file_reopened"), 1);
    assert_eq!(summary_field(&service.log, "sessions_written"), 6);
    assert_eq!(summary_field(&service.log, "sessions_lost_write_error"), 0);
}

/// `YYYY-MM-DD-HH` (UTC) of now and of the next hour: the suffixes of the
/// log files the library may create during a test.
fn log_hours() -> Vec<String> {
    ["now", "now + 1 hour"]
        .iter()
        .map(|when| {
            let out = Command::new("date")
                .args(["-u", "-d", when, "+%Y-%m-%d-%H"])
                .output()
                .expect("run date");
            String::from_utf8(out.stdout).unwrap().trim().to_string()
        })
        .collect()
}

/// Links planted at the session file's name (before the first session)
/// and at the log file's names, pointing to a root-only file: never
/// followed. Sessions and log lines go to fresh names, private files, and
/// the target is untouched.
#[test]
fn links_planted_at_the_file_names_are_not_followed() {
    let dir = TestDir::new("files-link");
    let record = dir.join("record");
    fs::create_dir_all(&record).unwrap();
    let secret = dir.join("root-only");
    fs::write(&secret, "root's data\n").unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    let hours = log_hours();
    for hour in &hours {
        std::os::unix::fs::symlink(&secret, dir.join(format!("koala.log.{hour}"))).unwrap();
    }
    let mut service = start(&dir, &record, "INFO");
    let pid = service.program.pid();
    let planted = record.join(format!("python3-{pid}.jsonl"));
    std::os::unix::fs::symlink(&secret, &planted).unwrap();

    let mut stream = connect(service.port);
    for id in ["s1", "s2"] {
        get_item(&mut stream, id, 10);
    }
    drop(stream);
    service.program.stop_cleanly();

    assert_eq!(fs::read_to_string(&secret).unwrap(), "root's data\n");
    assert!(fs::symlink_metadata(&planted).unwrap().is_symlink());
    let fresh = record.join(format!("python3-{pid}-1.jsonl"));
    assert_eq!(
        recorded_ids(&whole_lines(&fresh)),
        ["s1", "s2"],
        "{}",
        describe_dir(&record)
    );
    let metadata = fs::symlink_metadata(&fresh).unwrap();
    assert_eq!((metadata.mode() & 0o777, metadata.nlink()), (0o600, 1));
    let logs: Vec<PathBuf> = hours
        .iter()
        .map(|hour| dir.join(format!("koala.log.{hour}.1")))
        .filter(|path| path.exists())
        .collect();
    assert_eq!(logs.len(), 1, "the log went to a fresh name: {logs:?}");
    let log = fs::read_to_string(&logs[0]).unwrap();
    assert!(log.contains("koala recording summary"), "{log}");
    assert_eq!(fs::metadata(&logs[0]).unwrap().mode() & 0o777, 0o600);
    assert_eq!(summary_field(&service.log, "sessions_written"), 2);
}

/// A host that closes every fd it did not open (a daemon, closerange per
/// request), then opens files of its own. The library's session file and
/// log file are both gone; each is reopened, and no log line ever lands in
/// a session file (the reopened session file may take the log's old fd
/// number).
#[test]
fn a_host_that_closes_every_fd_gets_no_log_line_in_a_session_file() {
    let dir = TestDir::new("files-closefds");
    let record = dir.join("record");
    // DEBUG: the log is opened at start-up, before the session file, and
    // gets lines at every connection.
    let mut service = start(&dir, &record, "DEBUG");
    let mut stream = connect(service.port);
    for id in ["a1", "a2"] {
        get_item(&mut stream, id, 10);
    }
    wait_for_sessions(&record, 2);
    let request = b"GET /closefds HTTP/1.1\r\nHost: x\r\n\r\n";
    let response = http_exchange(&mut stream, request);
    assert!(response.ends_with(b"\r\n\r\nclosed\n"));
    drop(stream);
    let mut stream = connect(service.port);
    for id in ["b1", "b2"] {
        get_item(&mut stream, id, 10);
    }
    drop(stream);
    service.program.stop_cleanly();

    let mut sessions = Vec::new();
    for entry in fs::read_dir(&record).unwrap().flatten() {
        assert!(
            entry.file_name().to_string_lossy().ends_with(".jsonl"),
            "{}",
            describe_dir(&record)
        );
        sessions.extend(whole_lines(&entry.path()));
    }
    sessions.retain(|s| s.inbound.request.as_bytes().starts_with(b"GET /item/"));
    sessions.sort_by_key(|s| s.inbound.request_ns);
    assert_eq!(recorded_ids(&sessions), ["a1", "a2", "b1", "b2"]);
    let log = log_text(&service.log);
    assert!(
        log.contains("session file reopened: its fd was closed by the host"),
        "{log}"
    );
    assert_eq!(summary_field(&service.log, "session_file_reopened"), 1);
}

/// In every mode, a record directory the library creates is 0700 and its
/// files 0600 — also when only the log goes there (no session at all).
#[test]
fn the_record_directory_and_the_log_are_private_in_every_mode() {
    let dir = TestDir::new("files-private");
    for mode in ["record", "replay"] {
        let record = dir.join(format!("{mode}-dir"));
        let mut program = Spec::new(mode, python())
            .args(["-c", "pass"])
            .preload()
            .env("KOALA_MODE", mode)
            .env("KOALA_RECORD_TO", record.display())
            .env("KOALA_LOG_LEVEL", "DEBUG")
            .env("KOALA_INBOUND_ADDR", format!("127.0.0.1:{}", free_port()))
            .env("KOALA_OUTBOUND_ADDR", format!("127.0.0.1:{}", free_port()))
            .env("KOALA_SUT_ADDR", format!("127.0.0.1:{}", free_port()))
            .spawn(&dir);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        let status = loop {
            if let Some(status) = program.exited() {
                break status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{mode}: python did not exit"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        assert!(
            status.success(),
            "{mode}: {status}\n{}",
            program.output_report()
        );
        let mode_of =
            |path: &Path| format!("{:o}", fs::symlink_metadata(path).unwrap().mode() & 0o777);
        assert_eq!(mode_of(&record), "700", "{mode}: the directory");
        let files: Vec<PathBuf> = fs::read_dir(&record)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(!files.is_empty(), "{mode}: a log in {}", record.display());
        for file in files {
            assert_eq!(mode_of(&file), "600", "{mode}: {}", file.display());
        }
    }
}
