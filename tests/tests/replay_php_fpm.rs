//! A real PHP stack recorded and replayed with every dependency stopped:
//! `client → nginx → (FastCGI over TCP) php-fpm (pm = static, 2 workers) →
//! item.php → MariaDB (mysqli, mysql_native_password) + backend.py (PHP's
//! curl)`.
//!
//! - Recorded on php-fpm, with and without `fastcgi_keep_conn on` in nginx:
//!   each FastCGI request from nginx is a session holding the MariaDB
//!   login, query and quit, and the curl call; replayed against php-fpm
//!   alone.
//! - Recorded on nginx, with and without `fastcgi_keep_conn on`: each HTTP
//!   request is a session holding its FastCGI call; replayed against nginx
//!   with php-fpm stopped.
//!
//! Every replay must pass with every call matched, and no call may wait on
//! silence (`wait_ms` < 500 with `KOALA_REPLAY_IDLE_MS=2000`).

use koala_tests::php_stacks::*;
use koala_tests::replay::*;
use koala_tests::*;

/// The requests, one at a time, each on its own connection: three items
/// and one the database does not have (no backend call).
const IDS: [&str; 4] = ["apple", "pear", MISSING_ITEM, "plum"];

/// Sends [`IDS`] through the stack, waits until `record` holds at least one
/// session per request, and stops the recorded program cleanly.
fn exercise(
    stack: &mut PhpStack,
    recorded: Recorded,
    record: &std::path::Path,
) -> Vec<StackAnswer> {
    let answers: Vec<StackAnswer> = IDS.iter().map(|id| stack.get(id)).collect();
    match recorded {
        Recorded::PhpFpm => {
            // php-fpm's workers always die by a signal when it stops (the
            // master follows SIGQUIT with SIGTERM), so the library cannot
            // write their last sessions at exit: wait for a session of each
            // request first.
            wait_for_recorded(record, "a session for each request", |sessions| {
                IDS.iter().all(|id| {
                    let uri = format!("REQUEST_URI/item/{id}");
                    sessions
                        .iter()
                        .any(|s| find(s.inbound.request.as_bytes(), uri.as_bytes()).is_some())
                })
            });
            stop_php_fpm(&mut stack.fpm);
        }
        Recorded::Nginx => {
            wait_for_sessions(record, IDS.len());
            stack.nginx.stop_cleanly();
        }
    }
    answers
}

/// The sessions of `recording` in the order their requests arrived, after
/// asserting there is exactly one per request of [`IDS`].
#[track_caller]
fn sessions_in_order(recording: &Recording) -> Vec<&Session> {
    let mut sessions: Vec<&Session> = recording.sessions.iter().map(|(_, s)| s).collect();
    sessions.sort_by_key(|s| s.inbound.request_ns);
    let shown: Vec<String> = sessions.iter().map(|s| show(s)).collect();
    assert_eq!(
        sessions.len(),
        IDS.len(),
        "one session per request, no other:\n{}",
        shown.join("\n")
    );
    sessions
}

#[test]
fn replay_php_fpm_recorded_on_php_fpm() {
    php_fpm_recorded("replay_php_fpm_on_fpm", false);
}

#[test]
fn replay_php_fpm_recorded_on_php_fpm_keep_conn() {
    php_fpm_recorded("replay_php_fpm_on_fpm_keep", true);
}

