//! `make bench`: what koala costs.
//!
//! 1. Recording overhead: redis, nginx (static file, proxy) and the demo
//!    service, each without the library, with it passive and recording,
//!    alternating inside every round; medians, ratios to the run without
//!    the library, sessions written against requests sent.
//! 2. Replay throughput of a recorded corpus through `koala replay` at
//!    several concurrencies, 3. alone and with recording on.
//! 4. Matching cost: the criterion benchmark of koala-replayer.
//! 5. Fork cost: fork + `_exit` of a child that records nothing, per
//!    fork, without the library, passive and recording (see [`fork`]).
//! 6. The automatic context helpers' cost per request: aiohttp and Node
//!    services recording with and without them (see [`helpers`]).
//!
//! Prints a table on stdout (progress on stderr) and writes
//! `target/bench/results.json` and `target/bench/table.txt`. Settings come
//! from `BENCH_*` variables (see `Settings::from_env` and
//! docs/benchmarks.md). Targets are reported, never enforced: the exit
//! status is non-zero only when a part could not run.

mod clock;
mod fork;
mod helpers;
mod matching;
mod recording;
mod replay;
mod ship;
mod stats;
mod tools;

use std::fs;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::time::{Instant, SystemTime};

use serde_json::{Value, json};

use recording::{MODES, Measured, Mode, Workload};
use stats::Series;

/// What to run and how long, from `BENCH_*` variables.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Rounds of alternating modes (`BENCH_ROUNDS`, 5).
    pub rounds: usize,
    /// wrk duration per run, seconds (`BENCH_DURATION`, 3).
    pub duration_s: u32,
    /// redis-benchmark requests per test (`BENCH_REDIS_REQUESTS`, 100000).
    pub redis_requests: u32,
    pub redis_clients: u32,
    /// wrk connections for nginx (`BENCH_WRK_CONNECTIONS`, 50).
    pub wrk_connections: u32,
    /// wrk connections for the Python demo (`BENCH_DEMO_CONNECTIONS`, 8).
    pub demo_connections: u32,
    /// Sessions of the replay corpus (`BENCH_SESSIONS`, 2000).
    pub replay_sessions: usize,
    /// The replay service's mode (`BENCH_REPLAY_SERVICE`, `pool` or
    /// `dial`; see bench/fixtures/service.c).
    pub replay_service: String,
    /// `koala replay -j` values (`BENCH_CONCURRENCY`, "1,8,32").
    pub concurrency: Vec<usize>,
    /// Parts to run (`BENCH_ONLY`, comma-separated names of [`PARTS`]).
    pub only: Option<Vec<String>>,
    /// Arguments to criterion (`BENCH_CRITERION_ARGS`, "--quick --noplot").
    pub criterion_args: Vec<String>,
    /// Timed forks per run of the fork part (`BENCH_FORKS`, 2000).
    pub forks: usize,
    /// Sessions shipped per round of the ship part (`BENCH_SHIP_SESSIONS`,
    /// 20000).
    pub ship_sessions: usize,
}

/// The parts, in the order they run.
pub const PARTS: [&str; 10] = [
    "matching",
    "redis",
    "nginx-static",
    "nginx-proxy",
    "demo",
    "replay",
    "fork",
    "clock",
    "ship",
    "helpers",
];

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => value
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a valid value")),
        _ => default,
    }
}

impl Settings {
    fn from_env() -> Settings {
        let list = |name: &str, default: &str| -> Vec<String> {
            std::env::var(name)
                .ok()
                .filter(|v| !v.trim().is_empty())
                .unwrap_or_else(|| default.to_string())
                .split([',', ' '])
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        };
        let only = std::env::var("BENCH_ONLY")
            .ok()
            .filter(|v| !v.trim().is_empty())
            .map(|_| list("BENCH_ONLY", ""));
        if let Some(only) = &only {
            for part in only {
                assert!(
                    PARTS.contains(&part.as_str()),
                    "BENCH_ONLY: unknown part {part:?} (parts: {PARTS:?})"
                );
            }
        }
        let settings = Settings {
            rounds: env_or("BENCH_ROUNDS", 5),
            duration_s: env_or("BENCH_DURATION", 3),
            redis_requests: env_or("BENCH_REDIS_REQUESTS", 100_000),
            redis_clients: 50,
            wrk_connections: env_or("BENCH_WRK_CONNECTIONS", 50),
            demo_connections: env_or("BENCH_DEMO_CONNECTIONS", 8),
            replay_sessions: env_or("BENCH_SESSIONS", 2000),
            replay_service: env_or("BENCH_REPLAY_SERVICE", "pool".to_string()),
            concurrency: list("BENCH_CONCURRENCY", "1,8,32")
                .iter()
                .map(|c| {
                    c.parse()
                        .unwrap_or_else(|_| panic!("BENCH_CONCURRENCY: bad value {c:?}"))
                })
                .collect(),
            only,
            criterion_args: std::env::var("BENCH_CRITERION_ARGS")
                .unwrap_or_else(|_| "--quick --noplot".into())
                .split_whitespace()
                .map(str::to_string)
                .collect(),
            forks: env_or("BENCH_FORKS", 2000),
            ship_sessions: env_or("BENCH_SHIP_SESSIONS", 20_000),
        };
        assert!(settings.forks >= 1, "BENCH_FORKS must be at least 1");
        assert!(settings.rounds >= 1, "BENCH_ROUNDS must be at least 1");
        assert!(
            ["pool", "dial"].contains(&settings.replay_service.as_str()),
            "BENCH_REPLAY_SERVICE must be pool or dial"
        );
        assert!(
            settings.duration_s >= 1,
            "BENCH_DURATION must be at least 1"
        );
        settings
    }

