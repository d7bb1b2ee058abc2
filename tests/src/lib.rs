//! Harness for koala's integration tests: real programs run with (or
//! without) `libkoala.so` preloaded, and the sessions they record.
//!
//! Every wait here is bounded and polls for a fact (a listening port, a
//! number of sessions, an exit), never a fixed sleep. Every test gets its own
//! temporary directory and its own ports, so tests run in parallel safely.
//! A [`Program`] is stopped when dropped: SIGTERM to its process group, then
//! SIGKILL after a bound.

pub mod event_loop;
pub mod nats;
pub mod php_stacks;
pub mod python_stacks;
pub mod tls;

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use koala_session::{EndReason, Exchange, Payload, Session};

/// How long a program may take to start listening.
pub(crate) const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long recorded sessions may take to reach their file.
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a program may take to exit after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Read/write timeout of the test clients' sockets.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

const POLL: Duration = Duration::from_millis(20);

/// The workspace root (the parent of this package).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// `tests/fixtures/<name>`.
pub fn fixture(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name);
    assert!(path.exists(), "missing fixture {}", path.display());
    path
}

/// Cargo's target directory: `$CARGO_TARGET_DIR`, else `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// The library under test: `$KOALA_LIB`, else
/// `<target>/release/libkoala.so` (see [`target_dir`]).
pub fn koala_lib() -> PathBuf {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| {
        let path = match std::env::var_os("KOALA_LIB") {
            Some(path) if !path.is_empty() => PathBuf::from(path),
            _ => target_dir().join("release/libkoala.so"),
        };
        if !path.is_file() {
            panic!(
                "libkoala.so not found at {}: run `make build` (or `cargo build --release -p \
                 koala-preload`) first, or point KOALA_LIB at the library",
                path.display()
            );
        }
        path.canonicalize().expect("canonical library path")
    })
    .clone()
}

/// The real Python interpreter, not a pyenv shim (a shim is a shell script
/// that would run under the preload too). `$KOALA_TEST_PYTHON` overrides.
pub fn python() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            if let Some(path) = std::env::var_os("KOALA_TEST_PYTHON").filter(|p| !p.is_empty()) {
                return PathBuf::from(path);
            }
            let out = Command::new("python3")
                .args(["-c", "import sys; print(sys.executable)"])
                .env_remove("LD_PRELOAD")
                .output()
                .expect("python3 must be installed to run these tests");
            assert!(out.status.success(), "python3 -c failed: {out:?}");
            let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            assert!(path.is_file(), "python3 reported {}", path.display());
            path
        })
        .clone()
}

/// Absolute path of an installed program (`which`), with a clear panic
/// telling what to install when it is missing.
pub fn require_program(name: &str, package: &str) -> PathBuf {
    let paths = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&paths).chain([PathBuf::from("/usr/sbin")]) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("`{name}` is not installed: install it (e.g. `apt-get install {package}`)");
}

