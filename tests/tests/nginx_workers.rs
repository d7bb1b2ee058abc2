//! nginx, master and 2 workers: the workers record the sessions; a static
//! file sent with sendfile and a request proxied to a Python upstream.

use std::collections::BTreeSet;
use std::fs;

use koala_tests::*;

#[test]
fn nginx_workers() {
    let dir = TestDir::new("nginx_workers");
    let record = dir.join("record");
    let nginx_dir = dir.join("nginx");
    fs::create_dir_all(nginx_dir.join("www/static")).unwrap();

    // A binary file, large enough that nginx sends it in several rounds.
    let file: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    fs::write(nginx_dir.join("www/static/blob.bin"), &file).unwrap();

    let upstream_port = free_port();
    let mut upstream = Spec::python_fixture("upstream", "backend.py")
        .arg(upstream_port)
        .spawn(&dir);
    upstream.wait_for_port(upstream_port);

    let port = free_port();
    let conf = fs::read_to_string(fixture("nginx.conf.in"))
        .unwrap()
        .replace("@DIR@", nginx_dir.to_str().unwrap())
        .replace("@PORT@", &port.to_string())
        .replace("@UPSTREAM@", &upstream_port.to_string());
    let conf_path = nginx_dir.join("nginx.conf");
    fs::write(&conf_path, conf).unwrap();

    let mut nginx = Spec::new("nginx", require_program("nginx", "nginx-light"))
        .arg("-p")
        .arg(format!("{}/", nginx_dir.display()))
        .arg("-c")
        .arg(conf_path.display())
        .arg("-e")
        .arg(nginx_dir.join("error.log").display())
        .record_to(&record)
        .spawn(&dir);
    nginx.wait_for_port(port);
    let master = nginx.pid();
    let workers = wait_for_children(&mut nginx, 2);
    assert_eq!(workers.len(), 2, "nginx workers: {workers:?}");

    // Connection A: the static file twice (keep-alive).
    // Connection B: one proxied request, then the client closes.
    let static_request = format!(
        "GET /static/blob.bin HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: koala-test\r\n\r\n"
    );
    let mut a = connect(port);
    let a_addr = a.local_addr().unwrap().to_string();
    let static_1 = http_exchange(&mut a, static_request.as_bytes());
    let static_2 = http_exchange(&mut a, static_request.as_bytes());
    for response in [&static_1, &static_2] {
        assert!(
            response.starts_with(b"HTTP/1.1 200 OK\r\n"),
            "static response: {}",
            String::from_utf8_lossy(&response[..200.min(response.len())])
        );
        assert!(response.ends_with(&file), "static body is the file");
    }
    drop(a);

    let proxy_request = format!(
        "GET /api/item-42 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: koala-test\r\n\r\n"
    );
    let mut b = connect(port);
    let b_addr = b.local_addr().unwrap().to_string();
    let proxied = http_exchange(&mut b, proxy_request.as_bytes());
    assert!(
        proxied.starts_with(b"HTTP/1.1 200 OK\r\n")
            && proxied.ends_with(b"\r\n\r\nbackend says item-42\n"),
        "proxied response: {}",
        String::from_utf8_lossy(&proxied)
    );
    drop(b);

    wait_for_sessions(&record, 3);
    nginx.stop_cleanly();
    let files = session_files(&record);
    let sessions: Vec<Session> = files.iter().flat_map(|(_, s)| s.clone()).collect();
    assert_eq!(sessions.len(), 3, "sessions:\n{}", describe_dir(&record));

    // Written by the workers, never the master.
    for (name, sessions) in &files {
        if sessions.is_empty() {
            continue;
        }
        let pid: u32 = name
            .strip_prefix("nginx-")
            .and_then(|n| n.strip_suffix(".jsonl"))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("session file name {name:?} is not nginx-<pid>.jsonl"));
        assert!(
            workers.contains(&pid),
            "{name}: pid {pid} is not a worker (master {master}, workers {workers:?})"
        );
        for session in sessions {
            assert_eq!(session.pid, pid, "{name}: {}", show(session));
            assert_eq!(session.program, "nginx", "{}", show(session));
        }
    }
    let pids: BTreeSet<u32> = sessions.iter().map(|s| s.pid).collect();
    assert!(!pids.contains(&master), "a session written by the master");

    let mut sessions = sessions;
    sessions.sort_by_key(|s| s.inbound.request_ns);
    let local = format!("127.0.0.1:{port}");
    let upstream_peer = format!("127.0.0.1:{upstream_port}");

    for (session, response, end) in [
        (&sessions[0], &static_1, EndReason::NextRequest),
        (&sessions[1], &static_2, EndReason::Close),
    ] {
        let what = format!("static session {}", show(session));
        assert_eq!(session.inbound.local, local, "{what}");
        assert_exchange(
            &session.inbound,
            &a_addr,
            static_request.as_bytes(),
            response,
            &what,
        );
        assert!(
            session.inbound.response.as_bytes().ends_with(&file),
            "{what}"
        );
        assert!(session.calls.is_empty(), "{what}: no calls");
        assert_eq!(session.end, Some(end), "{what}");
    }
    assert_eq!(
        sessions[0].pid, sessions[1].pid,
        "one worker serves a connection"
    );

    let session = &sessions[2];
    let what = format!("proxied session {}", show(session));
    assert_eq!(session.inbound.local, local, "{what}");
    assert_exchange(
        &session.inbound,
        &b_addr,
        proxy_request.as_bytes(),
        &proxied,
        &what,
    );
    assert_eq!(session.end, Some(EndReason::Close), "{what}");
    assert_eq!(session.calls.len(), 1, "{what}: exactly one call");
    // What nginx sends upstream by default (proxy_http_version 1.0): the
    // request line, Host = the proxy_pass host, Connection: close, then the
    // client's other headers.
    assert_exchange(
        &session.calls[0],
        &upstream_peer,
        format!(
            "GET /api/item-42 HTTP/1.0\r\nHost: 127.0.0.1:{upstream_port}\r\n\
             Connection: close\r\nUser-Agent: koala-test\r\n\r\n"
        )
        .as_bytes(),
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 21\r\n\
          Connection: close\r\n\r\nbackend says item-42\n",
        &format!("{what}\nupstream call"),
    );
}
