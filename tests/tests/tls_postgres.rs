//! Two copies of OpenSSL in one process: a Python service reads PostgreSQL
//! (`ssl = on`) through psycopg2 with `sslmode=require` — psycopg2-binary's
//! libpq and the libssl it bundles under a hashed soname — and calls an
//! HTTPS backend with `requests` — Python's `_ssl` and the system libssl —
//! in the same request, on the same thread. Each TLS hook must reach the
//! libssl its caller is linked against: the wrong copy's `SSL_read` on the
//! other's `SSL*` would crash the service.
//!
//! Recorded: the service answers every request; PostgreSQL's SSLRequest is a
//! call in clear (answered `S`), everything after it on that connection is
//! the plaintext protocol (`"tls": true`: the start-up message, the SCRAM
//! exchange, each query), and the HTTPS call is the backend's exact
//! plaintext.
//!
//! Replayed with PostgreSQL and the backend stopped (`sslmode=require` and
//! the certificate verification of `requests` left on): the outbound server
//! answers the SSLRequest `S`, as recorded, libpq's handshake (its own BIO,
//! its own libssl) is answered by the TLS hooks without I/O — it gets the
//! stand-in peer certificate it asks for — and the start-up, queries and the
//! HTTPS call are matched in plaintext: every session passes.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use koala_session::Tls;
use koala_tests::python_stacks::*;
use koala_tests::replay::*;
use koala_tests::tls::*;
use koala_tests::*;

