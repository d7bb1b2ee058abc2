//! Picking which recorded call of a session answers a request the service
//! under test sends during replay.
//!
//! The algorithm is described in `docs/matching.md`. In short:
//!
//! 1. The request is normalised: HTTP heads are put in a
//!    canonical form without volatile headers; every request gets an
//!    operation key (HTTP method and path, Redis command and key, MySQL
//!    command and SQL verb), and is compared only with recorded calls of the
//!    same key.
//! 2. An exact index (normalised bytes → calls) answers identical requests
//!    in O(request length), serving them in recorded order.
//! 3. Otherwise candidates of the same key are ranked by an upper bound of
//!    their similarity computed from a token index (no alignment), and only
//!    the best few are scored by weighted token alignment.
//! 4. A call is consumed when served. Calls already served only answer a
//!    request identical to them (`reused`), and a served call that resembles
//!    the request more than every unserved one keeps its siblings from being
//!    served in its place.

mod normalize;
mod operation;
mod similarity;

#[cfg(test)]
mod chunk_baseline;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};

use koala_session::Exchange;

use self::normalize::{Normalized, normalize};
use self::operation::Operation;
use self::similarity::{
    RequestProfile, Token, distinct_weights, shape, similarity, tokenize, total_weight, upper_bound,
};

/// Scores closer than this are equal (they are ratios of integer weights).
const SCORE_EPSILON: f64 = 1e-9;

/// Headers dropped before comparing HTTP requests by default: dates, request
/// and correlation ids, and distributed-tracing context, which differ on
/// every request without changing what it asks for.
pub const DEFAULT_VOLATILE_HEADERS: &[&str] = &[
    "date",
    "x-request-id",
    "x-correlation-id",
    "x-trace-id",
    "request-id",
    "traceparent",
    "tracestate",
    "baggage",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "uber-trace-id",
    "x-amzn-trace-id",
    "x-amz-date",
    "x-cloud-trace-context",
    "x-datadog-trace-id",
    "x-datadog-parent-id",
    "x-datadog-sampling-priority",
    "sentry-trace",
];

/// What to do with a request no recorded call matches.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum UnmatchedPolicy {
    /// Report it unmatched (`matched: None`); the server decides how to fail
    /// the connection. Never serves a response recorded for another request.
    #[default]
    Reject,
    /// Serve the closest unserved candidate of the same operation when it
    /// scores at least `floor`, reported with `forced: true`. This is the
    /// lenient behaviour of the original koala; it can serve wrong responses.
    ServeClosest { floor: f64 },
}

/// Thresholds of the matcher. `Default` holds the documented values.
#[derive(Clone, Debug, PartialEq)]
pub struct MatchConfig {
    /// Lowest similarity (0.0..=1.0) at which a non-identical request is
    /// matched to a recorded call. Default 0.8: in the measured cases
    /// (`docs/matching.md`), near-misses (timestamps, nonces, tokens,
    /// scrambles that change from run to run) score 0.87 or more, requests
    /// of the same operation asking for something else 0.77 or less.
    pub min_score: f64,
    /// Subtracted from the score of calls recorded to another peer than the
    /// one the request was for, when that peer appears in the recording.
    /// Default 0.05: another peer's call wins only when it is clearly better.
    pub other_peer_penalty: f64,
    /// Re-serve an already served call to a request identical to it (after
    /// normalisation), reported `reused`. Default true.
    pub allow_reuse: bool,
    /// Among equally good candidates, prefer the next call recorded on the
    /// same connection as the previous call served on this connection.
    /// Default true.
    pub connection_affinity: bool,
    /// Most candidates scored exactly per request, after ranking by the
    /// upper bound. Default 32.
    pub max_scored: usize,
    /// HTTP headers (lower-case names) ignored when comparing requests.
    /// Default [`DEFAULT_VOLATILE_HEADERS`].
    pub volatile_headers: Vec<String>,
    /// Default [`UnmatchedPolicy::Reject`].
    pub unmatched: UnmatchedPolicy,
}

