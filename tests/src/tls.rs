//! What the TLS tests (`tls_*`) share: a self-signed certificate for
//! `localhost` made with the `openssl` CLI, and `tls_backend.py` serving it.

use crate::*;

/// A self-signed certificate (subject `localhost`, subjectAltName
/// `localhost` and 127.0.0.1, two days) and its key, written to
/// `cert.pem` and `key.pem` in `dir`: their paths.
pub fn self_signed_certificate(dir: &TestDir) -> (String, String) {
    let openssl = require_program("openssl", "openssl");
    let cert = dir.join("cert.pem").display().to_string();
    let key = dir.join("key.pem").display().to_string();
    let status = clean_command(openssl)
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-keyout", &key, "-out", &cert, "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run openssl");
    assert!(status.success(), "openssl req failed");
    (cert, key)
}

/// `tls_backend.py` on a free port, serving `cert`; its request heads go to
/// `backend.log` in `dir`. Returns once it listens.
pub fn start_tls_backend(dir: &TestDir, cert: &str, key: &str) -> (Program, u16) {
    let port = free_port();
    let mut backend = Spec::python_fixture("backend", "tls_backend.py")
        .args([
            port.to_string(),
            cert.to_string(),
            key.to_string(),
            dir.join("backend.log").display().to_string(),
        ])
        .spawn(dir);
    backend.wait_for_port(port);
    (backend, port)
}
