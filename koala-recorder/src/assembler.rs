//! Turns socket events into sessions.
//!
//! The assembler sees every byte that crosses an observed TCP connection and
//! decides which session it belongs to (`docs/session-format.md` states the
//! rules for users):
//!
//! - An *inbound* connection (accepted) carries one session at a time. Bytes
//!   read from it are the request, bytes written the response; a read after
//!   a response has been written starts the next session (request → response
//!   → request). Whatever thread reads or writes, the bytes belong to that
//!   connection's session.
//! - A thread's *current session* is the session of the inbound connection it
//!   last read from or wrote to, or, when the thread has been delegated to a
//!   virtual thread by a helper hint, that virtual thread's session.
//! - An *outbound* connection (connected) carries calls. A call is the bytes
//!   sent until a response arrives, plus the bytes received until the next
//!   send. A call belongs to the current session of the thread that sent its
//!   first byte; its response belongs to that call whatever thread reads it.
//! - Calls of different sessions pipelined on one outbound connection (an
//!   event loop sharing one client connection) each get their own answer:
//!   the protocol catalogue frames the answers, which come back in order
//!   (`pipelined_calls`).
//! - Bytes received on an outbound connection before anything was sent are a
//!   greeting (server speaks first): a call with an empty request, in the
//!   session that opened the connection.
//! - Each call carries its connection's id and its position on it (0 = the
//!   first exchange after connect, counted across sessions), and whether the
//!   service read end-of-file after its response: replay opens and closes
//!   connections where the recording did.
//! - A read after a response continues the same request when the protocol
//!   catalogue says the request is not complete yet (FastCGI's trailing
//!   empty stdin record, an HTTP body after `100 Continue`).
//! - Pipelined HTTP requests, read together, are split into one session
//!   each when the session ends (`pipelining`).
//! - A session whose request is empty or whitespace and which made no calls
//!   (a readiness probe) is not written, only counted.
//! - Calls made outside any session — by a thread with no current session
//!   (start-up handshakes, pools being filled, background work), greetings on
//!   connections opened outside one, and calls of virtual threads that never
//!   wrote to a client — go to the process's *background record*, written
//!   like a session (`kind: background`) when it has been idle for the idle
//!   time, holds the maximum number of calls, or the process exits. Replay
//!   answers start-up traffic from these.
//!
//! The assembler does no I/O and reads no clock: callers pass the time, so
//! every rule is testable with synthetic events.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;

use koala_protocols::Completeness;
use koala_session::{EndReason, Kind, Tls};

use crate::record::{FinishedExchange, FinishedSession};
use pipelining::WriteTimes;

mod handoff;
mod pipelined_calls;
mod pipelining;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Accepted: a client of the service.
    Inbound,
    /// Connected: a dependency of the service.
    Outbound,
}

/// Bounds that keep memory finite whatever the host does.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_payload_bytes: usize,
    pub max_calls_per_session: usize,
    pub idle_ns: u64,
}

/// How many idle times a *waiting* session (see [`Assembler::close_idle`])
/// may stay silent before it is ended anyway: a stuck request still ends.
pub const WAITING_IDLE_FACTOR: u64 = 60;

impl Limits {
    /// The silence after which a waiting session ends: 60 idle times.
    pub fn waiting_ns(&self) -> u64 {
        self.idle_ns.saturating_mul(WAITING_IDLE_FACTOR)
    }
}

/// Counters of what the recorder did besides writing sessions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Background records written (calls made outside any session).
    pub background_records: u64,
    /// Virtual threads (helper hints) whose calls never met a client
    /// connection: their calls went to the background record.
    pub sessions_without_inbound: u64,
    /// Sessions inherited across fork and left untouched by the child: the
    /// parent writes them.
    pub sessions_left_to_parent: u64,
    /// Response bytes that arrived after their call's session was written.
    pub late_bytes: u64,
    pub calls_over_limit: u64,
    pub truncated_payloads: u64,
    /// Sessions not written because their request was empty or whitespace
    /// and they made no calls: readiness probes (connect and send a
    /// newline, or connect to a service that speaks first, and close).
    pub empty_sessions: u64,
    /// Exchanges written with `"tls": "ciphertext"`: TLS the library could
    /// not see into (a static or non-OpenSSL TLS library), not replayable.
    pub ciphertext_exchanges: u64,
    /// Calls sent by a thread serving no session while several sessions
    /// waited, none of which the bytes could be tied to (`handoff`): written
    /// in the background record with `unattributed: true`.
    pub unattributed_calls: u64,
}

impl Stats {
    /// What is left of these counts once `reported` was reported: field by
    /// field, never below zero.
    pub fn minus(&self, reported: &Stats) -> Stats {
        Stats {
            background_records: self
                .background_records
                .saturating_sub(reported.background_records),
            sessions_without_inbound: self
                .sessions_without_inbound
                .saturating_sub(reported.sessions_without_inbound),
            sessions_left_to_parent: self
                .sessions_left_to_parent
                .saturating_sub(reported.sessions_left_to_parent),
            late_bytes: self.late_bytes.saturating_sub(reported.late_bytes),
            calls_over_limit: self
                .calls_over_limit
                .saturating_sub(reported.calls_over_limit),
            truncated_payloads: self
                .truncated_payloads
                .saturating_sub(reported.truncated_payloads),
            empty_sessions: self.empty_sessions.saturating_sub(reported.empty_sessions),
            ciphertext_exchanges: self
                .ciphertext_exchanges
                .saturating_sub(reported.ciphertext_exchanges),
            unattributed_calls: self
                .unattributed_calls
                .saturating_sub(reported.unattributed_calls),
        }
    }
}

/// A map keyed by the assembler's own small integer ids (and thread ids):
/// no attacker chooses them, so a multiply-shift hash replaces SipHash on
/// the hot path.
type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_u64(u64::from(byte));
        }
    }

    fn write_u32(&mut self, value: u32) {
        self.write_u64(u64::from(value));
    }

    fn write_u64(&mut self, value: u64) {
        // Fibonacci hashing: spreads consecutive ids over the high bits
        // hashbrown uses.
        self.0 = (self.0 ^ value)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .rotate_left(26);
    }
}

/// Payload buffers kept for reuse, and the largest kept: bounds the memory
/// held (8 MiB) while covering the many small payloads of busy services.
const MAX_SPARE_BUFFERS: usize = 512;
const MAX_SPARE_CAPACITY: usize = 16 << 10;

