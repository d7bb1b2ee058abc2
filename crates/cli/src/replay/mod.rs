//! `koala replay`: post recorded sessions to the inbound server of a
//! service running under libkoala.so in replay mode, compare what it
//! answers with what was recorded, and report.

mod client;
mod compare;
mod diff;
mod learn;
mod load;
pub mod merge;
pub mod nats;
mod noise;
mod outcome;
mod progress;
mod report;
mod runner;
mod secrets;
mod service;

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use client::Client;
use load::{ItemKind, Loaded};
use outcome::Settings;
use progress::Term;
use report::Run;
use runner::{Plan, Stopped};
use service::Service;

/// `POST /v1/background` bodies are cut at about this size.
const BACKGROUND_BATCH_BYTES: usize = 8 << 20;

/// Exit codes.
const EXIT_FAILED: u8 = 1;
const EXIT_SETUP: u8 = 2;
const EXIT_INTERRUPTED: u8 = 130;

pub const AFTER_HELP: &str = "\
How it works:
  Each session is POSTed to the inbound server's /v1/replay, which sends the
  recorded request to the service and answers every outbound call the
  service makes from the recording. koala compares the service's answer with
  the recorded response:
    HTTP/1.x  status line; headers as a multiset of lower-cased name and
              trimmed value, in any order, without Date and --ignore-header
              names; body after de-chunking (Content-Length vs chunked
              framing alone is not a difference)
    other     byte for byte
  A session passes iff its response compares equal and none of its calls is
  unmatched. Recorded calls the service did not make (missing) are reported
  but do not fail it. An error answer of the API (4xx/5xx) or a connection
  failure is an error for that session; a bad line of a session file is an
  error too. Lines with \"kind\":\"background\" are not replayed: they answer the
  service's start-up traffic (KOALA_REPLAY_BACKGROUND when koala starts the
  service, POST /v1/background otherwise).

With -- CMD ARGS..., koala starts CMD under libkoala.so (--lib, $KOALA_LIB, or
next to the koala binary) with KOALA_MODE=replay, free loopback ports for the
inbound and outbound servers, and KOALA_SUT_ADDR = --sut (default: the
recorded inbound address, if all sessions agree); waits until the inbound
server answers and the service accepts connections; replays; then stops CMD
(SIGTERM to its process group, SIGKILL after 5 s), also on Ctrl-C or error.
CMD's output goes to koala's stderr, or to --service-log FILE. koala gives CMD
a fresh KOALA_REPLAY_TOKEN and sends it with every API request; without CMD,
give koala the service's token in KOALA_REPLAY_TOKEN (or --token).

Exit status: 0 every session passed; 1 some session failed or had an error;
2 usage or setup problem (no sessions, inbound server unreachable, CMD did not
start or get ready, a report could not be written); 130 interrupted.

Examples:
  # start the service under koala, replay a recording, keep JUnit for CI
  koala replay ./koala-sessions --sut 127.0.0.1:8080 --junit replay.xml \\
      -- python3 service.py --port 8080
  # the service already runs with KOALA_MODE=replay and this same
  # KOALA_REPLAY_TOKEN: 8 sessions at a time
  koala replay ./koala-sessions -j 8 --ignore-header x-request-id --report replay.json";