/// Compiles the C program `source` with `gcc FLAGS -o output source`;
/// panics with gcc's messages when it fails.
pub fn compile_c(source: &Path, flags: &[&str], output: &Path) {
    let out = clean_command(require_program("gcc", "gcc"))
        .args(flags)
        .arg("-o")
        .arg(output)
        .arg(source)
        .output()
        .expect("run gcc");
    assert!(
        out.status.success(),
        "gcc {flags:?} {} failed:\n{}",
        source.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A directory of its own for one test, removed on drop unless the test
/// failed (then it is kept and its path printed, to look at the evidence)
/// or `KOALA_TEST_KEEP` is set.
pub struct TestDir {
    path: PathBuf,
}

impl TestDir {
    pub fn new(test: &str) -> TestDir {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let path = std::env::temp_dir().join(format!(
            "koala-test-{test}-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&path).expect("create test dir");
        TestDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("test failed: its files are kept in {}", self.path.display());
        } else if std::env::var_os("KOALA_TEST_KEEP").is_some() {
            eprintln!("KOALA_TEST_KEEP: files kept in {}", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// A loopback port nothing listens on. Ports are taken below the kernel's
/// ephemeral range (so client sockets do not take them) and never twice
/// in one test process.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    let start = std::process::id().wrapping_mul(7919) % SPAN;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (FIRST + (start + n * 13) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port between {FIRST} and {}", FIRST + SPAN);
}

/// A command without the test runner's own koala settings (`KOALA_*`,
/// `LD_PRELOAD`): they must not leak into the programs it starts.
pub fn clean_command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new(program);
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("KOALA_") || key == "LD_PRELOAD" {
            command.env_remove(&*key);
        }
    }
    command
}

/// How to start a program.
pub struct Spec {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    cwd: Option<PathBuf>,
    preload: bool,
}

impl Spec {
    /// `name` names the captured output files (`<name>.stdout`, `.stderr`).
    pub fn new(name: &str, program: impl AsRef<Path>) -> Spec {
        Spec {
            name: name.to_string(),
            program: program.as_ref().to_path_buf(),
            args: Vec::new(),
            env: Vec::new(),
            cwd: None,
            preload: false,
        }
    }

    /// A Python script of `tests/fixtures`, run by the real interpreter.
    pub fn python_fixture(name: &str, script: &str) -> Spec {
        Spec::new(name, python())
            .arg("-u")
            .arg(fixture(script).to_str().unwrap())
    }

    pub fn arg(mut self, arg: impl ToString) -> Spec {
        self.args.push(arg.to_string());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: ToString>(mut self, args: I) -> Spec {
        self.args.extend(args.into_iter().map(|a| a.to_string()));
        self
    }

    pub fn env(mut self, key: &str, value: impl ToString) -> Spec {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    pub fn cwd(mut self, dir: impl AsRef<Path>) -> Spec {
        self.cwd = Some(dir.as_ref().to_path_buf());
        self
    }

    /// Runs the program with `LD_PRELOAD=libkoala.so` (and no KOALA_*
    /// variable but those given with [`Spec::env`]).
    pub fn preload(mut self) -> Spec {
        self.preload = true;
        self
    }

    /// Preloads the library in record mode, writing to `record_to`.
    pub fn record_to(self, record_to: &Path) -> Spec {
        self.preload()
            .env("KOALA_MODE", "record")
            .env("KOALA_RECORD_TO", record_to.display())
    }

    /// Starts the program in its own process group, its output captured to
    /// files in `dir`.
    pub fn spawn(self, dir: &TestDir) -> Program {
        let stdout_path = dir.join(format!("{}.stdout", self.name));
        let stderr_path = dir.join(format!("{}.stderr", self.name));
        let mut command = clean_command(&self.program);
        command
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(fs::File::create(&stdout_path).expect("create stdout file"))
            .stderr(fs::File::create(&stderr_path).expect("create stderr file"))
            .current_dir(self.cwd.as_deref().unwrap_or(dir.path()))
            .process_group(0);
        if self.preload {
            command.env("LD_PRELOAD", koala_lib());
        }
        for (key, value) in &self.env {
            command.env(key, value);
        }
        // If the test process dies (^C, a harness timeout) before its guards
        // run, the program dies with it instead of lingering.
        // SAFETY: prctl is async-signal-safe and touches no memory of ours.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = command.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot start {} ({}): {e}",
                self.name,
                self.program.display()
            )
        });
        Program {
            name: self.name,
            child,
            stdout_path,
            stderr_path,
            status: None,
        }
    }
}

/// A running program. Dropping it stops it (and its process group).
pub struct Program {
    name: String,
    child: Child,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    status: Option<ExitStatus>,
}

impl Program {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stdout(&self) -> String {
        fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Has it exited (without waiting)?
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("try_wait");
        }
        self.status
    }

    /// Waits (polling, at most `within`) for the program to exit by itself;
    /// panics with its output if it does not.
    #[track_caller]
    pub fn wait_for_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.exited() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {within:?}\n{}",
                self.name,
                self.output_report()
            );
            thread::sleep(POLL);
        }
    }

    /// Stdout and stderr, for failure messages.
    pub fn output_report(&self) -> String {
        format!(
            "--- {} stdout ---\n{}\n--- {} stderr ---\n{}",
            self.name,
            self.stdout(),
            self.name,
            self.stderr()
        )
    }

    /// Waits until something listens on `127.0.0.1:port`. Panics with the
    /// program's output if it exits first or the wait times out. Looks at
    /// the kernel's socket table instead of connecting, so a recording
    /// program sees no extra connection.
    pub fn wait_for_port(&mut self, port: u16) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if is_listening(port) {
                return;
            }
            if let Some(status) = self.exited() {
                panic!(
                    "{} exited ({status}) before listening on port {port}\n{}",
                    self.name,
                    self.output_report()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "{} did not listen on port {port} within {START_TIMEOUT:?}\n{}",
                    self.name,
                    self.output_report()
                );
            }
            thread::sleep(POLL);
        }
    }

    /// Stops the program: SIGTERM to its process group, SIGKILL after
    /// [`STOP_TIMEOUT`]. Returns its exit status.
    pub fn stop(&mut self) -> ExitStatus {
        if let Some(status) = self.exited() {
            kill_group(self.pid(), libc::SIGKILL);
            return status;
        }
        kill_group(self.pid(), libc::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(status) = self.exited() {
                // Leftovers of the group (children that outlived it).
                kill_group(self.pid(), libc::SIGKILL);
                return status;
            }
            thread::sleep(POLL);
        }
        kill_group(self.pid(), libc::SIGKILL);
        let status = self.child.wait().expect("wait");
        self.status = Some(status);
        status
    }

    /// Stops the program and asserts it exited by itself on SIGTERM
    /// (exit code 0, not killed), so its exit-time flush ran.
    pub fn stop_cleanly(&mut self) {
        let status = self.stop();
        assert!(
            status.success(),
            "{} did not exit cleanly on SIGTERM: {status}\n{}",
            self.name,
            self.output_report()
        );
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        self.stop();
    }
}

