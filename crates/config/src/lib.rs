//! koala's configuration, read once from `KOALA_*` environment variables.
//!
//! Parsing never fails as a whole: a bad value is reported as a
//! [`ConfigError`] naming the variable, and its default is used instead, so a
//! typo never stops the host. `docs/environment.md` lists every variable.

use std::ffi::OsStr;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What the library does in this process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mode {
    pub record: bool,
    pub replay: bool,
}

impl Mode {
    pub fn is_active(self) -> bool {
        self.record || self.replay
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.record, self.replay) {
            (false, false) => f.write_str("passive"),
            (true, false) => f.write_str("record"),
            (false, true) => f.write_str("replay"),
            (true, true) => f.write_str("record,replay"),
        }
    }
}

/// Where log lines go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogTarget {
    Off,
    Stdout,
    Stderr,
    /// A file rotated every hour (`<path>.YYYY-MM-DD-HH`).
    File(PathBuf),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    /// `ERROR` and `FATAL`: only errors.
    Error,
}

/// What the outbound server does with a request that matches no recorded
/// call (`KOALA_REPLAY_ON_MISS`). The call is reported unmatched, and its
/// session fails, whatever the policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnMiss {
    /// Answer with the closest recorded call of the same operation, when
    /// there is one; otherwise as `Error`.
    Closest,
    /// Close the connection (the original koala's behaviour).
    Close,
    /// Answer an error in the protocol's own shape (RESP `-ERR`, HTTP 502,
    /// a PostgreSQL ErrorResponse, a MySQL ERR packet) and keep the
    /// connection open; close where the protocol has no error reply. The
    /// default: the service stays up and sees an explicit failure, and is
    /// never fed data recorded for another request.
    #[default]
    Error,
}

impl OnMiss {
    pub fn as_str(self) -> &'static str {
        match self {
            OnMiss::Closest => "closest",
            OnMiss::Close => "close",
            OnMiss::Error => "error",
        }
    }
}

impl std::str::FromStr for OnMiss {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.to_ascii_lowercase().as_str() {
            "closest" => Ok(OnMiss::Closest),
            "close" => Ok(OnMiss::Close),
            "error" => Ok(OnMiss::Error),
            _ => Err("expected closest, close or error".into()),
        }
    }
}

/// Which forked children log a recording summary line at exit or exec
/// (`KOALA_CHILD_SUMMARY`). A process that was not forked (the one started,
/// or an exec'd program) always logs its own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ChildSummary {
    /// Only a child that recorded something of its own: a prefork worker
    /// does, a child that runs a helper and `_exit`s does not.
    #[default]
    Recorded,
    /// Every child of a process that was recording (one line per child).
    Always,
    /// No child, unless it lost sessions: a loss is never silent.
    Never,
}

impl std::str::FromStr for ChildSummary {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.to_ascii_lowercase().as_str() {
            "recorded" => Ok(ChildSummary::Recorded),
            "always" => Ok(ChildSummary::Always),
            "never" => Ok(ChildSummary::Never),
            _ => Err("expected recorded, always or never".into()),
        }
    }
}

/// What a replayed session's threads see of `CLOCK_REALTIME`
/// (`KOALA_REPLAY_TIME`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReplayTime {
    /// The real clock: nothing is hooked.
    Real,
    /// Shifted: the session starts at its recorded instant and time goes on
    /// at the real rate (timeouts and durations still tick). The default.
    #[default]
    Shifted,
    /// Frozen at the recorded instant for the whole session.
    Frozen,
}

impl ReplayTime {
    pub fn as_str(self) -> &'static str {
        match self {
            ReplayTime::Real => "real",
            ReplayTime::Shifted => "shifted",
            ReplayTime::Frozen => "frozen",
        }
    }
}

impl std::str::FromStr for ReplayTime {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.to_ascii_lowercase().as_str() {
            "real" => Ok(ReplayTime::Real),
            "shifted" => Ok(ReplayTime::Shifted),
            "frozen" => Ok(ReplayTime::Frozen),
            _ => Err("expected real, shifted or frozen".into()),
        }
    }
}

/// An outbound address the replayer must not redirect. `None` parts match anything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bypass {
    pub ip: Option<std::net::IpAddr>,
    pub port: Option<u16>,
}