/// Replay recorded sessions against the service and compare its answers.
#[derive(clap::Args)]
pub struct ReplayArgs {
    /// Session files (.jsonl) or directories of them, or a stream
    /// (nats://HOST:PORT/STREAM, see docs/distributed.md).
    #[arg(required = true, value_name = "SESSIONS")]
    pub paths: Vec<PathBuf>,
    /// The inbound server (KOALA_INBOUND_ADDR). Default: a free loopback port
    /// with CMD; otherwise $KOALA_INBOUND_ADDR, else 127.0.0.1:2514.
    #[arg(long, value_name = "ADDR")]
    pub inbound: Option<SocketAddr>,
    /// The replay API's token (the service's KOALA_REPLAY_TOKEN), sent with
    /// every request. Default: $KOALA_REPLAY_TOKEN; with CMD, else a fresh
    /// random one given to the service. Prefer the variable: a command
    /// line is visible to every user of the machine.
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,
    /// Sessions replayed at a time, each worker on its own keep-alive
    /// connection.
    #[arg(
        long,
        short = 'j',
        value_name = "N",
        default_value_t = 1,
        value_parser = clap::value_parser!(u16).range(1..)
    )]
    pub concurrency: u16,
    /// Write every session's verdict, ReplayResult or error, and diff as JSON.
    #[arg(long, value_name = "FILE.json")]
    pub report: Option<PathBuf>,
    /// Write a JUnit XML file: one testcase per session.
    #[arg(long, value_name = "FILE.xml")]
    pub junit: Option<PathBuf>,
    /// A response header left out of the comparison (case-insensitive;
    /// repeat it, or separate names with commas). Date always is.
    #[arg(long = "ignore-header", value_name = "NAME", value_delimiter = ',')]
    pub ignore_headers: Vec<String>,
    /// A noise rule: what may differ in the response without failing the
    /// session (repeatable): `json:$.path` (or `$.path`, `[*]` for every
    /// element), `header:NAME`, `regex:PATTERN`, optionally after a scope
    /// `METHOD /path/*` (docs/replay.md#noise).
    #[arg(long = "ignore", value_name = "RULE", value_parser = noise::Rule::parse)]
    pub ignore: Vec<noise::Rule>,
    /// A file of noise rules, one per line (# comments), as --ignore takes
    /// them; --learn-noise writes one.
    #[arg(long = "noise", value_name = "FILE")]
    pub noise: Vec<PathBuf>,
    /// Replay every session twice (waiting for the wall clock's next second
    /// in between), write the rules for what differed between the two runs
    /// to FILE, for review and reuse with --noise. The run's verdicts are
    /// the second run's, with the learned rules applied.
    #[arg(long = "learn-noise", value_name = "FILE")]
    pub learn_noise: Option<PathBuf>,
    /// Seconds to wait for each replay's answer.
    #[arg(long, value_name = "SECS", default_value = "60", value_parser = parse_seconds)]
    pub timeout: Duration,
    /// Lines of explanation printed per failing session.
    #[arg(long, value_name = "N", default_value_t = 40)]
    pub diff_lines: usize,
    /// Failing sessions explained on the console at most (the report has all).
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub max_shown: usize,
    /// No progress bar (there is none anyway when stderr is not a terminal).
    #[arg(long)]
    pub no_progress: bool,
    /// The value of a header the recording redacted in the inbound
    /// requests (KOALA_REDACT), given back to the service: NAME=VALUE,
    /// e.g. `authorization='Bearer ...'` (repeat for each header). A
    /// session whose request has a redacted header without one is an error
    /// saying so. Prefer a secret made for tests: a command line is
    /// visible to every user of the machine.
    #[arg(long = "secret", value_name = "NAME=VALUE", value_parser = secrets::parse_secret)]
    pub secrets: Vec<secrets::SecretArg>,
    /// With CMD: where the service listens (KOALA_SUT_ADDR). Default: the
    /// recorded inbound address when all sessions agree.
    #[arg(long, value_name = "ADDR", requires = "command")]
    pub sut: Option<SocketAddr>,
    /// With CMD: the outbound server (KOALA_OUTBOUND_ADDR). Default: a free
    /// loopback port.
    #[arg(long, value_name = "ADDR", requires = "command")]
    pub outbound: Option<SocketAddr>,
    /// With CMD: also record the replayed traffic to DIR
    /// (KOALA_MODE=record,replay).
    #[arg(long, value_name = "DIR", requires = "command")]
    pub record_to: Option<PathBuf>,
    /// With CMD: libkoala.so to load (default: $KOALA_LIB, else
    /// libkoala.so next to this koala binary).
    #[arg(long, value_name = "PATH", requires = "command")]
    pub lib: Option<PathBuf>,
    /// With CMD: seconds to wait for the service to be ready.
    #[arg(
        long,
        value_name = "SECS",
        default_value = "30",
        value_parser = parse_seconds,
        requires = "command"
    )]
    pub start_timeout: Duration,
    /// With CMD: what the outbound server does with a request no recorded
    /// call matches (KOALA_REPLAY_ON_MISS): `error` (default) answers an
    /// error in the protocol's own shape (RESP -ERR, HTTP 502, PostgreSQL
    /// ErrorResponse, MySQL ERR...) so the service stays up and fails
    /// explicitly; `closest` answers with the closest recorded call of the
    /// same operation (or as `error`); `close` closes the connection. The
    /// call is reported unmatched and its session fails in every case.
    #[arg(long, value_name = "POLICY", requires = "command", value_parser = parse_on_miss)]
    pub on_miss: Option<koala_config::OnMiss>,
    /// With CMD: append the service's stdout and stderr to FILE instead of
    /// koala's stderr.
    #[arg(long, value_name = "FILE", requires = "command")]
    pub service_log: Option<PathBuf>,
    /// With a stream (nats://HOST:PORT/STREAM): take the sessions from the
    /// durable consumer NAME, shared with every other `koala replay` of the
    /// same NAME (on any machine): each session is replayed by one of them,
    /// acknowledged after its verdict. Each writes its own report; `koala
    /// report merge` joins them.
    #[arg(long, value_name = "NAME")]
    pub consumer: Option<String>,
    /// With a stream: only the records of this program.
    #[arg(long, value_name = "PROGRAM")]
    pub program: Option<String>,
    /// With a stream: only sessions whose request came at or after TIME
    /// (Unix seconds, or YYYY-MM-DDTHH:MM:SSZ).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// With a stream: only sessions whose request came before TIME.
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// With a stream: only the records shipped from this host (the name
    /// `koala ship --host` gave them).
    #[arg(long, value_name = "HOST")]
    pub host: Option<String>,
    /// With --consumer: seconds a delivered session may go without its
    /// acknowledgement before the server hands it to another worker
    /// (default: --timeout plus 60).
    #[arg(long, value_name = "SECS", requires = "consumer")]
    pub ack_wait: Option<u64>,
    /// The service to start, after `--`.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

