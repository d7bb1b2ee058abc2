//! The automatic request-context helpers' cost per request (issue 11):
//! an aiohttp service (`helpers/python`) and a Node `http` service
//! (`helpers/node`), each request awaiting one GET from a backend (the
//! fast upstream nginx, never under the library) through a keep-alive
//! client, with several requests in flight on the service's one thread.
//!
//! Each service runs without the library, recording without the helper,
//! and recording with it (`KOALA_MODE=record`, the helper loaded as
//! `koala record` loads it: `PYTHONPATH`, `NODE_OPTIONS`), alternating
//! inside every round, under the bench's closed-loop HTTP client. Ratios
//! are to the run without the library of the same invocation. The cost per
//! request is the service process's CPU time during the load (the sum of
//! its threads' `/proc/PID/task/*/schedstat`) divided by the requests
//! answered, less the same without the library: unlike the throughput, it
//! does not move with what else the machine runs. The record runs also say
//! how many sessions hold exactly their own backend call — what the helper
//! is for. Reported, never asserted.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use koala_tests::{Spec, TestDir, free_port, python, require_program};
use serde_json::{Value, json};

use crate::Settings;
use crate::recording::start_upstream;
use crate::stats::{Series, number, paired_ratio};
use crate::tools::{Load, http_load, settle_disk};

/// The services, in the order each round runs them.
const SERVICES: [&str; 2] = ["aiohttp", "node"];
/// The modes, in the order each round runs them.
const MODES: [&str; 3] = ["none", "record", "record+helper"];
/// Connections of the load client: requests in flight at once.
const CONNECTIONS: u32 = 8;
/// The items asked for, in turn (`GET /item/kN`).
const KEYS: usize = 8;

pub struct Measured {
    /// Seconds of load per timed run (`BENCH_HELPERS_SECONDS`).
    pub seconds: u64,
    /// Requests per second: [service][mode].
    pub rps: [[Series; 3]; 2],
    /// p99 round trip, ms: [service][mode].
    pub p99: [[Series; 3]; 2],
    /// The service's CPU time per request answered, µs: [service][mode].
    pub cpu_us: [[Series; 3]; 2],
    /// Timed requests: [service][mode].
    pub requests: [[u64; 3]; 2],
    /// Non-200 answers over every timed run.
    pub errors: u64,
    /// Record runs (timed): session lines written, and those holding
    /// exactly their own backend call: [service][mode] (0 for `none`).
    pub sessions: [[u64; 3]; 2],
    pub own: [[u64; 3]; 2],
}

impl Measured {
    fn ratio(&self, s: usize, m: usize) -> Series {
        paired_ratio(&self.rps[s][m], &self.rps[s][0])
    }

    /// CPU µs per request over the run without the library, from the
    /// medians.
    fn us_added(&self, s: usize, m: usize) -> f64 {
        self.cpu_us[s][m].median() - self.cpu_us[s][0].median()
    }

    pub fn json(&self) -> Value {
        let services: Vec<Value> = SERVICES
            .iter()
            .enumerate()
            .map(|(s, service)| {
                let modes: Vec<Value> = MODES
                    .iter()
                    .enumerate()
                    .map(|(m, mode)| {
                        let mut row = json!({
                            "mode": mode,
                            "requests_per_s": self.rps[s][m].json(),
                            "p99_ms": self.p99[s][m].json(),
                            "cpu_us_per_request": self.cpu_us[s][m].json(),
                            "requests": self.requests[s][m],
                        });
                        if m != 0 {
                            row["ratio_of_medians"] =
                                number(self.rps[s][m].median() / self.rps[s][0].median());
                            row["ratio_per_round"] = self.ratio(s, m).json();
                            row["us_per_request_added"] = number(self.us_added(s, m));
                            row["sessions"] = json!(self.sessions[s][m]);
                            row["sessions_with_their_own_call"] = json!(self.own[s][m]);
                        }
                        row
                    })
                    .collect();
                json!({
                    "service": service,
                    "modes": modes,
                    "helper_us_per_request": number(self.us_added(s, 2) - self.us_added(s, 1)),
                })
            })
            .collect();
        json!({
            "seconds_per_run": self.seconds,
            "connections": CONNECTIONS,
            "errors": self.errors,
            "services": services,
        })
    }
}

