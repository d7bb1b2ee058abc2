//! exec() replaces the image that holds the recorder: sessions finished or
//! still open on kept-alive connections must be written before it, whichever
//! exported entry point of the exec family the program calls (glibc's own
//! execv, execvp and execl* never go through the exported execve). The real
//! exec runs once with the caller's arguments; when it fails, the program
//! goes on and is recorded as before.

use std::process::Command;
use std::time::Duration;

use koala_tests::*;

/// `exec_server PORT COUNT MODE`: answers COUNT connections, one request
/// each, keeping them open, then execs through the entry point MODE into
/// `sh -c 'echo "$0 $1 ${MARK:-none}"' exec-ok MODE` (the variants taking
/// an environment add MARK=from-envp to it). MODE `fail` first execvp's a
/// program that does not exist; on its failure it answers COUNT more
/// connections and exits. MODE `fail-path` execv's a path that does not
/// exist, then answers one more request on each kept connection and exits.
const SERVER: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

extern char **environ;

/* The next request on a kept connection. */
static int again(int fd, int item) {
    char request[512];
    size_t got = 0;
    while (got < sizeof request - 1) {
        ssize_t n = read(fd, request + got, sizeof request - 1 - got);
        if (n <= 0) return -1;
        got += n;
        request[got] = 0;
        if (strstr(request, "\r\n\r\n")) break;
    }
    char body[64], response[256];
    int body_len = snprintf(body, sizeof body, "item %d", item);
    int len = snprintf(response, sizeof response,
                       "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", body_len, body);
    return write(fd, response, len) == len ? 0 : -1;
}

/* Accepts a connection and answers its first request; the connection is
 * kept open: the session is not over. */
static int answer(int listener, int item) {
    int fd = accept(listener, NULL, NULL);
    if (fd < 0) return -1;
    return again(fd, item) == 0 ? fd : -1;
}

static char **with_mark(void) {
    size_t n = 0;
    while (environ[n]) n++;
    char **envp = calloc(n + 2, sizeof *envp);
    memcpy(envp, environ, n * sizeof *envp);
    envp[n] = "MARK=from-envp";
    return envp;
}

int main(int argc, char **argv) {
    if (argc != 4) return 2;
    int port = atoi(argv[1]), count = atoi(argv[2]);
    const char *mode = argv[3];
    int listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port),
                               .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(listener, (struct sockaddr *)&addr, sizeof addr) || listen(listener, 64)) return 3;
    int kept[64];
    if (count > 64) return 2;
    for (int i = 0; i < count; i++)
        if ((kept[i] = answer(listener, i)) < 0) return 4;

    const char *script = "echo \"$0 $1 ${MARK:-none}\"";
    char *args[] = {"sh", "-c", (char *)script, "exec-ok", (char *)mode, NULL};
    char **envp = with_mark();
    if (!strcmp(mode, "execve")) execve("/bin/sh", args, envp);
    else if (!strcmp(mode, "execv")) execv("/bin/sh", args);
    else if (!strcmp(mode, "execvp")) execvp("sh", args);
    else if (!strcmp(mode, "execvpe")) execvpe("sh", args, envp);
    else if (!strcmp(mode, "execl")) execl("/bin/sh", "sh", "-c", script, "exec-ok", mode, (char *)NULL);
    else if (!strcmp(mode, "execle")) execle("/bin/sh", "sh", "-c", script, "exec-ok", mode, (char *)NULL, envp);
    else if (!strcmp(mode, "execlp")) execlp("sh", "sh", "-c", script, "exec-ok", mode, (char *)NULL);
    else if (!strcmp(mode, "fexecve")) {
        int fd = open("/bin/sh", O_RDONLY | O_CLOEXEC);
        fexecve(fd, args, envp);
    } else if (!strcmp(mode, "execveat")) execveat(AT_FDCWD, "/bin/sh", args, envp, 0);
    else if (!strcmp(mode, "fail")) {
        execvp("koala-no-such-program", args);
        printf("exec failed: errno %d\n", errno);
        fflush(stdout);
        for (int i = count; i < 2 * count; i++) {
            int fd = answer(listener, i);
            if (fd < 0) return 5;
            close(fd);
        }
        return 0;
    } else if (!strcmp(mode, "fail-path")) {
        execv("/koala-no-such-dir/sh", args);
        printf("exec failed: errno %d\n", errno);
        fflush(stdout);
        for (int i = 0; i < count; i++)
            if (again(kept[i], count + i) < 0) return 5;
        return 0;
    }
    printf("%s returned: errno %d\n", mode, errno);
    return 6;
}
"#;

const COUNT: usize = 20;

