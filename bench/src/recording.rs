//! Recording overhead: each workload run without the library, with it
//! loaded and passive, and recording, alternating inside every round.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use koala_tests::{
    Program, Spec, TestDir, clean_command, free_port, python, redis_spec, require_program,
    wait_for_children,
};
use serde_json::{Value, json};

use crate::Settings;
use crate::stats::{Series, number, paired_ratio};
use crate::tools::{
    Load, Recorded, http_load, parse_redis_csv, parse_wrk, recorded, run_ok, settle_disk,
};

/// How the server of one run is started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// No `LD_PRELOAD`.
    None,
    /// `LD_PRELOAD=libkoala.so`, `KOALA_MODE` unset.
    Passive,
    /// `KOALA_MODE=record`.
    Record,
}

pub const MODES: [Mode; 3] = [Mode::None, Mode::Passive, Mode::Record];

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::None => "none",
            Mode::Passive => "passive",
            Mode::Record => "record",
        }
    }

    fn apply(self, spec: Spec, record_to: &Path) -> Spec {
        match self {
            Mode::None => spec,
            Mode::Passive => spec.preload(),
            Mode::Record => spec.record_to(record_to),
        }
    }

    /// The throughput ratio this mode must reach, for a workload with
    /// targets.
    pub fn target(self) -> Option<f64> {
        match self {
            Mode::None => None,
            Mode::Passive => Some(0.99),
            Mode::Record => Some(0.97),
        }
    }
}

/// One run: the figures of each row of the workload (`redis` has two,
/// SET and GET), the requests sent, what was recorded.
pub struct Run {
    pub rows: Vec<Load>,
    /// Requests the load generator sent (completed).
    pub requests: u64,
    pub errors: u64,
    pub recorded: Option<Recorded>,
}

impl Run {
    /// A run with one row of figures.
    fn single(load: Load, recorded: Option<Recorded>) -> Run {
        Run {
            requests: load.requests,
            errors: load.errors,
            rows: vec![load],
            recorded,
        }
    }
}

/// A server under load, started once per run.
pub trait Workload {
    /// Short name, also used for `BENCH_ONLY`.
    fn name(&self) -> &'static str;
    /// One name per row of figures.
    fn rows(&self) -> Vec<String>;
    /// Do the recording-mode targets apply (redis, nginx)?
    fn has_record_target(&self) -> bool;
    /// The load and the client settings, for the report.
    fn describe(&self) -> String;
    fn run(&mut self, mode: Mode, warmup: bool) -> Run;
}

/// Each mode's runs, in round order.
pub struct Measured {
    pub name: &'static str,
    pub rows: Vec<String>,
    pub describe: String,
    pub record_target: bool,
    /// Indexed like [`MODES`].
    pub runs: [Vec<Run>; 3],
}

/// Warm up once (every mode, a short run), then `rounds` rounds of none,
/// passive, record.
pub fn measure(workload: &mut dyn Workload, settings: &Settings) -> Measured {
    let name = workload.name();
    eprintln!("== {name}: {}", workload.describe());
    for mode in MODES {
        let started = Instant::now();
        let run = workload.run(mode, true);
        eprintln!(
            "   warm-up {:<7} {}  ({:.1} s)",
            mode.name(),
            summary(&workload.rows(), &run),
            started.elapsed().as_secs_f64()
        );
    }
    let mut runs: [Vec<Run>; 3] = Default::default();
    for round in 1..=settings.rounds {
        for (index, mode) in MODES.into_iter().enumerate() {
            let started = Instant::now();
            let run = workload.run(mode, false);
            eprintln!(
                "   round {round}/{} {:<7} {}  ({:.1} s)",
                settings.rounds,
                mode.name(),
                summary(&workload.rows(), &run),
                started.elapsed().as_secs_f64()
            );
            runs[index].push(run);
        }
    }
    Measured {
        name,
        rows: workload.rows(),
        describe: workload.describe(),
        record_target: workload.has_record_target(),
        runs,
    }
}