impl Bypass {
    pub fn matches(&self, addr: &SocketAddr) -> bool {
        self.ip.is_none_or(|ip| ip == addr.ip()) && self.port.is_none_or(|p| p == addr.port())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub mode: Mode,
    /// `KOALA_MODE` was set at all (even to a bad value): logging defaults apply.
    pub mode_requested: bool,
    pub record_to: PathBuf,
    pub session_idle: Duration,
    pub log_target: LogTarget,
    pub log_level: LogLevel,
    pub queue_capacity: usize,
    pub queue_max_bytes: usize,
    pub max_payload_bytes: usize,
    pub max_calls_per_session: usize,
    /// Which forked children log their summary line.
    pub child_summary: ChildSummary,
    pub inbound_addr: SocketAddr,
    pub outbound_addr: SocketAddr,
    pub sut_addr: SocketAddr,
    pub outbound_bypass: Vec<Bypass>,
    pub replay_idle: Duration,
    pub replay_timeout: Duration,
    pub replay_background: Option<PathBuf>,
    pub on_miss: OnMiss,
    /// The token every replay API request must carry (`KOALA_REPLAY_TOKEN`).
    pub replay_token: Option<Secret>,
    /// Replay API connections open at once; more get 429.
    pub replay_max_connections: usize,
    /// The largest replay API request body; larger ones get 413.
    pub replay_max_body_bytes: usize,
    /// Bytes `POST /v1/background` may retain in all; beyond, 413.
    pub replay_max_background_bytes: usize,
    /// Record: what is redacted (`KOALA_REDACT`); `None`: nothing.
    pub redact: Option<koala_redact::Rules>,
    /// Replay: the recording's redaction key file (`KOALA_REDACT_KEY_FILE`),
    /// to redact what the service sends the way the recording was.
    pub redact_key_file: Option<PathBuf>,
    /// Replay: the clock a replayed session's threads see.
    pub replay_time: ReplayTime,
    /// Record: random bytes kept per session; beyond, cut and counted.
    pub max_random_bytes: usize,
}

/// A value never shown: `Debug` prints `<secret>`, so a logged `Config`
/// cannot leak it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<secret>")
    }
}

/// A variable whose value could not be used (its default applies), or
/// could be used only in part (`applied` says what was kept).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub variable: &'static str,
    pub value: String,
    pub reason: String,
    /// `None`: the whole value was ignored.
    pub applied: Option<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.applied {
            None => write!(
                f,
                "{}={:?} ignored: {}",
                self.variable, self.value, self.reason
            ),
            Some(applied) => write!(
                f,
                "{}={:?}: {}; using {applied}",
                self.variable, self.value, self.reason
            ),
        }
    }
}

