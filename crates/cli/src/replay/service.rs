//! Running the service under test: started under libkoala.so in replay
//! mode, waited for, and always stopped.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use koala_session::replay::Status;

use super::client::Client;
use super::progress::Term;

/// After SIGTERM, how long the service may take to exit before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Lines of the service's stderr kept to explain an early exit.
const TAIL_LINES: usize = 20;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// SIGINT, SIGTERM and SIGHUP set a flag instead of killing koala, so that
/// the service is stopped and what was replayed is reported.
pub fn catch_signals() {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic; the struct is ours.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as *const () as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// A free TCP port on the loopback interface, below the kernel's range of
/// ephemeral ports: the port is released before the service binds it, and
/// a port from that range could meanwhile be taken by any client socket.
pub fn free_port() -> Result<SocketAddr, String> {
    let (ephemeral_low, _) = ephemeral_range();
    let span = ephemeral_low.saturating_sub(FIRST_PORT).max(1);
    let start = (std::process::id() as u64).wrapping_mul(7919)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() as u64);
    for n in 0..span as u64 {
        let port = FIRST_PORT + ((start + n * 13) % span as u64) as u16;
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
            return listener.local_addr().map_err(|e| e.to_string());
        }
    }
    // Everything below the ephemeral range is taken: let the kernel choose.
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map_err(|e| format!("cannot find a free loopback port: {e}"))
}

/// Lowest port `free_port` hands out (below it: well-known and registered services).
const FIRST_PORT: u16 = 20_000;

/// `/proc/sys/net/ipv4/ip_local_port_range`, or Linux's default.
fn ephemeral_range() -> (u16, u16) {
    let text =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let mut numbers = text
        .split_whitespace()
        .filter_map(|n| n.parse::<u16>().ok());
    match (numbers.next(), numbers.next()) {
        (Some(low), Some(high)) if low <= high => (low, high),
        _ => (32_768, 60_999),
    }
}

/// The last lines a stream of output carried.
#[derive(Default)]
struct Tail {
    lines: VecDeque<String>,
    partial: Vec<u8>,
}

impl Tail {
    fn push(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            if byte == b'\n' {
                let line = String::from_utf8_lossy(&self.partial)
                    .trim_end()
                    .to_string();
                self.partial.clear();
                if self.lines.len() == TAIL_LINES {
                    self.lines.pop_front();
                }
                self.lines.push_back(line);
            } else if self.partial.len() < 4096 {
                self.partial.push(byte);
            }
        }
    }

    fn text(&self) -> Vec<String> {
        let mut lines: Vec<String> = self.lines.iter().cloned().collect();
        if !self.partial.is_empty() {
            lines.push(String::from_utf8_lossy(&self.partial).to_string());
        }
        lines
    }
}

/// Where the service's stdout and stderr go.
enum Sink {
    Term(Arc<Term>),
    File(Mutex<File>),
}

pub struct Service {
    child: Child,
    program: String,
    status: Option<ExitStatus>,
    stderr_tail: Arc<Mutex<Tail>>,
    stdout_tail: Arc<Mutex<Tail>>,
    forwarders: Vec<thread::JoinHandle<()>>,
}

