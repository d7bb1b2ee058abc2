//! `koala ship` against a real nats-server with JetStream: a torn last
//! line waits until it is complete and a bad line is reported and skipped;
//! SIGKILLed in the middle of a file and restarted, it loses nothing and
//! duplicates nothing; an unreachable server, refused credentials and a
//! missing stream are clear errors with a non-zero exit that leave the
//! files (and the progress) as they were. Over TLS (certificates made here
//! with the openssl CLI): an untrusted server certificate, a refused
//! password, a missing client certificate and a `tls://` URL to a server
//! without TLS are clear errors too, and with the right files it ships.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use koala_tests::nats::*;
use koala_tests::replay::{KoalaRun, koala_bin, run_koala};
use koala_tests::*;

/// A session line with this id, padded to about `size` bytes.
fn session_line(id: &str, size: usize) -> String {
    let body = "x".repeat(size.saturating_sub(400));
    let session = serde_json::json!({
        "koala": 1, "id": id, "pid": 4242, "tid": 4242, "program": "svc", "end": "close",
        "inbound": {"local": "127.0.0.1:8080", "peer": "127.0.0.1:50000",
                    "request": format!("GET /{id} HTTP/1.1\r\n\r\n"),
                    "response": format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len()),
                    "request_ns": 1_700_000_000_000_000_000u64, "response_ns": 1_700_000_000_000_000_001u64},
        "calls": []
    });
    session.to_string()
}

fn ship(dir: &TestDir, name: &str, url: &str, extra: &[&str]) -> KoalaRun {
    ship_env(dir, name, url, extra, &[])
}

fn ship_env(
    dir: &TestDir,
    name: &str,
    url: &str,
    extra: &[&str],
    env: &[(&str, String)],
) -> KoalaRun {
    let mut args: Vec<String> = [
        "ship", "record", "--to", url, "--stream", "KOALA", "--once", "--host", "h1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    run_koala(dir, name, &args, env)
}

fn ids(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix}-{i}")).collect()
}

#[test]
fn torn_and_bad_lines() {
    let dir = TestDir::new("ship_torn_bad");
    let nats = Nats::single(&dir, ServerAuth::None);
    let record = dir.join("record");
    fs::create_dir_all(&record).unwrap();
    let file = record.join("svc-4242.jsonl");
    let last = session_line("1-4242-4", 600);
    let (head, tail) = last.split_at(last.len() / 2);
    fs::write(
        &file,
        format!(
            "{}\n{}\n{{\"koala\":1,\"id\":broken\n{}\n{head}",
            session_line("1-4242-1", 500),
            session_line("1-4242-2", 500),
            session_line("1-4242-3", 500),
        ),
    )
    .unwrap();

    let run = ship(&dir, "ship-1", &nats.url(), &["--create"]);
    assert_eq!(run.code, Some(0), "{}", run.output());
    assert!(
        run.stderr.contains("is not a session, skipped"),
        "the bad line is reported\n{}",
        run.output()
    );
    assert!(
        run.stderr.contains("1 torn last line(s)"),
        "{}",
        run.output()
    );
    assert_eq!(
        stream_ids(&nats.url(), "KOALA"),
        ["1-4242-1", "1-4242-2", "1-4242-3"],
        "the torn last line is not shipped, the bad one never\n{}",
        run.output()
    );

    // The line is completed: now it goes, once; nothing else again.
    let mut text = fs::read_to_string(&file).unwrap();
    text.push_str(tail);
    text.push('\n');
    fs::write(&file, text).unwrap();
    let run = ship(&dir, "ship-2", &nats.url(), &[]);
    assert_eq!(run.code, Some(0), "{}", run.output());
    assert!(
        !run.stderr.contains("not a session"),
        "the bad line is not reported twice\n{}",
        run.output()
    );
    let messages = stream_messages(&nats.url(), "KOALA");
    assert_eq!(
        stream_ids(&nats.url(), "KOALA"),
        ["1-4242-1", "1-4242-2", "1-4242-3", "1-4242-4"]
    );
    assert_eq!(
        messages[3].data,
        last.as_bytes(),
        "the line exactly as written"
    );
    assert_eq!(messages[3].subject, "koala.KOALA.session.svc.h1");
}

