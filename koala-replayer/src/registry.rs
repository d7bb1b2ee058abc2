//! The replays in flight, the background and set-up pools, and how a
//! request the service sent to a dependency finds its answer.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use koala_config::OnMiss;
use koala_protocols::{Completeness, Protocol};
use koala_session::replay::{MissingCall, ReplayedCall};
use koala_session::{Exchange, Payload, Session};

use crate::attribution::TENTATIVE;
use crate::matching::{MatchConfig, MatchOutcome, SessionMatcher};
use crate::units::{self, Unit};

/// One session being replayed.
pub struct Replay {
    pub id: u64,
    pub session: Session,
    /// The session's calls as the outbound server answers them.
    units: Vec<Unit>,
    /// Matches requests to `units`.
    matcher: Mutex<SessionMatcher>,
    calls: Mutex<Vec<ReplayedCall>>,
    pub started: Instant,
}

/// A request the service sent on a redirected connection.
#[derive(Clone, Copy)]
pub struct Request<'a> {
    /// The replay the sender works for (0: unknown; may be [`TENTATIVE`]).
    pub replay_id: u64,
    pub bytes: &'a [u8],
    /// The address the service meant to reach.
    pub destination: Option<&'a str>,
    /// The outbound server's connection number.
    pub conn: u64,
    /// What the connection speaks, when recognised.
    pub protocol: Option<&'static dyn Protocol>,
    /// When its first byte arrived.
    pub arrived: Instant,
}

/// What the outbound server sends back for a request.
#[derive(Debug, Default)]
pub struct Answer {
    /// The bytes to send back; `None`: send nothing.
    pub response: Option<Vec<u8>>,
    /// Close the connection after sending them (the dependency did, or
    /// the miss policy says so).
    pub close: bool,
    /// The request came with no known replay and was answered from the
    /// background pool (or from nothing).
    pub background: bool,
}

#[derive(Default)]
pub struct Counters {
    pub sessions_replayed: AtomicU64,
    pub calls_matched: AtomicU64,
    pub calls_unmatched: AtomicU64,
    pub background_calls_served: AtomicU64,
    pub background_records: AtomicU64,
    /// Set-up requests answered from another session's or a background
    /// record's connection set-up, or built from them.
    pub setup_calls_served: AtomicU64,
    /// Requests made while replays are in flight and answered from a call
    /// recorded unattributed: of a replay whose session did not record
    /// them (its report flags the call), or that no replay recorded.
    pub unattributed_calls_served: AtomicU64,
}

/// Recorded units answering requests outside any replay (background
/// records: start-up traffic), or set-up requests of any replay (the
/// set-up units of every session and background record loaded). Identical
/// requests may be served any number of times (a service restarts, a pool
/// reconnects).
struct Pool {
    units: Vec<Unit>,
    matcher: SessionMatcher,
}

impl Pool {
    fn new(config: &MatchConfig) -> Self {
        Pool {
            units: Vec::new(),
            matcher: SessionMatcher::new(&[], config.clone()),
        }
    }

    fn extend(&mut self, units: impl IntoIterator<Item = Unit>, config: &MatchConfig) {
        self.units.extend(units);
        let exchanges: Vec<Exchange> = self.units.iter().map(|u| u.exchange.clone()).collect();
        let mut config = config.clone();
        config.allow_reuse = true;
        self.matcher = SessionMatcher::new(&exchanges, config);
    }
}

pub struct Registry {
    active: Mutex<HashMap<u64, Arc<Replay>>>,
    /// Outbound connections whose set-up is over: a request on them that
    /// looks like set-up (`SELECT 2`, `SET ...` in the middle of a session)
    /// is the session's own business, answered from its recording only.
    set_up: Mutex<HashSet<u64>>,
    background: Mutex<Pool>,
    setup: Mutex<Pool>,
    /// The background records' calls flagged `unattributed` (a thread
    /// serving no session sent them while several sessions waited): they
    /// answer a matching request of any replay.
    unattributed: Mutex<Pool>,
    next_id: AtomicU64,
    match_config: MatchConfig,
    on_miss: OnMiss,
    /// The recording's redaction: each request is redacted as the recorder
    /// redacted the calls before it is matched, so a call recorded with a
    /// token matches the request carrying the real secret.
    redactor: Option<koala_redact::Redactor>,
    pub counters: Counters,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The servers' own threads never panic while holding these locks
    // (matching is panic-free); a poisoned lock still holds valid data.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Unmatched requests logged in full before logging thins out.
const MISSES_LOGGED_IN_FULL: u64 = 20;
/// Past that, one miss in this many is logged.
const MISS_LOG_EVERY: u64 = 100;
static MISSES: AtomicU64 = AtomicU64::new(0);

/// Up to 120 bytes of `bytes`, printable.
fn excerpt(bytes: &[u8]) -> String {
    let cut = &bytes[..bytes.len().min(120)];
    let mut text = cut.escape_ascii().to_string();
    if cut.len() < bytes.len() {
        text.push('…');
    }
    text
}

impl Registry {
    pub fn new(match_config: MatchConfig, on_miss: OnMiss) -> Self {
        Registry {
            active: Mutex::new(HashMap::new()),
            set_up: Mutex::new(HashSet::new()),
            background: Mutex::new(Pool::new(&match_config)),
            setup: Mutex::new(Pool::new(&match_config)),
            unattributed: Mutex::new(Pool::new(&match_config)),
            next_id: AtomicU64::new(1),
            match_config,
            on_miss,
            redactor: None,
            counters: Counters::default(),
        }
    }

    /// Replaces the redaction of requests (`None`: none).
    pub fn with_redactor(mut self, redactor: Option<koala_redact::Redactor>) -> Self {
        self.redactor = redactor;
        self
    }

    /// Registers a session about to be replayed.
    pub fn begin(&self, session: Session) -> Arc<Replay> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        // Its threads see the session's recorded clock and random bytes.
        crate::determinism::begin(
            id,
            session.inbound.request_ns,
            session.random.as_bytes().to_vec(),
        );
        let units = units::expand(&session.calls);
        let exchanges: Vec<Exchange> = units.iter().map(|u| u.exchange.clone()).collect();
        let replay = Arc::new(Replay {
            id,
            matcher: Mutex::new(SessionMatcher::new(&exchanges, self.match_config.clone())),
            units,
            session,
            calls: Mutex::new(Vec::new()),
            started: Instant::now(),
        });
        lock(&self.active).insert(id, replay.clone());
        replay
    }