fn summary(rows: &[String], run: &Run) -> String {
    let mut parts: Vec<String> = rows
        .iter()
        .zip(&run.rows)
        .map(|(name, load)| format!("{name}: {:.0}/s p99 {:.3} ms", load.rps, load.p99_ms))
        .collect();
    if run.errors > 0 {
        parts.push(format!("{} errors", run.errors));
    }
    if let Some(rec) = &run.recorded {
        parts.push(format!(
            "sessions {}/{} requests, dropped {}",
            rec.sessions, run.requests, rec.log_dropped_queue_full
        ));
    }
    parts.join(", ")
}

/// The figures of one row in one mode.
pub struct RowMode {
    pub rps: Series,
    pub p99: Series,
}

/// One row in one mode compared with the same row without the library.
pub struct Ratios {
    /// Median throughput / median throughput without the library.
    pub throughput: f64,
    /// Round by round.
    pub per_round: Series,
    /// Median p99 / median p99 without the library.
    pub p99: f64,
    pub target: Option<f64>,
    /// Did the throughput ratio reach the target (`None`: no target)?
    pub pass: Option<bool>,
}

impl Measured {
    pub fn row_mode(&self, row: usize, mode: usize) -> RowMode {
        let mut out = RowMode {
            rps: Series::default(),
            p99: Series::default(),
        };
        for run in &self.runs[mode] {
            out.rps.push(run.rows[row].rps);
            out.p99.push(run.rows[row].p99_ms);
        }
        out
    }

    /// The throughput target of a mode for this workload.
    pub fn target(&self, mode: Mode) -> Option<f64> {
        match mode {
            Mode::Record if !self.record_target => None,
            mode => mode.target(),
        }
    }

    /// Row `row` in `mode` against the same row without the library.
    pub fn ratios(&self, row: usize, mode: Mode) -> Ratios {
        let none = self.row_mode(row, 0);
        let figures = self.row_mode(row, MODES.iter().position(|m| *m == mode).unwrap());
        let throughput = figures.rps.median() / none.rps.median();
        let target = self.target(mode);
        Ratios {
            throughput,
            per_round: paired_ratio(&figures.rps, &none.rps),
            p99: figures.p99.median() / none.p99.median(),
            target,
            pass: target.map(|t| throughput >= t),
        }
    }

    /// Totals over the recording runs: requests sent, session lines, and
    /// the log's counters; the lowest per-run sessions/requests.
    pub fn completeness(&self) -> Completeness {
        let mut c = Completeness {
            worst_ratio: f64::INFINITY,
            ..Completeness::default()
        };
        for run in &self.runs[2] {
            let rec = run.recorded.clone().unwrap_or_default();
            c.runs += 1;
            c.requests += run.requests;
            c.sessions += rec.sessions;
            c.background += rec.background;
            c.summaries += rec.summaries;
            c.log_written += rec.log_written;
            c.dropped += rec.log_dropped_queue_full;
            c.lost_write += rec.log_lost_write_error;
            c.worst_ratio = c
                .worst_ratio
                .min(rec.sessions as f64 / run.requests.max(1) as f64);
        }
        c.errors = self.runs.iter().flatten().map(|r| r.errors).sum();
        c
    }

    pub fn json(&self) -> Value {
        let mut rows = Vec::new();
        for (r, row) in self.rows.iter().enumerate() {
            let mut modes = serde_json::Map::new();
            for (m, mode) in MODES.into_iter().enumerate() {
                let figures = self.row_mode(r, m);
                let mut entry = json!({
                    "throughput_rps": figures.rps.json(),
                    "p99_ms": figures.p99.json(),
                });
                if mode != Mode::None {
                    let ratios = self.ratios(r, mode);
                    entry["throughput_ratio"] = number(ratios.throughput);
                    entry["throughput_ratio_per_round"] = ratios.per_round.json();
                    entry["p99_ratio"] = number(ratios.p99);
                    entry["target"] = ratios.target.map_or(Value::Null, number);
                    entry["result"] = match ratios.pass {
                        Some(true) => json!("pass"),
                        Some(false) => json!("miss"),
                        None => Value::Null,
                    };
                }
                modes.insert(mode.name().to_string(), entry);
            }
            rows.push(json!({"name": row, "modes": modes}));
        }
        let c = self.completeness();
        json!({
            "workload": self.name,
            "load": self.describe,
            "rows": rows,
            "recording": {
                "runs": c.runs,
                "requests_sent": c.requests,
                "sessions_written": c.sessions,
                "sessions_per_request": number(c.sessions as f64 / c.requests.max(1) as f64),
                "worst_run_sessions_per_request": number(c.worst_ratio),
                "background_records": c.background,
                "log_summary_lines": c.summaries,
                "log_sessions_written": c.log_written,
                "sessions_dropped_queue_full": c.dropped,
                "sessions_lost_write_error": c.lost_write,
                "per_run": self.runs[2].iter().map(|run| {
                    let rec = run.recorded.clone().unwrap_or_default();
                    json!({"requests": run.requests, "sessions": rec.sessions,
                           "log_sessions_written": rec.log_written,
                           "dropped_queue_full": rec.log_dropped_queue_full})
                }).collect::<Vec<_>>(),
            },
            "client_errors_all_modes": c.errors,
        })
    }
}

