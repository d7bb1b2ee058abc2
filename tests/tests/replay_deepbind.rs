//! Connects that used to escape the library, recorded and, at replay,
//! kept away from the real address (issue 8, acceptance test 7).
//!
//! - libcurl loaded with `dlopen(RTLD_DEEPBIND)`, as PHP loads its
//!   extensions: it bound socket/connect/send/recv to libc itself, so its
//!   calls were not recorded and a replay reached the real backend.
//! - `syscall(SYS_connect, ...)`, which went straight to the kernel.
//! - PHP's own curl extension, in the PHP built-in server.
//!
//! Each service is recorded with `backend.py` running. Then the backend
//! stops and a trap listens on its port: the replay passes, answered from
//! the recording, and the trap sees no connection at all.
//!
//! The dlopen hook drops the flag only while the library is active, and
//! keeps the host as dlopen's caller: a library found through the caller's
//! RUNPATH still loads.

use std::path::PathBuf;

use koala_tests::replay::*;
use koala_tests::*;

const IDS: [&str; 3] = ["d1", "d2", "d3"];

/// The service under test: how to start it (`args` after the program) and
/// what it answers.
struct Service {
    name: &'static str,
    program: PathBuf,
    /// Its arguments for `port` and `backend_port`.
    args: fn(u16, u16) -> Vec<String>,
    /// Extra environment for `backend_port`.
    env: fn(u16) -> Vec<(&'static str, String)>,
    /// The exact request its HTTP client sends for `/backend/<id>`.
    call_request: fn(&str, u16) -> Vec<u8>,
    /// Whether its answers to the test's requests are fixed bytes
    /// (`deepbind_service`), or carry a Date (PHP): then only the body
    /// is compared.
    exact_answers: bool,
    /// Stopped with SIGTERM, does it exit by itself (flushing at exit)?
    exits_cleanly: bool,
}

/// `deepbind_service`'s answer to `GET /item/<id>`: the backend's body.
fn service_answer(id: &str) -> Vec<u8> {
    let body = format!("backend says {id}\n");
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Records `service` with `backend.py` running (every answer asserted, each
/// session holding exactly its backend call), stops it and the backend,
/// puts a trap on the backend's port, replays the recording with `koala
/// replay` and asserts every session passed, replayed exactly, with the
/// trap untouched. Returns the test directory (the log is in `record/`).
fn record_then_replay_with_a_trap(test: &str, service: &Service) -> TestDir {
    let dir = TestDir::new(test);
    let backend_port = free_port();
    let mut backend = Spec::python_fixture("backend", "backend.py")
        .arg(backend_port)
        .spawn(&dir);
    backend.wait_for_port(backend_port);

    // --- Record, the backend up.
    let record = dir.join("record");
    let port = free_port();
    let mut spec = Spec::new("record-service", &service.program)
        .args((service.args)(port, backend_port))
        .record_to(&record)
        .env("KOALA_LOG_LEVEL", "debug");
    for (key, value) in (service.env)(backend_port) {
        spec = spec.env(key, value);
    }
    let mut recorded = spec.spawn(&dir);
    recorded.wait_for_port(port);
    for id in IDS {
        let mut stream = connect(port);
        let answer = http_exchange(&mut stream, &item_request(port, id));
        let what = format!("{}: answer to {id}", service.name);
        if service.exact_answers {
            assert_bytes(&answer, &service_answer(id), &what);
        } else {
            let body = &answer[find(&answer, b"\r\n\r\n").expect("answer head") + 4..];
            assert_bytes(body, format!("backend says {id}\n").as_bytes(), &what);
        }
    }
    wait_for_sessions(&record, IDS.len());
    if service.exits_cleanly {
        recorded.stop_cleanly();
    } else {
        recorded.stop();
    }
    let recording = Recording::read(&dir, "record", port);
    assert_eq!(
        recording.sessions.len(),
        IDS.len(),
        "one session per request\n{}",
        describe_dir(&record)
    );
    let backend_peer = format!("127.0.0.1:{backend_port}");
    for (id, session) in recording.by_item() {
        let what = format!(
            "{}: recorded session of {id}\n{}",
            service.name,
            show(session)
        );
        assert_eq!(session.calls.len(), 1, "{what}");
        assert_exchange(
            &session.calls[0],
            &backend_peer,
            &(service.call_request)(&id, backend_port),
            &backend_response(&id),
            &what,
        );
    }

    // --- Replay, the backend gone and a trap in its place.
    backend.stop();
    assert_port_closed(backend_port, "the backend");
    let trap = Trap::start(backend_port);
    let mut args: Vec<String> = ["replay", "record", "--lib"].map(String::from).to_vec();
    args.push(koala_lib().display().to_string());
    args.extend(["--report", "r.json", "--service-log", "service.log", "--"].map(String::from));
    args.push(service.program.display().to_string());
    args.extend((service.args)(port, backend_port));
    let run = run_koala(&dir, "koala-replay", &args, &(service.env)(backend_port));
    trap.assert_untouched();
    run.assert_all_passed(IDS.len());
    let report = read_report(&dir.join("r.json"));
    assert_report_summary(&report, [IDS.len(), IDS.len(), 0, 0], [IDS.len(), 0, 0, 0]);
    if service.exact_answers {
        assert_report_all_replayed(&report, &recording);
    } else {
        assert_replayed_but_dates(&report, &recording);
    }
    trap.assert_untouched();
    dir
}

/// [`assert_report_all_replayed`] for answers that carry a Date (which
/// koala leaves out of the comparison): every session passed, its calls
/// replayed exactly, and its answer's body is the recorded one.
#[track_caller]
fn assert_replayed_but_dates(report: &serde_json::Value, recording: &Recording) {
    let entries = report_entries(report);
    assert_eq!(entries.len(), recording.sessions.len(), "{report}");
    let body =
        |response: &[u8]| response[find(response, b"\r\n\r\n").map_or(0, |at| at + 4)..].to_vec();
    for entry in entries {
        assert_eq!(entry["verdict"].as_str(), Some("pass"), "{entry}");
        let result = entry_result(entry);
        let recorded = recording.session(entry_id(entry));
        let what = format!("report entry {entry}");
        assert_calls_replayed(&result.calls, recorded, &what);
        assert!(
            result.unmatched.is_empty() && result.missing.is_empty(),
            "{what}"
        );
        assert_bytes(
            &body(result.response.as_bytes()),
            &body(recorded.inbound.response.as_bytes()),
            &format!("{what}: body"),
        );
    }
}

/// koala's log lines in `dir` (every rotated file of `koala.log`).
fn koala_log(dir: &std::path::Path) -> String {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.retain(|p| {
        p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("koala.log"))
    });
    files.sort();
    files
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap_or_default())
        .collect()
}

/// `deepbind_service.c`, built in `dir`.
fn build_deepbind_service(dir: &TestDir) -> PathBuf {
    let binary = dir.join("deepbind_service");
    compile_c(
        &fixture("deepbind_service.c"),
        &["-O2", "-Wall", "-pthread"],
        &binary,
    );
    binary
}

/// The request libcurl sends for `/backend/<id>` (no User-Agent: only the
/// curl tool sets one).
fn curl_request(id: &str, backend_port: u16) -> Vec<u8> {
    format!("GET /backend/{id} HTTP/1.1\r\nHost: 127.0.0.1:{backend_port}\r\nAccept: */*\r\n\r\n")
        .into_bytes()
}

#[test]
fn libcurl_loaded_with_deepbind_is_recorded_and_never_reaches_the_real_backend() {
    require_libcurl();
    let build = TestDir::new("deepbind_build");
    let service = Service {
        name: "deepbind_service curl",
        program: build_deepbind_service(&build),
        args: |port, backend_port| vec![port.to_string(), backend_port.to_string(), "curl".into()],
        env: |_| Vec::new(),
        call_request: curl_request,
        exact_answers: true,
        exits_cleanly: true,
    };
    let dir = record_then_replay_with_a_trap("deepbind_curl", &service);
    let log = koala_log(&dir.join("record"));
    assert!(
        log.contains(
            "dlopen: RTLD_DEEPBIND dropped, so the library's socket calls reach koala \
             (logged once) library=libcurl.so.4"
        ),
        "{log}"
    );
}

#[test]
fn syscall_connect_is_recorded_and_never_reaches_the_real_backend() {
    let build = TestDir::new("syscall_connect_build");
    let service = Service {
        name: "deepbind_service syscall",
        program: build_deepbind_service(&build),
        args: |port, backend_port| {
            vec![port.to_string(), backend_port.to_string(), "syscall".into()]
        },
        env: |_| Vec::new(),
        call_request: |id, backend_port| {
            format!("GET /backend/{id} HTTP/1.1\r\nHost: 127.0.0.1:{backend_port}\r\n\r\n")
                .into_bytes()
        },
        exact_answers: true,
        exits_cleanly: true,
    };
    record_then_replay_with_a_trap("syscall_connect", &service);
}

/// TCP Fast Open: `sendto(MSG_FASTOPEN)` with the backend's address
/// connects and sends in one call, with no connect() for a hook to see.
#[test]
fn tcp_fast_open_is_recorded_and_never_reaches_the_real_backend() {
    let build = TestDir::new("fast_open_build");
    let service = Service {
        name: "deepbind_service fastopen",
        program: build_deepbind_service(&build),
        args: |port, backend_port| {
            vec![
                port.to_string(),
                backend_port.to_string(),
                "fastopen".into(),
            ]
        },
        env: |_| Vec::new(),
        call_request: |id, backend_port| {
            format!("GET /backend/{id} HTTP/1.1\r\nHost: 127.0.0.1:{backend_port}\r\n\r\n")
                .into_bytes()
        },
        exact_answers: true,
        exits_cleanly: true,
    };
    record_then_replay_with_a_trap("fast_open", &service);
}

#[test]
fn php_curl_is_recorded_and_never_reaches_the_real_backend() {
    let php = require_program("php", "php-cli php-curl");
    let loaded = clean_command(&php).arg("-m").output().expect("php -m");
    assert!(
        String::from_utf8_lossy(&loaded.stdout)
            .lines()
            .any(|m| m == "curl"),
        "PHP's curl extension is not installed: install php-curl"
    );
    let service = Service {
        name: "php -S with curl",
        program: php,
        args: |port, _| {
            vec![
                "-S".into(),
                format!("127.0.0.1:{port}"),
                fixture("deepbind_router.php").display().to_string(),
            ]
        },
        env: |backend_port| vec![("BACKEND_PORT", backend_port.to_string())],
        call_request: curl_request,
        exact_answers: false,
        // The built-in server dies on SIGTERM: its sessions are waited for.
        exits_cleanly: false,
    };
    let dir = record_then_replay_with_a_trap("deepbind_php", &service);
    let log = koala_log(&dir.join("record"));
    assert!(
        log.contains("dlopen: RTLD_DEEPBIND dropped"),
        "PHP loads its extensions with RTLD_DEEPBIND\n{log}"
    );
}

#[test]
fn deepbind_is_dropped_only_when_active_and_the_callers_runpath_still_counts() {
    // Plugins found only through the program's RUNPATH ($ORIGIN/plugins),
    // each telling whether it binds to its own `deepbind_probe` (the flag
    // kept) or to the program's (the flag dropped).
    let dir = TestDir::new("deepbind_runpath");
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    let source = fixture("deepbind_runpath.c");
    for plugin in ["libdeepbind_a.so", "libdeepbind_b.so"] {
        compile_c(
            &source,
            &["-DDEEPBIND_PLUGIN", "-shared", "-fPIC"],
            &plugins.join(plugin),
        );
    }
    let program = dir.join("deepbind_runpath");
    compile_c(
        &source,
        &[
            "-O2",
            "-Wall",
            "-rdynamic",
            "-Wl,-rpath,$ORIGIN/plugins",
            "-Wl,--enable-new-dtags",
        ],
        &program,
    );
    let kept = "dlopen: plugin\ndlmopen: plugin\n";
    let dropped = "dlopen: program\ndlmopen: program\n";
    // (preloaded, KOALA_MODE, what the program prints)
    let cases = [
        (false, None, kept),
        (true, None, kept),
        (true, Some("record"), dropped),
        (true, Some("replay"), dropped),
    ];
    for (preloaded, mode, expected) in cases {
        let mut command = clean_command(&program);
        if preloaded {
            command.env("LD_PRELOAD", koala_lib());
        }
        if let Some(mode) = mode {
            command
                .env("KOALA_MODE", mode)
                .env("KOALA_RECORD_TO", dir.join("record"))
                .env("KOALA_LOG_FILE", dir.join("koala.log"))
                .env("KOALA_INBOUND_ADDR", format!("127.0.0.1:{}", free_port()))
                .env("KOALA_OUTBOUND_ADDR", format!("127.0.0.1:{}", free_port()));
        }
        let out = command.output().expect("run deepbind_runpath");
        assert_eq!(
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned()
            ),
            (Some(0), expected.to_string()),
            "preloaded {preloaded}, KOALA_MODE={mode:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// libcurl's runtime library, which `deepbind_service` dlopens by name.
fn require_libcurl() {
    let found = [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib64",
        "/usr/lib",
    ]
    .iter()
    .any(|dir| std::path::Path::new(dir).join("libcurl.so.4").exists());
    assert!(found, "libcurl.so.4 is not installed: install libcurl4");
}
