//! Cost of one match against sessions of 10 to 10 000 recorded calls.
//!
//! Every call is a POST to the same endpoint with a JSON body that differs
//! in an id and a timestamp, so all of them are candidates of one
//! operation: the worst case for the fuzzy path.
//!
//! - `exact`: the request is identical to a recorded call (index hit).
//! - `near_miss`: the request is a recorded call with a fresh timestamp
//!   (ranking by upper bound, then alignment of the best few).
//! - `unmatched`: the request has the endpoint of every call but other
//!   content (everything is ranked, the best are scored and rejected).
//! - `index`: building the matcher for the session.

use std::hint::black_box;

use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};
use koala_replayer::matching::{MatchConfig, SessionMatcher};
use koala_session::Exchange;

const SIZES: [usize; 4] = [10, 100, 1_000, 10_000];

fn request(id: usize, timestamp: u64) -> Vec<u8> {
    let body = format!(
        r#"{{"id": {id}, "ts": {timestamp}, "fields": ["name", "price", "stock"], "locale": "en-GB"}}"#
    );
    format!(
        "POST /api/items/get HTTP/1.1\r\nHost: catalog.internal:8080\r\nUser-Agent: svc-client/2.3\r\n\
         Accept: application/json\r\nContent-Type: application/json\r\nX-Request-Id: {timestamp}\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn session(calls: usize) -> Vec<Exchange> {
    (0..calls)
        .map(|id| Exchange {
            local: "10.0.0.1:40000".to_owned(),
            peer: "10.0.0.2:8080".to_owned(),
            request: request(id, 1_700_000_000_000 + id as u64).into(),
            response: format!("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", id % 100)
                .as_bytes()
                .into(),
            ..Exchange::default()
        })
        .collect()
}

fn matching(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("match_request");
    for size in SIZES {
        let calls = session(size);
        let matcher = SessionMatcher::new(&calls, MatchConfig::default());
        let target = size / 2;
        let identical = calls[target].request.as_bytes().to_vec();
        let near_miss = request(target, 1_900_000_000_000);
        let unrelated = {
            let body = r#"{"query": "warehouse stock levels by region", "format": "csv"}"#;
            let mut bytes = request(0, 0);
            let head_end = bytes
                .windows(4)
                .position(|window| window == b"\r\n\r\n")
                .map_or(0, |at| at + 4);
            bytes.truncate(head_end);
            bytes.extend_from_slice(body.as_bytes());
            bytes
        };

        // Matching consumes the call, so every iteration gets a fresh matcher
        // (cloned outside the measurement).
        group.bench_with_input(
            BenchmarkId::new("exact", size),
            &identical,
            |bench, request| {
                bench.iter_batched_ref(
                    || matcher.clone(),
                    |matcher| black_box(matcher.match_request(request, Some("10.0.0.2:8080"), 1)),
                    BatchSize::PerIteration,
                );
            },
        );
        group.bench_with_input(
            BenchmarkId::new("near_miss", size),
            &near_miss,
            |bench, request| {
                bench.iter_batched_ref(
                    || matcher.clone(),
                    |matcher| black_box(matcher.match_request(request, Some("10.0.0.2:8080"), 1)),
                    BatchSize::PerIteration,
                );
            },
        );
        // Rejecting changes nothing: one matcher serves every iteration.
        let mut rejecting = matcher.clone();
        group.bench_with_input(
            BenchmarkId::new("unmatched", size),
            &unrelated,
            |bench, request| {
                bench
                    .iter(|| black_box(rejecting.match_request(request, Some("10.0.0.2:8080"), 1)));
            },
        );
        assert_eq!(
            matcher.clone().match_request(&near_miss, None, 1).matched,
            Some(target)
        );
        assert_eq!(rejecting.match_request(&unrelated, None, 1).matched, None);
    }
    group.finish();

    let mut group = criterion.benchmark_group("index");
    group.sample_size(10);
    for size in SIZES {
        let calls = session(size);
        group.bench_with_input(BenchmarkId::from_parameter(size), &calls, |bench, calls| {
            bench.iter(|| black_box(SessionMatcher::new(calls, MatchConfig::default())));
        });
    }
    group.finish();
}

criterion_group!(benches, matching);
criterion_main!(benches);
