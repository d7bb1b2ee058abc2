//! Redaction of secrets in recorded payloads.
//!
//! A secret is replaced by a token, `koala:redacted:<16 hex>`, the first 64
//! bits of a keyed hash (SipHash-2-4) of the secret. The key is random per
//! recording and kept in a 0600 file beside the sessions, never in them
//! ([`key`]): the same secret gives the same token within a recording, so a
//! replay that redacts what the service sends with the same key still
//! matches, while the sessions alone do not reveal the secret (nor let a
//! guess be checked).
//!
//! What is a secret ([`Rules`]):
//! - HTTP header values by name (case-insensitive), in requests and
//!   responses;
//! - JSON string and number values by field name, in HTTP bodies of a known
//!   length that parse as JSON objects or arrays;
//! - protocol-aware secrets: the password of redis `AUTH` and
//!   `HELLO ... AUTH`, the PostgreSQL password message (`p`: cleartext or
//!   MD5 password, and the proof of a SCRAM client-final message), and the
//!   auth data of a MySQL handshake response;
//! - user regexes ([`Pattern`], `regex:<pattern>`): each match (or its
//!   first capture group) in HTTP header values and bodies, and in payloads
//!   of no protocol the crate knows.
//!
//! Framing stays consistent: where a protocol frames by length (HTTP
//! `Content-Length`, RESP bulk lengths, PostgreSQL message lengths, MySQL
//! packet and auth-data lengths) the length is rewritten for the token.
//! A payload that does not parse the way its protocol says is left as is:
//! redaction never fails and never panics. A payload cut short (a payload
//! cap, a torn capture) leaks no part of a secret it was cut inside: the
//! rest of a torn secret header line, of a redis `AUTH` or `HELLO ... AUTH`
//! or of a PostgreSQL password message becomes a token (no length is
//! fixed up: the message is cut anyway).

use std::hash::Hasher as _;

pub mod key;

mod http;
mod json;
mod mysql;
mod postgres;
mod redis;
mod regex;

pub use key::Key;

/// What every token starts with.
pub const TOKEN_PREFIX: &str = "koala:redacted:";
/// A token's length: the prefix and 16 hex digits.
pub const TOKEN_LEN: usize = TOKEN_PREFIX.len() + 16;

/// Header names redacted by default (compared case-insensitively).
pub const DEFAULT_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
];

/// JSON field names redacted by default (compared case-insensitively).
pub const DEFAULT_JSON_FIELDS: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "token",
    "access_token",
    "refresh_token",
    "client_secret",
];

/// What is redacted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rules {
    /// Lower-case header names.
    pub headers: Vec<String>,
    /// Lower-case JSON field names.
    pub json_fields: Vec<String>,
    /// redis AUTH, PostgreSQL and MySQL passwords.
    pub protocols: bool,
    /// User regexes.
    pub patterns: Vec<Pattern>,
}

/// A user regex over bytes: what it matches (or its first capture group,
/// when the pattern has one and it took part) is a secret.
#[derive(Clone, Debug)]
pub struct Pattern(::regex::bytes::Regex);

impl Pattern {
    /// Compiles `pattern`; an empty one (it would match everywhere) is an
    /// error too.
    pub fn new(pattern: &str) -> Result<Pattern, String> {
        if pattern.is_empty() {
            return Err("the regex is empty".to_string());
        }
        ::regex::bytes::Regex::new(pattern)
            .map(Pattern)
            .map_err(|error| format!("bad regex {pattern:?}: {error}"))
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Pattern) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Pattern {}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            headers: DEFAULT_HEADERS.iter().map(|s| s.to_string()).collect(),
            json_fields: DEFAULT_JSON_FIELDS.iter().map(|s| s.to_string()).collect(),
            protocols: true,
            patterns: Vec::new(),
        }
    }
}

