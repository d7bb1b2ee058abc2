//! Replay throughput: a corpus recorded from a small C service with two
//! outbound calls per request (redis GET, HTTP GET), replayed through
//! `koala replay` at several concurrencies, alone and with recording on
//! (`--record-to`, `KOALA_MODE=record,replay`).

use std::fs;
use std::path::PathBuf;
use std::thread;
use std::time::Instant;

use koala_tests::replay::koala_bin;
use koala_tests::{
    Spec, TestDir, clean_command, compile_c, connect, find, free_port, http_exchange,
    read_sessions, redis_set, start_redis,
};
use serde_json::{Value, json};

use crate::Settings;
use crate::recording::start_upstream;
use crate::stats::{Series, number, paired_ratio};
use crate::tools::{recorded, settle_disk};

/// The recorded corpus and how to start the service again.
pub struct Corpus {
    pub dir: PathBuf,
    /// The service's mode: `pool` or `dial` (see service.c).
    pub mode: String,
    pub service: PathBuf,
    pub port: u16,
    pub redis_port: u16,
    pub backend_port: u16,
    pub sessions: usize,
    pub calls_min: usize,
    pub calls_max: usize,
    pub record_s: f64,
}

/// One `koala replay` run.
#[derive(Clone, Debug, Default)]
pub struct ReplayRun {
    pub sessions_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub passed: u64,
    pub failed: u64,
    pub errors: u64,
    /// With `--record-to`: the session lines written.
    pub recorded: Option<u64>,
    pub dropped: Option<u64>,
    /// TCP sockets in TIME_WAIT on the machine when the run started.
    pub time_wait_before: u64,
}