#[derive(Clone, Debug, Default)]
pub struct Completeness {
    pub runs: u64,
    pub requests: u64,
    pub sessions: u64,
    pub background: u64,
    pub summaries: u64,
    pub log_written: u64,
    pub dropped: u64,
    pub lost_write: u64,
    pub worst_ratio: f64,
    pub errors: u64,
}

// ---- the workloads -------------------------------------------------------

/// A fresh record directory for one run (removed after counting), once
/// the previous run's writes have reached the disk.
fn record_dir(dir: &TestDir) -> PathBuf {
    let path = dir.join("record");
    let _ = fs::remove_dir_all(&path);
    settle_disk();
    path
}

/// Stops a recording server cleanly and counts what it wrote.
fn finish(mut server: Program, mode: Mode, record: &Path) -> Option<Recorded> {
    server.stop_cleanly();
    if mode != Mode::Record {
        return None;
    }
    let rec = recorded(record);
    let _ = fs::remove_dir_all(record);
    Some(rec)
}

/// Seconds of load of one run: `BENCH_DURATION`, 1 to warm up.
fn seconds(settings: &Settings, warmup: bool) -> u32 {
    if warmup { 1 } else { settings.duration_s }
}

/// `wrk -t 2 -c CONNECTIONS -d DURATION --latency URL` (1 s to warm up).
fn wrk(settings: &Settings, warmup: bool, url: &str) -> Load {
    let duration = seconds(settings, warmup);
    let mut command = clean_command(require_program("wrk", "wrk"));
    command.args([
        "-t",
        "2",
        "-c",
        &settings.wrk_connections.to_string(),
        "-d",
        &format!("{duration}s"),
        "--latency",
    ]);
    command.arg(url);
    let output = run_ok(&mut command, "wrk");
    parse_wrk(&String::from_utf8_lossy(&output.stdout)).unwrap_or_else(|e| panic!("{e}"))
}

/// redis-server under redis-benchmark: 50 clients, SET then GET.
pub struct Redis {
    dir: TestDir,
    settings: Settings,
}

impl Redis {
    pub fn new(settings: &Settings) -> Redis {
        require_program("redis-benchmark", "redis-tools");
        Redis {
            dir: TestDir::new("bench-redis"),
            settings: settings.clone(),
        }
    }

    fn requests(&self, warmup: bool) -> u32 {
        if warmup {
            (self.settings.redis_requests / 5).max(1000)
        } else {
            self.settings.redis_requests
        }
    }
}

impl Workload for Redis {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn rows(&self) -> Vec<String> {
        vec!["redis SET".into(), "redis GET".into()]
    }

    fn has_record_target(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        format!(
            "redis-benchmark -c {} -n {} -t set,get --csv",
            self.settings.redis_clients, self.settings.redis_requests
        )
    }