/// How one service is started.
struct Service {
    name: &'static str,
    program: PathBuf,
    fixture: PathBuf,
    /// The variable that loads the helper, and its value.
    helper: (&'static str, String),
}

fn services() -> [Service; 2] {
    let helpers = koala_tests::workspace_root().join("helpers");
    [
        Service {
            name: SERVICES[0],
            program: python(),
            fixture: crate::fixture("helpers_aiohttp.py"),
            helper: ("PYTHONPATH", helpers.join("python").display().to_string()),
        },
        Service {
            name: SERVICES[1],
            program: require_program("node", "nodejs"),
            fixture: crate::fixture("helpers_node.js"),
            helper: (
                "NODE_OPTIONS",
                format!(
                    "--require {}",
                    helpers.join("node/koala-context.js").display()
                ),
            ),
        },
    ]
}

/// Starts the backend, then runs the rounds (round 0 warms up, 1 s a run).
pub fn measure(settings: &Settings) -> Measured {
    let seconds: u64 = crate::env_or("BENCH_HELPERS_SECONDS", 1);
    assert!(seconds >= 1, "BENCH_HELPERS_SECONDS must be at least 1");
    let dir = TestDir::new("bench-helpers");
    let (_backend, backend_port) = start_upstream(&dir);
    let services = services();
    eprintln!(
        "== helpers: aiohttp and Node http, one backend GET per request, -c {CONNECTIONS}, {seconds} s per run, modes {MODES:?}"
    );
    let mut measured = Measured {
        seconds,
        rps: Default::default(),
        p99: Default::default(),
        cpu_us: Default::default(),
        requests: Default::default(),
        errors: 0,
        sessions: Default::default(),
        own: Default::default(),
    };
    for round in 0..=settings.rounds {
        let warmup = round == 0;
        let duration = Duration::from_secs(if warmup { 1 } else { seconds });
        for (s, service) in services.iter().enumerate() {
            for (m, mode) in MODES.iter().enumerate() {
                let (load, cpu_us, recorded) = run(&dir, service, mode, backend_port, duration);
                if warmup {
                    continue;
                }
                measured.rps[s][m].push(load.rps);
                measured.p99[s][m].push(load.p99_ms);
                measured.cpu_us[s][m].push(cpu_us);
                measured.requests[s][m] += load.requests;
                measured.errors += load.errors;
                measured.sessions[s][m] += recorded.0;
                measured.own[s][m] += recorded.1;
            }
        }
        eprintln!(
            "   helpers round {round}{}",
            if warmup { " (warm-up)" } else { "" }
        );
    }
    measured
}

/// One run of `service` in `mode`: the load's figures, the service's CPU
/// µs per request, and (record modes) the session lines written and those
/// holding exactly their own call.
fn run(
    dir: &TestDir,
    service: &Service,
    mode: &str,
    backend_port: u16,
    duration: Duration,
) -> (Load, f64, (u64, u64)) {
    let record = dir.join("record");
    let _ = fs::remove_dir_all(&record);
    settle_disk();
    let port = free_port();
    let mut spec = Spec::new(service.name, &service.program)
        .arg(service.fixture.display())
        .args([port, backend_port]);
    if mode != "none" {
        spec = spec.record_to(&record);
    }
    if mode == "record+helper" {
        spec = spec.env(service.helper.0, &service.helper.1);
    }
    let mut server = spec.spawn(dir);
    server.wait_for_port(port);
    let paths: Vec<String> = (0..KEYS).map(|k| format!("/item/k{k}")).collect();
    let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
    let before = cpu_ns(server.pid());
    let load = http_load(port, CONNECTIONS, duration, &paths);
    let cpu_us = (cpu_ns(server.pid()) - before) as f64 / 1e3 / load.requests.max(1) as f64;
    server.stop_cleanly();
    let recorded = attributed(&record);
    let _ = fs::remove_dir_all(&record);
    (load, cpu_us, recorded)
}

/// The CPU time of every thread of `pid` so far, ns (the first field of
/// each `/proc/PID/task/TID/schedstat`).
fn cpu_ns(pid: u32) -> u64 {
    let tasks = fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/task: {e}"));
    tasks
        .flatten()
        .filter_map(|task| fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|line| line.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Session lines in `dir`, and those whose calls are exactly one backend
/// request for the session's own item (`GET /item/K` → `GET /b/K`).
fn attributed(dir: &Path) -> (u64, u64) {
    let (mut sessions, mut own) = (0, 0);
    let Ok(entries) = fs::read_dir(dir) else {
        return (0, 0);
    };
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().ends_with(".jsonl") {
            continue;
        }
        let text = fs::read_to_string(entry.path()).unwrap_or_default();
        for line in text.lines() {
            let Ok(session) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            if session["kind"] == "background" {
                continue;
            }
            sessions += 1;
            let key = session["inbound"]["request"]
                .as_str()
                .and_then(|r| r.strip_prefix("GET /item/"))
                .and_then(|r| r.split(' ').next());
            let calls = session["calls"].as_array().map_or(&[][..], Vec::as_slice);
            if let (Some(key), [call]) = (key, calls)
                && call["request"]
                    .as_str()
                    .is_some_and(|r| r.starts_with(&format!("GET /b/{key} ")))
            {
                own += 1;
            }
        }
    }
    (sessions, own)
}

/// The table's section.
pub fn render(t: &mut String, m: &Measured, rounds: usize) {
    use std::fmt::Write;
    let _ = writeln!(
        t,
        "\nContext helpers: aiohttp (helpers/python) and Node http (helpers/node), each request awaiting one backend GET\n\
         (keep-alive client; nginx, no library); bench HTTP client -c {CONNECTIONS}, {} s per run; {rounds} rounds of\n\
         none/record/record+helper after 1 warm-up each; median [min–max]; ratio = req/s median / median without the\n\
         library; CPU µs/req = the service's CPU time per request; added = its median − the median without the library",
        m.seconds
    );
    let _ = writeln!(
        t,
        "{:<8} {:<14} {:>22} {:>6} {:>13} {:>7} {:>20} {:>7} {:>18}",
        "service",
        "mode",
        "req/s",
        "ratio",
        "(rounds)",
        "p99 ms",
        "CPU µs/req",
        "added",
        "own calls/sessions"
    );
    for (s, service) in SERVICES.iter().enumerate() {
        for (mi, mode) in MODES.iter().enumerate() {
            let rps = &m.rps[s][mi];
            let (ratio, per_round, us, own) = if mi == 0 {
                Default::default()
            } else {
                let r = m.ratio(s, mi);
                (
                    format!("{:.3}", rps.median() / m.rps[s][0].median()),
                    format!("({:.2}–{:.2})", r.min(), r.max()),
                    format!("{:+.1}", m.us_added(s, mi)),
                    format!("{}/{}", m.own[s][mi], m.sessions[s][mi]),
                )
            };
            let cpu = &m.cpu_us[s][mi];
            let _ = writeln!(
                t,
                "{:<8} {:<14} {:>22} {:>6} {:>13} {:>7.2} {:>20} {:>7} {:>18}",
                if mi == 0 { service } else { &"" },
                mode,
                format!("{:.0} [{:.0}–{:.0}]", rps.median(), rps.min(), rps.max()),
                ratio,
                per_round,
                m.p99[s][mi].median(),
                format!("{:.1} [{:.1}–{:.1}]", cpu.median(), cpu.min(), cpu.max()),
                us,
                own
            );
        }
        let _ = writeln!(
            t,
            "{:<8} the helper's cost: {:+.1} CPU µs per request (record+helper − record)",
            "",
            m.us_added(s, 2) - m.us_added(s, 1)
        );
    }
    if m.errors > 0 {
        let _ = writeln!(t, "  {} non-200 answers", m.errors);
    }
}
