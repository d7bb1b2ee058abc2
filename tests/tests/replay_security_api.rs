//! The replay API trusts nobody (docs/replay-api.md, "Authentication" and
//! "Limits"): every request must carry the service's KOALA_REPLAY_TOKEN as
//! `Authorization: Bearer`, or gets 401 with a JSON error saying what is
//! wrong; a service started without a token refuses everything; `koala
//! replay` without CMD and without the token stops with the reason. The
//! caps hold: API connections past KOALA_REPLAY_MAX_CONNECTIONS get 429, a
//! body past KOALA_REPLAY_MAX_BODY_BYTES 413, background records past
//! KOALA_REPLAY_MAX_BACKGROUND_BYTES 413 with nothing of them kept.
//! Strangers cannot hold the connection slots: a first request trickled a
//! byte at a time is cut 10 s after the connection, and blank lines before
//! a request are bounded. The service is /bin/sleep under the library in
//! replay mode (the API answers without a service behind it).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use koala_session::Kind;
use koala_tests::replay::*;
use koala_tests::*;

const MAX_CONNECTIONS: usize = 4;
const MAX_BODY: usize = 2000;
const MAX_BACKGROUND: usize = 3000;
const WAIT: Duration = Duration::from_secs(10);

fn sleeper(dir: &TestDir, name: &str, env: &[(&str, String)]) -> (Program, ReplayPorts) {
    let ports = ReplayPorts::new(free_port());
    let mut spec = ports
        .apply(Spec::new(name, "/bin/sleep").arg(60), "replay")
        .env("KOALA_LOG_FILE", dir.join(format!("{name}.log")).display());
    for (key, value) in env {
        spec = spec.env(key, value);
    }
    let mut program = spec.spawn(dir);
    program.wait_for_port(ports.inbound);
    (program, ports)
}

fn status_without_token(port: u16) -> Vec<u8> {
    format!("GET /v1/status HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").into_bytes()
}

#[track_caller]
fn assert_refused(answer: &ApiAnswer, status: u16, words: &[&str], what: &str) {
    assert_eq!(answer.status, status, "{what}: {answer}");
    let error = answer.error();
    for word in words {
        assert!(
            error.contains(word),
            "{what}: {error:?} does not say {word:?}"
        );
    }
}

/// A background record whose JSON line is exactly `length` bytes.
fn background_line(id: &str, length: usize) -> String {
    let mut record = Session {
        koala: 1,
        kind: Kind::Background,
        id: id.to_string(),
        pid: 1,
        tid: 1,
        program: String::new(),
        end: None,
        inbound: Exchange::default(),
        calls: Vec::new(),
        ..Default::default()
    };
    let bare = record.to_json_line().len();
    assert!(bare < length, "a bare record is {bare} bytes");
    record.program = "p".repeat(length - bare);
    let line = record.to_json_line();
    assert_eq!(line.len(), length);
    line
}