type ConnId = u64;
type SessionKey = u64;
/// Calls are numbered in the order they start, so sorting ids sorts calls.
type CallId = u64;

/// Bytes in one direction, with the time of the first byte.
#[derive(Default)]
struct Buf {
    bytes: Vec<u8>,
    first_ns: u64,
    truncated: bool,
}

/// The bytes one call moved, as the slices the caller had them in (a
/// `writev` hands several): copied once, straight into the session buffer.
#[derive(Clone, Copy)]
pub struct Bytes<'a>(pub &'a [&'a [u8]]);

impl Bytes<'_> {
    fn len(&self) -> usize {
        self.0.iter().map(|part| part.len()).sum()
    }

    /// Whether these bytes start with a TLS record (the first bytes of an
    /// exchange on a connection whose TLS the library cannot see).
    fn look_like_tls(&self) -> bool {
        let mut head = [0u8; 6];
        let mut filled = 0;
        for part in self.0 {
            let take = (head.len() - filled).min(part.len());
            head[filled..filled + take].copy_from_slice(&part[..take]);
            filled += take;
        }
        koala_protocols::tls::looks_like_tls(&head[..filled])
    }
}

impl Buf {
    /// Appends up to the payload limit; returns true if bytes were cut. A
    /// new buffer comes from `spare` when one is there.
    fn append(
        &mut self,
        data: Bytes<'_>,
        now_ns: u64,
        max: usize,
        spare: &mut Vec<Vec<u8>>,
    ) -> bool {
        if self.bytes.is_empty() && self.first_ns == 0 {
            self.first_ns = now_ns;
        }
        if self.bytes.capacity() == 0
            && let Some(buffer) = spare.pop()
        {
            self.bytes = buffer;
        }
        let total = data.len();
        let room = max.saturating_sub(self.bytes.len());
        self.bytes.reserve(room.min(total));
        let mut left = room;
        for part in data.0 {
            let take = left.min(part.len());
            self.bytes.extend_from_slice(&part[..take]);
            left -= take;
        }
        if total > room && !self.truncated {
            self.truncated = true;
            return true;
        }
        false
    }

    fn is_empty(&self) -> bool {
        self.bytes.is_empty() && !self.truncated
    }
}

struct Conn {
    direction: Direction,
    local: Arc<str>,
    peer: Arc<str>,
    /// How many fds refer to this connection (dup).
    fds: u32,
    /// Inbound: the session this connection carries now.
    session: Option<SessionKey>,
    /// Outbound: the call bytes go to now.
    call: CallRef,
    /// Outbound: the session of the thread that connected.
    opened_in: Option<SessionKey>,
    /// Outbound: the position the next call on this connection gets.
    next_seq: u32,
    /// Plaintext seen through the TLS hooks, or TLS records seen on the
    /// socket; exchanges started on the connection carry it.
    tls: Tls,
    /// Outbound: calls of different sessions sent one after the other
    /// before the first was answered (`pipelined_calls`), oldest first;
    /// empty otherwise.
    awaiting: VecDeque<CallId>,
}

