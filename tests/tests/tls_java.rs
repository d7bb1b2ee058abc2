//! TLS koala cannot see into (issue 12, test 5): a Java 17 service
//! (`fixtures/java/TlsJavaService.java`, run from source by `java` under
//! `koala record`) calls an HTTPS backend through `java.net.http.HttpClient`,
//! verifying its self-signed certificate. Java's TLS (JSSE) encrypts inside
//! the JVM: no OpenSSL call is made, the library sees only the ciphertext on
//! the socket. Each backend call is recorded as it went over the wire and
//! marked `"tls": "ciphertext"` (the first a ClientHello), the exchanges are
//! counted in the library's summary line and in `koala record`'s summary,
//! `koala show` marks them `(encrypted)` and says why, and `koala replay`
//! (the backend stopped) reports every session as an error, not replayable
//! because its traffic was encrypted — not as a mismatch.

use koala_session::Tls;
use koala_tests::replay::*;
use koala_tests::tls::*;
use koala_tests::*;

/// `java -Djava.net.preferIPv4Stack=true TlsJavaService.java`.
fn java_command() -> Vec<String> {
    vec![
        require_program("java", "openjdk-17-jdk-headless")
            .display()
            .to_string(),
        // IPv4 sockets: addresses as the other tests see them.
        "-Djava.net.preferIPv4Stack=true".to_string(),
        fixture("java/TlsJavaService.java").display().to_string(),
    ]
}

#[test]
fn tls_java_ciphertext_marked_counted_and_explained() {
    let dir = TestDir::new("tls_java");
    let (cert, key) = self_signed_certificate(&dir);
    let (mut backend, backend_port) = start_tls_backend(&dir, &cert, &key);

    // --- Record under `koala record`, one request at a time.
    let port = free_port();
    let service_args = [port.to_string(), backend_port.to_string(), cert.clone()];
    let mut koala = Spec::new("koala", koala_bin())
        .args(["record", "--lib"])
        .arg(koala_lib().display())
        .args(["--to", "record", "--"])
        .args(java_command())
        .args(&service_args)
        .spawn(&dir);
    koala.wait_for_port(port);
    let items = ["apple", "pear"];
    for item in items {
        let mut stream = connect(port);
        let answer = http_exchange(&mut stream, &item_request(port, item));
        let body = &answer[find(&answer, b"\r\n\r\n").expect("answer head") + 4..];
        assert_bytes(
            body,
            format!("java: price of {item}\n").as_bytes(),
            &format!("the Java service's answer\n{}", koala.output_report()),
        );
    }
    let record = dir.join("record");
    wait_for_sessions(&record, items.len());
    koala.stop_cleanly();
    let koala_stderr = koala.stderr();

    let recording = Recording::read(&dir, "record", port);
    assert_eq!(
        recording.sessions.len(),
        items.len(),
        "{}",
        describe_dir(&record)
    );
    let backend_peer = format!("127.0.0.1:{backend_port}");
    let mut encrypted = 0;
    for (item, session) in recording.by_item() {
        let what = format!("session of {item}\n{}", show(session));
        assert_eq!(session.inbound.tls, Tls::None, "{what}");
        assert!(!session.calls.is_empty(), "{what}");
        for call in &session.calls {
            assert_eq!(call.peer, backend_peer, "{what}");
            assert_eq!(call.tls, Tls::Ciphertext, "{what}");
            assert!(
                find(call.request.as_bytes(), b"GET /c/").is_none(),
                "no plaintext in the recording\n{what}"
            );
        }
        encrypted += session.calls.len();
    }
    // The first connection's handshake is there, as on the wire: a request
    // starting with the ClientHello. (HttpClient writes from one thread and
    // reads from another: the ServerHello may be recorded first, as a call
    // with an empty request.)
    let first = recording
        .sessions
        .iter()
        .map(|(_, s)| s)
        .min_by_key(|s| s.inbound.request_ns)
        .expect("a session");
    assert!(
        first
            .calls
            .iter()
            .any(|call| matches!(call.request.as_bytes(), [0x16, 0x03, _, _, _, 0x01, ..])),
        "a recorded request is the ClientHello\n{}",
        show(first)
    );
    for record in &recording.background {
        encrypted += record
            .calls
            .iter()
            .filter(|c| c.tls == Tls::Ciphertext)
            .count();
    }

    // Counted: the library's summary line and koala record's summary.
    let mut log = String::new();
    for entry in std::fs::read_dir(&record).expect("record dir").flatten() {
        if entry.file_name().to_string_lossy().starts_with("koala.log") {
            log += &std::fs::read_to_string(entry.path()).unwrap_or_default();
        }
    }
    let counted = format!(" ciphertext_exchanges={encrypted} ");
    assert!(log.contains(&counted), "{counted}\n{log}");
    let said = format!(
        "koala record:   {encrypted} exchanges encrypted: TLS koala could not see into (Java's JSSE"
    );
    assert!(koala_stderr.contains(&said), "{said}\n{koala_stderr}");

    // koala show marks each encrypted call (`encrypted`, and a line saying
    // so) and says why it matters.
    let shown = run_koala(&dir, "koala-show", &["show".into(), "record".into()], &[]);
    assert_eq!(shown.code, Some(0), "{}", shown.output());
    assert_eq!(
        shown
            .stdout
            .matches("(ciphertext: TLS koala could not see into; this session cannot be replayed)")
            .count(),
        encrypted,
        "{}",
        shown.output()
    );
    assert!(
        shown.stdout.contains(&format!(
            "{} session(s) hold encrypted traffic: TLS done where koala cannot see the plaintext (Java's JSSE",
            items.len()
        )),
        "{}",
        shown.output()
    );

    // --- Replay, the backend stopped: each session is an error saying why.
    backend.stop();
    assert_port_closed(backend_port, "the backend");
    let mut args: Vec<String> = ["replay", "record", "--lib"].map(String::from).to_vec();
    args.push(koala_lib().display().to_string());
    args.extend(["--report", "r.json", "--"].map(String::from));
    args.extend(java_command());
    args.extend(service_args.iter().cloned());
    let run = run_koala(&dir, "koala-replay", &args, &[]);
    let out = run.output();
    assert_eq!(run.code, Some(1), "{out}");
    run.assert_summary([items.len(), 0, 0, items.len()], [0, 0, 0, 0]);
    assert!(
        run.stderr.contains(&format!(
            "koala: {} session(s) hold encrypted traffic and cannot be replayed",
            items.len()
        )),
        "{out}"
    );
    for (_, session) in &recording.sessions {
        let error = run
            .stdout
            .lines()
            .skip_while(|line| !line.starts_with(&format!("ERROR {}", session.id)))
            .nth(1)
            .unwrap_or_else(|| panic!("no error for {}\n{out}", session.id));
        assert!(
            error.contains("not replayable: its traffic was encrypted")
                && error.contains(&format!("call 1 to {backend_peer}"))
                && error.contains("TLS of Java"),
            "{out}"
        );
    }
    assert!(!run.stdout.lines().any(|l| l.starts_with("FAIL ")), "{out}");
}
