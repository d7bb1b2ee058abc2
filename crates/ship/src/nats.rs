//! A small synchronous NATS client: the text protocol over one TCP
//! connection, enough for request/reply and publishing with headers.
//!
//! Protocol (docs.nats.io, "Client Protocol"): the server speaks first with
//! `INFO {json}`; the client answers `CONNECT {json}` and `PING`, and the
//! server's `PONG` (or `-ERR`) says whether it was accepted. Messages are
//! published with `PUB subject [reply] size` or, with headers,
//! `HPUB subject [reply] header-size total-size`, and delivered to
//! subscriptions (`SUB subject sid`) as `MSG`/`HMSG`. The server's `PING`s
//! are answered with `PONG`.
//!
//! A server that requires TLS (or a `tls://` URL) gets a TLS handshake
//! right after its `INFO` ([`crate::tls`]).
//!
//! Replies are taken on one wildcard subscription, `_INBOX.<random>.*`:
//! each request gets its own last token, so many requests may be in flight
//! at once (pipelined publishes) and a late answer to a request given up is
//! recognised and dropped.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::tls::{self, Transport};
use crate::url::{Auth, NatsUrl};

/// Why a NATS operation failed.
#[derive(Debug)]
pub enum Error {
    /// No server of the URL could be reached (refused, unknown host,
    /// timed out); each server with its reason.
    Unreachable(String),
    /// The server refused the credentials (or wants some).
    Auth(String),
    /// TLS with the server failed: its certificate is not trusted or
    /// does not name it, it refused ours (or wants one), a `tls://` URL to
    /// a server without TLS, or a TLS file that cannot be used.
    Tls(String),
    /// The connection broke, or the server sent something unexpected.
    Connection(String),
    /// No answer within the time allowed.
    Timeout,
    /// Nobody listens on the request's subject (JetStream: no stream takes
    /// that subject, or the API is not there).
    NoResponders(String),
    /// The server said `-ERR`.
    Server(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Unreachable(m) => write!(f, "cannot reach a NATS server: {m}"),
            Error::Auth(m) => write!(f, "NATS authorization failed: {m}"),
            Error::Tls(m) => write!(f, "{m}"),
            Error::Connection(m) => write!(f, "NATS connection: {m}"),
            Error::Timeout => write!(f, "no answer from the NATS server in time"),
            Error::NoResponders(subject) => write!(f, "no responders on {subject}"),
            Error::Server(m) => write!(f, "the NATS server said: {m}"),
        }
    }
}

impl Error {
    /// Worth trying again later (the server may come back, a leader may be
    /// elected); auth and TLS problems are not.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Unreachable(_) | Error::Connection(_) | Error::Timeout | Error::NoResponders(_)
        )
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// The fields of the server's `INFO` that matter here.
#[derive(Debug, Default, Deserialize, Clone)]
pub struct ServerInfo {
    #[serde(default)]
    pub server_id: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub max_payload: usize,
    #[serde(default)]
    pub headers: bool,
    #[serde(default)]
    pub auth_required: bool,
    #[serde(default)]
    pub tls_required: bool,
    #[serde(default)]
    pub tls_available: bool,
    #[serde(default)]
    pub jetstream: bool,
}

/// Message headers: the status line (`NATS/1.0 404 No Messages`) and the
/// fields.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Headers {
    pub status: Option<u16>,
    pub description: String,
    pub fields: Vec<(String, String)>,
}

impl Headers {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The `NATS/1.0\r\nName: value\r\n...\r\n\r\n` block.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = b"NATS/1.0\r\n".to_vec();
        for (name, value) in &self.fields {
            out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out
    }