    fn runs(&self, part: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|only| only.iter().any(|p| p == part))
    }

    fn json(&self) -> Value {
        json!({
            "rounds": self.rounds,
            "warmup_runs_per_mode": 1,
            "wrk_duration_s": self.duration_s,
            "redis_requests_per_test": self.redis_requests,
            "redis_clients": self.redis_clients,
            "wrk_connections_nginx": self.wrk_connections,
            "wrk_connections_demo": self.demo_connections,
            "replay_corpus_sessions": self.replay_sessions,
            "replay_concurrency": self.concurrency,
            "replay_service_mode": self.replay_service,
            "criterion_args": self.criterion_args,
            "forks_per_run": self.forks,
            "ship_sessions": self.ship_sessions,
        })
    }
}

/// Starts a workload's fixed parts (its dependencies, its files).
type Builder = fn(&Settings) -> Box<dyn Workload>;

/// `bench/fixtures/<name>`.
pub fn fixture(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name);
    assert!(path.exists(), "missing fixture {}", path.display());
    path
}

/// Runs one part; a panic (a server that would not start, a tool that
/// failed) is reported and the other parts go on.
fn attempt<T>(part: &str, errors: &mut Vec<(String, String)>, f: impl FnOnce() -> T) -> Option<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(value) => Some(value),
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into());
            eprintln!("bench: {part} failed: {message}");
            errors.push((part.to_string(), message));
            None
        }
    }
}