/// Records the stack on php-fpm (nginx, not recorded, is its client) and
/// replays php-fpm with MariaDB and the backend stopped.
fn php_fpm_recorded(test: &str, keep_conn: bool) {
    let dir = TestDir::new(test);
    let record = dir.join("record");
    let mut stack = PhpStack::start(&dir, Recorded::PhpFpm, &record, keep_conn);
    let answers = exercise(&mut stack, Recorded::PhpFpm, &record);
    let recording = Recording::read(&dir, "record", stack.fpm_port);
    let sessions = sessions_in_order(&recording);

    for (session, answer) in sessions.iter().zip(&answers) {
        let id = answer.id.as_str();
        let what = format!("php-fpm session for /item/{id}: {}", show(session));
        assert_eq!(session.program, "php-fpm8.2", "{what}");
        assert!(
            stack.fpm_workers.contains(&session.pid),
            "{what}: not a worker"
        );
        assert_eq!(session.inbound.local, stack.fpm_peer(), "{what}");
        if !keep_conn {
            assert_eq!(session.end, Some(EndReason::Close), "{what}");
        }
        // php-fpm reads the empty STDIN record that ends nginx's request only
        // after it answered (draining the connection before closing it, or
        // when it reads the next request on a kept one), so the request is
        // the records up to the parameters' end — or with that STDIN record
        // too, if koala frames FastCGI requests. Nothing else: not the end
        // of the previous request.
        let request = session.inbound.request.as_bytes();
        let without_stdin = fcgi_request(stack.nginx_port, id, keep_conn, false);
        let with_stdin = fcgi_request(stack.nginx_port, id, keep_conn, true);
        if request != with_stdin.as_slice() {
            assert_bytes(request, &without_stdin, &format!("{what}\nFastCGI request"));
        }
        assert_fcgi_response(
            session.inbound.response.as_bytes(),
            id,
            &format!("{what}\nFastCGI response"),
        );

        let db = stack.db_peer();
        let found = id != MISSING_ITEM;
        assert_eq!(
            session.calls.len(),
            if found { 5 } else { 4 },
            "{what}\ncalls: MariaDB greeting, login, query, quit{}",
            if found { ", backend (curl)" } else { "" }
        );
        assert_mysql_greeting(&session.calls[0], &db, &format!("{what}\ngreeting"));
        assert_mysql_login(&session.calls[1], &db, &format!("{what}\nlogin"));
        let row = DB_ITEMS
            .iter()
            .find(|(item, _, _)| *item == id)
            .map(|(_, name, price)| (*name, *price));
        assert_exchange(
            &session.calls[2],
            &db,
            &item_query(id),
            &item_query_response(row),
            &format!("{what}\nquery"),
        );
        assert_exchange(
            &session.calls[3],
            &db,
            MYSQL_COM_QUIT,
            b"",
            &format!("{what}\nquit"),
        );
        if found {
            assert_exchange(
                &session.calls[4],
                &stack.backend_peer(),
                &curl_request(stack.backend_port, id),
                &backend_response(id),
                &format!("{what}\nbackend call (PHP's curl)"),
            );
        }
    }

    let command = php_fpm_command(&stack.fpm_conf);
    stack.stop();
    let (run, report) = replay_stack(&dir, "koala-replay", &command);
    assert_stack_replayed(&run, &report, &recording);
}

/// Records the stack on nginx (php-fpm is its dependency) and replays
/// nginx with php-fpm, MariaDB and the backend stopped.
fn nginx_recorded(test: &str, keep_conn: bool) {
    let dir = TestDir::new(test);
    let record = dir.join("record");
    let mut stack = PhpStack::start(&dir, Recorded::Nginx, &record, keep_conn);
    let answers = exercise(&mut stack, Recorded::Nginx, &record);
    let recording = Recording::read(&dir, "record", stack.nginx_port);
    let sessions = sessions_in_order(&recording);

    for (session, answer) in sessions.iter().zip(&answers) {
        let id = answer.id.as_str();
        let what = format!("nginx session for /item/{id}: {}", show(session));
        assert_eq!(session.program, "nginx", "{what}");
        assert!(
            stack.nginx_workers.contains(&session.pid),
            "{what}: not a worker"
        );
        assert_eq!(
            session.inbound.local,
            format!("127.0.0.1:{}", stack.nginx_port),
            "{what}"
        );
        assert_exchange(
            &session.inbound,
            &answer.client,
            &answer.request,
            &answer.response,
            &what,
        );
        assert_eq!(session.end, Some(EndReason::Close), "{what}");
        assert_eq!(session.calls.len(), 1, "{what}: one FastCGI call");
        // nginx sends the whole request, its STDIN end included, at once.
        let call = &session.calls[0];
        let what = format!("{what}\nFastCGI call");
        assert_eq!(call.peer, stack.fpm_peer(), "{what}");
        assert_bytes(
            call.request.as_bytes(),
            &fcgi_request(stack.nginx_port, id, keep_conn, true),
            &format!("{what}: request"),
        );
        assert_fcgi_response(call.response.as_bytes(), id, &format!("{what}: response"));
        assert!(!call.truncated, "{what}: truncated");
    }
    // With fastcgi_keep_conn, a worker reuses its FastCGI connection: fewer
    // connections than requests.
    let connections: std::collections::BTreeSet<(u32, &str)> = sessions
        .iter()
        .map(|s| (s.pid, s.calls[0].local.as_str()))
        .collect();
    if keep_conn {
        assert!(
            connections.len() < IDS.len(),
            "kept connections: {connections:?}"
        );
    } else {
        assert_eq!(connections.len(), IDS.len(), "{connections:?}");
    }

    let command = nginx_command(&stack.nginx_conf);
    stack.stop();
    let (run, report) = replay_stack(&dir, "koala-replay", &command);
    assert_stack_replayed(&run, &report, &recording);
}

#[test]
fn replay_php_fpm_recorded_on_nginx() {
    nginx_recorded("replay_php_fpm_on_nginx", false);
}

#[test]
fn replay_php_fpm_recorded_on_nginx_keep_conn() {
    nginx_recorded("replay_php_fpm_on_nginx_keep", true);
}