impl Default for MatchConfig {
    fn default() -> Self {
        MatchConfig {
            min_score: 0.8,
            other_peer_penalty: 0.05,
            allow_reuse: true,
            connection_affinity: true,
            max_scored: 32,
            volatile_headers: DEFAULT_VOLATILE_HEADERS
                .iter()
                .map(|name| (*name).to_owned())
                .collect(),
            unmatched: UnmatchedPolicy::Reject,
        }
    }
}

/// The answer to one request.
#[derive(Clone, Debug, PartialEq)]
pub struct MatchOutcome {
    /// Index into the session's calls; `None` = unmatched.
    pub matched: Option<usize>,
    /// Score (0.0..=1.0) of the chosen call, or of the best rejected one.
    pub score: f64,
    /// The best candidate even when rejected, with its score, for reports.
    pub closest: Option<(usize, f64)>,
    /// The call had already been served before.
    pub reused: bool,
    /// Served only because of [`UnmatchedPolicy::ServeClosest`].
    pub forced: bool,
}

impl MatchOutcome {
    fn unmatched(closest: Option<(usize, f64)>) -> Self {
        MatchOutcome {
            matched: None,
            score: closest.map_or(0.0, |(_, score)| score),
            closest,
            reused: false,
            forced: false,
        }
    }
}

/// What a recorded call can answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CallKind {
    /// Answers a request.
    Request,
    /// Server-speaks-first: an empty request and a response.
    Greeting,
    /// Neither request nor response bytes: nothing to serve or miss.
    Empty,
}

#[derive(Clone, Debug)]
struct RecordedCall {
    kind: CallKind,
    /// The normalised request (its operation key dropped: it is in the index).
    normalized: Normalized,
    /// Total token weight of the scored part.
    total_weight: u64,
    peer: String,
    /// The service's end of the recorded connection; calls sharing it were
    /// made on the same connection.
    local: String,
    times_served: u32,
    /// The request's shape ([`shape`]) when its operation is known: a
    /// request of the same operation and shape differs only in values.
    shape: Option<u64>,
}

/// A candidate with its exact score.
#[derive(Clone, Copy, Debug)]
struct Scored {
    index: usize,
    /// Similarity.
    score: f64,
    /// Similarity less the other-peer penalty: what candidates are ranked by.
    ranked: f64,
}

/// An upper bound of a candidate's scores.
#[derive(Clone, Copy, Debug)]
struct Bound {
    ranked: f64,
    score: f64,
    served: bool,
    index: usize,
}

/// Matching state for one session being replayed.
#[derive(Clone, Debug)]
pub struct SessionMatcher {
    config: MatchConfig,
    calls: Vec<RecordedCall>,
    hasher: RandomState,
    /// Hash of normalised request → calls with that request, in recorded order.
    exact: HashMap<u64, Vec<usize>>,
    /// Operation key → the calls of that operation.
    operations: HashMap<Vec<u8>, Operation>,
    greetings: Vec<usize>,
    /// Peers that appear in the recording; preference applies only to these.
    recorded_peers: HashSet<String>,
    /// Connection → the last call served on it.
    last_served_on: HashMap<u64, usize>,
}

impl SessionMatcher {
    /// Indexes the calls of the session to replay.
    pub fn new(calls: &[Exchange], config: MatchConfig) -> Self {
        let hasher = RandomState::new();
        let mut matcher = SessionMatcher {
            config,
            calls: Vec::with_capacity(calls.len()),
            hasher,
            exact: HashMap::new(),
            operations: HashMap::new(),
            greetings: Vec::new(),
            recorded_peers: HashSet::new(),
            last_served_on: HashMap::new(),
        };
        let mut tokens: Vec<Token> = Vec::new();
        for (index, call) in calls.iter().enumerate() {
            let request = call.request.as_bytes();
            let kind = if !request.is_empty() {
                CallKind::Request
            } else if call.is_greeting() {
                CallKind::Greeting
            } else {
                CallKind::Empty
            };
            let mut normalized = match kind {
                CallKind::Request => normalize(request, &matcher.config.volatile_headers),
                CallKind::Greeting | CallKind::Empty => Normalized::default(),
            };
            let (scored, header_range) = normalized.scored();
            tokenize(scored, &header_range, &mut tokens);
            let total_weight = total_weight(&tokens);
            let call_shape =
                (kind == CallKind::Request && !normalized.key.is_empty()).then(|| shape(scored));
            match kind {
                CallKind::Request => {
                    let hash = matcher.hash(&normalized.bytes);
                    matcher.exact.entry(hash).or_default().push(index);
                    let key = std::mem::take(&mut normalized.key);
                    matcher
                        .operations
                        .entry(key)
                        .or_default()
                        .add(index, &distinct_weights(&tokens));
                }
                CallKind::Greeting => matcher.greetings.push(index),
                CallKind::Empty => {}
            }
            matcher.recorded_peers.insert(call.peer.clone());
            matcher.calls.push(RecordedCall {
                kind,
                normalized,
                total_weight,
                peer: call.peer.clone(),
                local: call.local.clone(),
                times_served: 0,
                shape: call_shape,
            });
        }
        matcher
    }