fn kill_group(pid: u32, signal: i32) {
    // SAFETY: kill has no memory effects; a negative pid names the group.
    unsafe {
        libc::kill(-(pid as i32), signal);
    }
}

/// Is a TCP socket listening on port `port` (any address, IPv4 or IPv6)?
pub fn is_listening(port: u16) -> bool {
    let wanted = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|table| {
        fs::read_to_string(table).is_ok_and(|text| {
            text.lines().skip(1).any(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                // local_address is field 1 ("IP:PORT"), st is field 3; 0A = LISTEN.
                fields.len() > 3 && fields[1].ends_with(&wanted) && fields[3] == "0A"
            })
        })
    })
}

/// Asserts nothing listens on `127.0.0.1:port` and a connect is refused.
#[track_caller]
pub fn assert_port_closed(port: u16, what: &str) {
    assert!(!is_listening(port), "{what} still listens on port {port}");
    let refused = TcpStream::connect_timeout(
        &format!("127.0.0.1:{port}").parse().unwrap(),
        Duration::from_secs(2),
    );
    assert!(
        refused.is_err(),
        "{what}: a connection to port {port} was accepted"
    );
}

/// The pids whose parent is `parent` (from /proc).
fn child_pids(parent: u32) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc").expect("read /proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may hold spaces; split after ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
            continue;
        };
        let ppid = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok());
        if ppid == Some(parent) {
            pids.push(pid);
        }
    }
    pids.sort();
    pids
}

/// Waits until `program` has at least `count` children; returns their pids.
pub fn wait_for_children(program: &mut Program, count: usize) -> Vec<u32> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let children = child_pids(program.pid());
        if children.len() >= count {
            return children;
        }
        if program.exited().is_some() || Instant::now() > deadline {
            panic!(
                "{} has children {children:?}, expected {count}\n{}",
                program.name,
                program.output_report()
            );
        }
        thread::sleep(POLL);
    }
}

/// Session files of a directory: `(file name, complete sessions)`, sorted by
/// name, without background records (see [`background_records`]).
pub fn session_files(dir: &Path) -> Vec<(String, Vec<Session>)> {
    record_files(dir)
        .into_iter()
        .map(|(name, records)| {
            (
                name,
                records.into_iter().filter(|r| !r.is_background()).collect(),
            )
        })
        .collect()
}

/// The background records (`kind: background`: calls made outside any
/// session) of every `.jsonl` file of `dir`.
pub fn background_records(dir: &Path) -> Vec<Session> {
    record_files(dir)
        .into_iter()
        .flat_map(|(_, records)| records)
        .filter(Session::is_background)
        .collect()
}

/// Every line of the `.jsonl` files of a directory: `(file name, records)`,
/// sorted by name. Only newline-terminated lines count (a line being written
/// is not complete yet); a complete line that is not a valid record panics.
pub(crate) fn record_files(dir: &Path) -> Vec<(String, Vec<Session>)> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files = BTreeMap::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".jsonl") {
            continue;
        }
        let bytes = fs::read(entry.path()).unwrap_or_default();
        let mut sessions = Vec::new();
        let mut lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
        lines.pop(); // after the last newline: empty, or a line still being written
        for (index, line) in lines.into_iter().enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let text = std::str::from_utf8(line).unwrap_or_else(|e| {
                panic!("{name} line {}: not UTF-8 ({e})", index + 1);
            });
            match koala_session::read_session_line(text) {
                Ok(session) => sessions.push(session),
                Err(e) => panic!("{name} line {}: not a session: {e}\n{text}", index + 1),
            }
        }
        files.insert(name, sessions);
    }
    files.into_iter().collect()
}

