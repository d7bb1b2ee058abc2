//! The replays in flight, the background pool, and how a request the
//! service sent to a dependency finds its answer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use koala_session::replay::{MissingCall, ReplayedCall};
use koala_session::{Exchange, Payload, Session};

use crate::attribution::TENTATIVE;
use crate::matching::{MatchConfig, SessionMatcher};

/// One session being replayed.
pub struct Replay {
    pub id: u64,
    pub session: Session,
    matcher: Mutex<SessionMatcher>,
    calls: Mutex<Vec<ReplayedCall>>,
    pub started: Instant,
}

/// What the outbound server sends back for a request.
pub struct Answer {
    /// The recorded response, or `None`: no recorded call matches.
    pub response: Option<Vec<u8>>,
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
}

/// Calls recorded outside any session, answering the service's start-up
/// traffic. Identical requests may be served any number of times (a
/// service restarts, a pool reconnects).
struct BackgroundPool {
    calls: Vec<Exchange>,
    matcher: SessionMatcher,
}

pub struct Registry {
    active: Mutex<HashMap<u64, Arc<Replay>>>,
    background: Mutex<BackgroundPool>,
    next_id: AtomicU64,
    match_config: MatchConfig,
    pub counters: Counters,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The servers' own threads never panic while holding these locks
    // (matching is panic-free); a poisoned lock still holds valid data.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Registry {
    pub fn new(match_config: MatchConfig) -> Self {
        Registry {
            active: Mutex::new(HashMap::new()),
            background: Mutex::new(BackgroundPool {
                calls: Vec::new(),
                matcher: SessionMatcher::new(&[], match_config.clone()),
            }),
            next_id: AtomicU64::new(1),
            match_config,
            counters: Counters::default(),
        }
    }

