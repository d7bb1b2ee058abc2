//! `koala show` on a session file with a torn line: a write cut inside a
//! multi-byte character (the disk filled up) and the next session appended
//! to it. The good lines are shown, the bad one is reported by number, and
//! the exit code says a line was bad — as `koala replay` does.

use std::fs;

use koala_tests::replay::run_koala;
use koala_tests::*;

/// An HTTP service whose answers hold a non-ASCII (so multi-byte) body.
const SERVICE: &str = r#"
import signal, sys
from http.server import BaseHTTPRequestHandler, HTTPServer

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *args):
        pass
    def do_GET(self):
        body = ("price of " + self.path[1:] + ": 3 \u20ac\n").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"#;

#[test]
fn show_reports_a_torn_line_and_shows_the_others() {
    let dir = TestDir::new("files-show");
    let script = dir.join("euro_service.py");
    fs::write(&script, SERVICE).unwrap();
    let record = dir.join("record");
    let port = free_port();
    let mut service = Spec::new("service", python())
        .arg(script.display())
        .arg(port)
        .record_to(&record)
        .spawn(&dir);
    service.wait_for_port(port);
    let items = ["apple", "pear", "plum", "fig"];
    let mut stream = connect(port);
    for item in items {
        let request = format!("GET /{item} HTTP/1.1\r\nHost: x\r\n\r\n");
        let response = http_exchange(&mut stream, request.as_bytes());
        assert!(
            response.ends_with(format!("price of {item}: 3 \u{20ac}\n").as_bytes()),
            "{}",
            String::from_utf8_lossy(&response)
        );
    }
    drop(stream);
    service.stop_cleanly();
    let sessions = read_sessions(&record);
    assert_eq!(sessions.len(), 4, "{}", describe_dir(&record));

    // The second line torn inside the euro sign's three bytes, and the
    // third appended right after it: one bad line between two good ones.
    let file = record.join(format!("python3-{}.jsonl", service.pid()));
    let bytes = fs::read(&file).unwrap();
    let lines: Vec<&[u8]> = bytes.split_inclusive(|b| *b == b'\n').collect();
    assert_eq!(lines.len(), 4);
    let euro = find(lines[1], "\u{20ac}".as_bytes()).expect("the body is recorded as text");
    let mut torn = lines[0].to_vec();
    torn.extend_from_slice(&lines[1][..euro + 2]);
    torn.extend_from_slice(lines[2]);
    torn.extend_from_slice(lines[3]);
    fs::write(&file, &torn).unwrap();

    let run = run_koala(
        &dir,
        "show",
        &["show".into(), file.display().to_string()],
        &[],
    );
    assert_eq!(
        run.code,
        Some(1),
        "one bad line: exit code 1\n{}",
        run.output()
    );
    let shown: Vec<&str> = run
        .stdout
        .lines()
        .filter(|line| line.trim_start().starts_with("session "))
        .collect();
    assert_eq!(
        shown.len(),
        2,
        "the good sessions are shown\n{}",
        run.output()
    );
    for (line, session) in shown.iter().zip([&sessions[0], &sessions[3]]) {
        assert!(
            line.contains(&session.id),
            "{line} is not {}\n{}",
            session.id,
            run.output()
        );
    }
    let bad: Vec<&str> = run
        .stdout
        .lines()
        .filter(|line| line.trim_start().starts_with("! "))
        .collect();
    assert_eq!(bad.len(), 1, "{}", run.output());
    assert!(
        bad[0].starts_with("  ! line 2: not valid UTF-8: "),
        "{}",
        run.output()
    );
    assert!(
        run.stdout.ends_with("\n2 session(s), 1 bad line(s)\n"),
        "{}",
        run.output()
    );
}
