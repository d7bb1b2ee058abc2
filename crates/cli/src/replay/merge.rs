//! `koala report merge`: joins the JSON reports of several `koala replay`
//! processes (the workers of one `--consumer`) into one report, and
//! optionally a JUnit file.
//!
//! Sessions are put in source order (file or stream, then line or stream
//! sequence), so the merged report of workers that shared a consumer lists
//! the same sessions, in the same order, with the same verdicts, calls,
//! explanations and results, as one `koala replay` of the whole stream.
//! What differs is time: `latency_ms`, the results' `durations`, `replay`
//! (the inbound server's counter), `sut` (each worker's service) and their
//! calls' `at_ms` and `wait_ms`, the
//! run's `started`, `duration_s` (the longest worker's), `throughput_per_s`
//! (the workers' sum), `inbound` and `concurrency` (the workers' sum).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::{Map, Value, json};

use super::report::{REPORT_VERSION, percentile, xml_escape};

/// Join the JSON reports of several `koala replay --consumer` workers.
#[derive(clap::Args)]
pub struct MergeArgs {
    /// The workers' reports (`koala replay --report FILE.json`).
    #[arg(required = true, value_name = "REPORT.json")]
    pub reports: Vec<PathBuf>,
    /// Where to write the merged JSON report.
    #[arg(long, short = 'o', value_name = "FILE.json")]
    pub to: PathBuf,
    /// Also write a JUnit XML file of the merged report.
    #[arg(long, value_name = "FILE.xml")]
    pub junit: Option<PathBuf>,
}

pub fn run(args: &MergeArgs) -> Result<ExitCode, String> {
    let mut reports = Vec::new();
    for path in &args.reports {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let value: Value = serde_json::from_str(&text)
            .map_err(|e| format!("{}: not a JSON report: {e}", path.display()))?;
        if value["koala_replay_report"].as_u64() != Some(u64::from(REPORT_VERSION)) {
            return Err(format!(
                "{}: not a koala replay report of version {REPORT_VERSION}",
                path.display()
            ));
        }
        reports.push(value);
    }
    let (merged, duplicates) = merge(&reports, &args.reports);
    for duplicate in &duplicates {
        eprintln!(
            "koala: warning: session {duplicate} is in more than one report (replayed twice); the first one is kept"
        );
    }
    let mut text = serde_json::to_string_pretty(&merged).map_err(|e| e.to_string())?;
    text.push('\n');
    std::fs::write(&args.to, text)
        .map_err(|e| format!("cannot write {}: {e}", args.to.display()))?;
    eprintln!("koala: wrote {}", args.to.display());
    if let Some(path) = &args.junit {
        std::fs::write(path, junit(&merged))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        eprintln!("koala: wrote {}", path.display());
    }
    let sessions = &merged["summary"]["sessions"];
    let count = |key: &str| sessions[key].as_u64().unwrap_or(0);
    println!(
        "{} report(s) merged: {} session(s), {} passed, {} failed, {} error(s)",
        reports.len(),
        count("total"),
        count("passed"),
        count("failed"),
        count("errors")
    );
    Ok(ExitCode::from(
        if count("failed") == 0
            && count("errors") == 0
            && !merged["interrupted"].as_bool().unwrap_or(false)
        {
            0
        } else {
            1
        },
    ))
}

/// The source order of a session entry: file (or stream URL), line (or
/// stream sequence), id.
fn order_key(session: &Value) -> (String, u64, String) {
    (
        session["file"].as_str().unwrap_or_default().to_string(),
        session["line"].as_u64().unwrap_or(0),
        session["id"].as_str().unwrap_or_default().to_string(),
    )
}

