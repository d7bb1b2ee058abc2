//! JSON fields by name: the values of secret fields in a JSON body.

use std::ops::Range;

use crate::Redactor;

/// `body` with the string and number values of secret fields replaced by
/// tokens (a number becomes a quoted token), or `None` when it has none or
/// is not a JSON object or array.
pub(crate) fn redact(redactor: &Redactor, body: &[u8]) -> Option<Vec<u8>> {
    let first = body.iter().position(|b| !b.is_ascii_whitespace())?;
    if !matches!(body[first], b'{' | b'[') {
        return None;
    }
    let values = secret_values(redactor, body)?;
    if values.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(body.len() + values.len() * crate::TOKEN_LEN);
    let mut at = 0;
    for Value { range, quote } in values {
        out.extend_from_slice(&body[at..range.start]);
        if quote {
            out.push(b'"');
        }
        out.extend_from_slice(&redactor.token(&body[range.clone()]));
        if quote {
            out.push(b'"');
        }
        at = range.end;
    }
    out.extend_from_slice(&body[at..]);
    Some(out)
}

struct Value {
    /// The string's contents (inside the quotes), or the number.
    range: Range<usize>,
    /// A number: the token is written quoted.
    quote: bool,
}

/// The values of secret fields, in order; `None` on an unterminated string.
fn secret_values(redactor: &Redactor, body: &[u8]) -> Option<Vec<Value>> {
    let mut values = Vec::new();
    let mut at = 0;
    while at < body.len() {
        if body[at] != b'"' {
            at += 1;
            continue;
        }
        let end = string_end(body, at)?;
        let name = &body[at + 1..end];
        at = end + 1;
        let colon = skip_space(body, at);
        if body.get(colon) != Some(&b':') || !redactor.rules.is_secret_field(name) {
            continue;
        }
        let start = skip_space(body, colon + 1);
        match body.get(start) {
            Some(b'"') => {
                let end = string_end(body, start)?;
                if end > start + 1 {
                    values.push(Value {
                        range: start + 1..end,
                        quote: false,
                    });
                }
                at = end + 1;
            }
            Some(b'-' | b'0'..=b'9') => {
                let end = body[start..]
                    .iter()
                    .position(|b| !matches!(b, b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'))
                    .map_or(body.len(), |n| start + n);
                values.push(Value {
                    range: start..end,
                    quote: true,
                });
                at = end;
            }
            _ => at = start,
        }
    }
    Some(values)
}

/// The index of the quote closing the string opened at `open`.
fn string_end(body: &[u8], open: usize) -> Option<usize> {
    let mut at = open + 1;
    while at < body.len() {
        match body[at] {
            b'\\' => at += 2,
            b'"' => return Some(at),
            _ => at += 1,
        }
    }
    None
}

fn skip_space(body: &[u8], mut at: usize) -> usize {
    while body.get(at).is_some_and(|b| b.is_ascii_whitespace()) {
        at += 1;
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_redactor;

    fn token(secret: &str) -> String {
        String::from_utf8(test_redactor().token(secret.as_bytes())).unwrap()
    }

    #[test]
    fn secret_fields_are_redacted_at_any_depth() {
        let body = br#"{"user":"ann","Password":"p\"w","auth":{"token": 12345,"x":[{"secret":"s"}]},"token":"","pin":"1"}"#;
        let redacted = redact(&test_redactor(), body).unwrap();
        let expected = format!(
            r#"{{"user":"ann","Password":"{}","auth":{{"token": "{}","x":[{{"secret":"{}"}}]}},"token":"","pin":"1"}}"#,
            token("p\\\"w"),
            token("12345"),
            token("s")
        );
        assert_eq!(String::from_utf8(redacted).unwrap(), expected);
    }

    #[test]
    fn values_named_like_fields_and_non_json_are_left_alone() {
        let redactor = test_redactor();
        assert_eq!(redact(&redactor, br#"["password","token"]"#), None);
        assert_eq!(redact(&redactor, br#"{"password":null}"#), None);
        assert_eq!(redact(&redactor, b"password=x"), None);
        assert_eq!(redact(&redactor, br#"{"password":"unterminated"#), None);
        assert_eq!(redact(&redactor, br#"{"a":"\"#), None);
    }
}
