//! Fork-heavy hosts: a recording process that forks children which `_exit`
//! without touching a socket (a helper run per request, a daemon's double
//! fork) pays nothing for them — no thread, no log line, no session file
//! per child — while a child that does record (a prefork worker) still
//! writes its sessions and its summary line.

use std::time::Duration;

use koala_tests::*;

/// `fork_server PORT CHILDREN`: answers one request in the parent after
/// forking CHILDREN children that `_exit(0)` at once (their pids printed
/// on stdout, `idle PID`); then forks a worker that accepts one connection
/// of its own, answers it and `_exit`s (`worker PID`); waits for it and
/// exits.
const SERVER: &str = r#"
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static int read_request(int fd) {
    char request[512];
    size_t got = 0;
    while (got < sizeof request - 1) {
        ssize_t n = read(fd, request + got, sizeof request - 1 - got);
        if (n <= 0) return -1;
        got += n;
        request[got] = 0;
        if (strstr(request, "\r\n\r\n")) return 0;
    }
    return -1;
}

static int answer(int fd, const char *body) {
    char response[256];
    int len = snprintf(response, sizeof response,
                       "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", (int)strlen(body), body);
    return write(fd, response, len) == len ? 0 : -1;
}

int main(int argc, char **argv) {
    if (argc != 3) return 2;
    int port = atoi(argv[1]), children = atoi(argv[2]);
    int listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port),
                               .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(listener, (struct sockaddr *)&addr, sizeof addr) || listen(listener, 64)) return 3;

    int fd = accept(listener, NULL, NULL);
    if (fd < 0 || read_request(fd)) return 4;
    /* Children forked while a session is open, touching no socket. */
    for (int i = 0; i < children; i++) {
        pid_t pid = fork();
        if (pid == 0) _exit(0);
        if (pid < 0) return 5;
        printf("idle %d\n", (int)pid);
    }
    for (int i = 0; i < children; i++)
        if (wait(NULL) < 0) return 6;
    char body[64];
    snprintf(body, sizeof body, "forked %d", children);
    if (answer(fd, body)) return 7;
    close(fd);

    /* A worker that records a connection of its own. */
    fflush(stdout);
    pid_t worker = fork();
    if (worker == 0) {
        int conn = accept(listener, NULL, NULL);
        if (conn < 0 || read_request(conn) || answer(conn, "worker")) _exit(8);
        close(conn);
        _exit(0);
    }
    if (worker < 0) return 9;
    printf("worker %d\n", (int)worker);
    fflush(stdout);
    int status = 0;
    if (waitpid(worker, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status)) return 10;
    return 0;
}
"#;

const CHILDREN: usize = 20;

fn request(path: &str) -> Vec<u8> {
    format!("GET /{path} HTTP/1.1\r\nHost: svc\r\n\r\n").into_bytes()
}