/// Where a send by a thread serving no session goes (`handoff`).
enum HandOff {
    Session(SessionKey),
    /// No session waits: background traffic.
    Background,
    /// Sessions wait, none can be told: background, flagged.
    Unattributed,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum CallRef {
    /// Nothing sent or received yet.
    Fresh,
    /// A call stored in `calls` (it may have been written since).
    Stored(CallId),
    /// Beyond KOALA_MAX_CALLS_PER_SESSION: bytes not kept. `answered` once
    /// a response byte came back, so the next send is a new call.
    OverLimit { answered: bool },
}

struct CallRecord {
    session: SessionKey,
    local: Arc<str>,
    peer: Arc<str>,
    conn: ConnId,
    /// Position on the connection: 0 = first exchange after connect.
    seq: u32,
    /// The service read end-of-file after this call's response.
    closed: bool,
    tls: Tls,
    /// Sent by a thread serving no session, and tied to none (`handoff`).
    unattributed: bool,
    request: Buf,
    response: Buf,
}

struct OpenSession {
    tid: u32,
    /// `None` for the background record (`Assembler::background`), and for
    /// a virtual thread's calls before its thread writes a response.
    inbound: Option<InboundSide>,
    request: Buf,
    response: Buf,
    /// When the response's first writes happened: splits pipelined requests.
    writes: WriteTimes,
    calls: Vec<CallId>,
    last_activity_ns: u64,
    /// When the service last wrote to the client (0: not yet).
    last_write_ns: u64,
    /// Copied into a forked child: only written by the child if it adds bytes.
    inherited: bool,
    touched_since_fork: bool,
    /// Random bytes the session's threads drew, up to the bound.
    random: Vec<u8>,
    random_truncated: bool,
}

struct InboundSide {
    conn: ConnId,
    local: Arc<str>,
    peer: Arc<str>,
    tls: Tls,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Read,
    Write,
}

#[derive(Default)]
struct ThreadState {
    current: Option<SessionKey>,
    delegated_to: Option<u64>,
}

pub struct Assembler {
    /// Stamped on each finished session; changes in a forked child. (What
    /// the whole process shares is added by the writer.)
    pid: u32,
    limits: Limits,
    /// fd → connection; 0 = none (connection ids start at 1).
    fd_conns: Vec<ConnId>,
    conns: IdMap<ConnId, Conn>,
    sessions: IdMap<SessionKey, OpenSession>,
    calls: IdMap<CallId, CallRecord>,
    threads: IdMap<u32, ThreadState>,
    /// Virtual thread id (helper hints) → its session.
    virtual_threads: IdMap<u64, SessionKey>,
    /// The open background record, if any.
    background: Option<SessionKey>,
    /// Emptied payload buffers the writer handed back: sessions reuse them
    /// instead of allocating on the host thread and freeing on the writer's.
    spare: Vec<Vec<u8>>,
    next_id: u64,
    sessions_written: u64,
    stats: Stats,
    finished: Vec<FinishedSession>,
}

impl Assembler {
    /// The assembler of process `pid`.
    pub fn new(pid: u32, limits: Limits) -> Self {
        Assembler {
            pid,
            limits,
            fd_conns: Vec::new(),
            conns: IdMap::default(),
            sessions: IdMap::default(),
            calls: IdMap::default(),
            threads: IdMap::default(),
            virtual_threads: IdMap::default(),
            background: None,
            spare: Vec::new(),
            next_id: 1,
            sessions_written: 0,
            stats: Stats::default(),
            finished: Vec::new(),
        }
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// A summary line reported `reported` (before an exec that then
    /// failed): the next one counts from there.
    pub fn forget_reported(&mut self, reported: &Stats) {
        self.stats = self.stats.minus(reported);
    }

    /// Hands each session finished by the events so far to `sink` (the
    /// caller writes them), keeping the buffer's capacity.
    pub fn drain_finished(&mut self, sink: impl FnMut(FinishedSession)) {
        self.finished.drain(..).for_each(sink);
    }

    /// Takes back emptied payload buffers for reuse, keeping at most
    /// [`MAX_SPARE_BUFFERS`] of at most [`MAX_SPARE_CAPACITY`] bytes.
    pub fn recycle(&mut self, buffers: &mut Vec<Vec<u8>>) {
        for buffer in buffers.drain(..) {
            self.keep_spare(buffer);
        }
    }

    fn keep_spare(&mut self, mut buffer: Vec<u8>) {
        if self.spare.len() < MAX_SPARE_BUFFERS
            && buffer.capacity() > 0
            && buffer.capacity() <= MAX_SPARE_CAPACITY
        {
            buffer.clear();
            self.spare.push(buffer);
        }
    }

    fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    // ---- connections -------------------------------------------------

    /// `fd` was accepted (inbound) or connected (outbound). Whatever the fd
    /// number carried before is gone: its close may have been missed.
    pub fn open_connection(
        &mut self,
        fd: i32,
        direction: Direction,
        local: SocketAddr,
        peer: SocketAddr,
        tid: u32,
        now_ns: u64,
    ) {
        self.forget_fd(fd);
        let Ok(index) = usize::try_from(fd) else {
            return;
        };
        let opened_in = match direction {
            Direction::Outbound => self.session_of_sender(tid, now_ns, false),
            Direction::Inbound => None,
        };
        let id = self.next_id();
        self.conns.insert(
            id,
            Conn {
                direction,
                local: Arc::from(local.to_string()),
                peer: Arc::from(peer.to_string()),
                fds: 1,
                session: None,
                call: CallRef::Fresh,
                opened_in,
                next_seq: 0,
                tls: Tls::None,
                awaiting: VecDeque::new(),
            },
        );
        if self.fd_conns.len() <= index {
            self.fd_conns.resize(index + 1, 0);
        }
        self.fd_conns[index] = id;
    }

    /// `new_fd` now refers to the same connection as `old_fd` (dup family).
    /// `dup2(fd, fd)` changes nothing.
    pub fn duplicate_fd(&mut self, old_fd: i32, new_fd: i32) {
        if old_fd == new_fd {
            return;
        }
        self.forget_fd(new_fd);
        let Some(conn_id) = self.conn_id(old_fd) else {
            return;
        };
        let Ok(index) = usize::try_from(new_fd) else {
            return;
        };
        if let Some(conn) = self.conns.get_mut(&conn_id) {
            conn.fds += 1;
        }
        if self.fd_conns.len() <= index {
            self.fd_conns.resize(index + 1, 0);
        }
        self.fd_conns[index] = conn_id;
    }

    /// `fd` was closed (or its number is being handed out again). When the
    /// last fd of an inbound connection goes, its session ends.
    pub fn forget_fd(&mut self, fd: i32) {
        let Some(conn_id) = self.conn_id(fd) else {
            return;
        };
        self.fd_conns[fd as usize] = 0;
        let Some(conn) = self.conns.get_mut(&conn_id) else {
            return;
        };
        conn.fds -= 1;
        if conn.fds > 0 {
            return;
        }
        let conn = self.conns.remove(&conn_id).expect("present above");
        if let Some(session) = conn.session {
            self.finish(session, EndReason::Close);
        }
    }

    /// `shutdown(fd, how)`: a service that shuts down the write side of an
    /// inbound connection has sent its whole response. If the request read
    /// so far is not complete, the session stays open until the close for
    /// the rest of it: php-fpm shuts its write side after the response, then
    /// drains nginx's trailing empty stdin record.
    pub fn shutdown_write(&mut self, fd: i32) {
        let Some(conn_id) = self.conn_id(fd) else {
            return;
        };
        if self.conns.get(&conn_id).map(|c| c.direction) != Some(Direction::Inbound) {
            return;
        }
        if let Some(session) = self.inbound_session(conn_id)
            && !self.request_continues(session)
        {
            self.finish(session, EndReason::Close);
        }
    }

    /// The service read end-of-file on `fd`. On an outbound connection the
    /// dependency closed it after the current call's response (which may be
    /// empty: it hung up without answering), so replay closes there too.
    pub fn peer_closed(&mut self, fd: i32, now_ns: u64) {
        let Some(conn) = self.conn_id(fd).and_then(|id| self.conns.get(&id)) else {
            return;
        };
        if conn.direction != Direction::Outbound {
            return;
        }
        if let CallRef::Stored(call_id) = conn.call
            && let Some(call) = self.calls.get_mut(&call_id)
        {
            call.closed = true;
            let session = call.session;
            self.touch(session, now_ns);
        }
    }

    /// The service moves `fd`'s bytes through its TLS library, whose hooks
    /// hand over the plaintext: exchanges started from now on are marked
    /// `"tls": true` (those before, an SSLRequest say, were in clear).
    pub fn tls_plaintext(&mut self, fd: i32) {
        if let Some(conn) = self.conn_id(fd).and_then(|id| self.conns.get_mut(&id)) {
            conn.tls = Tls::Plaintext;
        }
    }

    /// The first bytes of an exchange on `conn_id`: a TLS record there means
    /// encryption the library cannot see into (`"tls": "ciphertext"`).
    fn sniff_tls(&mut self, conn_id: ConnId, data: Bytes<'_>) {
        if let Some(conn) = self.conns.get_mut(&conn_id)
            && conn.tls == Tls::None
            && data.look_like_tls()
        {
            conn.tls = Tls::Ciphertext;
        }
    }

    fn conn_id(&self, fd: i32) -> Option<ConnId> {
        let index = usize::try_from(fd).ok()?;
        self.fd_conns.get(index).copied().filter(|&id| id != 0)
    }

    // ---- bytes -------------------------------------------------------

    /// The service read `data` (one or more slices) from `fd`.
    pub fn received_parts(&mut self, fd: i32, tid: u32, data: Bytes<'_>, now_ns: u64) {
        self.moved(fd, tid, data, now_ns, Side::Read);
    }

    /// The service wrote `data` (one or more slices) to `fd`.
    pub fn sent_parts(&mut self, fd: i32, tid: u32, data: Bytes<'_>, now_ns: u64) {
        self.moved(fd, tid, data, now_ns, Side::Write);
    }

    fn moved(&mut self, fd: i32, tid: u32, data: Bytes<'_>, now_ns: u64, side: Side) {
        if data.len() == 0 {
            return;
        }
        let Some(conn) = self.conn_id(fd) else {
            return;
        };
        let Some(direction) = self.conns.get(&conn).map(|c| c.direction) else {
            return;
        };
        match (direction, side) {
            (Direction::Inbound, Side::Read) => self.inbound_received(conn, tid, data, now_ns),
            (Direction::Inbound, Side::Write) => self.inbound_sent(conn, tid, data, now_ns),
            (Direction::Outbound, Side::Read) => self.outbound_received(conn, tid, data, now_ns),
            (Direction::Outbound, Side::Write) => self.outbound_sent(conn, tid, data, now_ns),
        }
    }

    fn inbound_received(&mut self, conn_id: ConnId, tid: u32, data: Bytes<'_>, now_ns: u64) {
        let session = match self.inbound_session(conn_id) {
            // Request → response → request: the next request starts the next
            // session, unless the request read so far is not complete yet.
            Some(s) if !self.sessions[&s].response.is_empty() && !self.request_continues(s) => {
                self.finish(s, EndReason::NextRequest);
                self.sniff_tls(conn_id, data);
                self.start_inbound_session(conn_id, tid, now_ns)
            }
            Some(s) => s,
            None => {
                self.sniff_tls(conn_id, data);
                self.start_inbound_session(conn_id, tid, now_ns)
            }
        };
        self.append_inbound(session, tid, data, now_ns, Side::Read);
    }

    fn inbound_sent(&mut self, conn_id: ConnId, tid: u32, data: Bytes<'_>, now_ns: u64) {
        // Bytes written before any request: the service speaks first.
        let session = match self.inbound_session(conn_id) {
            Some(s) => s,
            None => {
                self.sniff_tls(conn_id, data);
                self.start_inbound_session(conn_id, tid, now_ns)
            }
        };
        self.append_inbound(session, tid, data, now_ns, Side::Write);
    }

    /// Whether bytes read after `session`'s response still belong to its
    /// request: the protocol catalogue frames the request read so far as
    /// unfinished (FastCGI's trailing empty stdin record, read after the
    /// response; an HTTP body sent after `100 Continue`). Asked once per
    /// request, when a read follows a response (and at a shutdown): one
    /// framing pass over the previous request on the host thread — the
    /// cost `make bench` measures (docs/benchmarks.md). With pipelined
    /// requests the last one counts. An empty request (the service spoke
    /// first) or a cut one never continues.
    fn request_continues(&self, session: SessionKey) -> bool {
        let request = &self.sessions[&session].request;
        if request.bytes.is_empty() || request.truncated {
            return false;
        }
        let mut rest = &request.bytes[..];
        loop {
            match koala_protocols::frame_request(rest) {
                Completeness::Complete(n) if n > 0 && n < rest.len() => rest = &rest[n..],
                Completeness::NeedMore => return true,
                _ => return false,
            }
        }
    }

    /// The open session an inbound connection carries.
    fn inbound_session(&self, conn_id: ConnId) -> Option<SessionKey> {
        self.conns[&conn_id]
            .session
            .filter(|s| self.sessions.contains_key(s))
    }

    /// Adds inbound bytes to the request (read) or the response (write).
    fn append_inbound(
        &mut self,
        session: SessionKey,
        tid: u32,
        data: Bytes<'_>,
        now_ns: u64,
        side: Side,
    ) {
        let max = self.limits.max_payload_bytes;
        let open = self
            .sessions
            .get_mut(&session)
            .expect("caller looked it up");
        let buf = match side {
            Side::Read => &mut open.request,
            Side::Write => {
                open.writes.record(open.response.bytes.len(), now_ns);
                open.last_write_ns = now_ns;
                &mut open.response
            }
        };
        if buf.append(data, now_ns, max, &mut self.spare) {
            self.stats.truncated_payloads += 1;
        }
        open.last_activity_ns = now_ns;
        open.touched_since_fork = true;
        self.follow(tid, session, side);
    }

    fn outbound_sent(&mut self, conn_id: ConnId, tid: u32, data: Bytes<'_>, now_ns: u64) {
        let (session, unattributed) = match self.session_of_sender(tid, now_ns, true) {
            Some(session) => (session, false),
            None => match self.handed_off(conn_id, data) {
                HandOff::Session(session) => (session, false),
                HandOff::Background => (self.background_record(tid, now_ns), false),
                HandOff::Unattributed => (self.background_record(tid, now_ns), true),
            },
        };
        let max = self.limits.max_payload_bytes;
        match self.conns[&conn_id].call {
            // Keep appending while the same session's call has no answer yet.
            CallRef::Stored(call_id)
                if self
                    .calls
                    .get(&call_id)
                    .is_some_and(|c| c.session == session && c.response.is_empty()) =>
            {
                let call = self.calls.get_mut(&call_id).expect("checked above");
                if call.request.append(data, now_ns, max, &mut self.spare) {
                    self.stats.truncated_payloads += 1;
                }
            }
            CallRef::OverLimit { answered: false } => {}
            previous => {
                self.sniff_tls(conn_id, data);
                let call_ref = match self.new_call(conn_id, session, tid, now_ns) {
                    Some(call_id) => {
                        let call = self.calls.get_mut(&call_id).expect("just stored");
                        if call.request.append(data, now_ns, max, &mut self.spare) {
                            self.stats.truncated_payloads += 1;
                        }
                        if unattributed {
                            call.unattributed = true;
                            self.stats.unattributed_calls += 1;
                        }
                        self.pipeline(conn_id, previous, call_id);
                        CallRef::Stored(call_id)
                    }
                    None => CallRef::OverLimit { answered: false },
                };
                self.conns.get_mut(&conn_id).expect("caller checked").call = call_ref;
            }
        }
        self.touch(session, now_ns);
    }

    fn outbound_received(&mut self, conn_id: ConnId, tid: u32, data: Bytes<'_>, now_ns: u64) {
        let max = self.limits.max_payload_bytes;
        if !self.conns[&conn_id].awaiting.is_empty() {
            self.pipelined_received(conn_id, tid, data, now_ns);
            return;
        }
        match self.conns[&conn_id].call {
            CallRef::Stored(call_id) => {
                let Some(call) = self.calls.get_mut(&call_id) else {
                    self.stats.late_bytes += data.len() as u64;
                    return;
                };
                if call.response.append(data, now_ns, max, &mut self.spare) {
                    self.stats.truncated_payloads += 1;
                }
                let session = call.session;
                self.touch(session, now_ns);
            }
            CallRef::OverLimit { .. } => {
                self.conns.get_mut(&conn_id).expect("caller checked").call =
                    CallRef::OverLimit { answered: true };
            }
            CallRef::Fresh => self.greeting_received(conn_id, tid, data, now_ns),
        }
    }

    /// Where a send on `conn_id` by a thread serving no session goes: to a
    /// session only when the rules of `handoff` tie it to one.
    fn handed_off(&self, conn_id: ConnId, data: Bytes<'_>) -> HandOff {
        let is_open_request = |key: &SessionKey| {
            Some(*key) != self.background
                && self
                    .sessions
                    .get(key)
                    .is_some_and(|s| s.inbound.is_some() && !s.inherited)
        };
        // 1. The bytes continue the connection's unanswered call.
        if let CallRef::Stored(call_id) = self.conns[&conn_id].call
            && let Some(call) = self.calls.get(&call_id)
            && call.response.is_empty()
            && !call.request.is_empty()
            && is_open_request(&call.session)
        {
            return HandOff::Session(call.session);
        }
        // 2. Exactly one session waits for its answer.
        let waiting: Vec<SessionKey> = self
            .sessions
            .iter()
            .filter(|(key, s)| {
                is_open_request(key) && !s.request.is_empty() && s.response.is_empty()
            })
            .map(|(&key, _)| key)
            .collect();
        match waiting.as_slice() {
            [] => return HandOff::Background,
            [one] => return HandOff::Session(*one),
            _ => {}
        }
        // 3. Exactly one waiting request carries the trace id the bytes carry.
        let bytes = data.0.concat();
        let ids = handoff::trace_ids(&bytes);
        if !ids.is_empty() {
            let mut matching = waiting
                .iter()
                .filter(|key| handoff::shares_trace_id(&ids, &self.sessions[key].request.bytes));
            if let (Some(&one), None) = (matching.next(), matching.next()) {
                return HandOff::Session(one);
            }
        }
        HandOff::Unattributed
    }

    /// A new call `call_id` was sent on `conn_id` after `previous`: when
    /// `previous` (another session's: a call of the same session is
    /// appended to) has no answer yet, both wait for theirs in order.
    fn pipeline(&mut self, conn_id: ConnId, previous: CallRef, call_id: CallId) {
        let unanswered = |id: &CallId| {
            self.calls
                .get(id)
                .is_some_and(|c| c.response.is_empty() && !c.request.is_empty())
        };
        let conn = &self.conns[&conn_id];
        let waiting = match previous {
            _ if !conn.awaiting.is_empty() => true,
            CallRef::Stored(previous) if unanswered(&previous) => {
                self.conns
                    .get_mut(&conn_id)
                    .expect("caller checked")
                    .awaiting
                    .push_back(previous);
                true
            }
            _ => false,
        };
        if waiting {
            let conn = self.conns.get_mut(&conn_id).expect("caller checked");
            conn.awaiting.push_back(call_id);
        }
    }

    /// Bytes received while pipelined calls wait: each call, oldest first,
    /// takes the bytes that finish its answer. What cannot be framed ends
    /// the pipeline: the rest goes to the latest call, as without one.
    fn pipelined_received(&mut self, conn_id: ConnId, tid: u32, data: Bytes<'_>, now_ns: u64) {
        let max = self.limits.max_payload_bytes;
        let bytes = data.0.concat();
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let conn = self.conns.get_mut(&conn_id).expect("caller checked");
            let Some(&front) = conn.awaiting.front() else {
                break;
            };
            let Some(call) = self.calls.get_mut(&front) else {
                conn.awaiting.clear(); // written already: its answer cannot be framed
                break;
            };
            let take = if call.request.truncated {
                None
            } else {
                match pipelined_calls::answer_len(&call.request.bytes, &call.response.bytes, rest) {
                    pipelined_calls::Answer::Completes(n) => {
                        conn.awaiting.pop_front();
                        Some(n)
                    }
                    pipelined_calls::Answer::Continues => Some(rest.len()),
                    pipelined_calls::Answer::Unknown => None,
                }
            };
            let Some(take) = take else {
                conn.awaiting.clear();
                break;
            };
            if call
                .response
                .append(Bytes(&[&rest[..take]]), now_ns, max, &mut self.spare)
            {
                self.stats.truncated_payloads += 1;
            }
            let session = call.session;
            self.touch(session, now_ns);
            rest = &rest[take..];
        }
        if self.conns[&conn_id].awaiting.len() == 1 {
            // The last one waiting is the connection's current call.
            self.conns
                .get_mut(&conn_id)
                .expect("caller checked")
                .awaiting
                .clear();
        }
        if !rest.is_empty() {
            self.outbound_received(conn_id, tid, Bytes(&[rest]), now_ns);
        }
    }