/// Every complete session of every `.jsonl` file of `dir`.
pub fn read_sessions(dir: &Path) -> Vec<Session> {
    session_files(dir)
        .into_iter()
        .flat_map(|(_, sessions)| sessions)
        .collect()
}

/// Waits until the session files of `dir` hold at least `count` sessions
/// and returns them. On timeout panics, showing what is there.
pub fn wait_for_sessions(dir: &Path, count: usize) -> Vec<Session> {
    let deadline = Instant::now() + SESSION_TIMEOUT;
    loop {
        let sessions = read_sessions(dir);
        if sessions.len() >= count {
            return sessions;
        }
        if Instant::now() > deadline {
            panic!(
                "expected {count} sessions in {} within {SESSION_TIMEOUT:?}, found {}:\n{}",
                dir.display(),
                sessions.len(),
                describe_dir(dir)
            );
        }
        thread::sleep(POLL);
    }
}

/// Files of a record directory with their sessions and the koala log, for
/// failure messages.
pub fn describe_dir(dir: &Path) -> String {
    let mut out = String::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return format!("({} does not exist)", dir.display());
    };
    let mut names: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    names.sort();
    for path in names {
        let text = fs::read_to_string(&path).unwrap_or_else(|e| format!("({e})"));
        out.push_str(&format!("=== {}\n{text}\n", path.display()));
    }
    out
}

/// A session as a readable string (long payloads cut), for failure messages.
pub fn show(session: &Session) -> String {
    let line = session.to_json_line();
    cut(&line, 4000)
}

fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…({} more bytes)", &text[..end], text.len() - end)
}

/// Bytes as text for failure messages: lossy UTF-8, escaped, cut.
fn show_bytes(bytes: &[u8]) -> String {
    cut(&format!("{:?}", String::from_utf8_lossy(bytes)), 1500)
}

/// Asserts that two byte strings are equal; on failure shows their lengths,
/// the first differing offset and both around it.
#[track_caller]
pub fn assert_bytes(actual: &[u8], expected: &[u8], what: &str) {
    if actual == expected {
        return;
    }
    let first = actual
        .iter()
        .zip(expected)
        .position(|(a, e)| a != e)
        .unwrap_or(actual.len().min(expected.len()));
    let from = first.saturating_sub(200);
    panic!(
        "{what} differs at byte {first}\n  expected ({} bytes): {}\n  actual   ({} bytes): {}\n           from byte {from}:\n  expected: {}\n  actual:   {}",
        expected.len(),
        show_bytes(expected),
        actual.len(),
        show_bytes(actual),
        show_bytes(&expected[from.min(expected.len())..]),
        show_bytes(&actual[from.min(actual.len())..]),
    );
}

/// Asserts one exchange: exact request and response bytes and the peer.
#[track_caller]
pub fn assert_exchange(
    exchange: &Exchange,
    peer: &str,
    request: &[u8],
    response: &[u8],
    what: &str,
) {
    assert_eq!(exchange.peer, peer, "{what}: peer");
    assert_bytes(
        exchange.request.as_bytes(),
        request,
        &format!("{what}: request"),
    );
    assert_bytes(
        exchange.response.as_bytes(),
        response,
        &format!("{what}: response"),
    );
    assert!(!exchange.truncated, "{what}: truncated");
}

/// A client TCP connection to `127.0.0.1:port` with bounded I/O.
pub fn connect(port: u16) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port}: {e}"));
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// Sends `request` and reads one full HTTP response (by Content-Length, or
/// to end of stream when there is none). Returns the response's exact bytes.
pub fn http_exchange(stream: &mut TcpStream, request: &[u8]) -> Vec<u8> {
    stream.write_all(request).expect("send request");
    read_http_response(stream).expect("read response")
}