fn response(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// What a run left behind.
struct Run {
    record: std::path::PathBuf,
    parent: u32,
    idle: Vec<u32>,
    worker: u32,
    _dir: TestDir,
}

/// Records the server through both exchanges and its exit.
fn record_run(name: &str, env: &[(&str, &str)]) -> Run {
    let dir = TestDir::new(name);
    let source = dir.join("fork_server.c");
    std::fs::write(&source, SERVER).expect("write fork_server.c");
    let binary = dir.join("fork_server");
    compile_c(&source, &["-O2", "-Wall"], &binary);
    let record = dir.join("record");
    let port = free_port();
    let mut spec = Spec::new("fork_server", &binary)
        .args([port.to_string(), CHILDREN.to_string()])
        .record_to(&record);
    for (key, value) in env {
        spec = spec.env(key, value);
    }
    let mut program = spec.spawn(&dir);
    program.wait_for_port(port);
    let mut stream = connect(port);
    let answer = http_exchange(&mut stream, &request("parent"));
    assert_bytes(
        &answer,
        &response(&format!("forked {CHILDREN}")),
        "parent's answer",
    );
    drop(stream);
    let mut stream = connect(port);
    let answer = http_exchange(&mut stream, &request("worker"));
    assert_bytes(&answer, &response("worker"), "worker's answer");
    drop(stream);
    let status = program.wait_for_exit(Duration::from_secs(20));
    assert!(
        status.success(),
        "fork_server: {status}\n{}",
        program.output_report()
    );
    let stdout = program.stdout();
    let pids = |word: &str| -> Vec<u32> {
        stdout
            .lines()
            .filter_map(|line| line.strip_prefix(word)?.trim().parse().ok())
            .collect()
    };
    let idle = pids("idle ");
    assert_eq!(idle.len(), CHILDREN, "{stdout}");
    let worker = pids("worker ");
    assert_eq!(worker.len(), 1, "{stdout}");
    Run {
        record,
        parent: program.pid(),
        idle,
        worker: worker[0],
        _dir: dir,
    }
}

/// Every line of the default log (`<record>/koala.log.*`).
fn log_lines(record: &std::path::Path) -> Vec<String> {
    let mut lines = Vec::new();
    for entry in std::fs::read_dir(record).expect("record dir").flatten() {
        if entry.file_name().to_string_lossy().starts_with("koala.log") {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            lines.extend(text.lines().map(str::to_owned));
        }
    }
    lines
}

/// The pids of the summary lines (`koala[fork_server:PID] ... koala
/// recording summary`), sorted, with their `sessions_written`.
fn summaries(record: &std::path::Path) -> Vec<(u32, u64)> {
    let mut found: Vec<(u32, u64)> = log_lines(record)
        .iter()
        .filter(|line| line.contains("koala recording summary"))
        .map(|line| {
            let pid = line
                .split_once("koala[fork_server:")
                .and_then(|(_, rest)| rest.split_once(']'))
                .and_then(|(pid, _)| pid.parse().ok())
                .unwrap_or_else(|| panic!("no pid in {line}"));
            let written = line
                .split_whitespace()
                .find_map(|word| word.strip_prefix("sessions_written="))
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no sessions_written in {line}"));
            (pid, written)
        })
        .collect();
    found.sort();
    found
}

#[test]
fn children_that_record_nothing_leave_nothing() {
    let run = record_run("record_fork_children", &[]);
    let files = session_files(&run.record);
    let names: Vec<&str> = files.iter().map(|(name, _)| name.as_str()).collect();
    let mut expected = vec![
        format!("fork_server-{}.jsonl", run.parent),
        format!("fork_server-{}.jsonl", run.worker),
    ];
    expected.sort();
    assert_eq!(names, expected, "{}", describe_dir(&run.record));
    for (name, sessions) in &files {
        let (path, body) = if name.ends_with(&format!("-{}.jsonl", run.parent)) {
            ("parent", format!("forked {CHILDREN}"))
        } else {
            ("worker", "worker".to_owned())
        };
        assert_eq!(sessions.len(), 1, "{name}: {}", describe_dir(&run.record));
        let session = &sessions[0];
        assert_bytes(
            session.inbound.request.as_bytes(),
            &request(path),
            &format!("{name} request"),
        );
        assert_bytes(
            session.inbound.response.as_bytes(),
            &response(&body),
            &format!("{name} response"),
        );
    }
    // One summary line each for the parent and the worker, none for the
    // children that recorded nothing; and no line at all from them.
    let mut expected = vec![(run.parent, 1), (run.worker, 1)];
    expected.sort();
    assert_eq!(
        summaries(&run.record),
        expected,
        "{}",
        describe_dir(&run.record)
    );
    let lines = log_lines(&run.record);
    for pid in &run.idle {
        let prefix = format!("koala[fork_server:{pid}]");
        let theirs: Vec<_> = lines.iter().filter(|l| l.contains(&prefix)).collect();
        assert!(theirs.is_empty(), "child {pid} logged: {theirs:?}");
    }
}

#[test]
fn every_child_logs_a_summary_when_asked() {
    let run = record_run(
        "record_fork_children_always",
        &[("KOALA_CHILD_SUMMARY", "always")],
    );
    let mut expected: Vec<(u32, u64)> = run.idle.iter().map(|&pid| (pid, 0)).collect();
    expected.push((run.parent, 1));
    expected.push((run.worker, 1));
    expected.sort();
    assert_eq!(
        summaries(&run.record),
        expected,
        "{}",
        describe_dir(&run.record)
    );
    assert_eq!(session_files(&run.record).len(), 2);
}

#[test]
fn no_child_logs_a_summary_when_told_not_to() {
    let run = record_run(
        "record_fork_children_never",
        &[("KOALA_CHILD_SUMMARY", "never")],
    );
    assert_eq!(
        summaries(&run.record),
        [(run.parent, 1)],
        "{}",
        describe_dir(&run.record)
    );
    let files = session_files(&run.record);
    assert_eq!(files.len(), 2, "{}", describe_dir(&run.record));
    assert!(files.iter().all(|(_, sessions)| sessions.len() == 1));
}
