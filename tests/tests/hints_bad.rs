//! Bad helper hints — empty, larger than 4096 bytes, binary, an unknown
//! command, a malformed or missing number, negative flags, the original
//! koala's unsupported commands — sent by a recorded Python service with
//! `sendto` and with `send` on a connected UDP socket while it handles a
//! request: the host is fine (right answer, full lengths returned, clean
//! exit), its session is recorded exactly, every bad hint is logged, and no
//! datagram reaches the network. Run without the library, the same service
//! does send its hints to 127.127.127.127:127 (the control), the flags form
//! `sendto(b"...", 1001, addr)` fails with EOPNOTSUPP, and
//! `koala_hint.delegate(1001)` does not raise.

use std::fs;
use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::thread;
use std::time::{Duration, Instant};

use koala_tests::*;

const DELEGATE: &[u8] = b"to-koala!set-delegated-from-thread-id\n";
const NOT_SUPPORTED: &str = "is not supported by this koala (trace headers, storage and function recording are not \
     implemented)";

/// Binds 127.127.127.127:127 (all of 127.0.0.0/8 is loopback), where
/// hints go. Waits, bounded, while another test process holds it.
fn bind_hint_address() -> UdpSocket {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match UdpSocket::bind("127.127.127.127:127") {
            Ok(socket) => {
                socket.set_nonblocking(true).unwrap();
                return socket;
            }
            Err(e) if e.kind() == ErrorKind::AddrInUse && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(50));
            }
            Err(e) => {
                panic!("cannot bind 127.127.127.127:127 (needs root or CAP_NET_BIND_SERVICE): {e}")
            }
        }
    }
}

/// Every datagram waiting on the socket: `(sender, payload)`.
fn drain(socket: &UdpSocket) -> Vec<(SocketAddr, Vec<u8>)> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        match socket.recv_from(&mut buf) {
            Ok((n, from)) => out.push((from, buf[..n].to_vec())),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return out,
            Err(e) => panic!("recv_from: {e}"),
        }
    }
}

/// A datagram for failure messages: escaped, long ones cut.
fn short(datagram: &[u8]) -> String {
    let text = format!("{:?}", String::from_utf8_lossy(datagram));
    match text.char_indices().nth(100) {
        Some((at, _)) => format!("{}…({} bytes)", &text[..at], datagram.len()),
        None => text,
    }
}

/// The service's UDP ports, from its `udp ports: ...` line.
fn udp_ports(stdout: &str) -> Vec<u16> {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("udp ports: "))
        .unwrap_or_else(|| panic!("no `udp ports:` line in {stdout:?}"));
    line.split(' ').map(|p| p.parse().unwrap()).collect()
}

/// The datagrams from the service: sent from one of its ports, or
/// carrying its nonce. Others (another program's hints) are shown only.
fn from_service(datagrams: Vec<(SocketAddr, Vec<u8>)>, ports: &[u16], nonce: &str) -> Vec<Vec<u8>> {
    let mut mine = Vec::new();
    for (from, payload) in datagrams {
        if ports.contains(&from.port()) || find(&payload, nonce.as_bytes()).is_some() {
            mine.push(payload);
        } else {
            eprintln!(
                "ignoring a datagram from {from}, not from the service: {:?}",
                String::from_utf8_lossy(&payload)
            );
        }
    }
    mine
}

/// The bad hints the service sends, as the fixture builds them:
/// `(label, payload)`. The one with negative flags is `DELEGATE` alone.
fn bad_hints(nonce: &str) -> Vec<(&'static str, Vec<u8>)> {
    let mut too_large = format!("to-koala!fly-{nonce}\n").into_bytes();
    too_large.resize(5000, b'x');
    let with = |prefix: &[u8], suffix: &str| [prefix, suffix.as_bytes()].concat();
    vec![
        ("empty", Vec::new()),
        ("too-large", too_large),
        (
            "binary",
            [
                &b"\xff\xfe\x00garbage-"[..],
                nonce.as_bytes(),
                b"\n\x01\x02",
            ]
            .concat(),
        ),
        ("unknown", format!("to-koala!fly-{nonce}\n1").into_bytes()),
        ("not-a-number", with(DELEGATE, &format!("abc{nonce}"))),
        ("negative-flags", DELEGATE.to_vec()),
        ("huge-number", with(DELEGATE, &"9".repeat(30))),
        (
            "get-trace-header",
            with(b"to-koala!get-trace-header\n", nonce),
        ),
        ("read-storage", with(b"to-koala!read-storage\n", nonce)),
        ("negative-number", with(DELEGATE, &format!("-{nonce}"))),
    ]
}

