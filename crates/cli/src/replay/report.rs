//! What a run tells: the console summary and failure details, the JSON
//! report and the JUnit XML file.

use std::fmt::Write as _;
use std::io::{self, Write};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::diff::escape;
use super::load::{Item, ItemKind, Loaded};
use super::outcome::{CallCounts, Outcome, Verdict};

/// Version of the JSON report's layout.
pub const REPORT_VERSION: u32 = 1;
/// Passing sessions with missing calls listed on the console at most.
const NOTES_SHOWN: usize = 10;

/// Everything known about a finished (or interrupted) run.
pub struct Run<'a> {
    pub loaded: &'a Loaded,
    /// One per item of `loaded`: `None` for background lines.
    pub outcomes: &'a [Option<Outcome>],
    pub inbound: String,
    pub sut: Option<String>,
    pub concurrency: usize,
    pub started: SystemTime,
    pub elapsed: Duration,
    pub interrupted: bool,
}

#[derive(Debug, Default, PartialEq)]
pub struct Summary {
    pub total: usize,
    pub passed: usize,
    pub failed: usize,
    pub errors: usize,
    /// `calls.unattributed` includes the calls answered unattributed that
    /// no session in flight claimed: these, in no session's report.
    pub unattributed_no_session: usize,
    pub calls: CallCounts,
    /// Sessions per second, over every session posted.
    pub throughput: f64,
    /// p50, p99 and max of the replay round trips, in ms.
    pub latency: Option<(f64, f64, f64)>,
}

/// An item with an outcome: a replayed session or a bad line.
struct Entry<'a> {
    item: &'a Item,
    /// The session id; `None` for a bad line.
    id: Option<&'a str>,
    /// `file:line`.
    location: String,
    outcome: &'a Outcome,
}

impl Entry<'_> {
    /// The session id, or `file:line` for a bad line.
    fn name(&self) -> &str {
        self.id.unwrap_or(&self.location)
    }
}

