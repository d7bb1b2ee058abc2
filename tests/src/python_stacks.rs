//! Harness for the Python real-stack tests (`replay_flask_postgres`,
//! `replay_memcached`): a PostgreSQL server with password authentication,
//! memcached, gunicorn, and the PostgreSQL wire messages the tests expect.
//!
//! Like the rest of the harness, every server runs from the test's own
//! directory on a free loopback port, is waited for by its port, and stops
//! when its [`Program`] is dropped.

use std::fs;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use crate::{Program, Spec, TestDir, clean_command, free_port, python, require_program};

/// How long a set-up program (initdb, psql) may run.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// The role the services log in as, with a password: PostgreSQL's default
/// authentication (SCRAM-SHA-256) really runs.
pub const PG_USER: &str = "koala_app";
/// Its password.
pub const PG_PASSWORD: &str = "koala-secret-7";
/// The database the role owns, seeded by [`start_postgres`].
pub const PG_DATABASE: &str = "shop";
/// Rows of the seeded `items` table: ids `1..=PG_ITEMS`.
pub const PG_ITEMS: u32 = 20;

/// The seeded `items` row `id`: `(name, price)`.
pub fn pg_item(id: u32) -> (String, u32) {
    (format!("item-{id}"), id * 100 + 7)
}

/// The seeded `stock` of item `id`.
pub fn pg_stock(id: u32) -> u32 {
    id * 3 % 17
}

/// The directory of PostgreSQL's server programs (`initdb`, `postgres`):
/// the newest `/usr/lib/postgresql/<version>/bin`, as Debian installs them.
pub fn postgres_bin() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| {
                    let version = e.file_name().to_str()?.parse::<u32>().ok()?;
                    let bin = e.path().join("bin");
                    bin.join("initdb").is_file().then_some((version, bin))
                })
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).unwrap_or_else(|| {
        panic!(
            "PostgreSQL's server is not installed (no /usr/lib/postgresql/*/bin/initdb): \
             install it (e.g. `apt-get install postgresql`, or scripts/install-deps.sh)"
        )
    })
}

/// PostgreSQL refuses to run as root. As root (CI), the servers run as the
/// `postgres` user (`runuser`), which owns their directory; as anyone else,
/// as themselves.
fn as_postgres_user(name: &str, program: &Path) -> Spec {
    // SAFETY: geteuid has no memory effects.
    if unsafe { libc::geteuid() } != 0 {
        return Spec::new(name, program);
    }
    Spec::new(name, require_program("runuser", "util-linux"))
        .args(["-u", "postgres", "--"])
        .arg(program.display())
}

/// Makes `path` belong to the `postgres` user when running as root, and
/// its parent (the test's directory) open to it whatever the umask.
fn give_to_postgres_user(path: &Path) {
    // SAFETY: geteuid has no memory effects.
    if unsafe { libc::geteuid() } != 0 {
        return;
    }
    if let Some(parent) = path.parent() {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(parent)
            .map(|m| m.permissions().mode())
            .unwrap_or(0);
        // Traversable by others (the postgres user), nothing more.
        let _ = fs::set_permissions(parent, fs::Permissions::from_mode(mode | 0o111));
    }
    let status = clean_command("chown")
        .args(["-R", "postgres:postgres"])
        .arg(path)
        .status()
        .expect("run chown");
    assert!(
        status.success(),
        "chown postgres {} failed (is the `postgres` user there? it comes with Debian's \
         postgresql package)",
        path.display()
    );
}

/// Runs a program to completion (not preloaded), its output captured in
/// `dir`; panics with that output when it fails.
fn run_to_end(dir: &TestDir, spec: Spec) -> Program {
    let mut program = spec.spawn(dir);
    let deadline = Instant::now() + RUN_TIMEOUT;
    let status = loop {
        if let Some(status) = program.exited() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "did not finish within {RUN_TIMEOUT:?}\n{}",
            program.output_report()
        );
        thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}\n{}", program.output_report());
    program
}

