//! The `event_loop_*` tests: a single-threaded service (aiohttp, Node
//! `http`) with several requests in flight at once, each calling redis
//! and an HTTP backend through real client libraries, recorded and
//! replayed by `koala record` / `koala replay`, which load the automatic
//! request-context helpers (`helpers/python`, `helpers/node`) by
//! themselves. The service has no hint of its own.
//!
//! In flight at once, by construction: every request's backend call is
//! held by `event_loop_backend.py` until all of them arrived (`together`),
//! then each is answered after its own delay, so the calls complete in
//! another order than the requests came. Whatever the timing, each session
//! must hold exactly its own calls.

use std::net::TcpStream;
use std::path::PathBuf;
use std::thread;

use crate::replay::*;
use crate::*;

/// The requests: item id, and the backend's delay (ms) before it answers.
pub const REQUESTS: [(&str, u32); 6] = [
    ("ev1", 300),
    ("ev2", 0),
    ("ev3", 200),
    ("ev4", 50),
    ("ev5", 250),
    ("ev6", 100),
];

/// A service under test.
pub struct Stack {
    /// The program and its arguments before `PORT REDIS_PORT BACKEND_PORT`.
    pub command: Vec<String>,
    /// The program name sessions carry.
    pub program: &'static str,
    /// The redis command its client sends for the hit counter.
    pub incr: &'static [&'static str],
}

/// One request as the test client made it.
pub struct Sent {
    pub id: &'static str,
    pub client: String,
    pub request: Vec<u8>,
    pub response: Vec<u8>,
}

/// What a recording run left.
pub struct Recorded {
    /// Kept so a replay can use the recording.
    pub dir: TestDir,
    pub port: u16,
    pub redis_port: u16,
    pub backend_port: u16,
    pub sessions: Vec<Session>,
    pub background: Vec<Session>,
    pub sent: Vec<Sent>,
    pub pid: u32,
    /// What `koala record` printed on stderr (its summary).
    pub koala_stderr: String,
    redis: Option<Program>,
    backend: Option<Program>,
}

impl Recorded {
    /// Stops redis and the backend: a replay must not reach them.
    pub fn stop_dependencies(&mut self) {
        for mut program in [self.redis.take(), self.backend.take()]
            .into_iter()
            .flatten()
        {
            program.stop();
        }
        assert!(!is_listening(self.redis_port), "redis is stopped");
        assert!(!is_listening(self.backend_port), "the backend is stopped");
    }
}

/// How a recording run sends its requests.
#[derive(Clone)]
pub struct Plan {
    /// Item id and backend delay (ms) of each request.
    pub requests: Vec<(&'static str, u32)>,
    /// All at once, each on its own connection (the backend holds every
    /// call until all arrived), or one after the other.
    pub at_once: bool,
    /// Each request carries `X-Request-Id: rid-<id>`.
    pub request_ids: bool,
}

impl Plan {
    /// [`REQUESTS`], all at once, no request id.
    pub fn all_at_once() -> Plan {
        Plan {
            requests: REQUESTS.to_vec(),
            at_once: true,
            request_ids: false,
        }
    }

    /// How many backend calls `event_loop_backend.py` waits for.
    fn together(&self) -> usize {
        if self.at_once { self.requests.len() } else { 1 }
    }

