//! Just enough HTTP/1.1 for the replay API: one request at a time on a
//! keep-alive connection, bodies framed by Content-Length, bounded sizes,
//! a bearer token checked before any body is read.

use std::io::{self, BufRead, BufReader, Read, Write};

/// Longest request head accepted.
const MAX_HEAD_BYTES: usize = 64 << 10;
/// Blank lines tolerated before a request line (RFC 9112 allows some):
/// past them the connection is answered 400 and closed, so blank lines
/// cannot keep it open.
const MAX_BLANK_LINES: usize = 8;

pub struct Request {
    pub method: String,
    /// The path without the query string.
    pub path: String,
    pub body: Vec<u8>,
    /// The client asked to close after this request.
    pub close: bool,
}

/// Why no request could be read.
#[derive(Debug)]
pub enum ReadError {
    /// The client closed (or timed out) between requests: nothing to answer.
    Closed,
    /// A request that gets this status and message, then the connection closes.
    Reject(u16, String),
}

impl From<io::Error> for ReadError {
    fn from(_: io::Error) -> Self {
        ReadError::Closed
    }
}

/// Reads the next request. `max_body` bounds the body. `authorize` is
/// given the bearer token of the `Authorization` header (if any) once the
/// head is read, before the body: its rejection is the answer.
pub fn read_request<R: Read>(
    reader: &mut BufReader<R>,
    max_body: usize,
    authorize: impl Fn(Option<&str>) -> Result<(), (u16, String)>,
) -> Result<Request, ReadError> {
    let mut head = Vec::new();
    let mut blank_lines = 0;
    loop {
        let before = head.len();
        let n = reader
            .by_ref()
            .take((MAX_HEAD_BYTES + 1 - head.len()) as u64)
            .read_until(b'\n', &mut head)?;
        if n == 0 {
            if head.is_empty() {
                return Err(ReadError::Closed);
            }
            return Err(ReadError::Reject(400, "request head cut short".into()));
        }
        if head.len() > MAX_HEAD_BYTES {
            return Err(ReadError::Reject(
                431,
                format!("request head larger than {MAX_HEAD_BYTES} bytes"),
            ));
        }
        let line = &head[before..];
        if line == b"\r\n" || line == b"\n" {
            if before == 0 {
                // Tolerate a few blank lines between requests.
                blank_lines += 1;
                if blank_lines > MAX_BLANK_LINES {
                    return Err(ReadError::Reject(
                        400,
                        format!("more than {MAX_BLANK_LINES} blank lines before a request"),
                    ));
                }
                head.clear();
                continue;
            }
            break;
        }
    }
    let text = std::str::from_utf8(&head)
        .map_err(|_| ReadError::Reject(400, "request head is not UTF-8".into()))?;
    let mut lines = text.lines();
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split_whitespace();
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(ReadError::Reject(
            400,
            format!("malformed request line {request_line:?}"),
        ));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(ReadError::Reject(
            505,
            format!("unsupported protocol {version:?}; use HTTP/1.1"),
        ));
    }
    let mut content_length = None;
    let mut close = version == "HTTP/1.0";
    let mut token = None;
    for line in lines.filter(|l| !l.is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            return Err(ReadError::Reject(
                400,
                format!("malformed header line {line:?}"),
            ));
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => {
                let length = value
                    .parse::<usize>()
                    .map_err(|_| ReadError::Reject(400, format!("bad Content-Length {value:?}")))?;
                content_length = Some(length);
            }
            "transfer-encoding" if !value.eq_ignore_ascii_case("identity") => {
                return Err(ReadError::Reject(
                    411,
                    "send the body with a Content-Length".into(),
                ));
            }
            "authorization" => token = Some(bearer_token(value)),
            "connection" if value.eq_ignore_ascii_case("close") => close = true,
            "connection" if value.eq_ignore_ascii_case("keep-alive") => close = false,
            _ => {}
        }
    }
    authorize(token).map_err(|(status, message)| ReadError::Reject(status, message))?;
    let method = method.to_string();
    let path = target.split('?').next().unwrap_or_default().to_string();
    let body = match content_length {
        None if method == "POST" || method == "PUT" => {
            return Err(ReadError::Reject(
                411,
                "a POST needs a Content-Length".into(),
            ));
        }
        None | Some(0) => Vec::new(),
        Some(length) if length > max_body => {
            return Err(ReadError::Reject(
                413,
                format!("body of {length} bytes is larger than the {max_body}-byte limit"),
            ));
        }
        Some(length) => {
            let mut body = vec![0; length];
            reader
                .read_exact(&mut body)
                .map_err(|_| ReadError::Reject(400, "body cut short".into()))?;
            body
        }
    };
    Ok(Request {
        method,
        path,
        body,
        close,
    })
}

/// The token of an `Authorization: Bearer <token>` value (the scheme in any
/// case); another scheme yields the whole value, which matches no token.
fn bearer_token(value: &str) -> &str {
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
        _ => value,
    }
}

/// Whether `presented` equals `expected`, in a time that does not depend on
/// where they differ (a local user timing answers learns nothing).
pub fn token_matches(presented: &[u8], expected: &[u8]) -> bool {
    presented.len() == expected.len()
        && presented
            .iter()
            .zip(expected)
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        401 => "Unauthorized",
        411 => "Length Required",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    }
}

