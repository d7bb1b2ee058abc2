//! libcurl (issue 12, test 2): plaintext recorded, and replayed with the
//! backend stopped and the service's certificate verification left on.
//!
//! - PHP's curl in a PHP built-in server (`php -S`, `tls_curl_router.php`):
//!   libcurl and OpenSSL in the service's own process, verifying an HTTPS
//!   backend with a self-signed certificate (made here with the `openssl`
//!   CLI) through `CURLOPT_CAINFO`, peer and host name. Each request's
//!   session holds its call as the exact plaintext (`"tls": true`) although
//!   libcurl reads and writes through a BIO of its own. Replayed with a trap
//!   on the backend's port: curl's handshake succeeds without TLS on the
//!   wire, it gets a stand-in certificate naming `localhost` (libcurl
//!   refuses a verified connection without a peer certificate and checks
//!   the host name against it), every session passes, the trap is never
//!   reached. Replayed again with the backend's port bypassed
//!   (`KOALA_OUTBOUND_BYPASS`): that connection is not redirected, so
//!   nothing is faked on it — curl's real handshake reaches the trap (a
//!   ClientHello) and fails.
//! - curl's CLI run from a shell by a Python handler: its own process
//!   records its call as the exact plaintext (its `SSL_connect` reaches
//!   `SSL_do_handshake` by a tail call). A program `exec`'d per request is
//!   not part of the parent's session (its calls are its own process's
//!   background records), so that route is recorded, not replayed.

use koala_session::Tls;
use koala_tests::replay::*;
use koala_tests::tls::*;
use koala_tests::*;