    pub fn decode(block: &[u8]) -> Headers {
        let text = String::from_utf8_lossy(block);
        let mut lines = text.split("\r\n");
        let mut headers = Headers::default();
        if let Some(first) = lines.next() {
            let mut parts = first.splitn(3, ' ');
            let _version = parts.next();
            headers.status = parts.next().and_then(|s| s.trim().parse().ok());
            headers.description = parts.next().unwrap_or_default().trim().to_string();
        }
        for line in lines {
            if let Some((name, value)) = line.split_once(':') {
                headers
                    .fields
                    .push((name.trim().to_string(), value.trim().to_string()));
            }
        }
        headers
    }
}

/// A message received.
#[derive(Debug, Clone)]
pub struct Message {
    pub subject: String,
    pub reply: Option<String>,
    pub headers: Option<Headers>,
    pub payload: Vec<u8>,
}

impl Message {
    /// The status of a status message (`503` no responders, `404` no
    /// messages, `408` request timeout...).
    pub fn status(&self) -> Option<u16> {
        self.headers.as_ref().and_then(|h| h.status)
    }
}

/// How to connect.
#[derive(Clone, Debug)]
pub struct Options {
    pub url: NatsUrl,
    /// The client name the server shows (`connz`).
    pub name: String,
    /// Bound on connecting to one server, and on each request by default.
    pub timeout: Duration,
}

/// A connection to one server of the URL, re-established on the next
/// server after it breaks ([`Connection::reconnect`]).
pub struct Connection {
    options: Options,
    /// Reads and writes (the writes go around the buffer).
    reader: BufReader<Transport>,
    info: ServerInfo,
    server: String,
    /// Index of the server in use, to start from the next one on failover.
    index: usize,
    inbox: String,
    next_token: u64,
    /// Bytes of the current line read so far (kept across read timeouts).
    line: Vec<u8>,
    /// Set when the connection broke: the next use reconnects.
    broken: bool,
}

const INBOX_SID: u64 = 1;

impl Connection {
    /// Connects to the first server of the URL that answers.
    pub fn connect(options: Options) -> Result<Connection> {
        let (reader, info, index) = open_any(&options, 0)?;
        let inbox = format!("_INBOX.{}", random_token());
        let mut connection = Connection {
            server: options.url.servers[index].clone(),
            options,
            reader,
            info,
            index,
            inbox,
            next_token: 0,
            line: Vec::new(),
            broken: false,
        };
        connection.subscribe_inbox()?;
        Ok(connection)
    }

    /// The server in use (`host:port`).
    pub fn server(&self) -> &str {
        &self.server
    }

    pub fn info(&self) -> &ServerInfo {
        &self.info
    }

    /// Drops the connection and connects again, starting with the server
    /// after the one in use.
    pub fn reconnect(&mut self) -> Result<()> {
        let _ = self
            .reader
            .get_ref()
            .tcp()
            .shutdown(std::net::Shutdown::Both);
        let (reader, info, index) = open_any(&self.options, self.index + 1)?;
        self.reader = reader;
        self.info = info;
        self.index = index;
        self.server = self.options.url.servers[index].clone();
        self.line.clear();
        self.broken = false;
        self.subscribe_inbox()
    }

    /// Gives the connection up: the next use connects again (to the next
    /// server). For a server that stopped answering without closing.
    pub fn mark_broken(&mut self) {
        self.broken = true;
    }

    /// Reconnects if the connection broke.
    pub fn ensure(&mut self) -> Result<()> {
        if self.broken {
            self.reconnect()
        } else {
            Ok(())
        }
    }

    fn subscribe_inbox(&mut self) -> Result<()> {
        let command = format!("SUB {}.* {INBOX_SID}\r\n", self.inbox);
        self.write(command.as_bytes())
    }

