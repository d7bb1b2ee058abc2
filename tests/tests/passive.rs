//! With KOALA_MODE unset the library is loaded but passive: the service
//! answers byte for byte as without it, and koala writes nothing anywhere.

use std::fs;
use std::io::Write;
use std::path::Path;

use koala_tests::*;

const IDS: [&str; 3] = ["p1", "p2", "p3"];

/// Runs the greeting service (which makes an outbound call per request)
/// and returns every response, plus the service's stdout and stderr.
fn run_service(
    dir: &TestDir,
    name: &str,
    greeting_port: u16,
    preload: bool,
) -> (Vec<Vec<u8>>, String, String) {
    let work = dir.join(format!("{name}-cwd"));
    fs::create_dir_all(&work).unwrap();
    let port = free_port();
    let mut spec = Spec::python_fixture(name, "greeting_service.py")
        .args([
            port.to_string(),
            greeting_port.to_string(),
            "per-request".into(),
        ])
        .cwd(&work)
        // Where a recording would go: must stay absent.
        .env(
            "KOALA_RECORD_TO",
            dir.join(format!("{name}-record")).display(),
        );
    if preload {
        spec = spec.preload();
    }
    let mut service = spec.spawn(dir);
    service.wait_for_port(port);

    let maps = fs::read_to_string(format!("/proc/{}/maps", service.pid())).unwrap();
    assert_eq!(
        maps.contains("libkoala.so"),
        preload,
        "libkoala.so mapped in the {name} service"
    );

    let mut responses = Vec::new();
    // Two requests on one keep-alive connection, one on another.
    let mut stream = connect(port);
    for id in &IDS[..2] {
        let request = format!("GET /hello/{id} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
        responses.push(http_exchange(&mut stream, request.as_bytes()));
    }
    drop(stream);
    let mut stream = connect(port);
    let request = format!(
        "GET /hello/{} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        IDS[2]
    );
    stream.write_all(request.as_bytes()).unwrap();
    responses.push(read_to_close(&mut stream));

    service.stop_cleanly();
    let leftovers: Vec<_> = fs::read_dir(&work)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(
        leftovers.is_empty(),
        "{name} left files in its working directory: {leftovers:?}"
    );
    (responses, service.stdout(), service.stderr())
}

/// Every file under `dir`, recursively.
fn all_files(dir: &Path) -> Vec<String> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(all_files(&path));
        } else {
            files.push(path.display().to_string());
        }
    }
    files.sort();
    files
}

#[test]
fn passive() {
    let dir = TestDir::new("passive");
    let greeting_port = free_port();
    let mut greeter = Spec::python_fixture("greeting_server", "greeting_server.py")
        .arg(greeting_port)
        .spawn(&dir);
    greeter.wait_for_port(greeting_port);

    let (plain, plain_out, plain_err) = run_service(&dir, "plain", greeting_port, false);
    let (passive, passive_out, passive_err) = run_service(&dir, "passive", greeting_port, true);

    assert_eq!(plain.len(), IDS.len());
    for (id, response) in IDS.iter().zip(&plain) {
        assert_bytes(
            response,
            &hello_response("220 koala-greeting", id),
            &format!("the service's answer to {id}"),
        );
    }
    assert_eq!(plain.len(), passive.len());
    for (plain, passive) in plain.iter().zip(&passive) {
        assert_bytes(passive, plain, "response with the passive library");
    }

    // Nothing from koala on the service's output.
    assert_eq!(passive_out, plain_out, "stdout");
    assert_eq!(passive_err, plain_err, "stderr");
    assert!(
        !passive_out.to_lowercase().contains("koala")
            && !passive_err.to_lowercase().contains("koala"),
        "koala wrote to the service's output:\n{passive_out}\n{passive_err}"
    );

    // No record directory, no session file, no log: the only files are
    // the programs' captured output.
    assert!(
        !dir.join("passive-record").exists(),
        "the record directory was created"
    );
    assert!(!dir.join("passive-cwd/koala-sessions").exists());
    greeter.stop();
    let files = all_files(dir.path());
    let expected: Vec<String> = ["greeting_server", "passive", "plain"]
        .iter()
        .flat_map(|n| [format!("{n}.stderr"), format!("{n}.stdout")])
        .map(|f| dir.join(f).display().to_string())
        .collect();
    let mut expected = expected;
    expected.sort();
    assert_eq!(files, expected, "files created during the test");
}
