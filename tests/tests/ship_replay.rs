//! A recording shipped to NATS JetStream and replayed from the stream: one
//! `koala replay nats://.../STREAM` process, then two `koala replay
//! --consumer` processes sharing one durable consumer, each with its own
//! service. Every session is replayed exactly once across the two, and
//! their merged report (`koala report merge`) equals the single process's
//! report but for timings and the worker each session ran on.

use std::collections::BTreeSet;
use std::time::Duration;

use koala_tests::nats::*;
use koala_tests::replay::*;
use koala_tests::*;
use serde_json::{Value, json};

const CONNECTIONS: usize = 4;
const PER_CONNECTION: usize = 5;

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// `koala replay SOURCE OPTIONS --lib LIB -- python3 -u redis_service.py ARGS`.
fn replay_args(source: &str, options: &[String], service_args: &[String]) -> Vec<String> {
    let mut all = vec!["replay".to_string(), source.to_string()];
    all.extend(options.iter().cloned());
    all.extend(args(&["--lib", &koala_lib().display().to_string(), "--"]));
    all.push(python().display().to_string());
    all.push("-u".into());
    all.push(fixture("redis_service.py").display().to_string());
    all.extend(service_args.iter().cloned());
    all
}

/// A report without what differs between two runs of the same sessions:
/// timings, the inbound server's replay counter, the service's address.
fn comparable(report: &Value) -> Value {
    let sessions: Vec<Value> = report["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .map(|session| {
            let mut session = session.clone();
            let object = session.as_object_mut().unwrap();
            object.remove("latency_ms");
            if let Some(result) = object.get_mut("result").and_then(Value::as_object_mut) {
                for key in ["durations", "replay", "sut"] {
                    result.remove(key);
                }
                for call in result
                    .get_mut("calls")
                    .and_then(Value::as_array_mut)
                    .into_iter()
                    .flatten()
                {
                    let call = call.as_object_mut().unwrap();
                    call.remove("at_ms");
                    call.remove("wait_ms");
                }
            }
            session
        })
        .collect();
    json!({"sessions": sessions,
           "summary": {"sessions": report["summary"]["sessions"], "calls": report["summary"]["calls"]}})
}

