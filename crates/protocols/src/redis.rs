//! Redis RESP2 and RESP3: framing commands and replies, operation keys,
//! connection set-up commands, error replies and a redis-cli-like
//! rendering.
//!
//! Clients send commands as arrays of bulk strings (`*2\r\n$3\r\nGET\r\n
//! $1\r\nk\r\n`); only those are detected: an inline command (a line of
//! text) looks like any other line-based text protocol. Framing still
//! accepts inline commands once the protocol is known. A pipeline written
//! in one go is framed one command at a time, and each reply is one RESP
//! value (any RESP2/RESP3 type; an attribute is framed together with the
//! value it annotates).

use crate::parse::{Step, crlf_line, parse_decimal, printable, step, trim_line_ending};
use crate::{Completeness, NormalizeOptions, Normalized, Protocol, Side};

/// The Redis protocol.
pub struct Redis;

/// Redis refuses bulk strings longer than 512 MiB (`proto-max-bulk-len`).
const MAX_BULK_BYTES: u64 = 512 * 1024 * 1024;
/// Redis refuses aggregates with more elements than this.
const MAX_ELEMENTS: u64 = i32::MAX as u64;
/// Nesting deeper than this is treated as garbage rather than recursed into.
const MAX_DEPTH: usize = 32;
/// Redis refuses inline commands longer than 64 KiB.
const MAX_INLINE_BYTES: usize = 64 * 1024;
/// A RESP type line carrying a number is never longer than this.
const MAX_NUMBER_LINE: usize = 24;

impl Protocol for Redis {
    fn name(&self) -> &'static str {
        "redis"
    }

    /// A (possibly partial) RESP array: what clients send.
    fn detect_request(&self, bytes: &[u8]) -> bool {
        bytes.first() == Some(&b'*') && frame(bytes) != Completeness::Unknown
    }

    /// One command: an array of bulk strings, or an inline command.
    fn frame_request(&self, bytes: &[u8]) -> Completeness {
        frame(bytes)
    }

    /// One RESP value.
    fn frame_response(&self, _request: &[u8], bytes: &[u8]) -> Completeness {
        if bytes.is_empty() {
            return Completeness::NeedMore;
        }
        value(bytes, 0, 0).into_completeness()
    }

    /// The bytes as they are; the key is `resp COMMAND first-argument`
    /// (see [`operation`]) and scoring starts after them.
    fn normalize(&self, request: &[u8], _options: &NormalizeOptions) -> Option<Normalized> {
        let (key, scored_from) = operation(request)?;
        Some(Normalized::keyed(request, key, scored_from))
    }

    /// `HELLO`, `AUTH`, `SELECT`, `READONLY` and the `CLIENT` settings of a
    /// connection (`SETINFO`, `SETNAME`, `TRACKING`, `NO-EVICT`,
    /// `NO-TOUCH`, `REPLY`, and redis-py 6+'s `MAINT_NOTIFICATIONS`): what
    /// client libraries send when they open a connection. `PING` is not
    /// set-up: applications send it too.
    fn is_setup(&self, request: &[u8]) -> bool {
        let Some(arguments) = command_arguments(request) else {
            return false;
        };
        let is = |at: usize, name: &[u8]| {
            arguments
                .get(at)
                .is_some_and(|argument| argument.eq_ignore_ascii_case(name))
        };
        is(0, b"HELLO")
            || is(0, b"AUTH")
            || is(0, b"SELECT")
            || is(0, b"READONLY")
            || (is(0, b"CLIENT")
                && [
                    &b"SETINFO"[..],
                    b"SETNAME",
                    b"TRACKING",
                    b"NO-EVICT",
                    b"NO-TOUCH",
                    b"REPLY",
                    b"MAINT_NOTIFICATIONS",
                ]
                .iter()
                .any(|name| is(1, name)))
    }

    /// `-ERR message`, line breaks in `message` replaced by spaces.
    fn error_reply(&self, _request: &[u8], message: &str) -> Option<Vec<u8>> {
        let message = message
            .trim_end_matches(['\r', '\n'])
            .replace(['\r', '\n'], " ");
        Some(format!("-ERR {message}\r\n").into_bytes())
    }

    /// Requests as commands (`SET key "two words"`, one per line), replies
    /// like redis-cli shows them (`OK`, `(integer) 1`, `1) "a"`). Bytes
    /// after the last complete message are shown as text. `None` when the
    /// bytes do not start with a complete RESP message.
    fn render(&self, bytes: &[u8], side: Side) -> Option<String> {
        let mut out = String::new();
        let mut at = 0;
        while at < bytes.len() {
            let rest = &bytes[at..];
            let rendered = match side {
                Side::Request => render_command(rest),
                Side::Response => render_reply(rest),
            };
            let Some((text, len)) = rendered else {
                if at == 0 {
                    return None;
                }
                out.push('\n');
                out.push_str(&printable(rest));
                break;
            };
            if at > 0 {
                out.push('\n');
            }
            out.push_str(&text);
            at += len;
        }
        (at > 0).then_some(out)
    }
}