impl Service {
    /// Starts `command` in its own process group with `env` added, its
    /// output copied to koala's stderr (through `term`) or appended to
    /// `log`.
    pub fn start(
        command: &[String],
        env: &[(&str, OsString)],
        log: Option<&Path>,
        term: Arc<Term>,
    ) -> Result<Service, String> {
        let (program, args) = command.split_first().ok_or("no command given after --")?;
        let sink = Arc::new(match log {
            Some(path) => Sink::File(Mutex::new(
                File::options()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| format!("cannot open {}: {e}", path.display()))?,
            )),
            None => Sink::Term(term),
        });
        let mut cmd = Command::new(program);
        cmd.args(args)
            .envs(env.iter().map(|(name, value)| (name, value)))
            // The automatic request context, as `koala record` loads it.
            .envs(
                crate::helpers::locate()
                    .map(|dir| crate::helpers::environment(&dir))
                    .unwrap_or_default(),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own group: Ctrl-C reaches koala only, which stops the
            // whole group (workers included) in order.
            .process_group(0);
        // SAFETY: prctl is async-signal-safe; nothing else runs here.
        unsafe {
            cmd.pre_exec(|| {
                // If koala dies without stopping it, the service gets SIGTERM.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot run {program}: {e}"))?;
        let stderr_tail = Arc::new(Mutex::new(Tail::default()));
        let stdout_tail = Arc::new(Mutex::new(Tail::default()));
        let mut forwarders = Vec::new();
        if let Some(stdout) = child.stdout.take() {
            forwarders.push(forward(stdout, sink.clone(), stdout_tail.clone()));
        }
        if let Some(stderr) = child.stderr.take() {
            forwarders.push(forward(stderr, sink, stderr_tail.clone()));
        }
        Ok(Service {
            child,
            program: program.clone(),
            status: None,
            stderr_tail,
            stdout_tail,
            forwarders,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, if the service has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Like [`exited`](Self::exited), waiting up to `timeout` for an exit
    /// that may be under way: a service closes its sockets (and the replays
    /// fail) a moment before the kernel reports it gone.
    pub fn exited_within(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// How it ended, and the last lines of its stderr (stdout when stderr
    /// said nothing), for a message.
    pub fn describe_exit(&self, status: ExitStatus) -> String {
        let mut text = format!("{} exited ({})", self.program, describe_status(status));
        // The forwarding threads may still be reading what it wrote last:
        // they end when its pipes close (children may keep them open).
        let deadline = Instant::now() + Duration::from_millis(500);
        while self.forwarders.iter().any(|f| !f.is_finished()) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        let mut tail = self
            .stderr_tail
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .text();
        let mut which = "stderr";
        if tail.is_empty() {
            tail = self
                .stdout_tail
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .text();
            which = "stdout";
        }
        if tail.is_empty() {
            text.push_str("; it printed nothing");
        } else {
            text.push_str(&format!("; last lines of its {which}:"));
            for line in tail {
                text.push_str("\n  | ");
                text.push_str(&line);
            }
        }
        text
    }

    /// SIGTERM to the whole process group, SIGKILL after [`STOP_TIMEOUT`].
    /// Returns the exit status.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let group = -(self.child.id() as libc::pid_t);
        if self.exited().is_none() {
            // SAFETY: signals our own child's process group.
            unsafe { libc::kill(group, libc::SIGTERM) };
            let deadline = Instant::now() + STOP_TIMEOUT;
            let mut pause = Duration::from_millis(5);
            while self.exited().is_none() && Instant::now() < deadline {
                thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(100));
            }
        }
        // Whatever is left of the group (the leader or its children).
        // SAFETY: as above; ESRCH when nothing is left.
        unsafe { libc::kill(group, libc::SIGKILL) };
        if self.status.is_none() {
            self.status = self.child.wait().ok();
        }
        self.status
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop();
    }
}

fn describe_status(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => status.to_string(),
    }
}

fn forward(
    mut source: impl Read + Send + 'static,
    sink: Arc<Sink>,
    tail: Arc<Mutex<Tail>>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut buffer = vec![0; 16 * 1024];
        loop {
            let read = match source.read(&mut buffer) {
                Ok(0) | Err(_) => return,
                Ok(read) => read,
            };
            let bytes = &buffer[..read];
            tail.lock().unwrap_or_else(|e| e.into_inner()).push(bytes);
            match &*sink {
                Sink::Term(term) => term.write_through(bytes),
                Sink::File(file) => {
                    let _ = file
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .write_all(bytes);
                }
            }
        }
    })
}

/// Waits until the inbound server answers `GET /v1/status` and the service
/// accepts a TCP connection on `sut`, polling (no fixed delay) and bounded
/// by `timeout`. Fails at once when the service exits or koala is
/// interrupted.
pub fn wait_ready(
    service: &mut Service,
    inbound: SocketAddr,
    token: Option<&str>,
    sut: SocketAddr,
    timeout: Duration,
) -> Result<Status, String> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    let mut status = None;
    let mut last_problem = String::from("nothing tried yet");
    loop {
        if let Some(exit) = service.exited() {
            return Err(format!(
                "the service stopped before it was ready: {}",
                service.describe_exit(exit)
            ));
        }
        if interrupted() {
            return Err("interrupted while waiting for the service".into());
        }
        if status.is_none() {
            let mut client = Client::new(inbound, Duration::from_secs(2), token);
            match client.get("/v1/status") {
                Ok(response) if response.status == 200 => {
                    match serde_json::from_slice::<Status>(&response.body) {
                        Ok(answer) => status = Some(answer),
                        Err(e) => last_problem = format!("GET /v1/status: invalid answer: {e}"),
                    }
                }
                Ok(response) => {
                    last_problem = format!("GET /v1/status answered {}", response.status)
                }
                Err(e) => last_problem = format!("GET /v1/status: {e}"),
            }
        }
        if let Some(ready) = &status {
            match TcpStream::connect_timeout(&sut, Duration::from_secs(1)) {
                Ok(_) => return Ok(ready.clone()),
                Err(e) => {
                    last_problem =
                        format!("the service does not accept connections on {sut} (--sut): {e}")
                }
            }
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(format!(
                "the service was not ready within {} s (--start-timeout): {last_problem}",
                timeout.as_secs_f64()
            ));
        }
        thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails_keep_the_last_lines() {
        let mut tail = Tail::default();
        for i in 0..30 {
            tail.push(format!("line {i}\r\n").as_bytes());
        }
        tail.push(b"partial");
        let text = tail.text();
        assert_eq!(text.len(), TAIL_LINES + 1);
        assert_eq!(text[0], "line 10");
        assert_eq!(text[TAIL_LINES], "partial");
    }

    #[test]
    fn a_service_that_fails_is_described_with_its_stderr() {
        let term = Arc::new(Term::new(false));
        let log =
            std::env::temp_dir().join(format!("koala-service-test-{}.log", std::process::id()));
        let mut service = Service::start(
            &[
                "sh".into(),
                "-c".into(),
                "echo out; echo \"boom $KOALA_X\" >&2; exit 3".into(),
            ],
            &[("KOALA_X", "42".into())],
            Some(&log),
            term,
        )
        .unwrap();
        let status = service.child.wait().unwrap();
        service.status = Some(status);
        let text = service.describe_exit(status);
        assert!(text.contains("sh exited (exit status 3)"), "{text}");
        assert!(text.contains("| boom 42"), "{text}");
        assert!(!text.contains("| out"), "{text}");
        let logged = std::fs::read_to_string(&log).unwrap();
        assert!(
            logged.contains("out\n") && logged.contains("boom 42\n"),
            "{logged}"
        );
        std::fs::remove_file(&log).unwrap();
    }

    #[test]
    fn stop_terminates_the_process_group() {
        let term = Arc::new(Term::new(false));
        let log =
            std::env::temp_dir().join(format!("koala-service-stop-{}.log", std::process::id()));
        // The shell ignores SIGTERM, and so does the child it leaves in
        // the background: SIGKILL must follow, for both.
        let mut service = Service::start(
            &[
                "sh".into(),
                "-c".into(),
                "trap '' TERM; sleep 1000 & echo $!; while :; do sleep 1; done".into(),
            ],
            &[],
            Some(&log),
            term,
        )
        .unwrap();
        // Once the trap is set and the child runs.
        let child: libc::pid_t = loop {
            let first = service.stdout_tail.lock().unwrap().lines.front().cloned();
            if let Some(line) = first {
                break line.parse().unwrap();
            }
            thread::sleep(Duration::from_millis(5));
        };
        let started = Instant::now();
        let status = service.stop().unwrap();
        let took = started.elapsed();
        assert!(
            took >= STOP_TIMEOUT && took < STOP_TIMEOUT + Duration::from_secs(2),
            "{took:?}"
        );
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        // Gone, or dead and waiting for its new parent to reap it.
        let dead = || match std::fs::read_to_string(format!("/proc/{child}/stat")) {
            Ok(stat) => stat
                .rsplit(')')
                .next()
                .is_some_and(|fields| fields.trim_start().starts_with('Z')),
            Err(_) => true,
        };
        let deadline = Instant::now() + Duration::from_secs(2);
        while !dead() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        assert!(dead(), "the service's child {child} survived stop()");
        std::fs::remove_file(&log).unwrap();
    }

    #[test]
    fn a_missing_program_is_reported() {
        let error = Service::start(
            &["/nonexistent/koala-service".into()],
            &[],
            None,
            Arc::new(Term::new(false)),
        )
        .err()
        .unwrap();
        assert!(
            error.contains("cannot run /nonexistent/koala-service"),
            "{error}"
        );
    }
}