/// Every variable koala reads, with its default, for docs and `koala env`.
pub const VARIABLES: &[(&str, &str, &str)] = &[
    (
        "KOALA_MODE",
        "(unset: passive)",
        "record, replay or record,replay; off: passive; unknown words are ignored",
    ),
    (
        "KOALA_RECORD_TO",
        "./koala-sessions",
        "directory for session files and the default log",
    ),
    (
        "KOALA_SESSION_IDLE_MS",
        "1000",
        "a session idle this long is closed and written",
    ),
    (
        "KOALA_LOG_FILE",
        "<KOALA_RECORD_TO>/koala.log when KOALA_MODE names a mode",
        "STDOUT, STDERR, OFF or a path (rotated hourly)",
    ),
    (
        "KOALA_LOG_LEVEL",
        "INFO",
        "TRACE, DEBUG, INFO, WARN, ERROR or FATAL",
    ),
    (
        "KOALA_QUEUE_CAPACITY",
        "4096",
        "finished sessions waiting for the writer; beyond it they are dropped and counted",
    ),
    (
        "KOALA_QUEUE_MAX_BYTES",
        "268435456",
        "payload bytes waiting for the writer; beyond it sessions are dropped and counted",
    ),
    (
        "KOALA_MAX_PAYLOAD_BYTES",
        "16777216",
        "a request or response is cut (truncated: true) beyond this",
    ),
    (
        "KOALA_MAX_CALLS_PER_SESSION",
        "10000",
        "further calls of a session are dropped and counted",
    ),
    (
        "KOALA_CHILD_SUMMARY",
        "recorded",
        "which forked children log a summary line: recorded, always or never",
    ),
    (
        "KOALA_INBOUND_ADDR",
        "127.0.0.1:2514",
        "replay: where the inbound server listens",
    ),
    (
        "KOALA_OUTBOUND_ADDR",
        "127.0.0.1:2516",
        "replay: where the outbound server listens",
    ),
    (
        "KOALA_SUT_ADDR",
        "127.0.0.1:2515",
        "replay: where the service under test listens",
    ),
    (
        "KOALA_OUTBOUND_BYPASS",
        "(empty)",
        "replay: comma-separated ip:port, ip or :port never redirected",
    ),
    (
        "KOALA_REPLAY_IDLE_MS",
        "100",
        "replay: silence that ends a non-HTTP response",
    ),
    (
        "KOALA_REPLAY_TIMEOUT_MS",
        "10000",
        "replay: longest wait for the service's response",
    ),
    (
        "KOALA_REPLAY_BACKGROUND",
        "(unset)",
        "replay: a session file or a directory of them whose background records answer start-up traffic",
    ),
    (
        "KOALA_REPLAY_ON_MISS",
        "error",
        "replay: closest, close or error, for a request no recorded call matches",
    ),
    (
        "KOALA_REPLAY_TOKEN",
        "(unset: every API request is refused)",
        "replay: the token each replay API request must carry (Authorization: Bearer)",
    ),
    (
        "KOALA_REPLAY_MAX_CONNECTIONS",
        "64",
        "replay: API connections open at once; more are answered 429",
    ),
    (
        "KOALA_REPLAY_MAX_BODY_BYTES",
        "268435456",
        "replay: the largest API request body; larger ones are answered 413",
    ),
    (
        "KOALA_REPLAY_MAX_BACKGROUND_BYTES",
        "268435456",
        "replay: bytes POST /v1/background may retain in all; beyond, 413",
    ),
    (
        "KOALA_REDACT",
        "default",
        "record: off, or default rules plus a comma list of header:<name> and json:<field>",
    ),
    (
        "KOALA_REDACT_KEY_FILE",
        "(unset: requests are matched unredacted)",
        "replay: the recording's redaction key file; koala replay sets it to <sessions>/.koala-redact-key",
    ),
    (
        "KOALA_REPLAY_TIME",
        "shifted",
        "replay: the clock of a replayed session's threads: shifted (its recorded start, ticking), frozen or real",
    ),
    (
        "KOALA_MAX_RANDOM_BYTES",
        "65536",
        "record: random bytes kept per session (getrandom, getentropy, /dev/urandom); beyond, cut and counted",
    ),
];

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> (Config, Vec<ConfigError>) {
        Config::from_lookup(|name| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned()))
    }

    /// Reads variables through `lookup`, so tests need not touch the environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> (Config, Vec<ConfigError>) {
        let mut parser = Parser {
            lookup: &lookup,
            errors: Vec::new(),
        };
        let mode_value = lookup("KOALA_MODE").filter(|v| !v.trim().is_empty());
        let mode_requested = mode_value.is_some();
        let mode = match mode_value {
            Some(value) => parser.mode(value),
            None => Mode::default(),
        };
        let record_to = lookup("KOALA_RECORD_TO")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("./koala-sessions"));
        // An inactive library creates nothing: its log is only where
        // KOALA_LOG_FILE puts it.
        let default_log = if mode.is_active() {
            LogTarget::File(record_to.join("koala.log"))
        } else {
            LogTarget::Off
        };
        let config = Config {
            mode,
            mode_requested,
            session_idle: parser.parse(
                "KOALA_SESSION_IDLE_MS",
                Duration::from_millis(1000),
                parse_millis,
            ),
            log_target: parser.parse("KOALA_LOG_FILE", default_log, parse_log_target),
            log_level: parser.parse("KOALA_LOG_LEVEL", LogLevel::Info, parse_log_level),
            queue_capacity: parser.parse("KOALA_QUEUE_CAPACITY", 4096, parse_positive),
            queue_max_bytes: parser.parse("KOALA_QUEUE_MAX_BYTES", 256 << 20, parse_positive),
            max_payload_bytes: parser.parse("KOALA_MAX_PAYLOAD_BYTES", 16 << 20, parse_positive),
            max_calls_per_session: parser.parse(
                "KOALA_MAX_CALLS_PER_SESSION",
                10_000,
                parse_positive,
            ),
            child_summary: parser.parse("KOALA_CHILD_SUMMARY", ChildSummary::default(), str::parse),
            inbound_addr: parser.parse("KOALA_INBOUND_ADDR", addr("127.0.0.1:2514"), parse_addr),
            outbound_addr: parser.parse("KOALA_OUTBOUND_ADDR", addr("127.0.0.1:2516"), parse_addr),
            sut_addr: parser.parse("KOALA_SUT_ADDR", addr("127.0.0.1:2515"), parse_addr),
            outbound_bypass: parser.parse("KOALA_OUTBOUND_BYPASS", Vec::new(), parse_bypass_list),
            replay_idle: parser.parse(
                "KOALA_REPLAY_IDLE_MS",
                Duration::from_millis(100),
                parse_millis,
            ),
            replay_timeout: parser.parse(
                "KOALA_REPLAY_TIMEOUT_MS",
                Duration::from_millis(10_000),
                parse_millis,
            ),
            replay_background: lookup("KOALA_REPLAY_BACKGROUND")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            on_miss: parser.parse("KOALA_REPLAY_ON_MISS", OnMiss::default(), str::parse),
            replay_token: lookup("KOALA_REPLAY_TOKEN")
                .filter(|v| !v.is_empty())
                .map(Secret),
            replay_max_connections: parser.parse(
                "KOALA_REPLAY_MAX_CONNECTIONS",
                64,
                parse_positive,
            ),
            replay_max_body_bytes: parser.parse(
                "KOALA_REPLAY_MAX_BODY_BYTES",
                256 << 20,
                parse_positive,
            ),
            replay_max_background_bytes: parser.parse(
                "KOALA_REPLAY_MAX_BACKGROUND_BYTES",
                256 << 20,
                parse_positive,
            ),
            redact: parser.parse(
                "KOALA_REDACT",
                Some(koala_redact::Rules::default()),
                koala_redact::Rules::parse,
            ),
            redact_key_file: lookup("KOALA_REDACT_KEY_FILE")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            replay_time: parser.parse("KOALA_REPLAY_TIME", ReplayTime::default(), str::parse),
            max_random_bytes: parser.parse("KOALA_MAX_RANDOM_BYTES", 65536, parse_positive),
            record_to,
        };
        (config, parser.errors)
    }
}