    fn run(&mut self, mode: Mode, warmup: bool) -> Run {
        let port = free_port();
        let record = record_dir(&self.dir);
        let spec = redis_spec(&self.dir, port);
        let mut server = mode.apply(spec, &record).spawn(&self.dir);
        server.wait_for_port(port);
        let n = self.requests(warmup);
        let output = run_ok(
            clean_command(require_program("redis-benchmark", "redis-tools")).args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-c",
                &self.settings.redis_clients.to_string(),
                "-n",
                &n.to_string(),
                "-t",
                "set,get",
                "--csv",
            ]),
            "redis-benchmark",
        );
        let rows = parse_redis_csv(&String::from_utf8_lossy(&output.stdout))
            .unwrap_or_else(|e| panic!("{e}"));
        let load = |test: &str| {
            let (_, rps, p99) = rows
                .iter()
                .find(|(t, _, _)| t == test)
                .unwrap_or_else(|| panic!("no {test} line from redis-benchmark: {rows:?}"));
            Load {
                rps: *rps,
                p99_ms: *p99,
                requests: u64::from(n),
                errors: 0,
            }
        };
        let rows = vec![load("SET"), load("GET")];
        let recorded = finish(server, mode, &record);
        Run {
            rows,
            requests: 2 * u64::from(n),
            errors: 0,
            recorded,
        }
    }
}

/// Which nginx workload.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum NginxKind {
    /// A 4 KiB static file (sendfile).
    Static,
    /// Proxied to a second nginx (`return 200`), not under the library.
    Proxy,
}

/// nginx (a master and 2 workers) under wrk.
pub struct Nginx {
    kind: NginxKind,
    dir: TestDir,
    nginx_dir: PathBuf,
    upstream_port: u16,
    _upstream: Option<Program>,
    settings: Settings,
}

/// `user root;` when running as root: the workers must be able to write
/// the record directory (created 0700 by the master's library).
fn user_line() -> &'static str {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        "user root;"
    } else {
        ""
    }
}

/// Writes an nginx configuration from a template of `bench/fixtures`.
fn nginx_conf(template: &str, nginx_dir: &Path, port: u16, upstream: u16) -> PathBuf {
    for temp in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"] {
        fs::create_dir_all(nginx_dir.join(temp)).unwrap();
    }
    let conf = fs::read_to_string(crate::fixture(template))
        .unwrap()
        .replace("@DIR@", nginx_dir.to_str().unwrap())
        .replace("@PORT@", &port.to_string())
        .replace("@UPSTREAM@", &upstream.to_string())
        .replace("@USER@", user_line());
    let path = nginx_dir.join("nginx.conf");
    fs::write(&path, conf).unwrap();
    path
}

fn nginx_spec(name: &str, nginx_dir: &Path, conf: &Path) -> Spec {
    Spec::new(name, require_program("nginx", "nginx-light"))
        .arg("-p")
        .arg(format!("{}/", nginx_dir.display()))
        .arg("-c")
        .arg(conf.display())
        .arg("-e")
        .arg(nginx_dir.join("error.log").display())
}

/// Starts the fast upstream nginx (never under the library); returns it
/// and its port.
pub fn start_upstream(dir: &TestDir) -> (Program, u16) {
    let upstream_dir = dir.join("upstream");
    let port = free_port();
    let conf = nginx_conf("upstream.conf.in", &upstream_dir, port, 0);
    let mut upstream = nginx_spec("upstream", &upstream_dir, &conf).spawn(dir);
    upstream.wait_for_port(port);
    wait_for_children(&mut upstream, 1);
    (upstream, port)
}

impl Nginx {
    pub fn new(kind: NginxKind, settings: &Settings) -> Nginx {
        let dir = TestDir::new(match kind {
            NginxKind::Static => "bench-nginx-static",
            NginxKind::Proxy => "bench-nginx-proxy",
        });
        let nginx_dir = dir.join("nginx");
        fs::create_dir_all(nginx_dir.join("www/static")).unwrap();
        let page: String = (0..4096).map(|i| (b'a' + (i % 26) as u8) as char).collect();
        fs::write(nginx_dir.join("www/static/page.html"), page).unwrap();
        let (upstream, upstream_port) = match kind {
            NginxKind::Proxy => {
                let (program, port) = start_upstream(&dir);
                (Some(program), port)
            }
            NginxKind::Static => (None, free_port()),
        };
        Nginx {
            kind,
            dir,
            nginx_dir,
            upstream_port,
            _upstream: upstream,
            settings: settings.clone(),
        }
    }

    fn path(&self) -> &'static str {
        match self.kind {
            NginxKind::Static => "/static/page.html",
            NginxKind::Proxy => "/proxy/item",
        }
    }
}