    /// Writes `bytes` out (over TLS: the records too, so that a failure
    /// is seen here and not lost in rustls's buffer).
    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        let transport = self.reader.get_mut();
        match transport.write_all(bytes).and_then(|()| transport.flush()) {
            Ok(()) => Ok(()),
            Err(e) => Err(self.broke(format!("write to {}: {e}", self.server))),
        }
    }

    fn broke(&mut self, message: String) -> Error {
        self.broken = true;
        Error::Connection(message)
    }

    /// A fresh reply subject.
    pub fn new_reply(&mut self) -> String {
        self.next_token += 1;
        format!("{}.{}", self.inbox, self.next_token)
    }

    /// Sends one message (not flushed to the server's attention: the next
    /// read or [`Connection::flush`] does that).
    pub fn publish(
        &mut self,
        subject: &str,
        reply: Option<&str>,
        headers: Option<&Headers>,
        payload: &[u8],
    ) -> Result<()> {
        self.ensure()?;
        let max = self.info.max_payload;
        let header_block = headers.map(Headers::encode);
        let total = payload.len() + header_block.as_ref().map_or(0, Vec::len);
        if max > 0 && total > max {
            return Err(Error::Server(format!(
                "a message of {total} bytes is over the server's max_payload ({max} bytes)"
            )));
        }
        let reply = reply.map(|r| format!(" {r}")).unwrap_or_default();
        let mut frame = Vec::with_capacity(total + 128);
        match &header_block {
            Some(block) => frame.extend_from_slice(
                format!("HPUB {subject}{reply} {} {total}\r\n", block.len()).as_bytes(),
            ),
            None => frame.extend_from_slice(format!("PUB {subject}{reply} {total}\r\n").as_bytes()),
        }
        if let Some(block) = &header_block {
            frame.extend_from_slice(block);
        }
        frame.extend_from_slice(payload);
        frame.extend_from_slice(b"\r\n");
        self.write(&frame)
    }

    /// A request: publishes with a fresh reply subject and waits for the
    /// first answer. A `503` status (no responders) is an error.
    pub fn request(
        &mut self,
        subject: &str,
        headers: Option<&Headers>,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<Message> {
        self.ensure()?;
        let reply = self.new_reply();
        self.publish(subject, Some(&reply), headers, payload)?;
        let message = self.wait_for(&reply, Instant::now() + timeout)?;
        if message.status() == Some(503) {
            return Err(Error::NoResponders(subject.to_string()));
        }
        Ok(message)
    }

    /// Waits for the next message on `reply`; messages for other replies
    /// (answers to requests given up) are dropped.
    pub fn wait_for(&mut self, reply: &str, deadline: Instant) -> Result<Message> {
        loop {
            let message = self.next_message(deadline)?;
            if message.subject == reply {
                return Ok(message);
            }
        }
    }

    /// Waits for answers to every subject of `replies` (in any order); the
    /// answers are keyed by reply subject. Stops at the deadline with what
    /// arrived.
    pub fn collect(
        &mut self,
        replies: &[String],
        deadline: Instant,
    ) -> (HashMap<String, Message>, Option<Error>) {
        let mut wanted: std::collections::HashSet<&str> =
            replies.iter().map(String::as_str).collect();
        let mut got = HashMap::new();
        while !wanted.is_empty() {
            match self.next_message(deadline) {
                Ok(message) => {
                    if wanted.remove(message.subject.as_str()) {
                        got.insert(message.subject.clone(), message);
                    }
                }
                Err(e) => return (got, Some(e)),
            }
        }
        (got, None)
    }

    /// The next message on the inbox, answering the server's PINGs.
    pub fn next_message(&mut self, deadline: Instant) -> Result<Message> {
        self.ensure()?;
        loop {
            let line = self.read_line(deadline)?;
            let text = String::from_utf8_lossy(&line).to_string();
            let mut words = text.split_ascii_whitespace();
            let op = words.next().unwrap_or_default().to_ascii_uppercase();
            let args: Vec<&str> = words.collect();
            match op.as_str() {
                "PING" => self.write(b"PONG\r\n")?,
                "PONG" | "+OK" | "INFO" => {}
                "-ERR" => {
                    let message = text[4..].trim().trim_matches('\'').to_string();
                    // The server closes after most errors; a permissions
                    // error leaves the connection open.
                    if !message.to_ascii_lowercase().contains("permissions") {
                        self.broken = true;
                    }
                    return Err(classify_err(message));
                }
                "MSG" => {
                    // MSG subject sid [reply] size
                    let (subject, reply, size) = match args.as_slice() {
                        [s, _, size] => (*s, None, *size),
                        [s, _, r, size] => (*s, Some(*r), *size),
                        _ => return Err(self.broke(format!("bad MSG line {text:?}"))),
                    };
                    let size = self.parse_size(size)?;
                    let payload = self.read_payload(size)?;
                    return Ok(Message {
                        subject: subject.to_string(),
                        reply: reply.map(str::to_string),
                        headers: None,
                        payload,
                    });
                }
                "HMSG" => {
                    // HMSG subject sid [reply] header-size total-size
                    let (subject, reply, hsize, tsize) = match args.as_slice() {
                        [s, _, h, t] => (*s, None, *h, *t),
                        [s, _, r, h, t] => (*s, Some(*r), *h, *t),
                        _ => return Err(self.broke(format!("bad HMSG line {text:?}"))),
                    };
                    let (hsize, tsize) = (self.parse_size(hsize)?, self.parse_size(tsize)?);
                    if hsize > tsize {
                        return Err(self.broke(format!("bad HMSG line {text:?}")));
                    }
                    let mut body = self.read_payload(tsize)?;
                    let payload = body.split_off(hsize);
                    return Ok(Message {
                        subject: subject.to_string(),
                        reply: reply.map(str::to_string),
                        headers: Some(Headers::decode(&body)),
                        payload,
                    });
                }
                _ => return Err(self.broke(format!("unexpected {text:?} from the server"))),
            }
        }
    }

    fn parse_size(&mut self, text: &str) -> Result<usize> {
        text.parse()
            .map_err(|_| self.broke(format!("bad size {text:?} from the server")))
    }

    /// One protocol line, without `\r\n`. A timeout keeps what was read.
    fn read_line(&mut self, deadline: Instant) -> Result<Vec<u8>> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Timeout);
            }
            let _ = self.reader.get_ref().tcp().set_read_timeout(Some(left));
            match self.reader.read_until(b'\n', &mut self.line) {
                Ok(0) => {
                    return Err(self.broke(format!("{} closed the connection", self.server)));
                }
                Ok(_) if self.line.ends_with(b"\n") => {
                    let mut line = std::mem::take(&mut self.line);
                    line.pop();
                    if line.ends_with(b"\r") {
                        line.pop();
                    }
                    return Ok(line);
                }
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.broke(format!("read from {}: {e}", self.server))),
            }
        }
    }

    /// `size` bytes and the `\r\n` after them. The server writes a message
    /// whole: a stall in the middle breaks the connection.
    fn read_payload(&mut self, size: usize) -> Result<Vec<u8>> {
        let _ = self
            .reader
            .get_ref()
            .tcp()
            .set_read_timeout(Some(self.options.timeout));
        let mut payload = vec![0; size + 2];
        if let Err(e) = self.reader.read_exact(&mut payload) {
            return Err(self.broke(format!("read from {}: {e}", self.server)));
        }
        payload.truncate(size);
        Ok(payload)
    }

    /// PING, and wait for the PONG: everything sent before has been
    /// processed by the server.
    pub fn flush(&mut self, timeout: Duration) -> Result<()> {
        self.ensure()?;
        self.write(b"PING\r\n")?;
        let deadline = Instant::now() + timeout;
        loop {
            let line = self.read_line(deadline)?;
            let text = String::from_utf8_lossy(&line).to_string();
            let op = text
                .split_ascii_whitespace()
                .next()
                .unwrap_or_default()
                .to_ascii_uppercase();
            match op.as_str() {
                "PONG" => return Ok(()),
                "PING" => self.write(b"PONG\r\n")?,
                "-ERR" => {
                    self.broken = true;
                    return Err(classify_err(text[4..].trim().trim_matches('\'').into()));
                }
                "MSG" | "HMSG" => {
                    // Skip the message's payload.
                    let sizes: Vec<&str> = text.split_ascii_whitespace().collect();
                    let size = sizes.last().and_then(|s| s.parse().ok()).unwrap_or(0);
                    self.read_payload(size)?;
                }
                _ => {}
            }
        }
    }
}

