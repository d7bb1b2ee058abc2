//! The recorder with its real writer thread, without LD_PRELOAD.

use super::*;
use koala_session::Session;
use std::os::unix::fs::PermissionsExt;

fn config(dir: &std::path::Path, extra: &[(&str, &str)]) -> Config {
    let mut vars: Vec<(String, String)> = vec![
        ("KOALA_MODE".into(), "record".into()),
        ("KOALA_RECORD_TO".into(), dir.display().to_string()),
    ];
    vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let (config, errors) =
        Config::from_lookup(|name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()));
    assert!(errors.is_empty(), "{errors:?}");
    config
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("koala-recorder-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn identity() -> ProcessIdentity {
    ProcessIdentity {
        program: "unit".into(),
        start_secs: 1,
    }
}

/// The pid the session file is named after.
const PID: u32 = 4242;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// One request/response on inbound fd `fd`, closed.
fn one_session(recorder: &'static Recorder, fd: i32, body: &str) {
    recorder.connection_opened(fd, Direction::Inbound, addr(80), addr(5000), 1, 1);
    recorder.received(fd, 1, Bytes(&[format!("req {body}").as_bytes()]), 2);
    recorder.sent(fd, 1, Bytes(&[format!("resp {body}").as_bytes()]), 3);
    recorder.fd_closed(fd);
}