    /// The replay is over: requests still tagged with it get background answers.
    pub fn end(&self, replay: &Replay) {
        crate::determinism::end(replay.id);
        lock(&self.active).remove(&replay.id);
        self.counters
            .sessions_replayed
            .fetch_add(1, Ordering::Relaxed);
    }

    pub fn in_flight(&self) -> usize {
        lock(&self.active).len()
    }

    /// Loads records: every call of a background record answers requests
    /// outside any replay; the connection set-up of every record, background
    /// or session, answers set-up requests of any replay. Returns how many
    /// background records were loaded.
    pub fn add_background(&self, records: &[Session]) -> usize {
        let mut background = Vec::new();
        let mut setup = Vec::new();
        let mut unattributed = Vec::new();
        let mut loaded = 0;
        for record in records {
            let units = units::expand(&record.calls);
            setup.extend(units.iter().filter(|u| u.setup).cloned());
            unattributed.extend(
                units
                    .iter()
                    .filter(|u| record.calls.get(u.call).is_some_and(|c| c.unattributed))
                    .cloned(),
            );
            if record.is_background() {
                background.extend(units);
                loaded += 1;
            }
        }
        lock(&self.background).extend(background, &self.match_config);
        lock(&self.setup).extend(setup, &self.match_config);
        lock(&self.unattributed).extend(unattributed, &self.match_config);
        self.counters
            .background_records
            .fetch_add(loaded as u64, Ordering::Relaxed);
        loaded
    }

    fn replay(&self, id: u64) -> Option<Arc<Replay>> {
        lock(&self.active).get(&id).cloned()
    }

    /// Whether `bytes` start with a complete recorded request, for framing
    /// protocols koala does not parse ([`koala_protocols::recorded_prefix`]):
    /// the replay's own recorded requests (all replays' and the background
    /// records' when the replay is unknown or a guess), and every recorded
    /// set-up. Compared in place, nothing copied.
    pub fn recorded_prefix(&self, replay_id: u64, bytes: &[u8]) -> Completeness {
        let certain = self
            .replay(replay_id)
            .filter(|_| replay_id & TENTATIVE == 0);
        let known = certain.is_some();
        let replays: Vec<Arc<Replay>> = match certain {
            Some(replay) => vec![replay],
            None => lock(&self.active).values().cloned().collect(),
        };
        let setup = lock(&self.setup);
        let background = (!known).then(|| lock(&self.background));
        let pools =
            std::iter::once(&setup.units).chain(background.as_ref().map(|pool| &pool.units));
        let recorded: Vec<&[u8]> = pools
            .flat_map(|units| units.iter())
            .chain(replays.iter().flat_map(|replay| replay.units.iter()))
            .map(|unit| unit.exchange.request.as_bytes())
            .collect();
        koala_protocols::recorded_prefix(bytes, &recorded)
    }