    /// The first bytes on an outbound connection came before any request:
    /// a call with an empty request, in the session that opened the
    /// connection, or in the background record if it was opened outside
    /// any session (or that session is over).
    fn greeting_received(&mut self, conn_id: ConnId, tid: u32, data: Bytes<'_>, now_ns: u64) {
        self.sniff_tls(conn_id, data);
        let opened_in = self.conns[&conn_id]
            .opened_in
            .filter(|s| self.sessions.contains_key(s));
        let session = match opened_in {
            Some(session) => session,
            None => self.background_record(tid, now_ns),
        };
        let call_ref = match self.new_call(conn_id, session, tid, now_ns) {
            Some(call_id) => CallRef::Stored(call_id),
            None => CallRef::OverLimit { answered: false },
        };
        self.conns.get_mut(&conn_id).expect("caller checked").call = call_ref;
        self.outbound_received(conn_id, tid, data, now_ns);
    }

    /// A new, empty call of `session` on `conn_id`; `None` over the limit.
    /// A full background record is written and a new one started instead.
    fn new_call(
        &mut self,
        conn_id: ConnId,
        session: SessionKey,
        tid: u32,
        now_ns: u64,
    ) -> Option<CallId> {
        // Every exchange takes a position, kept or not: positions are the
        // connection's, whatever happens to the sessions.
        let conn = self.conns.get_mut(&conn_id).expect("caller checked");
        let seq = conn.next_seq;
        conn.next_seq = seq.saturating_add(1);
        let mut session = session;
        if self.sessions[&session].calls.len() >= self.limits.max_calls_per_session {
            if self.background != Some(session) {
                self.stats.calls_over_limit += 1;
                return None;
            }
            self.finish(session, EndReason::Full);
            session = self.background_record(tid, now_ns);
        }
        let call_id = self.next_id();
        let conn = &self.conns[&conn_id];
        let call = CallRecord {
            session,
            local: conn.local.clone(),
            peer: conn.peer.clone(),
            conn: conn_id,
            seq,
            closed: false,
            unattributed: false,
            tls: conn.tls,
            request: Buf::default(),
            response: Buf::default(),
        };
        self.calls.insert(call_id, call);
        self.sessions
            .get_mut(&session)
            .expect("checked above")
            .calls
            .push(call_id);
        Some(call_id)
    }