impl Run<'_> {
    /// Every item with an outcome, in file order.
    fn entries(&self) -> impl Iterator<Item = Entry<'_>> {
        self.loaded
            .items
            .iter()
            .zip(self.outcomes)
            .filter_map(|(item, outcome)| {
                Some(Entry {
                    item,
                    id: match &item.kind {
                        ItemKind::Session { id, .. } => Some(id.as_str()),
                        _ => None,
                    },
                    location: self.loaded.location(item),
                    outcome: outcome.as_ref()?,
                })
            })
    }

    pub fn summary(&self) -> Summary {
        let mut summary = Summary::default();
        let mut latencies = Vec::new();
        let mut posted = 0;
        for Entry { outcome, .. } in self.entries() {
            summary.total += 1;
            match outcome.verdict {
                Verdict::Pass => summary.passed += 1,
                Verdict::Fail => summary.failed += 1,
                Verdict::Error => summary.errors += 1,
            }
            if let Some(ms) = outcome.latency_ms {
                posted += 1;
                latencies.push(ms);
            }
            summary.calls.matched += outcome.calls.matched;
            summary.calls.unmatched += outcome.calls.unmatched;
            summary.calls.missing += outcome.calls.missing;
            summary.calls.reused += outcome.calls.reused;
            summary.calls.setup += outcome.calls.setup;
            summary.calls.unattributed += outcome.calls.unattributed;
        }
        let seconds = self.elapsed.as_secs_f64();
        if seconds > 0.0 {
            summary.throughput = posted as f64 / seconds;
        }
        latencies.sort_by(f64::total_cmp);
        if let Some(&max) = latencies.last() {
            summary.latency = Some((
                percentile(&latencies, 0.50),
                percentile(&latencies, 0.99),
                max,
            ));
        }
        summary
    }
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The failures and errors, each with its (capped) explanation, then notes
/// about passing sessions with missing calls.
pub fn print_details(
    out: &mut impl Write,
    run: &Run,
    diff_lines: usize,
    max_shown: usize,
    report_hint: bool,
) -> io::Result<()> {
    let mut shown = 0;
    let mut hidden = 0;
    for entry in run.entries() {
        let outcome = entry.outcome;
        if outcome.verdict == Verdict::Pass {
            continue;
        }
        if shown == max_shown {
            hidden += 1;
            continue;
        }
        shown += 1;
        let label = if outcome.verdict == Verdict::Fail {
            "FAIL "
        } else {
            "ERROR"
        };
        // Ids and server messages may hold anything: escaped for the terminal.
        match entry.id {
            Some(id) => writeln!(out, "{label} {}  ({})", escape(id), escape(&entry.location))?,
            None => writeln!(out, "{label} {}", escape(&entry.location))?,
        }
        if !outcome.reason.is_empty() {
            writeln!(out, "  {}", escape(&outcome.reason))?;
        }
        for line in outcome.diff.iter().take(diff_lines) {
            writeln!(out, "    {line}")?;
        }
        if outcome.diff.len() > diff_lines {
            let more = outcome.diff.len() - diff_lines;
            let hint = if report_hint {
                "the report has more"
            } else {
                "raise --diff-lines or write --report"
            };
            writeln!(out, "    … {more} more line(s) ({hint})")?;
        }
        writeln!(out)?;
    }
    if hidden > 0 {
        writeln!(
            out,
            "… {hidden} more failing session(s) not shown (--max-shown {max_shown}; --report lists all)\n"
        )?;
    }
    let mut notes = 0;
    for entry in run.entries() {
        if entry.outcome.verdict != Verdict::Pass || entry.outcome.calls.missing == 0 {
            continue;
        }
        notes += 1;
        if notes <= NOTES_SHOWN {
            writeln!(
                out,
                "note  {}  ({}): passed, but {} recorded call(s) were not made",
                escape(entry.name()),
                escape(&entry.location),
                entry.outcome.calls.missing
            )?;
        }
    }
    if notes > NOTES_SHOWN {
        writeln!(
            out,
            "note  … {} more passing session(s) with missing calls",
            notes - NOTES_SHOWN
        )?;
    }
    if notes > 0 {
        writeln!(out)?;
    }
    Ok(())
}

pub fn print_summary(out: &mut impl Write, run: &Run, summary: &Summary) -> io::Result<()> {
    let row =
        |out: &mut dyn Write, name: &str, value: String| writeln!(out, "  {name:<20} {value}");
    writeln!(out, "Summary")?;
    row(out, "sessions", summary.total.to_string())?;
    row(out, "  passed", summary.passed.to_string())?;
    row(out, "  failed", summary.failed.to_string())?;
    row(out, "  errors", summary.errors.to_string())?;
    row(out, "calls matched", summary.calls.matched.to_string())?;
    row(out, "  unmatched", summary.calls.unmatched.to_string())?;
    row(out, "  missing", summary.calls.missing.to_string())?;
    row(out, "  reused", summary.calls.reused.to_string())?;
    row(out, "  shared set-up", summary.calls.setup.to_string())?;
    let mut unattributed = summary.calls.unattributed.to_string();
    if summary.unattributed_no_session > 0 {
        let _ = write!(
            unattributed,
            " ({} while several replays were in flight, in no session's report)",
            summary.unattributed_no_session
        );
    }
    row(out, "  unattributed", unattributed)?;
    row(
        out,
        "throughput",
        format!(
            "{:.1} sessions/s ({:.2} s, concurrency {})",
            summary.throughput,
            run.elapsed.as_secs_f64(),
            run.concurrency
        ),
    )?;
    match summary.latency {
        Some((p50, p99, max)) => row(
            out,
            "replay latency",
            format!("p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms"),
        )?,
        None => row(out, "replay latency", "-".into())?,
    }
    writeln!(out)?;
    if run.interrupted {
        // Bad lines have outcomes too, but are not sessions.
        let replayed = run.entries().filter(|entry| entry.id.is_some()).count();
        writeln!(
            out,
            "INTERRUPTED: {replayed} of {} session(s) replayed",
            run.loaded.session_count()
        )?;
    } else if summary.failed == 0 && summary.errors == 0 {
        writeln!(out, "OK: all {} session(s) passed", summary.passed)?;
    } else {
        writeln!(
            out,
            "FAILED: {} failed, {} error(s), {} passed, of {} session(s)",
            summary.failed, summary.errors, summary.passed, summary.total
        )?;
    }
    Ok(())
}