    fn hash(&self, bytes: &[u8]) -> u64 {
        self.hasher.hash_one(bytes)
    }

    /// Picks the recorded call that answers `request`, and marks it served.
    ///
    /// `peer` is the address the service originally tried to reach
    /// ("ip:port"), if known; calls recorded to the same peer are preferred.
    /// `conn` identifies the connection the request came on; the previous
    /// call served on it breaks ties (see [`MatchConfig::connection_affinity`]).
    pub fn match_request(&mut self, request: &[u8], peer: Option<&str>, conn: u64) -> MatchOutcome {
        let outcome = self.trial_match(request, peer, conn);
        if let Some(index) = outcome.matched {
            self.mark_served(index, conn);
        }
        outcome
    }

    /// What [`match_request`](Self::match_request) would answer, without
    /// serving anything: for choosing among sessions.
    pub fn trial_match(&self, request: &[u8], peer: Option<&str>, conn: u64) -> MatchOutcome {
        let normalized = normalize(request, &self.config.volatile_headers);
        if normalized.bytes.is_empty() {
            return MatchOutcome::unmatched(None);
        }
        let peer = self.known_peer(peer);
        let hash = self.hash(&normalized.bytes);
        let identical: Vec<usize> = self
            .exact
            .get(&hash)
            .map(|indexes| {
                indexes
                    .iter()
                    .copied()
                    .filter(|&index| self.calls[index].normalized.bytes == normalized.bytes)
                    .collect()
            })
            .unwrap_or_default();

        // Fast path: an identical unserved call to the same peer cannot be beaten.
        let identical_unserved = identical
            .iter()
            .copied()
            .filter(|&index| self.calls[index].times_served == 0 && self.peer_matches(index, peer));
        if let Some(index) = self.first_by_affinity(identical_unserved, conn) {
            return self.outcome(index, 1.0, false);
        }

        let request_shape = (!normalized.key.is_empty()).then(|| shape(normalized.scored().0));
        let scored = self.score_candidates(&normalized, &identical, peer, request_shape);
        let unserved: Vec<Scored> = scored
            .iter()
            .copied()
            .filter(|candidate| self.calls[candidate.index].times_served == 0)
            .collect();
        let best_unserved = self.best_unserved(&unserved, conn);
        let best_served_rank = scored
            .iter()
            .filter(|candidate| self.calls[candidate.index].times_served > 0)
            .map(|candidate| candidate.ranked)
            .fold(f64::NEG_INFINITY, f64::max);

        if let Some(best) = best_unserved {
            // A served call resembling the request more means the request
            // repeats that call: serving a sibling would be a wrong answer.
            let shadowed = best_served_rank > best.ranked + SCORE_EPSILON;
            if best.score + SCORE_EPSILON >= self.config.min_score && !shadowed {
                return self.outcome(best.index, best.score, false);
            }
        }
        // The same operation differing only in values (a timestamp, an id)
        // is the same call, however low those values make the score.
        let same_shape = unserved
            .iter()
            .filter(|candidate| {
                request_shape.is_some() && self.calls[candidate.index].shape == request_shape
            })
            .max_by(|a, b| a.ranked.total_cmp(&b.ranked).then(b.index.cmp(&a.index)));
        if let Some(candidate) = same_shape
            && best_served_rank <= candidate.ranked + SCORE_EPSILON
        {
            return self.outcome(candidate.index, candidate.score, false);
        }
        if self.config.allow_reuse
            && let Some(index) = self.reusable(&identical, peer)
        {
            return self.outcome(index, 1.0, false);
        }
        if let (UnmatchedPolicy::ServeClosest { floor }, Some(best)) =
            (&self.config.unmatched, best_unserved)
            && best.score + SCORE_EPSILON >= *floor
        {
            return self.outcome(best.index, best.score, true);
        }
        let closest = scored
            .iter()
            .max_by(|a, b| a.score.total_cmp(&b.score).then(b.index.cmp(&a.index)))
            .map(|candidate| (candidate.index, candidate.score));
        MatchOutcome::unmatched(closest)
    }

