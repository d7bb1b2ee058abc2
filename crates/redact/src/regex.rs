//! User regexes (`regex:<pattern>`): each match, or its first capture group
//! when the pattern has one and it took part, is replaced by its token.
//! Tokens already in the bytes are never looked into, so redacting twice
//! changes nothing; an empty match is no secret.

use std::ops::Range;

use crate::Redactor;

/// `bytes` with every match replaced, or `None` when nothing matches.
pub(crate) fn redact(redactor: &Redactor, bytes: &[u8]) -> Option<Vec<u8>> {
    let secrets = secrets(redactor, bytes);
    if secrets.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() + secrets.len() * crate::TOKEN_LEN);
    let mut copied = 0;
    for secret in secrets {
        out.extend_from_slice(&bytes[copied..secret.start]);
        out.extend_from_slice(&redactor.token(&bytes[secret.clone()]));
        copied = secret.end;
    }
    out.extend_from_slice(&bytes[copied..]);
    Some(out)
}

/// The secrets in `bytes`: in order, not overlapping, none inside a token.
pub(crate) fn secrets(redactor: &Redactor, bytes: &[u8]) -> Vec<Range<usize>> {
    let patterns = &redactor.rules.patterns;
    if patterns.is_empty() {
        return Vec::new();
    }
    let mut found = Vec::new();
    let mut segment_at = 0;
    loop {
        let token_at = find_token(&bytes[segment_at..]).map(|n| segment_at + n);
        let segment_end = token_at.unwrap_or(bytes.len());
        let segment = &bytes[segment_at..segment_end];
        for pattern in patterns {
            for captures in pattern.0.captures_iter(segment) {
                let secret = captures.get(1).or_else(|| captures.get(0));
                if let Some(secret) = secret.filter(|m| !m.is_empty()) {
                    found.push(segment_at + secret.start()..segment_at + secret.end());
                }
            }
        }
        match token_at {
            Some(at) => segment_at = at + crate::TOKEN_LEN,
            None => break,
        }
    }
    found.sort_by_key(|r| (r.start, std::cmp::Reverse(r.end)));
    let mut secrets: Vec<Range<usize>> = Vec::with_capacity(found.len());
    for range in found {
        if secrets.last().is_none_or(|last| range.start >= last.end) {
            secrets.push(range);
        }
    }
    secrets
}

/// Where the first whole token in `bytes` starts.
fn find_token(bytes: &[u8]) -> Option<usize> {
    let prefix = crate::TOKEN_PREFIX.as_bytes();
    let mut from = 0;
    while let Some(n) = bytes[from..]
        .windows(prefix.len())
        .position(|w| w == prefix)
    {
        let at = from + n;
        if bytes
            .get(at..at + crate::TOKEN_LEN)
            .is_some_and(crate::is_token)
        {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use crate::{Key, Redactor, Rules};

    fn redactor(spec: &str) -> Redactor {
        Redactor::new(Rules::parse(spec).unwrap().unwrap(), Key { k0: 1, k1: 2 })
    }

    fn token(secret: &str) -> String {
        String::from_utf8(crate::test_redactor().token(secret.as_bytes())).unwrap()
    }

    fn redact(spec: &str, payload: &[u8]) -> Option<String> {
        redactor(spec)
            .redact(payload)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
    }

    #[test]
    fn matches_and_capture_groups_of_unknown_payloads_become_tokens() {
        assert_eq!(
            redact(
                "regex:sk_live_[0-9a-z]+",
                b"key sk_live_abc1 and sk_live_abc1."
            )
            .unwrap(),
            format!("key {t} and {t}.", t = token("sk_live_abc1"))
        );
        assert_eq!(
            redact("regex:pin=(\\d{3,5})|code", b"pin=1234;pin=;code").unwrap(),
            format!("pin={};pin=;{}", token("1234"), token("code"))
        );
        // Empty matches are no secret; no match, no copy.
        assert_eq!(redact("regex:x*", b"abc"), None);
        assert_eq!(redact("regex:zzz", b"abc"), None);
        // Without the rule, the same payload is left alone.
        assert_eq!(redact("default", b"key sk_live_abc1"), None);
    }

    #[test]
    fn tokens_are_not_looked_into_so_twice_changes_nothing() {
        let once = redact("regex:[0-9a-f]{4,}", b"id=cafe1234 x").unwrap();
        assert_eq!(once, format!("id={} x", token("cafe1234")));
        assert_eq!(redact("regex:[0-9a-f]{4,}", once.as_bytes()), None);
        assert_eq!(redact("regex:koala", once.as_bytes()), None);
    }

    #[test]
    fn length_framed_protocols_are_not_regex_redacted() {
        // A RESP command and a PostgreSQL query: lengths a token would break.
        assert_eq!(
            redact("regex:secret", b"*2\r\n$3\r\nGET\r\n$6\r\nsecret\r\n"),
            None
        );
        let mut query = vec![b'Q'];
        query.extend_from_slice(&(4u32 + 7).to_be_bytes());
        query.extend_from_slice(b"secret\0");
        assert_eq!(redact("regex:secret", &query), None);
    }
}