fn ids(report: &Value) -> Vec<String> {
    report["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn two_consumers_replay_each_session_once() {
    let dir = TestDir::new("ship_replay");
    let service = record_items(&dir, "redis_service.py", &[], CONNECTIONS, PER_CONNECTION);
    let total = CONNECTIONS * PER_CONNECTION;
    let recorded: BTreeSet<String> = service
        .recording
        .sessions
        .iter()
        .map(|(_, s)| s.id.clone())
        .collect();
    assert_eq!(recorded.len(), total);

    let nats = Nats::single(&dir, ServerAuth::None);
    let run = run_koala(
        &dir,
        "ship",
        &args(&[
            "ship",
            "record",
            "--to",
            &nats.url(),
            "--stream",
            "KOALA",
            "--create",
            "--once",
        ]),
        &[],
    );
    assert_eq!(run.code, Some(0), "{}", run.output());
    let source = format!("{}/KOALA", nats.url());

    // koala show reads the stream.
    let show = run_koala(&dir, "show", &args(&["show", &source]), &[]);
    assert_eq!(show.code, Some(0), "{}", show.output());
    assert!(
        show.stdout.contains(&format!("{} session(s)", total + 1)),
        "{total} sessions and the background record\n{}",
        show.output()
    );

    // One process replays the whole stream.
    let single = run_koala(
        &dir,
        "replay-single",
        &replay_args(&source, &args(&["--report", "single.json"]), &service.args),
        &[],
    );
    single.assert_all_passed(total);
    let single_report = read_report(&dir.join("single.json"));
    assert_eq!(
        ids(&single_report).into_iter().collect::<BTreeSet<_>>(),
        recorded
    );
    let first = &single_report["sessions"][0];
    assert_eq!(
        first["file"].as_str(),
        Some(source.as_str()),
        "the stream stands for the file"
    );

    // A time range and a program: only those sessions, by replay and show.
    let mut times: Vec<(u64, String)> = service
        .recording
        .sessions
        .iter()
        .map(|(_, s)| (s.inbound.request_ns, s.id.clone()))
        .collect();
    times.sort();
    // Bounds half-way between two sessions well apart (Unix seconds with
    // microseconds): from the 5th session on, up to before the 16th.
    let between = |k: usize| {
        let (before, after) = (times[k - 1].0, times[k].0);
        assert!(
            after - before > 10_000,
            "sessions {k} and {}: too close",
            k - 1
        );
        format!("{:.6}", (before + (after - before) / 2) as f64 / 1e9)
    };
    let (since, until) = (between(4), between(15));
    let wanted: BTreeSet<String> = times[4..15].iter().map(|(_, id)| id.clone()).collect();
    let program = service.recording.sessions[0].1.program.clone();
    let filters = args(&[
        "--program",
        &program,
        "--since",
        &since,
        "--until",
        &until,
        "--report",
        "range.json",
    ]);
    let range = run_koala(
        &dir,
        "replay-range",
        &replay_args(&source, &filters, &service.args),
        &[],
    );
    range.assert_all_passed(wanted.len());
    let range_ids: BTreeSet<String> = ids(&read_report(&dir.join("range.json")))
        .into_iter()
        .collect();
    assert_eq!(range_ids, wanted, "only the sessions of the time range");
    let show = run_koala(
        &dir,
        "show-range",
        &args(&[
            "show",
            &source,
            "--program",
            &program,
            "--since",
            &since,
            "--until",
            &until,
        ]),
        &[],
    );
    assert_eq!(show.code, Some(0), "{}", show.output());
    assert!(
        show.stdout.contains(&format!(
            "{} session(s), {} outside the time range not shown",
            wanted.len() + 1,
            total - wanted.len()
        )),
        "the range's sessions and the background record\n{}",
        show.output()
    );
    for id in &wanted {
        assert!(
            show.stdout.contains(&format!("session {id} ")),
            "{id}\n{}",
            show.output()
        );
    }
    let show = run_koala(
        &dir,
        "show-other-program",
        &args(&["show", &source, "--program", "not-recorded"]),
        &[],
    );
    assert_eq!(show.code, Some(0), "{}", show.output());
    assert!(show.stdout.contains("\n0 session(s)"), "{}", show.output());

    // Two workers share the consumer "ci", each with its own service.
    let mut workers = Vec::new();
    for n in 1..=2 {
        let port = free_port();
        let mut service_args = service.args.clone();
        service_args[0] = port.to_string();
        let options = args(&[
            "--consumer",
            "ci",
            "--report",
            &format!("w{n}.json"),
            "--sut",
            &format!("127.0.0.1:{port}"),
        ]);
        workers.push(
            Spec::new(&format!("worker{n}"), koala_bin())
                .args(replay_args(&source, &options, &service_args))
                .spawn(&dir),
        );
    }
    for worker in &mut workers {
        let status = worker.wait_for_exit(Duration::from_secs(60));
        assert!(status.success(), "{}", worker.output_report());
    }
    let reports: Vec<Value> = (1..=2)
        .map(|n| read_report(&dir.join(format!("w{n}.json"))))
        .collect();
    let (a, b) = (ids(&reports[0]), ids(&reports[1]));
    let (set_a, set_b): (BTreeSet<_>, BTreeSet<_>) =
        (a.iter().cloned().collect(), b.iter().cloned().collect());
    assert!(
        set_a.is_disjoint(&set_b),
        "no session replayed by both workers: {:?}",
        set_a.intersection(&set_b).collect::<Vec<_>>()
    );
    assert_eq!(
        a.len() + b.len(),
        total,
        "each session replayed once in total: {a:?} {b:?}"
    );
    assert_eq!(
        set_a.union(&set_b).cloned().collect::<BTreeSet<_>>(),
        recorded
    );

    assert_eq!(
        consumer_pending(&nats.url(), "KOALA", "ci"),
        (0, 0),
        "every session delivered and acknowledged (none waits to be delivered again)"
    );

    let merge = run_koala(
        &dir,
        "merge",
        &args(&[
            "report",
            "merge",
            "w1.json",
            "w2.json",
            "--to",
            "merged.json",
            "--junit",
            "merged.xml",
        ]),
        &[],
    );
    assert_eq!(merge.code, Some(0), "{}", merge.output());
    let merged = read_report(&dir.join("merged.json"));
    let (merged_view, single_view) = (comparable(&merged), comparable(&single_report));
    if merged_view != single_view {
        // The first difference, not two whole reports.
        let pairs = merged_view["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .zip(single_view["sessions"].as_array().unwrap());
        let first = pairs.into_iter().find(|(m, s)| m != s);
        panic!(
            "the merged report differs from the single process's: summaries {} vs {}; first differing session: {first:#?}",
            merged_view["summary"], single_view["summary"]
        );
    }
    let junit = std::fs::read_to_string(dir.join("merged.xml")).unwrap();
    assert!(
        junit.contains(&format!("tests=\"{total}\" failures=\"0\" errors=\"0\"")),
        "{junit}"
    );

    // A third worker of the same consumer finds nothing left.
    let port = free_port();
    let mut service_args = service.args.clone();
    service_args[0] = port.to_string();
    let late = run_koala(
        &dir,
        "worker3",
        &replay_args(
            &source,
            &args(&[
                "--consumer",
                "ci",
                "--report",
                "w3.json",
                "--sut",
                &format!("127.0.0.1:{port}"),
            ]),
            &service_args,
        ),
        &[],
    );
    assert!(
        late.stderr
            .contains("0 session(s) replayed and acknowledged here"),
        "{}",
        late.output()
    );
}
