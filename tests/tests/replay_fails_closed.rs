//! Replay never lets the service reach its real dependencies: when the
//! outbound server cannot run (its port is taken) or cannot be reached from
//! the service's socket, connects are refused — the real dependency, up and
//! listening, sees nothing.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use koala_tests::*;

/// A live dependency: answers `PONG\n` and remembers what it was sent.
struct Dependency {
    received: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Dependency {
    fn start() -> (Dependency, u16) {
        let port = free_port();
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = received.clone();
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                stream
                    .set_read_timeout(Some(Duration::from_secs(2)))
                    .unwrap();
                let mut bytes = vec![0; 64];
                let n = stream.read(&mut bytes).unwrap_or(0);
                bytes.truncate(n);
                log.lock().unwrap().push(bytes);
                let _ = stream.write_all(b"PONG\n");
            }
        });
        (Dependency { received }, port)
    }

    fn reached(&self) -> Vec<Vec<u8>> {
        self.received.lock().unwrap().clone()
    }
}

/// koala's log in `dir` (every `koala.log*` file).
fn koala_log(dir: &Path) -> String {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("koala.log"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect()
}

/// Starts the service, in replay mode with `outbound` as
/// KOALA_OUTBOUND_ADDR or (`None`) without the library, asks it to call the
/// dependency on `dependency_port`, waits until koala's log holds every
/// line of `expect` (the library's own thread writes it: a service stopped
/// at once may not have written the last lines yet) or 10 s passed, and
/// returns its answer's body and koala's log.
fn call_through(
    test: &str,
    outbound: Option<&str>,
    dependency_port: u16,
    expect: &[&str],
) -> (String, String) {
    let dir = TestDir::new(test);
    let port = free_port();
    let mut spec = Spec::python_fixture("service", "replay_fail_closed_service.py")
        .args([port, dependency_port]);
    if let Some(outbound) = outbound {
        spec = spec
            .preload()
            .env("KOALA_MODE", "replay")
            .env("KOALA_INBOUND_ADDR", format!("127.0.0.1:{}", free_port()))
            .env("KOALA_OUTBOUND_ADDR", outbound)
            .env("KOALA_SUT_ADDR", format!("127.0.0.1:{port}"))
            .env("KOALA_LOG_FILE", dir.join("koala.log").display());
    }
    let mut service = spec.spawn(&dir);
    service.wait_for_port(port);
    let mut stream = connect(port);
    let response = http_exchange(&mut stream, b"GET /call HTTP/1.1\r\nHost: x\r\n\r\n");
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !expect
        .iter()
        .all(|line| koala_log(dir.path()).contains(line))
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    service.stop();
    let head_end = find(&response, b"\r\n\r\n").expect("response head") + 4;
    let log = koala_log(dir.path());
    (
        String::from_utf8_lossy(&response[head_end..]).into_owned(),
        log,
    )
}

/// [`call_through`] in replay mode, asserting the service's connect was
/// refused and the live dependency saw nothing. Returns koala's log.
#[track_caller]
fn assert_refused(test: &str, outbound: &str, expect: &[&str]) -> String {
    let (dependency, dependency_port) = Dependency::start();
    let (body, log) = call_through(test, Some(outbound), dependency_port, expect);
    assert_eq!(body, "refused: ECONNREFUSED", "{log}");
    assert_eq!(
        dependency.reached(),
        Vec::<Vec<u8>>::new(),
        "the real dependency was reached"
    );
    log
}

#[test]
fn a_taken_outbound_port_refuses_connects_instead_of_passing_them_through() {
    // Someone else holds the outbound server's port.
    let squatter = TcpListener::bind("127.0.0.1:0").unwrap();
    squatter.set_nonblocking(true).unwrap();
    let taken = squatter.local_addr().unwrap().to_string();
    let not_started = "replay servers not started: outbound connections will be refused";
    let cannot_listen = format!("cannot listen on {taken} for the outbound server");
    let log = assert_refused("fails_closed_taken", &taken, &[not_started, &cannot_listen]);
    assert!(
        squatter.accept().is_err(),
        "the squatter on the outbound port got a connection"
    );
    assert!(log.contains(not_started), "{log}");
    assert!(log.contains(&cannot_listen), "{log}");
}

#[test]
fn an_unreachable_outbound_server_refuses_connects() {
    // An IPv6 outbound server cannot take the service's IPv4 connects.
    let outbound = format!("[::1]:{}", free_port());
    let unreachable = "an IPv4 socket cannot reach an IPv6 outbound server";
    let log = assert_refused("fails_closed_family", &outbound, &[unreachable]);
    assert!(log.contains(unreachable), "{log}");
}

#[test]
fn the_same_call_reaches_the_dependency_without_the_library() {
    // Control: the fixture really calls the dependency when nothing interferes.
    let (dependency, dependency_port) = Dependency::start();
    let (body, log) = call_through("fails_closed_control", None, dependency_port, &[]);
    assert_eq!(body, "reached: PONG\n");
    assert_eq!(dependency.reached(), vec![b"PING\n".to_vec()]);
    assert_eq!(log, "", "no koala log without the library");
}