/// Where the library logs when its log file cannot be opened (an unusable
/// record directory holding the default log): `<TMPDIR>/koala-<uid>/koala.log`,
/// `/tmp` when `TMPDIR` is unset or relative. Per user, so a worker that
/// runs as another user gets a directory of its own. `koala record` reads
/// it too, to say why nothing was recorded.
pub fn fallback_log_path(tmpdir: Option<&OsStr>, uid: u32) -> PathBuf {
    let tmp = tmpdir
        .map(Path::new)
        .filter(|dir| dir.is_absolute())
        .unwrap_or(Path::new("/tmp"));
    tmp.join(format!("koala-{uid}")).join("koala.log")
}

fn addr(text: &str) -> SocketAddr {
    text.parse().expect("built-in default address")
}

struct Parser<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
    errors: Vec<ConfigError>,
}

impl Parser<'_> {
    /// An unset or empty variable takes its default silently.
    fn parse<T>(
        &mut self,
        variable: &'static str,
        default: T,
        parse: fn(&str) -> Result<T, String>,
    ) -> T {
        let Some(value) = (self.lookup)(variable).filter(|v| !v.trim().is_empty()) else {
            return default;
        };
        match parse(value.trim()) {
            Ok(parsed) => parsed,
            Err(reason) => {
                self.errors.push(ConfigError {
                    variable,
                    value,
                    reason,
                    applied: None,
                });
                default
            }
        }
    }

    /// `KOALA_MODE`: an unknown word is reported and the known ones kept,
    /// so `replay,typo` still replays; with no known word the library is
    /// off. (Falling back to passive for the whole value would silently
    /// stop a recording over a typo.)
    fn mode(&mut self, value: String) -> Mode {
        let (mode, unknown) = parse_mode(&value);
        if !unknown.is_empty() {
            let words = unknown.join(", ");
            let reason =
                format!("unknown mode {words}; expected record, replay, record,replay or off");
            let (reason, applied) = if mode.is_active() {
                (
                    format!("{reason} ({words} ignored)"),
                    Some(mode.to_string()),
                )
            } else {
                (format!("{reason}; the library stays off"), None)
            };
            self.errors.push(ConfigError {
                variable: "KOALA_MODE",
                value,
                reason,
                applied,
            });
        }
        mode
    }
}

