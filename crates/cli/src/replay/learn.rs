//! `koala replay --learn-noise FILE`: what differs between two replays of
//! the same session against the same service is noise (Diffy's idea).
//! Every session is replayed twice, the second run starting in a later
//! wall-clock second (so values of one-second resolution differ too); the
//! rules hiding each difference are written to FILE for review and reuse
//! with `--noise`, and the second run's verdicts are given with them.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::load;
use super::noise::{self, Rule};
use super::outcome;
use super::progress::Term;
use super::runner::{self, Plan, Replayed};
use super::service::Service;

/// Runs the plan twice and writes the rules learned to `path`. Returns the
/// second run, judged with the plan's rules and the learned ones.
pub fn run(
    plan: &mut Plan,
    term: &Term,
    mut service: Option<&mut Service>,
    path: &Path,
) -> Result<Replayed, String> {
    plan.settings.keep_results = true;
    let first = runner::replay_all(plan, term, service.as_deref_mut());
    if first.stopped.is_some() {
        return Ok(first);
    }
    wait_for_next_second();
    let mut second = runner::replay_all(plan, term, service);
    let mut learned: Vec<String> = Vec::new();
    for (index, item) in plan.loaded.items.iter().enumerate() {
        let results = (
            first.outcomes[index]
                .as_ref()
                .and_then(|o| o.result.as_ref()),
            second.outcomes[index]
                .as_ref()
                .and_then(|o| o.result.as_ref()),
        );
        let (Some(one), Some(two)) = results else {
            continue;
        };
        let Ok(session) = plan
            .loaded
            .read_line(item)
            .map_err(|e| e.to_string())
            .and_then(|line| load::parse_line(&line))
        else {
            continue;
        };
        for rule in noise::learn(
            session.inbound.request.as_bytes(),
            one.response.as_bytes(),
            two.response.as_bytes(),
        ) {
            if !learned.contains(&rule) {
                learned.push(rule);
            }
        }
    }
    let mut text = String::from(
        "# Noise rules learned by koala replay --learn-noise: what differed between two\n\
         # replays of the same sessions. Review them, then pass this file with --noise.\n",
    );
    for rule in &learned {
        text.push_str(rule);
        text.push('\n');
    }
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    term.message(&format!(
        "koala: learned {} noise rule(s) from two runs into {}",
        learned.len(),
        path.display()
    ));
    let rules: Vec<Rule> = learned
        .iter()
        .filter_map(|text| Rule::parse(text).ok())
        .collect();
    plan.settings.noise.extend(rules);
    // The second run again, judged with the learned rules as well.
    for (index, item) in plan.loaded.items.iter().enumerate() {
        let Some(previous) = second.outcomes[index].take() else {
            continue;
        };
        let session = plan
            .loaded
            .read_line(item)
            .map_err(|e| e.to_string())
            .and_then(|line| load::parse_line(&line));
        second.outcomes[index] = Some(match (previous.result, session) {
            (Some(result), Ok(session)) => outcome::evaluate(
                &session,
                result,
                previous.latency_ms.unwrap_or(0.0),
                &plan.settings,
            ),
            (result, _) => outcome::Outcome { result, ..previous },
        });
    }
    Ok(second)
}

/// Waits until the wall clock shows a later second than now.
fn wait_for_next_second() {
    let second = |time: SystemTime| time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let now = second(SystemTime::now());
    while second(SystemTime::now()) == now {
        std::thread::sleep(Duration::from_millis(10));
    }
}