    /// The open background record, started on demand.
    fn background_record(&mut self, tid: u32, now_ns: u64) -> SessionKey {
        if let Some(key) = self.background.filter(|k| self.sessions.contains_key(k)) {
            return key;
        }
        let key = self.next_id();
        self.sessions
            .insert(key, OpenSession::new(tid, None, now_ns));
        self.background = Some(key);
        key
    }

    /// Moves an existing call into `session`, keeping the session's calls
    /// in the order they started.
    fn attach_call(&mut self, session: SessionKey, call_id: CallId) {
        let Some(call) = self.calls.get_mut(&call_id) else {
            return;
        };
        call.session = session;
        let calls = &mut self.sessions.get_mut(&session).expect("open session").calls;
        let at = calls.partition_point(|&c| c < call_id);
        calls.insert(at, call_id);
    }

    fn touch(&mut self, session: SessionKey, now_ns: u64) {
        if let Some(open) = self.sessions.get_mut(&session) {
            open.last_activity_ns = now_ns;
            open.touched_since_fork = true;
        }
    }

    // ---- threads and sessions ---------------------------------------

    fn start_inbound_session(&mut self, conn_id: ConnId, tid: u32, now_ns: u64) -> SessionKey {
        let key = self.next_id();
        let conn = self.conns.get_mut(&conn_id).expect("caller checked");
        conn.session = Some(key);
        let inbound = InboundSide {
            conn: conn_id,
            local: conn.local.clone(),
            peer: conn.peer.clone(),
            tls: conn.tls,
        };
        self.sessions
            .insert(key, OpenSession::new(tid, Some(inbound), now_ns));
        key
    }