/// The modes named in `text`, and the words that name none (quoted).
/// `off` and `passive` are known words that add no mode.
fn parse_mode(text: &str) -> (Mode, Vec<String>) {
    let mut mode = Mode::default();
    let mut unknown = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.to_ascii_lowercase().as_str() {
            "record" => mode.record = true,
            "replay" => mode.replay = true,
            "off" | "passive" => {}
            _ => unknown.push(format!("{part:?}")),
        }
    }
    (mode, unknown)
}

fn parse_millis(text: &str) -> Result<Duration, String> {
    parse_positive(text).map(|ms| Duration::from_millis(ms as u64))
}

fn parse_positive(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be greater than 0".into()),
        Ok(n) => Ok(n),
        Err(_) => Err("expected a positive whole number".into()),
    }
}

fn parse_log_target(text: &str) -> Result<LogTarget, String> {
    Ok(match text.to_ascii_uppercase().as_str() {
        "STDOUT" => LogTarget::Stdout,
        "STDERR" => LogTarget::Stderr,
        "OFF" | "NONE" => LogTarget::Off,
        _ => LogTarget::File(PathBuf::from(text)),
    })
}

fn parse_log_level(text: &str) -> Result<LogLevel, String> {
    Ok(match text.to_ascii_uppercase().as_str() {
        "TRACE" => LogLevel::Trace,
        "DEBUG" => LogLevel::Debug,
        "INFO" => LogLevel::Info,
        "WARN" | "WARNING" => LogLevel::Warn,
        "ERROR" | "FATAL" => LogLevel::Error,
        _ => return Err("expected TRACE, DEBUG, INFO, WARN, ERROR or FATAL".into()),
    })
}

fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    text.parse()
        .map_err(|_| "expected ip:port, e.g. 127.0.0.1:2514 or [::1]:2514".to_string())
}

/// `127.0.0.1:9000,:53,10.0.0.5` — ip:port, :port or a bare ip.
fn parse_bypass_list(text: &str) -> Result<Vec<Bypass>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(parse_bypass)
        .collect()
}

