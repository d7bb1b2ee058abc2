//! The verdict on one replayed session, and the text explaining it.

use koala_session::replay::{ApiError, ReplayResult};
use koala_session::{Exchange, Session};
use serde::Serialize;

use super::compare::{Difference, compare};
use super::diff::{self, escape, preview};
use super::noise::{self, Rule};

/// Lines of a body diff (before the whole explanation is capped).
const BODY_DIFF_LINES: usize = 120;
/// Unmatched and missing calls detailed per session.
const CALLS_SHOWN: usize = 5;
/// Characters of a request shown for a call.
const CALL_PREVIEW_CHARS: usize = 160;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail,
    Error,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
            Verdict::Error => "error",
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CallCounts {
    pub matched: usize,
    /// Connection set-up answered from another session's (or a background
    /// record's) recorded set-up: neither matched nor unmatched.
    pub setup: usize,
    pub unmatched: usize,
    pub missing: usize,
    pub reused: usize,
    /// Answered from a call recorded unattributed (a hand-off thread's, in
    /// a background record), which may answer any session: neither matched
    /// nor unmatched.
    pub unattributed: usize,
}

/// What happened to one item (session or bad line).
#[derive(Debug)]
pub struct Outcome {
    pub verdict: Verdict,
    /// One line: why it failed or errored; empty when it passed.
    pub reason: String,
    /// The explanation, bounded (see [`Settings::max_lines`]).
    pub diff: Vec<String>,
    /// Round trip of `POST /v1/replay` as seen by koala.
    pub latency_ms: Option<f64>,
    /// The API's status for errors it answered.
    pub http_status: Option<u16>,
    pub calls: CallCounts,
    /// Kept only when a report is written.
    pub result: Option<ReplayResult>,
    /// The noise rules that hid a difference in this session's response.
    pub noise: Vec<String>,
}

pub struct Settings {
    /// Lower-cased header names left out of the comparison.
    pub ignore_headers: Vec<String>,
    /// Keep the ReplayResult for the report.
    pub keep_results: bool,
    /// Most lines of explanation kept per session.
    pub max_lines: usize,
    /// `--ignore` and `--noise` rules.
    pub noise: Vec<Rule>,
}

impl Outcome {
    pub fn error(reason: String, http_status: Option<u16>, latency_ms: Option<f64>) -> Outcome {
        Outcome {
            verdict: Verdict::Error,
            reason,
            diff: Vec::new(),
            latency_ms,
            http_status,
            calls: CallCounts::default(),
            result: None,
            noise: Vec::new(),
        }
    }
}

/// The outcome of an API answer to `POST /v1/replay` for `session`.
pub fn from_answer(
    session: &Session,
    status: u16,
    body: &[u8],
    latency_ms: f64,
    settings: &Settings,
) -> Outcome {
    if status != 200 {
        let message = match serde_json::from_slice::<ApiError>(body) {
            Ok(error) => error.error,
            Err(_) if body.is_empty() => "(no message)".to_string(),
            Err(_) => preview(body, 300),
        };
        return Outcome::error(
            format!("inbound server answered {status}: {message}"),
            Some(status),
            Some(latency_ms),
        );
    }
    match serde_json::from_slice::<ReplayResult>(body) {
        Ok(result) if result.id != session.id => Outcome::error(
            format!(
                "inbound server answered for session {:?}, not {:?}",
                result.id, session.id
            ),
            None,
            Some(latency_ms),
        ),
        Ok(result) => evaluate(session, result, latency_ms, settings),
        Err(error) => Outcome::error(
            format!("inbound server answered 200 with an invalid ReplayResult: {error}"),
            None,
            Some(latency_ms),
        ),
    }
}

