//! The inbound server: the replay API (`docs/replay-api.md`).
//!
//! `POST /v1/replay` sends a recorded request to the service under test,
//! from a source port tagged with the replay's id in the shared table, reads
//! the response, and answers what happened: the response, every outbound
//! call and the recorded call it was served from, the calls never made.
//! One internal thread per API connection: concurrency is the client's, up
//! to `KOALA_REPLAY_MAX_CONNECTIONS` (one more is answered 429). Every
//! request carries the run's token (`KOALA_REPLAY_TOKEN`, as
//! `Authorization: Bearer`), or is answered 401 before its body is read.

use std::cell::Cell;
use std::io::{BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use koala_session::replay::{ApiError, BackgroundLoaded, Durations, ReplayResult, Status};
use koala_session::{Payload, Session, read_session_line};

use crate::http::{self, ReadError, Request};
use crate::registry::Replay;
use crate::replayer::Replayer;
use koala_protocols::Completeness;

/// How long connecting to the service may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// An API connection idle this long between requests is closed.
const API_IDLE: Duration = Duration::from_secs(300);
/// A connection whose first request is not authorized this long after the
/// accept is closed, however it trickles bytes: strangers cannot hold the
/// connection slots.
const FIRST_REQUEST_WAIT: Duration = Duration::from_secs(10);

/// An answer that is not 200: status and message.
type Failure = (u16, String);

/// API connections being served.
static OPEN: AtomicUsize = AtomicUsize::new(0);
/// Bytes retained by `POST /v1/background`.
static BACKGROUND_BYTES: AtomicUsize = AtomicUsize::new(0);
/// Connections past the cap waiting for their 429; beyond, they are
/// closed unanswered (a flood costs neither threads nor fds).
const REJECT_QUEUE: usize = 64;
/// How long a rejected connection is given to send its request and read
/// the 429 (closing with its request unread would reset the connection
/// and could destroy the answer).
const REJECT_LINGER: Duration = Duration::from_millis(500);

/// One API connection counted in [`OPEN`] while it is served.
struct Slot;

impl Drop for Slot {
    fn drop(&mut self) {
        OPEN.fetch_sub(1, Ordering::Relaxed);
    }
}

pub(crate) fn run(listener: TcpListener, replayer: &'static Replayer) {
    let rejects = start_rejecter(replayer.max_connections);
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(stream) => stream,
            Err(_) => {
                // Out of fds (EMFILE) or memory: retrying at once would spin.
                std::thread::sleep(crate::outbound::ACCEPT_BACKOFF);
                continue;
            }
        };
        if OPEN.fetch_add(1, Ordering::Relaxed) >= replayer.max_connections {
            OPEN.fetch_sub(1, Ordering::Relaxed);
            // A full queue (or no rejecter thread): closed unanswered.
            if let Some(rejects) = &rejects {
                let _ = rejects.try_send(stream);
            }
            continue;
        }
        let slot = Slot;
        let spawned = koala_runtime::thread::spawn_internal("koala-inbound", move || {
            let _slot = slot;
            serve(stream, replayer);
        });
        if let Err(error) = spawned {
            tracing::error!(%error, "inbound server: cannot start a connection thread");
        }
    }
}

/// The thread that answers connections past the cap, one at a time: 429
/// and close.
fn start_rejecter(max: usize) -> Option<mpsc::SyncSender<TcpStream>> {
    let (sender, receiver) = mpsc::sync_channel::<TcpStream>(REJECT_QUEUE);
    let body = error_body(&format!(
        "too many replay API connections: {max} are open (KOALA_REPLAY_MAX_CONNECTIONS); close idle ones or raise it"
    ));
    let spawned = koala_runtime::thread::spawn_internal("koala-inbound-reject", move || {
        let mut rejected: u64 = 0;
        for mut stream in receiver {
            rejected += 1;
            if rejected == 1 {
                tracing::warn!(
                    max,
                    "replay API: a connection past KOALA_REPLAY_MAX_CONNECTIONS answered 429 (further ones are logged at DEBUG)"
                );
            } else {
                tracing::debug!(
                    max,
                    rejected,
                    "replay API: a connection past the cap answered 429"
                );
            }
            let _ = stream.set_write_timeout(Some(REJECT_LINGER));
            let _ = http::write_json(&mut stream, 429, &body, true);
            let _ = stream.shutdown(Shutdown::Write);
            // Take what the client sends until it closes, or the linger ends.
            let _ = stream.set_read_timeout(Some(REJECT_LINGER));
            let deadline = Instant::now() + REJECT_LINGER;
            let mut sink = [0u8; 4096];
            while Instant::now() < deadline && matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
        }
    });
    match spawned {
        Ok(_) => Some(sender),
        Err(error) => {
            tracing::error!(%error, "inbound server: cannot start the thread that answers 429");
            None
        }
    }
}

