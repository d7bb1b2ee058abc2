//! memcached's text protocol (`doc/protocol.txt`), classic commands (`get`,
//! `set`, `incr`...) and meta commands (`mg`, `ms`, `md`, `ma`, `me`,
//! `mn`).
//!
//! A request is a command line and, for storage commands, a data block of
//! the length the line gives followed by CRLF. A response is one line, a
//! `VA` line and its data block (meta), or for retrieval and `stats` a run
//! of items or lines up to `END`. Command names are lower-case and
//! case-sensitive; memcached ends a line at `\n`, a `\r` before it is
//! optional.

use std::ops::Range;

use crate::{Completeness, NormalizeOptions, Normalized, Protocol, Side};

/// The memcached protocol.
pub struct Memcached;

/// Every command word memcached answers.
const COMMANDS: &[&[u8]] = &[
    b"get",
    b"gets",
    b"gat",
    b"gats",
    b"set",
    b"add",
    b"replace",
    b"append",
    b"prepend",
    b"cas",
    b"incr",
    b"decr",
    b"delete",
    b"touch",
    b"verbosity",
    b"version",
    b"stats",
    b"flush_all",
    b"quit",
    b"mn",
    b"mg",
    b"ms",
    b"md",
    b"ma",
    b"me",
];

/// Classic commands taking a trailing `noreply`.
const NOREPLY_COMMANDS: &[&[u8]] = &[
    b"set",
    b"add",
    b"replace",
    b"append",
    b"prepend",
    b"cas",
    b"incr",
    b"decr",
    b"delete",
    b"touch",
    b"verbosity",
    b"flush_all",
];

/// The first word of every response line memcached sends (a bare number
/// answers `incr`/`decr`).
const RESPONSE_WORDS: &[&[u8]] = &[
    b"VALUE",
    b"END",
    b"STORED",
    b"NOT_STORED",
    b"EXISTS",
    b"NOT_FOUND",
    b"DELETED",
    b"TOUCHED",
    b"OK",
    b"RESET",
    b"STAT",
    b"ITEM",
    b"VERSION",
    b"ERROR",
    b"CLIENT_ERROR",
    b"SERVER_ERROR",
    b"VA",
    b"HD",
    b"NF",
    b"NS",
    b"EX",
    b"EN",
    b"MN",
    b"ME",
];

/// memcached refuses command lines longer than this (`CLIENT_ERROR line
/// too long`), except retrieval lines, whose key lists may be long. A
/// response line is never this long either.
const MAX_LINE: usize = 2048;

/// What the start of some bytes holds.
enum Step<T> {
    Done(T),
    NeedMore,
    Invalid,
}

/// The line at `at`: its content (without `\r\n` or `\n`) and the position
/// after it. Lines longer than `limit` are invalid.
fn line_at(bytes: &[u8], at: usize, limit: Option<usize>) -> Step<(&[u8], usize)> {
    let rest = bytes.get(at..).unwrap_or_default();
    match rest.iter().position(|&byte| byte == b'\n') {
        Some(newline) if limit.is_none_or(|limit| newline <= limit) => {
            let content = &rest[..newline];
            Step::Done((
                content.strip_suffix(b"\r").unwrap_or(content),
                at + newline + 1,
            ))
        }
        Some(_) => Step::Invalid,
        None if limit.is_some_and(|limit| rest.len() > limit) => Step::Invalid,
        None => Step::NeedMore,
    }
}

/// The space-separated tokens of `line`, as ranges within it.
fn tokens(line: &[u8]) -> Vec<Range<usize>> {
    let mut found = Vec::new();
    let mut start = None;
    for (at, &byte) in line.iter().enumerate() {
        match (byte == b' ', start) {
            (false, None) => start = Some(at),
            (true, Some(from)) => {
                found.push(from..at);
                start = None;
            }
            _ => {}
        }
    }
    if let Some(from) = start {
        found.push(from..line.len());
    }
    found
}

fn parse_decimal(digits: &[u8]) -> Option<usize> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

fn is_retrieval(name: &[u8]) -> bool {
    matches!(name, b"get" | b"gets" | b"gat" | b"gats")
}

/// A parsed command line.
struct Command<'a> {
    line: &'a [u8],
    tokens: Vec<Range<usize>>,
    /// Where the line ends, terminator included.
    line_end: usize,
}