/// A RESP length or count: `-1` (null) or a non-negative decimal.
fn length(line: &[u8], max: u64) -> Step<Option<u64>> {
    if line == b"-1" {
        return Step::Done(None);
    }
    match parse_decimal(line) {
        Some(value) if (value as u64) <= max => Step::Done(Some(value as u64)),
        _ => Step::Invalid,
    }
}

/// Validates one RESP2/RESP3 value at `at`; returns the position after it.
fn value(bytes: &[u8], at: usize, depth: usize) -> Step<usize> {
    if depth > MAX_DEPTH {
        return Step::Invalid;
    }
    let Some(&kind) = bytes.get(at) else {
        return Step::NeedMore;
    };
    let body = at + 1;
    match kind {
        // Simple string, simple error, big number: one line of text.
        b'+' | b'-' | b'(' => crlf_line(bytes, body, None).map_done(|(_, end)| end),
        b':' => {
            let (line, end) = step!(crlf_line(bytes, body, Some(MAX_NUMBER_LINE)));
            let digits = line
                .strip_prefix(b"-")
                .or_else(|| line.strip_prefix(b"+"))
                .unwrap_or(line);
            if parse_decimal(digits).is_none() {
                return Step::Invalid;
            }
            Step::Done(end)
        }
        b'_' => {
            let (line, end) = step!(crlf_line(bytes, body, Some(0)));
            if line.is_empty() {
                Step::Done(end)
            } else {
                Step::Invalid
            }
        }
        b'#' => {
            let (line, end) = step!(crlf_line(bytes, body, Some(1)));
            if line == b"t" || line == b"f" {
                Step::Done(end)
            } else {
                Step::Invalid
            }
        }
        b',' => crlf_line(bytes, body, Some(MAX_NUMBER_LINE * 4)).map_done(|(_, end)| end),
        // Bulk string, blob error, verbatim string: length-prefixed.
        b'$' | b'!' | b'=' => {
            let (line, data_start) = step!(crlf_line(bytes, body, Some(MAX_NUMBER_LINE)));
            let Some(len) = step!(length(line, MAX_BULK_BYTES)) else {
                return if kind == b'$' {
                    Step::Done(data_start)
                } else {
                    Step::Invalid
                };
            };
            let data_end = data_start + len as usize;
            match bytes.get(data_end..data_end + 2) {
                Some(b"\r\n") => Step::Done(data_end + 2),
                Some(_) => Step::Invalid,
                None => match bytes.get(data_end..) {
                    // Only "\r" of the terminator so far.
                    Some(b"\r") | None | Some(b"") => Step::NeedMore,
                    Some(_) => Step::Invalid,
                },
            }
        }
        // Array, set, push: `count` values; map and attribute: pairs.
        b'*' | b'~' | b'>' | b'%' | b'|' => {
            let (line, mut next) = step!(crlf_line(bytes, body, Some(MAX_NUMBER_LINE)));
            let Some(count) = step!(length(line, MAX_ELEMENTS)) else {
                return if kind == b'*' {
                    Step::Done(next)
                } else {
                    Step::Invalid
                };
            };
            let values = if kind == b'%' || kind == b'|' {
                count * 2
            } else {
                count
            };
            // Each value takes at least 3 bytes, so this loop ends with the input.
            for _ in 0..values {
                next = step!(value(bytes, next, depth + 1));
            }
            if kind == b'|' {
                // An attribute annotates the value that follows it.
                return value(bytes, next, depth + 1);
            }
            Step::Done(next)
        }
        _ => Step::Invalid,
    }
}