struct Run {
    service: Program,
    response: Vec<u8>,
    client: String,
    request: Vec<u8>,
    datagrams: Vec<(SocketAddr, Vec<u8>)>,
}

/// Starts the service (recording to `record`, or without the library),
/// sends it one request, stops it, and collects the datagrams that
/// reached the hint address meanwhile.
fn run_service(
    dir: &TestDir,
    name: &str,
    id: &str,
    redis_port: u16,
    nonce: &str,
    listener: &UdpSocket,
    record: Option<&std::path::Path>,
) -> Run {
    let port = free_port();
    let mut spec = Spec::python_fixture(name, "hints_bad_service.py").args([
        port.to_string(),
        redis_port.to_string(),
        nonce.to_string(),
    ]);
    if let Some(record) = record {
        spec = spec.record_to(record);
    }
    let mut service = spec.spawn(dir);
    service.wait_for_port(port);
    let mut stream = connect(port);
    let client = stream.local_addr().unwrap().to_string();
    let request = format!("GET /bad/{id} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").into_bytes();
    let response = http_exchange(&mut stream, &request);
    let body = format!("{id}: value=value-{id} exists=1 hits=1\n");
    let expected = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    assert_bytes(
        &response,
        expected.as_bytes(),
        &format!("{name}: response\n{}", service.output_report()),
    );
    // Its last hint, koala_hint.shutdown(1001), follows the response.
    let deadline = Instant::now() + IO_TIMEOUT;
    while !service.stdout().contains(&format!("handled {id}\n")) {
        assert!(
            Instant::now() < deadline && service.exited().is_none(),
            "{name} did not finish the request\n{}",
            service.output_report()
        );
        thread::sleep(Duration::from_millis(10));
    }
    if let Some(record) = record {
        wait_for_sessions(record, 1);
    }
    drop(stream);
    service.stop_cleanly();
    assert_eq!(service.stderr(), "", "{name}: stderr");
    // Loopback delivers datagrams synchronously: all are queued by now.
    let datagrams = drain(listener);
    Run {
        service,
        response,
        client,
        request,
        datagrams,
    }
}

