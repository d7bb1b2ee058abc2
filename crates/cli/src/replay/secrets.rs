//! The inbound request's secrets at replay: a recording keeps only tokens
//! (`koala:redacted:...`) in place of secret header values, and the
//! service must get the real value back. `--secret NAME=VALUE` gives it,
//! by header name; without it the session is not sent, and its error says
//! which option is missing, instead of a confusing diff.

use std::fmt;

/// `--secret NAME=VALUE`: the value of header NAME (case-insensitive).
#[derive(Clone, PartialEq, Eq)]
pub struct SecretArg {
    /// Lower case.
    pub name: String,
    pub value: String,
}

impl fmt::Debug for SecretArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never printed: the value is the secret.
        write!(f, "SecretArg({}=<secret>)", self.name)
    }
}

/// Parses `NAME=VALUE`.
pub fn parse_secret(text: &str) -> Result<SecretArg, String> {
    let (name, value) = text
        .split_once('=')
        .ok_or("expected NAME=VALUE, e.g. authorization='Bearer ...'")?;
    let name = name.trim();
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
        return Err(format!("{name:?} is not a header name"));
    }
    if value.contains(['\r', '\n']) {
        return Err("the value must be one line".into());
    }
    Ok(SecretArg {
        name: name.to_ascii_lowercase(),
        value: value.to_string(),
    })
}

/// The inbound `request` with each redacted header value replaced by its
/// secret: `Ok(None)` when it holds no token, `Err(reason)` when a token
/// has no secret given (or is where no header value can restore it).
pub fn restore(request: &[u8], secrets: &[SecretArg]) -> Result<Option<Vec<u8>>, String> {
    if !koala_redact::contains_token(request) {
        return Ok(None);
    }
    let head_len = find(request, b"\r\n\r\n").map_or(request.len(), |n| n + 4);
    let (head, body) = request.split_at(head_len);
    if koala_redact::contains_token(body) {
        return Err(
            "the inbound request's body holds a redacted value (KOALA_REDACT json: or regex: rules): it cannot be replayed; record with KOALA_REDACT=off to replay it"
                .into(),
        );
    }
    let mut out = Vec::with_capacity(request.len());
    let mut missing: Vec<String> = Vec::new();
    for (index, line) in head.split_inclusive(|&b| b == b'\n').enumerate() {
        let colon = line.iter().position(|&b| b == b':');
        let (Some(colon), false) = (colon, index == 0) else {
            if koala_redact::contains_token(line) {
                return Err(
                    "the inbound request line holds a redacted value: it cannot be replayed".into(),
                );
            }
            out.extend_from_slice(line);
            continue;
        };
        if !koala_redact::contains_token(&line[colon..]) {
            out.extend_from_slice(line);
            continue;
        }
        let name = String::from_utf8_lossy(&line[..colon]).trim().to_string();
        let lower = name.to_ascii_lowercase();
        match secrets.iter().find(|secret| secret.name == lower) {
            Some(secret) => {
                out.extend_from_slice(&line[..=colon]);
                out.push(b' ');
                out.extend_from_slice(secret.value.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            None => missing.push(name),
        }
    }
    out.extend_from_slice(body);
    match missing.as_slice() {
        [] => Ok(Some(out)),
        [name] => Err(format!(
            "the inbound request has a redacted {name} header; pass --secret {}=...",
            name.to_ascii_lowercase()
        )),
        names => Err(format!(
            "the inbound request has redacted headers ({}); pass --secret NAME=... for each",
            names.join(", ")
        )),
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "koala:redacted:0123456789abcdef";

    fn secret(text: &str) -> SecretArg {
        parse_secret(text).unwrap()
    }

    #[test]
    fn secrets_parse_by_header_name_and_never_show() {
        let parsed = secret("Authorization=Bearer a=b");
        assert_eq!(parsed.name, "authorization");
        assert_eq!(parsed.value, "Bearer a=b");
        assert_eq!(format!("{parsed:?}"), "SecretArg(authorization=<secret>)");
        assert!(parse_secret("novalue").is_err());
        assert!(parse_secret("=x").is_err());
        assert!(parse_secret("a b=x").is_err());
        assert!(parse_secret("a=x\r\nEvil: 1").is_err());
    }

    #[test]
    fn redacted_headers_get_their_secret_back() {
        let request = format!(
            "GET /me HTTP/1.1\r\nHost: x\r\nAuthorization: {TOKEN}\r\nCookie:{TOKEN}\r\n\r\n"
        );
        let restored = restore(
            request.as_bytes(),
            &[secret("authorization=Bearer t"), secret("COOKIE=s=1")],
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            String::from_utf8(restored).unwrap(),
            "GET /me HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\r\nCookie: s=1\r\n\r\n"
        );
        assert_eq!(restore(b"GET / HTTP/1.1\r\n\r\n", &[]), Ok(None));
    }

    #[test]
    fn a_missing_secret_is_a_plain_reason() {
        let request = format!("GET / HTTP/1.1\r\nAuthorization: {TOKEN}\r\n\r\n");
        assert_eq!(
            restore(request.as_bytes(), &[secret("cookie=x")]),
            Err("the inbound request has a redacted Authorization header; pass --secret authorization=...".into())
        );
        let two = format!("GET / HTTP/1.1\r\nAuthorization: {TOKEN}\r\nX-Api-Key: {TOKEN}\r\n\r\n");
        assert!(
            restore(two.as_bytes(), &[])
                .unwrap_err()
                .contains("(Authorization, X-Api-Key)")
        );
        let body =
            format!("POST / HTTP/1.1\r\nContent-Length: 44\r\n\r\n{{\"password\":\"{TOKEN}\"}}");
        assert!(
            restore(body.as_bytes(), &[])
                .unwrap_err()
                .contains("body holds a redacted value")
        );
    }
}