    /// Recorded calls never served so far (indexes), for the `missing`
    /// report. Calls with neither request nor response bytes are left out:
    /// there is nothing to serve for them.
    pub fn unserved(&self) -> Vec<usize> {
        self.calls
            .iter()
            .enumerate()
            .filter(|(_, call)| call.kind != CallKind::Empty && call.times_served == 0)
            .map(|(index, _)| index)
            .collect()
    }

    /// Greeting (server-speaks-first) calls: a recorded call with an empty
    /// request and a non-empty response. Returns the first unserved greeting
    /// in recorded order, consuming it. When `peer` appears in the recording
    /// only greetings recorded to that peer are taken (another peer's
    /// greeting would be another protocol's); otherwise any.
    pub fn take_greeting(&mut self, peer: Option<&str>, conn: u64) -> Option<usize> {
        let peer = self.known_peer(peer);
        let index =
            self.greetings.iter().copied().find(|&index| {
                self.calls[index].times_served == 0 && self.peer_matches(index, peer)
            })?;
        self.mark_served(index, conn);
        Some(index)
    }

    /// Forgets the per-connection context of a closed connection.
    pub fn connection_closed(&mut self, conn: u64) {
        self.last_served_on.remove(&conn);
    }

    /// `peer` if it appears in the recording: an address the recording never
    /// saw (a different resolution, say) gives no preference.
    fn known_peer<'a>(&self, peer: Option<&'a str>) -> Option<&'a str> {
        peer.filter(|peer| self.recorded_peers.contains(*peer))
    }

    fn peer_matches(&self, index: usize, peer: Option<&str>) -> bool {
        peer.is_none_or(|peer| self.calls[index].peer == peer)
    }

    fn peer_penalty(&self, index: usize, peer: Option<&str>) -> f64 {
        if self.peer_matches(index, peer) {
            0.0
        } else {
            self.config.other_peer_penalty
        }
    }

    /// Whether `index` continues the recorded connection of the last call
    /// served on `conn`.
    fn continues_connection(&self, index: usize, conn: u64) -> bool {
        if !self.config.connection_affinity {
            return false;
        }
        let Some(&previous) = self.last_served_on.get(&conn) else {
            return false;
        };
        let local = &self.calls[previous].local;
        index > previous && !local.is_empty() && self.calls[index].local == *local
    }

    /// The first of `indexes` (in recorded order) continuing the
    /// connection's recorded connection, else the first.
    fn first_by_affinity(&self, indexes: impl Iterator<Item = usize>, conn: u64) -> Option<usize> {
        let mut first = None;
        for index in indexes {
            if self.continues_connection(index, conn) {
                return Some(index);
            }
            first = first.or(Some(index));
        }
        first
    }

    /// The best-ranked unserved candidate; ties go to connection affinity,
    /// then recorded order.
    fn best_unserved(&self, unserved: &[Scored], conn: u64) -> Option<Scored> {
        let top = unserved
            .iter()
            .map(|candidate| candidate.ranked)
            .fold(f64::NEG_INFINITY, f64::max);
        let mut tied: Vec<Scored> = unserved
            .iter()
            .copied()
            .filter(|candidate| candidate.ranked + SCORE_EPSILON >= top)
            .collect();
        tied.sort_by_key(|candidate| candidate.index);
        let index = self.first_by_affinity(tied.iter().map(|candidate| candidate.index), conn)?;
        tied.into_iter().find(|candidate| candidate.index == index)
    }

    /// An identical call to re-serve: the last recorded one to the same
    /// peer, else the last recorded one. A poller repeating a request keeps
    /// seeing the latest recorded state.
    fn reusable(&self, identical: &[usize], peer: Option<&str>) -> Option<usize> {
        let same_peer = identical
            .iter()
            .rev()
            .copied()
            .find(|&index| self.peer_matches(index, peer));
        same_peer.or_else(|| identical.last().copied())
    }

    /// Ranks the calls of the request's operation by the upper bound of
    /// their similarity and scores the best ones exactly, stopping as soon
    /// as no remaining candidate can change the decision.
    fn score_candidates(
        &self,
        normalized: &Normalized,
        identical: &[usize],
        peer: Option<&str>,
        request_shape: Option<u64>,
    ) -> Vec<Scored> {
        let Some(operation) = self.operations.get(&normalized.key) else {
            return Vec::new();
        };
        let (scored_bytes, header_range) = normalized.scored();
        let profile = RequestProfile::new(scored_bytes, &header_range);
        let absent = operation.absent_weights(&profile);
        let mut bounds: Vec<Bound> = operation
            .members
            .iter()
            .zip(absent)
            .map(|(&index, absent_weight)| {
                let call = &self.calls[index];
                let score = if identical.binary_search(&index).is_ok() {
                    1.0
                } else {
                    upper_bound(profile.total, absent_weight, call.total_weight)
                };
                Bound {
                    ranked: score - self.peer_penalty(index, peer),
                    score,
                    served: call.times_served > 0,
                    index,
                }
            })
            .collect();
        // Best bound first; among equals unserved first, then recorded order.
        let by_rank = |a: &Bound, b: &Bound| {
            b.ranked
                .total_cmp(&a.ranked)
                .then(a.served.cmp(&b.served))
                .then(a.index.cmp(&b.index))
        };
        let keep = self.config.max_scored.max(1);
        if bounds.len() > keep {
            bounds.select_nth_unstable_by(keep - 1, by_rank);
            bounds.truncate(keep);
        }
        bounds.sort_unstable_by(by_rank);

        let acceptance_floor = match self.config.unmatched {
            UnmatchedPolicy::ServeClosest { floor } => floor.min(self.config.min_score),
            UnmatchedPolicy::Reject => self.config.min_score,
        };
        let mut scored: Vec<Scored> = Vec::new();
        let mut best_rank = f64::NEG_INFINITY;
        let mut candidate_tokens: Vec<Token> = Vec::new();
        for Bound {
            ranked: rank_bound,
            score: bound,
            served,
            index,
        } in bounds
        {
            let same_shape = request_shape.is_some() && self.calls[index].shape == request_shape;
            if rank_bound + SCORE_EPSILON < best_rank {
                // Sorted: nothing left can rank higher; only a candidate of
                // the request's shape can still be chosen.
                match request_shape {
                    None => break,
                    Some(_) if !same_shape || served => continue,
                    Some(_) => {}
                }
            }
            // Skip what can neither be accepted (unserved) nor outrank an
            // acceptable candidate (served); the closest is already known.
            let useless = if served {
                rank_bound + SCORE_EPSILON < acceptance_floor - self.config.other_peer_penalty
            } else {
                bound + SCORE_EPSILON < acceptance_floor && !same_shape
            };
            if useless && !scored.is_empty() {
                continue;
            }
            let score = if identical.binary_search(&index).is_ok() {
                1.0
            } else {
                let call = &self.calls[index];
                let (candidate_bytes, candidate_headers) = call.normalized.scored();
                tokenize(candidate_bytes, &candidate_headers, &mut candidate_tokens);
                similarity(&profile.tokens, &candidate_tokens)
            };
            let ranked = score - self.peer_penalty(index, peer);
            best_rank = best_rank.max(ranked);
            scored.push(Scored {
                index,
                score,
                ranked,
            });
        }
        scored
    }

    /// The outcome of serving the call at `index`.
    fn outcome(&self, index: usize, score: f64, forced: bool) -> MatchOutcome {
        MatchOutcome {
            matched: Some(index),
            score,
            closest: Some((index, score)),
            reused: self.calls[index].times_served > 0,
            forced,
        }
    }

    /// Consumes the call at `index`; it becomes `conn`'s last served call.
    fn mark_served(&mut self, index: usize, conn: u64) {
        self.calls[index].times_served += 1;
        self.last_served_on.insert(conn, index);
    }
}
