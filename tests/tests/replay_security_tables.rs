//! The replay tables in /dev/shm (koala-replayer/src/table.rs) are not left
//! behind: one whose creator was killed (SIGKILL: no exit handler ran) is
//! removed when the next replay server on the machine creates its own, a
//! living process's table is kept, and a process that `exec`s into a
//! program starting new servers leaves one table, not one per exec.
//! Programs: /bin/sleep and /bin/sh under the library in replay mode.

use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use koala_tests::replay::*;
use koala_tests::*;

const WAIT: Duration = Duration::from_secs(20);

/// The replay table files in /dev/shm created by `pid`.
fn tables_of(pid: u32) -> Vec<PathBuf> {
    let prefix = format!("koala-replay-{pid}-");
    let mut files: Vec<PathBuf> = std::fs::read_dir("/dev/shm")
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// `/bin/sleep 60` under the library in replay mode, its servers on free
/// ports; returns once its inbound server listens (its table exists then).
fn replay_sleeper(dir: &TestDir, name: &str) -> Program {
    let ports = ReplayPorts::new(free_port());
    let mut program = ports
        .apply(Spec::new(name, "/bin/sleep").arg(60), "replay")
        .env("KOALA_LOG_FILE", dir.join(format!("{name}.log")).display())
        .spawn(dir);
    program.wait_for_port(ports.inbound);
    program
}

#[track_caller]
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "not within {WAIT:?}: {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn stale_tables_are_removed_and_living_ones_kept() {
    let dir = TestDir::new("replay_security_tables");
    let living = replay_sleeper(&dir, "living");
    let living_tables = tables_of(living.pid());
    assert_eq!(living_tables.len(), 1, "the living server's table");

    let mut killed = replay_sleeper(&dir, "killed");
    let killed_pid = killed.pid();
    let killed_tables = tables_of(killed_pid);
    assert_eq!(killed_tables.len(), 1, "the killed server's table");
    // SAFETY: kill has no memory effects; the pid is our child's.
    unsafe { libc::kill(killed_pid as i32, libc::SIGKILL) };
    wait_until("the killed server is reaped", || killed.exited().is_some());
    assert!(
        killed_tables[0].exists(),
        "SIGKILL leaves the table (nothing ran at exit)"
    );

    let next = replay_sleeper(&dir, "next");
    assert_eq!(
        tables_of(killed_pid),
        Vec::<PathBuf>::new(),
        "the next server removed the killed one's table"
    );
    assert_eq!(
        tables_of(living.pid()),
        living_tables,
        "a living server's table is kept"
    );
    assert_eq!(tables_of(next.pid()).len(), 1, "the new server's own table");
}

#[test]
fn an_exec_chain_leaves_one_table() {
    let dir = TestDir::new("replay_security_tables_exec");
    // sh starts servers (and a table), then execs sleep, which starts new
    // servers on another inbound port: the table sh made must go.
    let ports = ReplayPorts::new(free_port());
    let exec_inbound = free_port();
    let mut program = ports
        .apply(
            Spec::new("exec-chain", "/bin/sh").args([
                "-c".to_string(),
                format!("KOALA_INBOUND_ADDR=127.0.0.1:{exec_inbound} exec /bin/sleep 60"),
            ]),
            "replay",
        )
        .env("KOALA_LOG_FILE", dir.join("exec-chain.log").display())
        .spawn(&dir);
    program.wait_for_port(exec_inbound);
    let tables = tables_of(program.pid());
    assert_eq!(tables.len(), 1, "one table after exec: {tables:?}");
}