/// Judges a replay: it passes iff the response compares equal and no call
/// is unmatched. Missing calls are told, but do not fail it.
pub fn evaluate(
    session: &Session,
    result: ReplayResult,
    latency_ms: f64,
    settings: &Settings,
) -> Outcome {
    // Protocols whose bytes wrap the answer (FastCGI records) compare what
    // they wrap.
    let request = session.inbound.request.as_bytes();
    let comparable = |response: &[u8]| -> Vec<u8> {
        koala_protocols::detect_request(request)
            .and_then(|protocol| protocol.comparable_response(request, response))
            .unwrap_or_else(|| response.to_vec())
    };
    let recorded = comparable(result.recorded_response.as_bytes());
    let actual = comparable(result.response.as_bytes());
    // Noise rules of this endpoint hide what they name in both responses
    // (not in a truncated recording: only its prefix is compared).
    let rules: Vec<&Rule> = settings
        .noise
        .iter()
        .filter(|rule| rule.applies_to(request))
        .collect();
    let masked = (!session.inbound.truncated)
        .then(|| noise::mask(&recorded, &actual, &rules))
        .flatten();
    let comparison = match &masked {
        Some(masked) => {
            let mut ignore = settings.ignore_headers.clone();
            ignore.extend(masked.ignore_headers.iter().cloned());
            compare(&masked.recorded, &masked.actual, false, &ignore)
        }
        None => compare(
            &recorded,
            &actual,
            session.inbound.truncated,
            &settings.ignore_headers,
        ),
    };
    let noise_applied = masked.map(|m| m.applied).unwrap_or_default();
    let calls = CallCounts {
        matched: result.calls.iter().filter(|c| c.matched.is_some()).count(),
        setup: result
            .calls
            .iter()
            .filter(|c| c.setup && c.matched.is_none())
            .count(),
        unmatched: result.unmatched.len(),
        missing: result.missing.len(),
        reused: result.calls.iter().filter(|c| c.reused).count(),
        unattributed: result.calls.iter().filter(|c| c.unattributed).count(),
    };
    let response_equal = comparison.equal();
    let verdict = if response_equal && calls.unmatched == 0 {
        Verdict::Pass
    } else {
        Verdict::Fail
    };
    let mut reasons = Vec::new();
    if !response_equal {
        reasons.push(format!("response differs ({})", comparison.summary()));
    }
    if calls.unmatched > 0 {
        reasons.push(format!("{} unmatched call(s)", calls.unmatched));
    }
    let mut lines = Vec::new();
    if !noise_applied.is_empty() {
        lines.push(format!("noise rules applied: {}", noise_applied.join(", ")));
    }
    if !response_equal {
        let kind = if comparison.http { "HTTP" } else { "bytes" };
        lines.push(format!(
            "response ({kind}, ended: {}):",
            result.response_end
        ));
        for difference in &comparison.differences {
            describe(difference, &mut lines);
        }
        for note in &comparison.notes {
            lines.push(format!("  note: {note}"));
        }
    }
    for &index in result.unmatched.iter().take(CALLS_SHOWN) {
        describe_unmatched(session, &result, index, &mut lines);
    }
    if result.unmatched.len() > CALLS_SHOWN {
        lines.push(format!(
            "… {} more unmatched call(s)",
            result.unmatched.len() - CALLS_SHOWN
        ));
    }
    for missing in result.missing.iter().take(CALLS_SHOWN) {
        lines.push(format!(
            "missing: recorded call {} to {} was not made: {}",
            missing.index + 1,
            missing.peer,
            preview(missing.request.as_bytes(), CALL_PREVIEW_CHARS)
        ));
    }
    if result.missing.len() > CALLS_SHOWN {
        lines.push(format!(
            "… {} more missing call(s)",
            result.missing.len() - CALLS_SHOWN
        ));
    }
    Outcome {
        verdict,
        reason: reasons.join("; "),
        diff: diff::cap(lines, settings.max_lines),
        latency_ms: Some(latency_ms),
        http_status: None,
        calls,
        result: settings.keep_results.then_some(result),
        noise: noise_applied,
    }
}