    /// The request the test sends for item `id`.
    pub fn request(&self, port: u16, id: &str, delay: u32) -> Vec<u8> {
        let request_id = if self.request_ids {
            format!("X-Request-Id: rid-{id}\r\n")
        } else {
            String::new()
        };
        format!(
            "GET /item/{id}?delay={delay}&together={} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{request_id}\r\n",
            self.together()
        )
        .into_bytes()
    }
}

/// The request [`Plan::all_at_once`] sends for item `id`.
pub fn request(port: u16, id: &str, delay: u32) -> Vec<u8> {
    Plan::all_at_once().request(port, id, delay)
}

/// The body every stack answers for item `id`.
pub fn body(id: &str) -> String {
    format!("item {id}: value=value-{id} backend=backend says {id} hits=1\n")
}

/// `koala record --to record -- COMMAND PORT REDIS BACKEND`, all requests
/// sent at once, each on its own connection; returns once the sessions are
/// written and the service stopped.
pub fn record(test: &str, stack: &Stack, env: &[(&str, &str)]) -> Recorded {
    record_plan(test, stack, &Plan::all_at_once(), env)
}

/// [`record`], sending the requests as `plan` says.
pub fn record_plan(test: &str, stack: &Stack, plan: &Plan, env: &[(&str, &str)]) -> Recorded {
    let dir = TestDir::new(test);
    let (redis, redis_port) = start_redis(&dir);
    let ids: Vec<&str> = plan.requests.iter().map(|(id, _)| *id).collect();
    seed_items(redis_port, &ids);
    let backend_port = free_port();
    let mut backend = Spec::python_fixture("backend", "event_loop_backend.py")
        .arg(backend_port)
        .spawn(&dir);
    backend.wait_for_port(backend_port);

    let port = free_port();
    let mut spec = Spec::new("koala", koala_bin())
        .args(["record", "--lib"])
        .arg(koala_lib().display())
        .args(["--to", "record", "--"])
        .args(&stack.command)
        .args([port, redis_port, backend_port])
        // No session may end for idleness while the backend holds calls.
        .env("KOALA_SESSION_IDLE_MS", 10_000);
    for (key, value) in env {
        spec = spec.env(key, value);
    }
    let mut koala = spec.spawn(&dir);
    koala.wait_for_port(port);

    let exchange = move |plan: Plan, id: &'static str, delay: u32| {
        let mut stream = connect(port);
        let request = plan.request(port, id, delay);
        let response = http_exchange(&mut stream, &request);
        let client = stream.local_addr().unwrap().to_string();
        let sent = Sent {
            id,
            client,
            request,
            response,
        };
        (sent, Some(stream))
    };
    let mut done = Vec::new();
    if plan.at_once {
        let clients: Vec<thread::JoinHandle<(Sent, Option<TcpStream>)>> = plan
            .requests
            .iter()
            .map(|&(id, delay)| {
                let plan = plan.clone();
                thread::spawn(move || exchange(plan, id, delay))
            })
            .collect();
        done.extend(
            clients
                .into_iter()
                .map(|c| c.join().expect("client thread")),
        );
    } else {
        // Each connection closed before the next request is sent.
        for &(id, delay) in &plan.requests {
            let (one, _closed) = exchange(plan.clone(), id, delay);
            done.push((one, None));
        }
    }
    let mut sent = Vec::new();
    let mut streams = Vec::new();
    for (one, stream) in done {
        let text = String::from_utf8_lossy(&one.response).into_owned();
        assert!(
            text.starts_with("HTTP/1.1 200 OK\r\n") && text.ends_with(&body(one.id)),
            "response to {}: {text:?}\n{}",
            one.id,
            koala.output_report()
        );
        sent.push(one);
        streams.extend(stream);
    }
    drop(streams); // each session ends with its connection
    let record = dir.join("record");
    wait_for_sessions(&record, plan.requests.len());
    let pid = koala.pid();
    koala.stop_cleanly();
    let koala_stderr = koala.stderr();
    let sessions = read_sessions(&record);
    let background = background_records(&record);
    Recorded {
        dir,
        port,
        redis_port,
        backend_port,
        sessions,
        background,
        sent,
        pid,
        koala_stderr,
        redis: Some(redis),
        backend: Some(backend),
    }
}

/// Every session holds exactly its own three calls, with their exact
/// bytes, in order; no call of any request is in the background record.
pub fn assert_own_calls(run: &Recorded, stack: &Stack) {
    let all: Vec<String> = run.sessions.iter().map(show).collect();
    let all = all.join("\n");
    assert_eq!(
        run.sessions.len(),
        run.sent.len(),
        "one session per request:\n{all}"
    );
    let redis_peer = format!("127.0.0.1:{}", run.redis_port);
    let backend_peer = format!("127.0.0.1:{}", run.backend_port);
    for sent in &run.sent {
        let id = sent.id;
        let found: Vec<&Session> = run
            .sessions
            .iter()
            .filter(|s| s.inbound.request.as_bytes() == sent.request.as_slice())
            .collect();
        assert_eq!(found.len(), 1, "one session for {id}:\n{all}");
        let session = found[0];
        let what = format!("session of {id}: {}", show(session));
        assert_eq!(session.program, stack.program, "{what}");
        assert_ne!(session.pid, run.pid, "{what}: the service, not koala");
        assert_exchange(
            &session.inbound,
            &sent.client,
            &sent.request,
            &sent.response,
            &format!("{what}\ninbound"),
        );
        assert_eq!(
            session.calls.len(),
            3,
            "{what}\nexactly GET item:{id}, the backend call for {id}, {} hits:{id}",
            stack.incr.join(" ")
        );
        assert_exchange(
            &session.calls[0],
            &redis_peer,
            &resp_command(&["GET", &format!("item:{id}")]),
            &resp_bulk(&format!("value-{id}")),
            &format!("{what}\nGET"),
        );
        let backend = &session.calls[1];
        assert_eq!(backend.peer, backend_peer, "{what}\nbackend call");
        let line = format!(
            "GET /backend/{id}?{} HTTP/1.1\r\n",
            String::from_utf8_lossy(&sent.request)
                .split_whitespace()
                .nth(1)
                .and_then(|target| target.split_once('?'))
                .map(|(_, query)| query.to_string())
                .unwrap()
        );
        assert!(
            backend.request.as_bytes().starts_with(line.as_bytes()),
            "{what}\nbackend call starts with {line:?}"
        );
        assert_bytes(
            backend.response.as_bytes(),
            &backend_response(id),
            &format!("{what}\nbackend response"),
        );
        let mut incr: Vec<String> = stack.incr.iter().map(|s| s.to_string()).collect();
        incr.insert(1, format!("hits:{id}"));
        let incr: Vec<&str> = incr.iter().map(String::as_str).collect();
        assert_exchange(
            &session.calls[2],
            &redis_peer,
            &resp_command(&incr),
            b":1\r\n",
            &format!("{what}\nhits"),
        );
        assert!(
            session.calls.iter().all(|c| !c.unattributed),
            "{what}: attributed"
        );
    }
    for record in &run.background {
        for call in &record.calls {
            let request = String::from_utf8_lossy(call.request.as_bytes()).into_owned();
            assert!(
                !run.sent.iter().any(|sent| request.contains(sent.id)),
                "a request's call in the background record: {}",
                show(record)
            );
        }
    }
}

