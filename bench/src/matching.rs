//! Matching cost: runs the existing criterion benchmark
//! (`koala-replayer/benches/matching.rs`) with quick settings and reads its
//! `target/criterion/**/new/estimates.json`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::SystemTime;

use serde_json::{Value, json};

use koala_tests::clean_command;

use crate::stats::number;

/// One criterion benchmark's estimate.
#[derive(Clone, Debug)]
pub struct Estimate {
    /// `match_request` or `index`.
    pub group: String,
    /// `exact`, `near_miss`, `unmatched`; `build` for `index`.
    pub function: String,
    /// Recorded calls in the session.
    pub size: u64,
    pub mean_ns: f64,
    pub mean_low_ns: f64,
    pub mean_high_ns: f64,
    pub median_ns: f64,
    /// Written by this run (not left over from an earlier one).
    pub fresh: bool,
}

/// `cargo bench -p koala-replayer --bench matching -- <args>`, output in
/// `log`. Returns an error with the log's tail when it fails.
pub fn run_criterion(root: &Path, args: &[String], log: &Path) -> Result<(), String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let file = fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let status = clean_command(cargo)
        .current_dir(root)
        .args(["bench", "-p", "koala-replayer", "--bench", "matching", "--"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(file.try_clone().map_err(|e| e.to_string())?)
        .stderr(file)
        .status()
        .map_err(|e| format!("cannot run cargo bench: {e}"))?;
    if status.success() {
        return Ok(());
    }
    let text = fs::read_to_string(log).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(30).collect();
    Err(format!(
        "cargo bench failed ({status}); last lines of {}:\n{}",
        log.display(),
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    ))
}

/// Every `match_request` and `index` estimate under `criterion_dir`.
pub fn read_estimates(criterion_dir: &Path, since: SystemTime) -> Vec<Estimate> {
    let mut found = Vec::new();
    for group in ["match_request", "index"] {
        collect(&criterion_dir.join(group), since, &mut found);
    }
    found.sort_by(|a, b| {
        (order(&a.group), order(&a.function), a.size).cmp(&(
            order(&b.group),
            order(&b.function),
            b.size,
        ))
    });
    found
}

fn order(name: &str) -> usize {
    [
        "match_request",
        "exact",
        "near_miss",
        "unmatched",
        "index",
        "build",
    ]
    .iter()
    .position(|n| *n == name)
    .unwrap_or(99)
}

fn collect(dir: &Path, since: SystemTime, found: &mut Vec<Estimate>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if !path.is_dir() {
            continue;
        }
        if entry.file_name() == "new" {
            if let Some(estimate) = read_one(&path, since) {
                found.push(estimate);
            }
        } else if entry.file_name() != "base"
            && entry.file_name() != "change"
            && entry.file_name() != "report"
        {
            collect(&path, since, found);
        }
    }
}

fn read_one(new_dir: &Path, since: SystemTime) -> Option<Estimate> {
    let read = |name: &str| -> Option<Value> {
        serde_json::from_str(&fs::read_to_string(new_dir.join(name)).ok()?).ok()
    };
    let benchmark = read("benchmark.json")?;
    let estimates = read("estimates.json")?;
    let modified = fs::metadata(new_dir.join("estimates.json"))
        .and_then(|m| m.modified())
        .ok()?;
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    Some(Estimate {
        group: benchmark["group_id"].as_str()?.to_string(),
        function: benchmark["function_id"]
            .as_str()
            .unwrap_or("build")
            .to_string(),
        size: benchmark["value_str"].as_str()?.parse().ok()?,
        mean_ns: f(&estimates["mean"]["point_estimate"]),
        mean_low_ns: f(&estimates["mean"]["confidence_interval"]["lower_bound"]),
        mean_high_ns: f(&estimates["mean"]["confidence_interval"]["upper_bound"]),
        median_ns: f(&estimates["median"]["point_estimate"]),
        fresh: modified >= since,
    })
}

pub fn json(estimates: &[Estimate], args: &[String], criterion_dir: &Path) -> Value {
    json!({
        "source": "koala-replayer/benches/matching.rs",
        "criterion_args": args,
        "estimates_dir": criterion_dir.display().to_string(),
        "estimates": estimates.iter().map(|e| json!({
            "group": e.group,
            "function": e.function,
            "recorded_calls": e.size,
            "mean_ns": number(e.mean_ns),
            "mean_ci95_ns": [number(e.mean_low_ns), number(e.mean_high_ns)],
            "median_ns": number(e.median_ns),
            "fresh": e.fresh,
        })).collect::<Vec<_>>(),
    })
}

/// `target/criterion`.
pub fn criterion_dir() -> PathBuf {
    koala_tests::target_dir().join("criterion")
}

/// Nanoseconds as `774 ns`, `12.3 µs`, `4.56 ms`.
pub fn show_ns(ns: f64) -> String {
    if !ns.is_finite() {
        "-".into()
    } else if ns < 1_000.0 {
        format!("{ns:.0} ns")
    } else if ns < 1_000_000.0 {
        format!("{:.1} µs", ns / 1_000.0)
    } else {
        format!("{:.2} ms", ns / 1_000_000.0)
    }
}
