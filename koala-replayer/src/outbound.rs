//! The outbound server: every outbound connection the service makes in
//! replay mode lands here, and is answered from the recording.
//!
//! One internal thread per connection: no fixed pool bounds the service's
//! concurrency. A connection is the service's when its shared slot (written
//! by the library's redirect) is there at accept, or within `SLOT_WAIT`;
//! the slot is taken then, so no later connection from the port gets it. At
//! most `MAX_WAITING` connections wait for their slot at once: past them a
//! connection without one is refused at once.
//! For each connection: serve the recorded greeting if the dependency spoke
//! first; recognise the protocol (from the greeting, the first request, or
//! what was recorded for the destination); then frame each request with it
//! (or, for a protocol koala does not know, by a recorded request it
//! equals, or silence), read the connection's shared slot to learn which
//! replay it belongs to, and answer with the matching recorded response —
//! closing the connection where the dependency did.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use koala_protocols::{Completeness, Protocol};

use crate::registry::Request;
use crate::replayer::Replayer;

static NEXT_CONNECTION: AtomicU64 = AtomicU64::new(1);

/// Accepts redirected connections until the process ends.
pub(crate) fn run(listener: TcpListener, replayer: &'static Replayer) {
    let waiting = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(stream) => stream,
            Err(_) => {
                // Out of fds (EMFILE) or memory: retrying at once would spin.
                std::thread::sleep(ACCEPT_BACKOFF);
                continue;
            }
        };
        let accepted_at = koala_runtime::clock::monotonic_ns();
        let Ok(peer) = stream.peer_addr() else {
            continue;
        };
        // The service's hook normally wrote the slot before this accept:
        // such a connection is served at once, whatever the number of others.
        let since = accepted_at.saturating_sub(SLOT_FRESHNESS.as_nanos() as u64);
        let slot = match replayer
            .server_tables()
            .take_outbound_destination(peer.port(), since)
        {
            Some(destination) => Slot::Taken(destination),
            None => match WaitTicket::admit(&waiting, MAX_WAITING) {
                Some(ticket) => Slot::Awaited(ticket),
                None => {
                    refuse(&stream, peer);
                    continue;
                }
            },
        };
        let spawned = koala_runtime::thread::spawn_internal("koala-outbound", move || {
            serve(stream, peer, replayer, accepted_at, slot);
        });
        if let Err(error) = spawned {
            tracing::error!(%error, "outbound server: cannot start a connection thread");
        }
    }
}

/// How long an accept loop pauses after a failed accept.
pub(crate) const ACCEPT_BACKOFF: Duration = Duration::from_millis(20);

/// Connections accepted without their slot that may wait for it at once:
/// past them, a connection without a slot is refused at once, so that a
/// local user's flood of connections costs the service neither threads nor
/// fds for long.
const MAX_WAITING: usize = 64;

/// A new connection's slot: taken at accept, or still to wait for.
enum Slot {
    Taken(SocketAddr),
    Awaited(WaitTicket),
}

/// One of the [`MAX_WAITING`] connections waiting for their slot.
struct WaitTicket(Arc<AtomicUsize>);

impl WaitTicket {
    /// A ticket if fewer than `max` connections are waiting.
    fn admit(waiting: &Arc<AtomicUsize>, max: usize) -> Option<WaitTicket> {
        waiting
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| WaitTicket(Arc::clone(waiting)))
    }
}

impl Drop for WaitTicket {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One redirected connection.
struct Connection<'a> {
    stream: TcpStream,
    replayer: &'static Replayer,
    port: u16,
    conn: u64,
    destination: Option<&'a str>,
    /// What the connection speaks, once known.
    protocol: Option<&'static dyn Protocol>,
    /// Bytes received and not yet answered.
    pending: Vec<u8>,
    /// When the first of them arrived.
    pending_since: Option<Instant>,
}

fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    replayer: &'static Replayer,
    accepted_at: u64,
    slot: Slot,
) {
    let _ = stream.set_nodelay(true);
    let tables = replayer.server_tables();
    let registry = replayer.registry();
    let port = peer.port();
    // Only the library's own redirect writes a slot: a connection without
    // one is someone else on the machine, who must not read the recording.
    let destination = match slot {
        Slot::Taken(destination) => Some(destination),
        Slot::Awaited(_ticket) => wait_for_slot(replayer, port, accepted_at),
    };
    let Some(destination) = destination else {
        refuse(&stream, peer);
        return;
    };
    let destination = Some(destination.to_string());
    let mut connection = Connection {
        stream,
        replayer,
        port,
        conn: NEXT_CONNECTION.fetch_add(1, Ordering::Relaxed),
        destination: destination.as_deref(),
        protocol: None,
        pending: Vec::new(),
        pending_since: None,
    };
    if let Some(greeting) = registry.greeting(
        tables.outbound_replay(port),
        connection.destination,
        connection.conn,
    ) {
        connection.protocol = koala_protocols::detect_greeting(&greeting);
        if connection.stream.write_all(&greeting).is_err() {
            return;
        }
    }
    let mut chunk = vec![0u8; 64 << 10];
    while let Some((request, arrived)) = connection.next_request(&mut chunk) {
        if connection.protocol.is_none() {
            connection.protocol = koala_protocols::detect_request(&request)
                .or_else(|| registry.recorded_protocol(connection.destination?));
        }
        // Read after the request arrived: the service wrote the slot before sending.
        let answer = registry.answer(Request {
            replay_id: tables.outbound_replay(port),
            bytes: &request,
            destination: connection.destination,
            conn: connection.conn,
            protocol: connection.protocol,
            arrived,
        });
        if let Some(response) = &answer.response
            && !response.is_empty()
            && connection.stream.write_all(response).is_err()
        {
            break;
        }
        if answer.close {
            let _ = connection.stream.shutdown(Shutdown::Both);
            break;
        }
    }
    registry.connection_closed(tables.outbound_replay(port), connection.conn);
}