/// `koala replay record --concurrency N -- COMMAND PORT REDIS BACKEND`
/// with the dependencies stopped: every session passes, every call
/// answered from its own session — but for the calls recorded
/// unattributed (a hand-off thread's, in the background record), which
/// answer the matching request of whichever session makes it: flagged in
/// that session's report entry, counted in the summary (text and JSON).
pub fn assert_replays(run: &Recorded, stack: &Stack, concurrency: usize) {
    let recording = Recording::read(&run.dir, "record", run.port);
    let report = format!("r-{concurrency}.json");
    let mut args: Vec<String> = ["replay", "record", "--lib"].map(String::from).to_vec();
    args.push(koala_lib().display().to_string());
    args.extend(
        [
            "--concurrency",
            &concurrency.to_string(),
            "--report",
            &report,
            "--",
        ]
        .map(String::from),
    );
    args.extend(stack.command.iter().cloned());
    args.extend([run.port, run.redis_port, run.backend_port].map(|p| p.to_string()));
    let replay = run_koala(&run.dir, &format!("replay-{concurrency}"), &args, &[]);
    let n = run.sent.len();
    replay.assert_all_passed(n);
    replay.assert_summary([n, n, 0, 0], [recording.calls(), 0, 0, 0]);
    let unattributed: Vec<&Exchange> = run
        .background
        .iter()
        .flat_map(|record| &record.calls)
        .filter(|call| call.unattributed)
        .collect();
    let report = read_report(&run.dir.join(&report));
    let flagged = assert_report_replayed(&report, &recording, &unattributed);
    // Each call recorded unattributed answers its request once: in the
    // report of the session that made it when that session is known (one
    // replay in flight), else in none, counted by the inbound server.
    let n = unattributed.len();
    let row = summary_row(&replay, "unattributed");
    let expected = if flagged == n {
        n.to_string()
    } else {
        format!(
            "{n} ({} while several replays were in flight, in no session's report)",
            n - flagged
        )
    };
    assert_eq!(
        row.as_deref(),
        Some(expected.as_str()),
        "the summary counts the calls answered unattributed\n{}",
        replay.output()
    );
    let summary = &report["summary"];
    assert_eq!(
        (
            summary["calls"]["unattributed"].as_u64(),
            summary["unattributed_calls_of_no_session"].as_u64()
        ),
        (Some(n as u64), Some((n - flagged) as u64)),
        "the JSON report's summary: {summary}"
    );
    if concurrency == 1 {
        // One session in flight: each request a hand-off thread makes is
        // its session's, and reported there.
        assert_eq!(flagged, n, "{}", replay.output());
    }
}

/// The value of `label`'s row in the summary `koala replay` printed.
fn summary_row(run: &KoalaRun, label: &str) -> Option<String> {
    let (_, summary) = run.stdout.split_once("Summary\n")?;
    summary.lines().find_map(|line| {
        let rest = line.trim_start().strip_prefix(label)?;
        rest.starts_with("  ").then(|| rest.trim().to_string())
    })
}