/// `psql -tAc SQL` as the superuser over the server's unix socket.
fn psql(dir: &TestDir, port: u16, sql: &str) -> String {
    let output = clean_command(postgres_bin().join("psql"))
        .args(["--no-psqlrc", "-tA", "-v", "ON_ERROR_STOP=1"])
        .args(["-h", dir.join("pg").to_str().unwrap()])
        .args(["-p", &port.to_string(), "-U", "postgres", "-d", "postgres"])
        .args(["-c", sql])
        .output()
        .expect("run psql");
    assert!(
        output.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// Turns TLS on in a running server: its certificate in the data directory,
/// owned by the server's user, the key private; `ssl = on`, reloaded.
fn enable_ssl(dir: &TestDir, port: u16, cert: &str, key: &str) {
    let data = dir.join("pg").join("data");
    fs::copy(cert, data.join("server.crt")).expect("copy the certificate");
    fs::copy(key, data.join("server.key")).expect("copy the key");
    fs::set_permissions(data.join("server.key"), fs::Permissions::from_mode(0o600)).unwrap();
    // SAFETY: geteuid has no memory effects.
    if unsafe { libc::geteuid() } == 0 {
        for file in ["server.crt", "server.key"] {
            let status = clean_command("chown")
                .arg("postgres:postgres")
                .arg(data.join(file))
                .status()
                .expect("run chown");
            assert!(status.success(), "chown {file}");
        }
    }
    psql(dir, port, "ALTER SYSTEM SET ssl = on");
    psql(dir, port, "SELECT pg_reload_conf()");
    // The reload is asynchronous: a new session sees the setting once done.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while psql(dir, port, "SHOW ssl") != "on" {
        assert!(
            std::time::Instant::now() < deadline,
            "PostgreSQL did not turn ssl on"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn backend_response(item: &str) -> Vec<u8> {
    let body = format!("price of {item}\n");
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[test]
fn tls_postgres_and_https_with_two_openssl_copies() {
    let dir = TestDir::new("tls_postgres");
    let (cert, key) = self_signed_certificate(&dir);
    let (mut postgres, pg_port) = start_postgres(&dir);
    enable_ssl(&dir, pg_port, &cert, &key);
    let (mut backend, backend_port) = start_tls_backend(&dir, &cert, &key);

    let port = free_port();
    let record = dir.join("record");
    let mut service = Spec::python_fixture("service", "tls_pg_service.py")
        .args([port, pg_port, backend_port])
        .record_to(&record)
        .env("REQUESTS_CA_BUNDLE", &cert)
        .spawn(&dir);
    service.wait_for_port(port);
    let ids = [3u32, 5];
    for id in ids {
        let mut stream = connect(port);
        let request = format!("GET /item/{id} HTTP/1.1\r\nHost: service\r\n\r\n");
        let answer = http_exchange(&mut stream, request.as_bytes());
        let (name, price) = pg_item(id);
        let body = format!("{name} {price} price of {id}\n");
        let expected = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        assert_bytes(&answer, expected.as_bytes(), "the service's answer");
    }
    // Both copies of libssl are in the process.
    let maps = fs::read_to_string(format!("/proc/{}/maps", service.pid())).expect("maps");
    assert!(maps.contains("/libssl.so.3"), "the system libssl is loaded");
    assert!(
        maps.lines()
            .any(|l| l.contains("psycopg2_binary.libs/libssl-")),
        "psycopg2-binary's own libssl is loaded"
    );
    let sessions = wait_for_sessions(&record, ids.len());
    service.stop_cleanly();

    let first = sessions
        .iter()
        .find(|s| s.inbound.request.as_bytes().starts_with(b"GET /item/3 "))
        .expect("the first session");
    let pg_peer = format!("127.0.0.1:{pg_port}");
    let pg: Vec<_> = first.calls.iter().filter(|c| c.peer == pg_peer).collect();
    // SSLRequest in clear, answered S; then the protocol in plaintext.
    assert_bytes(
        pg[0].request.as_bytes(),
        &pg_ssl_request(),
        "the SSLRequest",
    );
    assert_bytes(pg[0].response.as_bytes(), b"S", "its answer");
    assert_eq!(pg[0].tls, Tls::None, "{}", show(first));
    assert!(pg.len() >= 3, "{}", show(first));
    for call in &pg[1..] {
        assert_eq!(call.tls, Tls::Plaintext, "{}", show(first));
    }
    assert!(pg_is_startup(pg[1].request.as_bytes()), "{}", show(first));
    assert_eq!(
        pg_auth_code(pg[1].response.as_bytes()),
        Some(10),
        "SASL: {}",
        show(first)
    );
    for session in &sessions {
        let id = request_item(session.inbound.request.as_bytes());
        let query = format!("SELECT name, price FROM items WHERE id = {id}");
        let pg_query_call = session
            .calls
            .iter()
            .find(|c| c.peer == pg_peer && find(c.request.as_bytes(), query.as_bytes()).is_some())
            .unwrap_or_else(|| panic!("no plaintext query for {id}\n{}", show(session)));
        assert_eq!(pg_query_call.tls, Tls::Plaintext);
        assert_bytes(
            pg_query_call.request.as_bytes(),
            &pg_query(&query),
            "the query, in plaintext",
        );
        let https: Vec<_> = session
            .calls
            .iter()
            .filter(|c| c.peer == format!("127.0.0.1:{backend_port}"))
            .collect();
        assert_eq!(https.len(), 1, "{}", show(session));
        assert_eq!(https[0].tls, Tls::Plaintext);
        assert_bytes(
            https[0].response.as_bytes(),
            &backend_response(&id),
            "the backend's answer, in plaintext",
        );
    }

    // --- Replay, PostgreSQL and the backend stopped.
    postgres.stop();
    backend.stop();
    assert_port_closed(pg_port, "PostgreSQL");
    assert_port_closed(backend_port, "the backend");
    let run = replay_python(
        &dir,
        "koala-replay",
        &["--report", "r.json"],
        "tls_pg_service.py",
        &[
            port.to_string(),
            pg_port.to_string(),
            backend_port.to_string(),
        ],
        &[("REQUESTS_CA_BUNDLE", cert.clone())],
    );
    run.assert_all_passed(ids.len());
    let report = read_report(&dir.join("r.json"));
    let mut ssl_requests = 0;
    for entry in report_entries(&report) {
        let result = entry_result(entry);
        let what = format!("report entry {entry}");
        assert!(
            result.unmatched.is_empty() && result.missing.is_empty(),
            "{what}"
        );
        for call in result.calls.iter().filter(|c| c.peer == pg_peer) {
            if call.request.as_bytes() == pg_ssl_request() {
                // Answered S, as recorded.
                assert_eq!(call.served.as_bytes(), b"S", "{what}");
                ssl_requests += 1;
            }
        }
    }
    // One PostgreSQL connection, opened by the first request.
    assert_eq!(ssl_requests, 1, "{report}");
}
