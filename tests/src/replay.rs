//! Harness for the replay tests (`tests/tests/replay_*.rs`): running
//! `koala replay`, talking to the inbound server's API directly, recording
//! the Python services of the recording tests, and reading JSON answers
//! and reports.
//!
//! The tests crate has no JSON dependency of its own, so this module carries
//! a small JSON reader ([`Json`]) and a base64 decoder for payloads.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::ops::Index;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use crate::{
    IO_TIMEOUT, Program, START_TIMEOUT, Session, Spec, TestDir, assert_bytes, connect,
    describe_dir, free_port, http_exchange, is_listening, koala_lib, read_http_response, redis_set,
    session_files, show, start_redis, wait_for_sessions,
};

/// How long one `koala replay` run may take before the test gives up.
pub const KOALA_TIMEOUT: Duration = Duration::from_secs(60);

const POLL: Duration = Duration::from_millis(20);

// ---------------------------------------------------------------------------
// JSON

/// A parsed JSON value. Numbers keep their text (request times do not fit
/// an f64). Indexing a missing key or index gives `Json::Null`, as in
/// serde_json.
#[derive(Clone, Debug, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    Number(String),
    String(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

static NULL: Json = Json::Null;

impl Json {
    /// Parses one JSON text (surrounding whitespace allowed).
    pub fn parse(text: &str) -> Result<Json, String> {
        let mut parser = Parser {
            bytes: text.as_bytes(),
            at: 0,
        };
        let value = parser.value(0)?;
        parser.skip_space();
        if parser.at != parser.bytes.len() {
            return Err(parser.error("text after the JSON value"));
        }
        Ok(value)
    }

    /// Parses, panicking with the text when it is not JSON.
    #[track_caller]
    pub fn must_parse(text: &str, what: &str) -> Json {
        Json::parse(text).unwrap_or_else(|e| panic!("{what} is not JSON ({e}):\n{text}"))
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Json::Number(n) => n.parse().ok(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Json::Number(n) => n.parse().ok(),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Json::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Json]> {
        match self {
            Json::Array(items) => Some(items),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Json::Null)
    }

    /// Does this object have the key (even with a `null` value)?
    pub fn has(&self, key: &str) -> bool {
        matches!(self, Json::Object(fields) if fields.iter().any(|(k, _)| k == key))
    }

    /// This object without `key`.
    pub fn without(&self, key: &str) -> Json {
        match self {
            Json::Object(fields) => {
                Json::Object(fields.iter().filter(|(k, _)| k != key).cloned().collect())
            }
            other => other.clone(),
        }
    }

    /// This object with `key` set to `value` (replaced, or added last).
    pub fn with(&self, key: &str, value: Json) -> Json {
        let mut fields = match self {
            Json::Object(fields) => fields.clone(),
            _ => Vec::new(),
        };
        match fields.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value,
            None => fields.push((key.to_string(), value)),
        }
        Json::Object(fields)
    }

    /// The string at `key`, panicking with the value when it is not one.
    #[track_caller]
    pub fn str_at(&self, key: &str) -> &str {
        self[key]
            .as_str()
            .unwrap_or_else(|| panic!("{key:?} is not a string in {self}"))
    }

    /// The whole number at `key`, panicking when it is not one.
    #[track_caller]
    pub fn u64_at(&self, key: &str) -> u64 {
        self[key]
            .as_u64()
            .unwrap_or_else(|| panic!("{key:?} is not a whole number in {self}"))
    }

    /// The array at `key`, panicking when it is not one.
    #[track_caller]
    pub fn array_at(&self, key: &str) -> &[Json] {
        self[key]
            .as_array()
            .unwrap_or_else(|| panic!("{key:?} is not an array in {self}"))
    }
}

impl Index<&str> for Json {
    type Output = Json;
    fn index(&self, key: &str) -> &Json {
        match self {
            Json::Object(fields) => fields
                .iter()
                .find(|(k, _)| k == key)
                .map_or(&NULL, |(_, v)| v),
            _ => &NULL,
        }
    }
}

impl Index<usize> for Json {
    type Output = Json;
    fn index(&self, index: usize) -> &Json {
        match self {
            Json::Array(items) => items.get(index).unwrap_or(&NULL),
            _ => &NULL,
        }
    }
}

/// Compact JSON text (strings escaped), for failure messages.
impl fmt::Display for Json {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Json::Null => f.write_str("null"),
            Json::Bool(b) => write!(f, "{b}"),
            Json::Number(n) => f.write_str(n),
            Json::String(s) => write_json_string(f, s),
            Json::Array(items) => {
                f.write_str("[")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{item}")?;
                }
                f.write_str("]")
            }
            Json::Object(fields) => {
                f.write_str("{")?;
                for (i, (key, value)) in fields.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write_json_string(f, key)?;
                    write!(f, ":{value}")?;
                }
                f.write_str("}")
            }
        }
    }
}