#[test]
fn the_api_requires_the_token() {
    let dir = TestDir::new("replay_security_api_token");
    let (service, ports) = sleeper(&dir, "with-token", &[]);
    let inbound = ports.inbound;

    let answer = api_raw_exact(inbound, &status_without_token(inbound), false);
    assert_refused(
        &answer,
        401,
        &["missing token", "Authorization: Bearer"],
        "no token",
    );
    assert!(
        answer.head.contains("WWW-Authenticate: Bearer"),
        "a 401 names its scheme: {answer}"
    );
    let wrong = with_token(&status_without_token(inbound), "not-the-token");
    let answer = api_raw_exact(inbound, &wrong, false);
    assert_refused(&answer, 401, &["wrong token"], "a wrong token");
    // A POST without the token is refused before its body is read.
    let answer = api_raw_exact(inbound, &post_request("/v1/replay", b"{}"), false);
    assert_refused(&answer, 401, &["missing token"], "a POST without token");
    let status = api_status(inbound);
    assert_eq!(status.pid, service.pid(), "with the token: {status:?}");

    // Started without a token, the API refuses everything.
    let (_bare, bare_ports) = sleeper(&dir, "no-token", &[("KOALA_REPLAY_TOKEN", String::new())]);
    let answer = api_raw(
        bare_ports.inbound,
        &status_without_token(bare_ports.inbound),
        false,
    );
    assert_refused(
        &answer,
        401,
        &["has no token", "KOALA_REPLAY_TOKEN"],
        "a tokenless service",
    );

    // koala replay without CMD and without the service's token stops,
    // saying why; with it, it reaches the API.
    let record = dir.join("record");
    std::fs::create_dir_all(&record).unwrap();
    let mut session = Session {
        koala: 1,
        kind: Kind::Session,
        id: "s1".into(),
        pid: 1,
        tid: 1,
        program: "p".into(),
        end: None,
        inbound: Exchange::default(),
        calls: Vec::new(),
        ..Default::default()
    };
    session.inbound.request = Payload::new(b"GET / HTTP/1.1\r\n\r\n".to_vec());
    std::fs::write(record.join("p-1.jsonl"), session.to_json_line() + "\n").unwrap();
    let args: Vec<String> = [
        "replay",
        "record",
        "--inbound",
        &format!("127.0.0.1:{inbound}"),
    ]
    .map(String::from)
    .to_vec();
    let run = run_koala(
        &dir,
        "koala-no-token",
        &args,
        &[("KOALA_REPLAY_TOKEN", String::new())],
    );
    assert_eq!(run.code, Some(2), "{}", run.output());
    assert!(
        run.stderr.contains("answered 401") && run.stderr.contains("KOALA_REPLAY_TOKEN"),
        "{}",
        run.output()
    );
    let run = run_koala(&dir, "koala-token", &args, &[]);
    assert!(
        run.stderr.contains(&format!("pid {}", service.pid())),
        "koala reached the API with the token\n{}",
        run.output()
    );

    // A non-loopback inbound address is warned about (0.0.0.0 reaches only
    // this machine: nothing listens there, koala then stops).
    let exposed: Vec<String> = [
        "replay",
        "record",
        "--inbound",
        &format!("0.0.0.0:{}", free_port()),
    ]
    .map(String::from)
    .to_vec();
    let run = run_koala(&dir, "koala-exposed", &exposed, &[]);
    assert!(
        run.stderr.contains("WARNING: the inbound server 0.0.0.0:")
            && run.stderr.contains("not on a loopback address"),
        "{}",
        run.output()
    );
}

