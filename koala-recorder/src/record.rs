//! A finished session as the recorder hands it to the writer, and its JSON
//! line.
//!
//! The writer thread does the formatting, so the host thread builds only
//! this: addresses are shared (`Arc<str>`, one per connection), the id is a
//! number, payloads are the buffers filled while recording. The JSON
//! written is exactly the session format (`docs/session-format.md`) that
//! `koala_session::read_session_line` reads back — the tests check it byte
//! for byte against `Session::to_json_line`.
//!
//! The line is formatted here by hand rather than through serde on
//! purpose (measured, `docs/benchmarks.md`): under an nginx load serde's
//! escaping cost 3.8% of the machine and its separate UTF-8 pass 1.1%; with
//! this word-at-a-time writer the writer thread's user time fell from 7.5%
//! to 2.7%. Keep it, and keep it equal to serde's output.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use koala_session::{EndReason, FORMAT_VERSION, Kind, Tls};

/// One direction-pair of bytes on one connection.
#[derive(Clone, Debug, Default)]
pub struct FinishedExchange {
    pub local: Arc<str>,
    pub peer: Arc<str>,
    pub request: Vec<u8>,
    pub response: Vec<u8>,
    pub request_ns: u64,
    pub response_ns: u64,
    pub truncated: bool,
    /// Calls: the connection's id and the call's position on it.
    pub conn: Option<u64>,
    pub seq: Option<u32>,
    /// Calls: the dependency closed the connection after this response.
    pub closed: bool,
    pub tls: Tls,
    /// Background calls no session could be tied to without guessing.
    pub unattributed: bool,
}

#[derive(Clone, Debug)]
pub struct FinishedSession {
    pub kind: Kind,
    /// n-th session written by this process: the last part of the id.
    pub seq: u64,
    pub pid: u32,
    pub tid: u32,
    pub end: EndReason,
    pub inbound: FinishedExchange,
    pub calls: Vec<FinishedExchange>,
    /// Random bytes the session's threads drew, in order.
    pub random: Vec<u8>,
    pub random_truncated: bool,
}

/// What every session of a process shares.
#[derive(Clone, Debug)]
pub struct ProcessIdentity {
    pub program: Arc<str>,
    /// Process start, Unix seconds: makes ids unique across pid reuse.
    pub start_secs: u64,
}

impl FinishedSession {
    /// Payload bytes, for the writer queue's byte budget.
    pub fn payload_bytes(&self) -> usize {
        let exchange = |e: &FinishedExchange| e.request.len() + e.response.len() + 64;
        exchange(&self.inbound) + self.calls.iter().map(exchange).sum::<usize>()
    }

    /// Gives the payload buffers back (for reuse), emptying the session.
    pub fn take_buffers(&mut self, into: &mut Vec<Vec<u8>>) {
        for exchange in std::iter::once(&mut self.inbound).chain(self.calls.iter_mut()) {
            for buffer in [&mut exchange.request, &mut exchange.response] {
                if buffer.capacity() > 0 {
                    into.push(std::mem::take(buffer));
                }
            }
        }
    }

    /// The session model form: what the written line must read back as.
    #[cfg(test)]
    pub(crate) fn to_session(&self, identity: &ProcessIdentity) -> koala_session::Session {
        use koala_session::{Exchange, Payload, Session};
        let exchange = |e: &FinishedExchange| Exchange {
            local: e.local.to_string(),
            peer: e.peer.to_string(),
            request: Payload::new(e.request.clone()),
            response: Payload::new(e.response.clone()),
            request_ns: e.request_ns,
            response_ns: e.response_ns,
            truncated: e.truncated,
            conn: e.conn,
            seq: e.seq,
            closed: e.closed,
            tls: e.tls,
            unattributed: e.unattributed,
        };
        Session {
            koala: FORMAT_VERSION,
            kind: self.kind,
            id: format!("{}-{}-{}", identity.start_secs, self.pid, self.seq),
            pid: self.pid,
            tid: self.tid,
            program: identity.program.to_string(),
            end: Some(self.end),
            inbound: exchange(&self.inbound),
            calls: self.calls.iter().map(exchange).collect(),
            random: Payload::new(self.random.clone()),
            random_truncated: self.random_truncated,
        }
    }

