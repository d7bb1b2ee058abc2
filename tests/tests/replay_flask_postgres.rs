//! A real Python stack: a Flask app under gunicorn with 2 pre-forked sync
//! workers (`flask_pg_app.py`), on PostgreSQL 15 with a password (SCRAM-
//! SHA-256, PostgreSQL's default authentication) through psycopg2 (simple
//! protocol, in transactions) and psycopg 3 (extended protocol: Parse/Bind/
//! Describe/Execute/Sync), and on redis through redis-py (a counter and a
//! cache). Each worker opens its connections lazily, in the first request
//! that needs them, so the connection set-up (and the SCRAM exchange) is
//! part of some session.
//!
//! Recorded with `koala record`: every session holds exactly its calls,
//! each worker's set-up is in its first session, the SCRAM exchange is
//! there once per PostgreSQL connection. Replayed with PostgreSQL and
//! redis stopped, one session at a time and 4 at a time: in the replay the
//! workers open their connections in other sessions than when recorded,
//! and still every session passes, every call is matched, and no call
//! waited for silence to end its request.

use std::collections::{BTreeMap, BTreeSet};
use std::thread;

use koala_tests::python_stacks::*;
use koala_tests::replay::*;
use koala_tests::*;
use serde_json::Value;

const WORKERS: usize = 2;
/// The silence that ends a request koala cannot frame, during the replays.
const IDLE_MS: u64 = 2000;
/// A replayed call waiting this long was framed by silence, not by the
/// protocol: far above framing and matching, far below [`IDLE_MS`].
const MAX_WAIT_MS: f64 = 500.0;

/// The requests, in the order the test sends them: the first two at once
/// (one per worker), then one at a time; 1 and 2 again at the end are
/// answered from the redis cache.
const IDS: [u32; 12] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 1, 2];

fn request(port: u16, id: u32) -> Vec<u8> {
    format!("GET /item/{id} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").into_bytes()
}