/// The backend's answer to `GET /c/<item>`, exactly.
fn backend_answer(item: &str) -> Vec<u8> {
    let body = format!("price of {item}\n");
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// `call` was recorded through the TLS hooks (`"tls": true`) and its
/// request is `GET /c/<item>`, exactly as the backend read it (its request
/// heads in `heads`, each followed by `--end--`).
#[track_caller]
fn assert_plaintext_request(call: &Exchange, item: &str, heads: &[u8], what: &str) {
    assert_eq!(call.tls, Tls::Plaintext, "{what}");
    let request = call.request.as_bytes();
    assert!(
        request.starts_with(format!("GET /c/{item} HTTP/1.1\r\n").as_bytes()),
        "{what}"
    );
    assert!(
        find(heads, &[request, b"--end--\n"].concat()).is_some(),
        "the recorded request is exactly what the backend read\n{what}"
    );
}

/// The body of an HTTP message.
fn body(message: &[u8]) -> &[u8] {
    &message[find(message, b"\r\n\r\n").map_or(0, |at| at + 4)..]
}

fn require_php_curl() -> std::path::PathBuf {
    let php = require_program("php", "php-cli php-curl");
    let loaded = clean_command(&php).arg("-m").output().expect("php -m");
    assert!(
        String::from_utf8_lossy(&loaded.stdout)
            .lines()
            .any(|m| m == "curl"),
        "PHP's curl extension is not installed: install php-curl"
    );
    php
}

/// `koala replay record --report REPORT -- php -S ... tls_curl_router.php`
/// with `env` for the service.
fn replay_php(
    dir: &TestDir,
    name: &str,
    php: &std::path::Path,
    port: u16,
    report: &str,
    env: &[(&str, String)],
) -> KoalaRun {
    let mut args: Vec<String> = ["replay", "record", "--lib"].map(String::from).to_vec();
    args.push(koala_lib().display().to_string());
    args.extend(["--report", report, "--service-log", "service.log", "--"].map(String::from));
    args.push(php.display().to_string());
    args.extend([
        "-S".to_string(),
        format!("127.0.0.1:{port}"),
        fixture("tls_curl_router.php").display().to_string(),
    ]);
    run_koala(dir, name, &args, env)
}

#[test]
fn tls_php_curl_recorded_and_replayed_with_verification_on() {
    let php = require_php_curl();
    let dir = TestDir::new("tls_php_curl");
    let (cert, key) = self_signed_certificate(&dir);
    let (mut backend, backend_port) = start_tls_backend(&dir, &cert, &key);
    let env = [
        ("BACKEND_PORT", backend_port.to_string()),
        ("CA_FILE", cert.clone()),
    ];

    // --- Record, the backend up.
    let port = free_port();
    let record = dir.join("record");
    let mut spec = Spec::new("record-service", &php)
        .args([
            "-S".to_string(),
            format!("127.0.0.1:{port}"),
            fixture("tls_curl_router.php").display().to_string(),
        ])
        .record_to(&record);
    for (key, value) in &env {
        spec = spec.env(key, value);
    }
    let mut service = spec.spawn(&dir);
    service.wait_for_port(port);
    let items = ["apple", "pear", "plum"];
    for item in items {
        let mut stream = connect(port);
        let answer = http_exchange(&mut stream, &item_request(port, item));
        assert_bytes(
            body(&answer),
            format!("curl: price of {item}\n").as_bytes(),
            "curl's answer through the service",
        );
    }
    wait_for_sessions(&record, items.len());
    // The built-in server dies on SIGTERM: its sessions were waited for.
    service.stop();

    let recording = Recording::read(&dir, "record", port);
    assert_eq!(
        recording.sessions.len(),
        items.len(),
        "one session per request\n{}",
        describe_dir(&record)
    );
    let heads = std::fs::read(dir.join("backend.log")).expect("backend log");
    let backend_peer = format!("127.0.0.1:{backend_port}");
    for (item, session) in recording.by_item() {
        let what = format!("recorded session of {item}\n{}", show(session));
        assert_eq!(session.calls.len(), 1, "{what}");
        let call = &session.calls[0];
        assert_plaintext_request(call, &item, &heads, &what);
        assert_exchange(
            call,
            &backend_peer,
            call.request.as_bytes(),
            &backend_answer(&item),
            &what,
        );
    }

    // --- Replay, the backend gone and a trap in its place.
    backend.stop();
    assert_port_closed(backend_port, "the backend");
    let trap = Trap::start(backend_port);
    let run = replay_php(&dir, "koala-replay", &php, port, "r.json", &env);
    assert_eq!(
        trap.reached(),
        Vec::<Vec<u8>>::new(),
        "the replay reached the backend's address"
    );
    run.assert_all_passed(items.len());
    let report = read_report(&dir.join("r.json"));
    assert_report_summary(
        &report,
        [items.len(), items.len(), 0, 0],
        [items.len(), 0, 0, 0],
    );
    for entry in report_entries(&report) {
        assert_eq!(entry["verdict"].as_str(), Some("pass"), "{entry}");
        let result = entry_result(entry);
        let recorded = recording.session(entry_id(entry));
        let what = format!("report entry {entry}");
        assert_calls_replayed(&result.calls, recorded, &what);
        // php -S answers with a Date header, which koala leaves out of the
        // comparison: the bodies are the recorded ones.
        assert_bytes(
            body(result.response.as_bytes()),
            body(recorded.inbound.response.as_bytes()),
            &format!("{what}: body"),
        );
    }

    // --- Replay with the backend's port bypassed: not redirected, so curl
    // gets the real OpenSSL — its ClientHello reaches the trap, which
    // answers plain HTTP, and the handshake fails.
    let mut bypassed = env.to_vec();
    bypassed.push(("KOALA_OUTBOUND_BYPASS", backend_peer.clone()));
    let run = replay_php(&dir, "koala-replay-bypass", &php, port, "b.json", &bypassed);
    let reached = trap.reached();
    assert_eq!(reached.len(), items.len(), "{}", run.output());
    for hello in &reached {
        assert!(
            hello.len() > 5 && hello[0] == 0x16 && hello[1] == 0x03,
            "a real TLS ClientHello reached the bypassed address: {hello:02x?}"
        );
    }
    let report = read_report(&dir.join("b.json"));
    let entries = report_entries(&report);
    assert_eq!(entries.len(), items.len(), "{report}");
    for entry in entries {
        assert_eq!(entry["verdict"].as_str(), Some("fail"), "{entry}");
        let result = entry_result(entry);
        let response = result.response.as_bytes();
        assert!(
            response.starts_with(b"HTTP/1.1 502 ") && body(response).starts_with(b"curl failed: "),
            "curl's real handshake with the trap failed: {}",
            String::from_utf8_lossy(response)
        );
    }
}

#[test]
fn tls_curl_cli_records_plaintext_in_its_own_process() {
    require_program("curl", "curl");
    let dir = TestDir::new("tls_curl_cli");
    let (cert, key) = self_signed_certificate(&dir);
    let (_backend, backend_port) = start_tls_backend(&dir, &cert, &key);

    let port = free_port();
    let record = dir.join("record");
    let args = [port.to_string(), backend_port.to_string(), cert.clone()];
    let mut service = Spec::python_fixture("service", "tls_curl_service.py")
        .args(&args)
        .record_to(&record)
        .spawn(&dir);
    service.wait_for_port(port);
    let items = ["apple", "pear"];
    for item in items {
        let mut stream = connect(port);
        let request = format!("GET /{item} HTTP/1.1\r\nHost: service\r\n\r\n");
        let answer = http_exchange(&mut stream, request.as_bytes());
        let body = format!("curl: price of {item}\n");
        assert_bytes(
            &answer,
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
            "curl's answer through the service",
        );
    }
    wait_for_sessions(&record, items.len());
    service.stop_cleanly();

    // Each curl process recorded its call: the exact plaintext.
    let heads = std::fs::read(dir.join("backend.log")).expect("backend log");
    let mut curl_calls: Vec<_> = background_records(&record)
        .into_iter()
        .filter(|s| s.program == "curl")
        .flat_map(|s| s.calls)
        .collect();
    curl_calls.sort_by_key(|c| c.request_ns);
    assert_eq!(curl_calls.len(), items.len(), "{}", describe_dir(&record));
    for (call, item) in curl_calls.iter().zip(items) {
        let what = format!("curl's call for {item}: {call:?}");
        assert_plaintext_request(call, item, &heads, &what);
        assert_bytes(
            call.response.as_bytes(),
            &backend_answer(item),
            &format!("{what}: response"),
        );
    }
}