/// Whether a request presenting `token` may use the API of `replayer`.
fn authorize(replayer: &Replayer, token: Option<&str>) -> Result<(), Failure> {
    let Some(expected) = &replayer.token else {
        return Err((
            401,
            "this replay server has no token, so it refuses every request: start the service with KOALA_REPLAY_TOKEN=<secret> and send `Authorization: Bearer <secret>` (koala replay -- CMD does both)".into(),
        ));
    };
    match token {
        None => Err((
            401,
            "missing token: send `Authorization: Bearer <KOALA_REPLAY_TOKEN of the service>` (koala replay: --token or KOALA_REPLAY_TOKEN)".into(),
        )),
        Some(token) if http::token_matches(token.as_bytes(), expected.0.as_bytes()) => Ok(()),
        Some(_) => Err((
            401,
            "wrong token: it is not the service's KOALA_REPLAY_TOKEN".into(),
        )),
    }
}

fn serve(stream: TcpStream, replayer: &'static Replayer) {
    let _ = stream.set_nodelay(true);
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let first_request = Cell::new(Some(Instant::now() + FIRST_REQUEST_WAIT));
    let mut reader = BufReader::new(ApiStream::new(stream, &first_request));
    loop {
        let read = next_request(&mut reader, replayer.max_body_bytes, |token| {
            authorize(replayer, token)
        });
        let (status, body, close) = match read {
            Ok(request) => {
                let close = request.close;
                let (status, body) = route(&request, replayer);
                (status, body, close)
            }
            Err(ReadError::Closed) => return,
            Err(ReadError::Reject(status, message)) => (status, error_body(&message), true),
        };
        if http::write_json(&mut writer, status, &body, close).is_err() || close {
            return;
        }
    }
}

/// An API connection's stream. Until the connection's first request is
/// authorized, reads end at the deadline in `first_request`: a per-read
/// timeout alone would let a stranger sending a byte now and then hold the
/// connection's slot forever. Then reads wait up to [`API_IDLE`] each.
struct ApiStream<'a> {
    stream: TcpStream,
    first_request: &'a Cell<Option<Instant>>,
    idle_timeout_set: bool,
}

impl<'a> ApiStream<'a> {
    fn new(stream: TcpStream, first_request: &'a Cell<Option<Instant>>) -> Self {
        ApiStream {
            stream,
            first_request,
            idle_timeout_set: false,
        }
    }
}

impl Read for ApiStream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self.first_request.get() {
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(ErrorKind::TimedOut.into());
                }
                self.stream.set_read_timeout(Some(left))?;
            }
            None if !self.idle_timeout_set => {
                self.stream.set_read_timeout(Some(API_IDLE))?;
                self.idle_timeout_set = true;
            }
            None => {}
        }
        self.stream.read(buf)
    }
}

/// Reads the connection's next request; an authorized one lifts the
/// first request's deadline (before its body is read).
fn next_request(
    reader: &mut BufReader<ApiStream>,
    max_body: usize,
    authorize: impl Fn(Option<&str>) -> Result<(), Failure>,
) -> Result<Request, ReadError> {
    let first_request = reader.get_ref().first_request;
    http::read_request(reader, max_body, |token| {
        authorize(token)?;
        first_request.set(None);
        Ok(())
    })
}

fn error_body(message: &str) -> Vec<u8> {
    serde_json::to_vec(&ApiError {
        error: message.to_string(),
    })
    .unwrap_or_default()
}