/// The JSON report: the summary and every session with its verdict,
/// ReplayResult or error, and explanation.
pub fn report_json(run: &Run, summary: &Summary) -> Value {
    let sessions: Vec<Value> = run
        .entries()
        .map(|entry| {
            let outcome = entry.outcome;
            let error = (outcome.verdict == Verdict::Error)
                .then(|| json!({"message": outcome.reason, "http_status": outcome.http_status}));
            json!({
                "id": entry.id,
                "file": run.loaded.files[entry.item.file].display().to_string(),
                "line": entry.item.line,
                "location": entry.location,
                "verdict": outcome.verdict.as_str(),
                "reason": outcome.reason,
                "latency_ms": outcome.latency_ms,
                "calls": outcome.calls,
                "diff": outcome.diff.join("\n"),
                "error": error,
                "noise": outcome.noise,
                "result": outcome.result,
            })
        })
        .collect();
    let latency = summary
        .latency
        .map(|(p50, p99, max)| json!({"p50": p50, "p99": p99, "max": max}));
    json!({
        "koala_replay_report": REPORT_VERSION,
        "started": iso8601(run.started),
        "duration_s": run.elapsed.as_secs_f64(),
        "inbound": run.inbound,
        "sut": run.sut,
        "concurrency": run.concurrency,
        "interrupted": run.interrupted,
        "summary": {
            "sessions": {
                "total": summary.total,
                "passed": summary.passed,
                "failed": summary.failed,
                "errors": summary.errors,
            },
            "calls": summary.calls,
            "unattributed_calls_of_no_session": summary.unattributed_no_session,
            "throughput_per_s": summary.throughput,
            "latency_ms": latency,
        },
        "sessions": sessions,
    })
}

pub fn write_json(path: &Path, run: &Run, summary: &Summary) -> Result<(), String> {
    let mut text = serde_json::to_string_pretty(&report_json(run, summary))
        .map_err(|e| format!("cannot serialize the report: {e}"))?;
    text.push('\n');
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// JUnit XML: one testsuite, one testcase per session (name = session id,
/// classname = session file), `<failure>` with the explanation, `<error>`
/// for errors.
pub fn junit_xml(run: &Run, summary: &Summary) -> String {
    let seconds = |ms: Option<f64>| format!("{:.3}", ms.unwrap_or(0.0) / 1000.0);
    let mut xml = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        xml,
        "<testsuites name=\"koala replay\" tests=\"{}\" failures=\"{}\" errors=\"{}\" time=\"{:.3}\">",
        summary.total,
        summary.failed,
        summary.errors,
        run.elapsed.as_secs_f64()
    );
    let _ = writeln!(
        xml,
        "  <testsuite name=\"koala replay\" tests=\"{}\" failures=\"{}\" errors=\"{}\" skipped=\"0\" time=\"{:.3}\" timestamp=\"{}\">",
        summary.total,
        summary.failed,
        summary.errors,
        run.elapsed.as_secs_f64(),
        iso8601(run.started).trim_end_matches('Z'),
    );
    for entry in run.entries() {
        let outcome = entry.outcome;
        let file = xml_escape(
            &run.loaded.files[entry.item.file].display().to_string(),
            true,
        );
        let _ = write!(
            xml,
            "    <testcase name=\"{}\" classname=\"{file}\" file=\"{file}\" line=\"{}\" time=\"{}\"",
            xml_escape(entry.name(), true),
            entry.item.line,
            seconds(outcome.latency_ms)
        );
        let (tag, kind) = match outcome.verdict {
            Verdict::Pass if !outcome.noise.is_empty() => {
                // The noise rules that let it pass.
                let _ = write!(
                    xml,
                    ">\n      <system-out>noise rules applied: {}</system-out>\n    </testcase>\n",
                    xml_escape(&outcome.noise.join(", "), false)
                );
                continue;
            }
            Verdict::Pass => {
                xml.push_str("/>\n");
                continue;
            }
            Verdict::Fail => ("failure", "mismatch"),
            Verdict::Error => ("error", "replay error"),
        };
        let mut body = format!("{}\n{}\n", entry.location, outcome.reason);
        for line in &outcome.diff {
            body.push_str(line);
            body.push('\n');
        }
        let _ = write!(
            xml,
            ">\n      <{tag} message=\"{}\" type=\"{kind}\">{}</{tag}>\n    </testcase>\n",
            xml_escape(&outcome.reason, true),
            xml_escape(&body, false)
        );
    }
    xml.push_str("  </testsuite>\n</testsuites>\n");
    xml
}