impl Workload for Nginx {
    fn name(&self) -> &'static str {
        match self.kind {
            NginxKind::Static => "nginx-static",
            NginxKind::Proxy => "nginx-proxy",
        }
    }

    fn rows(&self) -> Vec<String> {
        vec![match self.kind {
            NginxKind::Static => "nginx static".into(),
            NginxKind::Proxy => "nginx proxy".into(),
        }]
    }

    fn has_record_target(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        format!(
            "wrk -t 2 -c {} -d {}s --latency GET {} (2 nginx workers{})",
            self.settings.wrk_connections,
            self.settings.duration_s,
            self.path(),
            match self.kind {
                NginxKind::Static => ", 4 KiB file, sendfile",
                NginxKind::Proxy =>
                    ", keep-alive upstream: a second nginx `return 200`, no library",
            }
        )
    }

    fn run(&mut self, mode: Mode, warmup: bool) -> Run {
        let port = free_port();
        let record = record_dir(&self.dir);
        let conf = nginx_conf("nginx.conf.in", &self.nginx_dir, port, self.upstream_port);
        let spec = nginx_spec("nginx", &self.nginx_dir, &conf);
        let mut server = mode.apply(spec, &record).spawn(&self.dir);
        server.wait_for_port(port);
        wait_for_children(&mut server, 2);
        let url = format!("http://127.0.0.1:{port}{}", self.path());
        let load = wrk(&self.settings, warmup, &url);
        Run::single(load, finish(server, mode, &record))
    }
}

/// The items the demo's client asks for, in turn.
const DEMO_ITEMS: [&str; 8] = [
    "apple", "pear", "fig", "plum", "kiwi", "lime", "date", "peach",
];

/// The bundled example service: pricing.py (under test) with inventory.py
/// and cache.py (never under the library), as `examples/demo/demo.sh`
/// starts them.
pub struct Demo {
    dir: TestDir,
    demo: PathBuf,
    inventory_port: u16,
    cache_port: u16,
    _deps: (Program, Program),
    settings: Settings,
}

impl Demo {
    pub fn new(settings: &Settings) -> Demo {
        let dir = TestDir::new("bench-demo");
        let demo = koala_tests::workspace_root().join("examples/demo");
        let (inventory_port, cache_port) = (free_port(), free_port());
        let mut inventory = Spec::new("inventory", python())
            .arg(demo.join("inventory.py").display())
            .arg(inventory_port)
            .spawn(&dir);
        let mut cache = Spec::new("cache", python())
            .arg(demo.join("cache.py").display())
            .arg(cache_port)
            .spawn(&dir);
        inventory.wait_for_port(inventory_port);
        cache.wait_for_port(cache_port);
        Demo {
            dir,
            demo,
            inventory_port,
            cache_port,
            _deps: (inventory, cache),
            settings: settings.clone(),
        }
    }
}

impl Workload for Demo {
    fn name(&self) -> &'static str {
        "demo"
    }

    fn rows(&self) -> Vec<String> {
        vec!["demo (Python)".into()]
    }

    fn has_record_target(&self) -> bool {
        false
    }

    fn describe(&self) -> String {
        format!(
            "bench HTTP client (closed loop, TCP_QUICKACK) -c {} -d {}s: GET /price/<8 items> on examples/demo/pricing.py (cache.py, inventory.py not under the library)",
            self.settings.demo_connections, self.settings.duration_s
        )
    }

    fn run(&mut self, mode: Mode, warmup: bool) -> Run {
        let port = free_port();
        let record = record_dir(&self.dir);
        let spec = Spec::new("pricing", python())
            .arg(self.demo.join("pricing.py").display())
            .args([port, self.inventory_port, self.cache_port]);
        let mut server = mode.apply(spec, &record).spawn(&self.dir);
        server.wait_for_port(port);
        let paths = DEMO_ITEMS.map(|item| format!("/price/{item}"));
        let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
        let load = http_load(
            port,
            self.settings.demo_connections,
            Duration::from_secs(seconds(&self.settings, warmup).into()),
            &paths,
        );
        Run::single(load, finish(server, mode, &record))
    }
}