/// Starts a PostgreSQL server of its own for a test, in `<dir>/pg`:
///
/// - `initdb` there (as the `postgres` user when the test runs as root),
///   with `password_encryption = scram-sha-256` and a `pg_hba.conf` that
///   asks TCP clients for `scram-sha-256` (PostgreSQL's default), local
///   (unix socket) clients for nothing;
/// - listening on a free port of 127.0.0.1 only, its unix socket in
///   `<dir>/pg`;
/// - the role [`PG_USER`] (password [`PG_PASSWORD`]) owning the database
///   [`PG_DATABASE`], with the tables `items (id, name, price)` and
///   `stock (item_id, count)` seeded for ids `1..=`[`PG_ITEMS`]
///   ([`pg_item`], [`pg_stock`]), created over the unix socket so that no
///   TCP traffic precedes the test's.
///
/// Returns the server (stopped by its pid's group on drop) and its port.
pub fn start_postgres(dir: &TestDir) -> (Program, u16) {
    let bin = postgres_bin();
    let home = dir.join("pg");
    fs::create_dir_all(&home).expect("create the PostgreSQL directory");
    let data = home.join("data");
    fs::write(home.join("pwfile"), "postgres-superuser-unused\n").unwrap();
    give_to_postgres_user(&home);
    run_to_end(
        dir,
        as_postgres_user("initdb", &bin.join("initdb")).args([
            "--pgdata",
            data.to_str().unwrap(),
            "--username",
            "postgres",
            "--pwfile",
            home.join("pwfile").to_str().unwrap(),
            "--auth-local",
            "trust",
            "--auth-host",
            "scram-sha-256",
            "--encoding",
            "UTF8",
            "--locale",
            "C",
            "--no-sync",
        ]),
    );
    // Exactly these rules, whatever initdb's template holds.
    fs::write(
        data.join("pg_hba.conf"),
        "# koala tests: the unix socket for the harness, SCRAM for TCP clients.\n\
         local all all trust\n\
         host all all 127.0.0.1/32 scram-sha-256\n",
    )
    .expect("write pg_hba.conf");
    give_to_postgres_user(&data);

    let port = free_port();
    let mut server = as_postgres_user("postgres", &bin.join("postgres"))
        .args(["-D", data.to_str().unwrap()])
        .args(["-c", "listen_addresses=127.0.0.1"])
        .args(["-c", &format!("port={port}")])
        .args(["-c", &format!("unix_socket_directories={}", home.display())])
        .args(["-c", "password_encryption=scram-sha-256"])
        // A throw-away server: durability costs time and buys nothing.
        .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
        .args(["-c", "full_page_writes=off"])
        .spawn(dir);
    server.wait_for_port(port);
    wait_until_ready(&mut server, &data);

    let setup = format!(
        "CREATE ROLE {PG_USER} LOGIN PASSWORD '{PG_PASSWORD}';\n\
         CREATE DATABASE {PG_DATABASE} OWNER {PG_USER};\n"
    );
    psql(dir, &home, port, "postgres", "postgres", &setup);
    let mut seed = String::from(
        "CREATE TABLE items (id integer PRIMARY KEY, name text NOT NULL, price integer NOT NULL);\n\
         CREATE TABLE stock (item_id integer PRIMARY KEY REFERENCES items, count integer NOT NULL);\n",
    );
    for id in 1..=PG_ITEMS {
        let (name, price) = pg_item(id);
        seed.push_str(&format!(
            "INSERT INTO items VALUES ({id}, '{name}', {price});\n\
             INSERT INTO stock VALUES ({id}, {});\n",
            pg_stock(id)
        ));
    }
    psql(dir, &home, port, PG_USER, PG_DATABASE, &seed);
    (server, port)
}

