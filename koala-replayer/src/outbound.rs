//! The outbound server: every outbound connection the service makes in
//! replay mode lands here, and is answered from the recording.
//!
//! One internal thread per connection: no fixed pool bounds concurrency.
//! For each connection: serve the recorded greeting if the dependency spoke
//! first; then frame each request (HTTP, RESP, MySQL, a recorded request, or
//! silence), read the connection's shared slot to learn which replay it
//! belongs to, and answer with the matching recorded response.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use koala_config::UnmatchedPolicy;

use crate::framing::{self, Completeness};
use crate::replayer::Replayer;

static NEXT_CONNECTION: AtomicU64 = AtomicU64::new(1);

/// Accepts redirected connections until the process ends.
pub(crate) fn run(listener: TcpListener, replayer: &'static Replayer) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let accepted_at = koala_runtime::clock::monotonic_ns();
        let spawned = koala_runtime::thread::spawn_internal("koala-outbound", move || {
            serve(stream, replayer, accepted_at);
        });
        if let Err(error) = spawned {
            tracing::error!(%error, "outbound server: cannot start a connection thread");
        }
    }
}

fn serve(mut stream: TcpStream, replayer: &'static Replayer, accepted_at: u64) {
    let Ok(peer) = stream.peer_addr() else { return };
    let _ = stream.set_nodelay(true);
    let conn = NEXT_CONNECTION.fetch_add(1, Ordering::Relaxed);
    let tables = replayer.server_tables();
    let registry = replayer.registry();
    let port = peer.port();
    let destination = wait_for_slot(replayer, port, accepted_at).map(|d| d.to_string());
    let destination = destination.as_deref();
    if let Some(greeting) = registry.greeting(tables.outbound_replay(port), destination, conn)
        && stream.write_all(&greeting).is_err()
    {
        return;
    }
    let mut pending: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    while let Some(request) = next_request(&mut stream, &mut pending, &mut chunk, replayer, port) {
        // Read after the request arrived: the service wrote the slot before sending.
        let replay = tables.outbound_replay(port);
        let answer = registry.answer(replay, &request, destination, conn);
        let Some(response) = answer.response else {
            refuse(&mut stream, &request, replayer.unmatched);
            break;
        };
        if stream.write_all(&response).is_err() {
            break;
        }
        if closes_after(&request, &response) {
            let _ = stream.shutdown(Shutdown::Both);
            break;
        }
    }
    registry.connection_closed(tables.outbound_replay(port), conn);
}

/// How long to wait for a new connection's slot: the service's hook writes
/// it right after its connect() returns, usually before the accept.
const SLOT_WAIT: Duration = Duration::from_millis(200);
/// A slot written this long before the accept belongs to an older
/// connection from the same port (one whose close the library missed).
const SLOT_FRESHNESS: Duration = Duration::from_secs(2);