    /// Appends the session's JSON line, with its newline, to `out`.
    pub fn write_json_line(&self, identity: &ProcessIdentity, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"koala\":");
        write_number(out, u64::from(FORMAT_VERSION));
        if self.kind == Kind::Background {
            out.extend_from_slice(b",\"kind\":\"background\"");
        }
        out.extend_from_slice(b",\"id\":\"");
        write_number(out, identity.start_secs);
        out.push(b'-');
        write_number(out, u64::from(self.pid));
        out.push(b'-');
        write_number(out, self.seq);
        out.extend_from_slice(b"\",\"pid\":");
        write_number(out, u64::from(self.pid));
        out.extend_from_slice(b",\"tid\":");
        write_number(out, u64::from(self.tid));
        out.extend_from_slice(b",\"program\":");
        write_text(out, &identity.program);
        out.extend_from_slice(b",\"end\":\"");
        out.extend_from_slice(self.end.as_str().as_bytes());
        out.extend_from_slice(b"\",\"inbound\":");
        write_exchange(out, &self.inbound);
        out.extend_from_slice(b",\"calls\":[");
        for (index, call) in self.calls.iter().enumerate() {
            if index > 0 {
                out.push(b',');
            }
            write_exchange(out, call);
        }
        out.push(b']');
        if !self.random.is_empty() {
            out.extend_from_slice(b",\"random\":");
            write_payload(out, &self.random);
        }
        if self.random_truncated {
            out.extend_from_slice(b",\"random_truncated\":true");
        }
        out.extend_from_slice(b"}\n");
    }
}

/// Redaction of a recording's sessions, on the writer thread (never on a
/// host thread): every payload goes through the rules before its line is
/// formatted. The key is the recording's (`<dir>/.koala-redact-key`),
/// loaded or created when the first secret is met (a recording without
/// one gets no key file); if it cannot be, a key of this process's own is
/// used, so secrets are still never written (only matching them at replay
/// is lost), and a warning says so.
pub(crate) struct Redaction {
    rules: Option<koala_redact::Rules>,
    dir: std::path::PathBuf,
    /// Until the key is needed: the rules under a fixed key, only to tell
    /// whether a payload has a secret (its tokens are never written).
    probe: Option<koala_redact::Redactor>,
    redactor: Option<koala_redact::Redactor>,
}

impl Redaction {
    pub(crate) fn new(rules: Option<koala_redact::Rules>, dir: std::path::PathBuf) -> Self {
        let probe = rules
            .clone()
            .map(|rules| koala_redact::Redactor::new(rules, koala_redact::Key { k0: 0, k1: 0 }));
        Redaction {
            rules,
            dir,
            probe,
            redactor: None,
        }
    }

    /// Replaces the session's secrets by tokens.
    pub(crate) fn apply(&mut self, session: &mut FinishedSession) {
        if self.rules.is_none() {
            return;
        }
        for exchange in std::iter::once(&mut session.inbound).chain(session.calls.iter_mut()) {
            for payload in [&mut exchange.request, &mut exchange.response] {
                self.redact(payload);
            }
        }
    }

    fn redact(&mut self, payload: &mut Vec<u8>) {
        if self.redactor.is_none() {
            let has_secret = self
                .probe
                .as_ref()
                .is_some_and(|probe| probe.redact(payload).is_some());
            if !has_secret {
                return;
            }
            self.redactor = self
                .rules
                .clone()
                .map(|rules| koala_redact::Redactor::new(rules, self.load_key()));
        }
        if let Some(redactor) = &self.redactor {
            redactor.redact_in_place(payload);
        }
    }

    /// The recording's key, or one of this process's own.
    fn load_key(&self) -> koala_redact::Key {
        koala_redact::key::load_or_create(&self.dir)
            .or_else(|error| {
                tracing::warn!(dir = %self.dir.display(), %error,
                    "no redaction key file: secrets are redacted with a key of this process, which replay cannot match");
                koala_redact::Key::random()
            })
            // No /dev/urandom: std's hash keys come from getrandom too.
            .unwrap_or_else(|_| {
                use std::hash::BuildHasher as _;
                let state = std::collections::hash_map::RandomState::new();
                koala_redact::Key {
                    k0: state.hash_one(0u8),
                    k1: state.hash_one(1u8),
                }
            })
    }
}

