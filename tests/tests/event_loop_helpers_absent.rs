//! The automatic request-context helpers (`helpers/python`,
//! `helpers/node/koala-context.js`) loaded where libkoala.so is absent or
//! inactive: they change nothing. Python imports neither ctypes nor the
//! helper's module without KOALA_MODE and never patches asyncio without an
//! active library, and a user's own sitecustomize further on the path
//! still runs; Node patches nothing and opens no socket (so sends no
//! datagram) without KOALA_MODE. The services of the `event_loop_*` tests
//! answer exactly as without the helpers. The positive control: with the
//! library active, both patch.

use koala_tests::event_loop::*;
use koala_tests::*;

/// What a Python process says about the helper: whether asyncio's
/// Handle._run is patched, and whether ctypes and koala_context were
/// imported (asyncio is imported after start-up, as a service does).
const PYTHON_PROBE: &str = "import sys\n\
    loaded = ['ctypes' in sys.modules, 'koala_context' in sys.modules]\n\
    import asyncio.events\n\
    patched = getattr(asyncio.events.Handle._run, '_koala', False)\n\
    print('patched' if patched else 'unpatched', *loaded)\n";

/// A sitecustomize of the user's, found after the helper's on PYTHONPATH.
fn user_sitecustomize(dir: &TestDir) -> String {
    let user = dir.join("user");
    std::fs::create_dir_all(&user).unwrap();
    std::fs::write(
        user.join("sitecustomize.py"),
        "print('user sitecustomize ran')\n",
    )
    .unwrap();
    user.display().to_string()
}

fn python_probe(dir: &TestDir, name: &str, env: &[(&str, String)], preload: bool) -> String {
    let mut spec = Spec::new(name, python()).args(["-c", PYTHON_PROBE]);
    if preload {
        spec = spec.preload();
    }
    for (key, value) in env {
        spec = spec.env(key, value);
    }
    let mut probe = spec.spawn(dir);
    let status = probe.wait_for_exit(std::time::Duration::from_secs(20));
    assert!(status.success(), "{}", probe.output_report());
    assert_eq!(probe.stderr(), "", "{}", probe.output_report());
    probe.stdout()
}

#[test]
fn the_python_helper_does_nothing_without_an_active_library() {
    let dir = TestDir::new("event_loop_helpers_absent_python");
    let path = format!(
        "{}:{}",
        helpers_dir().join("python").display(),
        user_sitecustomize(&dir)
    );
    let record = dir.join("record").display().to_string();
    let pythonpath = ("PYTHONPATH", path);
    // No KOALA_MODE: not even ctypes is imported.
    assert_eq!(
        python_probe(&dir, "none", std::slice::from_ref(&pythonpath), false),
        "user sitecustomize ran\nunpatched False False\n"
    );
    // KOALA_MODE without the library: looked for, not found, no patch.
    assert_eq!(
        python_probe(
            &dir,
            "no-library",
            &[pythonpath.clone(), ("KOALA_MODE", "record".into())],
            false
        ),
        "user sitecustomize ran\nunpatched True True\n"
    );
    // The library loaded but passive: no patch.
    assert_eq!(
        python_probe(
            &dir,
            "passive",
            &[pythonpath.clone(), ("KOALA_MODE", "off".into())],
            true
        ),
        "user sitecustomize ran\nunpatched True True\n"
    );
    // Positive control: recording, the helper patches asyncio.
    assert_eq!(
        python_probe(
            &dir,
            "active",
            &[
                pythonpath,
                ("KOALA_MODE", "record".into()),
                ("KOALA_RECORD_TO", record),
            ],
            true
        ),
        "user sitecustomize ran\npatched True True\n"
    );
}