fn parse_bypass(text: &str) -> Result<Bypass, String> {
    if let Some(port) = text.strip_prefix(':') {
        let port = port.parse().map_err(|_| format!("bad port in {text:?}"))?;
        return Ok(Bypass {
            ip: None,
            port: Some(port),
        });
    }
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(Bypass {
            ip: Some(addr.ip()),
            port: Some(addr.port()),
        });
    }
    let ip = text.trim_start_matches('[').trim_end_matches(']');
    ip.parse()
        .map(|ip| Bypass {
            ip: Some(ip),
            port: None,
        })
        .map_err(|_| format!("{text:?} is not ip:port, :port or ip"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(vars: &[(&str, &str)]) -> (Config, Vec<ConfigError>) {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|name| map.get(name).cloned())
    }

    #[test]
    fn defaults_are_passive_and_silent() {
        let (config, errors) = parse(&[]);
        assert!(errors.is_empty());
        assert!(!config.mode.is_active());
        assert_eq!(config.log_target, LogTarget::Off);
        assert_eq!(config.session_idle, Duration::from_millis(1000));
        assert_eq!(config.record_to, PathBuf::from("./koala-sessions"));
        assert_eq!(config.inbound_addr, addr("127.0.0.1:2514"));
        assert_eq!(config.outbound_addr, addr("127.0.0.1:2516"));
        assert_eq!(config.sut_addr, addr("127.0.0.1:2515"));
    }

    #[test]
    fn child_summary_defaults_to_children_that_recorded() {
        assert_eq!(parse(&[]).0.child_summary, ChildSummary::Recorded);
        for (value, expected) in [
            ("always", ChildSummary::Always),
            ("NEVER", ChildSummary::Never),
            (" recorded ", ChildSummary::Recorded),
        ] {
            let (config, errors) = parse(&[("KOALA_CHILD_SUMMARY", value)]);
            assert_eq!(config.child_summary, expected, "{value:?}");
            assert!(errors.is_empty(), "{errors:?}");
        }
        let (config, errors) = parse(&[("KOALA_CHILD_SUMMARY", "some")]);
        assert_eq!(config.child_summary, ChildSummary::Recorded);
        assert_eq!(
            errors.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
            ["KOALA_CHILD_SUMMARY=\"some\" ignored: expected recorded, always or never"]
        );
    }

    #[test]
    fn modes_combine() {
        assert_eq!(
            parse(&[("KOALA_MODE", "record")]).0.mode,
            Mode {
                record: true,
                replay: false
            }
        );
        assert_eq!(
            parse(&[("KOALA_MODE", "replay")]).0.mode,
            Mode {
                record: false,
                replay: true
            }
        );
        assert_eq!(
            parse(&[("KOALA_MODE", "record, REPLAY")]).0.mode,
            Mode {
                record: true,
                replay: true
            }
        );
    }

    #[test]
    fn a_requested_mode_logs_next_to_the_sessions_by_default() {
        let (config, _) = parse(&[("KOALA_MODE", "record"), ("KOALA_RECORD_TO", "/tmp/x")]);
        assert_eq!(
            config.log_target,
            LogTarget::File(PathBuf::from("/tmp/x/koala.log"))
        );
        let (config, _) = parse(&[("KOALA_MODE", "record"), ("KOALA_LOG_FILE", "stderr")]);
        assert_eq!(config.log_target, LogTarget::Stderr);
    }

    #[test]
    fn bad_values_are_reported_and_defaulted() {
        let (config, errors) = parse(&[
            ("KOALA_MODE", "recrod"),
            ("KOALA_SESSION_IDLE_MS", "0"),
            ("KOALA_LOG_LEVEL", "loud"),
            ("KOALA_INBOUND_ADDR", "localhost"),
        ]);
        assert!(!config.mode.is_active());
        assert!(config.mode_requested);
        assert_eq!(
            config.log_target,
            LogTarget::Off,
            "an inactive library creates no log unless KOALA_LOG_FILE says where"
        );
        assert_eq!(config.session_idle, Duration::from_millis(1000));
        let names: Vec<_> = errors.iter().map(|e| e.variable).collect();
        assert_eq!(
            names,
            [
                "KOALA_MODE",
                "KOALA_SESSION_IDLE_MS",
                "KOALA_LOG_LEVEL",
                "KOALA_INBOUND_ADDR"
            ]
        );
        assert_eq!(
            errors[0].to_string(),
            r#"KOALA_MODE="recrod" ignored: unknown mode "recrod"; expected record, replay, record,replay or off; the library stays off"#
        );
    }

    #[test]
    fn an_unknown_mode_word_keeps_the_known_modes() {
        let (config, errors) = parse(&[("KOALA_MODE", "replay,typo")]);
        assert_eq!(
            config.mode,
            Mode {
                record: false,
                replay: true
            }
        );
        assert_eq!(
            config.log_target,
            LogTarget::File(PathBuf::from("./koala-sessions/koala.log"))
        );
        assert_eq!(errors.len(), 1);
        assert_eq!(
            errors[0].to_string(),
            r#"KOALA_MODE="replay,typo": unknown mode "typo"; expected record, replay, record,replay or off ("typo" ignored); using replay"#
        );
        let (config, errors) = parse(&[("KOALA_MODE", "Record, x ,off,y,")]);
        assert_eq!(config.mode.to_string(), "record");
        assert_eq!(
            errors[0].to_string(),
            r#"KOALA_MODE="Record, x ,off,y,": unknown mode "x", "y"; expected record, replay, record,replay or off ("x", "y" ignored); using record"#
        );
    }

    #[test]
    fn an_inactive_mode_logs_only_where_configured() {
        for value in ["off", "passive", "OFF, passive", "typo"] {
            let (config, errors) = parse(&[("KOALA_MODE", value)]);
            assert!(!config.mode.is_active(), "{value}");
            assert!(config.mode_requested, "{value}");
            assert_eq!(config.log_target, LogTarget::Off, "{value}");
            assert_eq!(errors.len(), usize::from(value == "typo"), "{value}");
            let (config, _) = parse(&[("KOALA_MODE", value), ("KOALA_LOG_FILE", "/x/k.log")]);
            assert_eq!(
                config.log_target,
                LogTarget::File(PathBuf::from("/x/k.log")),
                "{value}"
            );
        }
    }

    #[test]
    fn the_fallback_log_is_per_user_under_an_absolute_tmpdir() {
        assert_eq!(
            fallback_log_path(None, 1000),
            PathBuf::from("/tmp/koala-1000/koala.log")
        );
        assert_eq!(
            fallback_log_path(Some(OsStr::new("/var/tmp/x")), 0),
            PathBuf::from("/var/tmp/x/koala-0/koala.log")
        );
        // A relative TMPDIR would follow each process's cwd.
        assert_eq!(
            fallback_log_path(Some(OsStr::new("tmp")), 7),
            PathBuf::from("/tmp/koala-7/koala.log")
        );
    }

    #[test]
    fn bypass_forms() {
        let (config, errors) = parse(&[(
            "KOALA_OUTBOUND_BYPASS",
            "127.0.0.1:9000, :53,10.1.2.3,[::1]:80",
        )]);
        assert!(errors.is_empty(), "{errors:?}");
        let list = &config.outbound_bypass;
        assert!(list[0].matches(&addr("127.0.0.1:9000")));
        assert!(!list[0].matches(&addr("127.0.0.1:9001")));
        assert!(list[1].matches(&addr("8.8.8.8:53")));
        assert!(list[2].matches(&addr("10.1.2.3:1")));
        assert!(list[3].matches(&addr("[::1]:80")));
        let (_, errors) = parse(&[("KOALA_OUTBOUND_BYPASS", "nope")]);
        assert_eq!(errors.len(), 1);
    }

    /// `VARIABLES` (what `koala env` and the docs show) states the defaults
    /// the code applies: setting a variable to its listed default changes
    /// nothing. Defaults that are a description, not a value, are checked
    /// by hand.
    #[test]
    fn listed_defaults_are_the_defaults() {
        let (defaults, _) = parse(&[]);
        for (name, default, _) in VARIABLES {
            if default.starts_with(['(', '<']) {
                continue;
            }
            let (config, errors) = parse(&[(name, default)]);
            assert!(errors.is_empty(), "{name}={default}: {errors:?}");
            assert_eq!(config, defaults, "{name}={default} is not the default");
        }
        assert_eq!(defaults.mode, Mode::default());
        assert!(defaults.outbound_bypass.is_empty());
        assert_eq!(defaults.replay_background, None);
        assert_eq!(defaults.replay_token, None);
        let (config, _) = parse(&[("KOALA_MODE", "record")]);
        assert_eq!(
            config.log_target,
            LogTarget::File(PathBuf::from("./koala-sessions/koala.log"))
        );
    }
}