fn write_json_string(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    f.write_str("\"")?;
    for c in s.chars() {
        match c {
            '"' => f.write_str("\\\"")?,
            '\\' => f.write_str("\\\\")?,
            '\n' => f.write_str("\\n")?,
            '\r' => f.write_str("\\r")?,
            '\t' => f.write_str("\\t")?,
            c if (c as u32) < 0x20 => write!(f, "\\u{:04x}", c as u32)?,
            c => write!(f, "{c}")?,
        }
    }
    f.write_str("\"")
}

struct Parser<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn error(&self, what: &str) -> String {
        format!("{what} at byte {}", self.at)
    }

    fn skip_space(&mut self) {
        while self
            .bytes
            .get(self.at)
            .is_some_and(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        {
            self.at += 1;
        }
    }

    fn expect(&mut self, byte: u8) -> Result<(), String> {
        self.skip_space();
        if self.bytes.get(self.at) == Some(&byte) {
            self.at += 1;
            Ok(())
        } else {
            Err(self.error(&format!("expected {:?}", byte as char)))
        }
    }

    fn value(&mut self, depth: usize) -> Result<Json, String> {
        if depth > 200 {
            return Err(self.error("nested too deep"));
        }
        self.skip_space();
        match self.bytes.get(self.at) {
            None => Err(self.error("unexpected end")),
            Some(b'{') => {
                self.at += 1;
                let mut fields = Vec::new();
                self.skip_space();
                if self.bytes.get(self.at) == Some(&b'}') {
                    self.at += 1;
                    return Ok(Json::Object(fields));
                }
                loop {
                    self.skip_space();
                    let key = self.string()?;
                    self.expect(b':')?;
                    let value = self.value(depth + 1)?;
                    fields.push((key, value));
                    self.skip_space();
                    match self.bytes.get(self.at) {
                        Some(b',') => self.at += 1,
                        Some(b'}') => {
                            self.at += 1;
                            return Ok(Json::Object(fields));
                        }
                        _ => return Err(self.error("expected ',' or '}'")),
                    }
                }
            }
            Some(b'[') => {
                self.at += 1;
                let mut items = Vec::new();
                self.skip_space();
                if self.bytes.get(self.at) == Some(&b']') {
                    self.at += 1;
                    return Ok(Json::Array(items));
                }
                loop {
                    items.push(self.value(depth + 1)?);
                    self.skip_space();
                    match self.bytes.get(self.at) {
                        Some(b',') => self.at += 1,
                        Some(b']') => {
                            self.at += 1;
                            return Ok(Json::Array(items));
                        }
                        _ => return Err(self.error("expected ',' or ']'")),
                    }
                }
            }
            Some(b'"') => self.string().map(Json::String),
            Some(b't') => self.literal("true", Json::Bool(true)),
            Some(b'f') => self.literal("false", Json::Bool(false)),
            Some(b'n') => self.literal("null", Json::Null),
            Some(b'-' | b'0'..=b'9') => {
                let start = self.at;
                while self
                    .bytes
                    .get(self.at)
                    .is_some_and(|b| matches!(b, b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'))
                {
                    self.at += 1;
                }
                let text = std::str::from_utf8(&self.bytes[start..self.at]).unwrap();
                text.parse::<f64>().map_err(|_| self.error("bad number"))?;
                Ok(Json::Number(text.to_string()))
            }
            Some(_) => Err(self.error("unexpected character")),
        }
    }

    fn literal(&mut self, word: &str, value: Json) -> Result<Json, String> {
        if self.bytes[self.at..].starts_with(word.as_bytes()) {
            self.at += word.len();
            Ok(value)
        } else {
            Err(self.error("bad literal"))
        }
    }

    fn hex4(&mut self) -> Result<u32, String> {
        let digits = self
            .bytes
            .get(self.at..self.at + 4)
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u32::from_str_radix(d, 16).ok())
            .ok_or_else(|| self.error("bad \\u escape"))?;
        self.at += 4;
        Ok(digits)
    }

    fn string(&mut self) -> Result<String, String> {
        if self.bytes.get(self.at) != Some(&b'"') {
            return Err(self.error("expected a string"));
        }
        self.at += 1;
        let mut out: Vec<u8> = Vec::new();
        loop {
            let Some(&byte) = self.bytes.get(self.at) else {
                return Err(self.error("unterminated string"));
            };
            self.at += 1;
            match byte {
                b'"' => break,
                b'\\' => {
                    let Some(&escape) = self.bytes.get(self.at) else {
                        return Err(self.error("unterminated escape"));
                    };
                    self.at += 1;
                    let c = match escape {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let first = self.hex4()?;
                            let code = if (0xD800..0xDC00).contains(&first)
                                && self.bytes[self.at..].starts_with(b"\\u")
                            {
                                self.at += 2;
                                let second = self.hex4()?;
                                0x10000 + ((first - 0xD800) << 10) + (second.wrapping_sub(0xDC00))
                            } else {
                                first
                            };
                            char::from_u32(code).ok_or_else(|| self.error("bad code point"))?
                        }
                        _ => return Err(self.error("bad escape")),
                    };
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
                byte => out.push(byte),
            }
        }
        String::from_utf8(out).map_err(|_| self.error("string is not UTF-8"))
    }
}

/// The bytes of a payload as the API and the report encode them: a JSON
/// string (exactly those bytes) or `{"base64": ...}`.
#[track_caller]
pub fn payload(value: &Json) -> Vec<u8> {
    match value {
        Json::String(s) => s.as_bytes().to_vec(),
        Json::Object(_) => base64_decode(value.str_at("base64"))
            .unwrap_or_else(|e| panic!("bad base64 payload {value}: {e}")),
        other => panic!("not a payload: {other}"),
    }
}

/// Standard base64 (with or without padding).
pub fn base64_decode(text: &str) -> Result<Vec<u8>, String> {
    fn sextet(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let clean: Vec<u8> = text.bytes().filter(|&c| c != b'=').collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |=
                sextet(c).ok_or_else(|| format!("bad character {:?}", c as char))? << (18 - 6 * i);
        }
        let bytes = acc.to_be_bytes();
        match chunk.len() {
            4 => out.extend_from_slice(&bytes[1..4]),
            3 => out.extend_from_slice(&bytes[1..3]),
            2 => out.push(bytes[1]),
            _ => return Err("truncated base64".into()),
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Running `koala replay`

/// The koala CLI: `$KOALA_BIN`, else `koala` next to the library under test.
pub fn koala_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let path = match std::env::var_os("KOALA_BIN") {
            Some(path) if !path.is_empty() => PathBuf::from(path),
            _ => koala_lib().with_file_name("koala"),
        };
        assert!(
            path.is_file(),
            "koala not found at {}: run `make build` (or `cargo build --release -p koala-cli`), \
             or point KOALA_BIN at it",
            path.display()
        );
        path
    })
    .clone()
}

