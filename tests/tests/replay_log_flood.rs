//! Log floods: a replayed service that sends 2000 requests no recorded call
//! matches gets 2000 answers and a report naming all 2000, but the log does
//! not get 2000 lines. The WARN per unmatched request is rate-limited (the
//! first 20, then one in 100), each line carrying the count so far, and the
//! total is in koala's summary.

use koala_tests::replay::*;
use koala_tests::*;

const EXTRA: usize = 2000;

/// `service PORT REDIS_PORT`: per request, on a new redis connection, `GET
/// key:0`, then EXTRA_GETS times `GET other:<i>`; answers how many replies
/// it got and how many were errors. Raw RESP: no client library retries.
const SERVICE: &str = r#"
import os, signal, socket, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

REDIS = int(sys.argv[2])
EXTRA = int(os.environ.get("EXTRA_GETS", "0"))


def command(sock, reader, *parts):
    out = b"*%d\r\n" % len(parts)
    for part in parts:
        part = part.encode()
        out += b"$%d\r\n%s\r\n" % (len(part), part)
    sock.sendall(out)
    line = reader.readline()
    if line.startswith(b"$") and not line.startswith(b"$-1"):
        line += reader.read(int(line[1:]) + 2)
    return line


class Service(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        with socket.create_connection(("127.0.0.1", REDIS)) as redis:
            reader = redis.makefile("rb")
            replies = [command(redis, reader, "GET", "key:0")]
            replies += [command(redis, reader, "GET", "other:%d" % i) for i in range(EXTRA)]
        errors = sum(1 for reply in replies if reply.startswith(b"-"))
        body = b"%d replies, %d errors" % (len(replies), errors)
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    def log_message(self, *args):
        pass


signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Service).serve_forever()
"#;

fn request(port: u16) -> Vec<u8> {
    format!("GET /burst HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").into_bytes()
}

fn answer(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The lines of every log file `<dir>/<name>*` (rotated hourly).
fn log_lines(dir: &TestDir, name: &str) -> Vec<String> {
    let mut lines = Vec::new();
    for entry in std::fs::read_dir(dir.path()).expect("test dir") {
        let path = entry.expect("entry").path();
        let file = path.file_name().unwrap_or_default().to_string_lossy();
        if file.starts_with(name) {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            lines.extend(text.lines().map(str::to_string));
        }
    }
    lines
}

#[test]
fn two_thousand_unmatched_requests_are_not_two_thousand_lines() {
    let dir = TestDir::new("replay_log_flood");
    let script = dir.join("service.py");
    std::fs::write(&script, SERVICE).unwrap();
    let (mut redis, redis_port) = start_redis(&dir);
    let record = dir.join("record");
    let port = free_port();
    let args = [port.to_string(), redis_port.to_string()];
    let mut service = Spec::new("record-service", python())
        .arg("-u")
        .arg(script.display())
        .args(args.clone())
        .record_to(&record)
        .spawn(&dir);
    service.wait_for_port(port);
    let mut stream = connect(port);
    let response = http_exchange(&mut stream, &request(port));
    assert_bytes(&response, &answer("1 replies, 0 errors"), "recorded answer");
    drop(stream);
    wait_for_sessions(&record, 1);
    service.stop_cleanly();
    redis.stop();
    assert_port_closed(redis_port, "redis");

    let log = dir.join("koala-replay.log");
    let mut koala_args: Vec<String> = ["replay", "record", "--lib"].map(String::from).to_vec();
    koala_args.push(koala_lib().display().to_string());
    koala_args.extend(["--on-miss", "error", "--report", "report.json", "--"].map(String::from));
    koala_args.push(python().display().to_string());
    koala_args.push("-u".into());
    koala_args.push(script.display().to_string());
    koala_args.extend(args);
    let run = run_koala(
        &dir,
        "replay",
        &koala_args,
        &[
            ("EXTRA_GETS", EXTRA.to_string()),
            ("KOALA_LOG_FILE", log.display().to_string()),
        ],
    );
    let out = run.output();
    // The total is reported: every unmatched request, in the summary and
    // in the report, each answered with an error.
    run.assert_summary([1, 0, 1, 0], [1, EXTRA, 0, 0]);
    let report = read_report(&dir.join("report.json"));
    let entries = report_entries(&report);
    assert_eq!(entries.len(), 1, "{out}");
    let result = &entries[0]["result"];
    assert_eq!(
        result["unmatched"].as_array().map(Vec::len),
        Some(EXTRA),
        "{out}"
    );
    assert_eq!(
        result["response"].as_str().map(str::as_bytes),
        Some(answer(&format!("{} replies, {EXTRA} errors", EXTRA + 1)).as_slice()),
        "what the service answered\n{out}"
    );

    // The log: the first 20 misses, then every 100th, each with its count.
    let lines = log_lines(&dir, "koala-replay.log");
    let warnings: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("no recorded call matches this request"))
        .collect();
    let counts: Vec<usize> = warnings
        .iter()
        .map(|line| {
            assert!(line.contains("WARN"), "{line}");
            line.split_whitespace()
                .find_map(|word| word.strip_prefix("unmatched_so_far="))
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no unmatched_so_far count in {line}"))
        })
        .collect();
    let expected: Vec<usize> = (1..=20).chain((101..EXTRA).step_by(100)).collect();
    assert_eq!(counts, expected, "{}", lines.join("\n"));
    // Nothing else floods: the whole log is a few dozen lines.
    assert!(
        lines.len() < 100,
        "{} log lines for {EXTRA} unmatched requests:\n{}",
        lines.len(),
        lines.join("\n")
    );
}