impl Rules {
    /// Parses a `KOALA_REDACT` value: `off` (or `none`, `0`, `false`) for no
    /// redaction (`None`); otherwise the default rules plus a comma list of
    /// `header:<name>` and `json:<field>` items (`default`, `on` or an empty
    /// value add nothing), and last, `regex:<pattern>`: the rest of the
    /// value, commas included (several patterns: join them with `|`).
    pub fn parse(spec: &str) -> Result<Option<Rules>, String> {
        let spec = spec.trim();
        if ["off", "none", "0", "false"]
            .iter()
            .any(|word| spec.eq_ignore_ascii_case(word))
        {
            return Ok(None);
        }
        let mut rules = Rules::default();
        // A regex may hold commas: it runs to the end of the value.
        // ASCII lower case keeps the byte offsets.
        let regex_at = spec
            .to_ascii_lowercase()
            .match_indices("regex:")
            .map(|(at, _)| at)
            .find(|&at| at == 0 || spec[..at].trim_end().ends_with(','));
        let (items, pattern) = match regex_at {
            Some(at) => (&spec[..at], Some(&spec[at + "regex:".len()..])),
            None => (spec, None),
        };
        if let Some(pattern) = pattern {
            rules.patterns.push(Pattern::new(pattern)?);
        }
        for item in items.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let lower = item.to_ascii_lowercase();
            if lower == "default" || lower == "on" {
                continue;
            }
            let (kind, name) = lower
                .split_once(':')
                .map(|(k, n)| (k.trim(), n.trim()))
                .ok_or_else(|| {
                    format!("{item:?}: expected header:<name>, json:<field> or regex:<pattern>")
                })?;
            if name.is_empty() {
                return Err(format!("{item:?}: the name is empty"));
            }
            let list = match kind {
                "header" => &mut rules.headers,
                "json" => &mut rules.json_fields,
                _ => {
                    return Err(format!(
                        "{item:?}: expected header:<name>, json:<field> or regex:<pattern>"
                    ));
                }
            };
            if !list.iter().any(|known| known == name) {
                list.push(name.to_string());
            }
        }
        Ok(Some(rules))
    }

    fn is_secret_header(&self, name: &[u8]) -> bool {
        self.headers
            .iter()
            .any(|h| h.as_bytes().eq_ignore_ascii_case(name))
    }

    fn is_secret_field(&self, name: &[u8]) -> bool {
        self.json_fields
            .iter()
            .any(|f| f.as_bytes().eq_ignore_ascii_case(name))
    }
}

/// Rules with a recording's key: rewrites payloads.
#[derive(Clone, Debug)]
pub struct Redactor {
    pub rules: Rules,
    key: Key,
}

impl Redactor {
    pub fn new(rules: Rules, key: Key) -> Self {
        Redactor { rules, key }
    }

    /// The token for `secret`: `koala:redacted:<16 hex>`. A value that is
    /// already a token stays itself, so redacting twice changes nothing.
    pub fn token(&self, secret: &[u8]) -> Vec<u8> {
        if is_token(secret) {
            return secret.to_vec();
        }
        // SipHash-2-4 with a 128-bit random key is a PRF: deprecated in std
        // only as a general-purpose hasher, and stable in its output.
        #[allow(deprecated)]
        let mut hasher = std::hash::SipHasher::new_with_keys(self.key.k0, self.key.k1);
        hasher.write(secret);
        let mut token = TOKEN_PREFIX.as_bytes().to_vec();
        push_hex(&mut token, hasher.finish());
        token
    }

    /// `payload` with its secrets replaced, or `None` when it has none (or
    /// is in no shape the rules know).
    pub fn redact(&self, payload: &[u8]) -> Option<Vec<u8>> {
        if payload.is_empty() {
            return None;
        }
        let redacted = if http::is_http(payload) {
            http::redact(self, payload)
        } else if self.rules.protocols
            && let Some(redacted) = redis::redact(self, payload)
                .or_else(|| postgres::redact(self, payload))
                .or_else(|| mysql::redact(self, payload))
        {
            Some(redacted)
        } else if self.rules.patterns.is_empty()
            || redis::is_resp(payload)
            || postgres::is_frontend(payload)
        {
            // Framed by lengths a regex match would not fix up.
            None
        } else {
            regex::redact(self, payload)
        };
        redacted.filter(|bytes| bytes.as_slice() != payload)
    }

    /// Redacts `payload` in place; returns whether it changed.
    pub fn redact_in_place(&self, payload: &mut Vec<u8>) -> bool {
        match self.redact(payload) {
            Some(redacted) => {
                *payload = redacted;
                true
            }
            None => false,
        }
    }
}

/// Whether `bytes` is exactly a token.
pub fn is_token(bytes: &[u8]) -> bool {
    bytes.len() == TOKEN_LEN
        && bytes.starts_with(TOKEN_PREFIX.as_bytes())
        && bytes[TOKEN_PREFIX.len()..]
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
}

/// Whether `bytes` holds a token anywhere.
pub fn contains_token(bytes: &[u8]) -> bool {
    bytes
        .windows(TOKEN_PREFIX.len())
        .any(|w| w == TOKEN_PREFIX.as_bytes())
}

fn push_hex(out: &mut Vec<u8>, value: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for shift in (0..16).rev() {
        out.push(HEX[((value >> (shift * 4)) & 0xf) as usize]);
    }
}