    /// The protocol recorded for connections to `destination`, for a
    /// connection whose first bytes do not tell.
    pub fn recorded_protocol(&self, destination: &str) -> Option<&'static dyn Protocol> {
        let find = |units: &[Unit]| {
            units
                .iter()
                .filter(|u| u.exchange.peer == destination)
                .find_map(|u| u.protocol)
        };
        if let Some(protocol) = find(&lock(&self.setup).units) {
            return Some(protocol);
        }
        if let Some(protocol) = find(&lock(&self.background).units) {
            return Some(protocol);
        }
        let active: Vec<Arc<Replay>> = lock(&self.active).values().cloned().collect();
        active.iter().find_map(|replay| find(&replay.units))
    }

    /// A connection to `destination` was accepted for replay `replay_id`:
    /// the recorded greeting, if that dependency spoke first — the
    /// session's own, else any recorded for that destination.
    pub fn greeting(
        &self,
        replay_id: u64,
        destination: Option<&str>,
        conn: u64,
    ) -> Option<Vec<u8>> {
        let replay = self.replay(replay_id & !TENTATIVE);
        if let Some(replay) = &replay
            && let Some(index) = lock(&replay.matcher).take_greeting(destination, conn)
        {
            let unit = &replay.units[index];
            let greeting = unit.exchange.response.as_bytes().to_vec();
            replay.log_greeting(destination, Some(unit.call), unit.protocol, &greeting);
            self.counters.calls_matched.fetch_add(1, Ordering::Relaxed);
            return Some(greeting);
        }
        // A connection opened outside the replay's recording (a pool
        // connecting at start-up, or for another session): a greeting
        // recorded for the same destination.
        let destination = destination?;
        let (greeting, protocol) = [&self.setup, &self.background].iter().find_map(|pool| {
            lock(pool)
                .units
                .iter()
                .find(|u| u.exchange.is_greeting() && u.exchange.peer == destination)
                .map(|u| (u.exchange.response.as_bytes().to_vec(), u.protocol))
        })?;
        let counter = match &replay {
            Some(replay) => {
                replay.log_greeting(Some(destination), None, protocol, &greeting);
                &self.counters.setup_calls_served
            }
            None => &self.counters.background_calls_served,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        Some(greeting)
    }

    /// Answers a request the service sent on a redirected connection.
    ///
    /// A request of a known replay is matched against that session only (of
    /// an ended one, against the background records). An untagged one, or one whose replay is only a guess ([`TENTATIVE`]), is
    /// matched against the replay in flight when there is one, the
    /// best-matching one when there are several (ties go to the guess), and
    /// the background pool otherwise. A set-up request (handshake,
    /// authentication, session settings) the session did not record itself
    /// is answered from the recorded set-up of any session to the same
    /// dependency.
    pub fn answer(&self, request: Request<'_>) -> Answer {
        // Secrets are matched as recorded: as tokens.
        let redacted = self.redactor.as_ref().and_then(|r| r.redact(request.bytes));
        let request = match &redacted {
            Some(bytes) => Request { bytes, ..request },
            None => request,
        };
        // A guessed replay (a virtual thread's claim) competes with the
        // other replays in flight: the session matching best answers.
        // A request of a replay that has ended (a call the service makes
        // after its answer: a COM_QUIT, a cleanup) is no other session's:
        // it gets background answers.
        let replay_id = request.replay_id;
        let replay = if replay_id != 0 && replay_id & TENTATIVE == 0 {
            self.replay(replay_id)
        } else {
            let guess = (replay_id & TENTATIVE != 0).then_some(replay_id & !TENTATIVE);
            self.best_in_flight(request.bytes, request.destination, request.conn, guess)
        };
        let setup = request.protocol.is_some_and(|p| p.is_setup(request.bytes))
            && !lock(&self.set_up).contains(&request.conn);
        if !setup {
            lock(&self.set_up).insert(request.conn);
        }
        if setup && let Some(answer) = self.answer_setup(replay.as_deref(), &request) {
            return answer;
        }
        let Some(replay) = replay else {
            // Replays in flight, none of which recorded it: a thread serving
            // no session (a selector thread) sends what it sent when
            // recorded. Which session it works for cannot be told.
            if self.in_flight() > 0
                && let Some(answer) = self.answer_unattributed(None, &request)
            {
                return answer;
            }
            return self.answer_from_background(&request);
        };
        let outcome =
            lock(&replay.matcher).match_request(request.bytes, request.destination, request.conn);
        if let Some(index) = outcome.matched {
            return self.served(&replay, &request, &outcome, index);
        }
        if let Some(answer) = self.answer_unattributed(Some(&replay), &request) {
            return answer;
        }
        if says_goodbye(&request) {
            // COM_QUIT, Terminate, `quit`: nothing to send, nothing the
            // service waits for, and no answer to miss.
            return Answer::default();
        }
        self.counters
            .calls_unmatched
            .fetch_add(1, Ordering::Relaxed);
        let (answer, action) =
            self.miss(&request, &outcome, &replay.units, Some(&replay.session.id));
        replay.log(replay.call_log(
            &request,
            &outcome,
            false,
            Some(action),
            answer.response.as_deref().unwrap_or_default(),
        ));
        answer
    }

    /// A set-up request: built by the protocol from recorded set-ups (for
    /// authentication, whose recorded replies cannot verify again), else
    /// the session's own recorded set-up, else any session's. `None`:
    /// nothing recorded answers it (the caller reports the miss).
    fn answer_setup(&self, replay: Option<&Replay>, request: &Request<'_>) -> Option<Answer> {
        let protocol = request.protocol?;
        let built = {
            let pool = lock(&self.setup);
            let own = replay.map(|r| r.units.as_slice()).unwrap_or_default();
            let recorded = setup_exchanges(own.iter().chain(&pool.units), protocol, request);
            protocol.answer_setup(request.bytes, &recorded)
        };
        let (response, close, outcome) = match built {
            Some(response) => (response, false, None),
            None => {
                if let Some(replay) = replay {
                    let outcome = lock(&replay.matcher).match_request(
                        request.bytes,
                        request.destination,
                        request.conn,
                    );
                    if let Some(index) = outcome.matched {
                        return Some(self.served(replay, request, &outcome, index));
                    }
                }
                // Nothing is consumed: every new connection may need the
                // same set-up, near-misses (a pid in CLIENT SETNAME) included.
                let pool = lock(&self.setup);
                let outcome =
                    pool.matcher
                        .trial_match(request.bytes, request.destination, request.conn);
                let unit = &pool.units[outcome.matched?];
                let response = unit.exchange.response.as_bytes().to_vec();
                (response, unit.closes, Some(outcome))
            }
        };
        // Outside any replay it is start-up traffic like the rest.
        let counter = match replay {
            Some(_) => &self.counters.setup_calls_served,
            None => &self.counters.background_calls_served,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if let Some(replay) = replay {
            let outcome = outcome.unwrap_or(MatchOutcome {
                matched: None,
                score: 1.0,
                closest: None,
                reused: false,
                forced: false,
            });
            let mut log = replay.call_log(request, &outcome, true, None, &response);
            // Indexes of the set-up pool are not the session's calls.
            log.matched = None;
            log.closest = None;
            replay.log(log);
        }
        Some(Answer {
            response: Some(response),
            close,
            background: replay.is_none(),
        })
    }

    /// A request the replay's session did not record (or, `replay` being
    /// `None`, that no replay in flight recorded): a call recorded
    /// unattributed (in a background record, sent by a thread serving no
    /// session) answers it when one matches — it is not consumed, whichever
    /// session makes the request — and the replay's report says so
    /// (`unattributed: true`). Counted either way. `None`: none matches.
    fn answer_unattributed(
        &self,
        replay: Option<&Replay>,
        request: &Request<'_>,
    ) -> Option<Answer> {
        let (response, close, outcome) = {
            let pool = lock(&self.unattributed);
            if pool.units.is_empty() {
                return None;
            }
            let outcome =
                pool.matcher
                    .trial_match(request.bytes, request.destination, request.conn);
            let unit = &pool.units[outcome.matched?];
            let response = unit.exchange.response.as_bytes().to_vec();
            (response, unit.closes, outcome)
        };
        self.counters
            .unattributed_calls_served
            .fetch_add(1, Ordering::Relaxed);
        if let Some(replay) = replay {
            let mut log = replay.call_log(request, &outcome, false, None, &response);
            // Indexes of the pool are not the session's calls.
            log.matched = None;
            log.closest = None;
            log.unattributed = true;
            replay.log(log);
        }
        Some(Answer {
            response: Some(response),
            close,
            background: false,
        })
    }

    /// The session's own recorded unit `index` answers `request`.
    fn served(
        &self,
        replay: &Replay,
        request: &Request<'_>,
        outcome: &MatchOutcome,
        index: usize,
    ) -> Answer {
        self.counters.calls_matched.fetch_add(1, Ordering::Relaxed);
        let unit = &replay.units[index];
        let response = unit.exchange.response.as_bytes().to_vec();
        replay.log(replay.call_log(request, outcome, unit.setup, None, &response));
        Answer {
            response: Some(response),
            close: unit.closes,
            background: false,
        }
    }

    /// No recorded call matches `request`: say so in the log, and answer as
    /// KOALA_REPLAY_ON_MISS says. Returns the answer and what was done:
    /// `closest`, `error`, `close`, or `none` (a message that gets no reply).
    fn miss(
        &self,
        request: &Request<'_>,
        outcome: &MatchOutcome,
        units: &[Unit],
        session: Option<&str>,
    ) -> (Answer, &'static str) {
        let closest = outcome
            .closest
            .and_then(|(index, score)| Some((units.get(index)?, score)));
        let misses = MISSES.fetch_add(1, Ordering::Relaxed);
        if misses < MISSES_LOGGED_IN_FULL || misses.is_multiple_of(MISS_LOG_EVERY) {
            tracing::warn!(
                session = session.unwrap_or("(none: outside any replay)"),
                destination = request.destination.unwrap_or("?"),
                request = %excerpt(request.bytes),
                closest = %closest.map_or("none".to_string(), |(unit, score)| format!(
                    "call {} (score {score:.3}): {}",
                    unit.call,
                    excerpt(unit.exchange.request.as_bytes())
                )),
                on_miss = self.on_miss.as_str(),
                unmatched_so_far = misses + 1,
                "replay: no recorded call matches this request"
            );
        }
        let protocol = request
            .protocol
            .or_else(|| koala_protocols::detect_request(request.bytes));
        if !protocol.is_none_or(|p| p.expects_response(request.bytes)) {
            // Sent and forgotten (memcached `noreply`, COM_STMT_CLOSE): the
            // miss is reported, there is nothing to answer.
            let answer = Answer {
                background: session.is_none(),
                ..Answer::default()
            };
            return (answer, "none");
        }
        let error = || {
            protocol?.error_reply(
                request.bytes,
                "koala replay: no recorded call matches this request",
            )
        };
        let (response, action) = match (self.on_miss, closest) {
            (OnMiss::Closest, Some((unit, _))) => {
                (Some(unit.exchange.response.as_bytes().to_vec()), "closest")
            }
            (OnMiss::Closest | OnMiss::Error, _) => match error() {
                Some(reply) => (Some(reply), "error"),
                None => (None, "close"),
            },
            (OnMiss::Close, _) => (None, "close"),
        };
        let close = match &response {
            Some(response) => protocol.is_some_and(|p| p.closes_after(request.bytes, response)),
            None => true,
        };
        let answer = Answer {
            close,
            response,
            background: session.is_none(),
        };
        (answer, action)
    }

    /// Among the replays in flight, the one whose session matches the
    /// request best (trial matches: nothing is consumed); on a tie, the
    /// `guess` (a virtual thread's claim).
    fn best_in_flight(
        &self,
        request: &[u8],
        destination: Option<&str>,
        conn: u64,
        guess: Option<u64>,
    ) -> Option<Arc<Replay>> {
        let active: Vec<Arc<Replay>> = lock(&self.active).values().cloned().collect();
        if active.len() <= 1 {
            return active.into_iter().next();
        }
        let mut best: Option<(f64, bool, Arc<Replay>)> = None;
        for replay in active {
            let trial = lock(&replay.matcher).trial_match(request, destination, conn);
            if trial.matched.is_none() {
                continue;
            }
            let guessed = guess == Some(replay.id);
            let better = best.as_ref().is_none_or(|(score, best_guessed, _)| {
                trial.score > *score || (trial.score == *score && guessed && !best_guessed)
            });
            if better {
                best = Some((trial.score, guessed, replay));
            }
        }
        best.map(|(_, _, replay)| replay)
    }

    fn answer_from_background(&self, request: &Request<'_>) -> Answer {
        let mut pool = lock(&self.background);
        let outcome = pool
            .matcher
            .match_request(request.bytes, request.destination, request.conn);
        if let Some(index) = outcome.matched {
            let unit = &pool.units[index];
            let answer = Answer {
                response: Some(unit.exchange.response.as_bytes().to_vec()),
                close: unit.closes,
                background: true,
            };
            drop(pool);
            self.counters
                .background_calls_served
                .fetch_add(1, Ordering::Relaxed);
            return answer;
        }
        if says_goodbye(request) {
            return Answer::default();
        }
        self.counters
            .calls_unmatched
            .fetch_add(1, Ordering::Relaxed);
        // Only the closest unit is needed for the log and a `closest` answer.
        let closest: Vec<Unit> = outcome
            .closest
            .and_then(|(index, _)| pool.units.get(index).cloned())
            .into_iter()
            .collect();
        drop(pool);
        let outcome = MatchOutcome {
            closest: outcome.closest.map(|(_, score)| (0, score)),
            ..outcome
        };
        self.miss(request, &outcome, &closest, None).0
    }

    pub fn connection_closed(&self, replay_id: u64, conn: u64) {
        lock(&self.set_up).remove(&conn);
        if let Some(replay) = self.replay(replay_id & !TENTATIVE) {
            lock(&replay.matcher).connection_closed(conn);
        }
    }
}

/// A message that ends the conversation and gets no reply (COM_QUIT,
/// PostgreSQL's Terminate, memcached's `quit`): unrecorded, it is no miss.
fn says_goodbye(request: &Request<'_>) -> bool {
    request.protocol.is_some_and(|protocol| {
        !protocol.expects_response(request.bytes) && protocol.closes_after(request.bytes, b"")
    })
}

/// The recorded set-up exchanges answering `request`'s kind: those to the
/// same destination, else those of the same protocol.
fn setup_exchanges<'a>(
    units: impl Iterator<Item = &'a Unit> + Clone,
    protocol: &dyn Protocol,
    request: &Request<'_>,
) -> Vec<koala_protocols::Exchange<'a>> {
    let of_protocol =
        |unit: &&Unit| unit.setup && unit.protocol.is_some_and(|p| p.name() == protocol.name());
    let exchange = |unit: &'a Unit| koala_protocols::Exchange {
        request: unit.exchange.request.as_bytes(),
        response: unit.exchange.response.as_bytes(),
    };
    let same_peer: Vec<_> = units
        .clone()
        .filter(of_protocol)
        .filter(|u| Some(u.exchange.peer.as_str()) == request.destination)
        .map(exchange)
        .collect();
    if !same_peer.is_empty() {
        return same_peer;
    }
    units.filter(of_protocol).map(exchange).collect()
}