/// A finished `koala` run.
pub struct KoalaRun {
    /// The exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl KoalaRun {
    /// Everything it printed, for failure messages.
    pub fn output(&self) -> String {
        format!(
            "--- koala exit code {:?} after {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.elapsed, self.stdout, self.stderr
        )
    }

    /// The value of a line of the summary (`sessions`, `passed`, `failed`,
    /// `errors`, `calls matched`, `unmatched`, `missing`, `reused`).
    #[track_caller]
    pub fn summary(&self, label: &str) -> String {
        let summary = format!("\n{}", self.stdout);
        let summary = summary
            .split("\nSummary\n")
            .nth(1)
            .unwrap_or_else(|| panic!("no summary in koala's output\n{}", self.output()));
        summary
            .lines()
            .find_map(|line| {
                let rest = line.trim_start().strip_prefix(label)?;
                rest.starts_with("  ").then(|| rest.trim().to_string())
            })
            .unwrap_or_else(|| panic!("no {label:?} line in the summary\n{}", self.output()))
    }
}

/// Runs `koala ARGS` in `dir` (relative paths are relative to it), with
/// `env` added to a clean environment (no KOALA_* variable of the test
/// runner), and waits at most [`KOALA_TIMEOUT`] for it to exit.
pub fn run_koala(dir: &TestDir, name: &str, args: &[String], env: &[(&str, String)]) -> KoalaRun {
    let mut spec = Spec::new(name, koala_bin()).args(args);
    for (key, value) in env {
        spec = spec.env(key, value);
    }
    let started = Instant::now();
    let mut koala = spec.spawn(dir);
    let deadline = started + KOALA_TIMEOUT;
    let status = loop {
        if let Some(status) = koala.exited() {
            break status;
        }
        if Instant::now() > deadline {
            koala.stop();
            panic!(
                "koala did not finish within {KOALA_TIMEOUT:?}\n{}",
                koala.output_report()
            );
        }
        thread::sleep(POLL);
    };
    KoalaRun {
        code: status.code(),
        stdout: koala.stdout(),
        stderr: koala.stderr(),
        elapsed: started.elapsed(),
    }
}

