//! nginx serving HTTPS (a self-signed certificate made here with the
//! `openssl` CLI) and proxying to a plain HTTP upstream, its clients speaking
//! TLS with curl. The inbound side is recorded as nginx's plaintext
//! (`"tls": true`): the exact request curl sent, the exact response nginx
//! wrote; the upstream call stays plain. Replayed through the inbound server
//! with the upstream stopped: the inbound server sends the plaintext request,
//! nginx's TLS calls are answered in plaintext (its first-byte peek, its
//! handshake, its reads and writes) and every session passes.

use std::fs;

use koala_session::Tls;
use koala_tests::replay::*;
use koala_tests::tls::*;
use koala_tests::*;

/// `curl -si --cacert CERT URL`: the response as curl read it (plaintext).
fn curl(cert: &str, url: &str) -> String {
    let output = clean_command(require_program("curl", "curl"))
        .args(["-si", "--http1.1", "--cacert", cert, url])
        .output()
        .expect("run curl");
    assert!(
        output.status.success(),
        "curl {url}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn tls_nginx_inbound_https() {
    let dir = TestDir::new("tls_nginx");
    let (cert, key) = self_signed_certificate(&dir);
    let record = dir.join("record");
    let nginx_dir = dir.join("nginx");
    fs::create_dir_all(&nginx_dir).unwrap();

    let upstream_port = free_port();
    let mut upstream = Spec::python_fixture("upstream", "backend.py")
        .arg(upstream_port)
        .spawn(&dir);
    upstream.wait_for_port(upstream_port);

    let port = free_port();
    let conf = fs::read_to_string(fixture("nginx_tls.conf.in"))
        .unwrap()
        .replace("@DIR@", nginx_dir.to_str().unwrap())
        .replace("@PORT@", &port.to_string())
        .replace("@UPSTREAM@", &upstream_port.to_string())
        .replace("@CERT@", &cert)
        .replace("@KEY@", &key);
    let conf_path = nginx_dir.join("nginx.conf");
    fs::write(&conf_path, conf).unwrap();
    let nginx_args = [
        "-p".to_string(),
        format!("{}/", nginx_dir.display()),
        "-c".to_string(),
        conf_path.display().to_string(),
        "-e".to_string(),
        nginx_dir.join("error.log").display().to_string(),
    ];
    let nginx_program = require_program("nginx", "nginx-light");

    let mut nginx = Spec::new("nginx", &nginx_program)
        .args(&nginx_args)
        .record_to(&record)
        .spawn(&dir);
    nginx.wait_for_port(port);
    let items = ["a1", "b2", "c3"];
    for item in items {
        let answer = curl(&cert, &format!("https://localhost:{port}/api/{item}"));
        assert!(
            answer.starts_with("HTTP/1.1 200 OK\r\n")
                && answer.ends_with(&format!("\r\n\r\nbackend says {item}\n")),
            "{answer}"
        );
    }
    let sessions = wait_for_sessions(&record, items.len());
    nginx.stop();

    for item in items {
        let session = sessions
            .iter()
            .find(|s| request_item(s.inbound.request.as_bytes()) == item)
            .unwrap_or_else(|| panic!("no session for {item}"));
        assert_eq!(session.inbound.tls, Tls::Plaintext, "{}", show(session));
        assert_bytes(
            session.inbound.request.as_bytes(),
            format!(
                "GET /api/{item} HTTP/1.1\r\nHost: localhost:{port}\r\nUser-Agent: {}\r\nAccept: */*\r\n\r\n",
                curl_user_agent()
            )
            .as_bytes(),
            "curl's request, in plaintext",
        );
        let response = session.inbound.response.as_bytes();
        assert!(
            response.starts_with(b"HTTP/1.1 200 OK\r\nServer: nginx\r\n")
                && response.ends_with(format!("\r\n\r\nbackend says {item}\n").as_bytes()),
            "nginx's response, in plaintext: {}",
            show(session)
        );
        assert_eq!(session.calls.len(), 1, "{}", show(session));
        assert_eq!(
            session.calls[0].tls,
            Tls::None,
            "the upstream is plain HTTP"
        );
        assert_eq!(session.calls[0].peer, format!("127.0.0.1:{upstream_port}"));
    }

    // --- Replay through the inbound server, the upstream stopped.
    upstream.stop();
    assert_port_closed(upstream_port, "the upstream");
    let mut args: Vec<String> = vec!["replay".into(), "record".into(), "--lib".into()];
    args.push(koala_lib().display().to_string());
    args.push("--".into());
    args.push(nginx_program.display().to_string());
    args.extend(nginx_args.iter().cloned());
    let run = run_koala(&dir, "koala-replay", &args, &[]);
    run.assert_all_passed(items.len());
    run.assert_summary([3, 3, 0, 0], [3, 0, 0, 0]);
}

/// curl's `User-Agent`: `curl/<version>`.
fn curl_user_agent() -> String {
    let output = clean_command(require_program("curl", "curl"))
        .arg("--version")
        .output()
        .expect("run curl --version");
    let text = String::from_utf8_lossy(&output.stdout);
    let version = text.split_whitespace().nth(1).unwrap_or_default();
    format!("curl/{version}")
}