impl<'a> Command<'a> {
    fn name(&self) -> &'a [u8] {
        self.token(0).unwrap_or_default()
    }

    fn token(&self, index: usize) -> Option<&'a [u8]> {
        self.tokens
            .get(index)
            .map(|range| &self.line[range.clone()])
    }

    /// The length of the data block that follows the line, for storage
    /// commands whose line parses (memcached reads no data after a line it
    /// rejects).
    fn data_len(&self) -> Option<usize> {
        match self.name() {
            b"set" | b"add" | b"replace" | b"append" | b"prepend" if self.tokens.len() >= 5 => {
                parse_decimal(self.token(4)?)
            }
            b"cas" if self.tokens.len() >= 6 => parse_decimal(self.token(4)?),
            b"ms" => parse_decimal(self.token(2)?),
            _ => None,
        }
    }

    /// Whether memcached answers: not after `noreply`, `quit`, or a meta
    /// command's `q` flag. `q` only hides the common reply (a miss for
    /// `mg`, success for `ms`/`md`/`ma`) and errors still come back, so a
    /// pipeline where a quiet command did answer keeps a reply nothing
    /// claims, and `split_exchange` keeps it whole rather than misassign
    /// replies.
    fn expects_response(&self) -> bool {
        let name = self.name();
        if name == b"quit" {
            return false;
        }
        if NOREPLY_COMMANDS.contains(&name) {
            let last = self.tokens.last().map(|range| &self.line[range.clone()]);
            return last != Some(&b"noreply"[..]);
        }
        let flags_from = match name {
            b"mg" | b"md" | b"ma" => 2,
            b"ms" => 3,
            _ => return true,
        };
        !(flags_from..self.tokens.len()).any(|index| self.token(index) == Some(b"q"))
    }
}

/// Whether `line` (possibly cut) could begin with a known command word.
fn starts_like_command(line: &[u8]) -> bool {
    let word_end = line
        .iter()
        .position(|&byte| byte == b' ' || byte == b'\r')
        .unwrap_or(line.len());
    let word = &line[..word_end];
    if word_end < line.len() {
        return COMMANDS.contains(&word);
    }
    COMMANDS.iter().any(|command| command.starts_with(word))
}

/// The command line at the start of `bytes`.
fn command(bytes: &[u8]) -> Step<Command<'_>> {
    // Retrieval lines may be long; a cut one must still be recognised.
    let limit = match bytes.iter().position(|&byte| byte == b' ') {
        Some(space) if is_retrieval(&bytes[..space]) => None,
        _ => Some(MAX_LINE),
    };
    match line_at(bytes, 0, limit) {
        Step::Done((line, line_end)) => {
            let tokens = tokens(line);
            let command = Command {
                line,
                tokens,
                line_end,
            };
            if COMMANDS.contains(&command.name()) && line.first() != Some(&b' ') {
                Step::Done(command)
            } else {
                Step::Invalid
            }
        }
        Step::NeedMore if starts_like_command(bytes) => Step::NeedMore,
        Step::NeedMore | Step::Invalid => Step::Invalid,
    }
}

/// Frames one request: the line, and the data block with its CRLF.
fn frame_command(bytes: &[u8]) -> Step<(Command<'_>, usize)> {
    let command = match command(bytes) {
        Step::Done(command) => command,
        Step::NeedMore => return Step::NeedMore,
        Step::Invalid => return Step::Invalid,
    };
    let Some(data_len) = command.data_len() else {
        let end = command.line_end;
        return Step::Done((command, end));
    };
    // memcached reads `<bytes>` and two more whatever they are (a wrong
    // terminator gets `CLIENT_ERROR bad data chunk`), so framing does too.
    match command
        .line_end
        .checked_add(data_len)
        .and_then(|end| end.checked_add(2))
    {
        Some(end) if end <= bytes.len() => Step::Done((command, end)),
        Some(_) => Step::NeedMore,
        None => Step::Invalid,
    }
}

fn is_error_line(line: &[u8]) -> bool {
    line == b"ERROR"
        || line.starts_with(b"ERROR ")
        || line.starts_with(b"CLIENT_ERROR")
        || line.starts_with(b"SERVER_ERROR")
}

/// The data block announced by a `VALUE <key> <flags> <bytes>` or
/// `VA <bytes>` line, if `line` is one.
fn announced_data(line: &[u8]) -> Option<Option<usize>> {
    let tokens = tokens(line);
    let token = |index: usize| tokens.get(index).map(|range| &line[range.clone()]);
    match token(0)? {
        b"VALUE" => Some(token(3).and_then(parse_decimal)),
        b"VA" => Some(token(1).and_then(parse_decimal)),
        _ => None,
    }
}

/// Skips the data block of `len` bytes and its CRLF at `at`.
fn skip_data(bytes: &[u8], at: usize, len: usize) -> Step<usize> {
    match at.checked_add(len).and_then(|end| end.checked_add(2)) {
        Some(end) if end <= bytes.len() => {
            if &bytes[end - 2..end] == b"\r\n" {
                Step::Done(end)
            } else {
                Step::Invalid
            }
        }
        Some(_) => Step::NeedMore,
        None => Step::Invalid,
    }
}