#[test]
fn sigkill_mid_file_then_restart() {
    let dir = TestDir::new("ship_sigkill");
    let nats = Nats::single(&dir, ServerAuth::None);
    let record = dir.join("record");
    fs::create_dir_all(&record).unwrap();
    const LINES: usize = 3000;
    let expected = ids("9", 0..LINES);
    let text: String = expected
        .iter()
        .map(|id| session_line(id, 2000) + "\n")
        .collect();
    let file = record.join("svc-4242.jsonl");
    fs::write(&file, &text).unwrap();
    let state = record.join(".koala-ship-KOALA.state");

    // Small batches, so the kill lands between two saves of the progress.
    let mut shipper = Spec::new("ship-killed", koala_bin())
        .args([
            "ship",
            "record",
            "--to",
            &nats.url(),
            "--stream",
            "KOALA",
            "--create",
            "--batch",
            "8",
            "--host",
            "h1",
        ])
        .spawn(&dir);
    let deadline = Instant::now() + Duration::from_secs(30);
    let offset = loop {
        let offset = fs::read_to_string(&state)
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .and_then(|v| v["files"].as_object()?.values().next()?["offset"].as_u64())
            .unwrap_or(0);
        if offset > (text.len() / 4) as u64 {
            break offset;
        }
        assert!(shipper.exited().is_none(), "{}", shipper.output_report());
        assert!(
            Instant::now() < deadline,
            "no progress\n{}",
            shipper.output_report()
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    // SAFETY: kill has no memory effects.
    unsafe { libc::kill(shipper.pid() as i32, libc::SIGKILL) };
    shipper.wait_for_exit(Duration::from_secs(10));
    assert!(
        offset < text.len() as u64,
        "killed in the middle of the file ({offset} of {} bytes)",
        text.len()
    );

    let run = ship(&dir, "ship-restarted", &nats.url(), &[]);
    assert_eq!(run.code, Some(0), "{}", run.output());
    let got = stream_ids(&nats.url(), "KOALA");
    assert_eq!(
        got.len(),
        LINES,
        "every line exactly once (no loss, no duplicate)"
    );
    assert_eq!(got, expected, "in file order");
    // The restart began where the saved progress said: it re-sent at most
    // the lines confirmed after the last save (de-duplicated), not the file.
    let resent = run
        .stderr
        .split("already in the stream")
        .next()
        .and_then(|s| s.rsplit(", ").next())
        .and_then(|n| n.trim().parse::<usize>().ok())
        .unwrap_or(0);
    assert!(resent < 200, "{resent} lines sent again\n{}", run.output());
    assert_eq!(
        fs::read_to_string(&file).unwrap(),
        text,
        "the file untouched"
    );
}

fn assert_fails_cleanly(run: &KoalaRun, wanted: &str, file: &Path, text: &str, state: &Path) {
    assert_eq!(run.code, Some(2), "{}", run.output());
    assert!(
        run.stderr.contains(wanted),
        "the error says {wanted:?}\n{}",
        run.output()
    );
    assert!(
        !run.stderr.contains("secret"),
        "no password in messages\n{}",
        run.output()
    );
    assert_eq!(
        fs::read_to_string(file).unwrap(),
        text,
        "nothing lost locally"
    );
    assert!(!state.exists(), "no progress recorded");
}

#[test]
fn unreachable_refused_and_missing_stream() {
    let dir = TestDir::new("ship_errors");
    let record = dir.join("record");
    fs::create_dir_all(&record).unwrap();
    let file = record.join("svc-4242.jsonl");
    let text: String = ids("5", 0..3)
        .iter()
        .map(|id| session_line(id, 500) + "\n")
        .collect();
    fs::write(&file, &text).unwrap();
    let state = record.join(".koala-ship-KOALA.state");

    // Nothing listens there.
    let port = free_port();
    let run = ship(
        &dir,
        "ship-unreachable",
        &format!("nats://127.0.0.1:{port}"),
        &["--create"],
    );
    assert_fails_cleanly(&run, "cannot reach a NATS server", &file, &text, &state);
    assert!(
        run.stderr.contains(&format!("127.0.0.1:{port}")),
        "{}",
        run.output()
    );
    // Not a NATS URL; TLS is refused with a reason.
    let run = ship(&dir, "ship-http", "http://127.0.0.1:4222", &[]);
    assert_fails_cleanly(&run, "not a NATS URL", &file, &text, &state);

    // A server with a user and password.
    let users = Nats::single(&dir, ServerAuth::User("koala", "right-secret"));
    let port = users.nodes[0].port;
    let run = ship(
        &dir,
        "ship-wrong-password",
        &format!("nats://koala:wrong-secret@127.0.0.1:{port}"),
        &["--create"],
    );
    assert_fails_cleanly(&run, "NATS authorization failed", &file, &text, &state);
    let run = ship(
        &dir,
        "ship-no-credentials",
        &users.nodes[0].url(),
        &["--create"],
    );
    assert_fails_cleanly(&run, "NATS_USER", &file, &text, &state);
    drop(users);

    // A server with a token.
    let tokens = Nats::single(&dir, ServerAuth::Token("token-secret"));
    let port = tokens.nodes[0].port;
    let run = ship(
        &dir,
        "ship-wrong-token",
        &format!("nats://not-it@127.0.0.1:{port}"),
        &["--create"],
    );
    assert_fails_cleanly(&run, "NATS authorization failed", &file, &text, &state);
    // The right token from the environment: it works.
    let mut args: Vec<String> = [
        "ship",
        "record",
        "--to",
        &tokens.nodes[0].url(),
        "--stream",
        "KOALA",
        "--once",
        "--create",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push("--quiet".into());
    let run = run_koala(
        &dir,
        "ship-token",
        &args,
        &[("NATS_TOKEN", "token-secret".into())],
    );
    assert_eq!(run.code, Some(0), "{}", run.output());
    assert_eq!(run.stderr, "", "--quiet prints nothing when all is well");
    fs::remove_file(&state).unwrap();
    drop(tokens);

    // No stream, and no --create.
    let nats = Nats::single(&dir, ServerAuth::None);
    let run = ship(&dir, "ship-no-stream", &nats.url(), &[]);
    assert_fails_cleanly(
        &run,
        "the stream KOALA does not exist",
        &file,
        &text,
        &state,
    );
    assert!(run.stderr.contains("--create"), "{}", run.output());
    let run = ship(&dir, "ship-created", &nats.url(), &["--create"]);
    assert_eq!(run.code, Some(0), "{}", run.output());
    assert_eq!(stream_ids(&nats.url(), "KOALA"), ids("5", 0..3));
}

#[test]
fn delete_shipped_removes_only_finished_files() {
    let dir = TestDir::new("ship_delete");
    let nats = Nats::single(&dir, ServerAuth::None);
    let record = dir.join("record");
    fs::create_dir_all(&record).unwrap();
    // A process that has exited wrote one file; this test process (alive)
    // the other.
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let gone_pid = gone.id();
    gone.wait().unwrap();
    let finished = record.join(format!("svc-{gone_pid}.jsonl"));
    let open = record.join(format!("svc-{}.jsonl", std::process::id()));
    fs::write(
        &finished,
        ids("7", 0..2)
            .iter()
            .map(|id| session_line(id, 500) + "\n")
            .collect::<String>(),
    )
    .unwrap();
    let torn = session_line("8-1", 500);
    fs::write(&open, format!("{}\n", session_line("8-0", 500))).unwrap();
    // A finished writer's file with a torn last line is kept: the line is
    // not shipped, so the file is not done.
    let torn_file = record.join(format!("svc-{gone_pid}-2.jsonl"));
    fs::write(&torn_file, &torn[..100]).unwrap();

    let run = ship(
        &dir,
        "ship-delete",
        &nats.url(),
        &["--create", "--delete-shipped"],
    );
    assert_eq!(run.code, Some(0), "{}", run.output());
    assert!(
        !finished.exists(),
        "shipped, writer gone: deleted\n{}",
        run.output()
    );
    assert!(open.exists(), "its writer still runs: kept");
    assert!(torn_file.exists(), "a torn line left: kept");
    assert!(
        run.stderr.contains("deleted 1 shipped file(s)"),
        "{}",
        run.output()
    );
    let mut got = stream_ids(&nats.url(), "KOALA");
    got.sort();
    assert_eq!(got, ["7-0", "7-1", "8-0"]);
}

/// A certificate authority, and the certificates it signed: the server's
/// (for 127.0.0.1) and a client's, made with the openssl CLI.
struct Pki {
    ca: PathBuf,
    server: PathBuf,
    server_key: PathBuf,
    client: PathBuf,
    client_key: PathBuf,
}

fn make_pki(dir: &TestDir) -> Pki {
    let openssl = require_program("openssl", "openssl");
    let run = |args: &[&str]| {
        let output = clean_command(&openssl)
            .args(args)
            .current_dir(dir.path())
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run openssl");
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &["-days", "2", "-keyout", "ca.key", "-out", "ca.pem"],
        &["-subj", "/CN=koala test CA"],
        &["-addext", "basicConstraints=critical,CA:TRUE"],
        &["-addext", "keyUsage=critical,keyCertSign,cRLSign"],
    ]
    .concat());
    for (name, extension) in [
        ("server", "subjectAltName=IP:127.0.0.1"),
        ("client", "extendedKeyUsage=clientAuth"),
    ] {
        let (key, csr, pem, ext) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
        );
        fs::write(dir.join(&ext), format!("{extension}\n")).unwrap();
        run(&[
            &["req"][..],
            &ec,
            &[
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &format!("/CN={name}"),
            ],
        ]
        .concat());
        run(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &pem,
            "-extfile",
            &ext,
        ]);
    }
    Pki {
        ca: dir.join("ca.pem"),
        server: dir.join("server.pem"),
        server_key: dir.join("server.key"),
        client: dir.join("client.pem"),
        client_key: dir.join("client.key"),
    }
}