fn request(item: usize) -> Vec<u8> {
    format!("GET /item/{item} HTTP/1.1\r\nHost: svc\r\n\r\n").into_bytes()
}

fn response(item: usize) -> Vec<u8> {
    let body = format!("item {item}");
    format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Compiles the server and checks it imports `symbol` itself (else the
/// test would not exercise that entry point's hook).
fn build_server(dir: &TestDir, symbol: &str) -> std::path::PathBuf {
    let source = dir.join("exec_server.c");
    std::fs::write(&source, SERVER).expect("write exec_server.c");
    let binary = dir.join("exec_server");
    compile_c(&source, &["-O2", "-Wall"], &binary);
    let nm = Command::new(require_program("nm", "binutils"))
        .arg("-D")
        .arg(&binary)
        .output()
        .expect("run nm -D");
    let imports = String::from_utf8_lossy(&nm.stdout).into_owned();
    assert!(
        imports
            .lines()
            .filter_map(|line| line.trim().strip_prefix("U "))
            .any(|s| s.split('@').next() == Some(symbol)),
        "exec_server does not import {symbol}:\n{imports}"
    );
    binary
}

/// Runs the server in record mode, makes COUNT exchanges (their sessions
/// still open: the connections stay up and the idle timeout is far), waits
/// for the exit of the program it exec'd (or, for `fail`, answers COUNT
/// more), and returns the sessions written, the program's stdout and the
/// `sessions_written` of each summary line in the log.
fn record_around_exec(mode: &str, symbol: &str) -> (Vec<koala_session::Session>, String, Vec<u64>) {
    let dir = TestDir::new(&format!("record_exec_{mode}"));
    let server = build_server(&dir, symbol);
    let record = dir.join("record");
    let port = free_port();
    let mut program = Spec::new("exec_server", &server)
        .args([port.to_string(), COUNT.to_string(), mode.to_string()])
        .record_to(&record)
        .env("KOALA_SESSION_IDLE_MS", 600_000)
        .spawn(&dir);
    program.wait_for_port(port);
    let mut kept = Vec::new();
    for item in 0..COUNT {
        let mut stream = connect(port);
        let answer = http_exchange(&mut stream, &request(item));
        assert_bytes(&answer, &response(item), &format!("response {item}"));
        kept.push(stream);
    }
    if mode == "fail" {
        for item in COUNT..2 * COUNT {
            let mut stream = connect(port);
            let answer = http_exchange(&mut stream, &request(item));
            assert_bytes(&answer, &response(item), &format!("response {item}"));
        }
    }
    if mode == "fail-path" {
        for (index, stream) in kept.iter_mut().enumerate() {
            let item = COUNT + index;
            let answer = http_exchange(stream, &request(item));
            assert_bytes(&answer, &response(item), &format!("response {item}"));
        }
    }
    let status = program.wait_for_exit(Duration::from_secs(20));
    assert!(
        status.success(),
        "exec_server {mode}: {status}\n{}",
        program.output_report()
    );
    // Every line was written before the exec (or at exit): nothing to wait for.
    let sessions = read_sessions(&record);
    let stdout = program.stdout();
    drop(kept);
    (sessions, stdout, summaries_written(&record))
}

/// `sessions_written` of every `koala recording summary` line of the
/// default log (`<record>/koala.log.*`).
fn summaries_written(record: &std::path::Path) -> Vec<u64> {
    let mut written = Vec::new();
    for entry in std::fs::read_dir(record).expect("record dir").flatten() {
        if !entry.file_name().to_string_lossy().starts_with("koala.log") {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        for line in text
            .lines()
            .filter(|l| l.contains("koala recording summary"))
        {
            let value = line
                .split_whitespace()
                .find_map(|word| word.strip_prefix("sessions_written="))
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no sessions_written in {line}"));
            written.push(value);
        }
    }
    written
}

/// The COUNT sessions of the first image: exact bytes, ended by the exec.
#[track_caller]
fn assert_flushed(sessions: &[koala_session::Session], mode: &str) {
    let mut firsts: Vec<_> = sessions
        .iter()
        .filter(|s| s.end == Some(koala_session::EndReason::Exit))
        .collect();
    assert_eq!(
        firsts.len(),
        COUNT,
        "{mode}: sessions ended by the exec:\n{}",
        sessions.iter().map(show).collect::<Vec<_>>().join("\n")
    );
    firsts.sort_by_key(|s| s.inbound.request.as_bytes().to_vec());
    let mut expected: Vec<usize> = (0..COUNT).collect();
    expected.sort_by_key(|&item| request(item));
    for (session, item) in firsts.iter().zip(expected) {
        assert_bytes(
            session.inbound.request.as_bytes(),
            &request(item),
            &format!("{mode}: request {item}"),
        );
        assert_bytes(
            session.inbound.response.as_bytes(),
            &response(item),
            &format!("{mode}: response {item}"),
        );
        assert!(session.calls.is_empty(), "{mode}: {}", show(session));
    }
}

/// One test per exported entry point: `(mode, symbol imported, MARK seen)`.
fn exec_through(mode: &str, mark: &str) {
    let (sessions, stdout, summaries) = record_around_exec(mode, mode);
    assert_eq!(
        stdout,
        format!("exec-ok {mode} {mark}\n"),
        "{mode}: the exec'd program's output"
    );
    assert_eq!(sessions.len(), COUNT, "{mode}: sessions written");
    assert_flushed(&sessions, mode);
    // Counted: the summary logged before the exec (the exec'd shell saw no
    // connection and logs none).
    assert_eq!(
        summaries,
        [COUNT as u64],
        "{mode}: summaries' sessions_written"
    );
}

#[test]
fn execve_flushes_first() {
    exec_through("execve", "from-envp");
}

#[test]
fn execv_flushes_first() {
    exec_through("execv", "none");
}

#[test]
fn execvp_flushes_first() {
    exec_through("execvp", "none");
}

#[test]
fn execvpe_flushes_first() {
    exec_through("execvpe", "from-envp");
}

#[test]
fn execl_flushes_first() {
    exec_through("execl", "none");
}

#[test]
fn execle_flushes_first() {
    exec_through("execle", "from-envp");
}

#[test]
fn execlp_flushes_first() {
    exec_through("execlp", "none");
}

#[test]
fn fexecve_flushes_first() {
    exec_through("fexecve", "from-envp");
}

#[test]
fn execveat_flushes_first() {
    exec_through("execveat", "from-envp");
}

/// An exec that fails (execvp of a program that does not exist) still
/// flushed first; the program goes on and its later sessions are recorded.
/// Its two summary lines (before the exec, at exit) add up: none counts a
/// session twice.
#[test]
fn failed_exec_goes_on_recording() {
    let (sessions, stdout, summaries) = record_around_exec("fail", "execvp");
    assert_eq!(stdout, "exec failed: errno 2\n");
    assert_eq!(sessions.len(), 2 * COUNT, "sessions written");
    assert_eq!(
        summaries,
        [COUNT as u64, COUNT as u64],
        "summaries' sessions_written"
    );
    let before: Vec<_> = sessions
        .iter()
        .filter(|s| s.end == Some(koala_session::EndReason::Exit))
        .cloned()
        .collect();
    assert_flushed(&before, "fail");
    let mut after: Vec<_> = sessions
        .iter()
        .filter(|s| s.end != Some(koala_session::EndReason::Exit))
        .collect();
    after.sort_by_key(|s| s.inbound.request.as_bytes().to_vec());
    let mut expected: Vec<usize> = (COUNT..2 * COUNT).collect();
    expected.sort_by_key(|&item| request(item));
    assert_eq!(after.len(), COUNT);
    for (session, item) in after.iter().zip(expected) {
        assert_bytes(
            session.inbound.request.as_bytes(),
            &request(item),
            &format!("after the failed exec: request {item}"),
        );
        assert_bytes(
            session.inbound.response.as_bytes(),
            &response(item),
            &format!("after the failed exec: response {item}"),
        );
    }
}

/// Python's `os.execvp` searches PATH itself, calling execv on each entry
/// until one runs. The entries that cannot run fail without replacing
/// anything: one summary line, before the exec that succeeds.
const PYTHON_SERVER: &str = r#"
import os, socket, sys

port, count = int(sys.argv[1]), int(sys.argv[2])
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", port))
listener.listen(64)
kept = []
for item in range(count):
    conn, _ = listener.accept()
    request = b""
    while b"\r\n\r\n" not in request:
        request += conn.recv(4096)
    body = b"item %d" % item
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    kept.append(conn)  # kept open: the session is not over
os.execvp("sh", ["sh", "-c", 'echo "$0 $1"', "exec-ok", "python"])
"#;

#[test]
fn python_execvp_flushes_once_across_its_path_search() {
    let dir = TestDir::new("record_exec_python");
    let script = dir.join("server.py");
    std::fs::write(&script, PYTHON_SERVER).expect("write server.py");
    // Two entries without `sh` before the ones with it.
    let missing = dir.join("no-such-dir");
    let empty = dir.join("empty-dir");
    std::fs::create_dir(&empty).expect("create empty-dir");
    let path = format!("{}:{}:/usr/bin:/bin", missing.display(), empty.display());
    let record = dir.join("record");
    let port = free_port();
    let mut program = Spec::new("python_server", python())
        .arg("-u")
        .arg(script.display())
        .args([port.to_string(), COUNT.to_string()])
        .record_to(&record)
        .env("KOALA_SESSION_IDLE_MS", 600_000)
        .env("PATH", path)
        .spawn(&dir);
    program.wait_for_port(port);
    let mut kept = Vec::new();
    for item in 0..COUNT {
        let mut stream = connect(port);
        let answer = http_exchange(&mut stream, &request(item));
        assert_bytes(&answer, &response(item), &format!("response {item}"));
        kept.push(stream);
    }
    let status = program.wait_for_exit(Duration::from_secs(20));
    assert!(status.success(), "{status}\n{}", program.output_report());
    assert_eq!(program.stdout(), "exec-ok python\n");
    let sessions = read_sessions(&record);
    drop(kept);
    assert_eq!(sessions.len(), COUNT, "python: sessions written");
    assert_flushed(&sessions, "python");
    assert_eq!(
        summaries_written(&record),
        [COUNT as u64],
        "python: one summary line, before the exec that ran"
    );
}

/// A service that runs a program per request through fork + exec (Python's
/// subprocess with a `preexec_fn` forks; without one it may vfork, which
/// the library leaves alone): each child recorded nothing of its own, so
/// its exec logs nothing. One summary line in all, the service's at exit,
/// not one more per request.
const SPAWNING_SERVICE: &str = r#"
import signal, subprocess, sys
from http.server import BaseHTTPRequestHandler, HTTPServer


class Service(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        ran = subprocess.run(["/bin/echo", "ran"], capture_output=True, preexec_fn=lambda: None)
        body = b"item " + self.path.rsplit("/", 1)[-1].encode() + b" " + ran.stdout
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    def log_message(self, *args):
        pass


signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
HTTPServer(("127.0.0.1", int(sys.argv[1])), Service).serve_forever()
"#;

#[test]
fn children_that_exec_log_nothing_when_they_recorded_nothing() {
    const REQUESTS: usize = 10;
    let dir = TestDir::new("record_exec_children");
    let script = dir.join("service.py");
    std::fs::write(&script, SPAWNING_SERVICE).expect("write service.py");
    let record = dir.join("record");
    let port = free_port();
    let mut service = Spec::new("service", python())
        .arg("-u")
        .arg(script.display())
        .arg(port)
        .record_to(&record)
        .spawn(&dir);
    service.wait_for_port(port);
    for item in 0..REQUESTS {
        let mut stream = connect(port);
        let answer = http_exchange(&mut stream, &request(item));
        let body = format!("item {item} ran\n");
        let expected = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        assert_bytes(&answer, expected.as_bytes(), &format!("response {item}"));
    }
    wait_for_sessions(&record, REQUESTS);
    service.stop_cleanly();
    let sessions = read_sessions(&record);
    assert_eq!(sessions.len(), REQUESTS, "{}", describe_dir(&record));
    assert_eq!(
        summaries_written(&record),
        [REQUESTS as u64],
        "one summary line, the service's\n{}",
        describe_dir(&record)
    );
}

/// An execv of a path that cannot run fails without replacing anything:
/// no flush (`faccessat(X_OK)` says so first), so the sessions open on the
/// kept connections are not cut: each ends when its connection brings the
/// next request, as without the exec.
#[test]
fn exec_of_a_path_that_cannot_run_cuts_no_session() {
    let (sessions, stdout, summaries) = record_around_exec("fail-path", "execv");
    assert_eq!(stdout, "exec failed: errno 2\n");
    assert_eq!(sessions.len(), 2 * COUNT, "sessions written");
    let mut by_item: Vec<_> = sessions.iter().collect();
    by_item.sort_by_key(|s| s.inbound.request.as_bytes().to_vec());
    let mut expected: Vec<usize> = (0..2 * COUNT).collect();
    expected.sort_by_key(|&item| request(item));
    for (session, item) in by_item.into_iter().zip(expected) {
        assert_bytes(
            session.inbound.request.as_bytes(),
            &request(item),
            &format!("request {item}"),
        );
        assert_bytes(
            session.inbound.response.as_bytes(),
            &response(item),
            &format!("response {item}"),
        );
        let end = if item < COUNT {
            koala_session::EndReason::NextRequest
        } else {
            koala_session::EndReason::Exit
        };
        assert_eq!(session.end, Some(end), "item {item}: {}", show(session));
    }
    assert_eq!(summaries, [2 * COUNT as u64], "one summary, at exit");
}