#[test]
fn sessions_reach_a_private_jsonl_file() {
    let dir = temp_dir("file");
    let recorder = Recorder::start(&config(&dir, &[]), identity(), PID);
    one_session(recorder, 5, "one");
    one_session(recorder, 5, "two");
    // Still open at exit: written with end = exit.
    recorder.connection_opened(6, Direction::Inbound, addr(80), addr(5001), 1, 5);
    recorder.received(6, 1, Bytes(&[b"req three"]), 6);
    recorder.flush_at_exit(Duration::from_secs(5));

    let path = dir.join("unit-4242.jsonl");
    assert_eq!(recorder.session_file_path(), path);
    let text = std::fs::read_to_string(&path).unwrap();
    let sessions: Vec<Session> = text
        .lines()
        .map(|l| koala_session::read_session_line(l).unwrap())
        .collect();
    let requests: Vec<&[u8]> = sessions
        .iter()
        .map(|s| s.inbound.request.as_bytes())
        .collect();
    assert_eq!(requests, [&b"req one"[..], b"req two", b"req three"]);
    assert_eq!(sessions[2].end, Some(EndReason::Exit));
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(recorder.counters.written.load(Ordering::Relaxed), 3);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_full_queue_drops_and_counts_sessions_instead_of_blocking() {
    let dir = temp_dir("drop");
    // A byte budget smaller than any session: every session is dropped.
    let recorder = Recorder::start(
        &config(&dir, &[("KOALA_QUEUE_MAX_BYTES", "1")]),
        identity(),
        PID,
    );
    for i in 0..10 {
        one_session(recorder, 5, &i.to_string());
    }
    recorder.flush_at_exit(Duration::from_secs(5));
    assert_eq!(
        recorder.counters.dropped_queue_full.load(Ordering::Relaxed),
        10
    );
    assert_eq!(recorder.counters.written.load(Ordering::Relaxed), 0);
    assert!(
        !dir.join("unit-4242.jsonl").exists(),
        "nothing to write, no file"
    );
}

#[test]
fn a_small_queue_never_loses_track_of_a_session() {
    let dir = temp_dir("count");
    let recorder = Recorder::start(
        &config(&dir, &[("KOALA_QUEUE_CAPACITY", "2")]),
        identity(),
        PID,
    );
    for i in 0..200 {
        one_session(recorder, 5, &i.to_string());
    }
    recorder.flush_at_exit(Duration::from_secs(5));
    let written = recorder.counters.written.load(Ordering::Relaxed);
    let dropped = recorder.counters.dropped_queue_full.load(Ordering::Relaxed);
    assert_eq!(
        written + dropped,
        200,
        "every session is either written or counted"
    );
    let lines = std::fs::read_to_string(dir.join("unit-4242.jsonl"))
        .unwrap()
        .lines()
        .count();
    assert_eq!(lines as u64, written);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn idle_sessions_are_written_by_the_writer_thread() {
    let dir = temp_dir("idle");
    let recorder = Recorder::start(
        &config(&dir, &[("KOALA_SESSION_IDLE_MS", "50")]),
        identity(),
        PID,
    );
    let now = koala_runtime::clock::now_ns();
    recorder.connection_opened(5, Direction::Inbound, addr(80), addr(5000), 1, now);
    recorder.received(5, 1, Bytes(&[b"req"]), now);
    recorder.sent(5, 1, Bytes(&[b"resp"]), now);
    let path = dir.join("unit-4242.jsonl");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&path).is_ok_and(|t| t.lines().count() == 1) {
        assert!(Instant::now() < deadline, "idle session never written");
        std::thread::sleep(Duration::from_millis(20));
    }
    let session = koala_session::read_session_line(
        std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(session.end, Some(EndReason::Idle));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A fork simulated in this process: the lock taken as the fork hook does,
/// then the child's side run (new pid 5151).
fn fork_here(recorder: &'static Recorder) {
    let guard = recorder.prepare_fork();
    recorder.after_fork_in_child(guard, 1, 1, 5151);
}

fn has_writer(recorder: &Recorder) -> bool {
    recorder.inner.lock().unwrap().writer.is_some()
}

#[test]
fn a_forked_child_that_records_nothing_starts_no_writer_and_writes_nothing() {
    let dir = temp_dir("fork-idle");
    let recorder = Recorder::start(&config(&dir, &[]), identity(), PID);
    // The parent has a session open at the fork.
    recorder.connection_opened(5, Direction::Inbound, addr(80), addr(5000), 1, 1);
    recorder.received(5, 1, Bytes(&[b"req parent"]), 2);
    assert!(has_writer(recorder));
    fork_here(recorder);
    assert!(!has_writer(recorder), "no thread in the child yet");
    recorder.fd_closed(5);
    assert!(
        !has_writer(recorder),
        "closing the parent's fd records nothing"
    );
    let flushed = recorder.flush(Duration::from_secs(5)).expect("counts");
    assert!(!has_writer(recorder), "nothing to write at exit");
    assert!(!flushed.recorded_anything());
    assert_eq!(flushed.stats.sessions_left_to_parent, 1);
    assert!(!flushed.worth_logging(true, ChildSummary::Recorded));
    assert!(flushed.worth_logging(true, ChildSummary::Always));
    assert!(!dir.join("unit-5151.jsonl").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_forked_child_starts_its_writer_with_its_first_bytes() {
    let dir = temp_dir("fork-records");
    let recorder = Recorder::start(&config(&dir, &[]), identity(), PID);
    recorder.connection_opened(5, Direction::Inbound, addr(80), addr(5000), 1, 1);
    fork_here(recorder);
    assert!(!has_writer(recorder));
    // The child answers the inherited connection: its session now.
    recorder.received(5, 1, Bytes(&[b"req child"]), 2);
    assert!(has_writer(recorder));
    recorder.sent(5, 1, Bytes(&[b"resp child"]), 3);
    recorder.fd_closed(5);
    let flushed = recorder.flush(Duration::from_secs(5)).expect("counts");
    assert_eq!(flushed.written, 1);
    assert!(flushed.worth_logging(true, ChildSummary::Recorded));
    let text = std::fs::read_to_string(dir.join("unit-5151.jsonl")).unwrap();
    let session = koala_session::read_session_line(text.trim_end()).unwrap();
    assert_eq!(session.inbound.request.as_bytes(), b"req child");
    assert_eq!(session.inbound.response.as_bytes(), b"resp child");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_process_that_never_recorded_reports_nothing() {
    let dir = temp_dir("never");
    let recorder = Recorder::start(&config(&dir, &[]), identity(), PID);
    assert!(recorder.flush(Duration::from_secs(5)).is_none());
    fork_here(recorder);
    assert!(
        recorder.flush(Duration::from_secs(5)).is_none(),
        "nor its children"
    );
    assert!(!dir.exists());
}

#[test]
fn summary_lines_follow_the_child_summary_policy() {
    let nothing = Reported {
        written: 0,
        dropped: 0,
        write_errors: 0,
        reopened: 0,
        stats: Stats {
            sessions_left_to_parent: 3,
            ..Stats::default()
        },
    };
    let recorded = Reported {
        written: 2,
        stats: Stats::default(),
        ..nothing
    };
    let lost = Reported {
        write_errors: 1,
        stats: Stats::default(),
        ..nothing
    };
    let check = |reported: &Reported, forked: bool| {
        [
            ChildSummary::Recorded,
            ChildSummary::Always,
            ChildSummary::Never,
        ]
        .map(|policy| reported.worth_logging(forked, policy))
    };
    // (recorded, always, never)
    assert_eq!(check(&nothing, false), [true, true, true], "not forked");
    assert_eq!(check(&nothing, true), [false, true, false]);
    assert_eq!(check(&recorded, true), [true, true, false]);
    assert_eq!(
        check(&lost, true),
        [true, true, true],
        "a loss is never silent"
    );
}
