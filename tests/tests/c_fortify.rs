//! A C server built with _FORTIFY_SOURCE=2 reads through `__read_chk` and
//! `__recv_chk` and answers with `writev` + `sendfile`: all of it recorded.

use std::fs;
use std::process::Command;

use koala_tests::*;

/// Bytes that are not UTF-8 (recorded as base64) and not a repeating
/// pattern a bug could reproduce by chance.
fn pseudo_random(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

fn build_server(dir: &TestDir) -> std::path::PathBuf {
    let binary = dir.join("fortify_server");
    compile_c(
        &fixture("fortify_server.c"),
        &["-O2", "-D_FORTIFY_SOURCE=2", "-Wall"],
        &binary,
    );

    // The binary must import the checked reads (else this test would not
    // exercise the __read_chk / __recv_chk hooks) and the plain ones not.
    let nm = Command::new(require_program("nm", "binutils"))
        .arg("-D")
        .arg(&binary)
        .output()
        .expect("run nm -D");
    assert!(nm.status.success(), "nm -D failed: {nm:?}");
    let imported: Vec<String> = String::from_utf8_lossy(&nm.stdout)
        .lines()
        .filter_map(|line| line.trim().strip_prefix("U "))
        .map(|symbol| symbol.split('@').next().unwrap().to_string())
        .collect();
    for wanted in ["__read_chk", "__recv_chk", "writev", "sendfile"] {
        assert!(
            imported.iter().any(|s| s == wanted),
            "the fortified server does not import {wanted}: {imported:?}"
        );
    }
    for unwanted in ["read", "recv"] {
        assert!(
            !imported.iter().any(|s| s == unwanted),
            "the fortified server imports plain {unwanted}: {imported:?}"
        );
    }
    binary
}

#[test]
fn c_fortify() {
    let dir = TestDir::new("c_fortify");
    let record = dir.join("record");
    let binary = build_server(&dir);

    // The file the server sends with sendfile: large enough for several
    // sendfile rounds, binary.
    let file = pseudo_random(300_000, 0x6b6f_616c);
    let file_path = dir.join("body.bin");
    fs::write(&file_path, &file).unwrap();

    let port = free_port();
    let mut server = Spec::new("fortify_server", &binary)
        .args([port.to_string(), file_path.display().to_string()])
        .record_to(&record)
        .spawn(&dir);
    server.wait_for_port(port);

    let expected_response = |body_len: usize| {
        let mut r = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nX-Request-Body: {body_len}\r\n\r\n",
            file.len()
        )
        .into_bytes();
        r.extend_from_slice(&file);
        r
    };
    let request = |n: usize, body: &[u8]| {
        let mut r = format!(
            "POST /upload/{n} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
             Content-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        r.extend_from_slice(body);
        r
    };

    // Two requests on one keep-alive connection, then one on another.
    // Bodies: larger than the server's 1024-byte recv buffer, and one empty.
    let plan: Vec<(usize, Vec<Vec<u8>>)> = vec![
        (0, vec![pseudo_random(2500, 1), Vec::new()]),
        (1, vec![b"hello fortify".to_vec()]),
    ];
    let mut exchanges = Vec::new();
    let mut n = 0;
    for (connection, bodies) in &plan {
        let mut stream = connect(port);
        let client = stream.local_addr().unwrap().to_string();
        for (index, body) in bodies.iter().enumerate() {
            let req = request(n, body);
            n += 1;
            let response = http_exchange(&mut stream, &req);
            assert_bytes(
                &response,
                &expected_response(body.len()),
                &format!("response to request {n}"),
            );
            let last = index + 1 == bodies.len();
            exchanges.push((*connection, client.clone(), req, response, last));
        }
        drop(stream);
    }

    wait_for_sessions(&record, exchanges.len());
    server.stop_cleanly();
    let mut sessions = read_sessions(&record);
    assert_eq!(
        sessions.len(),
        exchanges.len(),
        "one session per request:\n{}",
        describe_dir(&record)
    );
    sessions.sort_by_key(|s| s.inbound.request_ns);
    for (session, (connection, client, request, response, last)) in sessions.iter().zip(&exchanges)
    {
        let what = format!("connection {connection}: {}", show(session));
        assert_eq!(session.pid, server.pid(), "{what}");
        assert_eq!(session.program, "fortify_server", "{what}");
        assert_eq!(session.inbound.local, format!("127.0.0.1:{port}"), "{what}");
        assert_exchange(&session.inbound, client, request, response, &what);
        assert!(session.calls.is_empty(), "{what}: no calls");
        let end = if *last {
            EndReason::Close
        } else {
            EndReason::NextRequest
        };
        assert_eq!(session.end, Some(end), "{what}");
    }
}