impl Replay {
    fn log(&self, call: ReplayedCall) {
        lock(&self.calls).push(call);
    }

    fn elapsed_ms(&self) -> f64 {
        self.started.elapsed().as_secs_f64() * 1000.0
    }

    /// A greeting served on connect: the session's own recorded call
    /// `call`, or (`None`) another recording's.
    fn log_greeting(
        &self,
        destination: Option<&str>,
        call: Option<usize>,
        protocol: Option<&'static dyn Protocol>,
        greeting: &[u8],
    ) {
        self.log(ReplayedCall {
            peer: destination.unwrap_or_default().to_string(),
            matched: call,
            score: 1.0,
            closest: call,
            greeting: true,
            setup: true,
            protocol: protocol.map(|p| p.name().to_string()),
            served: Payload::from(greeting),
            at_ms: self.elapsed_ms(),
            ..ReplayedCall::default()
        });
    }

    /// How a request was answered, for the report.
    fn call_log(
        &self,
        request: &Request<'_>,
        outcome: &MatchOutcome,
        setup: bool,
        on_miss: Option<&str>,
        served: &[u8],
    ) -> ReplayedCall {
        let call_of = |index: usize| self.units.get(index).map(|u| u.call);
        ReplayedCall {
            peer: request.destination.unwrap_or_default().to_string(),
            request: Payload::from(request.bytes),
            matched: outcome.matched.and_then(call_of),
            score: outcome.score,
            closest: outcome.closest.and_then(|(index, _)| call_of(index)),
            reused: outcome.reused,
            greeting: false,
            setup,
            unattributed: false,
            protocol: request.protocol.map(|p| p.name().to_string()),
            on_miss: on_miss.map(str::to_string),
            served: Payload::from(served),
            at_ms: self.elapsed_ms(),
            wait_ms: request.arrived.elapsed().as_secs_f64() * 1000.0,
        }
    }