fn main() {
    let started = Instant::now();
    let started_at = SystemTime::now();
    let date = tools::utc_now();
    let settings = Settings::from_env();
    let root = koala_tests::workspace_root();
    let out_dir = koala_tests::target_dir().join("bench");
    fs::create_dir_all(&out_dir).expect("create target/bench");
    let machine = tools::machine();
    eprintln!(
        "koala bench {date}: {} cores, {}, kernel {}, load {}",
        machine["nproc"],
        machine["cpu_model"].as_str().unwrap_or("?"),
        machine["kernel"].as_str().unwrap_or("?"),
        machine["loadavg_at_start"].as_str().unwrap_or("?")
    );
    eprintln!("settings: {}", settings.json());
    let mut errors = Vec::new();

    // Matching first: compiling the criterion benchmark must not disturb
    // the timed parts.
    let mut estimates = Vec::new();
    if settings.runs("matching") {
        eprintln!(
            "== matching: cargo bench -p koala-replayer --bench matching -- {}",
            settings.criterion_args.join(" ")
        );
        let t = Instant::now();
        let log = out_dir.join("criterion.log");
        match matching::run_criterion(&root, &settings.criterion_args, &log) {
            Ok(()) => {
                estimates = matching::read_estimates(&matching::criterion_dir(), started_at);
                eprintln!(
                    "   {} estimates in {:.0} s (output: {})",
                    estimates.len(),
                    t.elapsed().as_secs_f64(),
                    log.display()
                );
            }
            Err(e) => {
                eprintln!("bench: matching failed: {e}");
                errors.push(("matching".into(), e));
            }
        }
    }

    let mut measured: Vec<Measured> = Vec::new();
    let builders: [(&str, Builder); 4] = [
        ("redis", |s| Box::new(recording::Redis::new(s))),
        ("nginx-static", |s| {
            Box::new(recording::Nginx::new(recording::NginxKind::Static, s))
        }),
        ("nginx-proxy", |s| {
            Box::new(recording::Nginx::new(recording::NginxKind::Proxy, s))
        }),
        ("demo", |s| Box::new(recording::Demo::new(s))),
    ];
    for (part, build) in builders {
        if !settings.runs(part) {
            continue;
        }
        let t = Instant::now();
        if let Some(m) = attempt(part, &mut errors, || {
            let mut workload = build(&settings);
            recording::measure(workload.as_mut(), &settings)
        }) {
            eprintln!("   {part}: {:.0} s", t.elapsed().as_secs_f64());
            measured.push(m);
        }
    }

    let mut replayed = None;
    if settings.runs("replay") {
        let t = Instant::now();
        replayed = attempt("replay", &mut errors, || replay::measure(&settings));
        eprintln!("   replay: {:.0} s", t.elapsed().as_secs_f64());
    }

    let mut forked = None;
    if settings.runs("fork") {
        let t = Instant::now();
        forked = attempt("fork", &mut errors, || fork::measure(&settings));
        eprintln!("   fork: {:.0} s", t.elapsed().as_secs_f64());
    }

    let mut clocked = None;
    if settings.runs("clock") {
        let t = Instant::now();
        clocked = attempt("clock", &mut errors, || clock::measure(&settings));
        eprintln!("   clock: {:.0} s", t.elapsed().as_secs_f64());
    }

    let mut shipped = None;
    if settings.runs("ship") {
        let t = Instant::now();
        shipped = attempt("ship", &mut errors, || ship::measure(&settings));
        eprintln!("   ship: {:.0} s", t.elapsed().as_secs_f64());
    }

    let mut helped = None;
    if settings.runs("helpers") {
        let t = Instant::now();
        helped = attempt("helpers", &mut errors, || helpers::measure(&settings));
        eprintln!("   helpers: {:.0} s", t.elapsed().as_secs_f64());
    }

    let total_s = started.elapsed().as_secs_f64();
    let mut machine = machine;
    machine["loadavg_at_end"] = json!(tools::loadavg());
    let mut table = render(
        &date,
        &machine,
        &settings,
        &measured,
        replayed.as_ref(),
        &estimates,
        total_s,
    );
    if let Some(forked) = &forked {
        fork::render(&mut table, forked, settings.rounds);
    }
    if let Some(clocked) = &clocked {
        clock::render(&mut table, clocked, settings.rounds);
    }
    if let Some(shipped) = &shipped {
        ship::render(&mut table, shipped, settings.rounds);
    }
    if let Some(helped) = &helped {
        helpers::render(&mut table, helped, settings.rounds);
    }
    print!("{table}");

    let results = json!({
        "koala_bench": 1,
        "date": date,
        "duration_s": stats::number(total_s),
        "machine": machine,
        "git": tools::git_revision(&root),
        "settings": settings.json(),
        "targets": {
            "recording_throughput_ratio": Mode::Record.target(),
            "passive_throughput_ratio": Mode::Passive.target(),
            "applies_to": "throughput ratios; record target on redis and nginx, passive target on every workload; replay: reported only",
        },
        "recording": measured.iter().map(Measured::json).collect::<Vec<_>>(),
        "replay": replayed.as_ref().map_or(Value::Null, replay::Measured::json),
        "matching": matching::json(&estimates, &settings.criterion_args, &matching::criterion_dir()),
        "fork": forked.as_ref().map_or(Value::Null, fork::Measured::json),
        "ship": shipped.as_ref().map_or(Value::Null, ship::Measured::json),
        "clock": clocked.as_ref().map_or(Value::Null, clock::Measured::json),
        "helpers": helped.as_ref().map_or(Value::Null, helpers::Measured::json),
        "errors": errors.iter().map(|(part, e)| json!({"part": part, "error": e})).collect::<Vec<_>>(),
    });
    let json_path = out_dir.join("results.json");
    fs::write(
        &json_path,
        serde_json::to_string_pretty(&results).unwrap() + "\n",
    )
    .expect("write results.json");
    fs::write(out_dir.join("table.txt"), &table).expect("write table.txt");
    println!(
        "wrote {} and {}",
        json_path.display(),
        out_dir.join("table.txt").display()
    );
    if !errors.is_empty() {
        eprintln!(
            "bench: {} part(s) failed: {:?}",
            errors.len(),
            errors.iter().map(|e| &e.0).collect::<Vec<_>>()
        );
        std::process::exit(1);
    }
}

// ---- the table ---------------------------------------------------------------

