//! Shipping throughput: `koala ship --once` of a corpus of session lines
//! into NATS JetStream, one node (stream with 1 replica) and a three-node
//! cluster (3 replicas), in sessions/s and MB/s of session lines. Every
//! round ships the whole corpus into a new stream, with a new progress
//! file; the time is koala ship's wall time, from start (connect, create
//! the stream) to exit (every line confirmed). Reported, never asserted.

use std::process::Command;
use std::time::Instant;

use koala_tests::TestDir;
use koala_tests::nats::{Nats, ServerAuth, stream_messages};
use koala_tests::replay::koala_bin;
use serde_json::{Value, json};

use crate::Settings;
use crate::stats::Series;

/// One topology's figures.
pub struct Topology {
    pub name: &'static str,
    pub replicas: u32,
    pub sessions_per_s: Series,
    pub mb_per_s: Series,
}

pub struct Measured {
    pub sessions: usize,
    pub bytes: u64,
    pub topologies: Vec<Topology>,
}

/// A session line of about 2 KB (an HTTP request, a response, two calls),
/// with its own id.
fn line(n: usize) -> String {
    let body = format!("{{\"item\":{n},\"value\":\"{}\"}}", "v".repeat(900));
    json!({
        "koala": 1, "id": format!("1700000000-4242-{n}"), "pid": 4242, "tid": 4243,
        "program": "bench", "end": "next_request",
        "inbound": {"local": "127.0.0.1:8080", "peer": "127.0.0.1:50000",
                    "request": format!("GET /item/{n} HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"),
                    "response": format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len()),
                    "request_ns": 1_700_000_000_000_000_000u64 + n as u64, "response_ns": 1_700_000_000_000_000_500u64 + n as u64},
        "calls": [
            {"local": "127.0.0.1:40000", "peer": "127.0.0.1:6379", "request": format!("*2\r\n$3\r\nGET\r\n$8\r\nitem:{n:03}\r\n"),
             "response": format!("${}\r\n{}\r\n", 400, "x".repeat(400)), "request_ns": 1, "response_ns": 2, "conn": 1, "seq": n},
            {"local": "127.0.0.1:40001", "peer": "127.0.0.1:9000", "request": "GET /backend HTTP/1.1\r\n\r\n",
             "response": "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", "request_ns": 3, "response_ns": 4, "conn": 2, "seq": n}
        ]
    })
    .to_string()
}

pub fn measure(settings: &Settings) -> Measured {
    let dir = TestDir::new("bench-ship");
    let record = dir.join("record");
    std::fs::create_dir_all(&record).expect("create the corpus directory");
    let sessions = settings.ship_sessions;
    let mut text = String::new();
    for n in 0..sessions {
        text.push_str(&line(n));
        text.push('\n');
    }
    let bytes = text.len() as u64;
    std::fs::write(record.join("bench-4242.jsonl"), &text).expect("write the corpus");
    eprintln!(
        "== ship: {sessions} sessions ({:.1} MB), {} rounds, one node and three",
        bytes as f64 / 1e6,
        settings.rounds
    );
    let mut topologies = Vec::new();
    for (name, nodes, replicas) in [("1 node, R1", 1, 1u32), ("3 nodes, R3", 3, 3)] {
        let nats = if nodes == 1 {
            Nats::single(&dir, ServerAuth::None)
        } else {
            Nats::cluster(&dir, nodes)
        };
        let mut topology = Topology {
            name,
            replicas,
            sessions_per_s: Series::default(),
            mb_per_s: Series::default(),
        };
        for round in 0..settings.rounds {
            let stream = format!("BENCH{nodes}R{round}");
            let state = dir.join(format!("{stream}.state"));
            let started = Instant::now();
            let out = Command::new(koala_bin())
                .args(["ship", "--once", "--quiet", "--create", "--host", "bench"])
                .arg("--replicas")
                .arg(replicas.to_string())
                .arg("--to")
                .arg(nats.url())
                .arg("--stream")
                .arg(&stream)
                .arg("--state")
                .arg(&state)
                .arg(&record)
                .output()
                .expect("run koala ship");
            let seconds = started.elapsed().as_secs_f64();
            assert!(
                out.status.success(),
                "koala ship failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let stored = stream_messages(&nats.url(), &stream).len();
            assert_eq!(stored, sessions, "every session in {stream}");
            topology.sessions_per_s.push(sessions as f64 / seconds);
            topology.mb_per_s.push(bytes as f64 / 1e6 / seconds);
        }
        eprintln!(
            "   {name}: {:.0} sessions/s, {:.1} MB/s (medians)",
            topology.sessions_per_s.median(),
            topology.mb_per_s.median()
        );
        topologies.push(topology);
    }
    Measured {
        sessions,
        bytes,
        topologies,
    }
}

impl Measured {
    pub fn json(&self) -> Value {
        json!({
            "sessions": self.sessions,
            "bytes": self.bytes,
            "topologies": self.topologies.iter().map(|t| json!({
                "name": t.name,
                "replicas": t.replicas,
                "sessions_per_s": t.sessions_per_s.json(),
                "mb_per_s": t.mb_per_s.json(),
            })).collect::<Vec<_>>(),
        })
    }
}

pub fn render(t: &mut String, m: &Measured, rounds: usize) {
    use std::fmt::Write;
    let _ = writeln!(
        t,
        "\nShipping throughput: koala ship --once of {} sessions ({:.1} MB of session lines) into a new\n\
         JetStream stream per round (file storage, loopback), {rounds} rounds; median [min–max]",
        m.sessions,
        m.bytes as f64 / 1e6
    );
    let _ = writeln!(t, "{:<14} {:>28} {:>24}", "cluster", "sessions/s", "MB/s");
    for topology in &m.topologies {
        let (s, b) = (&topology.sessions_per_s, &topology.mb_per_s);
        let _ = writeln!(
            t,
            "{:<14} {:>28} {:>24}",
            topology.name,
            format!("{:.0} [{:.0}–{:.0}]", s.median(), s.min(), s.max()),
            format!("{:.1} [{:.1}–{:.1}]", b.median(), b.min(), b.max()),
        );
    }
}