fn parse_on_miss(text: &str) -> Result<koala_config::OnMiss, String> {
    text.parse()
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if !(seconds > 0.0 && seconds <= 1e6) {
        return Err(format!("{text} must be greater than 0 and at most 1000000"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

pub fn run(args: &ReplayArgs) -> Result<ExitCode, String> {
    let noise_rules = noise_rules(args)?;
    // A stream (nats://...) is read into a Loaded as files are.
    let source = nats::StreamSource::from_args(args)?;
    let (loaded, left_out, last_seq) = match &source {
        Some(source) => source.load()?,
        None => (Loaded::read(&args.paths)?, Default::default(), 0),
    };
    let consumer = match (&source, &args.consumer) {
        (Some(source), Some(name)) => {
            let ack_wait =
                Duration::from_secs(args.ack_wait.unwrap_or(args.timeout.as_secs() + 60).max(1));
            Some(source.consumer(name, &loaded, left_out, last_seq, ack_wait)?)
        }
        _ => None,
    };
    if loaded.files.is_empty() {
        return Err("no .jsonl session files found".into());
    }
    if loaded.session_count() == 0 {
        for item in &loaded.items {
            if let load::ItemKind::Bad(message) = &item.kind {
                eprintln!("koala: {}: {message}", loaded.location(item));
            }
        }
        return Err(format!(
            "no sessions to replay in {} file(s) ({} background record(s), {} bad line(s))",
            loaded.files.len(),
            loaded.background().count(),
            loaded.bad_count()
        ));
    }
    let term = Arc::new(Term::new(!args.no_progress && Term::stderr_is_terminal()));
    service::catch_signals();
    let mut _background_file = None;
    let mut started_service = None;
    let inbound;
    let sut;
    let given_token = args
        .token
        .clone()
        .or_else(|| std::env::var(TOKEN_VARIABLE).ok())
        .filter(|token| !token.is_empty());
    let token;
    // The inbound server's count of calls answered unattributed when the
    // run began (a service replayed before counts from there).
    let unattributed_before;
    if args.command.is_empty() {
        inbound = match args.inbound {
            Some(addr) => addr,
            None => default_inbound()?,
        };
        warn_if_exposed(inbound, &term);
        token = given_token;
        let status = connect(inbound, token.as_deref(), args.timeout)?;
        unattributed_before = status.unattributed_calls_served;
        sut = Some(status.sut.clone());
        term.message(&format!(
            "koala: inbound server {inbound}: pid {}, service at {}",
            status.pid, status.sut
        ));
        post_background(&loaded, inbound, token.as_deref(), args.timeout, &term);
    } else {
        let lib = crate::library::locate(args.lib.as_deref())?;
        let sut_addr = match args.sut {
            Some(addr) => addr,
            None => {
                let (addr, note) = default_sut(&loaded.recorded_locals())?;
                if let Some(note) = note {
                    term.message(&format!("koala: {note}"));
                }
                addr
            }
        };
        inbound = match args.inbound {
            Some(addr) => addr,
            None => free_port_except(&[sut_addr])?,
        };
        warn_if_exposed(inbound, &term);
        // A token per run: only this koala can drive the service's API.
        token = Some(match given_token {
            Some(token) => token,
            None => new_token()?,
        });
        let outbound = match args.outbound {
            Some(addr) => addr,
            None => free_port_except(&[inbound, sut_addr])?,
        };
        // Something already there would answer in the service's place.
        for (addr, what) in [
            (sut_addr, "--sut (where the service must listen)"),
            (inbound, "--inbound"),
            (outbound, "--outbound"),
        ] {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok() {
                return Err(format!(
                    "{addr} already accepts connections before the service started: it is {what}; stop what listens there or choose another address"
                ));
            }
        }
        let mut env: Vec<(&str, OsString)> = vec![
            ("LD_PRELOAD", crate::library::preload(&lib)),
            ("KOALA_INBOUND_ADDR", inbound.to_string().into()),
            ("KOALA_OUTBOUND_ADDR", outbound.to_string().into()),
            ("KOALA_SUT_ADDR", sut_addr.to_string().into()),
            (TOKEN_VARIABLE, token.clone().unwrap_or_default().into()),
        ];
        // Room for every worker's connection and koala's own.
        let connections = usize::from(args.concurrency) + 16;
        if connections > DEFAULT_MAX_CONNECTIONS
            && std::env::var_os("KOALA_REPLAY_MAX_CONNECTIONS").is_none()
        {
            env.push((
                "KOALA_REPLAY_MAX_CONNECTIONS",
                connections.to_string().into(),
            ));
        }
        match &args.record_to {
            Some(dir) => {
                env.push(("KOALA_MODE", "record,replay".into()));
                env.push(("KOALA_RECORD_TO", dir.into()));
            }
            None => env.push(("KOALA_MODE", "replay".into())),
        }
        if let Some(policy) = args.on_miss {
            env.push(("KOALA_REPLAY_ON_MISS", policy.as_str().into()));
        }
        // The recording's redaction key: the service's requests are
        // redacted with it before matching, as the recorder redacted them.
        if std::env::var_os("KOALA_REDACT_KEY_FILE").is_none()
            && let Some(key_file) = redaction_key_file(&args.paths)
        {
            env.push(("KOALA_REDACT_KEY_FILE", key_file.into()));
        }
        let pool = pool_lines(&loaded)?;
        if !pool.is_empty() {
            let file = BackgroundFile::write(&pool)?;
            env.push(("KOALA_REPLAY_BACKGROUND", file.path().into()));
            _background_file = Some(file);
        }
        term.message(&format!(
            "koala: starting {} (inbound {inbound}, outbound {outbound}, sut {sut_addr})",
            args.command.join(" ")
        ));
        let mut service = Service::start(
            &args.command,
            &env,
            args.service_log.as_deref(),
            term.clone(),
        )?;
        let waited = Instant::now();
        match service::wait_ready(
            &mut service,
            inbound,
            token.as_deref(),
            sut_addr,
            args.start_timeout,
        ) {
            Ok(status) => {
                unattributed_before = status.unattributed_calls_served;
                term.message(&format!(
                    "koala: service ready in {:.2} s (pid {}, inbound server pid {})",
                    waited.elapsed().as_secs_f64(),
                    service.pid(),
                    status.pid
                ))
            }
            Err(message) => {
                let interrupted = service::interrupted();
                service.stop();
                term.message(&format!("koala: {message}"));
                return Ok(ExitCode::from(if interrupted {
                    EXIT_INTERRUPTED
                } else {
                    EXIT_SETUP
                }));
            }
        }
        sut = Some(sut_addr.to_string());
        started_service = Some(service);
    }

    let concurrency = usize::from(args.concurrency);
    term.message(&format!(
        "koala: replaying {} session(s) from {} file(s), {concurrency} at a time",
        loaded.session_count(),
        loaded.files.len()
    ));
    let keep_results = args.report.is_some();
    let mut plan = Plan {
        loaded: &loaded,
        inbound,
        token,
        secrets: args.secrets.clone(),
        concurrency,
        timeout: args.timeout,
        settings: Settings {
            ignore_headers: args
                .ignore_headers
                .iter()
                .map(|name| name.trim().to_ascii_lowercase())
                .filter(|name| !name.is_empty())
                .collect(),
            keep_results,
            // The report keeps more than the console shows.
            max_lines: args.diff_lines.max(400),
            noise: noise_rules,
        },
        work: consumer.as_ref().map(|c| c as &dyn runner::WorkQueue),
    };
    let started = SystemTime::now();
    let replayed = match &args.learn_noise {
        Some(path) => match learn::run(&mut plan, &term, started_service.as_mut(), path) {
            Ok(replayed) => replayed,
            Err(message) => {
                if let Some(mut service) = started_service.take() {
                    service.stop();
                }
                return Err(message);
            }
        },
        None => runner::replay_all(&plan, &term, started_service.as_mut()),
    };
    let mut replayed = replayed;
    encrypted_not_replayable(&loaded, &mut replayed.outcomes, &term);
    // Calls recorded unattributed that answered a request no session in
    // flight claimed (several replays at once): in no session's report,
    // counted by the inbound server.
    // (Not after --learn-noise's two replays: the outcomes are one's.)
    let unattributed_served = args
        .learn_noise
        .is_none()
        .then(|| connect(inbound, plan.token.as_deref(), Duration::from_secs(2)).ok())
        .flatten()
        .map(|status| {
            status
                .unattributed_calls_served
                .saturating_sub(unattributed_before) as usize
        });
    if let Some(mut service) = started_service.take() {
        // Errors may mean the service is dying: give its exit a moment to show.
        let errored = replayed
            .outcomes
            .iter()
            .flatten()
            .any(|outcome| outcome.verdict == outcome::Verdict::Error);
        let grace = if errored {
            Duration::from_secs(1)
        } else {
            Duration::ZERO
        };
        let exited = match &replayed.stopped {
            Some(Stopped::ServiceExited(message)) => Some(message.clone()),
            _ => service
                .exited_within(grace)
                .map(|status| service.describe_exit(status)),
        };
        if let Some(message) = exited {
            term.message(&format!("koala: during the replay, {message}"));
        }
        service.stop();
    }

    for note in consumer.iter().flat_map(|c| c.notes()) {
        term.message(&format!("koala: {note}"));
    }
    let run = Run {
        loaded: &loaded,
        outcomes: &replayed.outcomes,
        inbound: inbound.to_string(),
        sut,
        concurrency,
        started,
        elapsed: replayed.elapsed,
        interrupted: replayed.stopped == Some(Stopped::Interrupted),
    };
    let mut summary = run.summary();
    if let Some(served) = unattributed_served {
        summary.unattributed_no_session = served.saturating_sub(summary.calls.unattributed);
        summary.calls.unattributed += summary.unattributed_no_session;
    }
    let mut out = io::stdout().lock();
    let printed = report::print_details(
        &mut out,
        &run,
        args.diff_lines,
        args.max_shown,
        args.report.is_some(),
    )
    .and_then(|()| report::print_summary(&mut out, &run, &summary))
    .and_then(|()| out.flush());
    drop(out);
    if let Err(e) = printed
        && e.kind() != io::ErrorKind::BrokenPipe
    {
        eprintln!("koala: cannot print the results: {e}");
    }
    let mut code = if run.interrupted {
        EXIT_INTERRUPTED
    } else if summary.failed == 0 && summary.errors == 0 {
        0
    } else {
        EXIT_FAILED
    };
    let written = [
        args.report
            .as_deref()
            .map(|path| (path, report::write_json(path, &run, &summary))),
        args.junit
            .as_deref()
            .map(|path| (path, report::write_junit(path, &run, &summary))),
    ];
    for (path, result) in written.into_iter().flatten() {
        match result {
            Ok(()) => eprintln!("koala: wrote {}", path.display()),
            Err(message) => {
                eprintln!("koala: {message}");
                code = EXIT_SETUP;
            }
        }
    }
    Ok(ExitCode::from(code))
}

/// The rules of `--ignore` and of every `--noise` file, in that order.
fn noise_rules(args: &ReplayArgs) -> Result<Vec<noise::Rule>, String> {
    let mut rules = args.ignore.clone();
    for path in &args.noise {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("--noise {}: {e}", path.display()))?;
        rules.extend(
            noise::parse_file(&text).map_err(|e| format!("--noise {}: {e}", path.display()))?,
        );
    }
    Ok(rules)
}

/// The `.koala-redact-key` beside the first of `paths` (a directory of
/// sessions, or a session file) that has one.
fn redaction_key_file(paths: &[PathBuf]) -> Option<PathBuf> {
    paths.iter().find_map(|path| {
        let dir = if path.is_dir() {
            path.as_path()
        } else {
            path.parent()?
        };
        let key = koala_redact::key::key_path(dir);
        key.is_file().then_some(key)
    })
}

/// `--inbound` without CMD: `$KOALA_INBOUND_ADDR` read as the library reads
/// it, else the library's default. A bad value stops koala rather than
/// silently meaning the default.
fn default_inbound() -> Result<SocketAddr, String> {
    let (config, errors) = koala_config::Config::from_env();
    match errors.iter().find(|e| e.variable == "KOALA_INBOUND_ADDR") {
        Some(error) => Err(format!(
            "KOALA_INBOUND_ADDR={:?} is not ip:port (or pass --inbound ADDR)",
            error.value
        )),
        None => Ok(config.inbound_addr),
    }
}

/// The variable that carries the replay API's token, to the service and to koala.
const TOKEN_VARIABLE: &str = "KOALA_REPLAY_TOKEN";
/// The library's default KOALA_REPLAY_MAX_CONNECTIONS.
const DEFAULT_MAX_CONNECTIONS: usize = 64;

/// A fresh token: 128 bits from /dev/urandom, in hex.
fn new_token() -> Result<String, String> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    fs::File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut bytes))
        .map_err(|e| format!("cannot read /dev/urandom for the replay API's token: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Says loudly that an inbound server on a non-loopback address can be
/// reached from other machines.
fn warn_if_exposed(inbound: SocketAddr, term: &Term) {
    if !inbound.ip().is_loopback() {
        term.message(&format!(
            "koala: WARNING: the inbound server {inbound} is not on a loopback address: other machines can reach the replay API (it requires the run's token, sent in clear over HTTP)"
        ));
    }
}

/// `GET /v1/status`: the inbound server is there and answers.
fn connect(
    inbound: SocketAddr,
    token: Option<&str>,
    timeout: Duration,
) -> Result<koala_session::replay::Status, String> {
    let hint = "is the service running with KOALA_MODE=replay? (or give its command after --)";
    let response = Client::new(inbound, timeout.min(Duration::from_secs(10)), token)
        .get("/v1/status")
        .map_err(|e| format!("cannot reach the inbound server: {e}; {hint}"))?;
    if response.status == 401 {
        return Err(format!(
            "GET http://{inbound}/v1/status answered 401: {}; give koala the service's KOALA_REPLAY_TOKEN (in the KOALA_REPLAY_TOKEN variable, or --token)",
            String::from_utf8_lossy(&response.body).trim()
        ));
    }
    if response.status != 200 {
        return Err(format!(
            "GET http://{inbound}/v1/status answered {}: {}; {hint}",
            response.status,
            String::from_utf8_lossy(&response.body).trim()
        ));
    }
    serde_json::from_slice(&response.body).map_err(|e| {
        format!("GET http://{inbound}/v1/status: not a koala status ({e}); is {inbound} the inbound server?")
    })
}

/// The lines the outbound server answers from outside a session's own
/// calls: the background records, and each session's connection set-up
/// (the calls that open a connection: greetings, handshakes,
/// authentication, session settings), so that a connection opened during
/// one session's replay is set up from whichever session opened it when
/// recorded. Sessions are cut down to those calls.
fn pool_lines(loaded: &Loaded) -> Result<Vec<Vec<u8>>, String> {
    let mut lines = Vec::new();
    for item in &loaded.items {
        let read = || {
            loaded
                .read_line(item)
                .map_err(|e| format!("cannot read {}: {e}", loaded.location(item)))
        };
        match item.kind {
            ItemKind::Background => lines.push(read()?),
            ItemKind::Session { .. } => {
                let line = read()?;
                let Ok(mut session) = koala_session::read_session_line(
                    std::str::from_utf8(&line).unwrap_or_default(),
                ) else {
                    continue;
                };
                let setup = koala_replayer::units::setup_calls(&session.calls);
                if !setup.is_empty() {
                    session.calls = setup;
                    lines.push(session.to_json_line().into_bytes());
                }
            }
            ItemKind::Bad(_) => {}
        }
    }
    Ok(lines)
}

/// Without CMD: the background records and the sessions' connection
/// set-up ([`pool_lines`]) go to `POST /v1/background`, in batches. A
/// failure is a warning: start-up is over, and sessions may not need them.
fn post_background(
    loaded: &Loaded,
    inbound: SocketAddr,
    token: Option<&str>,
    timeout: Duration,
    term: &Term,
) {
    let lines = match pool_lines(loaded) {
        Ok(lines) => lines,
        Err(message) => {
            term.message(&format!(
                "koala: warning: {message} (start-up traffic may go unanswered)"
            ));
            return;
        }
    };
    if lines.is_empty() {
        return;
    }
    let mut client = Client::new(inbound, timeout, token);
    let mut total = 0;
    let mut batch = Vec::new();
    let mut send = |batch: &mut Vec<u8>| -> Result<(), String> {
        let response = client.post("/v1/background", batch)?;
        batch.clear();
        if response.status != 200 {
            return Err(format!(
                "answered {}: {}",
                response.status,
                String::from_utf8_lossy(&response.body).trim()
            ));
        }
        let answer: koala_session::replay::BackgroundLoaded =
            serde_json::from_slice(&response.body).map_err(|e| format!("invalid answer: {e}"))?;
        total += answer.loaded;
        Ok(())
    };
    let mut result = Ok(());
    for line in &lines {
        batch.extend_from_slice(line);
        batch.push(b'\n');
        if batch.len() >= BACKGROUND_BATCH_BYTES {
            result = send(&mut batch);
            if result.is_err() {
                break;
            }
        }
    }
    if result.is_ok() && !batch.is_empty() {
        result = send(&mut batch);
    }
    match result {
        Ok(()) => term.message(&format!(
            "koala: loaded {total} background record(s) and the sessions' connection set-up into the outbound server"
        )),
        Err(message) => term.message(&format!(
            "koala: warning: POST /v1/background: {message} (start-up traffic may go unanswered)"
        )),
    }
}

/// The `--sut` default: the recorded inbound address when all sessions
/// agree. An unspecified or foreign IP (recorded elsewhere) becomes the
/// loopback address with the same port; the note says so.
fn default_sut(locals: &BTreeSet<&str>) -> Result<(SocketAddr, Option<String>), String> {
    let local = match locals.len() {
        1 => *locals.iter().next().expect("one address"),
        0 => return Err("the sessions name no recorded inbound address: pass --sut ADDR".into()),
        n => {
            let shown: Vec<&str> = locals.iter().take(5).copied().collect();
            return Err(format!(
                "the sessions were recorded on {n} different addresses ({}{}): pass --sut ADDR, where the service will listen",
                shown.join(", "),
                if n > 5 { ", …" } else { "" }
            ));
        }
    };
    let recorded: SocketAddr = local.parse().map_err(|_| {
        format!("the recorded inbound address {local:?} is not ip:port: pass --sut ADDR")
    })?;
    let loopback = |ip: IpAddr| -> IpAddr {
        if ip.is_ipv4() {
            Ipv4Addr::LOCALHOST.into()
        } else {
            Ipv6Addr::LOCALHOST.into()
        }
    };
    let ip = recorded.ip();
    if ip.is_unspecified() {
        return Ok((SocketAddr::new(loopback(ip), recorded.port()), None));
    }
    // An address of this machine can be bound; one of another cannot.
    if ip.is_loopback() || TcpListener::bind((ip, 0)).is_ok() {
        return Ok((recorded, None));
    }
    let sut = SocketAddr::new(loopback(ip), recorded.port());
    Ok((
        sut,
        Some(format!(
            "the sessions were recorded on {recorded}, not an address of this machine: using --sut {sut}"
        )),
    ))
}

/// A free loopback port not among `taken`.
fn free_port_except(taken: &[SocketAddr]) -> Result<SocketAddr, String> {
    for _ in 0..16 {
        let addr = service::free_port()?;
        if !taken.iter().any(|t| t.port() == addr.port()) {
            return Ok(addr);
        }
    }
    Err("cannot find a free loopback port".into())
}

/// The background records in a private temporary .jsonl file, removed when
/// dropped.
struct BackgroundFile {
    dir: PathBuf,
}

impl BackgroundFile {
    fn write(lines: &[Vec<u8>]) -> Result<BackgroundFile, String> {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!("koala-replay-{}-{nanos}", std::process::id()));
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let file = BackgroundFile { dir };
        let path = file.path();
        let mut out = io::BufWriter::new(
            fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| format!("cannot create {}: {e}", path.display()))?,
        );
        for line in lines {
            out.write_all(line)
                .and_then(|()| out.write_all(b"\n"))
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        }
        out.flush()
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(file)
    }

    fn path(&self) -> PathBuf {
        self.dir.join("background.jsonl")
    }
}

impl Drop for BackgroundFile {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Sessions holding TLS the library could not see into (`"tls":
/// "ciphertext"`) cannot be replayed: their recorded bytes are ciphertext,
/// with the handshake's random values, which nothing the service sends
/// again can match. Their outcome is an error that says so, not a
/// confusing mismatch; the run says how many there were (docs/tls.md).
fn encrypted_not_replayable(
    loaded: &Loaded,
    outcomes: &mut [Option<outcome::Outcome>],
    term: &Term,
) {
    let mut count = 0;
    for (index, item) in loaded.sessions() {
        let Ok(line) = loaded.read_line(item) else {
            continue;
        };
        let Ok(session) = load::parse_line(&line) else {
            continue;
        };
        let inbound = std::iter::once(("the inbound request".to_string(), &session.inbound));
        let calls = (session.calls.iter().enumerate())
            .map(|(i, call)| (format!("call {} to {}", i + 1, call.peer), call));
        let encrypted: Vec<String> = inbound
            .chain(calls)
            .filter(|(_, exchange)| exchange.tls == koala_session::Tls::Ciphertext)
            .map(|(what, _)| what)
            .collect();
        if encrypted.is_empty() {
            continue;
        }
        count += 1;
        if let Some(slot) = outcomes.get_mut(index)
            && slot.is_some()
        {
            *slot = Some(outcome::Outcome::error(
                format!(
                    "not replayable: its traffic was encrypted where koala cannot see the \
                     plaintext ({}: TLS of Java, Go, a statically linked TLS library, or \
                     OpenSSL on memory BIOs); the recording holds ciphertext, which replay \
                     cannot match (see docs/tls.md)",
                    encrypted.join(", ")
                ),
                None,
                None,
            ));
        }
    }
    if count > 0 {
        term.message(&format!(
            "koala: {count} session(s) hold encrypted traffic and cannot be replayed (their errors say why)"
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_128_random_bits_in_hex() {
        let (a, b) = (new_token().unwrap(), new_token().unwrap());
        for token in [&a, &b] {
            assert_eq!(token.len(), 32, "{token}");
            assert!(
                token
                    .bytes()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()),
                "{token}"
            );
        }
        assert_ne!(a, b, "a fresh token per run");
    }

    fn sut(locals: &[&str]) -> Result<(SocketAddr, Option<String>), String> {
        default_sut(&locals.iter().copied().collect())
    }

    #[test]
    fn the_default_sut_is_the_recorded_address() {
        assert_eq!(
            sut(&["127.0.0.1:8080"]).unwrap(),
            ("127.0.0.1:8080".parse().unwrap(), None)
        );
        assert_eq!(
            sut(&["[::1]:8080"]).unwrap().0,
            "[::1]:8080".parse().unwrap()
        );
        assert_eq!(
            sut(&["0.0.0.0:8080"]).unwrap().0,
            "127.0.0.1:8080".parse().unwrap()
        );
        // Recorded on another machine (TEST-NET-1 is nobody's address).
        let (addr, note) = sut(&["192.0.2.1:8080"]).unwrap();
        assert_eq!(addr, "127.0.0.1:8080".parse().unwrap());
        assert!(note.unwrap().contains("not an address of this machine"));
    }

    #[test]
    fn disagreeing_or_missing_addresses_need_sut() {
        let error = sut(&["127.0.0.1:8080", "127.0.0.1:8081"]).unwrap_err();
        assert!(
            error.contains("2 different addresses (127.0.0.1:8080, 127.0.0.1:8081)")
                && error.contains("--sut"),
            "{error}"
        );
        assert!(sut(&[]).unwrap_err().contains("--sut"));
        assert!(sut(&["localhost:80"]).unwrap_err().contains("not ip:port"));
    }

    #[test]
    fn seconds_are_positive_numbers() {
        assert_eq!(parse_seconds("0.5").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_seconds("30").unwrap(), Duration::from_secs(30));
        for bad in ["0", "-1", "nan", "inf", "soon", "1e9"] {
            assert!(parse_seconds(bad).is_err(), "{bad}");
        }
    }
}