fn route(request: &Request, replayer: &'static Replayer) -> (u16, Vec<u8>) {
    let result = match (request.method.as_str(), request.path.as_str()) {
        ("POST", "/v1/replay") => replay(&request.body, replayer).and_then(|r| json(&r)),
        ("GET", "/v1/status") => json(&status(replayer)),
        ("POST", "/v1/background") => background(&request.body, replayer),
        (_, "/v1/replay" | "/v1/background") => Err((405, format!("use POST on {}", request.path))),
        (_, "/v1/status") => Err((405, "use GET on /v1/status".into())),
        (_, path) => Err((
            404,
            format!("no such endpoint {path}; see /v1/replay, /v1/status, /v1/background"),
        )),
    };
    match result {
        Ok(body) => (200, body),
        Err((status, message)) => {
            tracing::debug!(status, %message, "replay API error");
            (status, error_body(&message))
        }
    }
}

fn json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, Failure> {
    serde_json::to_vec(value).map_err(|e| (500, format!("cannot encode the answer: {e}")))
}

fn status(replayer: &Replayer) -> Status {
    let registry = replayer.registry();
    let c = &registry.counters;
    Status {
        status: "ok".into(),
        pid: std::process::id(),
        inbound: replayer.inbound_addr.to_string(),
        outbound: replayer.outbound_addr.to_string(),
        sut: replayer.sut_addr.to_string(),
        uptime_ms: replayer.started.elapsed().as_millis() as u64,
        sessions_replayed: c.sessions_replayed.load(Ordering::Relaxed),
        sessions_in_flight: registry.in_flight() as u64,
        calls_matched: c.calls_matched.load(Ordering::Relaxed),
        calls_unmatched: c.calls_unmatched.load(Ordering::Relaxed),
        background_calls_served: c.background_calls_served.load(Ordering::Relaxed),
        background_records: c.background_records.load(Ordering::Relaxed),
        outbound_refused: crate::outbound::refused_connections(),
        unattributed_calls_served: c.unattributed_calls_served.load(Ordering::Relaxed),
    }
}

/// `POST /v1/background`: JSON lines whose calls answer start-up traffic.
/// What it retains is bounded in all by `KOALA_REPLAY_MAX_BACKGROUND_BYTES`.
fn background(body: &[u8], replayer: &Replayer) -> Result<Vec<u8>, Failure> {
    let max = replayer.max_background_bytes;
    let reserved = BACKGROUND_BYTES.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
        held.checked_add(body.len()).filter(|&total| total <= max)
    });
    if let Err(held) = reserved {
        return Err((
            413,
            format!(
                "background records of {} bytes would retain more than the {max}-byte limit (KOALA_REPLAY_MAX_BACKGROUND_BYTES); {held} bytes are held already, nothing of this body was kept",
                body.len()
            ),
        ));
    }
    let loaded = load_background(body, replayer);
    if loaded.is_err() {
        // Nothing of a rejected body is kept.
        BACKGROUND_BYTES.fetch_sub(body.len(), Ordering::Relaxed);
    }
    loaded
}

fn load_background(body: &[u8], replayer: &Replayer) -> Result<Vec<u8>, Failure> {
    let text = std::str::from_utf8(body)
        .map_err(|_| (400, "the body is not UTF-8 JSON lines".to_string()))?;
    let mut records = Vec::new();
    for (index, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let record = read_session_line(line)
            .map_err(|e| (400, format!("line {}: invalid record: {e}", index + 1)))?;
        records.push(record);
    }
    let loaded = replayer.registry().add_background(&records);
    json(&BackgroundLoaded { loaded })
}

/// `POST /v1/replay`.
fn replay(body: &[u8], replayer: &Replayer) -> Result<ReplayResult, Failure> {
    let text =
        std::str::from_utf8(body).map_err(|_| (400, "the body is not UTF-8 JSON".to_string()))?;
    let session =
        read_session_line(text.trim()).map_err(|e| (400, format!("invalid session: {e}")))?;
    if session.is_background() {
        return Err((
            400,
            "a background record is not replayed: POST it to /v1/background".into(),
        ));
    }
    let registry = replayer.registry();
    let replay = registry.begin(session);
    let outcome = drive(&replay, replayer);
    registry.end(&replay);
    let (response, response_end, durations) = outcome?;
    let (calls, unmatched) = replay.calls();
    Ok(ReplayResult {
        id: replay.session.id.clone(),
        replay: replay.id,
        sut: replayer.sut_addr.to_string(),
        response: Payload::new(response),
        recorded_response: replay.session.inbound.response.clone(),
        response_end: response_end.to_string(),
        calls,
        missing: replay.missing(),
        unmatched,
        durations,
    })
}