/// The app's exact answer, less its `Date` header.
fn response(id: u32, hits: u32) -> Vec<u8> {
    let (name, price) = pg_item(id);
    let source = if hits == 1 { "postgres" } else { "redis" };
    let body = format!(
        "{{\"id\": {id}, \"name\": \"{name}\", \"price\": {price}, \"stock\": {}, \"hits\": {hits}, \"source\": \"{source}\"}}\n",
        pg_stock(id)
    );
    format!(
        "HTTP/1.1 200 OK\r\nServer: gunicorn\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// An HTTP response without its `Date` header line.
fn without_date(response: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(response);
    let mut out = String::new();
    for line in text.split_inclusive("\r\n") {
        if !line.to_ascii_lowercase().starts_with("date:") {
            out.push_str(line);
        }
    }
    out.into_bytes()
}

/// The id of a session's `GET /item/<id>`.
fn session_item(session: &Session) -> u32 {
    request_item(session.inbound.request.as_bytes())
        .parse()
        .unwrap_or_else(|_| panic!("not an item request: {}", show(session)))
}

/// Is this call part of opening its connection: PostgreSQL's SSLRequest,
/// start-up message and SCRAM exchange, redis-py's handshake (`HELLO 3`,
/// `CLIENT MAINT_NOTIFICATIONS`, `CLIENT SETINFO`; `AUTH` and `SELECT`
/// when configured)?
fn is_setup_call(request: &[u8]) -> bool {
    if pg_is_startup(request) || pg_is_scram_first(request) || pg_is_scram_final(request) {
        return true;
    }
    // A RESP command's name: the first bulk string after `*<n>\r\n`.
    let text = String::from_utf8_lossy(request);
    let mut lines = text.split("\r\n");
    let (Some(count), Some(_length), Some(name)) = (lines.next(), lines.next(), lines.next())
    else {
        return false;
    };
    count.starts_with('*')
        && ["HELLO", "CLIENT", "AUTH", "SELECT"].contains(&name.to_ascii_uppercase().as_str())
}

/// The requests a request for `id` makes once its connections are open
/// (`hits` 1: a cache miss), as (peer, bytes).
fn expected_calls(id: u32, hits: u32, pg: &str, redis: &str) -> Vec<(String, Vec<u8>)> {
    let (name, price) = pg_item(id);
    let mut calls = vec![
        (
            redis.to_string(),
            resp_command(&["INCRBY", &format!("hits:{id}"), "1"]),
        ),
        (
            redis.to_string(),
            resp_command(&["GET", &format!("cache:item:{id}")]),
        ),
    ];
    if hits == 1 {
        calls.extend([
            (pg.to_string(), pg_query("BEGIN")),
            (
                pg.to_string(),
                pg_query(&format!("SELECT name, price FROM items WHERE id = {id}")),
            ),
            (pg.to_string(), pg_query("COMMIT")),
            (
                redis.to_string(),
                resp_command(&[
                    "SET",
                    &format!("cache:item:{id}"),
                    &format!("{name}:{price}"),
                    "EX",
                    "300",
                ]),
            ),
        ]);
    }
    calls.push((pg.to_string(), stock_query(id)));
    calls
}

/// psycopg 3's extended-protocol query for the stock of `id`: the integer
/// parameter bound in binary as an int2 (psycopg picks the smallest
/// integer type that holds it), the results in text.
fn stock_query(id: u32) -> Vec<u8> {
    let value = (id as u16).to_be_bytes();
    [
        pg_parse("SELECT count FROM stock WHERE item_id = $1", &[21]),
        pg_bind(&[(1, &value)], &[0]),
        pg_describe_portal(),
        pg_execute(),
        pg_sync(),
    ]
    .concat()
}

struct Recorded {
    recording: Recording,
    pg_peer: String,
    redis_peer: String,
    /// The app's environment, to start it again.
    env: Vec<(&'static str, String)>,
}

/// Records the app with real PostgreSQL and redis into `<dir>/record`,
/// then stops both (their ports closed).
fn record(dir: &TestDir) -> Recorded {
    let (mut postgres, pg_port) = start_postgres(dir);
    let (mut redis, redis_port) = start_redis(dir);
    let port = free_port();
    let env = vec![
        ("FLASK_PG_PORT", pg_port.to_string()),
        ("FLASK_PG_USER", PG_USER.to_string()),
        ("FLASK_PG_PASSWORD", PG_PASSWORD.to_string()),
        ("FLASK_PG_DATABASE", PG_DATABASE.to_string()),
        ("FLASK_PG_REDIS_PORT", redis_port.to_string()),
    ];
    let barrier = dir.join("barrier");
    std::fs::create_dir_all(&barrier).unwrap();
    let record = dir.join("record");
    let mut spec = gunicorn_spec("record-app", "flask_pg_app:app", port, WORKERS)
        .record_to(&record)
        .env("FLASK_PG_BARRIER_DIR", barrier.display())
        .env("FLASK_PG_WORKERS", WORKERS);
    for (key, value) in &env {
        spec = spec.env(key, value);
    }
    let mut app = spec.spawn(dir);
    app.wait_for_port(port);

    // The first two at once: each waits in its worker until the other
    // worker has one too.
    let mut hits: BTreeMap<u32, u32> = BTreeMap::new();
    let (first, rest) = IDS.split_at(WORKERS);
    let together: Vec<_> = first
        .iter()
        .map(|&id| {
            thread::spawn(move || (id, http_exchange(&mut connect(port), &request(port, id))))
        })
        .collect();
    let mut answers: Vec<(u32, Vec<u8>)> =
        together.into_iter().map(|t| t.join().unwrap()).collect();
    for &id in rest {
        answers.push((id, http_exchange(&mut connect(port), &request(port, id))));
    }
    for (id, answer) in &answers {
        let hit = hits.entry(*id).or_default();
        *hit += 1;
        assert_bytes(
            &without_date(answer),
            &response(*id, *hit),
            &format!("answer to {id}\n{}", app.output_report()),
        );
    }
    wait_for_sessions(&record, IDS.len());
    app.stop_cleanly();
    postgres.stop();
    redis.stop();
    assert_port_closed(pg_port, "PostgreSQL");
    assert_port_closed(redis_port, "redis");
    Recorded {
        recording: Recording::read(dir, "record", port),
        pg_peer: format!("127.0.0.1:{pg_port}"),
        redis_peer: format!("127.0.0.1:{redis_port}"),
        env,
    }
}

#[test]
fn replay_flask_postgres() {
    let dir = TestDir::new("replay_flask_postgres");
    let recorded = record(&dir);
    let recording = &recorded.recording;
    let what = describe_dir(&recording.dir);
    let (pg, redis) = (&recorded.pg_peer, &recorded.redis_peer);

    // --- The recording: one session per request, from both workers.
    assert_eq!(recording.sessions.len(), IDS.len(), "{what}");
    let pids: BTreeSet<u32> = recording.sessions.iter().map(|(_, s)| s.pid).collect();
    assert_eq!(pids.len(), WORKERS, "sessions from each worker\n{what}");

    // Each session: its own calls after the set-up of the connections it
    // opened; the set-up is in the first session of each worker, whole
    // (redis-py's handshake, then for psycopg2 and psycopg 3 each: the
    // start-up message, SCRAM's client-first and client-final messages).
    let mut seen: BTreeMap<u32, u32> = BTreeMap::new();
    let mut setup_sessions: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    let mut by_item: BTreeMap<(u32, u32), &Session> = BTreeMap::new();
    // In the order they were served: the second request for an id hits the
    // cache.
    let mut sessions: Vec<&Session> = recording.sessions.iter().map(|(_, s)| s).collect();
    sessions.sort_by_key(|s| s.inbound.request_ns);
    for session in sessions {
        let id = session_item(session);
        let hits = {
            let hit = seen.entry(id).or_default();
            *hit += 1;
            *hit
        };
        by_item.insert((id, hits), session);
        assert_bytes(
            session.inbound.request.as_bytes(),
            &request(recording.port, id),
            &show(session),
        );
        assert_bytes(
            &without_date(session.inbound.response.as_bytes()),
            &response(id, hits),
            &show(session),
        );
        let (setup, own): (Vec<&Exchange>, Vec<&Exchange>) = session
            .calls
            .iter()
            .partition(|c| is_setup_call(c.request.as_bytes()));
        let own: Vec<(String, Vec<u8>)> = own
            .iter()
            .map(|c| (c.peer.clone(), c.request.as_bytes().to_vec()))
            .collect();
        let expected = expected_calls(id, hits, pg, redis);
        assert_eq!(own.len(), expected.len(), "calls of {}", show(session));
        for (index, ((peer, bytes), (want_peer, want))) in own.iter().zip(&expected).enumerate() {
            assert_eq!(peer, want_peer, "call {index} of {}", show(session));
            assert_bytes(bytes, want, &format!("call {index} of {}", show(session)));
        }
        if !setup.is_empty() {
            setup_sessions
                .entry(session.pid)
                .or_default()
                .push(session.id.clone());
        }
    }
    assert_eq!(
        setup_sessions.keys().copied().collect::<BTreeSet<_>>(),
        pids,
        "each worker's set-up is in one session\n{what}"
    );
    assert!(
        setup_sessions.values().all(|ids| ids.len() == 1),
        "{setup_sessions:?}\n{what}"
    );

    // The SCRAM exchange, once per PostgreSQL connection (2 per worker):
    // start-up (answered AuthenticationSASL), client-first (answered
    // SASLContinue), client-final (answered SASLFinal, then
    // AuthenticationOk ... ReadyForQuery).
    let mut pg_connections: BTreeMap<(u32, u64), Vec<&Exchange>> = BTreeMap::new();
    for (_, session) in &recording.sessions {
        for call in session.calls.iter().filter(|c| &c.peer == pg) {
            let conn = call
                .conn
                .unwrap_or_else(|| panic!("no conn id: {}", show(session)));
            pg_connections
                .entry((session.pid, conn))
                .or_default()
                .push(call);
        }
    }
    assert_eq!(pg_connections.len(), 2 * WORKERS, "{what}");
    for ((pid, conn), calls) in &pg_connections {
        let what = format!("PostgreSQL connection {conn} of {pid}\n{what}");
        assert!(calls.len() >= 4, "{what}");
        let [ssl, startup, first, last] = [calls[0], calls[1], calls[2], calls[3]];
        // libpq's sslmode=prefer asks for TLS first; the server says no.
        assert_eq!(ssl.seq, Some(0), "{what}");
        assert_bytes(ssl.request.as_bytes(), &pg_ssl_request(), &what);
        assert_bytes(ssl.response.as_bytes(), b"N", &what);
        assert!(pg_is_startup(startup.request.as_bytes()), "{what}");
        let parameters = pg_startup_parameters(startup.request.as_bytes());
        assert!(
            parameters.contains(&("user".to_string(), PG_USER.to_string()))
                && parameters.contains(&("database".to_string(), PG_DATABASE.to_string())),
            "{parameters:?}\n{what}"
        );
        assert_eq!(
            pg_auth_code(startup.response.as_bytes()),
            Some(10),
            "{what}"
        );
        assert!(pg_is_scram_first(first.request.as_bytes()), "{what}");
        assert_eq!(pg_auth_code(first.response.as_bytes()), Some(11), "{what}");
        assert!(pg_is_scram_final(last.request.as_bytes()), "{what}");
        assert_eq!(pg_auth_code(last.response.as_bytes()), Some(12), "{what}");
        let messages = pg_messages(last.response.as_bytes()).expect("backend messages");
        assert!(
            messages
                .iter()
                .any(|(kind, body)| *kind == b'R' && *body == [0, 0, 0, 0]),
            "AuthenticationOk\n{what}"
        );
        assert_eq!(
            messages.last().map(|m| m.0),
            Some(b'Z'),
            "ReadyForQuery\n{what}"
        );
        let scram = calls
            .iter()
            .filter(|c| pg_is_scram_first(c.request.as_bytes()))
            .count()
            + calls
                .iter()
                .filter(|c| pg_is_scram_final(c.request.as_bytes()))
                .count();
        assert_eq!(scram, 2, "one SCRAM exchange on the connection\n{what}");
    }

    // One query call byte for byte: psycopg 3's extended protocol for item 5,
    // and its answer.
    let five = by_item[&(5, 1)];
    let call = five
        .calls
        .iter()
        .find(|c| c.request.as_bytes() == stock_query(5).as_slice())
        .unwrap_or_else(|| panic!("no stock query: {}", show(five)));
    // ParseComplete, BindComplete, RowDescription (one text column named
    // `count`; its table's OID depends on the server), DataRow,
    // CommandComplete, ReadyForQuery (idle: autocommit).
    let answer = call.response.as_bytes();
    let messages = pg_messages(answer).expect("backend messages");
    let kinds: Vec<u8> = messages.iter().map(|m| m.0).collect();
    assert_eq!(kinds, b"12TDCZ", "{}", show(five));
    assert_bytes(
        &answer[..10],
        &[pg_message(b'1', b""), pg_message(b'2', b"")].concat(),
        "ParseComplete, BindComplete",
    );
    assert!(
        messages[2].1.starts_with(b"\0\x01count\0"),
        "{}",
        show(five)
    );
    let rows = [
        pg_data_row(&[Some(&pg_stock(5).to_string())]),
        pg_command_complete("SELECT 1"),
        pg_ready(b'I'),
    ]
    .concat();
    assert_bytes(
        &answer[answer.len().saturating_sub(rows.len())..],
        &rows,
        "the answer's rows",
    );

    // --- Replays, PostgreSQL and redis stopped, of the sessions in another
    // order: those recorded without set-up first. Whichever worker takes
    // the first replayed session opens its connections in a session whose
    // recording has none.
    write_replay_order(&dir, recording);
    for concurrency in [1, 4] {
        let report_file = format!("r{concurrency}.json");
        let mut args: Vec<String> = vec!["replay".into(), REPLAY_DIR.into(), "--lib".into()];
        args.push(koala_lib().display().to_string());
        args.extend(
            [
                "-j",
                &concurrency.to_string(),
                "--report",
                &report_file,
                "--service-log",
                &format!("service{concurrency}.log"),
                "--",
            ]
            .map(String::from),
        );
        args.push(python().display().to_string());
        args.extend(gunicorn_args("flask_pg_app:app", recording.port, WORKERS));
        let mut env: Vec<(&str, String)> = recorded.env.clone();
        env.push(("KOALA_REPLAY_IDLE_MS", IDLE_MS.to_string()));
        if concurrency >= WORKERS {
            // Several in flight: the first request of each worker waits for
            // the other's, so both workers serve (and open connections in)
            // one of the first sessions, none of which has set-up recorded.
            let barrier = dir.join(format!("barrier-replay{concurrency}"));
            std::fs::create_dir_all(&barrier).unwrap();
            env.push(("FLASK_PG_BARRIER_DIR", barrier.display().to_string()));
            env.push(("FLASK_PG_WORKERS", WORKERS.to_string()));
        }
        let run = run_koala(&dir, &format!("koala-replay-{concurrency}"), &args, &env);
        let out = run.output();
        let report = read_report(&dir.join(&report_file));
        let opened_elsewhere = assert_replayed(&report, recording, &out);
        run.assert_all_passed(IDS.len());
        run.assert_replaying(IDS.len(), 1, concurrency);
        let workers = if concurrency >= WORKERS { WORKERS } else { 1 };
        assert!(
            opened_elsewhere.len() >= workers,
            "{workers} worker(s) should have opened their connections in sessions recorded \
             without set-up, did in {opened_elsewhere:?}\n{out}"
        );
    }
}

/// The directory of the reordered recording the replays read.
const REPLAY_DIR: &str = "replay-sessions";

/// Writes `<dir>/replay-sessions/all.jsonl`: the recording's lines exactly
/// as written, background records first, then the sessions recorded
/// without set-up, then those with, each group in recording order.
fn write_replay_order(dir: &TestDir, recording: &Recording) {
    let mut lines = record_lines(&recording.dir);
    lines.sort_by_key(|(_, record)| {
        let setup = record
            .calls
            .iter()
            .any(|c| is_setup_call(c.request.as_bytes()));
        (!record.is_background(), setup, record.inbound.request_ns)
    });
    let mut text = String::new();
    for (line, _) in &lines {
        text.push_str(line);
        text.push('\n');
    }
    std::fs::create_dir_all(dir.join(REPLAY_DIR)).unwrap();
    std::fs::write(dir.join(REPLAY_DIR).join("all.jsonl"), text).unwrap();
}

/// Asserts a replay's report: every session passed; every call the app made
/// was answered from the recording: matched to a recorded call, or a
/// connection's set-up answered from a recorded set-up (none unmatched);
/// every call that is not set-up is the recorded call of its session, in
/// order, served its recorded answer; the only recorded calls not made are
/// set-up calls; no call waited anywhere near the silence window. Returns
/// the ids of the sessions whose replay opened connections (made set-up
/// calls) although their recording has no set-up.
#[track_caller]
fn assert_replayed(report: &Value, recording: &Recording, out: &str) -> Vec<String> {
    let entries = report_entries(report);
    let what = |entry: &Value, problem: &str| format!("{problem}\n{entry}\n{out}");
    assert_eq!(entries.len(), recording.sessions.len(), "{out}");
    let mut made = 0;
    let mut opened_elsewhere = Vec::new();
    for entry in entries {
        let id = entry_id(entry);
        let recorded = recording.session(id);
        assert_eq!(
            entry["verdict"].as_str(),
            Some("pass"),
            "{}",
            what(entry, "verdict")
        );
        let result = entry_result(entry);
        assert!(
            result.unmatched.is_empty(),
            "{}",
            what(entry, "unmatched calls")
        );
        made += result.calls.len();
        let mut own = Vec::new();
        for (index, call) in result.calls.iter().enumerate() {
            assert!(
                call.matched.is_some() || call.setup,
                "{}",
                what(entry, &format!("call {index} neither matched nor set-up"))
            );
            assert!(
                call.wait_ms < MAX_WAIT_MS,
                "{}",
                what(
                    entry,
                    &format!(
                        "call {index} waited {} ms (KOALA_REPLAY_IDLE_MS {IDLE_MS})",
                        call.wait_ms
                    )
                )
            );
            if !is_setup_call(call.request.as_bytes()) {
                own.push(call);
            }
        }
        let expected: Vec<(usize, &Exchange)> = recorded
            .calls
            .iter()
            .enumerate()
            .filter(|(_, c)| !is_setup_call(c.request.as_bytes()))
            .collect();
        if own.len() < result.calls.len() && expected.len() == recorded.calls.len() {
            opened_elsewhere.push(id.to_string());
        }
        assert_eq!(
            own.len(),
            expected.len(),
            "{}",
            what(entry, "the session's own calls (not set-up)")
        );
        for (n, (call, (index, rec))) in own.iter().zip(&expected).enumerate() {
            let problem = format!("own call {n}: recorded call {index}");
            assert_eq!(call.matched, Some(*index), "{}", what(entry, &problem));
            assert_eq!(call.peer, rec.peer, "{}", what(entry, &problem));
            assert_bytes(
                call.request.as_bytes(),
                rec.request.as_bytes(),
                &what(entry, &problem),
            );
            assert_bytes(
                call.served.as_bytes(),
                rec.response.as_bytes(),
                &what(entry, &problem),
            );
        }
        for missing in &result.missing {
            assert!(
                is_setup_call(missing.request.as_bytes()),
                "{}",
                what(
                    entry,
                    &format!("recorded call {} (not set-up) was not made", missing.index)
                )
            );
        }
    }
    // Every call made is counted matched, or set-up answered from a
    // recorded set-up; none unmatched.
    let summary = &report["summary"];
    let calls = &summary["calls"];
    assert_eq!(
        summary["sessions"]["passed"].as_u64(),
        Some(entries.len() as u64),
        "{out}"
    );
    assert_eq!(
        calls["matched"].as_u64().unwrap_or_default() + calls["setup"].as_u64().unwrap_or_default(),
        made as u64,
        "calls matched + set-up = calls made ({made}): {summary}\n{out}"
    );
    assert_eq!(calls["unmatched"].as_u64(), Some(0), "{summary}\n{out}");
    opened_elsewhere
}