/// Frames a response that runs to `END`: retrieval items (`VALUE` line and
/// data block) or `stats` lines. An error line, or (for `stats reset`,
/// `stats detail on`) a first line that is not a statistic, ends it early.
fn frame_until_end(bytes: &[u8], retrieval: bool) -> Completeness {
    let mut at = 0;
    loop {
        let (line, next) = match line_at(bytes, at, Some(MAX_LINE)) {
            Step::Done(found) => found,
            Step::NeedMore => return Completeness::NeedMore,
            Step::Invalid => return Completeness::Unknown,
        };
        if line == b"END" || is_error_line(line) {
            return Completeness::Complete(next);
        }
        if retrieval {
            let Some(Some(len)) = announced_data(line).filter(|_| line.starts_with(b"VALUE "))
            else {
                return Completeness::Unknown;
            };
            at = match skip_data(bytes, next, len) {
                Step::Done(end) => end,
                Step::NeedMore => return Completeness::NeedMore,
                Step::Invalid => return Completeness::Unknown,
            };
        } else {
            if at == 0 && (line == b"RESET" || line == b"OK") {
                return Completeness::Complete(next);
            }
            at = next;
        }
    }
}

/// Frames a one-line response, or a `VA` line and its data block.
fn frame_single(bytes: &[u8]) -> Completeness {
    let (line, next) = match line_at(bytes, 0, Some(MAX_LINE)) {
        Step::Done(found) => found,
        Step::NeedMore => return Completeness::NeedMore,
        Step::Invalid => return Completeness::Unknown,
    };
    match announced_data(line).filter(|_| line.starts_with(b"VA ")) {
        Some(Some(len)) => match skip_data(bytes, next, len) {
            Step::Done(end) => Completeness::Complete(end),
            Step::NeedMore => Completeness::NeedMore,
            Step::Invalid => Completeness::Unknown,
        },
        Some(None) => Completeness::Unknown,
        None => Completeness::Complete(next),
    }
}

/// Data shown as it is when it is printable ASCII, else by its length.
fn push_data(out: &mut String, data: &[u8]) {
    if data
        .iter()
        .all(|&byte| byte == b' ' || byte == b'\t' || byte.is_ascii_graphic())
    {
        out.push_str(&String::from_utf8_lossy(data));
    } else {
        out.push_str(&format!("<{} bytes of data>", data.len()));
    }
}

/// Appends `line`, printable ASCII as is, anything else as `\xNN`.
fn push_line(out: &mut String, line: &[u8]) {
    for &byte in line {
        if byte == b' ' || byte.is_ascii_graphic() {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("\\x{byte:02x}"));
        }
    }
}

fn render_requests(bytes: &[u8]) -> Option<String> {
    let mut lines = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let Step::Done((command, end)) = frame_command(&bytes[at..]) else {
            break;
        };
        let mut text = String::new();
        push_line(&mut text, command.line);
        if command.data_len().is_some() {
            text.push('\n');
            let data = bytes
                .get(at + command.line_end..at + end - 2)
                .unwrap_or_default();
            push_data(&mut text, data);
        }
        lines.push(text);
        at += end;
    }
    finish_render(lines, bytes.len() - at)
}

fn render_responses(bytes: &[u8]) -> Option<String> {
    let mut lines = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let Step::Done((line, next)) = line_at(bytes, at, Some(MAX_LINE)) else {
            break;
        };
        let word = line.split(|&byte| byte == b' ').next().unwrap_or_default();
        if lines.is_empty() && !RESPONSE_WORDS.contains(&word) && parse_decimal(word).is_none() {
            return None;
        }
        let mut text = String::new();
        push_line(&mut text, line);
        at = next;
        let data = match announced_data(line) {
            Some(Some(len)) => Some(skip_data(bytes, next, len)),
            _ => None,
        };
        match data {
            Some(Step::Done(end)) => {
                text.push('\n');
                push_data(&mut text, &bytes[next..end - 2]);
                at = end;
            }
            // A cut data block: the rest is counted, not read as lines.
            Some(_) => {
                lines.push(text);
                break;
            }
            None => {}
        }
        lines.push(text);
    }
    finish_render(lines, bytes.len() - at)
}

fn finish_render(mut lines: Vec<String>, left: usize) -> Option<String> {
    if lines.is_empty() {
        return None;
    }
    if left > 0 {
        lines.push(format!("({left} more bytes)"));
    }
    Some(lines.join("\n"))
}