fn describe(difference: &Difference, lines: &mut Vec<String>) {
    let quote = |text: &str| format!("\"{}\"", escape(text));
    let values = |values: &[String]| {
        values
            .iter()
            .map(|value| quote(value))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match difference {
        Difference::Status { recorded, actual } => lines.push(format!(
            "  status: {} -> {}",
            quote(recorded),
            quote(actual)
        )),
        Difference::HeaderMissing { name, value } => {
            lines.push(format!("  header missing: {name}: {}", quote(value)))
        }
        Difference::HeaderExtra { name, value } => {
            lines.push(format!("  header extra:   {name}: {}", quote(value)))
        }
        Difference::HeaderChanged {
            name,
            recorded,
            actual,
        } => lines.push(format!(
            "  header changed: {name}: {} -> {}",
            values(recorded),
            values(actual)
        )),
        Difference::NotHttp => lines.push("  the actual response is not HTTP/1.x".into()),
        Difference::NoResponse => lines.push("  the service sent no response".into()),
        Difference::Body { recorded, actual } | Difference::Bytes { recorded, actual } => {
            let what = match difference {
                Difference::Body { .. } => "body differs: ",
                _ => "",
            };
            let body = diff::payload_diff(recorded, actual, BODY_DIFF_LINES);
            if let Some((first, rest)) = body.split_first() {
                lines.push(format!("  {what}{first}"));
                lines.extend(rest.iter().map(|line| format!("    {line}")));
            }
        }
    }
}

fn describe_unmatched(
    session: &Session,
    result: &ReplayResult,
    index: usize,
    lines: &mut Vec<String>,
) {
    let Some(call) = result.calls.get(index) else {
        lines.push(format!(
            "unmatched call {}: not in the result's calls",
            index + 1
        ));
        return;
    };
    let closest: Option<(usize, &Exchange)> = call
        .closest
        .and_then(|c| session.calls.get(c).map(|exchange| (c, exchange)));
    let about = match closest {
        Some((c, _)) => format!("closest: recorded call {}, score {:.2}", c + 1, call.score),
        None => "no recorded call is close".to_string(),
    };
    let answered = match call.on_miss.as_deref() {
        Some("closest") => "; answered with the closest call's response",
        Some("error") => "; answered with a protocol error",
        Some("close") => "; connection closed",
        Some("none") => "; a request that gets no reply",
        _ => "",
    };
    lines.push(format!(
        "unmatched call {} to {} ({about}{answered}):",
        index + 1,
        call.peer
    ));
    lines.push(format!(
        "  request: {}",
        preview(call.request.as_bytes(), CALL_PREVIEW_CHARS)
    ));
    if let Some((_, exchange)) = closest {
        lines.push(format!(
            "  closest: {}",
            preview(exchange.request.as_bytes(), CALL_PREVIEW_CHARS)
        ));
        let (r, a) = (exchange.request.as_bytes(), call.request.as_bytes());
        let at = diff::first_difference(r, a);
        if at < CALL_PREVIEW_CHARS / 2 {
            // Both previews show it.
            lines.push(format!("  first difference at byte {at}"));
        } else if let (Ok(r), Ok(a)) = (std::str::from_utf8(r), std::str::from_utf8(a)) {
            lines.extend(
                diff::offset_diff_as(["closest", "request"], r, a)
                    .into_iter()
                    .map(|line| format!("  {line}")),
            );
        } else {
            lines.extend(
                diff::hex_diff(r, a)
                    .into_iter()
                    .map(|line| format!("  {line}")),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use koala_session::replay::{Durations, MissingCall, ReplayedCall};
    use koala_session::{Kind, Payload};

    fn settings() -> Settings {
        Settings {
            noise: Vec::new(),
            ignore_headers: vec!["x-id".into()],
            keep_results: false,
            max_lines: 50,
        }
    }

    fn session() -> Session {
        let mut session =
            super::super::load::tests::session("s-1", "127.0.0.1:8080", Kind::Session);
        session.calls.push(Exchange {
            peer: "10.0.0.2:6379".into(),
            request: Payload::from("*2\r\n$3\r\nGET\r\n$5\r\nuser1\r\n"),
            response: Payload::from("$3\r\nann\r\n"),
            ..Exchange::default()
        });
        session
    }

    fn call(request: &str, matched: Option<usize>, closest: Option<usize>) -> ReplayedCall {
        ReplayedCall {
            peer: "10.0.0.2:6379".into(),
            request: Payload::from(request),
            matched,
            score: if matched.is_some() { 1.0 } else { 0.62 },
            closest,
            reused: false,
            greeting: false,
            served: Payload::default(),
            at_ms: 1.0,
            ..ReplayedCall::default()
        }
    }

    fn result(response: &str) -> ReplayResult {
        ReplayResult {
            id: "s-1".into(),
            replay: 1,
            sut: "127.0.0.1:8080".into(),
            response: Payload::from(response),
            recorded_response: Payload::from(
                "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Id: 1\r\n\r\nok",
            ),
            response_end: "framed".into(),
            calls: vec![call("*2\r\n$3\r\nGET\r\n$5\r\nuser1\r\n", Some(0), Some(0))],
            missing: vec![],
            unmatched: vec![],
            durations: Durations::default(),
        }
    }

    #[test]
    fn an_equal_response_with_matched_calls_passes() {
        let outcome = evaluate(
            &session(),
            result("HTTP/1.1 200 OK\r\nX-Id: 2\r\nContent-Length: 2\r\n\r\nok"),
            3.0,
            &settings(),
        );
        assert_eq!(outcome.verdict, Verdict::Pass, "{:?}", outcome.diff);
        assert_eq!(outcome.calls.matched, 1);
        assert!(outcome.diff.is_empty() && outcome.reason.is_empty());
    }

    #[test]
    fn missing_calls_do_not_fail_but_unmatched_ones_do() {
        let mut r = result("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Id: 1\r\n\r\nok");
        r.missing.push(MissingCall {
            index: 0,
            peer: "10.0.0.2:6379".into(),
            request: Payload::from("PING"),
        });
        let outcome = evaluate(&session(), r.clone(), 1.0, &settings());
        assert_eq!(outcome.verdict, Verdict::Pass);
        assert_eq!(outcome.calls.missing, 1);

        r.calls
            .push(call("*2\r\n$3\r\nGET\r\n$5\r\nuser2\r\n", None, Some(0)));
        r.unmatched.push(1);
        let outcome = evaluate(&session(), r, 1.0, &settings());
        assert_eq!(outcome.verdict, Verdict::Fail);
        assert_eq!(outcome.reason, "1 unmatched call(s)");
        let text = outcome.diff.join("\n");
        assert!(
            text.contains(
                "unmatched call 2 to 10.0.0.2:6379 (closest: recorded call 1, score 0.62):"
            ),
            "{text}"
        );
        assert!(
            text.contains(r"  request: *2\r\n$3\r\nGET\r\n$5\r\nuser2\r\n"),
            "{text}"
        );
        assert!(
            text.contains(r"  closest: *2\r\n$3\r\nGET\r\n$5\r\nuser1\r\n"),
            "{text}"
        );
        assert!(text.contains("  first difference at byte 21\n"), "{text}");
        assert!(
            text.contains("missing: recorded call 1 to 10.0.0.2:6379 was not made: PING"),
            "{text}"
        );
    }

    #[test]
    fn a_different_response_explains_itself() {
        let outcome = evaluate(
            &session(),
            result("HTTP/1.1 500 Oops\r\nContent-Length: 2\r\nX-Id: 1\r\n\r\nno"),
            1.0,
            &settings(),
        );
        assert_eq!(outcome.verdict, Verdict::Fail);
        assert_eq!(outcome.reason, "response differs (status, body)");
        assert_eq!(outcome.diff[0], "response (HTTP, ended: framed):");
        assert_eq!(
            outcome.diff[1],
            "  status: \"HTTP/1.1 200 OK\" -> \"HTTP/1.1 500 Oops\""
        );
        assert_eq!(
            outcome.diff[2],
            "  body differs: text: recorded 2 bytes, actual 2 bytes (first difference)"
        );
    }

    #[test]
    fn api_errors_and_bad_answers_are_errors() {
        let outcome = from_answer(
            &session(),
            502,
            br#"{"error":"service not listening on 127.0.0.1:8080"}"#,
            1.0,
            &settings(),
        );
        assert_eq!(outcome.verdict, Verdict::Error);
        assert_eq!(outcome.http_status, Some(502));
        assert_eq!(
            outcome.reason,
            "inbound server answered 502: service not listening on 127.0.0.1:8080"
        );
        let outcome = from_answer(&session(), 500, b"oops\n", 1.0, &settings());
        assert_eq!(
            outcome.reason,
            "inbound server answered 500: oops\\n  (5 B)"
        );
        let outcome = from_answer(&session(), 200, b"{}", 1.0, &settings());
        assert!(
            outcome.reason.contains("invalid ReplayResult"),
            "{}",
            outcome.reason
        );
        let mut other = result("x");
        other.id = "other".into();
        let body = serde_json::to_vec(&other).unwrap();
        let outcome = from_answer(&session(), 200, &body, 1.0, &settings());
        assert!(
            outcome.reason.contains("for session \"other\""),
            "{}",
            outcome.reason
        );
    }
}