/// Reads one HTTP/1.x response: its head, then Content-Length bytes of
/// body, or everything until the peer closes when there is no length.
pub fn read_http_response(stream: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut data = Vec::new();
    let mut chunk = [0u8; 65536];
    let head_end = loop {
        if let Some(pos) = find(&data, b"\r\n\r\n") {
            break pos + 4;
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "closed before the end of the response head: {:?}",
                    String::from_utf8_lossy(&data)
                ),
            ));
        }
        data.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&data[..head_end]).to_ascii_lowercase();
    let length = head.lines().find_map(|line| {
        line.strip_prefix("content-length:")
            .map(|v| v.trim().parse::<usize>().expect("numeric content-length"))
    });
    match length {
        Some(length) => {
            while data.len() < head_end + length {
                let n = stream.read(&mut chunk)?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "closed before the end of the body",
                    ));
                }
                data.extend_from_slice(&chunk[..n]);
            }
            assert_eq!(data.len(), head_end + length, "bytes after the response");
        }
        None => {
            stream.read_to_end(&mut data)?;
        }
    }
    Ok(data)
}

/// Reads until the peer closes.
pub fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut data = Vec::new();
    stream.read_to_end(&mut data).expect("read to close");
    data
}

/// Position of `needle` in `haystack`.
pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A `redis-server` on `127.0.0.1:port`, with no persistence, its files in
/// `dir` (not started: the bench starts it under the library too).
pub fn redis_spec(dir: &TestDir, port: u16) -> Spec {
    let data = dir.join("redis");
    fs::create_dir_all(&data).unwrap();
    Spec::new("redis", require_program("redis-server", "redis-server")).args([
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
        "--protected-mode",
        "no",
        "--dir",
        data.to_str().unwrap(),
    ])
}

/// Starts a `redis-server` ([`redis_spec`]) on a free port. Returns the
/// program and its port.
pub fn start_redis(dir: &TestDir) -> (Program, u16) {
    let port = free_port();
    let mut redis = redis_spec(dir, port).spawn(dir);
    redis.wait_for_port(port);
    (redis, port)
}

/// A command in RESP, as a client sends it.
pub fn resp_command(parts: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", parts.len()).into_bytes();
    for part in parts {
        out.extend_from_slice(format!("${}\r\n{part}\r\n", part.len()).as_bytes());
    }
    out
}

/// A RESP bulk string reply.
pub fn resp_bulk(value: &str) -> Vec<u8> {
    format!("${}\r\n{value}\r\n", value.len()).into_bytes()
}

/// Sets keys in redis through a plain connection of the test process
/// (not recorded), checking each `+OK`.
pub fn redis_set(port: u16, pairs: &[(String, String)]) {
    let mut stream = connect(port);
    for (key, value) in pairs {
        stream
            .write_all(&resp_command(&["SET", key, value]))
            .unwrap();
        let mut reply = [0u8; 5];
        stream.read_exact(&mut reply).expect("redis reply");
        assert_bytes(&reply, b"+OK\r\n", &format!("redis reply to SET {key}"));
    }
}

// ---------------------------------------------------------------------------
// The item services: `GET /item/<id>` makes a redis `GET item:<id>`, a
// backend call and a redis `INCR hits:<id>` (redis_service.py,
// replay_prefork_service.py, the hints_* services).

/// Seeds redis for the item services: `item:<id>` = `value-<id>` for each id.
pub fn seed_items(redis_port: u16, ids: &[impl AsRef<str>]) {
    let pairs: Vec<(String, String)> = ids
        .iter()
        .map(|id| {
            let id = id.as_ref();
            (format!("item:{id}"), format!("value-{id}"))
        })
        .collect();
    redis_set(redis_port, &pairs);
}

/// `c0r0, c0r1, ...`: `per_connection` request ids for each of
/// `connections` client connections.
pub fn item_ids(connections: usize, per_connection: usize) -> Vec<String> {
    (0..connections)
        .flat_map(|c| (0..per_connection).map(move |r| format!("c{c}r{r}")))
        .collect()
}

/// The request the tests send for item `id`.
pub fn item_request(port: u16, id: &str) -> Vec<u8> {
    format!("GET /item/{id} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").into_bytes()
}

/// The last path segment of a request's target: the item id.
pub fn request_item(request: &[u8]) -> String {
    String::from_utf8_lossy(request)
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string()
}

