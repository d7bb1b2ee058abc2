//! Redaction of secrets (KOALA_REDACT, on by default): a Python service
//! called with an `Authorization` header, which logs in to a redis-server
//! started with `requirepass` (`AUTH`), records neither secret in clear —
//! the session file holds tokens, the key is a 0600 file beside it — and
//! still replays with redis stopped: `koala replay --secret
//! authorization=...` gives the header back to the service, and the
//! service's AUTH, redacted with the recording's key, matches its recorded
//! call. Without `--secret` each session is an error that says why.
//! A user regex (`KOALA_REDACT=regex:...`) redacts the client id in an
//! `X-Client` header the same way: only the match, the same token each time.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;

use koala_tests::replay::*;
use koala_tests::*;

const BEARER: &str = "Bearer tok-Zq81-client-secret";
const REDIS_PASSWORD: &str = "pw-Kx42-redis-secret";
/// Matched by the user regex [`CLIENT_RULE`]: only the id is a secret.
const CLIENT_ID: &str = "cl_Vb55Nq";
const CLIENT_RULE: &str = "regex:cl_[A-Za-z0-9]+";
const REQUESTS: usize = 2;

/// The service: `GET /greeting` checks the bearer token (401 otherwise),
/// then opens a redis connection with the password, reads `greeting`, and
/// answers `greeting=<value>`.
const SERVICE: &str = r#"
import signal
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

import redis