/// The original destination of the connection from `port`, accepted at
/// `accepted_at` (CLOCK_MONOTONIC ns).
fn wait_for_slot(replayer: &Replayer, port: u16, accepted_at: u64) -> Option<std::net::SocketAddr> {
    let since = accepted_at.saturating_sub(SLOT_FRESHNESS.as_nanos() as u64);
    let deadline = std::time::Instant::now() + SLOT_WAIT;
    loop {
        let destination = replayer
            .server_tables()
            .outbound_destination_since(port, since);
        if destination.is_some() || std::time::Instant::now() >= deadline {
            return destination;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Reads until `pending` starts with a complete request, and takes it.
/// `None` when the service closed the connection.
fn next_request(
    stream: &mut TcpStream,
    pending: &mut Vec<u8>,
    chunk: &mut [u8],
    replayer: &Replayer,
    port: u16,
) -> Option<Vec<u8>> {
    loop {
        let (complete, wait) = frame(pending, replayer, port);
        if let Some(length) = complete {
            return Some(pending.drain(..length).collect());
        }
        let _ = stream.set_read_timeout(wait);
        match stream.read(chunk) {
            Ok(0) => return None,
            Ok(n) => pending.extend_from_slice(&chunk[..n]),
            // Silence after an unframable request: it is complete.
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if !pending.is_empty() {
                    return Some(std::mem::take(pending));
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
}

/// How much of `pending` is a complete request, and how long to wait for
/// more bytes otherwise (`None`: as long as it takes).
fn frame(pending: &[u8], replayer: &Replayer, port: u16) -> (Option<usize>, Option<Duration>) {
    if pending.is_empty() {
        return (None, None);
    }
    match framing::request(pending) {
        Completeness::Complete(length) => return (Some(length), None),
        Completeness::NeedMore => return (None, None),
        Completeness::Unknown => {}
    }
    // A protocol koala does not parse: complete when it equals a recorded
    // request, otherwise after KOALA_REPLAY_IDLE_MS of silence.
    let recorded = replayer
        .registry()
        .recorded_requests(replayer.server_tables().outbound_replay(port));
    let recorded: Vec<&[u8]> = recorded.iter().map(Vec::as_slice).collect();
    match framing::recorded_prefix(pending, &recorded) {
        Completeness::Complete(length) => (Some(length), None),
        _ => (None, Some(replayer.idle)),
    }
}

/// KOALA_REPLAY_UNMATCHED: close, or say why and close. Never a recorded
/// response that belongs to another request.
fn refuse(stream: &mut TcpStream, request: &[u8], policy: UnmatchedPolicy) {
    if policy == UnmatchedPolicy::Error {
        let message = "koala: no recorded call matches this request\n";
        let reply = if framing::http_request(request) != Completeness::Unknown {
            format!(
                "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{message}",
                message.len()
            )
        } else {
            message.to_string()
        };
        let _ = stream.write_all(reply.as_bytes());
    }
    let _ = stream.shutdown(Shutdown::Both);
}

/// Whether the dependency closed the connection after this response: an
/// HTTP exchange that says `Connection: close`, an HTTP/1.0 response without
/// keep-alive, or a body delimited by the end of the connection.
fn closes_after(request: &[u8], response: &[u8]) -> bool {
    if !response.starts_with(b"HTTP/1.") {
        return false;
    }
    let says_close = |message: &[u8]| {
        header(message, b"connection").is_some_and(|v| v.eq_ignore_ascii_case(b"close"))
    };
    if says_close(request) || says_close(response) {
        return true;
    }
    let keep_alive =
        header(response, b"connection").is_some_and(|v| v.eq_ignore_ascii_case(b"keep-alive"));
    if response.starts_with(b"HTTP/1.0") && !keep_alive {
        return true;
    }
    let head_request = request.starts_with(b"HEAD ");
    !matches!(
        framing::http_response(response, head_request),
        Completeness::Complete(_)
    )
}

/// The value of the first header `name` (lower-case) in an HTTP head.
fn header<'a>(message: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let head_end = message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(message.len());
    message[..head_end]
        .split(|&b| b == b'\n')
        .skip(1)
        .find_map(|line| {
            let colon = line.iter().position(|&b| b == b':')?;
            let (field, value) = line.split_at(colon);
            field
                .eq_ignore_ascii_case(name)
                .then(|| value[1..].trim_ascii())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_connections_close_when_the_recording_says_so() {
        let get = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        assert!(!closes_after(get, ok));
        assert!(closes_after(
            b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
            ok
        ));
        assert!(closes_after(
            get,
            b"HTTP/1.1 200 OK\r\nConnection: Close\r\nContent-Length: 2\r\n\r\nok"
        ));
        assert!(closes_after(
            get,
            b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"
        ));
        assert!(!closes_after(
            get,
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok"
        ));
        assert!(closes_after(
            get,
            b"HTTP/1.1 200 OK\r\n\r\nbody until close"
        ));
        assert!(
            !closes_after(b"*1\r\n$4\r\nPING\r\n", b"+PONG\r\n"),
            "other protocols stay open"
        );
    }

    #[test]
    fn headers_are_found_case_insensitively_in_the_head_only() {
        let message = b"HTTP/1.1 200 OK\r\nCONNECTION:  close \r\n\r\nConnection: keep-alive";
        assert_eq!(header(message, b"connection"), Some(&b"close"[..]));
        assert_eq!(header(message, b"date"), None);
    }
}