/// The merged report, and the sessions found in more than one report.
pub fn merge(reports: &[Value], paths: &[PathBuf]) -> (Value, Vec<String>) {
    let mut sessions: Vec<Value> = Vec::new();
    let mut seen = BTreeSet::new();
    let mut duplicates = Vec::new();
    for report in reports {
        for session in report["sessions"].as_array().into_iter().flatten() {
            let key = order_key(session);
            if !seen.insert(key.clone()) {
                duplicates.push(session["location"].as_str().unwrap_or(&key.2).to_string());
                continue;
            }
            sessions.push(session.clone());
        }
    }
    sessions.sort_by_key(order_key);

    let mut counts = [0u64; 3];
    let mut calls = Map::new();
    let mut latencies = Vec::new();
    for session in &sessions {
        match session["verdict"].as_str() {
            Some("pass") => counts[0] += 1,
            Some("fail") => counts[1] += 1,
            _ => counts[2] += 1,
        }
        for (key, value) in session["calls"].as_object().into_iter().flatten() {
            let sum =
                calls.get(key).and_then(Value::as_u64).unwrap_or(0) + value.as_u64().unwrap_or(0);
            calls.insert(key.clone(), sum.into());
        }
        if let Some(ms) = session["latency_ms"].as_f64() {
            latencies.push(ms);
        }
    }
    latencies.sort_by(f64::total_cmp);
    let latency = latencies
        .last()
        .map(|&max| json!({"p50": percentile(&latencies, 0.5), "p99": percentile(&latencies, 0.99), "max": max}));
    let numbers = |key: &'static str| reports.iter().filter_map(move |r| r[key].as_f64());
    let first = reports.first().cloned().unwrap_or(Value::Null);
    let mut merged = first.as_object().cloned().unwrap_or_default();
    merged.insert("koala_replay_report".into(), REPORT_VERSION.into());
    if let Some(started) = reports.iter().filter_map(|r| r["started"].as_str()).min() {
        merged.insert("started".into(), started.into());
    }
    merged.insert(
        "duration_s".into(),
        numbers("duration_s").fold(0.0, f64::max).into(),
    );
    merged.insert(
        "concurrency".into(),
        (numbers("concurrency").sum::<f64>() as u64).into(),
    );
    merged.insert(
        "interrupted".into(),
        reports
            .iter()
            .any(|r| r["interrupted"].as_bool() == Some(true))
            .into(),
    );
    let inbound: Vec<Value> = reports.iter().map(|r| r["inbound"].clone()).collect();
    merged.insert("inbound".into(), inbound.into());
    let mut summary = first["summary"].as_object().cloned().unwrap_or_default();
    // What the workers' summaries hold beyond the known keys: summed when
    // numbers.
    for (key, value) in summary.iter_mut() {
        if value.is_u64() {
            *value = reports
                .iter()
                .filter_map(|r| r["summary"][key].as_u64())
                .sum::<u64>()
                .into();
        }
    }
    summary.insert(
        "sessions".into(),
        json!({"total": counts.iter().sum::<u64>(), "passed": counts[0], "failed": counts[1], "errors": counts[2]}),
    );
    summary.insert("calls".into(), Value::Object(calls));
    summary.insert(
        "throughput_per_s".into(),
        reports
            .iter()
            .filter_map(|r| r["summary"]["throughput_per_s"].as_f64())
            .sum::<f64>()
            .into(),
    );
    summary.insert("latency_ms".into(), latency.unwrap_or(Value::Null));
    merged.insert("summary".into(), Value::Object(summary));
    merged.insert("sessions".into(), Value::Array(sessions));
    merged.insert(
        "merged_from".into(),
        paths
            .iter()
            .map(|p| Value::from(p.display().to_string()))
            .collect::<Vec<_>>()
            .into(),
    );
    (Value::Object(merged), duplicates)
}

/// JUnit XML of a (merged) JSON report, as `koala replay --junit` writes it.
pub fn junit(report: &Value) -> String {
    let sessions = &report["summary"]["sessions"];
    let count = |key: &str| sessions[key].as_u64().unwrap_or(0);
    let duration = report["duration_s"].as_f64().unwrap_or(0.0);
    let mut xml = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        xml,
        "<testsuites name=\"koala replay\" tests=\"{}\" failures=\"{}\" errors=\"{}\" time=\"{duration:.3}\">",
        count("total"),
        count("failed"),
        count("errors")
    );
    let _ = writeln!(
        xml,
        "  <testsuite name=\"koala replay\" tests=\"{}\" failures=\"{}\" errors=\"{}\" skipped=\"0\" time=\"{duration:.3}\" timestamp=\"{}\">",
        count("total"),
        count("failed"),
        count("errors"),
        report["started"]
            .as_str()
            .unwrap_or_default()
            .trim_end_matches('Z'),
    );
    for session in report["sessions"].as_array().into_iter().flatten() {
        let text = |key: &str| session[key].as_str().unwrap_or_default().to_string();
        let file = xml_escape(&text("file"), true);
        let name = session["id"]
            .as_str()
            .map_or_else(|| text("location"), str::to_string);
        let _ = write!(
            xml,
            "    <testcase name=\"{}\" classname=\"{file}\" file=\"{file}\" line=\"{}\" time=\"{:.3}\"",
            xml_escape(&name, true),
            session["line"].as_u64().unwrap_or(0),
            session["latency_ms"].as_f64().unwrap_or(0.0) / 1000.0
        );
        let noise: Vec<&str> = session["noise"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let (tag, kind) = match session["verdict"].as_str() {
            Some("pass") if !noise.is_empty() => {
                let _ = write!(
                    xml,
                    ">\n      <system-out>noise rules applied: {}</system-out>\n    </testcase>\n",
                    xml_escape(&noise.join(", "), false)
                );
                continue;
            }
            Some("pass") => {
                xml.push_str("/>\n");
                continue;
            }
            Some("fail") => ("failure", "mismatch"),
            _ => ("error", "replay error"),
        };
        let mut body = format!("{}\n{}\n", text("location"), text("reason"));
        let diff = text("diff");
        if !diff.is_empty() {
            body.push_str(&diff);
            body.push('\n');
        }
        let _ = write!(
            xml,
            ">\n      <{tag} message=\"{}\" type=\"{kind}\">{}</{tag}>\n    </testcase>\n",
            xml_escape(&text("reason"), true),
            xml_escape(&body, false)
        );
    }
    xml.push_str("  </testsuite>\n</testsuites>\n");
    xml
}