    /// Registers a session about to be replayed.
    pub fn begin(&self, session: Session) -> Arc<Replay> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let replay = Arc::new(Replay {
            id,
            matcher: Mutex::new(SessionMatcher::new(
                &session.calls,
                self.match_config.clone(),
            )),
            session,
            calls: Mutex::new(Vec::new()),
            started: Instant::now(),
        });
        lock(&self.active).insert(id, replay.clone());
        replay
    }

    /// The replay is over: requests still tagged with it get background answers.
    pub fn end(&self, replay: &Replay) {
        lock(&self.active).remove(&replay.id);
        self.counters
            .sessions_replayed
            .fetch_add(1, Ordering::Relaxed);
    }

    pub fn in_flight(&self) -> usize {
        lock(&self.active).len()
    }

    /// Adds background records (and the calls of any session given) to the pool.
    pub fn add_background(&self, records: &[Session]) -> usize {
        let mut pool = lock(&self.background);
        for record in records {
            pool.calls.extend(record.calls.iter().cloned());
        }
        let mut config = self.match_config.clone();
        config.allow_reuse = true;
        pool.matcher = SessionMatcher::new(&pool.calls, config);
        self.counters
            .background_records
            .fetch_add(records.len() as u64, Ordering::Relaxed);
        records.len()
    }

    fn replay(&self, id: u64) -> Option<Arc<Replay>> {
        lock(&self.active).get(&id).cloned()
    }

    /// The recorded requests a request on this connection may turn out to
    /// be, for framing protocols koala does not parse.
    pub fn recorded_requests(&self, replay_id: u64) -> Vec<Vec<u8>> {
        let certain = self
            .replay(replay_id)
            .filter(|_| replay_id & TENTATIVE == 0);
        // Empty requests (greetings) can frame nothing: not copied.
        let requests = |calls: &[Exchange]| {
            calls
                .iter()
                .map(|call| call.request.as_bytes())
                .filter(|request| !request.is_empty())
                .map(<[u8]>::to_vec)
                .collect::<Vec<_>>()
        };
        match certain {
            Some(replay) => requests(&replay.session.calls),
            None => {
                let mut all = requests(&lock(&self.background).calls);
                for replay in lock(&self.active).values() {
                    all.extend(requests(&replay.session.calls));
                }
                all
            }
        }
    }

    /// A connection to `destination` was accepted for replay `replay_id`:
    /// the recorded greeting, if that dependency spoke first.
    pub fn greeting(
        &self,
        replay_id: u64,
        destination: Option<&str>,
        conn: u64,
    ) -> Option<Vec<u8>> {
        if let Some(replay) = self.replay(replay_id & !TENTATIVE) {
            let index = lock(&replay.matcher).take_greeting(destination, conn)?;
            let greeting = replay.session.calls[index].response.as_bytes().to_vec();
            replay.log(ReplayedCall {
                peer: destination.unwrap_or_default().to_string(),
                request: Payload::default(),
                matched: Some(index),
                score: 1.0,
                closest: Some(index),
                reused: false,
                greeting: true,
                served: Payload::from(greeting.as_slice()),
                at_ms: replay.elapsed_ms(),
            });
            self.counters.calls_matched.fetch_add(1, Ordering::Relaxed);
            return Some(greeting);
        }
        // Outside any replay (a pool connecting at start-up): a greeting
        // recorded for the same destination in the background records.
        let destination = destination?;
        let pool = lock(&self.background);
        let greeting = pool
            .calls
            .iter()
            .find(|c| c.is_greeting() && c.peer == destination)?
            .response
            .as_bytes()
            .to_vec();
        self.counters
            .background_calls_served
            .fetch_add(1, Ordering::Relaxed);
        Some(greeting)
    }

    /// Answers `request`, sent on connection `conn` to `destination`, for
    /// replay `replay_id` (0 or an ended replay: unknown).
    ///
    /// A request of a known replay is matched against that session only. An
    /// untagged one, or one whose replay is only a guess ([`TENTATIVE`]), is
    /// matched against the replay in flight when there is one, the
    /// best-matching one when there are several (ties go to the guess), and
    /// the background pool otherwise.
    pub fn answer(
        &self,
        replay_id: u64,
        request: &[u8],
        destination: Option<&str>,
        conn: u64,
    ) -> Answer {
        // A guessed replay (a virtual thread's claim) competes with the
        // other replays in flight: the session matching best answers.
        let replay = match replay_id & TENTATIVE {
            0 => self.replay(replay_id),
            _ => None,
        };
        let guess = (replay_id & TENTATIVE != 0).then_some(replay_id & !TENTATIVE);
        let replay = replay.or_else(|| self.best_in_flight(request, destination, conn, guess));
        let Some(replay) = replay else {
            return self.answer_from_background(request, destination, conn);
        };
        let outcome = lock(&replay.matcher).match_request(request, destination, conn);
        let served = outcome
            .matched
            .map(|index| replay.session.calls[index].response.as_bytes().to_vec());
        let counter = if served.is_some() {
            &self.counters.calls_matched
        } else {
            &self.counters.calls_unmatched
        };
        counter.fetch_add(1, Ordering::Relaxed);
        replay.log(ReplayedCall {
            peer: destination.unwrap_or_default().to_string(),
            request: Payload::from(request),
            matched: outcome.matched,
            score: outcome.score,
            closest: outcome.closest.map(|(index, _)| index),
            reused: outcome.reused,
            greeting: false,
            served: Payload::from(served.as_deref().unwrap_or_default()),
            at_ms: replay.elapsed_ms(),
        });
        Answer {
            response: served,
            background: false,
        }
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

    fn answer_from_background(
        &self,
        request: &[u8],
        destination: Option<&str>,
        conn: u64,
    ) -> Answer {
        let mut pool = lock(&self.background);
        let outcome = pool.matcher.match_request(request, destination, conn);
        let served = outcome
            .matched
            .map(|index| pool.calls[index].response.as_bytes().to_vec());
        drop(pool);
        let counter = if served.is_some() {
            &self.counters.background_calls_served
        } else {
            &self.counters.calls_unmatched
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if served.is_none() {
            tracing::warn!(
                request = %String::from_utf8_lossy(&request[..request.len().min(120)]),
                destination = destination.unwrap_or("?"),
                "request outside any replayed session matches no background record"
            );
        }
        Answer {
            response: served,
            background: true,
        }
    }

    pub fn connection_closed(&self, replay_id: u64, conn: u64) {
        if let Some(replay) = self.replay(replay_id & !TENTATIVE) {
            lock(&replay.matcher).connection_closed(conn);
        }
    }
}

impl Replay {
    fn log(&self, call: ReplayedCall) {
        lock(&self.calls).push(call);
    }

    fn elapsed_ms(&self) -> f64 {
        self.started.elapsed().as_secs_f64() * 1000.0
    }

    /// The calls made so far, and the indexes of the unmatched ones.
    pub fn calls(&self) -> (Vec<ReplayedCall>, Vec<usize>) {
        let calls = lock(&self.calls).clone();
        let unmatched = calls
            .iter()
            .enumerate()
            .filter(|(_, call)| call.matched.is_none())
            .map(|(index, _)| index)
            .collect();
        (calls, unmatched)
    }

    /// Recorded calls the service did not make.
    pub fn missing(&self) -> Vec<MissingCall> {
        lock(&self.matcher)
            .unserved()
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
        }
    }

    const REDIS: &str = "127.0.0.1:6379";

    #[test]
    fn a_tagged_request_is_answered_from_its_own_session() {
        let registry = Registry::new(MatchConfig::default());
        let a = registry.begin(session(
            Kind::Session,
            vec![call(REDIS, "GET k", "$1\r\na")],
        ));
        let b = registry.begin(session(
            Kind::Session,
            vec![call(REDIS, "GET k", "$1\r\nb")],
        ));
        let answer = registry.answer(b.id, b"GET k", Some(REDIS), 1);
        assert_eq!(answer.response.as_deref(), Some(&b"$1\r\nb"[..]));
        let answer = registry.answer(a.id, b"GET k", Some(REDIS), 2);
        assert_eq!(answer.response.as_deref(), Some(&b"$1\r\na"[..]));
        let (calls, unmatched) = a.calls();
        assert_eq!((calls.len(), unmatched.len()), (1, 0));
        assert!(a.missing().is_empty());
    }

    #[test]
    fn an_untagged_request_goes_to_the_session_it_matches_best() {
        let registry = Registry::new(MatchConfig::default());
        let a = registry.begin(session(
            Kind::Session,
            vec![call(REDIS, "GET item:17", "a")],
        ));
        let b = registry.begin(session(
            Kind::Session,
            vec![call(REDIS, "GET item:42", "b")],
        ));
        let answer = registry.answer(0, b"GET item:42", Some(REDIS), 1);
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
        let registry = Registry::new(MatchConfig::default());
        let greeting = Exchange {
            request: Payload::default(),
            ..call("127.0.0.1:3306", "", "hello")
        };
        registry.add_background(&[session(
            Kind::Background,
            vec![greeting, call(REDIS, "PING\r\n", "+PONG\r\n")],
        )]);
        for conn in 0..3 {
            let answer = registry.answer(0, b"PING\r\n", Some(REDIS), conn);
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
        let answer = registry.answer(0, b"FLUSHALL\r\n", Some(REDIS), 4);
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
        let registry = Registry::new(MatchConfig::default());
        let a = registry.begin(session(
            Kind::Session,
            vec![call(REDIS, "GET item:17", "a")],
        ));
        let b = registry.begin(session(
            Kind::Session,
            vec![call(REDIS, "GET item:42", "b")],
        ));
        // B's coroutine ran first and claimed A's request: a tentative id.
        let answer = registry.answer(a.id | TENTATIVE, b"GET item:42", Some(REDIS), 1);
        assert_eq!(answer.response.as_deref(), Some(&b"b"[..]));
        assert_eq!((a.calls().0.len(), b.calls().0.len()), (0, 1));
        // A right guess is used as is.
        let answer = registry.answer(a.id | TENTATIVE, b"GET item:17", Some(REDIS), 2);
        assert_eq!(answer.response.as_deref(), Some(&b"a"[..]));
    }

    #[test]
    fn recorded_requests_of_a_replay_or_of_everything_loaded() {
        let registry = Registry::new(MatchConfig::default());
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
        // Greetings (empty requests) are left out.
        assert_eq!(registry.recorded_requests(a.id), [b"GET a".to_vec()]);
        let mut everything = registry.recorded_requests(0);
        everything.sort();
        assert_eq!(everything, [&b"GET a"[..], b"GET b", b"PING"]);
        let mut guessed = registry.recorded_requests(a.id | TENTATIVE);
        guessed.sort();
        assert_eq!(guessed, everything);
    }

    #[test]
    fn an_ended_replay_no_longer_answers() {
        let registry = Registry::new(MatchConfig::default());
        let a = registry.begin(session(Kind::Session, vec![call(REDIS, "GET k", "v")]));
        registry.end(&a);
        let answer = registry.answer(a.id, b"GET k", Some(REDIS), 1);
        assert!(answer.background && answer.response.is_none());
    }
}