PORT, REDIS_PORT = int(sys.argv[1]), int(sys.argv[2])
PASSWORD, BEARER = sys.argv[3], sys.argv[4]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.headers.get("Authorization") != BEARER:
            status, body = 401, b"unauthorized\n"
        else:
            store = redis.Redis(host="127.0.0.1", port=REDIS_PORT, password=PASSWORD,
                                single_connection_client=True)
            body = b"greeting=" + (store.get("greeting") or b"?") + b"\n"
            store.close()
            status = 200
        self.send_response_only(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
HTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
"#;

fn request(port: u16) -> Vec<u8> {
    format!("GET /greeting HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: {BEARER}\r\nX-Client: id={CLIENT_ID}\r\n\r\n")
        .into_bytes()
}

/// `AUTH <password>` then `SET greeting hello` on a connection of the test.
fn seed(redis_port: u16) {
    let mut stream = connect(redis_port);
    stream
        .write_all(&resp_command(&["AUTH", REDIS_PASSWORD]))
        .unwrap();
    stream
        .write_all(&resp_command(&["SET", "greeting", "hello"]))
        .unwrap();
    let mut reply = [0u8; 10];
    stream.read_exact(&mut reply).expect("redis replies");
    assert_bytes(&reply, b"+OK\r\n+OK\r\n", "AUTH and SET");
}

#[test]
fn record_redaction() {
    let dir = TestDir::new("record_redaction");
    let record = dir.join("record");
    let script = dir.join("redact_service.py");
    fs::write(&script, SERVICE).unwrap();

    let redis_port = free_port();
    let mut redis = redis_spec(&dir, redis_port)
        .args(["--requirepass", REDIS_PASSWORD])
        .spawn(&dir);
    redis.wait_for_port(redis_port);
    seed(redis_port);

    let port = free_port();
    let service_args: Vec<String> = vec![
        port.to_string(),
        redis_port.to_string(),
        REDIS_PASSWORD.into(),
        BEARER.into(),
    ];
    let mut service = Spec::new("service", python())
        .arg("-u")
        .arg(script.display())
        .args(&service_args)
        .record_to(&record)
        .env("KOALA_REDACT", CLIENT_RULE)
        .spawn(&dir);
    service.wait_for_port(port);
    let expected = b"HTTP/1.1 200 OK\r\nContent-Length: 15\r\n\r\ngreeting=hello\n";
    let mut stream = connect(port);
    for n in 0..REQUESTS {
        let answer = http_exchange(&mut stream, &request(port));
        assert_bytes(&answer, expected, &format!("answer {n}"));
    }
    drop(stream);
    wait_for_sessions(&record, REQUESTS);
    service.stop_cleanly();

    // --- No secret in clear in anything written; tokens in their place.
    let files = session_files(&record);
    assert_eq!(files.len(), 1, "{}", describe_dir(&record));
    let raw = fs::read(record.join(&files[0].0)).unwrap();
    for secret in [BEARER, REDIS_PASSWORD, "tok-Zq81", "pw-Kx42", CLIENT_ID] {
        assert!(
            find(&raw, secret.as_bytes()).is_none(),
            "{secret:?} is in the session file:\n{}",
            String::from_utf8_lossy(&raw)
        );
    }
    let sessions = &files[0].1;
    let sessions: Vec<&Session> = sessions.iter().filter(|s| !s.is_background()).collect();
    assert_eq!(sessions.len(), REQUESTS, "{}", describe_dir(&record));
    let key_file = record.join(".koala-redact-key");
    let mode = fs::metadata(&key_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "key file mode {mode:o}");
    let key = fs::read_to_string(&key_file).unwrap();
    assert!(
        find(&raw, key.trim().as_bytes()).is_none(),
        "the key is in the sessions"
    );
    let token_of = |bytes: &[u8], after: &str| {
        let at = find(bytes, after.as_bytes())
            .unwrap_or_else(|| panic!("no {after:?} in {}", String::from_utf8_lossy(bytes)))
            + after.len();
        String::from_utf8_lossy(&bytes[at..at + 31]).into_owned()
    };
    let mut auth_tokens = Vec::new();
    let mut client_tokens = Vec::new();
    for session in &sessions {
        let what = show(session);
        let inbound = session.inbound.request.as_bytes();
        let header = token_of(inbound, "Authorization: ");
        assert!(header.starts_with("koala:redacted:"), "{what}");
        let client = token_of(inbound, "X-Client: id=");
        assert!(client.starts_with("koala:redacted:"), "{what}");
        assert_ne!(client, header, "{what}");
        assert_bytes(
            inbound,
            format!("GET /greeting HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: {header}\r\nX-Client: id={client}\r\n\r\n").as_bytes(),
            "the recorded inbound request",
        );
        client_tokens.push(client);
        let auth = session
            .calls
            .iter()
            .find(|call| find(call.request.as_bytes(), b"AUTH").is_some())
            .unwrap_or_else(|| panic!("no AUTH call: {what}"));
        // redis-py logs in with `HELLO 3 AUTH default <password>`.
        let token = token_of(auth.request.as_bytes(), "default\r\n$31\r\n");
        assert!(token.starts_with("koala:redacted:"), "{what}");
        assert_bytes(
            auth.request.as_bytes(),
            &resp_command(&["HELLO", "3", "AUTH", "default", &token]),
            "the recorded login",
        );
        auth_tokens.push((header, token));
    }
    assert_eq!(auth_tokens[0], auth_tokens[1], "same secret, same token");
    assert_eq!(client_tokens[0], client_tokens[1], "same match, same token");
    assert_ne!(
        auth_tokens[0].0, auth_tokens[0].1,
        "different secrets, different tokens"
    );

    // --- Replay with redis stopped.
    redis.stop();
    let replay = |name: &str, options: &[&str]| {
        let mut args: Vec<String> = vec!["replay".into(), "record".into(), "--lib".into()];
        args.push(koala_lib().display().to_string());
        args.extend(options.iter().map(|o| o.to_string()));
        args.extend(["--".into(), python().display().to_string(), "-u".into()]);
        args.push(script.display().to_string());
        args.extend(service_args.iter().cloned());
        run_koala(&dir, name, &args, &[])
    };
    let secret = format!("authorization={BEARER}");
    let client = format!("x-client=id={CLIENT_ID}");
    let run = replay(
        "koala-replay-secret",
        &[
            "--secret", &secret, "--secret", &client, "--report", "r.json",
        ],
    );
    run.assert_all_passed(REQUESTS);
    run.assert_summary([REQUESTS, REQUESTS, 0, 0], [run_calls(&run), 0, 0, 0]);
    // Every call answered from its own recorded call, the login included:
    // the service's HELLO AUTH, redacted with the recording's key, is the
    // recorded request byte for byte (so the report holds no secret either).
    let report_text = fs::read(dir.join("r.json")).unwrap();
    for secret in [BEARER, REDIS_PASSWORD, CLIENT_ID] {
        assert!(
            find(&report_text, secret.as_bytes()).is_none(),
            "{secret:?} in the report"
        );
    }
    let report = read_report(&dir.join("r.json"));
    for entry in report_entries(&report) {
        let result = entry_result(entry);
        let recorded = sessions
            .iter()
            .find(|s| s.id == result.id)
            .unwrap_or_else(|| panic!("no recorded session {}", result.id));
        assert_result_replays(&result, recorded, "replayed with --secret");
    }

    // Without --secret: each session is an error saying what to pass.
    let run = replay("koala-replay-no-secret", &[]);
    let out = run.output();
    assert_ne!(run.code, Some(0), "{out}");
    assert!(
        out.contains(
            "the inbound request has redacted headers (Authorization, X-Client); pass --secret NAME=... for each"
        ),
        "{out}"
    );
    run.assert_summary([REQUESTS, 0, 0, REQUESTS], [0, 0, 0, 0]);
}

/// The calls matched in a run (what the service's redis client sends per
/// connection depends on its version): the summary's own count, checked
/// to be non-zero.
fn run_calls(run: &KoalaRun) -> usize {
    let line = run
        .stdout
        .lines()
        .find_map(|line| line.trim_start().strip_prefix("calls matched"))
        .unwrap_or_else(|| panic!("no calls line\n{}", run.output()));
    let matched: usize = line.trim().parse().unwrap();
    assert!(matched >= 2 * REQUESTS, "{}", run.output());
    matched
}