/// `koala replay SESSIONS --lib <lib> OPTIONS -- <python> -u <fixture> ARGS`:
/// the argument list for replaying a Python fixture started by koala.
pub fn replay_python_args(
    sessions: &[&str],
    options: &[String],
    script: &str,
    script_args: &[String],
) -> Vec<String> {
    let mut args: Vec<String> = vec!["replay".into()];
    args.extend(sessions.iter().map(|s| s.to_string()));
    args.push("--lib".into());
    args.push(koala_lib().display().to_string());
    args.extend(options.iter().cloned());
    args.push("--".into());
    args.push(crate::python().display().to_string());
    args.push("-u".into());
    args.push(crate::fixture(script).display().to_string());
    args.extend(script_args.iter().cloned());
    args
}

// ---------------------------------------------------------------------------
// The replay API, spoken directly

/// An answer of the inbound server.
#[derive(Debug)]
pub struct ApiAnswer {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl ApiAnswer {
    /// The body as JSON (every answer of the API is JSON).
    #[track_caller]
    pub fn json(&self) -> Json {
        Json::must_parse(&String::from_utf8_lossy(&self.body), "the API's answer")
    }

    /// The `error` message of a 4xx/5xx answer.
    #[track_caller]
    pub fn error(&self) -> String {
        let json = self.json();
        json["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no \"error\" in {json}"))
            .to_string()
    }
}

impl fmt::Display for ApiAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.head, String::from_utf8_lossy(&self.body))
    }
}

/// Sends `request` (raw bytes: head and body) to the inbound server on
/// `127.0.0.1:port` and reads one answer. With `shutdown_write`, the write
/// side is closed after sending (a body shorter than its Content-Length).
pub fn api_raw(port: u16, request: &[u8], shutdown_write: bool) -> ApiAnswer {
    let mut stream = connect(port);
    stream.write_all(request).expect("send API request");
    if shutdown_write {
        stream.shutdown(Shutdown::Write).expect("shutdown");
    }
    let bytes = read_http_response(&mut stream)
        .unwrap_or_else(|e| panic!("no answer from the inbound server on port {port}: {e}"));
    parse_answer(&bytes)
}

fn parse_answer(bytes: &[u8]) -> ApiAnswer {
    let head_end = crate::find(bytes, b"\r\n\r\n").expect("answer head") + 4;
    let head = String::from_utf8_lossy(&bytes[..head_end]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head:?}"));
    ApiAnswer {
        status,
        head,
        body: bytes[head_end..].to_vec(),
    }
}

/// `POST path` with `body` and a Content-Length.
pub fn api_post(port: u16, path: &str, body: &[u8]) -> ApiAnswer {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    api_raw(port, &request, false)
}

/// `GET /v1/status`, which must answer 200: its JSON.
#[track_caller]
pub fn api_status(port: u16) -> Json {
    let answer = api_raw(
        port,
        format!("GET /v1/status HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").as_bytes(),
        false,
    );
    assert_eq!(answer.status, 200, "GET /v1/status: {answer}");
    let status = answer.json();
    assert_eq!(status["status"].as_str(), Some("ok"), "{status}");
    status
}