    /// After `tid` read or wrote the inbound side of `session`, its calls go
    /// there. A delegated thread works for its virtual thread instead, and
    /// only writing the response binds the virtual thread to this session
    /// (merging the calls it made so far). A read never does: an event loop
    /// reads other connections' requests while still delegated to whichever
    /// coroutine ran last — even one that is only waiting for a lock.
    fn follow(&mut self, tid: u32, session: SessionKey, side: Side) {
        let state = self.threads.entry(tid).or_default();
        let Some(virtual_id) = state.delegated_to else {
            state.current = Some(session);
            return;
        };
        let bound = self.virtual_threads.get(&virtual_id).copied();
        let bound = bound.and_then(|s| {
            self.sessions
                .get(&s)
                .map(|open| (s, open.inbound.is_some()))
        });
        match (bound, side) {
            (None, Side::Write) => {
                self.virtual_threads.insert(virtual_id, session);
            }
            (Some((detached, false)), Side::Write) => {
                let detached = self.sessions.remove(&detached).expect("looked up");
                for call_id in detached.calls {
                    self.attach_call(session, call_id);
                }
                self.virtual_threads.insert(virtual_id, session);
            }
            // Bound already (keep it), or a read.
            _ => {}
        }
    }

    /// The session a call started now by `tid` belongs to. A delegated
    /// thread whose virtual thread has no session yet gets a detached one
    /// when `create` is set.
    fn session_of_sender(&mut self, tid: u32, now_ns: u64, create: bool) -> Option<SessionKey> {
        let state = self.threads.get(&tid)?;
        match state.delegated_to {
            None => state.current.filter(|s| self.sessions.contains_key(s)),
            Some(virtual_id) => {
                let bound = self.virtual_threads.get(&virtual_id).copied();
                if let Some(s) = bound.filter(|s| self.sessions.contains_key(s)) {
                    return Some(s);
                }
                if !create {
                    return None;
                }
                let key = self.next_id();
                self.sessions
                    .insert(key, OpenSession::new(tid, None, now_ns));
                self.virtual_threads.insert(virtual_id, key);
                Some(key)
            }
        }
    }

    /// `tid` drew `bytes` of randomness (getrandom, /dev/urandom...): kept in
    /// its current session, up to `max` bytes per session, for replay to
    /// hand back. Returns how many bytes were cut (0 outside a session: the
    /// draws of threads serving no request are not kept).
    pub fn random_drawn(&mut self, tid: u32, bytes: &[u8], max: usize) -> u64 {
        let Some(key) = self.session_of_sender(tid, 0, false) else {
            return 0;
        };
        let Some(open) = self.sessions.get_mut(&key) else {
            return 0;
        };
        if open.inbound.is_none() {
            return 0;
        }
        let room = max.saturating_sub(open.random.len());
        let kept = bytes.len().min(room);
        open.random.extend_from_slice(&bytes[..kept]);
        let cut = bytes.len() - kept;
        if cut > 0 {
            open.random_truncated = true;
        }
        cut as u64
    }

