//! Posting the sessions: N workers, each with its own keep-alive
//! connection, taking the next session as soon as they are done with one.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use super::client::{Client, Connections};
use super::load::{self, Item, ItemKind, Loaded};
use super::outcome::{self, Outcome, Settings, Verdict};
use super::progress::{Term, bar_text};
use super::service::{self, Service};

/// How often the main thread looks at Ctrl-C and the service while waiting
/// for results (results themselves are taken as they arrive).
const WATCH: Duration = Duration::from_millis(100);

pub struct Plan<'a> {
    pub loaded: &'a Loaded,
    pub inbound: SocketAddr,
    /// The replay API's token, sent with every request.
    pub token: Option<String>,
    /// `--secret`: header values given back to redacted inbound requests.
    pub secrets: Vec<super::secrets::SecretArg>,
    pub concurrency: usize,
    pub timeout: Duration,
    pub settings: Settings,
    /// Where the sessions to replay come from when not all of `loaded`:
    /// a queue shared with other koala processes (`--consumer`).
    pub work: Option<&'a dyn WorkQueue>,
}

/// Sessions handed out one at a time by something outside (a durable
/// consumer shared by several `koala replay` processes), told when each
/// one's verdict is known.
pub trait WorkQueue: Sync {
    /// The index (into the plan's `loaded.items`) of the next session to
    /// replay; `None` when there is no more.
    fn next(&self) -> Option<usize>;
    /// The session's verdict is known (`interrupted`: koala is stopping).
    fn done(&self, index: usize, outcome: &Outcome, interrupted: bool);
}

/// Why a run stopped before every session was replayed.
#[derive(Debug, PartialEq)]
pub enum Stopped {
    Interrupted,
    /// The service exited; how, with the tail of its output.
    ServiceExited(String),
}

pub struct Replayed {
    /// One per item of the plan's `loaded`: `None` for background lines (and
    /// sessions not replayed because of an interrupt).
    pub outcomes: Vec<Option<Outcome>>,
    pub elapsed: Duration,
    pub stopped: Option<Stopped>,
}

/// Replays every session of the plan. `service` (when koala started it) is
/// watched: if it exits, the run stops.
pub fn replay_all(plan: &Plan, term: &Term, mut service: Option<&mut Service>) -> Replayed {
    let loaded = plan.loaded;
    let mut outcomes: Vec<Option<Outcome>> = loaded
        .items
        .iter()
        .map(|item| match &item.kind {
            // With a shared queue, a bad line is reported by the process
            // it is handed to.
            ItemKind::Bad(message) if plan.work.is_none() => Some(Outcome::error(
                format!("bad session line: {message}"),
                None,
                None,
            )),
            _ => None,
        })
        .collect();
    let order: Vec<usize> = loaded.sessions().map(|(index, _)| index).collect();
    let total = order.len();
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let connections = Arc::new(Connections::default());
    let (sender, results) = mpsc::channel::<(usize, Outcome)>();
    let started = Instant::now();
    let mut stopped = None;
    let (mut done, mut failed, mut errors) = (0, 0, 0);
    thread::scope(|scope| {
        for slot in 0..plan.concurrency.min(total).max(1) {
            let sender = sender.clone();
            let (order, next, stop) = (&order, &next, &stop);
            let connections = connections.clone();
            scope.spawn(move || {
                let mut client = Client::new(plan.inbound, plan.timeout, plan.token.as_deref())
                    .registered(connections, slot);
                while !stop.load(Ordering::SeqCst) {
                    let index = match plan.work {
                        Some(work) => work.next(),
                        None => order.get(next.fetch_add(1, Ordering::SeqCst)).copied(),
                    };
                    let Some(index) = index else {
                        break;
                    };
                    let outcome = replay_one(&mut client, plan, &loaded.items[index]);
                    if let Some(work) = plan.work {
                        work.done(index, &outcome, stop.load(Ordering::SeqCst));
                    }
                    if sender.send((index, outcome)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(sender);
        loop {
            match results.recv_timeout(WATCH) {
                Ok((index, outcome)) => {
                    if stopped == Some(Stopped::Interrupted) && outcome.verdict == Verdict::Error {
                        // Cut short by koala itself: not a result.
                        continue;
                    }
                    done += 1;
                    match outcome.verdict {
                        Verdict::Pass => {}
                        Verdict::Fail => failed += 1,
                        Verdict::Error => errors += 1,
                    }
                    outcomes[index] = Some(outcome);
                    term.progress(
                        bar_text(done, total, failed, errors, started.elapsed()),
                        done == total,
                    );
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    term.progress(
                        bar_text(done, total, failed, errors, started.elapsed()),
                        false,
                    );
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            if stopped.is_none() {
                if service::interrupted() {
                    stopped = Some(Stopped::Interrupted);
                } else if let Some(service) = service.as_deref_mut()
                    && let Some(status) = service.exited()
                {
                    stopped = Some(Stopped::ServiceExited(service.describe_exit(status)));
                }
                if stopped.is_some() {
                    stop.store(true, Ordering::SeqCst);
                    // Wake workers blocked on an answer that will not come.
                    connections.shutdown_all();
                }
            }
        }
    });
    let elapsed = started.elapsed();
    term.finish();
    // (With a shared queue, the others replay what this one did not.)
    if let Some(Stopped::ServiceExited(_)) = &stopped
        && plan.work.is_none()
    {
        for &index in &order {
            outcomes[index].get_or_insert_with(|| {
                Outcome::error("not replayed: the service exited".into(), None, None)
            });
        }
    }
    Replayed {
        outcomes,
        elapsed,
        stopped,
    }
}

fn replay_one(client: &mut Client, plan: &Plan, item: &Item) -> Outcome {
    let line = match plan.loaded.read_line(item) {
        Ok(line) => line,
        Err(e) => {
            return Outcome::error(
                format!("cannot read {}: {e}", plan.loaded.location(item)),
                None,
                None,
            );
        }
    };
    // The line was checked when loaded; it is parsed again here to keep
    // only one session's payloads in memory per worker.
    let session = match load::parse_line(&line) {
        Ok(session) => session,
        Err(message) => return Outcome::error(format!("bad session line: {message}"), None, None),
    };
    // A redacted inbound request gets its secrets back, or is not sent.
    let line = match super::secrets::restore(session.inbound.request.as_bytes(), &plan.secrets) {
        Ok(None) => line,
        Ok(Some(request)) => {
            let mut restored = session.clone();
            restored.inbound.request = koala_session::Payload::new(request);
            restored.to_json_line().into_bytes()
        }
        Err(reason) => return Outcome::error(reason, None, None),
    };
    let started = Instant::now();
    match client.post("/v1/replay", &line) {
        Ok(response) => {
            let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
            outcome::from_answer(
                &session,
                response.status,
                &response.body,
                latency_ms,
                &plan.settings,
            )
        }
        Err(message) => Outcome::error(message, None, None),
    }
}