/// A byte allowed in an inline command line.
fn is_inline_byte(byte: u8) -> bool {
    byte == b' ' || byte == b'\t' || byte.is_ascii_graphic() || byte >= 0x80
}

/// A Redis inline command: one line of printable text.
fn inline(bytes: &[u8]) -> Completeness {
    let newline = bytes.iter().position(|&byte| byte == b'\n');
    let content = match newline {
        Some(at) => trim_line_ending(&bytes[..=at]),
        // A trailing "\r" is the start of the line ending.
        None => bytes.strip_suffix(b"\r").unwrap_or(bytes),
    };
    if content.len() > MAX_INLINE_BYTES || !content.iter().all(|&byte| is_inline_byte(byte)) {
        return Completeness::Unknown;
    }
    match newline {
        // An HTTP request line is not an inline command.
        Some(_) if looks_like_http_request_line(content) => Completeness::Unknown,
        Some(at) => Completeness::Complete(at + 1),
        None => Completeness::NeedMore,
    }
}

fn looks_like_http_request_line(line: &[u8]) -> bool {
    line.len() >= 9 && line[line.len() - 9..line.len() - 1].eq_ignore_ascii_case(b" HTTP/1.")
}

/// Whether the first RESP message in `bytes` is complete.
///
/// Accepts every RESP2 and RESP3 type (clients send arrays of bulk strings;
/// the other types let the same function frame replies), and inline
/// commands (a line of printable text starting with a letter). `Unknown` for
/// anything else, including an HTTP request line.
pub fn frame(bytes: &[u8]) -> Completeness {
    match bytes.first() {
        None => Completeness::NeedMore,
        Some(first) if first.is_ascii_alphabetic() => inline(bytes),
        Some(_) => value(bytes, 0, 0).into_completeness(),
    }
}

/// The RESP line after the type byte `kind` at `at`: its content and the
/// position after it.
fn typed_line(bytes: &[u8], at: usize, kind: u8) -> Option<(&[u8], usize)> {
    if bytes.get(at) != Some(&kind) {
        return None;
    }
    crlf_line(bytes, at + 1, None).done()
}

/// Reads one RESP bulk string (`$len\r\ndata\r\n`) at `at`.
fn bulk(bytes: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let (digits, data_start) = typed_line(bytes, at, b'$')?;
    let len = parse_decimal(digits)?;
    let data = bytes.get(data_start..data_start.checked_add(len)?)?;
    Some((data, data_start + len + 2))
}

/// The operation of a command array: `resp ` then the command name
/// (upper-cased) and its first argument, which for nearly every command is
/// the key operated on; and where the bytes after them start.
pub fn operation(request: &[u8]) -> Option<(Vec<u8>, usize)> {
    let (digits, first) = typed_line(request, 0, b'*')?;
    let count = parse_decimal(digits)?;
    if count == 0 {
        return None;
    }
    let (command, next) = bulk(request, first)?;
    let mut key = b"resp ".to_vec();
    key.extend(command.iter().map(u8::to_ascii_uppercase));
    if count < 2 {
        return Some((key, next));
    }
    let (argument, after) = bulk(request, next)?;
    key.push(b' ');
    key.extend_from_slice(argument);
    Some((key, after))
}

