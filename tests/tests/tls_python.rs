//! TLS seen from inside: a Python service calls an HTTPS backend (a
//! self-signed certificate made here with the `openssl` CLI, trusted
//! through `REQUESTS_CA_BUNDLE`/`SSL_CERT_FILE`, verification on) with
//! `requests` (a pooled connection, two requests) and with `urllib`. The
//! calls hold the plaintext exactly as the backend read and wrote it,
//! marked `"tls": true`, and no ciphertext. A third route uses asyncio's
//! streams, where OpenSSL works on memory BIOs and the library sees only
//! ciphertext: that call is marked `"tls": "ciphertext"`, counted in the
//! summary, and explained by `koala show`. Then the backend is stopped and
//! `koala replay` replays the plaintext sessions (the service's
//! verification still on, no CA, no configuration change): they pass; the
//! encrypted one is an error that says why it cannot be replayed.

use koala_session::Tls;
use koala_tests::replay::*;
use koala_tests::tls::*;
use koala_tests::*;

fn backend_response(item: &str) -> Vec<u8> {
    let body = format!("price of {item}\n");
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn service_response(item: &str) -> Vec<u8> {
    let body = format!("got: price of {item}\n");
    format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The request heads the backend read, in order.
fn backend_log(dir: &TestDir) -> Vec<Vec<u8>> {
    let log = std::fs::read(dir.join("backend.log")).expect("backend log");
    let mut heads = Vec::new();
    let mut rest = &log[..];
    while let Some(at) = find(rest, b"--end--\n") {
        heads.push(rest[..at].to_vec());
        rest = &rest[at + b"--end--\n".len()..];
    }
    heads
}

#[test]
fn tls_python_requests_urllib_and_asyncio() {
    let dir = TestDir::new("tls_python");
    let (cert, key) = self_signed_certificate(&dir);
    let (mut backend, backend_port) = start_tls_backend(&dir, &cert, &key);

    let port = free_port();
    let trust = [
        ("REQUESTS_CA_BUNDLE", cert.clone()),
        ("SSL_CERT_FILE", cert.clone()),
    ];
    let record = dir.join("record");
    let mut spec = Spec::python_fixture("service", "tls_service.py")
        .args([port, backend_port])
        .record_to(&record)
        .env("KOALA_LOG_FILE", "stderr");
    for (key, value) in &trust {
        spec = spec.env(key, value);
    }
    let mut service = spec.spawn(&dir);
    service.wait_for_port(port);
    let paths = [
        ("requests", "apple"),
        ("requests", "pear"),
        ("urllib", "plum"),
        ("async", "kiwi"),
    ];
    for (route, item) in paths {
        let mut stream = connect(port);
        let request = format!("GET /{route}/{item} HTTP/1.1\r\nHost: service\r\n\r\n");
        let answer = http_exchange(&mut stream, request.as_bytes());
        assert_bytes(&answer, &service_response(item), route);
    }
    let sessions = wait_for_sessions(&record, paths.len());
    service.stop_cleanly();
    let log = service.stderr();
    assert!(
        log.contains(" ciphertext_exchanges=2 "),
        "the summary counts the encrypted calls (handshake, then data)\n{log}"
    );

    // Plaintext, exactly as the backend read it and answered.
    let heads = backend_log(&dir);
    assert_eq!(heads.len(), paths.len(), "requests the backend read");
    let by_item = |item: &str| {
        sessions
            .iter()
            .find(|s| {
                s.inbound
                    .request
                    .as_bytes()
                    .windows(item.len())
                    .any(|w| w == item.as_bytes())
            })
            .unwrap_or_else(|| panic!("no session for {item}"))
    };
    for (index, (route, item)) in paths.iter().enumerate() {
        let session = by_item(item);
        let call = &session.calls[0];
        assert_eq!(
            session.inbound.tls,
            Tls::None,
            "the service's own port is plain"
        );
        if *route == "async" {
            let tls: Vec<Tls> = session.calls.iter().map(|c| c.tls).collect();
            assert_eq!(tls, [Tls::Ciphertext; 2], "{}", show(session));
            assert!(
                matches!(call.request.as_bytes(), [0x16, 0x03, _, _, _, 0x01, ..]),
                "the recorded request is the ClientHello\n{}",
                show(session)
            );
            continue;
        }
        assert_eq!(session.calls.len(), 1, "{}", show(session));
        assert_eq!(call.tls, Tls::Plaintext, "{}", show(session));
        assert_bytes(
            call.request.as_bytes(),
            &heads[index],
            "the recorded request",
        );
        assert_bytes(
            call.response.as_bytes(),
            &backend_response(item),
            "the recorded response",
        );
        assert_eq!(call.peer, format!("127.0.0.1:{backend_port}"));
    }
    // requests kept its connection: the second call is the second exchange on it.
    assert_eq!(
        by_item("apple").calls[0].conn,
        by_item("pear").calls[0].conn
    );
    assert_eq!(by_item("pear").calls[0].seq, Some(1));

    // koala show says which traffic was encrypted, and why it matters.
    let shown = run_koala(&dir, "koala-show", &["show".into(), "record".into()], &[]);
    assert_eq!(shown.code, Some(0), "{}", shown.output());
    assert!(
        shown.stdout.contains("call 1 [http] (tls)"),
        "{}",
        shown.output()
    );
    assert!(
        shown.stdout.contains("(encrypted)")
            && shown.stdout.contains("1 session(s) hold encrypted traffic"),
        "{}",
        shown.output()
    );

    // --- Replay with the backend gone: no TLS on the wire, no CA needed.
    backend.stop();
    assert_port_closed(backend_port, "the backend");
    let run = replay_python(
        &dir,
        "koala-replay",
        &[],
        "tls_service.py",
        &[port.to_string(), backend_port.to_string()],
        &trust,
    );
    let out = run.output();
    assert_eq!(run.code, Some(1), "{out}");
    run.assert_summary([4, 3, 0, 1], [3, 0, 0, 0]);
    let kiwi = &by_item("kiwi").id;
    let error = run
        .stdout
        .lines()
        .skip_while(|line| !line.starts_with(&format!("ERROR {kiwi}")))
        .nth(1)
        .unwrap_or_else(|| panic!("no error for the encrypted session\n{out}"));
    assert!(
        error.contains("not replayable") && error.contains("encrypted"),
        "{out}"
    );
    assert_eq!(
        run.stdout
            .lines()
            .filter(|l| l.starts_with("FAIL "))
            .count(),
        0,
        "{out}"
    );
}