/// The byte the inbound server sends before a request recorded through the
/// service's TLS library (a TLS handshake record's first byte): the TLS
/// hooks take it off before the service's first TLS read.
pub const TLS_MARKER: u8 = 0x16;

/// What a replayed TLS client gets as its peer's certificate (the TLS hooks
/// of libkoala.so hand it out; see docs/tls.md).
pub use koala_protocols::tls::stand_in_certificate;

/// Sends the recorded request to the service and reads its response.
fn drive(
    replay: &Replay,
    replayer: &Replayer,
) -> Result<(Vec<u8>, &'static str, Durations), Failure> {
    let sut = replayer.sut_addr;
    let (mut stream, port) = connect_tagged(sut, replay.id, replayer).map_err(|e| {
        (
            502,
            format!("cannot connect to the service at {sut} (KOALA_SUT_ADDR): {e}"),
        )
    })?;
    let connected = replay.started.elapsed();
    let request = replay.session.inbound.request.as_bytes();
    let sent_at = Instant::now();
    // Recorded through the service's TLS library: the service's TLS calls
    // are answered in plaintext, and one marker byte first makes a server
    // that peeks to tell TLS from plain HTTP (nginx) take the TLS path.
    let marker: &[u8] = if replay.session.inbound.tls == koala_session::Tls::Plaintext {
        &[TLS_MARKER]
    } else {
        &[]
    };
    let result = stream
        .write_all(&[marker, request].concat())
        .map_err(|e| {
            (
                502,
                format!(
                    "the service at {sut} closed the connection before taking the request: {e}"
                ),
            )
        })
        .and_then(|()| read_response(&mut stream, replay, replayer, sent_at));
    replayer.server_tables().set_inbound(port, 0);
    let (response, end, first_byte) = result?;
    let response_ms = ms(sent_at.elapsed());
    let durations = Durations {
        total_ms: ms(replay.started.elapsed()),
        connect_ms: ms(connected),
        first_byte_ms: first_byte.map_or(0.0, ms),
        response_ms,
    };
    Ok((response, end, durations))
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// Reads the service's response: until the request's protocol frames it
/// complete (HTTP, FastCGI, RESP...; or the bytes equal the recorded
/// response), the service closes, or — for a protocol koala cannot frame —
/// it is silent for KOALA_REPLAY_IDLE_MS.
fn read_response(
    stream: &mut TcpStream,
    replay: &Replay,
    replayer: &Replayer,
    sent_at: Instant,
) -> Result<(Vec<u8>, &'static str, Option<Duration>), Failure> {
    let request = replay.session.inbound.request.as_bytes();
    let recorded = replay.session.inbound.response.as_bytes();
    let protocol = koala_protocols::detect_request(request).or_else(|| {
        recorded
            .starts_with(b"HTTP/1.")
            .then_some(&koala_protocols::http::Http as &dyn koala_protocols::Protocol)
    });
    let deadline = sent_at + replayer.timeout;
    let mut response = Vec::new();
    let mut first_byte = None;
    let mut chunk = vec![0u8; 64 << 10];
    // Whether the response so far is a valid beginning the protocol can
    // tell the end of: then silence does not end it.
    let mut framable = protocol.is_some();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err((
                504,
                format!(
                    "the service did not finish its response within {} ms (KOALA_REPLAY_TIMEOUT_MS); {} bytes received",
                    replayer.timeout.as_millis(),
                    response.len()
                ),
            ));
        }
        let wait = if response.is_empty() || framable {
            left
        } else {
            left.min(replayer.idle)
        };
        let _ = stream.set_read_timeout(Some(wait));
        match stream.read(&mut chunk) {
            Ok(0) => return Ok((response, "closed", first_byte)),
            Ok(n) => {
                first_byte.get_or_insert_with(|| sent_at.elapsed());
                response.extend_from_slice(&chunk[..n]);
                if response == recorded {
                    return Ok((response, "framed", first_byte));
                }
                if let Some(protocol) = protocol {
                    match protocol.frame_response(request, &response) {
                        Completeness::Complete(length) => {
                            response.truncate(length);
                            return Ok((response, "framed", first_byte));
                        }
                        Completeness::NeedMore => framable = true,
                        // An end the bytes cannot tell (an HTTP body
                        // delimited by the close): wait for the close if
                        // the protocol says one comes, else for silence.
                        Completeness::Unknown => {
                            framable = protocol.closes_after(request, &response)
                        }
                    }
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if !response.is_empty() && !framable {
                    return Ok((response, "idle", first_byte));
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) if !response.is_empty() => return Ok((response, "closed", first_byte)),
            Err(e) => {
                return Err((
                    502,
                    format!("the service reset the connection without answering: {e}"),
                ));
            }
        }
    }
}

/// Connects to the service and tags the connection's source port with
/// replay `id` in the shared table, before the request is sent: whichever
/// process reads the request (a forked worker) finds the tag there.
fn connect_tagged(
    sut: SocketAddr,
    id: u64,
    replayer: &Replayer,
) -> std::io::Result<(TcpStream, u16)> {
    let stream = TcpStream::connect_timeout(&sut, CONNECT_TIMEOUT)?;
    let port = stream.local_addr()?.port();
    replayer.server_tables().set_inbound(port, id);
    stream.set_nodelay(true)?;
    Ok((stream, port))
}

/// Sessions given in `KOALA_REPLAY_BACKGROUND` (a file or a directory).
pub(crate) fn load_background_files(path: &std::path::Path) -> Result<Vec<Session>, String> {
    let files = koala_session::session_files(&[path.to_path_buf()]).map_err(|e| e.to_string())?;
    let mut records = Vec::new();
    for file in files {
        for line in koala_session::read_sessions_file(&file).map_err(|e| e.to_string())? {
            match line {
                // Sessions contribute their connection set-up only.
                Ok(record) => records.push(record),
                Err(error) => {
                    tracing::warn!(file = %file.display(), %error, "KOALA_REPLAY_BACKGROUND: bad line skipped")
                }
            }
        }
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connected pair: the client end, and the server end as the API reads it.
    fn pair(first_request: &Cell<Option<Instant>>) -> (TcpStream, BufReader<ApiStream<'_>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (
            client,
            BufReader::new(ApiStream::new(server, first_request)),
        )
    }

    fn allow(_: Option<&str>) -> Result<(), Failure> {
        Ok(())
    }

    #[test]
    fn a_trickled_first_request_is_cut_at_its_deadline() {
        let wait = Duration::from_millis(300);
        let first_request = Cell::new(Some(Instant::now() + wait));
        let (mut client, mut reader) = pair(&first_request);
        // A stranger sends a byte of a request head every 50 ms, each well
        // within a per-read timeout, for much longer than the deadline.
        let trickle = std::thread::spawn(move || {
            for byte in
                b"GET /v1/status HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
            {
                if client.write_all(&[*byte]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let started = Instant::now();
        let read = next_request(&mut reader, 16, allow);
        let took = started.elapsed();
        assert!(
            matches!(read, Err(ReadError::Closed)),
            "{:?}",
            read.map(|r| r.path)
        );
        assert!(
            took < wait + Duration::from_millis(1500),
            "closed {took:?} after the accept, the deadline is {wait:?}"
        );
        drop(reader);
        trickle.join().unwrap();
    }

    #[test]
    fn an_authorized_request_lifts_the_deadline() {
        let first_request = Cell::new(Some(Instant::now() + Duration::from_millis(100)));
        let (mut client, mut reader) = pair(&first_request);
        client
            .write_all(b"GET /v1/status HTTP/1.1\r\n\r\n")
            .unwrap();
        let first = next_request(&mut reader, 16, allow).map(|r| r.path);
        assert_eq!(first.ok().as_deref(), Some("/v1/status"));
        assert_eq!(first_request.get(), None);
        // A client idle past the first request's deadline keeps its connection.
        std::thread::sleep(Duration::from_millis(200));
        client.write_all(b"GET /v1/next HTTP/1.1\r\n\r\n").unwrap();
        let second = next_request(&mut reader, 16, allow).map(|r| r.path);
        assert_eq!(second.ok().as_deref(), Some("/v1/next"));
    }

    #[test]
    fn a_rejected_first_request_keeps_the_deadline() {
        let first_request = Cell::new(Some(Instant::now() + Duration::from_secs(10)));
        let (mut client, mut reader) = pair(&first_request);
        client
            .write_all(b"GET /v1/status HTTP/1.1\r\n\r\n")
            .unwrap();
        let read = next_request(&mut reader, 16, |_| Err((401, "no".into())));
        assert!(matches!(read, Err(ReadError::Reject(401, _))));
        assert!(first_request.get().is_some());
    }
}