fn classify_err(message: String) -> Error {
    let lower = message.to_ascii_lowercase();
    if lower.contains("authorization") || lower.contains("authentication") {
        Error::Auth(message)
    } else {
        Error::Server(message)
    }
}

type Opened = (BufReader<Transport>, ServerInfo, usize);

/// Tries every server, starting at `start` (modulo their number).
fn open_any(options: &Options, start: usize) -> Result<Opened> {
    let servers = &options.url.servers;
    let mut failures = Vec::new();
    for k in 0..servers.len() {
        let index = (start + k) % servers.len();
        match open(options, &servers[index]) {
            Ok((reader, info)) => return Ok((reader, info, index)),
            // The same credentials fail on every member: say it now.
            Err(e @ (Error::Auth(_) | Error::Tls(_))) => return Err(e),
            Err(Error::Unreachable(why)) => failures.push(format!("{}: {why}", servers[index])),
            Err(e) => failures.push(format!("{}: {e}", servers[index])),
        }
    }
    Err(Error::Unreachable(failures.join("; ")))
}

fn open(options: &Options, server: &str) -> Result<(BufReader<Transport>, ServerInfo)> {
    let addrs: Vec<_> = server
        .to_socket_addrs()
        .map_err(|e| Error::Unreachable(format!("cannot resolve: {e}")))?
        .collect();
    let mut last = None;
    let mut stream = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, options.timeout) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let stream = stream
        .ok_or_else(|| Error::Unreachable(last.map_or("no address".into(), |e| e.to_string())))?;
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(Some(options.timeout));
    let deadline = Instant::now() + options.timeout;
    let _ = stream.set_read_timeout(Some(options.timeout));
    // The INFO line, read a byte at a time: what follows it may be TLS.
    let first = read_info_line(&stream)
        .map_err(|e| Error::Unreachable(format!("no INFO from the server: {e}")))?;
    let text = String::from_utf8_lossy(&first);
    let Some(json) = text.strip_prefix("INFO ") else {
        return Err(Error::Unreachable(format!(
            "not a NATS server (it said {:?})",
            text.trim_end().chars().take(80).collect::<String>()
        )));
    };
    let info: ServerInfo = serde_json::from_str(json.trim())
        .map_err(|e| Error::Connection(format!("bad INFO from the server: {e}")))?;
    let transport = if info.tls_required || options.url.tls.required {
        if !info.tls_required && !info.tls_available {
            return Err(Error::Tls(format!(
                "the NATS server {server} does not offer TLS (asked for by the tls:// URL): use nats://, or enable TLS on the server"
            )));
        }
        let config = tls::client_config(&options.url.tls).map_err(Error::Tls)?;
        tls::handshake(config, server, stream).map_err(Error::Tls)?
    } else {
        Transport::Plain(stream)
    };
    let mut connect = serde_json::json!({
        "verbose": false,
        "pedantic": false,
        "tls_required": transport.is_tls(),
        "name": options.name,
        "lang": "rust-koala",
        "version": env!("CARGO_PKG_VERSION"),
        "protocol": 1,
        "headers": true,
        "no_responders": true,
    });
    match &options.url.auth {
        Auth::None => {}
        Auth::User { user, password } => {
            connect["user"] = user.clone().into();
            connect["pass"] = password.clone().into();
        }
        Auth::Token(token) => connect["auth_token"] = token.clone().into(),
    }
    let mut reader = BufReader::with_capacity(1 << 16, transport);
    reader
        .get_mut()
        .write_all(format!("CONNECT {connect}\r\nPING\r\n").as_bytes())
        .and_then(|()| reader.get_mut().flush())
        .map_err(|e| after_connect(server, "write", e))?;
    loop {
        let mut line = Vec::new();
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::Unreachable("no PONG after CONNECT".into()));
        }
        let _ = reader.get_ref().tcp().set_read_timeout(Some(left));
        let read = reader.read_until(b'\n', &mut line);
        let text = String::from_utf8_lossy(&line).trim_end().to_string();
        match read {
            Err(e) if tls::tls_error(&e).is_some() => {
                return Err(Error::Tls(tls::explain(server, &e)));
            }
            Ok(0) | Err(_) if options.url.auth == Auth::None && info.auth_required => {
                return Err(Error::Auth(no_credentials()));
            }
            Ok(0) => return Err(Error::Connection("closed after CONNECT".into())),
            Err(e) => return Err(after_connect(server, "after CONNECT", e)),
            Ok(_) => {}
        }
        if text == "PONG" {
            return Ok((reader, info));
        }
        if let Some(message) = text.strip_prefix("-ERR") {
            let message = message.trim().trim_matches('\'').to_string();
            return Err(match classify_err(message) {
                Error::Auth(m) if options.url.auth == Auth::None => {
                    Error::Auth(format!("{m}: {}", no_credentials()))
                }
                Error::Auth(m) => {
                    Error::Auth(format!("{m}: the server refused {:?}", options.url.auth))
                }
                other => other,
            });
        }
        // +OK, PING, INFO: keep waiting for the PONG.
        if text == "PING" {
            reader
                .get_mut()
                .write_all(b"PONG\r\n")
                .and_then(|()| reader.get_mut().flush())
                .map_err(|e| after_connect(server, "write", e))?;
        }
    }
}