/// 101234.5 -> "101,235".
fn thousands(value: f64) -> String {
    if !value.is_finite() {
        return "-".into();
    }
    let digits = format!("{:.0}", value.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if value < 0.0 { format!("-{out}") } else { out }
}

fn ms(value: f64) -> String {
    if !value.is_finite() {
        "-".into()
    } else if value < 10.0 {
        format!("{value:.3}")
    } else {
        format!("{value:.1}")
    }
}

fn spread(series: &Series, f: fn(f64) -> String) -> String {
    format!(
        "{} [{}–{}]",
        f(series.median()),
        f(series.min()),
        f(series.max())
    )
}

fn render(
    date: &str,
    machine: &Value,
    settings: &Settings,
    measured: &[Measured],
    replayed: Option<&replay::Measured>,
    estimates: &[matching::Estimate],
    total_s: f64,
) -> String {
    use std::fmt::Write;
    let mut t = String::new();
    let _ = writeln!(
        t,
        "\nkoala bench — {date} — {} cores, {}, kernel {}, load {} → {}, {:.0} s in all",
        machine["nproc"],
        machine["cpu_model"].as_str().unwrap_or("?"),
        machine["kernel"].as_str().unwrap_or("?"),
        machine["loadavg_at_start"].as_str().unwrap_or("?"),
        machine["loadavg_at_end"].as_str().unwrap_or("?"),
        total_s
    );

    if !measured.is_empty() {
        let _ = writeln!(
            t,
            "\nRecording overhead: {} rounds of none/passive/record (after 1 warm-up each); median [min–max];\n\
             ratio = median / median without the library, (rounds) = spread of the per-round ratios",
            settings.rounds
        );
        let _ = writeln!(
            t,
            "{:<14} {:<8} {:>28} {:>6} {:>13} {:>24} {:>6} {:>7} {:>6}",
            "workload",
            "mode",
            "throughput req/s",
            "ratio",
            "(rounds)",
            "p99 ms",
            "ratio",
            "target",
            "result"
        );
        for m in measured {
            for (r, row) in m.rows.iter().enumerate() {
                for (i, mode) in MODES.into_iter().enumerate() {
                    let f = m.row_mode(r, i);
                    let (ratio, rounds, p99_ratio, target, result): (
                        String,
                        String,
                        String,
                        String,
                        &str,
                    ) = if mode == Mode::None {
                        Default::default()
                    } else {
                        let ratios = m.ratios(r, mode);
                        (
                            format!("{:.3}", ratios.throughput),
                            format!(
                                "({:.2}–{:.2})",
                                ratios.per_round.min(),
                                ratios.per_round.max()
                            ),
                            format!("{:.2}", ratios.p99),
                            ratios.target.map_or("-".into(), |t| format!("≥{t:.2}")),
                            match ratios.pass {
                                Some(true) => "pass",
                                Some(false) => "MISS",
                                None => "-",
                            },
                        )
                    };
                    let _ = writeln!(
                        t,
                        "{:<14} {:<8} {:>28} {:>6} {:>13} {:>24} {:>6} {:>7} {:>6}",
                        if i == 0 { row.as_str() } else { "" },
                        mode.name(),
                        spread(&f.rps, thousands),
                        ratio,
                        rounds,
                        spread(&f.p99, ms),
                        p99_ratio,
                        target,
                        result
                    );
                }
            }
        }
        let _ = writeln!(
            t,
            "\nRecording completeness (record runs, totals over {} rounds; sessions counted in the files after a clean stop)",
            settings.rounds
        );
        let _ = writeln!(
            t,
            "{:<14} {:>13} {:>13} {:>22} {:>22} {:>12} {:>10} {:>8}",
            "workload",
            "requests sent",
            "session lines",
            "lines/sent (worst run)",
            "log sessions_written",
            "dropped",
            "lost",
            "errors"
        );
        for m in measured {
            let c = m.completeness();
            let _ = writeln!(
                t,
                "{:<14} {:>13} {:>13} {:>22} {:>22} {:>12} {:>10} {:>8}",
                m.name,
                thousands(c.requests as f64),
                thousands(c.sessions as f64),
                format!(
                    "{:.4} ({:.4})",
                    c.sessions as f64 / c.requests.max(1) as f64,
                    c.worst_ratio
                ),
                format!(
                    "{} ({} lines)",
                    thousands(c.log_written as f64),
                    c.summaries
                ),
                thousands(c.dropped as f64),
                thousands(c.lost_write as f64),
                c.errors
            );
        }
        for m in measured {
            let _ = writeln!(t, "  {}: {}", m.name, m.describe);
        }
    }

    if let Some(rp) = replayed {
        let c = &rp.corpus;
        let _ = writeln!(
            t,
            "\nReplay throughput: koala replay of {} sessions ({}–{} calls each: redis GET + HTTP GET) against the C service\n\
             (`{}` mode); {} rounds, replay and record+replay alternating; median [min–max]; ratio = record+replay / replay",
            c.sessions, c.calls_min, c.calls_max, c.mode, settings.rounds
        );
        let _ = writeln!(
            t,
            "{:>3} {:<14} {:>24} {:>8} {:>8} {:>6} {:>13} {:>9} {:>14}",
            "-j",
            "mode",
            "sessions/s",
            "p50 ms",
            "p99 ms",
            "ratio",
            "(rounds)",
            "p99 ratio",
            "verdicts"
        );
        for level in &rp.levels {
            for (record, runs) in [(false, &level.replay), (true, &level.record_replay)] {
                let rate = replay::series(runs, |r| r.sessions_per_s);
                let (passed, failed, errors) = runs.iter().fold((0, 0, 0), |(p, f, e), r| {
                    (p + r.passed, f + r.failed, e + r.errors)
                });
                let verdicts = if failed + errors == 0 {
                    format!("{passed} passed")
                } else {
                    format!("{failed} fail {errors} err")
                };
                let (ratio, rounds, p99_ratio) = if record {
                    let per_round = level.ratio_per_round();
                    (
                        format!("{:.3}", level.ratio()),
                        format!("({:.2}–{:.2})", per_round.min(), per_round.max()),
                        format!("{:.2}", level.p99_ratio()),
                    )
                } else {
                    Default::default()
                };
                let _ = writeln!(
                    t,
                    "{:>3} {:<14} {:>24} {:>8} {:>8} {:>6} {:>13} {:>9} {:>14}",
                    if record {
                        String::new()
                    } else {
                        level.concurrency.to_string()
                    },
                    if record { "record+replay" } else { "replay" },
                    spread(&rate, thousands),
                    ms(replay::series(runs, |r| r.p50_ms).median()),
                    ms(replay::series(runs, |r| r.p99_ms).median()),
                    ratio,
                    rounds,
                    p99_ratio,
                    verdicts
                );
            }
        }
        let recorded: u64 = rp
            .levels
            .iter()
            .flat_map(|l| &l.record_replay)
            .filter_map(|r| r.recorded)
            .sum();
        let dropped: u64 = rp
            .levels
            .iter()
            .flat_map(|l| &l.record_replay)
            .filter_map(|r| r.dropped)
            .sum();
        let runs: usize = rp.levels.iter().map(|l| l.record_replay.len()).sum();
        let time_wait = rp
            .levels
            .iter()
            .flat_map(|l| l.replay.iter().chain(&l.record_replay))
            .map(|r| r.time_wait_before)
            .max()
            .unwrap_or(0);
        let _ = writeln!(
            t,
            "  record+replay wrote {} session lines in {} runs ({} expected), {} dropped; \
             at most {} TCP sockets in TIME_WAIT when a run started",
            thousands(recorded as f64),
            runs,
            thousands((runs * c.sessions) as f64),
            dropped,
            thousands(time_wait as f64)
        );
    }

    if !estimates.is_empty() {
        let stale = estimates.iter().filter(|e| !e.fresh).count();
        let _ = writeln!(
            t,
            "\nMatching cost: koala-replayer/benches/matching.rs (criterion {}), mean time of one operation by recorded calls{}",
            settings.criterion_args.join(" "),
            if stale > 0 {
                format!(" — {stale} estimate(s) NOT from this run")
            } else {
                String::new()
            }
        );
        let mut sizes: Vec<u64> = estimates.iter().map(|e| e.size).collect();
        sizes.sort();
        sizes.dedup();
        let _ = write!(t, "{:<24}", "benchmark");
        for size in &sizes {
            let _ = write!(t, " {:>12}", format!("{} calls", thousands(*size as f64)));
        }
        let _ = writeln!(t);
        let mut names: Vec<(String, String)> = estimates
            .iter()
            .map(|e| (e.group.clone(), e.function.clone()))
            .collect();
        names.dedup();
        for (group, function) in names {
            let _ = write!(t, "{:<24}", format!("{group}/{function}"));
            for size in &sizes {
                let value = estimates
                    .iter()
                    .find(|e| e.group == group && e.function == function && e.size == *size)
                    .map_or("-".into(), |e| matching::show_ns(e.mean_ns));
                let _ = write!(t, " {value:>12}");
            }
            let _ = writeln!(t);
        }
    }
    t
}