#[test]
fn tls_to_the_server() {
    let dir = TestDir::new("ship_tls");
    let pki = make_pki(&dir);
    let record = dir.join("record");
    fs::create_dir_all(&record).unwrap();
    let file = record.join("svc-4242.jsonl");
    let text: String = ids("6", 0..3)
        .iter()
        .map(|id| session_line(id, 500) + "\n")
        .collect();
    fs::write(&file, &text).unwrap();
    let state = record.join(".koala-ship-KOALA.state");
    let ca = || ("NATS_CA", pki.ca.display().to_string());

    // A server that requires TLS, and a user and password.
    let tls = format!(
        "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n}}\n",
        pki.server.display(),
        pki.server_key.display()
    );
    let users = Nats::single_with(&dir, ServerAuth::User("koala", "right-secret"), &tls);
    let port = users.nodes[0].port;
    let right = format!("nats://koala:right-secret@127.0.0.1:{port}");
    // Its certificate authority not given: not trusted.
    let run = ship(&dir, "ship-untrusted", &right, &["--create"]);
    assert_fails_cleanly(&run, "certificate is not trusted", &file, &text, &state);
    assert!(
        run.stderr.contains("NATS_CA"),
        "says what to give\n{}",
        run.output()
    );
    // Trusted, but the wrong password.
    let wrong = format!("nats://koala:wrong-secret@127.0.0.1:{port}");
    let run = ship_env(
        &dir,
        "ship-tls-wrong-password",
        &wrong,
        &["--create"],
        &[ca()],
    );
    assert_fails_cleanly(&run, "NATS authorization failed", &file, &text, &state);
    // Both right: shipped (nats:// is upgraded, as the server requires).
    let run = ship_env(&dir, "ship-tls", &right, &["--create"], &[ca()]);
    assert_eq!(run.code, Some(0), "{}", run.output());
    let trust = Tls {
        ca: Some(pki.ca.clone()),
        ..Tls::default()
    };
    assert_eq!(stream_ids_with(&right, "KOALA", &trust), ids("6", 0..3));
    // And read back by koala show from a tls:// URL.
    let shown = run_koala(
        &dir,
        "show-tls",
        &[
            "show".into(),
            format!("tls://koala:right-secret@127.0.0.1:{port}/KOALA"),
        ],
        &[ca()],
    );
    assert_eq!(shown.code, Some(0), "{}", shown.output());
    for id in ids("6", 0..3) {
        assert!(
            shown.stdout.contains(&format!("session {id} ")),
            "{}",
            shown.output()
        );
    }
    // The reading side (koala replay, from the stream) says the same.
    let replay = |name: &str, url: String, env: &[(&str, String)]| {
        let args: Vec<String> = ["replay", &url, "--", "true"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let run = run_koala(&dir, name, &args, env);
        assert_eq!(run.code, Some(2), "{}", run.output());
        assert!(!run.stderr.contains("secret"), "{}", run.output());
        run.stderr
    };
    let said = replay("replay-untrusted", format!("{right}/KOALA"), &[]);
    assert!(said.contains("certificate is not trusted"), "{said}");
    let said = replay("replay-wrong-password", format!("{wrong}/KOALA"), &[ca()]);
    assert!(said.contains("NATS authorization failed"), "{said}");
    let said = replay("replay-no-stream", format!("{right}/NOPE"), &[ca()]);
    assert!(said.contains("the stream NOPE does not exist"), "{said}");
    fs::remove_file(&state).unwrap();
    drop(users);

    // A server that verifies its clients' certificates.
    let verify = format!(
        "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: true\n}}\n",
        pki.server.display(),
        pki.server_key.display(),
        pki.ca.display()
    );
    let verifying = Nats::single_with(&dir, ServerAuth::None, &verify);
    let url = verifying.nodes[0].url();
    let run = ship_env(&dir, "ship-no-client-cert", &url, &["--create"], &[ca()]);
    assert_fails_cleanly(&run, "NATS_CERT and NATS_KEY", &file, &text, &state);
    let client = [
        ca(),
        ("NATS_CERT", pki.client.display().to_string()),
        ("NATS_KEY", pki.client_key.display().to_string()),
    ];
    let run = ship_env(&dir, "ship-client-cert", &url, &["--create"], &client);
    assert_eq!(run.code, Some(0), "{}", run.output());
    let trusted = Tls {
        ca: Some(pki.ca.clone()),
        cert: Some(pki.client.clone()),
        key: Some(pki.client_key.clone()),
        ..Tls::default()
    };
    assert_eq!(stream_ids_with(&url, "KOALA", &trusted), ids("6", 0..3));
    fs::remove_file(&state).unwrap();
    drop(verifying);

    // tls:// to a server without TLS.
    let plain = Nats::single(&dir, ServerAuth::None);
    let port = plain.nodes[0].port;
    let run = ship(
        &dir,
        "ship-tls-plain",
        &format!("tls://127.0.0.1:{port}"),
        &["--create"],
    );
    assert_fails_cleanly(&run, "does not offer TLS", &file, &text, &state);
}

/// Appends `lines` to `file`, as a recording process does (never
/// rewritten: a file shorter than its progress is a new file).
fn append(file: &Path, lines: &str) {
    use std::io::Write;
    fs::OpenOptions::new()
        .append(true)
        .open(file)
        .and_then(|mut f| f.write_all(lines.as_bytes()))
        .unwrap();
}

/// Waits until the stream holds `count` messages (or more: then the
/// assertion after says which).
fn wait_for_stream(url: &str, count: usize, shipper: &mut Program) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = stream_ids(url, "KOALA");
        if got.len() >= count {
            return got;
        }
        assert!(shipper.exited().is_none(), "{}", shipper.output_report());
        assert!(
            Instant::now() < deadline,
            "{} of {count} lines in the stream\n{}",
            got.len(),
            shipper.output_report()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the shipper's stderr has said `text` `times` times.
fn wait_for_stderr(shipper: &mut Program, text: &str, times: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while shipper.stderr().matches(text).count() < times {
        assert!(shipper.exited().is_none(), "{}", shipper.output_report());
        assert!(
            Instant::now() < deadline,
            "no {text:?}\n{}",
            shipper.output_report()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn server_down_then_back_catches_up() {
    let dir = TestDir::new("ship_outage");
    let mut nats = Nats::single(&dir, ServerAuth::None);
    let url = nats.url();
    let record = dir.join("record");
    fs::create_dir_all(&record).unwrap();
    let file = record.join("svc-4242.jsonl");
    let first: String = ids("3", 0..20)
        .iter()
        .map(|id| session_line(id, 800) + "\n")
        .collect();
    fs::write(&file, &first).unwrap();

    // The server is down when koala ship starts (following, not --once):
    // it says so and waits, with back-off.
    nats.nodes[0].kill();
    let mut shipper = Spec::new("ship-follow", koala_bin())
        .args([
            "ship", "record", "--to", &url, "--stream", "KOALA", "--create", "--host", "h1",
        ])
        .spawn(&dir);
    wait_for_stderr(&mut shipper, "retrying in", 2);
    // Back: the stream is created and every line shipped.
    nats.restart(&dir, 0);
    let got = wait_for_stream(&url, 20, &mut shipper);
    assert_eq!(got, ids("3", 0..20), "{}", shipper.output_report());

    // Down again while lines are appended: they wait in the file, then go.
    nats.nodes[0].kill();
    let more: String = ids("3", 20..50)
        .iter()
        .map(|id| session_line(id, 800) + "\n")
        .collect();
    let mut text = first.clone();
    text.push_str(&more);
    append(&file, &more);
    wait_for_stderr(&mut shipper, "lines wait in their files", 1);
    nats.restart(&dir, 0);
    wait_for_stderr(&mut shipper, "the stream takes lines again", 1);
    let got = wait_for_stream(&url, 50, &mut shipper);
    assert_eq!(
        got,
        ids("3", 0..50),
        "every line once, in order\n{}",
        shipper.output_report()
    );
    // SIGTERM: a clean exit, the summary says what was shipped.
    shipper.stop_cleanly();
    let stderr = shipper.stderr();
    assert!(
        stderr.trim_end().ends_with("lag 0.0 s") && stderr.contains("shipped 50 line(s)"),
        "{stderr}"
    );

    // The progress survived the stop: every byte of the file shipped.
    let state: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(record.join(".koala-ship-KOALA.state")).unwrap())
            .unwrap();
    let offset = state["files"]
        .as_object()
        .and_then(|files| files.values().next())
        .and_then(|progress| progress["offset"].as_u64());
    assert_eq!(
        offset,
        Some(text.len() as u64),
        "the progress after SIGTERM: {state}"
    );

    // Down a third time, and koala ship stopped before the server is back:
    // its summary says what waits; a new koala ship ships it, once.
    let mut shipper = Spec::new("ship-again", koala_bin())
        .args([
            "ship", "record", "--to", &url, "--stream", "KOALA", "--host", "h1",
        ])
        .spawn(&dir);
    wait_for_stderr(&mut shipper, "shipping record to", 1);
    nats.nodes[0].kill();
    let last: String = ids("3", 50..60)
        .iter()
        .map(|id| session_line(id, 800) + "\n")
        .collect();
    text.push_str(&last);
    append(&file, &last);
    wait_for_stderr(&mut shipper, "lines wait in their files", 1);
    shipper.stop_cleanly();
    let waiting = format!("{:.1} kB", last.len() as f64 / 1e3);
    assert!(
        shipper.stderr().contains(&format!(
            "shipped 0 line(s) (0 B); waiting {waiting} in 1 file(s)"
        )),
        "the summary says what waits, and nothing was sent again\n{}",
        shipper.output_report()
    );
    nats.restart(&dir, 0);
    let run = ship(&dir, "ship-after", &url, &[]);
    assert_eq!(run.code, Some(0), "{}", run.output());
    assert!(
        run.stderr.contains("shipped 10 line(s)"),
        "only what waited\n{}",
        run.output()
    );
    assert_eq!(
        stream_ids(&url, "KOALA"),
        ids("3", 0..60),
        "every line once"
    );
    assert_eq!(
        fs::read_to_string(&file).unwrap(),
        text,
        "the file untouched"
    );
}

#[test]
fn create_makes_the_stream_as_asked() {
    let dir = TestDir::new("ship_create");
    let nats = Nats::single(&dir, ServerAuth::None);
    let record = dir.join("record");
    fs::create_dir_all(&record).unwrap();
    let file = record.join("svc-4242.jsonl");
    let text: String = ids("4", 0..3)
        .iter()
        .map(|id| session_line(id, 500) + "\n")
        .collect();
    fs::write(&file, &text).unwrap();
    let state = record.join(".koala-ship-KOALA.state");

    // More replicas than servers: a clear refusal, nothing lost.
    let run = ship(
        &dir,
        "ship-r3-on-one",
        &nats.url(),
        &["--create", "--replicas", "3"],
    );
    assert_fails_cleanly(
        &run,
        "cannot create the stream KOALA: ",
        &file,
        &text,
        &state,
    );
    assert!(run.stderr.contains("replicas"), "{}", run.output());

    let run = ship(
        &dir,
        "ship-limits",
        &nats.url(),
        &[
            "--create",
            "--max-age",
            "3600",
            "--max-bytes",
            "1000000",
            "--duplicate-window",
            "30",
        ],
    );
    assert_eq!(run.code, Some(0), "{}", run.output());
    let info = stream_info(&nats.url(), "KOALA");
    assert_eq!(info.subjects, ["koala.KOALA.>"]);
    assert_eq!(info.replicas, 1);
    assert_eq!(info.retention, "limits");
    assert_eq!(info.max_age, Duration::from_secs(3600));
    assert_eq!(info.max_bytes, 1_000_000);
    assert_eq!(info.duplicate_window, Duration::from_secs(30));
    assert_eq!(info.messages, 3);

    for retention in ["workqueue", "interest"] {
        let stream = format!("KOALA_{retention}");
        let args: Vec<String> = [
            "ship",
            "record",
            "--to",
            &nats.url(),
            "--stream",
            &stream,
            "--once",
            "--create",
            "--retention",
            retention,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let run = run_koala(&dir, &format!("ship-{retention}"), &args, &[]);
        assert_eq!(run.code, Some(0), "{}", run.output());
        let info = stream_info(&nats.url(), &stream);
        assert_eq!(info.retention, retention);
        assert_eq!(info.max_age, Duration::ZERO, "no limit by default");
        assert_eq!(info.max_bytes, 0, "no limit by default");
        assert_eq!(info.duplicate_window, Duration::from_secs(120));
    }
}

/// `koala ship ARGS` with its stderr on a terminal (a pseudo-terminal made
/// here): everything it wrote there.
fn ship_on_terminal(dir: &TestDir, args: &[&str]) -> (Option<i32>, String) {
    use std::io::Read;
    use std::os::fd::{FromRawFd, OwnedFd};
    let (mut master, mut slave) = (0, 0);
    // SAFETY: two out-pointers to our ints; no name, default settings.
    let made = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(made, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors are new and ours.
    let (master, slave) = unsafe { (fs::File::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    let mut child = clean_command(koala_bin())
        .args(args)
        .current_dir(dir.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::from(slave))
        .spawn()
        .expect("start koala ship");
    // Read until the terminal closes (EIO once koala ship exited).
    let mut master = master;
    let mut output = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match master.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => output.extend_from_slice(&buffer[..n]),
        }
    }
    let status = child.wait().expect("wait for koala ship");
    (status.code(), String::from_utf8_lossy(&output).into_owned())
}

#[test]
fn progress_line_on_a_terminal_quiet_without() {
    let dir = TestDir::new("ship_terminal");
    let nats = Nats::single(&dir, ServerAuth::None);
    let record = dir.join("record");
    fs::create_dir_all(&record).unwrap();
    let text: String = ids("2", 0..3)
        .iter()
        .map(|id| session_line(id, 500) + "\n")
        .collect();
    fs::write(record.join("svc-4242.jsonl"), &text).unwrap();
    let url = nats.url();
    let common = [
        "ship", "record", "--to", &url, "--once", "--create", "--host", "h1",
    ];

    // On a terminal: the progress line, redrawn in place, then the summary.
    let (code, seen) = ship_on_terminal(&dir, &[&common[..], &["--stream", "T1"]].concat());
    assert_eq!(code, Some(0), "{seen}");
    // The lines' bytes, newlines not counted.
    let size = format!("{:.1} kB", (text.len() - 3) as f64 / 1e3);
    assert!(
        seen.contains(&format!(
            "\r\x1b[Kkoala ship: shipped 3 line(s) ({size}); waiting 0 B in 0 file(s); lag 0.0 s"
        )),
        "the progress line\n{seen:?}"
    );
    // --quiet on a terminal: nothing when all is well.
    let (code, seen) = ship_on_terminal(
        &dir,
        &[&common[..], &["--stream", "T2", "--quiet"]].concat(),
    );
    assert_eq!(code, Some(0), "{seen}");
    assert_eq!(seen, "", "--quiet prints nothing");
    // Not a terminal (a file): no progress line, only the summary.
    let args: Vec<String> = [&common[..], &["--stream", "T3"]]
        .concat()
        .iter()
        .map(|s| s.to_string())
        .collect();
    let run = run_koala(&dir, "ship-file", &args, &[]);
    assert_eq!(run.code, Some(0), "{}", run.output());
    assert!(!run.stderr.contains('\x1b'), "{:?}", run.stderr);
    assert!(
        run.stderr.contains("koala ship: shipped 3 line(s)"),
        "{}",
        run.output()
    );
    for stream in ["T1", "T2", "T3"] {
        assert_eq!(stream_ids(&url, stream), ids("2", 0..3));
    }
}

#[test]
fn show_and_replay_filter_by_host_and_program() {
    let dir = TestDir::new("ship_filters");
    let nats = Nats::single(&dir, ServerAuth::None);
    let url = nats.url();
    // Two hosts' recordings into one stream: h1 recorded svc, h2 api.
    for (host, program, prefix, count) in [("h1", "svc", "1", 3), ("h2", "api", "2", 2)] {
        let record = dir.join(format!("record-{host}"));
        fs::create_dir_all(&record).unwrap();
        let text: String = ids(prefix, 0..count)
            .iter()
            .map(|id| {
                session_line(id, 500)
                    .replace("\"program\":\"svc\"", &format!("\"program\":\"{program}\""))
                    + "\n"
            })
            .collect();
        fs::write(record.join(format!("{program}-4242.jsonl")), text).unwrap();
        let args: Vec<String> = [
            "ship",
            &format!("record-{host}"),
            "--to",
            &url,
            "--stream",
            "KOALA",
            "--once",
            "--create",
            "--host",
            host,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let run = run_koala(&dir, &format!("ship-{host}"), &args, &[]);
        assert_eq!(run.code, Some(0), "{}", run.output());
    }
    let show = |name: &str, filters: &[&str]| {
        let mut args = vec!["show".to_string(), format!("{url}/KOALA")];
        args.extend(filters.iter().map(|s| s.to_string()));
        let run = run_koala(&dir, name, &args, &[]);
        assert_eq!(run.code, Some(0), "{}", run.output());
        run.stdout
    };
    let shown = show("show-h2", &["--host", "h2"]);
    assert!(shown.contains("\n2 session(s)\n"), "{shown}");
    assert!(
        shown.contains("session 2-0 ") && shown.contains("session 2-1 "),
        "{shown}"
    );
    assert!(!shown.contains("session 1-"), "only h2's\n{shown}");
    assert!(shown.contains("koala.KOALA.session.api.h2"), "{shown}");
    let shown = show("show-h1-svc", &["--host", "h1", "--program", "svc"]);
    assert!(shown.contains("\n3 session(s)\n"), "{shown}");
    let shown = show("show-h1-api", &["--host", "h1", "--program", "api"]);
    assert!(shown.contains("\n0 session(s)\n"), "{shown}");
    let shown = show("show-all", &[]);
    assert!(shown.contains("\n5 session(s)\n"), "{shown}");

    // With files, the stream's filters are refused.
    for command in ["show", "replay"] {
        let args: Vec<String> = [command, "record-h1", "--host", "h1"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let run = run_koala(&dir, &format!("{command}-files-host"), &args, &[]);
        assert_eq!(run.code, Some(2), "{}", run.output());
        assert!(
            run.stderr
                .contains("--host, --since and --until apply to a stream"),
            "{}",
            run.output()
        );
    }
}