    /// The calls made so far, and the indexes of the unmatched ones.
    pub fn calls(&self) -> (Vec<ReplayedCall>, Vec<usize>) {
        let calls = lock(&self.calls).clone();
        let unmatched = calls
            .iter()
            .enumerate()
            .filter(|(_, call)| call.matched.is_none() && !call.setup && !call.unattributed)
            .map(|(index, _)| index)
            .collect();
        (calls, unmatched)
    }

    /// Recorded calls the service did not make. A call's set-up is not
    /// missed: the connection it opened may have been opened by another
    /// session during the replay.
    pub fn missing(&self) -> Vec<MissingCall> {
        let mut missing: Vec<usize> = lock(&self.matcher)
            .unserved()
            .into_iter()
            .filter(|&index| !self.units[index].setup)
            .map(|index| self.units[index].call)
            .collect();
        missing.dedup();
        missing
            .into_iter()
            .map(|index| {
                let call = &self.session.calls[index];
                MissingCall {
                    index,
                    peer: call.peer.clone(),
                    request: call.request.clone(),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use koala_session::{FORMAT_VERSION, Kind};

    fn call(peer: &str, request: &str, response: &str) -> Exchange {
        Exchange {
            local: "127.0.0.1:40000".into(),
            peer: peer.into(),
            request: Payload::from(request),
            response: Payload::from(response),
            ..Exchange::default()
        }
    }

    fn session(kind: Kind, calls: Vec<Exchange>) -> Session {
        Session {
            koala: FORMAT_VERSION,
            kind,
            id: "1-1-1".into(),
            pid: 1,
            tid: 1,
            program: "svc".into(),
            end: None,
            inbound: Exchange::default(),
            calls,
            ..Default::default()
        }
    }

    const REDIS: &str = "127.0.0.1:6379";

    fn ask(
        registry: &Registry,
        replay_id: u64,
        bytes: &[u8],
        destination: Option<&str>,
        conn: u64,
    ) -> Answer {
        registry.answer(Request {
            replay_id,
            bytes,
            destination,
            conn,
            protocol: None,
            arrived: Instant::now(),
        })
    }

    #[test]
    fn requests_are_redacted_with_the_recordings_key_before_matching() {
        let redactor = koala_redact::Redactor::new(
            koala_redact::Rules::default(),
            koala_redact::Key { k0: 7, k1: 9 },
        );
        let auth = "*2\r\n$4\r\nAUTH\r\n$9\r\nsecret-pw\r\n";
        let recorded = redactor.redact(auth.as_bytes()).unwrap();
        let recorded = String::from_utf8(recorded).unwrap();
        let get = "*2\r\n$3\r\nGET\r\n$1\r\nk\r\n";
        let calls = vec![
            call(REDIS, &recorded, "+OK\r\n"),
            call(REDIS, get, "$1\r\nv\r\n"),
        ];
        let registry = Registry::new(MatchConfig::default(), OnMiss::Close)
            .with_redactor(Some(redactor.clone()));
        let replay = registry.begin(session(Kind::Session, calls.clone()));
        let answer = ask(&registry, replay.id, auth.as_bytes(), Some(REDIS), 1);
        assert_eq!(answer.response.as_deref(), Some(&b"+OK\r\n"[..]));
        let (served, unmatched) = replay.calls();
        assert_eq!(unmatched.len(), 0);
        assert_eq!((served[0].matched, served[0].score), (Some(0), 1.0));
        assert_eq!(
            served[0].request.as_bytes(),
            recorded.as_bytes(),
            "the report keeps the token"
        );
        // Another password is another token: not the recorded call.
        let other = "*2\r\n$4\r\nAUTH\r\n$9\r\nsecret-px\r\n";
        let replay = registry.begin(session(Kind::Session, calls));
        ask(&registry, replay.id, other.as_bytes(), Some(REDIS), 2);
        let (served, _) = replay.calls();
        assert!(served[0].score < 1.0, "{:?}", served[0]);
    }

    /// A call recorded unattributed (a hand-off thread's, in a background
    /// record) answers the matching request of whichever replay makes it:
    /// not unmatched, and flagged in the replay's report.
    #[test]
    fn an_unattributed_recorded_call_answers_any_replay() {
        const BACKEND: &str = "127.0.0.1:8080";
        let registry = Registry::new(MatchConfig::default(), OnMiss::Close);
        let mut unattributed = call(BACKEND, "GET /backend/b HTTP/1.1\r\n\r\n", "backend b");
        unattributed.unattributed = true;
        registry.add_background(&[session(
            Kind::Background,
            vec![call(REDIS, "PING", "+PONG"), unattributed],
        )]);
        let b = registry.begin(session(
            Kind::Session,
            vec![call(REDIS, "GET b", "$1\r\nb")],
        ));
        let answer = ask(
            &registry,
            b.id,
            b"GET /backend/b HTTP/1.1\r\n\r\n",
            Some(BACKEND),
            1,
        );
        assert_eq!(answer.response.as_deref(), Some(&b"backend b"[..]));
        let (calls, unmatched) = b.calls();
        assert!(unmatched.is_empty());
        assert!(
            calls[0].unattributed && calls[0].matched.is_none(),
            "{calls:?}"
        );
        // Nothing else of the background records answers a replay.
        let answer = ask(&registry, b.id, b"PING", Some(REDIS), 2);
        assert_eq!(answer.response, None);
        assert_eq!(b.calls().1.len(), 1, "PING is unmatched");
        // Not consumed: another session's replay making the same request
        // gets the same answer.
        let c = registry.begin(session(
            Kind::Session,
            vec![call(REDIS, "GET c", "$1\r\nc")],
        ));
        let answer = ask(
            &registry,
            c.id,
            b"GET /backend/b HTTP/1.1\r\n\r\n",
            Some(BACKEND),
            3,
        );
        assert_eq!(answer.response.as_deref(), Some(&b"backend b"[..]));
        assert!(c.calls().0[0].unattributed && c.calls().1.is_empty());
        // A thread serving no replay (two in flight, neither recorded it):
        // answered too, counted, in neither report.
        let answer = ask(
            &registry,
            0,
            b"GET /backend/b HTTP/1.1\r\n\r\n",
            Some(BACKEND),
            4,
        );
        assert_eq!(answer.response.as_deref(), Some(&b"backend b"[..]));
        assert!(!answer.background);
        assert_eq!((b.calls().0.len(), c.calls().0.len()), (2, 1));
        assert_eq!(
            registry
                .counters
                .unattributed_calls_served
                .load(Ordering::Relaxed),
            3
        );
        // A request nothing recorded stays a miss.
        let answer = ask(
            &registry,
            c.id,
            b"GET /backend/z HTTP/1.1\r\n\r\n",
            Some(BACKEND),
            5,
        );
        assert_eq!(answer.response, None);
        assert_eq!(c.calls().1.len(), 1, "unmatched");
    }

    #[test]
    fn a_tagged_request_is_answered_from_its_own_session() {
        let registry = Registry::new(MatchConfig::default(), OnMiss::Close);
        let a = registry.begin(session(
            Kind::Session,
            vec![call(REDIS, "GET k", "$1\r\na")],
        ));
        let b = registry.begin(session(
            Kind::Session,
            vec![call(REDIS, "GET k", "$1\r\nb")],
        ));
        let answer = ask(&registry, b.id, b"GET k", Some(REDIS), 1);
        assert_eq!(answer.response.as_deref(), Some(&b"$1\r\nb"[..]));
        let answer = ask(&registry, a.id, b"GET k", Some(REDIS), 2);
        assert_eq!(answer.response.as_deref(), Some(&b"$1\r\na"[..]));
        let (calls, unmatched) = a.calls();
        assert_eq!((calls.len(), unmatched.len()), (1, 0));
        assert!(a.missing().is_empty());
    }

    #[test]
    fn an_untagged_request_goes_to_the_session_it_matches_best() {
        let registry = Registry::new(MatchConfig::default(), OnMiss::Close);
        let a = registry.begin(session(
            Kind::Session,
            vec![call(REDIS, "GET item:17", "a")],
        ));
        let b = registry.begin(session(
            Kind::Session,
            vec![call(REDIS, "GET item:42", "b")],
        ));
        let answer = ask(&registry, 0, b"GET item:42", Some(REDIS), 1);
        assert_eq!(answer.response.as_deref(), Some(&b"b"[..]));
        assert_eq!(b.calls().0.len(), 1);
        assert!(
            a.calls().0.is_empty(),
            "the trial on a's session consumed nothing"
        );
        assert_eq!(a.missing().len(), 1);
    }

    #[test]
    fn start_up_traffic_is_answered_from_background_records_again_and_again() {
        let registry = Registry::new(MatchConfig::default(), OnMiss::Close);
        let greeting = Exchange {
            request: Payload::default(),
            ..call("127.0.0.1:3306", "", "hello")
        };
        registry.add_background(&[session(
            Kind::Background,
            vec![greeting, call(REDIS, "PING\r\n", "+PONG\r\n")],
        )]);
        for conn in 0..3 {
            let answer = ask(&registry, 0, b"PING\r\n", Some(REDIS), conn);
            assert_eq!(answer.response.as_deref(), Some(&b"+PONG\r\n"[..]));
            assert!(answer.background);
            let greeting = registry.greeting(0, Some("127.0.0.1:3306"), conn);
            assert_eq!(greeting.as_deref(), Some(&b"hello"[..]));
        }
        assert_eq!(
            registry.greeting(0, Some("127.0.0.1:9999"), 9),
            None,
            "another peer's greeting is not served"
        );
        let answer = ask(&registry, 0, b"FLUSHALL\r\n", Some(REDIS), 4);
        assert_eq!(answer.response, None);
        assert_eq!(
            registry
                .counters
                .background_calls_served
                .load(Ordering::Relaxed),
            6
        );
        assert_eq!(registry.counters.calls_unmatched.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_wrong_guess_is_corrected_by_the_request() {
        let registry = Registry::new(MatchConfig::default(), OnMiss::Close);
        let a = registry.begin(session(
            Kind::Session,
            vec![call(REDIS, "GET item:17", "a")],
        ));
        let b = registry.begin(session(
            Kind::Session,
            vec![call(REDIS, "GET item:42", "b")],
        ));
        // B's coroutine ran first and claimed A's request: a tentative id.
        let answer = ask(&registry, a.id | TENTATIVE, b"GET item:42", Some(REDIS), 1);
        assert_eq!(answer.response.as_deref(), Some(&b"b"[..]));
        assert_eq!((a.calls().0.len(), b.calls().0.len()), (0, 1));
        // A right guess is used as is.
        let answer = ask(&registry, a.id | TENTATIVE, b"GET item:17", Some(REDIS), 2);
        assert_eq!(answer.response.as_deref(), Some(&b"a"[..]));
    }

    #[test]
    fn framing_by_the_recording_of_a_replay_or_of_everything_loaded() {
        let registry = Registry::new(MatchConfig::default(), OnMiss::Close);
        let greeting = call("127.0.0.1:3306", "", "hello");
        registry.add_background(&[session(
            Kind::Background,
            vec![greeting.clone(), call(REDIS, "PING", "+PONG")],
        )]);
        let a = registry.begin(session(
            Kind::Session,
            vec![greeting, call(REDIS, "GET a", "a")],
        ));
        registry.begin(session(Kind::Session, vec![call(REDIS, "GET b", "b")]));
        use koala_protocols::Completeness::{Complete, NeedMore, Unknown};
        // A replay's own requests only.
        assert_eq!(registry.recorded_prefix(a.id, b"GET a"), Complete(5));
        assert_eq!(registry.recorded_prefix(a.id, b"GET b"), Unknown);
        assert_eq!(registry.recorded_prefix(a.id, b"PIN"), Unknown);
        // Unknown or guessed: everything loaded.
        for id in [0, a.id | TENTATIVE] {
            assert_eq!(registry.recorded_prefix(id, b"GET b"), Complete(5));
            assert_eq!(registry.recorded_prefix(id, b"PIN"), NeedMore);
            assert_eq!(registry.recorded_prefix(id, b"PINGGET a"), Complete(4));
        }
    }

    #[test]
    fn an_ended_replay_no_longer_answers() {
        let registry = Registry::new(MatchConfig::default(), OnMiss::Close);
        let a = registry.begin(session(Kind::Session, vec![call(REDIS, "GET k", "v")]));
        registry.end(&a);
        let answer = ask(&registry, a.id, b"GET k", Some(REDIS), 1);
        assert!(answer.background && answer.response.is_none());
    }

    // ---- MySQL caching_sha2_password, at the registry level ---------------

    /// A MySQL packet: 3-byte length, sequence id, payload.
    fn packet(sequence: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = (payload.len() as u32).to_le_bytes()[..3].to_vec();
        out.push(sequence);
        out.extend_from_slice(payload);
        out
    }

    /// A protocol-10 greeting offering caching_sha2_password, with `nonce`.
    fn greeting(nonce: &[u8; 20]) -> Vec<u8> {
        let mut payload = vec![0x0a];
        payload.extend_from_slice(b"8.0.36\0");
        payload.extend_from_slice(&7u32.to_le_bytes());
        payload.extend_from_slice(&nonce[..8]);
        payload.push(0);
        let capabilities: u32 = 0x0008_8000 | 0x0000_0200 | 0x0010_0000 | 0x0000_0008;
        payload.extend_from_slice(&(capabilities as u16).to_le_bytes());
        payload.push(0xff); // utf8mb4_0900_ai_ci
        payload.extend_from_slice(&2u16.to_le_bytes());
        payload.extend_from_slice(&((capabilities >> 16) as u16).to_le_bytes());
        payload.push(21);
        payload.extend_from_slice(&[0; 10]);
        payload.extend_from_slice(&nonce[8..]);
        payload.push(0);
        payload.extend_from_slice(b"caching_sha2_password\0");
        packet(0, &payload)
    }

    /// A handshake response (sequence 1) with a 32-byte caching_sha2
    /// scramble and connection attributes naming the client's pid.
    fn handshake_response(scramble: u8, pid: &str) -> Vec<u8> {
        let capabilities: u32 = 0x0008_8000 | 0x0000_0200 | 0x0010_0000 | 0x0000_0008;
        let mut payload = capabilities.to_le_bytes().to_vec();
        payload.extend_from_slice(&(16u32 << 20).to_le_bytes());
        payload.push(0xff);
        payload.extend_from_slice(&[0; 23]);
        payload.extend_from_slice(b"app\0");
        payload.push(32);
        payload.extend_from_slice(&[scramble; 32]);
        payload.extend_from_slice(b"shop\0");
        payload.extend_from_slice(b"caching_sha2_password\0");
        let mut attributes = Vec::new();
        for (key, value) in [("_client_name", "libmysql"), ("_pid", pid)] {
            attributes.push(key.len() as u8);
            attributes.extend_from_slice(key.as_bytes());
            attributes.push(value.len() as u8);
            attributes.extend_from_slice(value.as_bytes());
        }
        payload.push(attributes.len() as u8);
        payload.extend_from_slice(&attributes);
        packet(1, &payload)
    }

    const MYSQL: &str = "127.0.0.1:3306";

    fn mysql_call(request: Vec<u8>, response: Vec<u8>) -> Exchange {
        Exchange {
            local: "127.0.0.1:41000".into(),
            peer: MYSQL.into(),
            request: Payload::from(request.as_slice()),
            response: Payload::from(response.as_slice()),
            ..Exchange::default()
        }
    }

    fn ok(sequence: u8) -> Vec<u8> {
        packet(sequence, &[0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00])
    }

    fn update(timestamp: &str) -> Vec<u8> {
        let mut payload = vec![0x03];
        payload.extend_from_slice(
            format!("UPDATE items SET seen = {timestamp} WHERE id = 7").as_bytes(),
        );
        packet(0, &payload)
    }

    /// Issue 8, acceptance 2 at the registry level: a MySQL 8 session
    /// recorded with caching_sha2_password — fast auth (`01 03` then OK), or
    /// full auth (`01 04`, public-key request, RSA-encrypted password with
    /// random padding, OK) — replays with another client scramble and
    /// other connection attributes: the handshake is answered with fast-auth
    /// success and the recorded OK (the client never reaches full auth), the
    /// statement with another timestamp matches, nothing is unmatched, and
    /// the recorded authentication is not missing.
    #[test]
    fn mysql_caching_sha2_sessions_replay_with_any_scramble() {
        let recorded_nonce = [b'n'; 20];
        let update_ok = packet(1, &[0x00, 0x01, 0x00, 0x02, 0x00, 0x00, 0x00]);
        let fast = vec![
            mysql_call(Vec::new(), greeting(&recorded_nonce)),
            mysql_call(
                handshake_response(0xaa, "4242"),
                [packet(2, &[0x01, 0x03]), ok(3)].concat(),
            ),
            mysql_call(update("1796209470456"), update_ok.clone()),
        ];
        let full = vec![
            mysql_call(Vec::new(), greeting(&recorded_nonce)),
            mysql_call(handshake_response(0xaa, "4242"), packet(2, &[0x01, 0x04])),
            mysql_call(
                packet(3, &[0x02]),
                packet(4, b"\x01-----BEGIN PUBLIC KEY-----\n..."),
            ),
            mysql_call(packet(5, &[0x5a; 256]), ok(6)),
            mysql_call(update("1796209470456"), update_ok.clone()),
        ];
        for (name, calls) in [("fast auth", fast), ("full auth", full)] {
            let registry = Registry::new(MatchConfig::default(), OnMiss::Error);
            let replay = registry.begin(session(Kind::Session, calls.clone()));
            let served = registry.greeting(replay.id, Some(MYSQL), 1);
            assert_eq!(
                served.as_deref(),
                Some(calls[0].response.as_bytes()),
                "{name}"
            );
            let protocol = koala_protocols::detect_greeting(&served.unwrap());
            assert_eq!(protocol.map(|p| p.name()), Some("mysql"), "{name}");
            let ask_mysql = |bytes: &[u8]| {
                registry.answer(Request {
                    replay_id: replay.id,
                    bytes,
                    destination: Some(MYSQL),
                    conn: 1,
                    protocol,
                    arrived: Instant::now(),
                })
            };
            let answer = ask_mysql(&handshake_response(0x55, "9999"));
            assert_eq!(
                answer.response,
                Some([packet(2, &[0x01, 0x03]), ok(3)].concat()),
                "{name}: fast-auth success and the recorded OK"
            );
            let answer = ask_mysql(&update("1796309999999"));
            assert_eq!(answer.response, Some(update_ok.clone()), "{name}");
            let (made, unmatched) = replay.calls();
            assert!(unmatched.is_empty(), "{name}: {made:?}");
            assert_eq!(
                made.iter().map(|c| c.setup).collect::<Vec<_>>(),
                [true, true, false],
                "{name}: greeting and handshake are set-up"
            );
            assert_eq!(made[2].matched, Some(calls.len() - 1), "{name}");
            assert!(
                replay.missing().is_empty(),
                "{name}: {:?}",
                replay.missing()
            );
        }
    }

    /// Another session's recorded set-up answers every new connection, also
    /// when the request differs in a value (a pid in the client's name).
    #[test]
    fn recorded_set_up_answers_every_new_connection() {
        let registry = Registry::new(MatchConfig::default(), OnMiss::Error);
        let setname = |pid: &str| {
            let name = format!("worker-{pid}");
            format!(
                "*3\r\n$6\r\nCLIENT\r\n$7\r\nSETNAME\r\n${}\r\n{name}\r\n",
                name.len()
            )
        };
        let get = "*2\r\n$3\r\nGET\r\n$1\r\nk\r\n";
        let opened = vec![
            Exchange {
                seq: Some(0),
                ..call(REDIS, &setname("123"), "+OK\r\n")
            },
            Exchange {
                seq: Some(1),
                ..call(REDIS, get, "$1\r\na\r\n")
            },
        ];
        let reused = vec![Exchange {
            seq: Some(7),
            ..call(REDIS, get, "$1\r\nb\r\n")
        }];
        // What koala replay loads: every session's set-up.
        registry.add_background(&[session(Kind::Session, opened)]);
        let replay = registry.begin(session(Kind::Session, reused));
        let redis = koala_protocols::by_name("redis");
        for conn in 1..=3 {
            let pid = format!("{}", 900 + conn);
            let answer = registry.answer(Request {
                replay_id: replay.id,
                bytes: setname(&pid).as_bytes(),
                destination: Some(REDIS),
                conn,
                protocol: redis,
                arrived: Instant::now(),
            });
            assert_eq!(
                answer.response.as_deref(),
                Some(&b"+OK\r\n"[..]),
                "conn {conn}"
            );
        }
        let (calls, unmatched) = replay.calls();
        assert!(unmatched.is_empty(), "{calls:?}");
        assert!(calls.iter().all(|c| c.setup && c.matched.is_none()));
        assert_eq!(
            registry.counters.setup_calls_served.load(Ordering::Relaxed),
            3
        );
    }

    fn ask_on(
        registry: &Registry,
        replay: &Replay,
        protocol: &str,
        bytes: &[u8],
        conn: u64,
    ) -> Answer {
        registry.answer(Request {
            replay_id: replay.id,
            bytes,
            destination: Some(REDIS),
            conn,
            protocol: koala_protocols::by_name(protocol),
            arrived: Instant::now(),
        })
    }

    /// Review finding: a request that looks like set-up in the middle of a
    /// session (`SELECT 2` after a GET) is the session's own business: when
    /// the session did not record it, it is a miss, not another session's
    /// set-up.
    #[test]
    fn set_up_is_answered_from_other_recordings_only_while_a_connection_opens() {
        let registry = Registry::new(MatchConfig::default(), OnMiss::Error);
        let select = |db: &str| format!("*2\r\n$6\r\nSELECT\r\n${}\r\n{db}\r\n", db.len());
        let get = "*2\r\n$3\r\nGET\r\n$1\r\nk\r\n";
        registry.add_background(&[session(
            Kind::Session,
            vec![Exchange {
                seq: Some(0),
                ..call(REDIS, &select("2"), "+OK\r\n")
            }],
        )]);
        let replay = registry.begin(session(
            Kind::Session,
            vec![Exchange {
                seq: Some(3),
                ..call(REDIS, get, "$1\r\nv\r\n")
            }],
        ));
        // Opening a connection: answered from the other recording.
        let answer = ask_on(&registry, &replay, "redis", select("2").as_bytes(), 1);
        assert_eq!(answer.response.as_deref(), Some(&b"+OK\r\n"[..]));
        let answer = ask_on(&registry, &replay, "redis", get.as_bytes(), 1);
        assert_eq!(answer.response.as_deref(), Some(&b"$1\r\nv\r\n"[..]));
        // The same connection, past its set-up: a miss.
        let answer = ask_on(&registry, &replay, "redis", select("2").as_bytes(), 1);
        assert!(answer.response.unwrap().starts_with(b"-ERR koala replay"));
        let (calls, unmatched) = replay.calls();
        assert_eq!(unmatched, [2], "{calls:?}");
        assert_eq!(calls[2].on_miss.as_deref(), Some("error"));
        // A new connection opens again.
        let answer = ask_on(&registry, &replay, "redis", select("2").as_bytes(), 2);
        assert_eq!(answer.response.as_deref(), Some(&b"+OK\r\n"[..]));
    }

    /// Review finding: a request that gets no reply (memcached `noreply`)
    /// and matches nothing is still a miss, reported; only a goodbye
    /// (COM_QUIT, Terminate, `quit`) that was not recorded is no miss.
    #[test]
    fn unanswered_requests_are_misses_but_goodbyes_are_not() {
        let registry = Registry::new(MatchConfig::default(), OnMiss::Error);
        let replay = registry.begin(session(
            Kind::Session,
            vec![call(REDIS, "get k\r\n", "END\r\n")],
        ));
        let answer = ask_on(
            &registry,
            &replay,
            "memcached",
            b"set k 0 0 1 noreply\r\nx\r\n",
            1,
        );
        assert_eq!((answer.response, answer.close), (None, false));
        let answer = ask_on(&registry, &replay, "memcached", b"quit\r\n", 1);
        assert_eq!(answer.response, None);
        let answer = ask_on(&registry, &replay, "mysql", &[1, 0, 0, 0, 0x01], 2);
        assert_eq!(answer.response, None);
        let (calls, unmatched) = replay.calls();
        assert_eq!(unmatched, [0], "only the noreply set: {calls:?}");
        assert_eq!(calls[0].on_miss.as_deref(), Some("none"));
        assert_eq!(registry.counters.calls_unmatched.load(Ordering::Relaxed), 1);
    }

    /// A call the service makes after a session's answer (php-fpm's
    /// COM_QUIT) reaches the outbound server once that replay has ended and
    /// the next one is in flight: it belongs to the ended replay, and must
    /// not consume the next session's recorded call.
    #[test]
    fn a_late_call_of_an_ended_replay_is_not_the_next_sessions() {
        let registry = Registry::new(MatchConfig::default(), OnMiss::Close);
        let quit = "QUIT\r\n";
        let a = registry.begin(session(Kind::Session, vec![call(REDIS, quit, "+OK\r\n")]));
        registry.end(&a);
        let b = registry.begin(session(Kind::Session, vec![call(REDIS, quit, "+OK\r\n")]));
        let answer = ask(&registry, a.id, quit.as_bytes(), Some(REDIS), 1);
        assert!(answer.background && answer.response.is_none());
        assert!(b.calls().0.is_empty(), "b's call is still b's");
        let answer = ask(&registry, b.id, quit.as_bytes(), Some(REDIS), 2);
        assert_eq!(answer.response.as_deref(), Some(&b"+OK\r\n"[..]));
        assert!(!b.calls().0[0].reused);
    }
}