#[test]
fn hints_bad() {
    let dir = TestDir::new("hints_bad");
    let record = dir.join("record");
    let nonce = format!("{}{:04}", std::process::id(), free_port() % 10_000);
    let listener = bind_hint_address();
    drain(&listener); // whatever was sent before we listened

    let (_redis, redis_port) = start_redis(&dir);
    seed_items(redis_port, &["bad-1", "bad-2"]);
    let hints = bad_hints(&nonce);

    // ---- with the library: everything consumed ----------------------------
    let recorded = run_service(
        &dir,
        "recorded",
        "bad-1",
        redis_port,
        &nonce,
        &listener,
        Some(&record),
    );
    let stdout = recorded.service.stdout();
    let ports = udp_ports(&stdout);
    let leaked = from_service(recorded.datagrams, &ports, &nonce);
    assert!(
        leaked.is_empty(),
        "hints reached the network under the library: {:?}",
        leaked.iter().map(|d| short(d)).collect::<Vec<_>>()
    );
    // Every send "succeeded" with the full length, even the flags forms.
    let mut expected_stdout = format!(
        "udp ports: {}\n",
        ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    );
    for (label, payload) in &hints {
        expected_stdout.push_str(&format!("hint {label} -> {}\n", payload.len()));
    }
    expected_stdout.push_str(&format!("flags-form -> {}\n", DELEGATE.len()));
    expected_stdout.push_str("helper delegate(1001) -> ok\nhandled bad-1\n");
    assert_eq!(
        stdout, expected_stdout,
        "the service's account of its sends"
    );

    // Each bad hint logged at WARN, in order, and nothing else about hints.
    let mut log = String::new();
    for entry in fs::read_dir(&record).unwrap().flatten() {
        if entry.file_name().to_string_lossy().starts_with("koala.log") {
            log.push_str(&fs::read_to_string(entry.path()).unwrap());
        }
    }
    let ignored: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("helper hint ignored"))
        .collect();
    let reasons = [
        "empty hint".to_string(),
        "hint of 5000 bytes is larger than 4096".to_string(),
        "hint command is not text".to_string(),
        format!("unknown hint command \"to-koala!fly-{nonce}\""),
        format!("hint body \"abc{nonce}\" is not a whole number"),
        "sendto flags -1 are not a virtual thread id".to_string(),
        format!("hint body \"{}\" is not a whole number", "9".repeat(30)),
        format!("to-koala!get-trace-header {NOT_SUPPORTED}"),
        format!("to-koala!read-storage {NOT_SUPPORTED}"),
        format!("hint body \"-{nonce}\" is not a whole number"),
    ];
    assert_eq!(
        ignored.len(),
        reasons.len(),
        "one log line per bad hint:\n{log}"
    );
    for (n, (line, reason)) in ignored.iter().zip(&reasons).enumerate() {
        let wanted = format!(
            "WARN helper hint ignored: {reason} bad_hints_so_far={}",
            n + 1
        );
        assert!(
            line.ends_with(&wanted),
            "log line {line:?}, wanted {wanted:?}"
        );
        assert!(
            line.starts_with(&format!("koala[python3:{}] ", recorded.service.pid())),
            "{line}"
        );
    }

    // The session: exactly the request's three calls, none lost to the bad
    // hints (EXISTS is sent after them, before any good hint), INCRBY after
    // the good delegation; ended by koala_hint.shutdown(1001).
    let sessions = read_sessions(&record);
    assert_eq!(sessions.len(), 1, "{}", describe_dir(&record));
    let session = &sessions[0];
    let what = show(session);
    assert_exchange(
        &session.inbound,
        &recorded.client,
        &recorded.request,
        &recorded.response,
        &format!("{what}\ninbound"),
    );
    assert_eq!(session.end, Some(EndReason::Hint), "{what}");
    let redis_peer = format!("127.0.0.1:{redis_port}");
    let key = "item:bad-1";
    let expected_calls = [
        (resp_command(&["GET", key]), resp_bulk("value-bad-1")),
        (resp_command(&["EXISTS", key]), b":1\r\n".to_vec()),
        (
            resp_command(&["INCRBY", "hits:bad-1", "1"]),
            b":1\r\n".to_vec(),
        ),
    ];
    assert_eq!(session.calls.len(), expected_calls.len(), "{what}");
    for (call, (request, response)) in session.calls.iter().zip(&expected_calls) {
        assert_exchange(call, &redis_peer, request, response, &what);
    }
    let background = background_records(&record);
    assert_eq!(background.len(), 1, "{}", describe_dir(&record));
    assert_exchange(
        background[0].calls.last().unwrap(),
        &redis_peer,
        &resp_command(&["PING"]),
        b"+PONG\r\n",
        &show(&background[0]),
    );
    assert!(
        background[0]
            .calls
            .iter()
            .all(|c| find(c.request.as_bytes(), b"item:").is_none()),
        "a request's call in the background: {}",
        show(&background[0])
    );

    // ---- control: the same service without the library ----------------------
    let control = run_service(
        &dir, "control", "bad-2", redis_port, &nonce, &listener, None,
    );
    let stdout = control.service.stdout();
    let ports = udp_ports(&stdout);
    let mut received = from_service(control.datagrams, &ports, &nonce);
    // All but the negative flags (refused by the kernel) and the flags form.
    let mut expected: Vec<Vec<u8>> = hints
        .iter()
        .filter(|(label, _)| *label != "negative-flags")
        .map(|(_, payload)| payload.clone())
        .collect();
    expected.push([DELEGATE, b"1001"].concat());
    expected.push(b"to-koala!thread-shutdown\n1001".to_vec());
    received.sort();
    expected.sort();
    assert_eq!(
        received.iter().map(|d| short(d)).collect::<Vec<_>>(),
        expected.iter().map(|d| short(d)).collect::<Vec<_>>(),
        "without the library, the hints reach 127.127.127.127:127"
    );
    assert_eq!(received, expected, "exact datagrams");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines.contains(&"flags-form -> OSError 95 EOPNOTSUPP"),
        "without koala, sendto(b\"...\", 1001, addr) fails with EOPNOTSUPP:\n{stdout}"
    );
    assert!(
        lines.contains(&"helper delegate(1001) -> ok"),
        "koala_hint.delegate(1001) does not raise:\n{stdout}"
    );
}