#[cfg(test)]
mod replay_api_tests {
    use super::*;

    fn parse(vars: &[(&str, &str)]) -> (Config, Vec<ConfigError>) {
        Config::from_lookup(|name| {
            vars.iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| value.to_string())
        })
    }

    #[test]
    fn the_token_is_read_as_given_and_never_shown() {
        let (config, errors) = parse(&[("KOALA_REPLAY_TOKEN", " s3cr3t ")]);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(config.replay_token, Some(Secret(" s3cr3t ".into())));
        assert!(!format!("{config:?}").contains("s3cr3t"), "Debug shows it");
        let (config, _) = parse(&[("KOALA_REPLAY_TOKEN", "")]);
        assert_eq!(config.replay_token, None, "empty means none");
    }

    #[test]
    fn redaction_is_on_by_default_and_configurable() {
        let (config, errors) = parse(&[]);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(config.redact, Some(koala_redact::Rules::default()));
        assert_eq!(config.redact_key_file, None);
        let (config, _) = parse(&[("KOALA_REDACT", "off")]);
        assert_eq!(config.redact, None);
        let (config, errors) = parse(&[
            ("KOALA_REDACT", "header:X-Token,json:pin"),
            ("KOALA_REDACT_KEY_FILE", "/r/.koala-redact-key"),
        ]);
        assert!(errors.is_empty(), "{errors:?}");
        let rules = config.redact.unwrap();
        assert!(rules.headers.contains(&"x-token".to_string()));
        assert!(rules.json_fields.contains(&"pin".to_string()));
        assert_eq!(
            config.redact_key_file,
            Some(PathBuf::from("/r/.koala-redact-key"))
        );
        let (config, errors) = parse(&[("KOALA_REDACT", "json:pin,regex:key=(\\w+),")]);
        assert!(errors.is_empty(), "{errors:?}");
        let rules = config.redact.unwrap();
        assert_eq!(rules.patterns[0].as_str(), "key=(\\w+),");
        // A bad value keeps the default rules (never less redaction).
        let (config, errors) = parse(&[("KOALA_REDACT", "regex:(")]);
        assert_eq!(config.redact, Some(koala_redact::Rules::default()));
        assert_eq!(errors[0].variable, "KOALA_REDACT");
    }

    #[test]
    fn the_api_caps_are_positive_numbers() {
        let (config, errors) = parse(&[
            ("KOALA_REPLAY_MAX_CONNECTIONS", "5"),
            ("KOALA_REPLAY_MAX_BODY_BYTES", "1000"),
            ("KOALA_REPLAY_MAX_BACKGROUND_BYTES", "2000"),
        ]);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            (
                config.replay_max_connections,
                config.replay_max_body_bytes,
                config.replay_max_background_bytes
            ),
            (5, 1000, 2000)
        );
        let (config, errors) = parse(&[("KOALA_REPLAY_MAX_CONNECTIONS", "0")]);
        assert_eq!(
            config.replay_max_connections, 64,
            "a bad value keeps the default"
        );
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].variable, "KOALA_REPLAY_MAX_CONNECTIONS");
    }
}