impl Protocol for Memcached {
    fn name(&self) -> &'static str {
        "memcached"
    }

    /// A known command word, lower-case (memcached's commands are
    /// case-sensitive, so `GET / HTTP/1.1` is not one), then a space or the
    /// end of the line.
    fn detect_request(&self, bytes: &[u8]) -> bool {
        COMMANDS.iter().any(|command| {
            bytes.strip_prefix(*command).is_some_and(|rest| {
                rest.starts_with(b" ") || rest.starts_with(b"\r\n") || rest.starts_with(b"\n")
            })
        })
    }

    /// The command line and, for storage commands (`set`... `cas`, `ms`),
    /// the data block and its CRLF.
    fn frame_request(&self, bytes: &[u8]) -> Completeness {
        match frame_command(bytes) {
            Step::Done((_, end)) => Completeness::Complete(end),
            Step::NeedMore => Completeness::NeedMore,
            Step::Invalid => Completeness::Unknown,
        }
    }

    /// Retrieval: items up to `END`; `stats`: lines up to `END`; anything
    /// else: one line, or a meta `VA` line and its data block. Nothing for
    /// a request that gets no reply.
    fn frame_response(&self, request: &[u8], bytes: &[u8]) -> Completeness {
        let Step::Done(command) = command(request) else {
            return Completeness::Unknown;
        };
        if !command.expects_response() {
            return Completeness::Complete(0);
        }
        match command.name() {
            name if is_retrieval(name) => frame_until_end(bytes, true),
            b"stats" => frame_until_end(bytes, false),
            _ => frame_single(bytes),
        }
    }

    fn expects_response(&self, request: &[u8]) -> bool {
        match command(request) {
            Step::Done(command) => command.expects_response(),
            Step::NeedMore | Step::Invalid => true,
        }
    }

    /// Key `memcached <command> <key>` (every key of a multi-key get, the
    /// sub-command of `stats`); the canonical bytes are the request as it
    /// is: flags, expiry and data are values the scoring weighs, not part
    /// of the operation.
    fn normalize(&self, request: &[u8], _options: &NormalizeOptions) -> Option<Normalized> {
        let Step::Done(command) = command(request) else {
            return None;
        };
        let name = command.name();
        let count = command.tokens.len();
        // The tokens spelling the key, after the command name.
        let key_tokens = match name {
            b"get" | b"gets" | b"stats" => 1..count,
            b"gat" | b"gats" => 2.min(count)..count,
            b"version" | b"verbosity" | b"flush_all" | b"quit" | b"mn" => 1..1,
            _ => 1..2.min(count),
        };
        let mut key = b"memcached ".to_vec();
        key.extend_from_slice(name);
        for index in key_tokens.clone() {
            key.push(b' ');
            key.extend_from_slice(command.token(index).unwrap_or_default());
        }
        // Scoring starts after the key when the key is the line's start.
        let scored_from = match command.tokens.get(key_tokens.end.saturating_sub(1)) {
            Some(last) if key_tokens.start == 1 && !key_tokens.is_empty() => last.end,
            _ => name.len(),
        };
        Some(Normalized::keyed(request, key, scored_from))
    }

    /// `SERVER_ERROR <message>` (on one line); `None` for a request that
    /// gets no reply, as the client reads none.
    fn error_reply(&self, request: &[u8], message: &str) -> Option<Vec<u8>> {
        let Step::Done(command) = command(request) else {
            return None;
        };
        if !command.expects_response() {
            return None;
        }
        let mut reply = b"SERVER_ERROR ".to_vec();
        reply.extend(message.bytes().map(|byte| match byte {
            b'\r' | b'\n' => b' ',
            other => other,
        }));
        reply.extend_from_slice(b"\r\n");
        Some(reply)
    }

    /// memcached closes the connection on `quit`.
    fn closes_after(&self, request: &[u8], _response: &[u8]) -> bool {
        matches!(command(request), Step::Done(command) if command.name() == b"quit")
    }

    /// Command or response lines, each data block shown when printable,
    /// else as `<N bytes of data>`.
    fn render(&self, bytes: &[u8], side: Side) -> Option<String> {
        match side {
            Side::Request => render_requests(bytes),
            Side::Response => render_responses(bytes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Unit, split_exchange};

    fn options() -> NormalizeOptions<'static> {
        NormalizeOptions::default()
    }

    /// `frame_request` gives `Complete(len)` for `bytes` and `NeedMore` for
    /// every strict prefix.
    fn assert_request_frames(bytes: &[u8], len: usize) {
        assert_eq!(
            Memcached.frame_request(bytes),
            Completeness::Complete(len),
            "{bytes:?}"
        );
        for end in 0..len {
            assert_eq!(
                Memcached.frame_request(&bytes[..end]),
                Completeness::NeedMore,
                "{:?}",
                &bytes[..end]
            );
        }
    }

    /// `frame_response` to `request` gives `Complete(len)` for `bytes` and
    /// `NeedMore` for every strict prefix.
    fn assert_response_frames(request: &[u8], bytes: &[u8], len: usize) {
        assert_eq!(
            Memcached.frame_response(request, bytes),
            Completeness::Complete(len),
            "{bytes:?}"
        );
        for end in 0..len {
            assert_eq!(
                Memcached.frame_response(request, &bytes[..end]),
                Completeness::NeedMore,
                "{:?}",
                &bytes[..end]
            );
        }
    }

    #[test]
    fn detects_lower_case_command_words_only() {
        for request in [
            &b"get a b\r\n"[..],
            b"gets a\r\n",
            b"gat 10 a\r\n",
            b"gats 10 a\r\n",
            b"set k 0 0 1\r\nx\r\n",
            b"add k",
            b"replace k",
            b"append k",
            b"prepend k",
            b"cas k",
            b"incr n 1\r\n",
            b"decr n 1\r\n",
            b"delete k\r\n",
            b"touch k 10\r\n",
            b"verbosity 1\r\n",
            b"version\r\n",
            b"stats\r\n",
            b"stats items\r\n",
            b"flush_all\n",
            b"quit\r\n",
            b"mn\r\n",
            b"mg k v\r\n",
            b"ms k 1\r\nx\r\n",
            b"md k\r\n",
            b"ma k\r\n",
            b"me k\r\n",
        ] {
            assert!(Memcached.detect_request(request), "{request:?}");
        }
        for request in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"Get k\r\n",
            b"SET k 0 0 1\r\n",
            b"getx k\r\n",
            b"get",
            b"version",
            b"",
            b"*1\r\n$4\r\nPING\r\n",
            b"\x01\x01\x00\x01",
        ] {
            assert!(!Memcached.detect_request(request), "{request:?}");
        }
        // HTTP is listed first anyway; upper-case `GET` is not claimed.
        assert_eq!(
            crate::detect_request(b"get k\r\n").map(|p| p.name()),
            Some("memcached")
        );
    }

    #[test]
    fn storage_commands_run_to_the_end_of_their_data_block() {
        assert_request_frames(b"set seen:7 0 0 13\r\n1733150000.25\r\n", 34);
        // The data block may hold CRLF itself; its length decides.
        assert_request_frames(b"set k 0 0 4\r\n\r\n\r\n\r\n", 19);
        assert_request_frames(b"add k 1 60 2 noreply\r\nhi\r\n", 26);
        assert_request_frames(b"cas k 0 0 2 77\r\nhi\r\n", 20);
        assert_request_frames(b"append k 0 0 0\r\n\r\n", 18);
        assert_request_frames(b"ms k2 2 T0 F3\r\nhi\r\n", 19);
        // What follows is the next request.
        assert_eq!(
            Memcached.frame_request(b"prepend k 0 0 1\r\nx\r\nget k\r\n"),
            Completeness::Complete(20)
        );
        // memcached reads `<bytes>` + 2 whatever they are.
        assert_eq!(
            Memcached.frame_request(b"set k 0 0 3\r\nabcd\r\n"),
            Completeness::Complete(18)
        );
        // A line memcached rejects (bad length) is followed by no data.
        assert_eq!(
            Memcached.frame_request(b"set k 0 0 x\r\nabc\r\n"),
            Completeness::Complete(13)
        );
        assert_eq!(
            Memcached.frame_request(b"set k 0 0\r\n"),
            Completeness::Complete(11)
        );
    }

    #[test]
    fn other_commands_are_one_line() {
        assert_request_frames(b"get seen:7 missing other\r\n", 26);
        assert_request_frames(b"gat 100 seen:7\r\n", 16);
        assert_request_frames(b"incr n 10\r\n", 11);
        assert_request_frames(b"delete n noreply\r\n", 18);
        assert_request_frames(b"mg seen:7 v f t\r\n", 17);
        assert_request_frames(b"mn\r\n", 4);
        assert_request_frames(b"version\n", 8);
        assert_eq!(
            Memcached.frame_request(b"get a\r\nset b 0 0 1\r\nx\r\n"),
            Completeness::Complete(7)
        );
        // Not memcached, or too long a line for anything but a get.
        assert_eq!(Memcached.frame_request(b"bogus\r\n"), Completeness::Unknown);
        assert_eq!(
            Memcached.frame_request(b"GET / HTTP/1.1\r\n"),
            Completeness::Unknown
        );
        assert_eq!(Memcached.frame_request(b"\r\n"), Completeness::Unknown);
        assert_eq!(Memcached.frame_request(b"gex"), Completeness::Unknown);
        let mut long = b"delete ".to_vec();
        long.extend(std::iter::repeat_n(b'k', 3000));
        assert_eq!(Memcached.frame_request(&long), Completeness::Unknown);
        let mut many = b"get ".to_vec();
        for key in 0..1000 {
            many.extend(format!("key:{key} ").bytes());
        }
        assert_eq!(Memcached.frame_request(&many), Completeness::NeedMore);
        many.extend(b"\r\n");
        assert_eq!(
            Memcached.frame_request(&many),
            Completeness::Complete(many.len())
        );
    }

    #[test]
    fn retrieval_responses_run_to_end() {
        let get = b"get seen:7 missing other\r\n";
        // Data holding `END\r\n` is skipped by its length.
        let response =
            b"VALUE seen:7 5 13\r\n1733150000.25\r\nVALUE other 0 5 42\r\nEND\r\n\r\nEND\r\n";
        assert_response_frames(get, response, response.len());
        assert_response_frames(b"gets a\r\n", b"END\r\n", 5);
        assert_response_frames(
            b"gat 100 seen:7\r\n",
            b"VALUE seen:7 0 1\r\nx\r\nEND\r\nSTORED\r\n",
            26,
        );
        assert_response_frames(
            get,
            b"SERVER_ERROR out of memory writing get response\r\n",
            49,
        );
        assert_response_frames(get, b"CLIENT_ERROR bad command line format\r\n", 38);
        assert_response_frames(b"get\r\n", b"ERROR\r\n", 7);
        assert_eq!(
            Memcached.frame_response(get, b"STORED\r\n"),
            Completeness::Unknown
        );
        assert_eq!(
            Memcached.frame_response(get, b"VALUE a 0 1\r\nxyz\r\n"),
            Completeness::Unknown
        );
        assert_eq!(
            Memcached.frame_response(get, b"VALUE a 0 x\r\n"),
            Completeness::Unknown
        );
    }

    #[test]
    fn one_line_responses() {
        assert_response_frames(b"set k 0 0 1\r\nx\r\n", b"STORED\r\nEND\r\n", 8);
        assert_response_frames(b"add seen:7 0 0 1\r\nx\r\n", b"NOT_STORED\r\n", 12);
        assert_response_frames(b"cas k 0 0 1 9\r\nx\r\n", b"EXISTS\r\n", 8);
        assert_response_frames(b"incr n 10\r\n", b"15\r\n", 4);
        assert_response_frames(b"decr missing 1\r\n", b"NOT_FOUND\r\n", 11);
        assert_response_frames(b"touch n 10\r\n", b"TOUCHED\r\n", 9);
        assert_response_frames(b"delete n\r\n", b"DELETED\r\n", 9);
        assert_response_frames(b"version\r\n", b"VERSION 1.6.18\r\n", 16);
        assert_response_frames(b"verbosity 1\r\n", b"OK\r\n", 4);
        assert_response_frames(b"flush_all\r\n", b"OK\r\n", 4);
        assert_response_frames(
            b"set k 0 0 1\r\nx\r\n",
            b"CLIENT_ERROR bad data chunk\r\n",
            29,
        );
    }

    #[test]
    fn stats_run_to_end_unless_answered_in_one_line() {
        // The start of memcached 1.6.18's answer to `stats settings`.
        let settings =
            b"STAT maxbytes 67108864\r\nSTAT maxconns 1024\r\nSTAT tcpport 36049\r\nEND\r\n";
        assert_response_frames(b"stats settings\r\n", settings, settings.len());
        assert_response_frames(b"stats\r\n", b"STAT pid 1\r\nEND\r\nOK\r\n", 17);
        assert_response_frames(b"stats reset\r\n", b"RESET\r\n", 7);
        assert_response_frames(b"stats detail on\r\n", b"OK\r\n", 4);
        assert_response_frames(
            b"stats cachedump 1 1\r\n",
            b"ITEM k [1 b; 0 s]\r\nEND\r\n",
            24,
        );
    }

    #[test]
    fn meta_responses_are_one_line_or_a_value() {
        // Answers of memcached 1.6.18.
        assert_response_frames(b"mg seen:7 v f t\r\n", b"VA 1 f0 t-1\r\nx\r\n", 16);
        assert_response_frames(b"mg missing v\r\n", b"EN\r\n", 4);
        assert_response_frames(b"ms k2 2 T0 F3\r\nhi\r\n", b"HD\r\n", 4);
        assert_response_frames(b"md k2\r\n", b"NF\r\n", 4);
        assert_response_frames(b"ma cnt N0 J5 v\r\n", b"VA 1\r\n5\r\n", 9);
        let me = b"ME seen:7 exp=-1 la=1 cas=1 fetch=yes cls=1 size=66\r\n";
        assert_response_frames(b"me seen:7\r\n", me, me.len());
        assert_response_frames(b"mn\r\n", b"MN\r\n", 4);
        assert_eq!(
            Memcached.frame_response(b"mg k v\r\n", b"VA x\r\n"),
            Completeness::Unknown
        );
        assert_eq!(
            Memcached.frame_response(b"mg k v\r\n", b"VA 1\r\nxy\r\n"),
            Completeness::Unknown
        );
    }

    #[test]
    fn noreply_quiet_and_quit_expect_no_response() {
        for request in [
            &b"set n 0 0 1 noreply\r\n5\r\n"[..],
            b"cas n 0 0 1 5 noreply\r\n5\r\n",
            b"incr n 1 noreply\r\n",
            b"delete n noreply\r\n",
            b"touch n 1 noreply\r\n",
            b"flush_all noreply\r\n",
            b"verbosity 1 noreply\r\n",
            b"ms k2 2 q\r\nhi\r\n",
            b"md k2 q\r\n",
            b"mg k v q\r\n",
            b"ma k q\r\n",
            b"quit\r\n",
        ] {
            assert!(!Memcached.expects_response(request), "{request:?}");
            assert_eq!(
                Memcached.frame_response(request, b"STORED\r\n"),
                Completeness::Complete(0)
            );
        }
        for request in [
            &b"set n 0 0 7\r\nnoreply\r\n"[..],
            b"get noreply\r\n",
            b"mg q v\r\n",
            b"ms q 1\r\nq\r\n",
            b"mn\r\n",
            b"version\r\n",
            b"not memcached",
        ] {
            assert!(Memcached.expects_response(request), "{request:?}");
        }
    }

    #[test]
    fn pipelines_split_into_units() {
        let request = b"get a\r\nset b 0 0 1\r\nx\r\n";
        let response = b"VALUE a 0 1\r\n1\r\nEND\r\nSTORED\r\n";
        assert_eq!(
            split_exchange(&Memcached, request, response),
            Some(vec![
                Unit {
                    request: 0..7,
                    response: 0..21,
                },
                Unit {
                    request: 7..23,
                    response: 21..29,
                },
            ])
        );
        // memcached 1.6.18: a quiet set that succeeded, then mn.
        assert_eq!(
            split_exchange(&Memcached, b"ms k2 2 q\r\nhi\r\nmn\r\n", b"MN\r\n"),
            Some(vec![
                Unit {
                    request: 0..15,
                    response: 0..0,
                },
                Unit {
                    request: 15..19,
                    response: 0..4,
                },
            ])
        );
        // A quiet delete that did answer (NF) leaves a reply nothing
        // claims: the exchange stays whole.
        assert_eq!(
            split_exchange(&Memcached, b"md k2 q\r\nmd k2 q\r\nmn\r\n", b"NF\r\nMN\r\n"),
            None
        );
    }

    #[test]
    fn normalizes_to_the_request_keyed_by_command_and_keys() {
        let first = b"set seen:7 0 0 13\r\n1733150000.25\r\n";
        let second = b"set seen:7 0 0 13\r\n1733150999.75\r\n";
        let left = Memcached.normalize(first, &options()).expect("memcached");
        let right = Memcached.normalize(second, &options()).expect("memcached");
        assert_eq!(left.key, b"memcached set seen:7");
        assert_eq!(right.key, left.key);
        assert_eq!(left.bytes, first);
        assert_eq!(left.scored_from, 10);
        assert_eq!(left.header_range, 0..0);

        for (request, key, scored_from) in [
            (&b"get a b c\r\n"[..], &b"memcached get a b c"[..], 9),
            (b"gets a\r\n", b"memcached gets a", 6),
            (b"gat 100 a b\r\n", b"memcached gat a b", 3),
            (b"incr n 10\r\n", b"memcached incr n", 6),
            (b"delete n noreply\r\n", b"memcached delete n", 8),
            (b"mg seen:7 v f t\r\n", b"memcached mg seen:7", 9),
            (b"ms k2 2 T0 F3\r\nhi\r\n", b"memcached ms k2", 5),
            (b"stats settings\r\n", b"memcached stats settings", 14),
            (b"stats\r\n", b"memcached stats", 5),
            (b"version\r\n", b"memcached version", 7),
            (b"verbosity 1\r\n", b"memcached verbosity", 9),
            (b"mn\r\n", b"memcached mn", 2),
        ] {
            let normalized = Memcached.normalize(request, &options()).expect("memcached");
            assert_eq!(normalized.key, key, "{request:?}");
            assert_eq!(normalized.bytes, request);
            assert_eq!(normalized.scored_from, scored_from, "{request:?}");
        }
        assert_eq!(Memcached.normalize(b"GET / HTTP/1.1\r\n", &options()), None);
        assert_eq!(Memcached.normalize(b"get a", &options()), None);
    }

    #[test]
    fn error_reply_is_a_server_error_line() {
        assert_eq!(
            Memcached
                .error_reply(b"get a\r\n", "no recorded call matches")
                .as_deref(),
            Some(&b"SERVER_ERROR no recorded call matches\r\n"[..])
        );
        assert_eq!(
            Memcached
                .error_reply(b"mg a v q\r\nx", "two\r\nlines")
                .as_deref(),
            None
        );
        assert_eq!(
            Memcached
                .error_reply(b"mg a v\r\n", "two\r\nlines")
                .as_deref(),
            Some(&b"SERVER_ERROR two  lines\r\n"[..])
        );
        assert_eq!(
            Memcached.error_reply(b"set a 0 0 1 noreply\r\nx\r\n", "x"),
            None
        );
        assert_eq!(Memcached.error_reply(b"GET / HTTP/1.1\r\n", "x"), None);
    }

    #[test]
    fn closes_after_quit_only() {
        assert!(Memcached.closes_after(b"quit\r\n", b""));
        assert!(!Memcached.closes_after(b"get a\r\n", b"END\r\n"));
        assert!(!Memcached.closes_after(b"quitx\r\n", b""));
    }

    #[test]
    fn renders_lines_and_data() {
        assert_eq!(
            Memcached
                .render(
                    b"set seen:7 0 0 12\r\n1733150000.5\r\nget a b\r\n",
                    Side::Request
                )
                .as_deref(),
            Some("set seen:7 0 0 12\n1733150000.5\nget a b")
        );
        assert_eq!(
            Memcached
                .render(b"ms k 3 T0\r\n\x00\x01\x02\r\nmg k", Side::Request)
                .as_deref(),
            Some("ms k 3 T0\n<3 bytes of data>\n(4 more bytes)")
        );
        assert_eq!(
            Memcached
                .render(
                    b"VALUE a 0 2\r\nhi\r\nVALUE b 0 2\r\n\r\n\r\nEND\r\n",
                    Side::Response
                )
                .as_deref(),
            Some("VALUE a 0 2\nhi\nVALUE b 0 2\n<2 bytes of data>\nEND")
        );
        assert_eq!(
            Memcached
                .render(b"VA 1 f0\r\nx\r\nMN\r\n15\r\n", Side::Response)
                .as_deref(),
            Some("VA 1 f0\nx\nMN\n15")
        );
        assert_eq!(
            Memcached
                .render(b"VALUE a 0 20\r\nshort", Side::Response)
                .as_deref(),
            Some("VALUE a 0 20\n(5 more bytes)")
        );
        assert_eq!(
            Memcached.render(b"HTTP/1.1 200 OK\r\n", Side::Response),
            None
        );
        assert_eq!(Memcached.render(b"GET / HTTP/1.1\r\n", Side::Request), None);
    }

    #[test]
    fn never_panics_on_cut_or_odd_bytes() {
        let inputs: &[&[u8]] = &[
            b"set k 0 0 18446744073709551615\r\nx\r\n",
            b"ms k 99999999999999999999999\r\n",
            b"VALUE a 0 18446744073709551615\r\nx",
            b"VA 18446744073709551615\r\n",
            b"get \xff\xfe\r\n",
            b"cas k\r\n",
            b"mg\r\n",
            b"ms\r\n",
            b"gat\r\n",
            b"set seen:7 0 0 13\r\n1733150000.25\r\nVALUE a 0 1\r\n1\r\nEND\r\n",
        ];
        for input in inputs {
            for end in 0..=input.len() {
                let bytes = &input[..end];
                Memcached.detect_request(bytes);
                Memcached.frame_request(bytes);
                Memcached.frame_response(bytes, bytes);
                Memcached.expects_response(bytes);
                Memcached.normalize(bytes, &options());
                Memcached.error_reply(bytes, "x");
                Memcached.closes_after(bytes, bytes);
                Memcached.render(bytes, Side::Request);
                Memcached.render(bytes, Side::Response);
            }
        }
    }
}