    /// Helper hint `set-delegated-from-thread-id`: from now on `tid` works
    /// for virtual thread `virtual_id` (0: for itself again).
    pub fn delegate(&mut self, tid: u32, virtual_id: u64) {
        let state = self.threads.entry(tid).or_default();
        state.delegated_to = (virtual_id != 0).then_some(virtual_id);
    }

    /// Helper hint `thread-shutdown`: ends the session of virtual thread
    /// `virtual_id`, or, if `None`, the calling thread's current session.
    pub fn end_session_by_hint(&mut self, tid: u32, virtual_id: Option<u64>) {
        let virtual_id = virtual_id.or_else(|| self.threads.get(&tid)?.delegated_to);
        let session = match virtual_id {
            Some(v) => self.virtual_threads.remove(&v),
            None => self.threads.get_mut(&tid).and_then(|t| t.current.take()),
        };
        if let Some(session) = session {
            self.finish(session, EndReason::Hint);
        }
    }

    // ---- ending sessions ---------------------------------------------

    /// Ends every session idle for the configured time. Idle means nothing
    /// more will come: a session still *waiting* (see [`Self::is_waiting`])
    /// is ended only after [`Limits::waiting_ns`], so a slow request is not
    /// split in two and a stuck one still ends.
    pub fn close_idle(&mut self, now_ns: u64) {
        let idle: Vec<SessionKey> = self
            .sessions
            .iter()
            .filter(|(_, s)| {
                let silent = now_ns.saturating_sub(s.last_activity_ns);
                silent >= self.limits.idle_ns
                    && (silent >= self.limits.waiting_ns() || !self.is_waiting(s))
            })
            .map(|(&key, _)| key)
            .collect();
        for key in idle {
            self.finish(key, EndReason::Idle);
        }
        // Forget threads that point at nothing, so the map tracks live work only.
        let sessions = &self.sessions;
        self.threads.retain(|_, t| {
            t.delegated_to.is_some() || t.current.is_some_and(|s| sessions.contains_key(&s))
        });
        self.virtual_threads.retain(|_, s| sessions.contains_key(s));
    }

    /// Whether the service still owes `open` something: its client's
    /// request was read and nothing has been written back yet (the thread
    /// is working, or waiting on a dependency), or its latest call was sent
    /// after the last write to the client and has no answer yet on a
    /// connection still open (a response streamed around a slow call). A
    /// call sent before the answer was complete (fire-and-forget, a log
    /// line) does not count: the session is over.
    fn is_waiting(&self, open: &OpenSession) -> bool {
        if open.inbound.is_none() || open.request.is_empty() {
            return false;
        }
        if open.response.is_empty() {
            return true;
        }
        let Some(&call_id) = open.calls.iter().max() else {
            return false;
        };
        self.calls.get(&call_id).is_some_and(|call| {
            !call.request.is_empty()
                && call.response.is_empty()
                && call.request.first_ns >= open.last_write_ns
                && self
                    .conns
                    .get(&call.conn)
                    .is_some_and(|conn| conn.call == CallRef::Stored(call_id))
        })
    }

    /// Ends every open session (process exit).
    pub fn close_all(&mut self, reason: EndReason) {
        let mut keys: Vec<SessionKey> = self.sessions.keys().copied().collect();
        keys.sort_unstable();
        for key in keys {
            self.finish(key, reason);
        }
        // A virtual thread that never wrote to a client, finished above,
        // may have moved its calls into a background record started then.
        if let Some(key) = self.background {
            self.finish(key, reason);
        }
    }

    fn finish(&mut self, key: SessionKey, reason: EndReason) {
        let Some(open) = self.sessions.remove(&key) else {
            return;
        };
        let background = self.background == Some(key);
        if background {
            self.background = None;
        }
        // A virtual thread that never wrote to a client: its calls were
        // made for no session we can name, so they are background traffic.
        if open.inbound.is_none() && !background {
            self.stats.sessions_without_inbound += 1;
            if !open.calls.is_empty() {
                let record = self.background_record(open.tid, open.last_activity_ns);
                for call_id in open.calls {
                    self.attach_call(record, call_id);
                }
            }
            return;
        }
        let calls: Vec<FinishedExchange> = open
            .calls
            .iter()
            .filter_map(|id| self.calls.remove(id))
            .map(|c| FinishedExchange {
                conn: Some(c.conn),
                seq: Some(c.seq),
                closed: c.closed,
                tls: c.tls,
                unattributed: c.unattributed,
                ..exchange(c.local, c.peer, c.request, c.response)
            })
            .collect();
        if let Some(inbound) = &open.inbound
            && let Some(conn) = self.conns.get_mut(&inbound.conn)
            && conn.session == Some(key)
        {
            conn.session = None;
        }
        if open.inherited && !open.touched_since_fork {
            self.stats.sessions_left_to_parent += 1;
            return;
        }
        // A readiness probe (connect and send a newline; connect to a service
        // that speaks first and close) looks like traffic but is no request.
        if open.inbound.is_some() && calls.is_empty() && is_blank(&open.request) {
            self.stats.empty_sessions += 1;
            self.keep_spare(open.request.bytes);
            self.keep_spare(open.response.bytes);
            return;
        }
        if open.inbound.is_some()
            && !open.request.truncated
            && !open.response.truncated
            && let Some(parts) = self.pipelined_parts(&open, &calls)
        {
            self.finish_pipelined(open, parts, calls, reason);
            return;
        }
        let (kind, inbound) = match open.inbound {
            Some(side) => (
                Kind::Session,
                FinishedExchange {
                    tls: side.tls,
                    ..exchange(side.local, side.peer, open.request, open.response)
                },
            ),
            None if calls.is_empty() => return,
            None => {
                self.stats.background_records += 1;
                (Kind::Background, FinishedExchange::default())
            }
        };
        self.sessions_written += 1;
        self.stats.ciphertext_exchanges += ciphertext_in(&inbound, &calls);
        self.finished.push(FinishedSession {
            kind,
            seq: self.sessions_written,
            pid: self.pid,
            tid: open.tid,
            end: reason,
            inbound,
            calls,
            random: open.random,
            random_truncated: open.random_truncated,
        });
    }