#[cfg(test)]
mod docs_tests {
    use super::VARIABLES;
    use std::collections::{BTreeMap, BTreeSet};

    /// docs/environment.md documents exactly the variables the code reads,
    /// each with the default `VARIABLES` lists.
    #[test]
    fn the_environment_doc_lists_every_variable() {
        let doc = include_str!("../../../docs/environment.md");
        // `| `KOALA_X` | default | meaning |`, backticks dropped.
        let documented: BTreeMap<String, String> = doc
            .lines()
            .filter(|line| line.starts_with("| `KOALA_"))
            .map(|line| {
                let cells: Vec<String> = line
                    .split('|')
                    .map(|cell| cell.trim().replace('`', ""))
                    .collect();
                (cells[1].clone(), cells[2].clone())
            })
            .collect();
        let read: BTreeSet<&str> = VARIABLES.iter().map(|(name, _, _)| *name).collect();
        assert_eq!(
            documented
                .keys()
                .map(String::as_str)
                .collect::<BTreeSet<_>>(),
            read
        );
        for (name, default, _) in VARIABLES {
            let listed = default.trim_start_matches('(').trim_end_matches(')');
            assert!(
                documented[*name].starts_with(listed),
                "{name}: the doc says the default is {:?}, the code {listed:?}",
                documented[*name]
            );
        }
    }
}

#[cfg(test)]
mod determinism_tests {
    use super::*;

    fn parse(vars: &[(&str, &str)]) -> (Config, Vec<ConfigError>) {
        Config::from_lookup(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn replay_time_and_random_bounds() {
        let (config, errors) = parse(&[]);
        assert_eq!(config.replay_time, ReplayTime::Shifted);
        assert_eq!(config.max_random_bytes, 65536);
        assert!(errors.is_empty());
        for (value, expected) in [
            ("real", ReplayTime::Real),
            ("FROZEN", ReplayTime::Frozen),
            ("shifted", ReplayTime::Shifted),
        ] {
            assert_eq!(
                parse(&[("KOALA_REPLAY_TIME", value)]).0.replay_time,
                expected
            );
        }
        let (config, errors) = parse(&[
            ("KOALA_REPLAY_TIME", "later"),
            ("KOALA_MAX_RANDOM_BYTES", "0"),
        ]);
        assert_eq!(config.replay_time, ReplayTime::Shifted);
        assert_eq!(config.max_random_bytes, 65536);
        assert_eq!(
            errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
            [
                "KOALA_REPLAY_TIME=\"later\" ignored: expected real, shifted or frozen",
                "KOALA_MAX_RANDOM_BYTES=\"0\" ignored: must be greater than 0"
            ]
        );
    }
}