#[test]
fn the_api_caps_connections_and_sizes() {
    let dir = TestDir::new("replay_security_api_caps");
    let (_service, ports) = sleeper(
        &dir,
        "capped",
        &[
            ("KOALA_REPLAY_MAX_CONNECTIONS", MAX_CONNECTIONS.to_string()),
            ("KOALA_REPLAY_MAX_BODY_BYTES", MAX_BODY.to_string()),
            (
                "KOALA_REPLAY_MAX_BACKGROUND_BYTES",
                MAX_BACKGROUND.to_string(),
            ),
        ],
    );
    let inbound = ports.inbound;

    // Sizes: a body one byte past the cap, unread.
    let body = vec![b' '; MAX_BODY + 1];
    let answer = api_post(inbound, "/v1/replay", &body);
    assert_refused(
        &answer,
        413,
        &["2001 bytes", "2000-byte limit"],
        "a body past the cap",
    );
    // Background: 1200 + 1200 fit in 3000, a third 1200 does not.
    for id in ["b1", "b2"] {
        let answer = api_post(
            inbound,
            "/v1/background",
            background_line(id, 1200).as_bytes(),
        );
        assert_eq!(answer.status, 200, "{id}: {answer}");
    }
    let answer = api_post(
        inbound,
        "/v1/background",
        background_line("b3", 1200).as_bytes(),
    );
    assert_refused(
        &answer,
        413,
        &[
            "3000-byte limit",
            "KOALA_REPLAY_MAX_BACKGROUND_BYTES",
            "2400 bytes are held",
        ],
        "background past the cap",
    );
    assert_eq!(
        api_status(inbound).background_records,
        2,
        "nothing of b3 kept"
    );

    // Connections: the cap's worth of idle ones, then one more gets 429.
    let idle: Vec<TcpStream> = (0..MAX_CONNECTIONS).map(|_| connect(inbound)).collect();
    let answer = api_raw(inbound, &status_without_token(inbound), false);
    assert_refused(
        &answer,
        429,
        &[
            "too many replay API connections",
            "KOALA_REPLAY_MAX_CONNECTIONS",
        ],
        "a connection past the cap",
    );
    // The idle ones still work, and closing one makes room.
    let mut first = idle.into_iter();
    let mut kept = first.next().unwrap();
    kept.write_all(&with_token(&status_without_token(inbound), REPLAY_TOKEN))
        .unwrap();
    let mut head = [0u8; 12];
    kept.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    drop(first);
    let deadline = Instant::now() + WAIT;
    loop {
        let answer = api_raw(inbound, &status_without_token(inbound), false);
        if answer.status == 200 {
            break;
        }
        assert_eq!(answer.status, 429, "{answer}");
        assert!(
            Instant::now() < deadline,
            "no room after closing connections"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// The inbound server's deadline for a connection's first request.
const FIRST_REQUEST_WAIT: Duration = Duration::from_secs(10);

#[test]
fn strangers_cannot_hold_the_api_connections() {
    let dir = TestDir::new("replay_security_api_strangers");
    let (_service, ports) = sleeper(
        &dir,
        "held",
        &[("KOALA_REPLAY_MAX_CONNECTIONS", MAX_CONNECTIONS.to_string())],
    );
    let inbound = ports.inbound;

    // Strangers take every slot and send a byte of a request head every
    // 500 ms: each read is quick, but the first request has a deadline.
    let started = Instant::now();
    let strangers: Vec<_> = (0..MAX_CONNECTIONS)
        .map(|_| {
            let mut stream = connect(inbound);
            thread::spawn(move || {
                let head = b"GET /v1/status HTTP/1.1\r\nX-Slow: ".iter();
                for byte in head.chain(std::iter::repeat(&b'a')) {
                    if stream.write_all(&[*byte]).is_err() {
                        break;
                    }
                    // Whether the server closed: a read that ends at once.
                    stream
                        .set_read_timeout(Some(Duration::from_millis(500)))
                        .unwrap();
                    let mut answer = Vec::new();
                    match stream.read_to_end(&mut answer) {
                        Ok(_) => return (answer, started.elapsed()),
                        Err(e)
                            if e.kind() == std::io::ErrorKind::WouldBlock
                                || e.kind() == std::io::ErrorKind::TimedOut => {}
                        Err(_) => return (answer, started.elapsed()),
                    }
                    if started.elapsed() > FIRST_REQUEST_WAIT + WAIT {
                        break;
                    }
                }
                (Vec::new(), started.elapsed())
            })
        })
        .collect();
    // While they hold the slots, a client is turned away.
    let answer = api_raw(inbound, &status_without_token(inbound), false);
    assert_eq!(answer.status, 429, "{answer}");
    for stranger in strangers {
        let (answer, closed_after) = stranger.join().unwrap();
        assert_eq!(String::from_utf8_lossy(&answer), "", "a stranger got bytes");
        assert!(
            closed_after < FIRST_REQUEST_WAIT + Duration::from_secs(3),
            "a stranger trickling its first request held its connection {closed_after:?}"
        );
    }
    // Then the slots are free again.
    let deadline = Instant::now() + WAIT;
    loop {
        let answer = api_raw(inbound, &status_without_token(inbound), false);
        if answer.status == 200 {
            break;
        }
        assert_eq!(answer.status, 429, "{answer}");
        assert!(Instant::now() < deadline, "no room after the strangers");
        thread::sleep(Duration::from_millis(20));
    }

    // Blank lines before a request are bounded: the ninth is answered 400.
    // (After the strangers: a closed keep-alive connection frees its slot
    // only once the server reads the close.)
    let request = with_token(&status_without_token(inbound), REPLAY_TOKEN);
    let few = [b"\r\n".repeat(8), request.clone()].concat();
    assert_eq!(api_raw_exact(inbound, &few, false).status, 200);
    let many = [b"\r\n".repeat(9), request.clone()].concat();
    assert_refused(
        &api_raw_exact(inbound, &many, false),
        400,
        &["more than 8 blank lines"],
        "blank lines without end",
    );
}