/// Every recorded session has one report entry that passed, its calls
/// replayed exactly from its own recorded calls, and its response the
/// recorded one byte for byte but for the `Date` header: aiohttp writes
/// the date it caches once a second for the whole event loop, which a
/// replay cannot set per request. A call flagged `unattributed` must be
/// the session's own backend request, answered with the recorded
/// unattributed call of the same bytes. Returns how many were flagged.
fn assert_report_replayed(
    report: &serde_json::Value,
    recording: &Recording,
    unattributed: &[&Exchange],
) -> usize {
    let entries = report_entries(report);
    assert_eq!(
        entries.len(),
        recording.sessions.len(),
        "one report entry per session"
    );
    let without_date = |bytes: &[u8]| -> String {
        String::from_utf8_lossy(bytes)
            .split("\r\n")
            .filter(|line| !line.to_ascii_lowercase().starts_with("date:"))
            .collect::<Vec<_>>()
            .join("\r\n")
    };
    let mut flagged = 0;
    for entry in entries {
        let recorded = recording.session(entry_id(entry));
        assert_eq!(entry["verdict"].as_str(), Some("pass"), "{entry}");
        let result = entry_result(entry);
        let what = format!("report entry {}: {}", recorded.id, show(recorded));
        assert_eq!(
            without_date(result.response.as_bytes()),
            without_date(recorded.inbound.response.as_bytes()),
            "{what}\nresponse"
        );
        let (handed_off, own): (Vec<ReplayedCall>, Vec<ReplayedCall>) =
            result.calls.iter().cloned().partition(|c| c.unattributed);
        assert_calls_replayed(&own, recorded, &what);
        // `GET /item/ID?...`: its backend request is `GET /backend/ID?...`.
        let inbound = String::from_utf8_lossy(recorded.inbound.request.as_bytes()).into_owned();
        let id = inbound
            .strip_prefix("GET /item/")
            .and_then(|rest| rest.split(['?', ' ']).next())
            .unwrap_or_else(|| panic!("{what}: an item request"));
        for call in &handed_off {
            let request = call.request.as_bytes();
            assert!(
                request.starts_with(format!("GET /backend/{id}?").as_bytes()),
                "{what}\nflagged unattributed: {}",
                String::from_utf8_lossy(request)
            );
            let source = unattributed
                .iter()
                .find(|u| u.request.as_bytes() == request)
                .unwrap_or_else(|| panic!("{what}\nno unattributed recorded call sent it"));
            assert_eq!(call.matched, None, "{what}");
            assert_bytes(
                call.served.as_bytes(),
                source.response.as_bytes(),
                &format!("{what}\nserved unattributed"),
            );
        }
        flagged += handed_off.len();
        assert_eq!(
            entry["calls"]["unattributed"].as_u64(),
            Some(handed_off.len() as u64),
            "{what}\nits count"
        );
        assert!(result.unmatched.is_empty(), "{what}\nunmatched");
        assert!(result.missing.is_empty(), "{what}\nmissing");
    }
    flagged
}

/// Starts the service itself, without the library (no LD_PRELOAD, no
/// KOALA_* variable) and with `env` added, sends every request at once and
/// returns the answers, by id.
pub fn serve_without_koala(
    dir: &TestDir,
    name: &str,
    stack: &Stack,
    env: &[(&str, String)],
) -> Vec<(&'static str, Vec<u8>)> {
    let (_redis, redis_port) = start_redis(dir);
    let ids: Vec<&str> = REQUESTS.iter().map(|(id, _)| *id).collect();
    seed_items(redis_port, &ids);
    let backend_port = free_port();
    let mut backend = Spec::python_fixture(&format!("{name}-backend"), "event_loop_backend.py")
        .arg(backend_port)
        .spawn(dir);
    backend.wait_for_port(backend_port);
    let port = free_port();
    let mut spec = Spec::new(name, &stack.command[0])
        .args(&stack.command[1..])
        .args([port, redis_port, backend_port]);
    for (key, value) in env {
        spec = spec.env(key, value);
    }
    let mut service = spec.spawn(dir);
    service.wait_for_port(port);
    let clients: Vec<thread::JoinHandle<(&'static str, Vec<u8>)>> = REQUESTS
        .iter()
        .map(|&(id, delay)| {
            thread::spawn(move || {
                let mut stream = connect(port);
                (id, http_exchange(&mut stream, &request(port, id, delay)))
            })
        })
        .collect();
    let answers = clients
        .into_iter()
        .map(|c| c.join().expect("client thread"))
        .collect();
    service.stop_cleanly();
    answers
}

/// The helpers' directory of the source tree.
pub fn helpers_dir() -> PathBuf {
    workspace_root().join("helpers")
}