#[cfg(test)]
pub(crate) fn test_redactor() -> Redactor {
    Redactor::new(Rules::default(), Key { k0: 1, k1: 2 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_keyed_deterministic_and_fixed_length() {
        let redactor = test_redactor();
        let a = redactor.token(b"hunter2");
        assert_eq!(a, redactor.token(b"hunter2"));
        assert_ne!(a, redactor.token(b"hunter3"));
        assert_eq!(a.len(), TOKEN_LEN);
        assert!(is_token(&a));
        let other = Redactor::new(Rules::default(), Key { k0: 1, k1: 3 });
        assert_ne!(a, other.token(b"hunter2"), "another key, another token");
        assert_eq!(redactor.token(&a), a, "a token is not redacted again");
    }

    #[test]
    fn rules_parse_off_defaults_and_additions() {
        assert_eq!(Rules::parse("off"), Ok(None));
        assert_eq!(Rules::parse(" OFF "), Ok(None));
        assert_eq!(Rules::parse(""), Ok(Some(Rules::default())));
        assert_eq!(Rules::parse("default"), Ok(Some(Rules::default())));
        let rules = Rules::parse("header:X-My-Token, json:pin,header:cookie")
            .unwrap()
            .unwrap();
        assert_eq!(rules.headers.last().map(String::as_str), Some("x-my-token"));
        assert_eq!(rules.headers.len(), DEFAULT_HEADERS.len() + 1);
        assert_eq!(rules.json_fields.last().map(String::as_str), Some("pin"));
        assert!(Rules::parse("regex:").is_err());
        assert!(Rules::parse("regex:(").is_err());
        assert!(Rules::parse("json:pin,regex:a{1,2}").is_ok());
        let rules = Rules::parse("json:pin, regex:Key=(\\w{3,}),x")
            .unwrap()
            .unwrap();
        assert_eq!(rules.json_fields.last().map(String::as_str), Some("pin"));
        assert_eq!(
            rules.patterns,
            vec![Pattern::new("Key=(\\w{3,}),x").unwrap()]
        );
        assert_eq!(rules.patterns[0].as_str(), "Key=(\\w{3,}),x");
        assert_eq!(
            Rules::parse("header:regex:x,regex:y")
                .unwrap()
                .unwrap()
                .patterns,
            vec![Pattern::new("y").unwrap()]
        );
        assert!(Rules::parse("regexp:x").is_err());
        assert_eq!(
            Rules::parse("Regex:X").unwrap().unwrap().patterns,
            vec![Pattern::new("X").unwrap()]
        );
        assert!(Rules::parse("header:").is_err());
        assert!(Rules::parse("pin").is_err());
    }

    #[test]
    fn payloads_cut_anywhere_never_panic_nor_leak_a_torn_secret() {
        let redactor = Redactor::new(
            Rules::parse("regex:sk_[a-z0-9]+").unwrap().unwrap(),
            Key { k0: 1, k1: 2 },
        );
        let hello = b"*6\r\n$5\r\nHELLO\r\n$1\r\n3\r\n$4\r\nAUTH\r\n$1\r\nu\r\n$9\r\nSECRETxyz\r\n$1\r\nx\r\n";
        let http = b"HTTP/1.1 100 Continue\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 27\r\nAuthorization: SECRETxyz \r\n\r\n{\"k\":\"sk_1\",\"token\":\"t\"}";
        let mut postgres = vec![b'p', 0, 0, 0, 14];
        postgres.extend_from_slice(b"SECRETxyz\0");
        for payload in [&hello[..], &http[..], &postgres[..], b"\x2a\xff\r\n$"] {
            for cut in 0..=payload.len() {
                let part = &payload[..cut];
                let out = redactor.redact(part).unwrap_or_else(|| part.to_vec());
                // Of the secret, at most two bytes may be left (the length
                // byte of a PostgreSQL message cut before its body).
                for window in b"SECRETxyz".windows(3) {
                    assert!(
                        !out.windows(3).any(|w| w == window),
                        "{:?} leaks {:?}",
                        String::from_utf8_lossy(part),
                        String::from_utf8_lossy(window)
                    );
                }
            }
        }
    }

    #[test]
    fn unknown_and_empty_payloads_are_left_alone() {
        let redactor = test_redactor();
        assert_eq!(redactor.redact(b""), None);
        assert_eq!(redactor.redact(b"hello world"), None);
        assert_eq!(redactor.redact(&[0xff, 0, 1, 2]), None);
        assert_eq!(redactor.redact(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), None);
    }
}