/// Writes a JSON response.
pub fn write_json(
    stream: &mut impl Write,
    status: u16,
    body: &[u8],
    close: bool,
) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status} {}\r\n{}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n",
        reason(status),
        // 401 names the scheme that authenticates (RFC 9110).
        if status == 401 {
            "WWW-Authenticate: Bearer realm=\"koala replay\"\r\n"
        } else {
            ""
        },
        body.len(),
        if close { "close" } else { "keep-alive" }
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(raw: &[u8], max_body: usize) -> Result<Request, ReadError> {
        read_request(&mut BufReader::new(raw), max_body, |_| Ok(()))
    }

    fn rejected(raw: &[u8]) -> (u16, String) {
        match read(raw, 16) {
            Err(ReadError::Reject(status, message)) => (status, message),
            other => panic!("expected a rejection, got {:?}", other.map(|r| r.path)),
        }
    }

    #[test]
    fn reads_requests_one_after_another() {
        let raw = b"POST /v1/replay?x=1 HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET /v1/status HTTP/1.1\r\nConnection: close\r\n\r\n";
        let mut reader = BufReader::new(&raw[..]);
        let first = read_request(&mut reader, 1024, |_| Ok(())).unwrap();
        assert_eq!(
            (first.method.as_str(), first.path.as_str(), &first.body[..]),
            ("POST", "/v1/replay", &b"hello"[..])
        );
        assert!(!first.close);
        let second = read_request(&mut reader, 1024, |_| Ok(())).unwrap();
        assert_eq!(
            (second.method.as_str(), second.path.as_str()),
            ("GET", "/v1/status")
        );
        assert!(second.close);
        assert!(matches!(
            read_request(&mut reader, 1024, |_| Ok(())),
            Err(ReadError::Closed)
        ));
    }

    #[test]
    fn blank_lines_before_a_request_are_bounded() {
        let request = b"GET /v1/status HTTP/1.1\r\n\r\n";
        let few = [b"\r\n\n".repeat(MAX_BLANK_LINES / 2), request.to_vec()].concat();
        assert_eq!(
            read(&few, 16).map(|r| r.path).ok().as_deref(),
            Some("/v1/status")
        );
        let many = [b"\r\n".repeat(MAX_BLANK_LINES + 1), request.to_vec()].concat();
        assert_eq!(
            rejected(&many),
            (400, "more than 8 blank lines before a request".to_string())
        );
    }

    #[test]
    fn bad_requests_get_a_status_and_a_reason() {
        let huge = [
            b"GET / HTTP/1.1\r\nX: ".as_slice(),
            &vec![b'a'; MAX_HEAD_BYTES],
            b"\r\n\r\n",
        ]
        .concat();
        let cases: [(&[u8], u16, &str); 8] = [
            (b"POST /v1/replay HTTP/1.1\r\n\r\n", 411, "Content-Length"),
            (
                b"POST /v1/replay HTTP/1.1\r\nContent-Length: 99\r\n\r\n",
                413,
                "99 bytes",
            ),
            (
                b"POST /v1/replay HTTP/1.1\r\nContent-Length: x\r\n\r\n",
                400,
                "bad Content-Length",
            ),
            (b"GARBAGE\r\n\r\n", 400, "malformed request line"),
            (b"GET / SPDY/3\r\n\r\n", 505, "SPDY/3"),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                411,
                "Content-Length",
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nab",
                400,
                "body cut short",
            ),
            (&huge, 431, "larger than"),
        ];
        for (raw, status, reason) in cases {
            let (got_status, message) = rejected(raw);
            assert_eq!(got_status, status, "{message}");
            assert!(message.contains(reason), "{status}: {message:?}");
            assert_ne!(
                super::reason(status),
                "Error",
                "no reason phrase for {status}"
            );
        }
    }

    /// What `authorize` is given, and that its rejection comes before the
    /// body is read (a 5-byte body the reader never gets to).
    #[test]
    fn the_bearer_token_is_checked_before_the_body() {
        let presented = |raw: &[u8]| {
            let seen = std::cell::RefCell::new(None);
            let result = read_request(&mut BufReader::new(raw), 1024, |token| {
                *seen.borrow_mut() = Some(token.map(str::to_string));
                Err((401, "no".into()))
            });
            assert!(matches!(result, Err(ReadError::Reject(401, _))));
            seen.into_inner().expect("authorize was called")
        };
        assert_eq!(presented(b"GET / HTTP/1.1\r\n\r\n"), None);
        assert_eq!(
            presented(b"GET / HTTP/1.1\r\nAuthorization: Bearer  s3cr3t \r\n\r\n"),
            Some("s3cr3t".into())
        );
        assert_eq!(
            presented(b"GET / HTTP/1.1\r\nauthorization: bEaReR s3cr3t\r\n\r\n"),
            Some("s3cr3t".into())
        );
        assert_eq!(
            presented(b"GET / HTTP/1.1\r\nAuthorization: Basic czNjcjN0\r\n\r\n"),
            Some("Basic czNjcjN0".into())
        );
        // Rejected with the body unread: the next bytes are still there.
        let raw = b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello";
        let mut reader = BufReader::new(&raw[..]);
        let result = read_request(&mut reader, 1024, |_| Err((401, "who?".into())));
        assert!(matches!(result, Err(ReadError::Reject(401, m)) if m == "who?"));
        let mut rest = Vec::new();
        reader.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, b"hello");
    }

    #[test]
    fn tokens_match_only_when_equal() {
        assert!(token_matches(b"abc", b"abc"));
        for other in [&b"abd"[..], b"ab", b"abcd", b"", b"ABC"] {
            assert!(!token_matches(other, b"abc"), "{other:?}");
        }
    }

    #[test]
    fn a_401_names_the_bearer_scheme() {
        let mut out = Vec::new();
        write_json(&mut out, 401, b"{}", true).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"koala replay\"\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
        );
        let mut out = Vec::new();
        write_json(&mut out, 429, b"{}", false).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\n{}"
        );
    }
}