/// Waits until the server accepts connections: it listens before it has
/// finished starting up ("the database system is starting up"), and says
/// `ready` on the status line of `postmaster.pid` when it has.
fn wait_until_ready(server: &mut Program, data: &Path) {
    let deadline = Instant::now() + RUN_TIMEOUT;
    loop {
        let pid_file = fs::read_to_string(data.join("postmaster.pid")).unwrap_or_default();
        if pid_file
            .lines()
            .nth(7)
            .is_some_and(|status| status.trim() == "ready")
        {
            return;
        }
        assert!(
            server.exited().is_none() && Instant::now() < deadline,
            "PostgreSQL did not get ready within {RUN_TIMEOUT:?}\n{}",
            server.output_report()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `sql` with `psql` over the unix socket in `socket_dir` as `user`
/// on `database`, stopping at the first error.
fn psql(dir: &TestDir, socket_dir: &Path, port: u16, user: &str, database: &str, sql: &str) {
    let file = dir.join(format!("psql-{user}-{database}.sql"));
    fs::write(&file, sql).expect("write the SQL file");
    run_to_end(
        dir,
        Spec::new("psql", postgres_bin().join("psql"))
            .args(["--no-psqlrc", "--quiet", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", socket_dir.to_str().unwrap()])
            .args(["-p", &port.to_string(), "-U", user, "-d", database])
            .args(["-f", file.to_str().unwrap()]),
    );
}

/// Starts memcached on a free port of 127.0.0.1 (TCP only, no UDP).
/// Returns the server and its port.
pub fn start_memcached(dir: &TestDir) -> (Program, u16) {
    let port = free_port();
    let mut spec = Spec::new("memcached", require_program("memcached", "memcached")).args([
        "-l",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-U",
        "0",
        "-m",
        "16",
        "-t",
        "1",
    ]);
    // memcached refuses to run as root unless told which user to be.
    // SAFETY: geteuid has no memory effects.
    if unsafe { libc::geteuid() } == 0 {
        spec = spec.args(["-u", "root"]);
    }
    let mut server = spec.spawn(dir);
    server.wait_for_port(port);
    (server, port)
}

/// The arguments of `python -m gunicorn` serving `app` (`module:variable`
/// of `tests/fixtures`) on `127.0.0.1:port` with `workers` pre-forked sync
/// workers (one request at a time each; gunicorn's sync workers close the
/// connection after each response).
pub fn gunicorn_args(app: &str, port: u16, workers: usize) -> Vec<String> {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    [
        "-u",
        "-m",
        "gunicorn",
        "--workers",
        &workers.to_string(),
        "--worker-class",
        "sync",
        "--bind",
        &format!("127.0.0.1:{port}"),
        "--chdir",
        fixtures.to_str().unwrap(),
        // Workers start at once and stop quickly on SIGTERM.
        "--graceful-timeout",
        "5",
        "--log-level",
        "warning",
        app,
    ]
    .iter()
    .map(|a| a.to_string())
    .collect()
}

/// `python -m gunicorn` ([`gunicorn_args`]), the real interpreter (a
/// pyenv shim or gunicorn's entry-point script would be a wrapper).
pub fn gunicorn_spec(name: &str, app: &str, port: u16, workers: usize) -> Spec {
    Spec::new(name, python()).args(gunicorn_args(app, port, workers))
}

// ---------------------------------------------------------------------------
// PostgreSQL frontend messages (protocol 3.0), to state expected bytes.

/// One frontend message: type byte, then length (itself included) and body.
pub fn pg_message(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![kind];
    out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn cstring(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(text.as_bytes());
    out.push(0);
}

/// A simple-protocol `Query`.
pub fn pg_query(sql: &str) -> Vec<u8> {
    let mut body = Vec::new();
    cstring(&mut body, sql);
    pg_message(b'Q', &body)
}

/// `Parse` of the unnamed statement with parameter type OIDs.
pub fn pg_parse(sql: &str, param_types: &[u32]) -> Vec<u8> {
    let mut body = Vec::new();
    cstring(&mut body, "");
    cstring(&mut body, sql);
    body.extend_from_slice(&(param_types.len() as u16).to_be_bytes());
    for oid in param_types {
        body.extend_from_slice(&oid.to_be_bytes());
    }
    pg_message(b'P', &body)
}

/// `Bind` of the unnamed portal and statement: parameters (format code,
/// bytes) and the result columns' format codes.
pub fn pg_bind(params: &[(u16, &[u8])], result_formats: &[u16]) -> Vec<u8> {
    let mut body = Vec::new();
    cstring(&mut body, "");
    cstring(&mut body, "");
    body.extend_from_slice(&(params.len() as u16).to_be_bytes());
    for (format, _) in params {
        body.extend_from_slice(&format.to_be_bytes());
    }
    body.extend_from_slice(&(params.len() as u16).to_be_bytes());
    for (_, value) in params {
        body.extend_from_slice(&(value.len() as u32).to_be_bytes());
        body.extend_from_slice(value);
    }
    body.extend_from_slice(&(result_formats.len() as u16).to_be_bytes());
    for format in result_formats {
        body.extend_from_slice(&format.to_be_bytes());
    }
    pg_message(b'B', &body)
}

/// `Describe` of the unnamed portal.
pub fn pg_describe_portal() -> Vec<u8> {
    pg_message(b'D', b"P\0")
}

/// `Execute` of the unnamed portal, all rows.
pub fn pg_execute() -> Vec<u8> {
    pg_message(b'E', b"\0\0\0\0\0")
}

/// `Sync`.
pub fn pg_sync() -> Vec<u8> {
    pg_message(b'S', b"")
}

/// A backend `DataRow` of text columns (`None`: NULL).
pub fn pg_data_row(columns: &[Option<&str>]) -> Vec<u8> {
    let mut body = (columns.len() as u16).to_be_bytes().to_vec();
    for column in columns {
        match column {
            Some(text) => {
                body.extend_from_slice(&(text.len() as u32).to_be_bytes());
                body.extend_from_slice(text.as_bytes());
            }
            None => body.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    pg_message(b'D', &body)
}

/// A backend `CommandComplete` with its tag (`SELECT 1`).
pub fn pg_command_complete(tag: &str) -> Vec<u8> {
    let mut body = Vec::new();
    cstring(&mut body, tag);
    pg_message(b'C', &body)
}

/// A backend `ReadyForQuery` in transaction state `status` (`I`, `T`, `E`).
pub fn pg_ready(status: u8) -> Vec<u8> {
    pg_message(b'Z', &[status])
}

/// The type byte and body of every message of a stream of tagged messages
/// (what follows the start-up message). `None` when the bytes do not split
/// exactly into messages.
pub fn pg_messages(bytes: &[u8]) -> Option<Vec<(u8, &[u8])>> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        if rest.len() < 5 {
            return None;
        }
        let length = u32::from_be_bytes(rest[1..5].try_into().ok()?) as usize;
        if length < 4 || rest.len() < 1 + length {
            return None;
        }
        out.push((rest[0], &rest[5..1 + length]));
        rest = &rest[1 + length..];
    }
    Some(out)
}

/// Is `request` a PostgreSQL start-up message (protocol 3.0), an
/// SSLRequest or a GSSENCRequest: the first thing a client sends?
pub fn pg_is_startup(request: &[u8]) -> bool {
    if request.len() < 8 {
        return false;
    }
    let length = u32::from_be_bytes(request[0..4].try_into().unwrap()) as usize;
    let code = u32::from_be_bytes(request[4..8].try_into().unwrap());
    length == request.len() && matches!(code, 196_608 | 80_877_103 | 80_877_104)
}

/// libpq's `SSLRequest` (`sslmode=prefer`, its default, asks first).
pub fn pg_ssl_request() -> Vec<u8> {
    [8u32.to_be_bytes(), 80_877_103u32.to_be_bytes()].concat()
}

/// The start-up message's parameters (`user`, `database`...), in order.
pub fn pg_startup_parameters(request: &[u8]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if !pg_is_startup(request) {
        return out;
    }
    let mut fields = request[8..].split(|b| *b == 0);
    while let (Some(key), Some(value)) = (fields.next(), fields.next()) {
        if key.is_empty() {
            break;
        }
        out.push((
            String::from_utf8_lossy(key).into_owned(),
            String::from_utf8_lossy(value).into_owned(),
        ));
    }
    out
}

/// Is `request` a client's SCRAM-SHA-256 `SASLInitialResponse`
/// (`p`, mechanism, client-first-message `n,,n=,r=<nonce>`)?
pub fn pg_is_scram_first(request: &[u8]) -> bool {
    match pg_messages(request).as_deref() {
        Some([(b'p', body)]) => {
            body.starts_with(b"SCRAM-SHA-256\0") && crate::find(body, b"n,,n=,r=").is_some()
        }
        _ => false,
    }
}

/// Is `request` a client's SCRAM-SHA-256 `SASLResponse`, the
/// client-final-message `c=biws,r=<nonce>,p=<proof>`?
pub fn pg_is_scram_final(request: &[u8]) -> bool {
    match pg_messages(request).as_deref() {
        Some([(b'p', body)]) => {
            body.starts_with(b"c=biws,r=") && crate::find(body, b",p=").is_some()
        }
        _ => false,
    }
}

/// The authentication request code of a backend `Authentication*` message
/// at the start of `response` (0 ok, 10 SASL, 11 SASL continue, 12 SASL
/// final).
pub fn pg_auth_code(response: &[u8]) -> Option<u32> {
    if response.len() < 9 || response[0] != b'R' {
        return None;
    }
    Some(u32::from_be_bytes(response[5..9].try_into().ok()?))
}