/// Builds the service, records `settings.replay_sessions` sessions with the
/// real redis and backend, then stops them.
pub fn record_corpus(dir: &TestDir, settings: &Settings) -> Corpus {
    let service = dir.join("service");
    compile_c(
        &crate::fixture("service.c"),
        &["-O2", "-Wall", "-pthread"],
        &service,
    );

    let (mut redis, redis_port) = start_redis(dir);
    let count = settings.replay_sessions;
    let pairs: Vec<(String, String)> = (0..count)
        .map(|i| {
            (
                format!("item:{i}"),
                format!("{}.{:02}", 10 + i % 90, i % 100),
            )
        })
        .collect();
    redis_set(redis_port, &pairs);
    let (mut backend, backend_port) = start_upstream(dir);

    let corpus = dir.join("corpus");
    let port = free_port();
    let started = Instant::now();
    let mut server = Spec::new("service", &service)
        .args([port, redis_port, backend_port])
        .arg(&settings.replay_service)
        .record_to(&corpus)
        .spawn(dir);
    server.wait_for_port(port);
    // 4 clients, each its share of distinct items, on a keep-alive
    // connection as long as the service keeps it (`dial` mode); `pool`
    // mode closes after each answer.
    const CLIENTS: usize = 4;
    let handles: Vec<_> = (0..CLIENTS)
        .map(|client| {
            thread::spawn(move || {
                let mut stream = None;
                for item in (client..count).step_by(CLIENTS) {
                    let request = format!("GET /item/{item} HTTP/1.1\r\nHost: bench\r\n\r\n");
                    let response = http_exchange(
                        stream.get_or_insert_with(|| connect(port)),
                        request.as_bytes(),
                    );
                    assert!(
                        response.starts_with(b"HTTP/1.1 200 "),
                        "item {item}: {}",
                        String::from_utf8_lossy(&response)
                    );
                    if find(&response.to_ascii_lowercase(), b"\r\nconnection: close\r\n").is_some()
                    {
                        stream = None;
                    }
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().expect("load client");
    }
    server.stop_cleanly();
    let record_s = started.elapsed().as_secs_f64();
    redis.stop();
    backend.stop();

    let sessions = read_sessions(&corpus);
    let calls: Vec<usize> = sessions.iter().map(|s| s.calls.len()).collect();
    let calls_min = calls.iter().copied().min().unwrap_or(0);
    assert_eq!(sessions.len(), count, "corpus: sessions recorded");
    assert!(
        calls_min >= 2,
        "corpus: a session has only {calls_min} calls"
    );
    Corpus {
        dir: corpus,
        mode: settings.replay_service.clone(),
        service,
        port,
        redis_port,
        backend_port,
        sessions: sessions.len(),
        calls_min,
        calls_max: calls.iter().copied().max().unwrap_or(0),
        record_s,
    }
}

/// `koala replay CORPUS -j N --report ... [--record-to DIR] -- service ...`.
pub fn replay(dir: &TestDir, corpus: &Corpus, concurrency: usize, record: bool) -> ReplayRun {
    let report = dir.join("report.json");
    let record_to = dir.join("replay-record");
    let _ = fs::remove_file(&report);
    let _ = fs::remove_dir_all(&record_to);
    settle_disk();
    let time_wait_before = time_wait();
    let mut command = clean_command(koala_bin());
    command
        .arg("replay")
        .arg(&corpus.dir)
        .args(["-j", &concurrency.to_string(), "--no-progress"])
        .arg("--report")
        .arg(&report)
        .arg("--service-log")
        .arg(dir.join("service.log"));
    if record {
        command.arg("--record-to").arg(&record_to);
    }
    command
        .arg("--")
        .arg(&corpus.service)
        .args([corpus.port, corpus.redis_port, corpus.backend_port].map(|p| p.to_string()))
        .arg(&corpus.mode);
    let output = command.output().expect("run koala replay");
    let text = fs::read_to_string(&report).unwrap_or_else(|e| {
        panic!(
            "koala replay wrote no report ({e}), {}:\n{}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    let report: Value = serde_json::from_str(&text).expect("koala replay report is JSON");
    let summary = &report["summary"];
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let u = |v: &Value| v.as_u64().unwrap_or(0);
    let mut run = ReplayRun {
        sessions_per_s: f(&summary["throughput_per_s"]),
        p50_ms: f(&summary["latency_ms"]["p50"]),
        p99_ms: f(&summary["latency_ms"]["p99"]),
        passed: u(&summary["sessions"]["passed"]),
        failed: u(&summary["sessions"]["failed"]),
        errors: u(&summary["sessions"]["errors"]),
        recorded: None,
        dropped: None,
        time_wait_before,
    };
    if run.failed + run.errors > 0 {
        eprintln!(
            "   koala replay: {} failed, {} errors:\n{}",
            run.failed,
            run.errors,
            String::from_utf8_lossy(&output.stdout)
                .lines()
                .take(40)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    if record {
        let rec = recorded(&record_to);
        run.recorded = Some(rec.sessions);
        run.dropped = Some(rec.log_dropped_queue_full);
        let _ = fs::remove_dir_all(&record_to);
    }
    run
}

/// TCP sockets in TIME_WAIT (`tw` of /proc/net/sockstat).
pub fn time_wait() -> u64 {
    fs::read_to_string("/proc/net/sockstat")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("TCP:"))
        .and_then(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            words
                .windows(2)
                .find(|w| w[0] == "tw")
                .and_then(|w| w[1].parse().ok())
        })
        .unwrap_or(0)
}

/// Both modes at one concurrency.
pub struct AtConcurrency {
    pub concurrency: usize,
    pub replay: Vec<ReplayRun>,
    pub record_replay: Vec<ReplayRun>,
}

pub struct Measured {
    pub corpus: Corpus,
    pub levels: Vec<AtConcurrency>,
}

pub fn series(runs: &[ReplayRun], f: impl Fn(&ReplayRun) -> f64) -> Series {
    Series(runs.iter().map(f).collect())
}

/// Records the corpus, warms up once, then `rounds` rounds of, for each
/// concurrency, replay then record+replay.
pub fn measure(settings: &Settings) -> Measured {
    let dir = TestDir::new("bench-replay");
    eprintln!(
        "== replay: recording a corpus of {} sessions (C service, redis GET + HTTP GET each)",
        settings.replay_sessions
    );
    let corpus = record_corpus(&dir, settings);
    eprintln!(
        "   corpus: {} sessions, {}-{} calls each, recorded in {:.1} s",
        corpus.sessions, corpus.calls_min, corpus.calls_max, corpus.record_s
    );
    let show = |label: &str, run: &ReplayRun, secs: f64| {
        eprintln!(
            "   {label}: {:.0} sessions/s, p50 {:.2} ms, p99 {:.2} ms, {} passed{}{}  ({secs:.1} s, {} TIME_WAIT before)",
            run.sessions_per_s,
            run.p50_ms,
            run.p99_ms,
            run.passed,
            if run.failed + run.errors > 0 {
                format!(", {} failed, {} errors", run.failed, run.errors)
            } else {
                String::new()
            },
            run.recorded
                .map(|n| format!(", {n} recorded"))
                .unwrap_or_default(),
            run.time_wait_before
        );
    };
    let started = Instant::now();
    let warm = replay(&dir, &corpus, 8, false);
    show(
        "warm-up -j 8 replay",
        &warm,
        started.elapsed().as_secs_f64(),
    );
    let mut levels: Vec<AtConcurrency> = settings
        .concurrency
        .iter()
        .map(|&concurrency| AtConcurrency {
            concurrency,
            replay: Vec::new(),
            record_replay: Vec::new(),
        })
        .collect();
    for round in 1..=settings.rounds {
        for level in &mut levels {
            for record in [false, true] {
                let started = Instant::now();
                let run = replay(&dir, &corpus, level.concurrency, record);
                show(
                    &format!(
                        "round {round}/{} -j {:<2} {:<13}",
                        settings.rounds,
                        level.concurrency,
                        if record { "record+replay" } else { "replay" }
                    ),
                    &run,
                    started.elapsed().as_secs_f64(),
                );
                if record {
                    level.record_replay.push(run);
                } else {
                    level.replay.push(run);
                }
            }
        }
    }
    Measured { corpus, levels }
}

impl AtConcurrency {
    /// Median sessions/s of record+replay / of replay alone.
    pub fn ratio(&self) -> f64 {
        series(&self.record_replay, |r| r.sessions_per_s).median()
            / series(&self.replay, |r| r.sessions_per_s).median()
    }

    /// The same, round by round.
    pub fn ratio_per_round(&self) -> Series {
        paired_ratio(
            &series(&self.record_replay, |r| r.sessions_per_s),
            &series(&self.replay, |r| r.sessions_per_s),
        )
    }

    /// Median p99 of record+replay / of replay alone.
    pub fn p99_ratio(&self) -> f64 {
        series(&self.record_replay, |r| r.p99_ms).median()
            / series(&self.replay, |r| r.p99_ms).median()
    }
}

fn runs_json(runs: &[ReplayRun]) -> Value {
    json!({
        "sessions_per_s": series(runs, |r| r.sessions_per_s).json(),
        "p50_ms": series(runs, |r| r.p50_ms).json(),
        "p99_ms": series(runs, |r| r.p99_ms).json(),
        "time_wait_before": runs.iter().map(|r| r.time_wait_before).collect::<Vec<_>>(),
        "passed": runs.iter().map(|r| r.passed).sum::<u64>(),
        "failed": runs.iter().map(|r| r.failed).sum::<u64>(),
        "errors": runs.iter().map(|r| r.errors).sum::<u64>(),
    })
}

impl Measured {
    pub fn json(&self) -> Value {
        let c = &self.corpus;
        json!({
            "corpus": {
                "sessions": c.sessions,
                "calls_per_session": {"min": c.calls_min, "max": c.calls_max},
                "service": "bench/fixtures/service.c (gcc -O2, thread per connection): redis GET + HTTP GET per request",
                "service_mode": c.mode,
                "record_s": number(c.record_s),
            },
            "concurrency": self.levels.iter().map(|level| {
                let mut record_replay = runs_json(&level.record_replay);
                record_replay["sessions_recorded"] =
                    json!(level.record_replay.iter().filter_map(|r| r.recorded).sum::<u64>());
                record_replay["sessions_dropped_queue_full"] =
                    json!(level.record_replay.iter().filter_map(|r| r.dropped).sum::<u64>());
                json!({
                    "concurrency": level.concurrency,
                    "replay": runs_json(&level.replay),
                    "record_replay": record_replay,
                    "record_replay_ratio": number(level.ratio()),
                    "record_replay_ratio_per_round": level.ratio_per_round().json(),
                    "record_replay_p99_ratio": number(level.p99_ratio()),
                })
            }).collect::<Vec<_>>(),
        })
    }
}