fn write_exchange(out: &mut Vec<u8>, exchange: &FinishedExchange) {
    out.extend_from_slice(b"{\"local\":");
    write_text(out, &exchange.local);
    out.extend_from_slice(b",\"peer\":");
    write_text(out, &exchange.peer);
    out.extend_from_slice(b",\"request\":");
    write_payload(out, &exchange.request);
    out.extend_from_slice(b",\"response\":");
    write_payload(out, &exchange.response);
    out.extend_from_slice(b",\"request_ns\":");
    write_number(out, exchange.request_ns);
    out.extend_from_slice(b",\"response_ns\":");
    write_number(out, exchange.response_ns);
    if exchange.truncated {
        out.extend_from_slice(b",\"truncated\":true");
    }
    if let Some(conn) = exchange.conn {
        out.extend_from_slice(b",\"conn\":");
        write_number(out, conn);
    }
    if let Some(seq) = exchange.seq {
        out.extend_from_slice(b",\"seq\":");
        write_number(out, u64::from(seq));
    }
    if exchange.closed {
        out.extend_from_slice(b",\"closed\":true");
    }
    match exchange.tls {
        Tls::None => {}
        Tls::Plaintext => out.extend_from_slice(b",\"tls\":true"),
        Tls::Ciphertext => out.extend_from_slice(b",\"tls\":\"ciphertext\""),
    }
    if exchange.unattributed {
        out.extend_from_slice(b",\"unattributed\":true");
    }
    out.push(b'}');
}