/// What a Node process says about the helper: whether the functions it
/// would patch are its own, and whether the process has any socket open.
const NODE_PROBE: &str = "const net = require('net'); const http = require('http');\n\
    setImmediate(() => {\n\
    const fs = require('fs');\n\
    const sockets = fs.readdirSync('/proc/self/fd').filter((fd) => {\n\
    try { return fs.readlinkSync('/proc/self/fd/' + fd).startsWith('socket:'); } catch (_) { return false; }\n\
    }).length;\n\
    console.log(net.Socket.prototype._writeGeneric.name === 'koalaWriteGeneric', http.Server.prototype.emit.name === 'koalaEmit', sockets > 0);\n\
    });\n";

fn node_probe(dir: &TestDir, name: &str, env: &[(&str, String)], preload: bool) -> String {
    let helper = helpers_dir().join("node/koala-context.js");
    let mut spec = Spec::new(name, require_program("node", "nodejs")).args([
        "--require",
        helper.to_str().unwrap(),
        "-e",
        NODE_PROBE,
    ]);
    if preload {
        spec = spec.preload();
    }
    for (key, value) in env {
        spec = spec.env(key, value);
    }
    let mut probe = spec.spawn(dir);
    let status = probe.wait_for_exit(std::time::Duration::from_secs(20));
    assert!(status.success(), "{}", probe.output_report());
    probe.stdout()
}

#[test]
fn the_node_helper_does_nothing_without_koala_mode() {
    let dir = TestDir::new("event_loop_helpers_absent_node");
    assert_eq!(
        node_probe(&dir, "none", &[], false),
        "false false false\n",
        "nothing patched, no socket"
    );
    let record = dir.join("record").display().to_string();
    assert_eq!(
        node_probe(
            &dir,
            "active",
            &[("KOALA_MODE", "record".into()), ("KOALA_RECORD_TO", record)],
            true
        ),
        "true true true\n",
        "positive control"
    );
}

/// The aiohttp and Node services answer the same with the helpers loaded
/// (no library, no KOALA_* variable) as without them: aiohttp's status
/// line and body (its head carries the time), Node's exact bytes.
#[test]
fn the_services_answer_the_same_with_the_helpers_and_no_library() {
    let dir = TestDir::new("event_loop_helpers_absent_services");
    let aiohttp = Stack {
        command: vec![
            python().display().to_string(),
            "-u".to_string(),
            fixture("event_loop_aiohttp_service.py")
                .display()
                .to_string(),
        ],
        program: "python3",
        incr: &["INCRBY", "1"],
    };
    let node = Stack {
        command: vec![
            require_program("node", "nodejs").display().to_string(),
            fixture("node/event_loop_node_service.js")
                .display()
                .to_string(),
        ],
        program: "node",
        incr: &["INCR"],
    };
    let python_helper = [(
        "PYTHONPATH",
        helpers_dir().join("python").display().to_string(),
    )];
    let node_helper = [(
        "NODE_OPTIONS",
        format!(
            "--require \"{}\"",
            helpers_dir().join("node/koala-context.js").display()
        ),
    )];
    let essence = |answer: &[u8]| {
        let text = String::from_utf8_lossy(answer).into_owned();
        let status = text.lines().next().unwrap_or_default().to_string();
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string());
        (status, body)
    };
    let plain = serve_without_koala(&dir, "aiohttp-plain", &aiohttp, &[]);
    let helped = serve_without_koala(&dir, "aiohttp-helped", &aiohttp, &python_helper);
    for ((id, a), (_, b)) in plain.iter().zip(&helped) {
        assert_eq!(essence(a), essence(b), "aiohttp answer to {id}");
        assert_eq!(
            essence(a).1.as_deref(),
            Some(body(id).as_str()),
            "aiohttp answer to {id}"
        );
    }
    let plain = serve_without_koala(&dir, "node-plain", &node, &[]);
    let helped = serve_without_koala(&dir, "node-helped", &node, &node_helper);
    for ((id, a), (_, b)) in plain.iter().zip(&helped) {
        assert_bytes(b, a, &format!("node answer to {id}"));
        assert!(
            String::from_utf8_lossy(a).ends_with(&body(id)),
            "node answer to {id}"
        );
    }
}