/// Does `GET /v1/status` answer 200 (without panicking when nothing
/// listens yet)?
pub fn api_answers(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let request = format!("GET /v1/status HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    read_http_response(&mut stream).is_ok_and(|bytes| parse_answer(&bytes).status == 200)
}

/// Waits until a service started in replay mode is ready as `koala replay`
/// waits for it: the inbound server answers `GET /v1/status` and the
/// service listens on `sut_port`.
pub fn wait_until_replay_ready(service: &mut Program, inbound_port: u16, sut_port: u16) {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if is_listening(sut_port) && api_answers(inbound_port) {
            return;
        }
        if let Some(status) = service.exited() {
            panic!(
                "the service exited ({status}) before it was ready\n{}",
                service.output_report()
            );
        }
        if Instant::now() > deadline {
            panic!(
                "the service was not ready within {START_TIMEOUT:?}\n{}",
                service.output_report()
            );
        }
        thread::sleep(POLL);
    }
}

/// The loopback ports of a service run in replay mode by the test itself.
#[derive(Clone, Copy, Debug)]
pub struct ReplayPorts {
    pub inbound: u16,
    pub outbound: u16,
    pub sut: u16,
}

impl ReplayPorts {
    /// Free ports for the inbound and outbound servers, `sut` for the service.
    pub fn new(sut: u16) -> ReplayPorts {
        ReplayPorts {
            inbound: free_port(),
            outbound: free_port(),
            sut,
        }
    }

    /// `spec` preloaded with the library in `mode` (`replay` or
    /// `record,replay`), its servers on these ports.
    pub fn apply(&self, spec: Spec, mode: &str) -> Spec {
        spec.preload()
            .env("KOALA_MODE", mode)
            .env("KOALA_INBOUND_ADDR", format!("127.0.0.1:{}", self.inbound))
            .env(
                "KOALA_OUTBOUND_ADDR",
                format!("127.0.0.1:{}", self.outbound),
            )
            .env("KOALA_SUT_ADDR", format!("127.0.0.1:{}", self.sut))
    }
}

/// Is `pid` still a live process (not a zombie)?
pub fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

// ---------------------------------------------------------------------------
// The services of the recording tests, recorded

/// redis-server and the backend of `redis_service.py`, seeded for `ids`.
pub struct Dependencies {
    pub redis: Program,
    pub redis_port: u16,
    pub backend: Program,
    pub backend_port: u16,
}

impl Dependencies {
    /// Starts redis (with `item:<id>` = `value-<id>` for each id) and the
    /// backend.
    pub fn start(dir: &TestDir, ids: &[String]) -> Dependencies {
        let (redis, redis_port) = start_redis(dir);
        let seeds: Vec<(String, String)> = ids
            .iter()
            .map(|id| (format!("item:{id}"), format!("value-{id}")))
            .collect();
        redis_set(redis_port, &seeds);
        let backend_port = free_port();
        let mut backend = Spec::python_fixture("backend", "backend.py")
            .arg(backend_port)
            .spawn(dir);
        backend.wait_for_port(backend_port);
        Dependencies {
            redis,
            redis_port,
            backend,
            backend_port,
        }
    }

    /// The service's arguments after PORT: `REDIS_PORT BACKEND_PORT`.
    pub fn args(&self) -> [String; 2] {
        [self.redis_port.to_string(), self.backend_port.to_string()]
    }

    pub fn redis_peer(&self) -> String {
        format!("127.0.0.1:{}", self.redis_port)
    }

    pub fn backend_peer(&self) -> String {
        format!("127.0.0.1:{}", self.backend_port)
    }

    /// Stops both, and asserts their ports are closed: nothing can answer
    /// the replayed service but the recording.
    pub fn stop(mut self) {
        self.redis.stop();
        self.backend.stop();
        assert_port_closed(self.redis_port, "redis");
        assert_port_closed(self.backend_port, "the backend");
    }
}

/// Asserts nothing listens on `127.0.0.1:port` and a connect is refused.
#[track_caller]
pub fn assert_port_closed(port: u16, what: &str) {
    assert!(!is_listening(port), "{what} still listens on port {port}");
    let refused = TcpStream::connect_timeout(
        &format!("127.0.0.1:{port}").parse().unwrap(),
        Duration::from_secs(2),
    );
    assert!(
        refused.is_err(),
        "{what}: a connection to port {port} was accepted"
    );
}