fn write_number(out: &mut Vec<u8>, value: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = value;
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

fn write_text(out: &mut Vec<u8>, text: &str) {
    out.push(b'"');
    write_escaped(out, text.as_bytes());
    out.push(b'"');
}

/// A payload as `koala_session::Payload` serializes it: a JSON string when
/// the bytes are valid UTF-8 (the string is exactly those bytes), otherwise
/// `{"base64":"..."}`.
fn write_payload(out: &mut Vec<u8>, bytes: &[u8]) {
    if std::str::from_utf8(bytes).is_ok() {
        out.push(b'"');
        write_escaped(out, bytes);
        out.push(b'"');
    } else {
        out.extend_from_slice(b"{\"base64\":\"");
        let start = out.len();
        out.resize(start + bytes.len().div_ceil(3) * 4, 0);
        let written = BASE64
            .encode_slice(bytes, &mut out[start..])
            .expect("the buffer was sized for the encoding");
        out.truncate(start + written);
        out.extend_from_slice(b"\"}");
    }
}

/// Copies UTF-8 `bytes` escaping what JSON requires: `"`, `\` and control
/// characters below 0x20. Runs of plain bytes are found eight at a time.
fn write_escaped(out: &mut Vec<u8>, bytes: &[u8]) {
    let mut run_start = 0;
    let mut at = 0;
    while at < bytes.len() {
        if let Some(word) = bytes.get(at..at + 8) {
            let word = u64::from_le_bytes(word.try_into().expect("eight bytes"));
            if !needs_escape(word) {
                at += 8;
                continue;
            }
        }
        let byte = bytes[at];
        if byte < 0x20 || byte == b'"' || byte == b'\\' {
            out.extend_from_slice(&bytes[run_start..at]);
            write_escape(out, byte);
            run_start = at + 1;
        }
        at += 1;
    }
    out.extend_from_slice(&bytes[run_start..]);
}

/// Whether any of the eight bytes is below 0x20, `"` or `\` (bit tricks
/// that are exact for "any": no false negatives, no false positives).
fn needs_escape(word: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let has_zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGHS != 0;
    let below_space = word.wrapping_sub(ONES * 0x20) & !word & HIGHS != 0;
    below_space
        || has_zero(word ^ (ONES * u64::from(b'"')))
        || has_zero(word ^ (ONES * u64::from(b'\\')))
}

fn write_escape(out: &mut Vec<u8>, byte: u8) {
    match byte {
        b'"' => out.extend_from_slice(b"\\\""),
        b'\\' => out.extend_from_slice(b"\\\\"),
        b'\n' => out.extend_from_slice(b"\\n"),
        b'\r' => out.extend_from_slice(b"\\r"),
        b'\t' => out.extend_from_slice(b"\\t"),
        0x08 => out.extend_from_slice(b"\\b"),
        0x0c => out.extend_from_slice(b"\\f"),
        _ => {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[(byte >> 4) as usize]);
            out.push(HEX[(byte & 0xf) as usize]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> ProcessIdentity {
        ProcessIdentity {
            program: Arc::from("svc \"x\""),
            start_secs: 1_795_000_000,
        }
    }

    fn exchange(request: &[u8], response: &[u8]) -> FinishedExchange {
        FinishedExchange {
            local: Arc::from("127.0.0.1:80"),
            peer: Arc::from("[::1]:5000"),
            request: request.to_vec(),
            response: response.to_vec(),
            request_ns: 17,
            response_ns: 18,
            ..FinishedExchange::default()
        }
    }

    /// A call at position `seq` on connection `conn`.
    fn call_at(conn: u64, seq: u32, closed: bool) -> FinishedExchange {
        FinishedExchange {
            conn: Some(conn),
            seq: Some(seq),
            closed,
            ..exchange(b"GET / HTTP/1.0\r\n\r\n", b"HTTP/1.0 200 OK\r\n\r\n")
        }
    }

    fn round_trip(session: &FinishedSession) {
        let mut line = Vec::new();
        session.write_json_line(&identity(), &mut line);
        assert_eq!(line.last(), Some(&b'\n'));
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1, "one line");
        let text = std::str::from_utf8(&line).unwrap();
        let read = koala_session::read_session_line(text.trim_end()).unwrap();
        assert_eq!(read, session.to_session(&identity()));
        // Byte for byte what serde writes for the same session.
        assert_eq!(
            text.trim_end(),
            session.to_session(&identity()).to_json_line()
        );
    }

    fn session(inbound: FinishedExchange, calls: Vec<FinishedExchange>) -> FinishedSession {
        FinishedSession {
            kind: Kind::Session,
            seq: 42,
            pid: 7,
            tid: 8,
            end: EndReason::NextRequest,
            inbound,
            calls,
            random: Vec::new(),
            random_truncated: false,
        }
    }

    #[test]
    fn tls_unattributed_and_random_round_trip() {
        let mut plaintext = exchange(b"GET / HTTP/1.1\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\n");
        plaintext.tls = Tls::Plaintext;
        let mut ciphertext = exchange(&[0x16, 0x03, 0x01, 0x00, 0x05], b"");
        ciphertext.tls = Tls::Ciphertext;
        ciphertext.unattributed = true;
        let mut background = session(FinishedExchange::default(), vec![plaintext, ciphertext]);
        background.kind = Kind::Background;
        round_trip(&background);
        let mut drew = session(exchange(b"req", b"resp"), vec![]);
        drew.random = vec![0xff, 0x00, b'a'];
        drew.random_truncated = true;
        round_trip(&drew);
        let mut line = Vec::new();
        background.write_json_line(&identity(), &mut line);
        let line = String::from_utf8(line).unwrap();
        assert!(line.contains(r#""tls":true}"#), "{line}");
        assert!(
            line.contains(r#""tls":"ciphertext","unattributed":true}"#),
            "{line}"
        );
        let mut line = Vec::new();
        drew.write_json_line(&identity(), &mut line);
        let line = String::from_utf8(line).unwrap();
        assert!(
            line.ends_with(
                r#""calls":[],"random":{"base64":"/wBh"},"random_truncated":true}
"#
            ),
            "{line}"
        );
    }

    #[test]
    fn lines_read_back_exactly_and_match_the_model() {
        round_trip(&session(
            exchange(b"GET / HTTP/1.1\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\nok"),
            vec![],
        ));
        let mut truncated = exchange(b"\"quoted\" \\ back\tslash", &[0xff, 0x00, 0x7f]);
        truncated.truncated = true;
        round_trip(&session(
            exchange(b"", b""),
            vec![truncated, exchange("héllo ✓".as_bytes(), b"\x01\x1f")],
        ));
        let mut background = session(
            FinishedExchange::default(),
            vec![exchange(b"PING\r\n", b"+PONG\r\n")],
        );
        background.kind = Kind::Background;
        background.end = EndReason::Full;
        round_trip(&background);
    }

    #[test]
    fn connection_positions_and_closes_round_trip() {
        let mut truncated = call_at(u64::MAX, u32::MAX, true);
        truncated.truncated = true;
        let session = session(
            exchange(b"req", b"resp"),
            vec![call_at(3, 0, false), call_at(3, 1, true), truncated],
        );
        round_trip(&session);
        let mut line = Vec::new();
        session.write_json_line(&identity(), &mut line);
        let line = String::from_utf8(line).unwrap();
        assert!(
            line.contains(r#""response_ns":18,"conn":3,"seq":1,"closed":true}"#),
            "{line}"
        );
        assert!(
            line.contains(
                r#""truncated":true,"conn":18446744073709551615,"seq":4294967295,"closed":true}"#
            ),
            "{line}"
        );
        assert!(
            line.contains(r#""response_ns":18,"conn":3,"seq":0},"#),
            "{line}"
        );
    }

    #[test]
    fn every_byte_value_at_every_alignment_round_trips() {
        let all: Vec<u8> = (0..=127u8).collect();
        for offset in 0..9 {
            let mut bytes = b"abcdefgh".repeat(3)[..offset].to_vec();
            bytes.extend_from_slice(&all);
            round_trip(&session(exchange(&bytes, &bytes[offset..]), vec![]));
        }
        let binary: Vec<u8> = (0..=255u8).collect();
        round_trip(&session(exchange(&binary, b"x"), vec![]));
    }

    #[test]
    fn the_word_test_is_exact() {
        for byte in 0..=255u8 {
            let expected = byte < 0x20 || byte == b'"' || byte == b'\\';
            for position in 0..8 {
                let mut word = [b'a'; 8];
                word[position] = byte;
                assert_eq!(
                    needs_escape(u64::from_le_bytes(word)),
                    expected,
                    "byte {byte:#x} at {position}"
                );
            }
        }
        assert!(!needs_escape(u64::from_le_bytes(
            *b"\xc3\xa9\xe2\x9c\x93zz!"
        )));
    }

    #[test]
    fn redaction_replaces_secrets_with_the_recordings_tokens() {
        let dir = std::env::temp_dir().join(format!("koala-record-redact-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut redaction = Redaction::new(Some(koala_redact::Rules::default()), dir.clone());
        // No secret yet: nothing changes, and no key file is made.
        let mut plain = session(exchange(b"GET / HTTP/1.1\r\n\r\n", b"+OK\r\n"), vec![]);
        let before = plain.clone();
        redaction.apply(&mut plain);
        assert_eq!(
            (plain.inbound.request, plain.inbound.response),
            (before.inbound.request, before.inbound.response)
        );
        assert!(!dir.exists(), "a key file without a secret");
        let login = b"GET /me HTTP/1.1\r\nAuthorization: Bearer tok-123\r\n\r\n";
        let auth = b"*2\r\n$4\r\nAUTH\r\n$6\r\npw-456\r\n";
        let mut first = session(
            exchange(login, b"HTTP/1.1 200 OK\r\n\r\n"),
            vec![exchange(auth, b"+OK\r\n")],
        );
        let mut second = first.clone();
        redaction.apply(&mut first);
        redaction.apply(&mut second);
        let mut lines = Vec::new();
        first.write_json_line(&identity(), &mut lines);
        let text = String::from_utf8(lines).unwrap();
        assert!(
            !text.contains("tok-123") && !text.contains("pw-456"),
            "{text}"
        );
        let key = koala_redact::key::read(&koala_redact::key::key_path(&dir)).unwrap();
        let redactor = koala_redact::Redactor::new(koala_redact::Rules::default(), key);
        assert_eq!(first.inbound.request, redactor.redact(login).unwrap());
        assert_eq!(first.calls[0].request, redactor.redact(auth).unwrap());
        assert_eq!(first.calls[0].response, b"+OK\r\n");
        assert_eq!(
            first.inbound.request, second.inbound.request,
            "same secret, same token"
        );
        // Off: nothing changes, and no key file is made.
        let off_dir = dir.join("off");
        let mut off = Redaction::new(None, off_dir.clone());
        let mut plain = session(exchange(login, b""), vec![]);
        off.apply(&mut plain);
        assert_eq!(plain.inbound.request, login);
        assert!(!off_dir.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn numbers_are_decimal() {
        for value in [0, 7, 10, 1_795_264_736_442_885_640, u64::MAX] {
            let mut out = Vec::new();
            write_number(&mut out, value);
            assert_eq!(out, value.to_string().into_bytes());
        }
    }
}