/// How long to wait for a new connection's slot: the service's hook writes
/// it right after its connect() returns, usually before the accept. Generous,
/// since a connection still without a slot then is refused: only a
/// descheduled hook takes longer.
const SLOT_WAIT: Duration = Duration::from_secs(1);

/// Connections refused for want of a slot (or past [`MAX_WAITING`]), since
/// the process started.
static REFUSED: AtomicU64 = AtomicU64::new(0);

/// Closes a connection that no redirect registered: logged once (WARN),
/// then counted (DEBUG with the count).
fn refuse(stream: &TcpStream, peer: SocketAddr) {
    let _ = stream.shutdown(Shutdown::Both);
    let refused = REFUSED.fetch_add(1, Ordering::Relaxed) + 1;
    if refused == 1 {
        tracing::warn!(%peer, "outbound server: refused a connection that no redirect of the service registered (further ones are logged at DEBUG)");
    } else {
        tracing::debug!(%peer, refused, "outbound server: refused an unregistered connection");
    }
}

/// How many connections the outbound server refused (no redirect registered them).
pub fn refused_connections() -> u64 {
    REFUSED.load(Ordering::Relaxed)
}
/// A slot written this long before the accept belongs to an older
/// connection from the same port (one whose close the library missed).
const SLOT_FRESHNESS: Duration = Duration::from_secs(2);

/// Takes the original destination of the connection from `port`, accepted
/// at `accepted_at` (CLOCK_MONOTONIC ns).
fn wait_for_slot(replayer: &Replayer, port: u16, accepted_at: u64) -> Option<SocketAddr> {
    let since = accepted_at.saturating_sub(SLOT_FRESHNESS.as_nanos() as u64);
    let deadline = std::time::Instant::now() + SLOT_WAIT;
    loop {
        let destination = replayer
            .server_tables()
            .take_outbound_destination(port, since);
        if destination.is_some() || std::time::Instant::now() >= deadline {
            return destination;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

impl Connection<'_> {
    /// Reads until the pending bytes start with a complete request, and
    /// takes it, with the time its first byte arrived. `None` when the
    /// service closed the connection.
    fn next_request(&mut self, chunk: &mut [u8]) -> Option<(Vec<u8>, Instant)> {
        loop {
            let (complete, wait) = self.frame();
            if let Some(length) = complete {
                return Some(self.take(length));
            }
            let _ = self.stream.set_read_timeout(wait);
            match self.stream.read(chunk) {
                Ok(0) => return None,
                Ok(n) => {
                    self.pending_since.get_or_insert_with(Instant::now);
                    self.pending.extend_from_slice(&chunk[..n]);
                }
                // Silence after an unframable request: it is complete.
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    if !self.pending.is_empty() {
                        let length = self.pending.len();
                        return Some(self.take(length));
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return None,
            }
        }
    }

    fn take(&mut self, length: usize) -> (Vec<u8>, Instant) {
        let request = self.pending.drain(..length).collect();
        let arrived = match self.pending.is_empty() {
            true => self.pending_since.take(),
            // The rest arrived with this request.
            false => self.pending_since,
        };
        (request, arrived.unwrap_or_else(Instant::now))
    }

    /// How much of the pending bytes is a complete request, and how long to
    /// wait for more bytes otherwise (`None`: as long as it takes).
    fn frame(&self) -> (Option<usize>, Option<Duration>) {
        let pending = &self.pending;
        if pending.is_empty() {
            return (None, None);
        }
        let protocol = self
            .protocol
            .or_else(|| koala_protocols::detect_request(pending));
        if let Some(protocol) = protocol {
            match protocol.frame_request(pending) {
                Completeness::Complete(length) => return (Some(length), None),
                Completeness::NeedMore => return (None, None),
                Completeness::Unknown => {}
            }
        }
        // A protocol koala does not parse: complete when it equals a recorded
        // request, otherwise after KOALA_REPLAY_IDLE_MS of silence.
        let replay = self.replayer.server_tables().outbound_replay(self.port);
        match self.replayer.registry().recorded_prefix(replay, pending) {
            Completeness::Complete(length) => (Some(length), None),
            _ => (None, Some(self.replayer.idle)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_max_connections_wait_for_their_slot() {
        let waiting = Arc::new(AtomicUsize::new(0));
        let mut tickets: Vec<WaitTicket> = (0..MAX_WAITING)
            .map(|i| WaitTicket::admit(&waiting, MAX_WAITING).unwrap_or_else(|| panic!("{i}")))
            .collect();
        assert!(
            WaitTicket::admit(&waiting, MAX_WAITING).is_none(),
            "one more is refused at once"
        );
        assert_eq!(waiting.load(Ordering::Relaxed), MAX_WAITING);
        tickets.pop();
        let again = WaitTicket::admit(&waiting, MAX_WAITING);
        assert!(again.is_some(), "a finished wait frees its place");
        drop(again);
        tickets.clear();
        assert_eq!(
            waiting.load(Ordering::Relaxed),
            0,
            "every place is given back"
        );
    }
}