pub fn write_junit(path: &Path, run: &Run, summary: &Summary) -> Result<(), String> {
    std::fs::write(path, junit_xml(run, summary))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Escapes text for XML 1.0 character data (or an attribute value). Markup
/// characters become entities; characters XML 1.0 forbids (control
/// characters but tab, newline and carriage return; U+FFFE, U+FFFF) become
/// a visible `\u{..}`.
pub fn xml_escape(text: &str, attribute: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' if attribute => out.push_str("&quot;"),
            '\'' if attribute => out.push_str("&apos;"),
            // Attribute values are normalised: keep whitespace as references.
            '\n' if attribute => out.push_str("&#10;"),
            '\t' if attribute => out.push_str("&#9;"),
            '\r' => out.push_str("&#13;"),
            '\n' | '\t' => out.push(c),
            c if xml_allowed(c) => out.push(c),
            c => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
        }
    }
    out
}

fn xml_allowed(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// `YYYY-MM-DDTHH:MM:SSZ` (UTC).
pub fn iso8601(time: SystemTime) -> String {
    let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_escaping_of_markup_and_control_bytes() {
        assert_eq!(
            xml_escape("a<b>&\"c\" ]]> 'd'", false),
            "a&lt;b&gt;&amp;\"c\" ]]&gt; 'd'"
        );
        assert_eq!(xml_escape("a\"b'\n\tc", true), "a&quot;b&apos;&#10;&#9;c");
        assert_eq!(
            xml_escape("x\u{0}\u{1b}[0m\u{7}\r\n\ty\u{fffe}\u{ffff}", false),
            "x\\u{0}\\u{1b}[0m\\u{7}&#13;\n\ty\\u{fffe}\\u{ffff}"
        );
        // Allowed non-ASCII passes through.
        assert_eq!(xml_escape("héllo ✓ 𝄞", false), "héllo ✓ 𝄞");
    }

    fn failing(n: usize) -> Outcome {
        Outcome {
            verdict: Verdict::Fail,
            reason: "response differs (body)".into(),
            diff: (0..n).map(|i| format!("diff line {i}")).collect(),
            latency_ms: Some(2.0),
            http_status: None,
            calls: CallCounts::default(),
            result: None,
            noise: Vec::new(),
        }
    }

    #[test]
    fn console_output_and_junit_are_bounded_and_escaped() {
        use super::super::load::tests::{session, temp_dir};
        use koala_session::Kind;
        let dir = temp_dir("report");
        let lines: Vec<String> = ["a", "b\u{1b}]]>", "c"]
            .iter()
            .map(|id| session(id, "127.0.0.1:1", Kind::Session).to_json_line())
            .collect();
        std::fs::write(dir.join("s.jsonl"), lines.join("\n")).unwrap();
        let loaded = Loaded::read(std::slice::from_ref(&dir)).unwrap();
        let mut passing = failing(0);
        passing.verdict = Verdict::Pass;
        passing.calls.missing = 1;
        let outcomes = vec![Some(failing(50)), Some(failing(3)), Some(passing)];
        let run = Run {
            loaded: &loaded,
            outcomes: &outcomes,
            inbound: "127.0.0.1:2514".into(),
            sut: None,
            concurrency: 1,
            started: UNIX_EPOCH,
            elapsed: Duration::from_secs(2),
            interrupted: false,
        };
        let summary = run.summary();
        assert_eq!((summary.total, summary.passed, summary.failed), (3, 1, 2));
        assert_eq!(summary.throughput, 1.5);

        let mut out = Vec::new();
        print_details(&mut out, &run, 10, 1, false).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("FAIL  a  ("), "{text}");
        assert!(!text.contains('\u{1b}'), "{text}");
        let mut out = Vec::new();
        print_details(&mut out, &run, 10, 5, true).unwrap();
        let all = String::from_utf8(out).unwrap();
        assert!(all.contains("FAIL  b\\u{1b}]]>  ("), "{all}");
        assert!(
            all.contains("… 40 more line(s) (the report has more)"),
            "{all}"
        );
        assert!(
            text.contains(
                "    diff line 9\n    … 40 more line(s) (raise --diff-lines or write --report)\n"
            ),
            "{text}"
        );
        assert!(!text.contains("diff line 10"), "{text}");
        assert!(
            text.contains(
                "… 1 more failing session(s) not shown (--max-shown 1; --report lists all)"
            ),
            "{text}"
        );
        assert!(text.contains("note  c  ("), "{text}");

        let xml = junit_xml(&run, &summary);
        assert!(xml.contains("<testcase name=\"b\\u{1b}]]&gt;\""), "{xml}");
        assert!(
            xml.contains("tests=\"3\" failures=\"2\" errors=\"0\""),
            "{xml}"
        );
        assert_eq!(xml.matches("<failure ").count(), 2);
        assert!(!xml.contains('\u{1b}'));
        let report = report_json(&run, &summary);
        assert_eq!(report["sessions"][1]["id"], "b\u{1b}]]>");
        assert_eq!(report["sessions"][2]["verdict"], "pass");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_interrupted_run_counts_sessions_not_bad_lines() {
        use super::super::load::tests::{session, temp_dir};
        use koala_session::Kind;
        let dir = temp_dir("interrupted");
        let line = |id| session(id, "127.0.0.1:1", Kind::Session).to_json_line();
        let lines = [line("a"), "{broken".into(), line("b"), line("c")];
        std::fs::write(dir.join("s.jsonl"), lines.join("\n")).unwrap();
        let loaded = Loaded::read(std::slice::from_ref(&dir)).unwrap();
        let bad_line = Outcome::error("bad session line: ...".into(), None, None);
        // `c` was not replayed before the interrupt.
        let outcomes = vec![Some(failing(1)), Some(bad_line), Some(failing(1)), None];
        let run = Run {
            loaded: &loaded,
            outcomes: &outcomes,
            inbound: "127.0.0.1:2514".into(),
            sut: None,
            concurrency: 1,
            started: UNIX_EPOCH,
            elapsed: Duration::from_secs(1),
            interrupted: true,
        };
        let mut out = Vec::new();
        print_summary(&mut out, &run, &run.summary()).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.ends_with("INTERRUPTED: 2 of 3 session(s) replayed\n"),
            "{text}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&values, 0.5), 50.0);
        assert_eq!(percentile(&values, 0.99), 99.0);
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
        assert_eq!(percentile(&[1.0, 2.0], 0.5), 1.0);
    }

    #[test]
    fn dates_in_utc() {
        assert_eq!(iso8601(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            iso8601(UNIX_EPOCH + Duration::from_secs(1_709_210_096)),
            "2024-02-29T12:34:56Z"
        );
        assert_eq!(
            iso8601(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
    }
}