/// The arguments of a complete command array (the command name first);
/// `None` for anything else.
pub fn command_arguments(request: &[u8]) -> Option<Vec<&[u8]>> {
    let (digits, mut at) = typed_line(request, 0, b'*')?;
    let count = parse_decimal(digits)?;
    // Not `with_capacity(count)`: the count is the client's word.
    let mut arguments = Vec::new();
    for _ in 0..count {
        let (argument, next) = bulk(request, at)?;
        if request.get(next - 2..next) != Some(b"\r\n") {
            return None;
        }
        arguments.push(argument);
        at = next;
    }
    Some(arguments)
}

/// The first request in `bytes` rendered, and its length.
fn render_command(bytes: &[u8]) -> Option<(String, usize)> {
    let Completeness::Complete(len) = frame(bytes) else {
        return None;
    };
    let message = &bytes[..len];
    if let Some(arguments) = command_arguments(message) {
        let words: Vec<String> = arguments.iter().map(|argument| word(argument)).collect();
        return Some((words.join(" "), len));
    }
    if message.first().is_some_and(u8::is_ascii_alphabetic) {
        return Some((printable(trim_line_ending(message)), len));
    }
    render_reply(message)
}

/// The first reply in `bytes` rendered, and its length.
fn render_reply(bytes: &[u8]) -> Option<(String, usize)> {
    let mut out = String::new();
    let len = render_value(bytes, 0, 0, 0, &mut out)?;
    Some((out, len))
}

/// An argument as a word: as it is when it is plain printable ASCII,
/// quoted with escapes otherwise.
fn word(argument: &[u8]) -> String {
    let plain = !argument.is_empty()
        && argument
            .iter()
            .all(|&byte| byte.is_ascii_graphic() && !b"\"'\\".contains(&byte));
    if plain {
        String::from_utf8_lossy(argument).into_owned()
    } else {
        quoted(argument)
    }
}

/// `bytes` in double quotes, escaped as redis-cli does.
fn quoted(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() + 2);
    out.push('"');
    for &byte in bytes {
        match byte {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            b' ' => out.push(' '),
            _ if byte.is_ascii_graphic() => out.push(char::from(byte)),
            _ => out.push_str(&format!("\\x{byte:02x}")),
        }
    }
    out.push('"');
    out
}