/// An I/O error while logging in: a TLS refusal (a client certificate the
/// server wants or refuses) is said as such, and is not worth a retry.
fn after_connect(server: &str, what: &str, e: io::Error) -> Error {
    if tls::tls_error(&e).is_some() {
        Error::Tls(tls::explain(server, &e))
    } else {
        Error::Connection(format!("{what}: {e}"))
    }
}

/// The server's first line, without reading past it.
fn read_info_line(mut stream: &TcpStream) -> io::Result<Vec<u8>> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < 1 << 20 {
        match stream.read(&mut byte) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the connection closed",
                ));
            }
            Ok(_) => {
                line.push(byte[0]);
                if byte[0] == b'\n' {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(line)
}

fn no_credentials() -> String {
    "the server wants credentials: nats://USER:PASSWORD@HOST:PORT or nats://TOKEN@HOST:PORT, or NATS_USER and NATS_PASSWORD, or NATS_TOKEN".into()
}

/// 64 random bits in hex (for inbox names and consumer tokens).
pub fn random_token() -> String {
    let mut bytes = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .is_err()
    {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        bytes = (nanos ^ u64::from(std::process::id()) << 32).to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_status_lines() {
        let headers = Headers {
            status: None,
            description: String::new(),
            fields: vec![("Nats-Msg-Id".into(), "host:1-2-3".into())],
        };
        let block = headers.encode();
        assert_eq!(block, b"NATS/1.0\r\nNats-Msg-Id: host:1-2-3\r\n\r\n");
        assert_eq!(
            Headers::decode(&block).get("nats-msg-id"),
            Some("host:1-2-3")
        );
        let status = Headers::decode(b"NATS/1.0 404 No Messages\r\n\r\n");
        assert_eq!(status.status, Some(404));
        assert_eq!(status.description, "No Messages");
        assert_eq!(Headers::decode(b"NATS/1.0 503\r\n\r\n").status, Some(503));
    }

    #[test]
    fn errors_say_whether_to_retry() {
        assert!(Error::Timeout.is_transient());
        assert!(Error::Unreachable("x".into()).is_transient());
        assert!(!Error::Auth("x".into()).is_transient());
        assert!(matches!(
            classify_err("Authorization Violation".into()),
            Error::Auth(_)
        ));
    }
}