/// `c0r0, c0r1, ...`: `per_connection` request ids for each of
/// `connections` client connections.
pub fn item_ids(connections: usize, per_connection: usize) -> Vec<String> {
    (0..connections)
        .flat_map(|c| (0..per_connection).map(move |r| format!("c{c}r{r}")))
        .collect()
}

/// The request the tests send for item `id`.
pub fn item_request(port: u16, id: &str) -> Vec<u8> {
    format!("GET /item/{id} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").into_bytes()
}

/// The exact answer of `redis_service.py` (and the prefork service) for
/// item `id` with `hits`.
pub fn item_response(id: &str, hits: u32) -> Vec<u8> {
    let body = format!("item {id}: value=value-{id} backend=backend says {id} hits={hits}\n");
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Sends every id of `ids` to `port` as `GET /item/<id>`: `connections`
/// keep-alive connections, all open at once and used in turn (connection 0
/// sends its first request, then connection 1...), so a pre-forked server
/// needs a worker per connection. Asserts each answer.
pub fn send_items(port: u16, connections: usize, per_connection: usize) {
    let mut streams: Vec<TcpStream> = (0..connections).map(|_| connect(port)).collect();
    for r in 0..per_connection {
        for (c, stream) in streams.iter_mut().enumerate() {
            let id = format!("c{c}r{r}");
            let response = http_exchange(stream, &item_request(port, &id));
            assert_bytes(
                &response,
                &item_response(&id, 1),
                &format!("answer to {id}"),
            );
        }
    }
}

/// What a recording run left: the record directory and what is in it.
pub struct Recording {
    /// The record directory, relative to the test directory.
    pub name: String,
    pub dir: PathBuf,
    /// Where the service listened.
    pub port: u16,
    /// Every session, with its file name.
    pub sessions: Vec<(String, Session)>,
    pub background: Vec<Session>,
    /// The pid of the recorded service.
    pub pid: u32,
}

impl Recording {
    /// Reads a record directory after its service stopped.
    pub fn read(dir: &TestDir, name: &str, port: u16, pid: u32) -> Recording {
        let path = dir.join(name);
        let records = crate::record_files(&path);
        let sessions = session_files(&path)
            .into_iter()
            .flat_map(|(file, sessions)| sessions.into_iter().map(move |s| (file.clone(), s)))
            .collect();
        let background = records
            .into_iter()
            .flat_map(|(_, r)| r)
            .filter(Session::is_background)
            .collect();
        Recording {
            name: name.to_string(),
            dir: path,
            port,
            sessions,
            background,
            pid,
        }
    }

    /// The session whose request is `GET /<kind>/<id>`, by id.
    pub fn by_item(&self) -> BTreeMap<String, &Session> {
        self.sessions
            .iter()
            .map(|(_, s)| (request_item(s.inbound.request.as_bytes()), s))
            .collect()
    }

    /// The session with this session id.
    #[track_caller]
    pub fn session(&self, id: &str) -> &Session {
        self.sessions
            .iter()
            .map(|(_, s)| s)
            .find(|s| s.id == id)
            .unwrap_or_else(|| panic!("no recorded session {id}\n{}", describe_dir(&self.dir)))
    }

    /// `file:line` of each session, as koala names them.
    pub fn locations(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for (file, records) in crate::record_files(&self.dir) {
            for (index, record) in records.iter().enumerate() {
                if !record.is_background() {
                    out.insert(
                        record.id.clone(),
                        format!("{}/{file}:{}", self.name, index + 1),
                    );
                }
            }
        }
        out
    }
}

/// The last path segment of a request's target: the item id.
pub fn request_item(request: &[u8]) -> String {
    String::from_utf8_lossy(request)
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Records `redis_service.py` (or another fixture with the same interface,
/// `SCRIPT PORT REDIS_PORT BACKEND_PORT EXTRA...`) serving
/// `connections` × `per_connection` requests, into `<dir>/<name>`.
/// Stops the service cleanly, so the recording is complete.
pub fn record_items(
    dir: &TestDir,
    name: &str,
    script: &str,
    deps: &Dependencies,
    extra_args: &[String],
    connections: usize,
    per_connection: usize,
) -> Recording {
    let record = dir.join(name);
    let port = free_port();
    let mut service = Spec::python_fixture(&format!("{name}-service"), script)
        .arg(port)
        .args(deps.args())
        .args(extra_args)
        .record_to(&record)
        .spawn(dir);
    service.wait_for_port(port);
    send_items(port, connections, per_connection);
    let total = connections * per_connection;
    wait_for_sessions(&record, total);
    service.stop_cleanly();
    let recording = Recording::read(dir, name, port, service.pid());
    assert_eq!(
        recording.sessions.len(),
        total,
        "one session per request\n{}",
        describe_dir(&record)
    );
    recording
}

// ---------------------------------------------------------------------------
// Checking replay results

/// Asserts that a `ReplayResult` (from the API or a report) replayed
/// `recorded` exactly: the service answered the recorded response byte for
/// byte, and each of its calls went to the recorded peer with the recorded
/// request, was answered from the recorded call of the same index with the
/// recorded response; no call unmatched or missing.
#[track_caller]
pub fn assert_result_replays(result: &Json, recorded: &Session, what: &str) {
    let what = format!("{what}: result {result}\nrecorded {}", show(recorded));
    assert_eq!(result["id"].as_str(), Some(recorded.id.as_str()), "{what}");
    assert_bytes(
        &payload(&result["response"]),
        recorded.inbound.response.as_bytes(),
        &format!("{what}\nresponse"),
    );
    assert_bytes(
        &payload(&result["recorded_response"]),
        recorded.inbound.response.as_bytes(),
        &format!("{what}\nrecorded_response"),
    );
    let calls = result.array_at("calls");
    assert_eq!(calls.len(), recorded.calls.len(), "{what}\nnumber of calls");
    for (index, (call, rec)) in calls.iter().zip(&recorded.calls).enumerate() {
        let what = format!("{what}\ncall {index}");
        assert_eq!(call["peer"].as_str(), Some(rec.peer.as_str()), "{what}");
        assert_eq!(call["matched"].as_u64(), Some(index as u64), "{what}");
        assert_eq!(call["reused"].as_bool(), Some(false), "{what}");
        assert_eq!(
            call["greeting"].as_bool(),
            Some(rec.is_greeting()),
            "{what}"
        );
        assert_bytes(
            &payload(&call["request"]),
            rec.request.as_bytes(),
            &format!("{what}: request"),
        );
        assert_bytes(
            &payload(&call["served"]),
            rec.response.as_bytes(),
            &format!("{what}: served"),
        );
    }
    assert_eq!(result.array_at("unmatched").len(), 0, "{what}\nunmatched");
    assert_eq!(result.array_at("missing").len(), 0, "{what}\nmissing");
}

/// Reads and parses a JSON report written by `koala replay --report`.
#[track_caller]
pub fn read_report(path: &Path) -> Json {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read the report {}: {e}", path.display()));
    Json::must_parse(&text, "the report")
}

/// Asserts the report's summary counts: sessions (total, passed, failed,
/// errors) and calls (matched, unmatched, missing, reused).
#[track_caller]
pub fn assert_report_summary(report: &Json, sessions: [u64; 4], calls: [u64; 4]) {
    let summary = &report["summary"];
    let got_sessions =
        ["total", "passed", "failed", "errors"].map(|k| summary["sessions"].u64_at(k));
    let got_calls =
        ["matched", "unmatched", "missing", "reused"].map(|k| summary["calls"].u64_at(k));
    assert_eq!(
        (got_sessions, got_calls),
        (sessions, calls),
        "report summary (sessions total/passed/failed/errors, calls matched/unmatched/missing/reused): {summary}"
    );
}

/// Asserts every session of the report passed and replayed its recorded
/// session exactly ([`assert_result_replays`]), and that the report covers
/// exactly the recording's sessions.
#[track_caller]
pub fn assert_report_all_replayed(report: &Json, recording: &Recording) {
    let entries = report.array_at("sessions");
    assert_eq!(
        entries.len(),
        recording.sessions.len(),
        "one report entry per recorded session"
    );
    let locations = recording.locations();
    let mut seen = std::collections::BTreeSet::new();
    for entry in entries {
        let id = entry.str_at("id");
        assert!(seen.insert(id.to_string()), "{id} reported twice");
        let recorded = recording.session(id);
        assert_eq!(entry["verdict"].as_str(), Some("pass"), "{entry}");
        assert!(entry["error"].is_null(), "{entry}");
        assert_eq!(
            entry["location"].as_str(),
            Some(locations[id].as_str()),
            "{entry}"
        );
        let calls = &entry["calls"];
        assert_eq!(
            ["matched", "unmatched", "missing", "reused"].map(|k| calls.u64_at(k)),
            [recorded.calls.len() as u64, 0, 0, 0],
            "{entry}"
        );
        assert_result_replays(&entry["result"], recorded, &format!("report entry {id}"));
    }
}

/// The `<testcase .../>` elements of a JUnit file, each as its text up to
/// its end (`/>` or `</testcase>`).
pub fn junit_testcases(xml: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find("<testcase ") {
        let tail = &rest[start..];
        let open_end = tail.find('>').expect("testcase tag end");
        let end = if tail[..open_end].ends_with('/') {
            open_end + 1
        } else {
            tail.find("</testcase>").expect("</testcase>") + "</testcase>".len()
        };
        out.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

/// The value of attribute `name` in the first tag of `xml` that has it.
pub fn xml_attribute(xml: &str, name: &str) -> Option<String> {
    let key = format!(" {name}=\"");
    let start = xml.find(&key)? + key.len();
    let end = xml[start..].find('"')?;
    Some(xml[start..start + end].to_string())
}

/// The lines of the `.jsonl` files of `dir` (sorted by file name), exactly
/// as written, with their parsed records: what `koala replay` posts.
pub fn record_lines(dir: &Path) -> Vec<(String, Session)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e == "jsonl"));
    files.sort();
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read session file");
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let record = koala_session::read_session_line(line)
                .unwrap_or_else(|e| panic!("{}: not a session ({e}): {line}", file.display()));
            out.push((line.to_string(), record));
        }
    }
    out
}