    /// Pipelined HTTP requests of one session, one part each (or `None`).
    fn pipelined_parts(
        &self,
        open: &OpenSession,
        calls: &[FinishedExchange],
    ) -> Option<Vec<pipelining::Part>> {
        // Most sessions are ruled out here, before anything is allocated.
        if !pipelining::may_hold_several(&open.request.bytes) {
            return None;
        }
        let call_starts: Vec<u64> = calls
            .iter()
            .map(|c| match c.request_ns {
                0 => c.response_ns, // a greeting
                sent => sent,
            })
            .collect();
        pipelining::split(
            &open.request.bytes,
            &open.response.bytes,
            &open.writes,
            &call_starts,
        )
    }

    /// Writes one session per pipelined request; all but the last ended
    /// because the next request was read.
    fn finish_pipelined(
        &mut self,
        open: OpenSession,
        parts: Vec<pipelining::Part>,
        calls: Vec<FinishedExchange>,
        reason: EndReason,
    ) {
        let side = open.inbound.as_ref().expect("caller checked");
        let last = parts.len() - 1;
        let mut calls = calls.into_iter();
        let mut random = open.random.clone();
        for (index, part) in parts.into_iter().enumerate() {
            let request = self.copy_of(&open.request.bytes[part.request]);
            let response = self.copy_of(&open.response.bytes[part.response]);
            let inbound = FinishedExchange {
                local: side.local.clone(),
                peer: side.peer.clone(),
                request,
                response,
                // Read together: the time of the first request byte.
                request_ns: open.request.first_ns,
                response_ns: part.response_ns.unwrap_or(open.response.first_ns),
                tls: side.tls,
                ..FinishedExchange::default()
            };
            let calls: Vec<FinishedExchange> = calls.by_ref().take(part.calls.len()).collect();
            self.sessions_written += 1;
            self.stats.ciphertext_exchanges += ciphertext_in(&inbound, &calls);
            self.finished.push(FinishedSession {
                kind: Kind::Session,
                seq: self.sessions_written,
                pid: self.pid,
                tid: open.tid,
                end: if index == last {
                    reason
                } else {
                    EndReason::NextRequest
                },
                inbound,
                calls,
                // Draws cannot be told apart per request: the last one's.
                random: if index == last {
                    std::mem::take(&mut random)
                } else {
                    Vec::new()
                },
                random_truncated: index == last && open.random_truncated,
            });
        }
        self.keep_spare(open.request.bytes);
        self.keep_spare(open.response.bytes);
    }

    /// `bytes` in a buffer of the spare pool when there is one.
    fn copy_of(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut buffer = self.spare.pop().unwrap_or_default();
        buffer.extend_from_slice(bytes);
        buffer
    }

    // ---- fork --------------------------------------------------------

    /// In a forked child: sessions copied from the parent are written by
    /// the child only if the child adds bytes to them; the forking thread
    /// keeps its state under its new id.
    pub fn after_fork_in_child(&mut self, parent_tid: u32, child_tid: u32, child_pid: u32) {
        self.pid = child_pid;
        self.sessions_written = 0;
        for open in self.sessions.values_mut() {
            open.inherited = true;
            open.touched_since_fork = false;
        }
        let forking_thread = self.threads.remove(&parent_tid);
        self.threads.clear();
        if let Some(state) = forking_thread {
            self.threads.insert(child_tid, state);
        }
        self.stats = Stats::default();
    }
}

impl OpenSession {
    fn new(tid: u32, inbound: Option<InboundSide>, now_ns: u64) -> Self {
        OpenSession {
            tid,
            inbound,
            request: Buf::default(),
            response: Buf::default(),
            writes: WriteTimes::default(),
            calls: Vec::new(),
            last_activity_ns: now_ns,
            last_write_ns: 0,
            inherited: false,
            touched_since_fork: true,
            random: Vec::new(),
            random_truncated: false,
        }
    }
}

/// How many of a session's exchanges hold TLS the library could not see into.
fn ciphertext_in(inbound: &FinishedExchange, calls: &[FinishedExchange]) -> u64 {
    std::iter::once(inbound)
        .chain(calls)
        .filter(|e| e.tls == Tls::Ciphertext)
        .count() as u64
}

/// An empty or whitespace-only request (never a cut one).
fn is_blank(request: &Buf) -> bool {
    !request.truncated && request.bytes.iter().all(u8::is_ascii_whitespace)
}

fn exchange(local: Arc<str>, peer: Arc<str>, request: Buf, response: Buf) -> FinishedExchange {
    FinishedExchange {
        local,
        peer,
        truncated: request.truncated || response.truncated,
        request_ns: if request.bytes.is_empty() {
            0
        } else {
            request.first_ns
        },
        response_ns: if response.bytes.is_empty() {
            0
        } else {
            response.first_ns
        },
        request: request.bytes,
        response: response.bytes,
        ..FinishedExchange::default()
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod random_tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn finished(a: &mut Assembler) -> Vec<FinishedSession> {
        let mut out = Vec::new();
        a.drain_finished(|s| out.push(s));
        out
    }

    #[test]
    fn a_session_keeps_its_threads_draws_in_order_up_to_the_bound() {
        let limits = Limits {
            max_payload_bytes: 1 << 20,
            max_calls_per_session: 100,
            idle_ns: 1_000_000_000,
        };
        let mut a = Assembler::new(1, limits);
        a.open_connection(5, Direction::Inbound, addr(80), addr(5000), 10, 1);
        assert_eq!(
            a.random_drawn(10, b"before", 8),
            0,
            "no session yet: not kept"
        );
        a.received_parts(5, 10, Bytes(&[b"GET / HTTP/1.1\r\n\r\n"]), 2);
        assert_eq!(a.random_drawn(10, b"abcd", 6), 0);
        assert_eq!(
            a.random_drawn(11, b"other", 6),
            0,
            "another thread's: not kept"
        );
        assert_eq!(
            a.random_drawn(10, b"efgh", 6),
            2,
            "cut at the bound, counted"
        );
        a.sent_parts(5, 10, Bytes(&[b"HTTP/1.1 204 No Content\r\n\r\n"]), 3);
        a.forget_fd(5);
        let sessions = finished(&mut a);
        assert_eq!(sessions.len(), 1);
        assert_eq!(sessions[0].random, b"abcdef");
        assert!(sessions[0].random_truncated);
    }
}