/// The parts of a report that two runs of the same sessions share: each
/// session without its timings and the worker it ran on (see the module
/// documentation), and the counts of the summary.
#[cfg(test)]
pub fn comparable(report: &Value) -> Value {
    let sessions: Vec<Value> = report["sessions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|session| {
            let mut session = session.clone();
            if let Some(object) = session.as_object_mut() {
                object.remove("latency_ms");
                if let Some(result) = object.get_mut("result").and_then(Value::as_object_mut) {
                    for key in ["durations", "replay", "sut"] {
                        result.remove(key);
                    }
                    for call in result
                        .get_mut("calls")
                        .and_then(Value::as_array_mut)
                        .into_iter()
                        .flatten()
                    {
                        if let Some(call) = call.as_object_mut() {
                            call.remove("at_ms");
                            call.remove("wait_ms");
                        }
                    }
                }
            }
            session
        })
        .collect();
    json!({
        "sessions": sessions,
        "summary": {
            "sessions": report["summary"]["sessions"],
            "calls": report["summary"]["calls"],
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(file: &str, line: u64, verdict: &str, matched: u64, latency: f64) -> Value {
        json!({"id": format!("id-{line}"), "file": file, "line": line, "location": format!("{file}:{line}"),
               "verdict": verdict, "reason": if verdict == "pass" {""} else {"the response differs"},
               "latency_ms": latency, "calls": {"matched": matched, "unmatched": 0, "missing": 0, "reused": 0, "setup": 0},
               "diff": "", "error": null, "result": {"durations": {"total_ms": latency}, "replay": line, "sut": "x"}})
    }

    fn report(sessions: Vec<Value>, duration: f64) -> Value {
        json!({"koala_replay_report": 1, "started": "2026-01-01T00:00:00Z", "duration_s": duration,
               "inbound": "127.0.0.1:1", "sut": "127.0.0.1:2", "concurrency": 2, "interrupted": false,
               "summary": {"sessions": {}, "calls": {}, "throughput_per_s": 10.0, "latency_ms": null, "noise_rules": 2},
               "sessions": sessions})
    }

    #[test]
    fn two_workers_make_one_report_in_source_order() {
        let s = "nats://h:1/S";
        let a = report(
            vec![session(s, 3, "pass", 2, 5.0), session(s, 1, "fail", 1, 7.0)],
            1.0,
        );
        let b = report(vec![session(s, 2, "pass", 3, 6.0)], 2.0);
        let whole = report(
            vec![
                session(s, 1, "fail", 1, 9.0),
                session(s, 2, "pass", 3, 9.0),
                session(s, 3, "pass", 2, 9.0),
            ],
            3.0,
        );
        let (merged, duplicates) =
            merge(&[a, b], &[PathBuf::from("a.json"), PathBuf::from("b.json")]);
        assert!(duplicates.is_empty());
        let lines: Vec<u64> = merged["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["line"].as_u64().unwrap())
            .collect();
        assert_eq!(lines, [1, 2, 3]);
        assert_eq!(
            merged["summary"]["sessions"],
            json!({"total": 3, "passed": 2, "failed": 1, "errors": 0})
        );
        assert_eq!(merged["summary"]["calls"]["matched"], 6);
        assert_eq!(merged["summary"]["throughput_per_s"], 20.0);
        assert_eq!(
            merged["summary"]["noise_rules"], 4,
            "unknown counts are summed"
        );
        assert_eq!(merged["duration_s"], 2.0);
        assert_eq!(merged["concurrency"], 4);
        assert_eq!(merged["summary"]["latency_ms"]["max"], 7.0);
        let (whole, _) = merge(&[whole], &[PathBuf::from("w.json")]);
        assert_eq!(comparable(&merged), comparable(&whole));
        let xml = junit(&merged);
        assert!(
            xml.contains("tests=\"3\" failures=\"1\" errors=\"0\""),
            "{xml}"
        );
        assert!(
            xml.contains("<failure message=\"the response differs\""),
            "{xml}"
        );
    }

    #[test]
    fn a_session_in_two_reports_is_kept_once_and_named() {
        let s = "f.jsonl";
        let a = report(vec![session(s, 1, "pass", 1, 1.0)], 1.0);
        let (merged, duplicates) =
            merge(&[a.clone(), a], &[PathBuf::from("a"), PathBuf::from("b")]);
        assert_eq!(duplicates, ["f.jsonl:1"]);
        assert_eq!(merged["summary"]["sessions"]["total"], 1);
    }
}