/// The exact answer of the item services for item `id` with `hits`:
/// `extra_headers` (each ending in CRLF) after Content-Length.
pub fn item_response_with(id: &str, hits: u32, extra_headers: &str) -> Vec<u8> {
    let body = format!("item {id}: value=value-{id} backend=backend says {id} hits={hits}\n");
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{extra_headers}\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The exact answer of `redis_service.py` (and the other item services
/// that add no header) for item `id` with `hits`.
pub fn item_response(id: &str, hits: u32) -> Vec<u8> {
    item_response_with(id, hits, "")
}

/// The exact answer of `backend.py` and `hints_backend.py` to
/// `GET /backend/<id>`.
pub fn backend_response(id: &str) -> Vec<u8> {
    let body = format!("backend says {id}\n");
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// redis-server and `backend.py`, the dependencies of `redis_service.py`
/// and `replay_prefork_service.py`, seeded for `ids`.
pub struct Dependencies {
    redis: Program,
    redis_port: u16,
    backend: Program,
    backend_port: u16,
}

impl Dependencies {
    /// Starts redis (seeded with [`seed_items`]) and the backend.
    pub fn start(dir: &TestDir, ids: &[String]) -> Dependencies {
        let (redis, redis_port) = start_redis(dir);
        seed_items(redis_port, ids);
        let backend_port = free_port();
        let mut backend = Spec::python_fixture("backend", "backend.py")
            .arg(backend_port)
            .spawn(dir);
        backend.wait_for_port(backend_port);
        Dependencies {
            redis,
            redis_port,
            backend,
            backend_port,
        }
    }

    /// The service's arguments after PORT: `REDIS_PORT BACKEND_PORT`.
    pub fn args(&self) -> [String; 2] {
        [self.redis_port.to_string(), self.backend_port.to_string()]
    }

    pub fn redis_peer(&self) -> String {
        format!("127.0.0.1:{}", self.redis_port)
    }

    pub fn backend_peer(&self) -> String {
        format!("127.0.0.1:{}", self.backend_port)
    }

    /// Stops both, and asserts their ports are closed: nothing can answer
    /// a replayed service but the recording.
    pub fn stop(mut self) {
        self.redis.stop();
        self.backend.stop();
        assert_port_closed(self.redis_port, "redis");
        assert_port_closed(self.backend_port, "the backend");
    }
}

/// `hints_backend.py`: a backend whose answers to some ids the test holds
/// back, so that a service has several requests in flight at once.
pub struct HintsBackend {
    _program: Program,
    pub port: u16,
}

impl HintsBackend {
    /// Starts it on a free port, holding its answers to `held`.
    pub fn start(dir: &TestDir, held: &[&str]) -> HintsBackend {
        let port = free_port();
        let mut program = Spec::python_fixture("backend", "hints_backend.py")
            .args([port.to_string(), held.join(",")])
            .spawn(dir);
        program.wait_for_port(port);
        HintsBackend {
            _program: program,
            port,
        }
    }

    /// `GET path` from the test (not recorded): the body of its 200 answer.
    fn control(&self, path: &str) -> Vec<u8> {
        let mut stream = connect(self.port);
        let response = http_exchange(
            &mut stream,
            format!(
                "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\r\n",
                self.port
            )
            .as_bytes(),
        );
        assert!(
            response.starts_with(b"HTTP/1.1 200 OK\r\n"),
            "backend control {path}: {}",
            String::from_utf8_lossy(&response)
        );
        response[find(&response, b"\r\n\r\n").unwrap() + 4..].to_vec()
    }

    /// Waits until the service's call for `id` has arrived.
    #[track_caller]
    pub fn wait_for_call(&self, id: &str) {
        assert_bytes(
            &self.control(&format!("/control/wait/{id}")),
            format!("arrived {id}\n").as_bytes(),
            &format!("the backend saw {id}'s call"),
        );
    }

    /// Releases the held answer to `id`, and asserts the backend's account:
    /// exactly the ids of `alongside` (sorted) were in flight at some moment
    /// while `id`'s call was.
    #[track_caller]
    pub fn release(&self, id: &str, alongside: &[&str]) {
        assert_bytes(
            &self.control(&format!("/control/release/{id}")),
            format!(
                "released {id}; in flight alongside: {}\n",
                alongside.join(",")
            )
            .as_bytes(),
            &format!("the backend released {id}"),
        );
    }
}

/// The exact answer of `greeting_service.py` to `GET /hello/<id>` when the
/// greeting server said `greeting`.
pub fn hello_response(greeting: &str, id: &str) -> Vec<u8> {
    let body = format!("greeting={greeting} reply=250 ok HELLO {id}\n");
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

pub mod replay;