/// Renders the RESP value at `at` into `out`, nested lines indented by
/// `indent` spaces; returns the position after it.
fn render_value(
    bytes: &[u8],
    at: usize,
    depth: usize,
    indent: usize,
    out: &mut String,
) -> Option<usize> {
    if depth > MAX_DEPTH {
        return None;
    }
    let kind = *bytes.get(at)?;
    let (line, next) = crlf_line(bytes, at + 1, None).done()?;
    let text = |prefix: &str| format!("{prefix}{}", printable(line));
    match kind {
        b'+' => out.push_str(&printable(line)),
        b'-' => out.push_str(&text("(error) ")),
        b':' => out.push_str(&text("(integer) ")),
        b'(' => out.push_str(&text("(big number) ")),
        b',' => out.push_str(&text("(double) ")),
        b'#' => out.push_str(if line == b"t" { "(true)" } else { "(false)" }),
        b'_' => out.push_str("(nil)"),
        b'$' | b'!' | b'=' => {
            if line == b"-1" {
                out.push_str("(nil)");
                return Some(next);
            }
            let len = parse_decimal(line)?;
            let end = next.checked_add(len)?;
            let data = bytes.get(next..end)?;
            if bytes.get(end..end + 2) != Some(b"\r\n") {
                return None;
            }
            match kind {
                b'$' => out.push_str(&quoted(data)),
                b'!' => out.push_str(&format!("(error) {}", printable(data))),
                // A verbatim string starts with its format (`txt:`); its
                // text's lines (INFO's) end with CRLF.
                _ => {
                    let text = printable(data.get(4..).unwrap_or_default());
                    out.push_str(&text.replace("\\r\n", "\n"));
                }
            }
            return Some(end + 2);
        }
        b'*' | b'~' | b'>' | b'%' | b'|' => {
            if line == b"-1" {
                out.push_str("(nil)");
                return Some(next);
            }
            let count = parse_decimal(line)?;
            let pairs = kind == b'%' || kind == b'|';
            if kind == b'|' {
                out.push_str("(attribute) ");
            }
            if count == 0 {
                out.push_str(match kind {
                    b'%' | b'|' => "(empty map)",
                    b'~' => "(empty set)",
                    _ => "(empty array)",
                });
            }
            let mut at = next;
            for index in 1..=count {
                let label = format!("{index}) ");
                if index > 1 {
                    out.push('\n');
                    out.push_str(&" ".repeat(indent));
                }
                out.push_str(&label);
                let inner = indent + label.len();
                at = render_value(bytes, at, depth + 1, inner, out)?;
                if pairs {
                    out.push_str(" => ");
                    at = render_value(bytes, at, depth + 1, inner, out)?;
                }
            }
            if kind == b'|' {
                // The value the attribute annotates.
                out.push('\n');
                out.push_str(&" ".repeat(indent));
                return render_value(bytes, at, depth + 1, indent, out);
            }
            return Some(at);
        }
        _ => return None,
    }
    Some(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Completeness::{Complete, NeedMore, Unknown};
    use crate::parse::testing::{Frame, assert_frames, check_frame, fuzz_inputs};
    use crate::{Unit, split_exchange};

    fn command(arguments: &[&[u8]]) -> Vec<u8> {
        let mut out = format!("*{}\r\n", arguments.len()).into_bytes();
        for argument in arguments {
            out.extend_from_slice(format!("${}\r\n", argument.len()).as_bytes());
            out.extend_from_slice(argument);
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    fn reply(bytes: &[u8]) -> Completeness {
        Redis.frame_response(b"", bytes)
    }

    // Framing -----------------------------------------------------------------

    #[test]
    fn commands() {
        assert_frames(frame, b"*2\r\n$3\r\nGET\r\n$6\r\nkey:17\r\n");
        assert_frames(frame, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n");
        assert_frames(frame, b"*1\r\n$4\r\nPING\r\n");
        // Binary-safe bulk strings.
        assert_frames(frame, b"*2\r\n$3\r\nSET\r\n$4\r\n\r\n\x00\xff\r\n");
    }

    #[test]
    fn replies_of_every_type() {
        let replies: [&[u8]; 16] = [
            b"+OK\r\n",
            b"-ERR unknown command\r\n",
            b":-42\r\n",
            b"$-1\r\n",
            b"*-1\r\n",
            b"*0\r\n",
            b"*2\r\n*1\r\n:1\r\n$2\r\nab\r\n",
            b"_\r\n",
            b"#t\r\n",
            b",3.14\r\n",
            b"(3492890328409238509324850943850943825024385\r\n",
            b"!8\r\nSYNTAX x\r\n",
            b"=7\r\ntxt:abc\r\n",
            b"%1\r\n+key\r\n:1\r\n",
            b"~2\r\n+a\r\n+b\r\n",
            b"|1\r\n+ttl\r\n:3600\r\n$5\r\nvalue\r\n",
        ];
        for bytes in replies {
            assert_frames(frame, bytes);
            assert_frames(reply, bytes);
        }
        assert_frames(frame, b">3\r\n+message\r\n+chan\r\n$2\r\nhi\r\n");
    }

    #[test]
    fn a_resp3_hello_map_reply_is_framed_whole() {
        let hello = b"%7\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n$5\r\n7.2.4\r\n\
                      $5\r\nproto\r\n:3\r\n$2\r\nid\r\n:5\r\n$4\r\nmode\r\n$10\r\nstandalone\r\n\
                      $4\r\nrole\r\n$6\r\nmaster\r\n$7\r\nmodules\r\n*0\r\n";
        assert_frames(reply, hello);
        let request = command(&[b"HELLO", b"3"]);
        assert_eq!(
            split_exchange(&Redis, &request, hello),
            Some(vec![Unit {
                request: 0..request.len(),
                response: 0..hello.len(),
            }])
        );
    }

    #[test]
    fn inline_commands() {
        assert_frames(frame, b"PING\r\n");
        assert_frames(frame, b"SET key \"some value\"\n");
        // An HTTP request line is not an inline command.
        assert_eq!(frame(b"GET / HTTP/1.1\r\n"), Unknown);
        assert_eq!(frame(b"PI\x00NG\r\n"), Unknown);
        // Replies are never inline.
        assert_eq!(reply(b"OK\r\n"), Unknown);
    }

    #[test]
    fn pipelined_commands() {
        let ping = b"*1\r\n$4\r\nPING\r\n";
        let get = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n";
        let both = [&ping[..], &get[..]].concat();
        assert_eq!(frame(&both), Complete(ping.len()));
        assert_eq!(frame(&both[ping.len()..]), Complete(get.len()));
    }

    #[test]
    fn malformed() {
        let cases: [&[u8]; 12] = [
            b"*x\r\n",
            b"*2\r\n$3\r\nGET\r\n$3\r\nabcd\r\n",
            b"$3\r\nabc\n\n",
            b"#x\r\n",
            b"_a\r\n",
            b":12a\r\n",
            b"?\r\n",
            b"$-2\r\n",
            b"%-1\r\n",
            b"$999999999999\r\n",
            b"*1\n$4\r\nPING\r\n",
            b"\x00\x01",
        ];
        for case in cases {
            assert_eq!(frame(case), Unknown, "{:?}", String::from_utf8_lossy(case));
        }
        let deep = b"*1\r\n".repeat(MAX_DEPTH + 5);
        assert_eq!(frame(&deep), Unknown);
        // A huge count with little data waits, quickly.
        assert_eq!(frame(b"*2147483647\r\n:1\r\n:2\r\n"), NeedMore);
        assert_eq!(frame(b"$536870912\r\nabc"), NeedMore);
    }

    #[test]
    fn detects_command_arrays_only() {
        assert!(Redis.detect_request(b"*1\r\n$4\r\nPING\r\n"));
        assert!(
            Redis.detect_request(b"*1\r\n$4\r\nPI"),
            "a beginning is enough"
        );
        assert!(!Redis.detect_request(b"PING\r\n"), "inline commands");
        assert!(!Redis.detect_request(b"+OK\r\n"));
        assert!(!Redis.detect_request(b""));
        // A MySQL packet whose 42-byte length starts it with '*'.
        let mut star = vec![42, 0, 0, 0, 3];
        star.resize(46, b' ');
        assert!(!Redis.detect_request(&star));
    }

    // Pipelines split into units ----------------------------------------------

    #[test]
    fn a_node_redis_handshake_pipeline_splits_into_its_commands() {
        let name = command(&[b"CLIENT", b"SETINFO", b"LIB-NAME", b"node-redis"]);
        let version = command(&[b"CLIENT", b"SETINFO", b"LIB-VER", b"4.6.13"]);
        let request = [name, version].concat();
        let response = b"+OK\r\n+OK\r\n";
        assert_eq!(
            split_exchange(&Redis, &request, response),
            Some(vec![
                Unit {
                    request: 0..60,
                    response: 0..5,
                },
                Unit {
                    request: 60..114,
                    response: 5..10,
                },
            ])
        );
        // One reply short: not split.
        assert_eq!(split_exchange(&Redis, &request, b"+OK\r\n"), None);
    }

    #[test]
    fn a_transaction_splits_into_its_commands() {
        let multi = command(&[b"MULTI"]);
        let set = command(&[b"SET", b"k", b"v"]);
        let exec = command(&[b"EXEC"]);
        let request = [multi.clone(), set.clone(), exec.clone()].concat();
        let response = b"+OK\r\n+QUEUED\r\n*1\r\n+OK\r\n";
        let (a, b) = (multi.len(), multi.len() + set.len());
        assert_eq!(
            split_exchange(&Redis, &request, response),
            Some(vec![
                Unit {
                    request: 0..a,
                    response: 0..5,
                },
                Unit {
                    request: a..b,
                    response: 5..14,
                },
                Unit {
                    request: b..request.len(),
                    response: 14..response.len(),
                },
            ])
        );
    }

    // Normalisation and set-up ------------------------------------------------

    #[test]
    fn operation_keys() {
        let normalize = |request: &[u8]| Redis.normalize(request, &NormalizeOptions::default());
        let get = command(&[b"get", b"user:7"]);
        let normalized = normalize(&get).expect("a command");
        assert_eq!(normalized.key, b"resp GET user:7");
        assert_eq!(normalized.bytes, get);
        assert_eq!(normalized.scored_from, get.len());
        assert_eq!(normalized.header_range, 0..0);
        let set = command(&[b"SET", b"k", b"value"]);
        let normalized = normalize(&set).expect("a command");
        assert_eq!(
            (normalized.key.as_slice(), normalized.scored_from),
            (&b"resp SET k"[..], 20)
        );
        let ping = command(&[b"PING"]);
        assert_eq!(normalize(&ping).expect("a command").key, b"resp PING");
        assert_eq!(normalize(&ping).expect("a command").scored_from, 14);
        assert_eq!(normalize(b"*2\r\n$3\r\nGET\r\n$99\r\nshort\r\n"), None);
        assert_eq!(normalize(b"*0\r\n"), None);
        assert_eq!(normalize(b"PING\r\n"), None);
    }

    #[test]
    fn set_up_commands() {
        let setup: [&[&[u8]]; 8] = [
            &[b"HELLO", b"3", b"AUTH", b"default", b"secret"],
            &[b"auth", b"secret"],
            &[b"SELECT", b"2"],
            &[b"CLIENT", b"SETINFO", b"LIB-NAME", b"redis-py"],
            &[b"client", b"setname", b"worker-1"],
            &[b"READONLY"],
            &[b"HELLO"],
            // redis-py 8's handshake.
            &[
                b"CLIENT",
                b"MAINT_NOTIFICATIONS",
                b"ON",
                b"moving-endpoint-type",
                b"internal-ip",
            ],
        ];
        for arguments in setup {
            assert!(Redis.is_setup(&command(arguments)), "{arguments:?}");
        }
        let not_setup: [&[&[u8]]; 4] = [
            &[b"PING"],
            &[b"GET", b"AUTH"],
            &[b"CLIENT", b"LIST"],
            &[b"CLIENT"],
        ];
        for arguments in not_setup {
            assert!(!Redis.is_setup(&command(arguments)), "{arguments:?}");
        }
        assert!(!Redis.is_setup(b"AUTH secret\r\n"), "inline commands");
        assert!(!Redis.is_setup(b"*1\r\n$5\r\nHELLO"), "incomplete");
    }

    // Errors and rendering ----------------------------------------------------

    #[test]
    fn error_replies_are_one_line() {
        assert_eq!(
            Redis.error_reply(b"", "koala: no recorded call\r\nmatches\n"),
            Some(b"-ERR koala: no recorded call  matches\r\n".to_vec())
        );
        let reply = Redis.error_reply(b"", "x").expect("an error reply");
        assert_eq!(frame(&reply), Complete(reply.len()));
    }

    #[test]
    fn renders_commands() {
        let pipeline = [
            command(&[b"SET", b"user:7", b"two words"]),
            command(&[b"SET", b"k", b"", b"a\"b\\c\r\n\x00\xff"]),
            b"PING\r\n".to_vec(),
        ]
        .concat();
        assert_eq!(
            Redis.render(&pipeline, Side::Request).as_deref(),
            Some("SET user:7 \"two words\"\nSET k \"\" \"a\\\"b\\\\c\\r\\n\\x00\\xff\"\nPING")
        );
        // The first command and the start of the second.
        let cut = &pipeline[..48];
        assert_eq!(
            Redis.render(cut, Side::Request).as_deref(),
            Some("SET user:7 \"two words\"\n*4\\r\n$3\\r\n")
        );
        assert_eq!(Redis.render(b"\x00\x01", Side::Request), None);
        assert_eq!(Redis.render(b"", Side::Request), None);
    }

    #[test]
    fn renders_replies() {
        let replies = b"+OK\r\n-ERR no\r\n:7\r\n$-1\r\n$3\r\na b\r\n*0\r\n_\r\n#f\r\n,1.5\r\n(12\r\n!3\r\nbad\r\n=7\r\ntxt:abc\r\n";
        assert_eq!(
            Redis.render(replies, Side::Response).as_deref(),
            Some(
                "OK\n(error) ERR no\n(integer) 7\n(nil)\n\"a b\"\n(empty array)\n(nil)\n(false)\n\
                 (double) 1.5\n(big number) 12\n(error) bad\nabc"
            )
        );
        let nested = b"*2\r\n*2\r\n:1\r\n:2\r\n%1\r\n+k\r\n~1\r\n+v\r\n";
        assert_eq!(
            Redis.render(nested, Side::Response).as_deref(),
            Some("1) 1) (integer) 1\n   2) (integer) 2\n2) 1) k => 1) v")
        );
        let info = b"=36\r\ntxt:# Server\r\nredis_version:7.0.15\r\n\r\n";
        assert_eq!(
            Redis.render(info, Side::Response).as_deref(),
            Some("# Server\nredis_version:7.0.15\n")
        );
        let annotated = b"|1\r\n+ttl\r\n:3600\r\n$5\r\nvalue\r\n";
        assert_eq!(
            Redis.render(annotated, Side::Response).as_deref(),
            Some("(attribute) 1) ttl => (integer) 3600\n\"value\"")
        );
        assert_eq!(Redis.render(b"OK\r\n", Side::Response), None);
    }

    // Robustness --------------------------------------------------------------

    #[test]
    fn random_and_mutated_input_never_panics() {
        let seeds: [&[u8]; 5] = [
            b"*2\r\n$3\r\nGET\r\n$6\r\nkey:17\r\n",
            b"|1\r\n%1\r\n+a\r\n~1\r\n:1\r\n>1\r\n=5\r\ntxt:a\r\n",
            b"*3\r\n$6\r\nCLIENT\r\n$7\r\nSETNAME\r\n$1\r\nx\r\n",
            b"PING\r\n",
            b"*2\r\n!3\r\nbad\r\n(1\r\n$-1\r\n,1\r\n#t\r\n_\r\n",
        ];
        let alphabet = b"\r\n:$*+-_#,(!=%~>|0123456789abcdefABCDEF ;\x00\xff";
        let frames: [&Frame<'_>; 2] = [&frame, &reply];
        let options = NormalizeOptions::default();
        fuzz_inputs(&seeds, alphabet, 20_000, |bytes, extra| {
            for frame in frames {
                check_frame(frame, bytes, extra);
            }
            let _ = Redis.normalize(bytes, &options);
            let _ = Redis.is_setup(bytes);
            let _ = Redis.render(bytes, Side::Request);
            let _ = Redis.render(bytes, Side::Response);
        });
    }
}