/// A greeting nobody else sends: `220 koala-greeting <test>-<pid>-<nanos>`.
pub fn unique_greeting(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("220 koala-greeting {test}-{}-{nanos}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_and_escapes() {
        let text = r#" {"a": [1, -2.5e3, true, false, null], "s": "x\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00", "big": 1795266953339521995, "o": {}} "#;
        let json = Json::parse(text).unwrap();
        assert_eq!(json["a"][1].as_f64(), Some(-2500.0));
        assert_eq!(json["a"][2].as_bool(), Some(true));
        assert!(json["a"][4].is_null() && json["missing"].is_null());
        assert_eq!(json["s"].as_str(), Some("x\"\\/\u{8}\u{c}\n\r\té😀"));
        assert_eq!(json["big"].as_u64(), Some(1795266953339521995));
        assert_eq!(Json::parse(&json.to_string()).unwrap(), json);
        assert!(json.has("o") && !json.without("o").has("o"));
        assert_eq!(json.with("o", Json::Null)["o"], Json::Null);
        for bad in ["", "{", "[1,]", "{\"a\" 1}", "tru", "\"\\x\"", "1 2"] {
            assert!(Json::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn payloads_are_strings_or_base64() {
        assert_eq!(payload(&Json::String("ab".into())), b"ab");
        let b64 = Json::parse(r#"{"base64": "SFRUUC8xLjEgMjAwIE9LDQoNCg=="}"#).unwrap();
        assert_eq!(payload(&b64), b"HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!(base64_decode("/w").unwrap(), [0xff]);
        assert_eq!(base64_decode("AAEC").unwrap(), [0, 1, 2]);
        assert!(base64_decode("A").is_err() && base64_decode("A*==").is_err());
    }

    #[test]
    fn junit_testcases_are_split() {
        let xml = r#"<testsuite tests="2" failures="1"><testcase name="a" line="1"/><testcase name="b"><failure message="m">x</failure></testcase></testsuite>"#;
        let cases = junit_testcases(xml);
        assert_eq!(cases.len(), 2);
        assert_eq!(cases[0], r#"<testcase name="a" line="1"/>"#);
        assert!(cases[1].ends_with("</testcase>") && cases[1].contains("<failure"));
        assert_eq!(xml_attribute(xml, "failures").as_deref(), Some("1"));
    }
}
