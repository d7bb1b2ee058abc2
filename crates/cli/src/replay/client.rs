//! A small HTTP/1.1 client for the inbound server's API, one keep-alive
//! connection per client.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The largest response head accepted from the API.
const MAX_HEAD: usize = 64 * 1024;
/// Connecting never waits longer than this, whatever `--timeout` says.
const MAX_CONNECT: Duration = Duration::from_secs(10);

/// An API answer.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// The open connections of all workers, so that an interrupted run can shut
/// them down and wake workers blocked in a read.
#[derive(Default)]
pub struct Connections {
    streams: Mutex<Vec<Option<TcpStream>>>,
    closed: std::sync::atomic::AtomicBool,
}

impl Connections {
    fn register(&self, slot: usize, stream: &TcpStream) {
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        if streams.len() <= slot {
            streams.resize_with(slot + 1, || None);
        }
        streams[slot] = stream.try_clone().ok();
        if self.closed.load(std::sync::atomic::Ordering::SeqCst) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// Shuts every connection down, now and as they are made.
    pub fn shutdown_all(&self) {
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        let streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        for stream in streams.iter().flatten() {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

pub struct Client {
    addr: SocketAddr,
    timeout: Duration,
    /// The run's token (`KOALA_REPLAY_TOKEN`), sent with every request.
    token: Option<String>,
    conn: Option<BufReader<TcpStream>>,
    registry: Option<(Arc<Connections>, usize)>,
}

/// Why one attempt failed, and whether a fresh connection may be tried.
struct Failure {
    message: String,
    /// Nothing of an answer was read: the server closed an idle keep-alive
    /// connection before it saw the request.
    stale: bool,
}

impl Client {
    pub fn new(addr: SocketAddr, timeout: Duration, token: Option<&str>) -> Client {
        Client {
            addr,
            timeout,
            token: token.map(str::to_string),
            conn: None,
            registry: None,
        }
    }

    /// Registers the connections this client makes in `registry`, at `slot`.
    pub fn registered(mut self, registry: Arc<Connections>, slot: usize) -> Client {
        self.registry = Some((registry, slot));
        self
    }

    pub fn get(&mut self, path: &str) -> Result<Response, String> {
        self.request("GET", path, None)
    }

    pub fn post(&mut self, path: &str, body: &[u8]) -> Result<Response, String> {
        self.request("POST", path, Some(body))
    }

    /// Sends one request and reads its answer. A request that fails on a
    /// reused connection before any byte of the answer arrived is sent once
    /// more on a new connection (the server may close idle connections).
    fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Response, String> {
        let reused = self.conn.is_some();
        match self.attempt(method, path, body) {
            Ok(response) => Ok(response),
            Err(failure) => {
                self.conn = None;
                if reused && failure.stale {
                    self.attempt(method, path, body).map_err(|failure| {
                        self.conn = None;
                        failure.message
                    })
                } else {
                    Err(failure.message)
                }
            }
        }
    }

    fn connect(&mut self) -> Result<&mut BufReader<TcpStream>, Failure> {
        if self.conn.is_none() {
            let failure = |e: io::Error| Failure {
                message: format!("cannot connect to the inbound server at {}: {e}", self.addr),
                stale: false,
            };
            let stream = TcpStream::connect_timeout(&self.addr, self.timeout.min(MAX_CONNECT))
                .map_err(failure)?;
            // Requests are written in one piece; no Nagle delay on them.
            stream.set_nodelay(true).map_err(failure)?;
            stream
                .set_read_timeout(Some(self.timeout))
                .map_err(failure)?;
            stream
                .set_write_timeout(Some(self.timeout))
                .map_err(failure)?;
            if let Some((registry, slot)) = &self.registry {
                registry.register(*slot, &stream);
            }
            self.conn = Some(BufReader::with_capacity(64 * 1024, stream));
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }

    fn attempt(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Response, Failure> {
        let addr = self.addr;
        let timeout = self.timeout;
        let authorization = self
            .token
            .as_deref()
            .map(|token| format!("Authorization: Bearer {token}\r\n"))
            .unwrap_or_default();
        let conn = self.connect()?;
        let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{authorization}");
        if let Some(body) = body {
            request.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        request.push_str("\r\n");
        let mut bytes = request.into_bytes();
        bytes.extend_from_slice(body.unwrap_or_default());
        if let Err(e) = conn.get_mut().write_all(&bytes) {
            return Err(Failure {
                message: io_message("sending the request", &e, timeout),
                stale: true,
            });
        }
        let (response, keep) = read_response(conn).map_err(|(e, started)| Failure {
            message: io_message("reading the answer", &e, timeout),
            stale: !started,
        })?;
        if !keep {
            self.conn = None;
        }
        Ok(response)
    }
}

fn io_message(doing: &str, error: &io::Error, timeout: Duration) -> String {
    match error.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            format!(
                "{doing}: no answer within {} s (--timeout)",
                timeout.as_secs_f64()
            )
        }
        io::ErrorKind::UnexpectedEof => {
            format!("{doing}: the inbound server closed the connection")
        }
        _ => format!("{doing}: {error}"),
    }
}

/// Reads one HTTP/1.x response. Returns it and whether the connection can be
/// used again; on error, whether any byte had been read.
fn read_response<R: BufRead>(reader: &mut R) -> Result<(Response, bool), (io::Error, bool)> {
    let mut head = Vec::new();
    let mut lines = Vec::new();
    loop {
        let start = head.len();
        let limit = (MAX_HEAD - head.len()) as u64 + 1;
        let read = Read::take(&mut *reader, limit)
            .read_until(b'\n', &mut head)
            .map_err(|e| (e, !head.is_empty()))?;
        if read == 0 {
            return Err((io::ErrorKind::UnexpectedEof.into(), !head.is_empty()));
        }
        if head.len() > MAX_HEAD {
            return Err((invalid("the answer's head is too large"), true));
        }
        let line = String::from_utf8_lossy(&head[start..])
            .trim_end()
            .to_string();
        if line.is_empty() {
            if lines.is_empty() {
                continue; // stray CRLF before the status line
            }
            break;
        }
        lines.push(line);
    }
    let started = true;
    let status_line = &lines[0];
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let status: u16 = parts
        .next()
        .and_then(|code| code.parse().ok())
        .filter(|_| version.starts_with("HTTP/1."))
        .ok_or_else(|| {
            (
                invalid(&format!("not an HTTP answer: {status_line:?}")),
                started,
            )
        })?;
    let mut length = None;
    let mut chunked = false;
    let mut keep = version != "HTTP/1.0";
    for line in &lines[1..] {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => {
                length = Some(
                    value
                        .parse::<usize>()
                        .map_err(|_| (invalid("bad Content-Length in the answer"), started))?,
                )
            }
            "transfer-encoding" => chunked = value.to_ascii_lowercase().ends_with("chunked"),
            "connection" => {
                let value = value.to_ascii_lowercase();
                if value.contains("close") {
                    keep = false;
                } else if value.contains("keep-alive") {
                    keep = true;
                }
            }
            _ => {}
        }
    }
    let mut body = Vec::new();
    let no_body = status / 100 == 1 || status == 204 || status == 304;
    if no_body {
    } else if chunked {
        read_chunked(reader, &mut body).map_err(|e| (e, started))?;
    } else if let Some(length) = length {
        body.resize(length, 0);
        reader.read_exact(&mut body).map_err(|e| (e, started))?;
    } else {
        reader.read_to_end(&mut body).map_err(|e| (e, started))?;
        keep = false;
    }
    Ok((Response { status, body }, keep))
}

fn read_chunked<R: BufRead>(reader: &mut R, body: &mut Vec<u8>) -> io::Result<()> {
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let size = line.trim().split(';').next().unwrap_or_default();
        let size = usize::from_str_radix(size.trim(), 16).map_err(|_| invalid("bad chunk size"))?;
        if size == 0 {
            // Trailers, up to the empty line.
            loop {
                line.clear();
                if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
                    return Ok(());
                }
            }
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..])?;
        line.clear();
        reader.read_line(&mut line)?;
    }
}

fn invalid(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::thread;

    fn parse(bytes: &[u8]) -> Result<(Response, bool), (io::Error, bool)> {
        read_response(&mut BufReader::new(bytes))
    }

    #[test]
    fn answers_are_framed_by_length_chunks_or_close() {
        let (r, keep) = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA").unwrap();
        assert_eq!((r.status, r.body.as_slice(), keep), (200, &b"ok"[..], true));
        let (r, keep) =
            parse(b"HTTP/1.1 502 Bad Gateway\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=1\r\nde\r\n0\r\nT: 1\r\n\r\n")
                .unwrap();
        assert_eq!(
            (r.status, r.body.as_slice(), keep),
            (502, &b"abcde"[..], true)
        );
        let (r, keep) = parse(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it").unwrap();
        assert_eq!((r.body.as_slice(), keep), (&b"all of it"[..], false));
        let (_, keep) = parse(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n").unwrap();
        assert!(!keep);
    }

    #[test]
    fn errors_say_whether_anything_was_read() {
        let (_, started) = parse(b"").unwrap_err();
        assert!(!started);
        let (e, started) = parse(b"SSH-2.0\r\n\r\n").unwrap_err();
        assert!(
            started && e.to_string().contains("not an HTTP answer"),
            "{e}"
        );
        let (_, started) = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort").unwrap_err();
        assert!(started);
    }

    #[test]
    fn keep_alive_and_reconnect_after_an_idle_close() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = thread::spawn(move || {
            // First connection: answers one request, then closes (as a server
            // closing an idle keep-alive connection would).
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap() > 0 && line != "\r\n" {
                line.clear();
            }
            (&stream)
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none")
                .unwrap();
            drop(reader);
            drop(stream);
            // Second connection: reads the retried POST with its body.
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut length = 0;
            loop {
                line.clear();
                reader.read_line(&mut line).unwrap();
                if line == "\r\n" {
                    break;
                }
                if let Some(value) = line.strip_prefix("Content-Length: ") {
                    length = value.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
            (&stream).write_all(answer.as_bytes()).unwrap();
            (&stream).write_all(&body).unwrap();
        });
        let mut client = Client::new(addr, Duration::from_secs(5), None);
        assert_eq!(client.get("/v1/status").unwrap().body, b"one");
        assert!(
            client.conn.is_some(),
            "the connection is kept for the next request"
        );
        let response = client.post("/v1/replay", b"{\"id\":1}").unwrap();
        assert_eq!(response.body, b"{\"id\":1}");
        server.join().unwrap();
    }

    #[test]
    fn a_refused_connection_names_the_server() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let error = Client::new(addr, Duration::from_secs(1), None)
            .get("/v1/status")
            .unwrap_err();
        assert!(
            error.contains(&format!("cannot connect to the inbound server at {addr}")),
            "{error}"
        );
    }

    #[test]
    fn every_request_carries_the_token() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut heads = Vec::new();
            for _ in 0..2 {
                let mut head = String::new();
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    head.push_str(&line);
                    if line == "\r\n" {
                        break;
                    }
                }
                if head.starts_with("POST") {
                    let mut body = [0u8; 2];
                    reader.read_exact(&mut body).unwrap();
                }
                (&stream)
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                    .unwrap();
                heads.push(head);
            }
            heads
        });
        let mut client = Client::new(addr, Duration::from_secs(5), Some("t0k3n"));
        client.get("/v1/status").unwrap();
        client.post("/v1/replay", b"{}").unwrap();
        let heads = server.join().unwrap();
        assert_eq!(
            heads,
            [
                format!(
                    "GET /v1/status HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer t0k3n\r\n\r\n"
                ),
                format!(
                    "POST /v1/replay HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer t0k3n\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n"
                ),
            ]
        );
    }
}
