//! Replay never lets the service reach its real dependencies: when the
//! outbound server cannot run (its port is taken) or cannot be reached from
//! the service's socket, connects are refused — the real dependency, up and
//! listening, sees nothing.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

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

/// Starts the service in replay mode with `outbound` as KOALA_OUTBOUND_ADDR,
/// asks it to call the dependency, and returns its answer and koala's log.
fn call_through(test: &str, outbound: &str, dependency_port: u16) -> (String, String) {
    let dir = TestDir::new(test);
    let port = free_port();
    let mut service = Spec::python_fixture("service", "replay_fail_closed_service.py")
        .args([port, dependency_port])
        .preload()
        .env("KOALA_MODE", "replay")
        .env("KOALA_INBOUND_ADDR", format!("127.0.0.1:{}", free_port()))
        .env("KOALA_OUTBOUND_ADDR", outbound)
        .env("KOALA_SUT_ADDR", format!("127.0.0.1:{port}"))
        .env("KOALA_LOG_FILE", dir.join("koala.log").display())
        .spawn(&dir);
    service.wait_for_port(port);
    let mut stream = connect(port);
    let response = http_exchange(&mut stream, b"GET /call HTTP/1.1\r\nHost: x\r\n\r\n");
    drop(stream);
    service.stop();
    let log = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("koala.log"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect();
    (String::from_utf8_lossy(&response).into_owned(), log)
}

#[test]
fn a_taken_outbound_port_refuses_connects_instead_of_passing_them_through() {
    let (dependency, dependency_port) = Dependency::start();
    // Someone else holds the outbound server's port.
    let squatter = TcpListener::bind("127.0.0.1:0").unwrap();
    squatter.set_nonblocking(true).unwrap();
    let taken = squatter.local_addr().unwrap().to_string();
    let (response, log) = call_through("fails_closed_taken", &taken, dependency_port);
    assert!(
        response.ends_with("\r\n\r\nrefused: ECONNREFUSED"),
        "{response}"
    );
    assert_eq!(
        dependency.reached(),
        Vec::<Vec<u8>>::new(),
        "the real dependency was reached"
    );
    assert!(
        squatter.accept().is_err(),
        "the squatter on the outbound port got a connection"
    );
    assert!(
        log.contains("replay servers not started: outbound connections will be refused"),
        "{log}"
    );
    assert!(
        log.contains(&format!("cannot listen on {taken} for the outbound server")),
        "{log}"
    );
}

#[test]
fn an_unreachable_outbound_server_refuses_connects() {
    let (dependency, dependency_port) = Dependency::start();
    // An IPv6 outbound server cannot take the service's IPv4 connects.
    let outbound = format!("[::1]:{}", free_port());
    let (response, log) = call_through("fails_closed_family", &outbound, dependency_port);
    assert!(
        response.ends_with("\r\n\r\nrefused: ECONNREFUSED"),
        "{response}"
    );
    assert_eq!(
        dependency.reached(),
        Vec::<Vec<u8>>::new(),
        "the real dependency was reached"
    );
    assert!(
        log.contains("an IPv4 socket cannot reach an IPv6 outbound server"),
        "{log}"
    );
}

#[test]
fn the_same_call_reaches_the_dependency_without_the_library() {
    // Control: the fixture really calls the dependency when nothing interferes.
    let (dependency, dependency_port) = Dependency::start();
    let dir = TestDir::new("fails_closed_control");
    let port = free_port();
    let mut service = Spec::python_fixture("service", "replay_fail_closed_service.py")
        .args([port, dependency_port])
        .spawn(&dir);
    service.wait_for_port(port);
    let mut stream = connect(port);
    let response = http_exchange(&mut stream, b"GET /call HTTP/1.1\r\nHost: x\r\n\r\n");
    service.stop();
    assert!(String::from_utf8_lossy(&response).ends_with("\r\n\r\nreached: PONG\n"));
    assert_eq!(dependency.reached(), vec![b"PING\n".to_vec()]);
}
