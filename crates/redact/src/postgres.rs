//! PostgreSQL: the password message (`p`) a client sends to log in.
//!
//! A cleartext or MD5 password is replaced whole; of a SCRAM client-final
//! message (`c=...,r=...,p=<proof>`) only the proof is (the nonces are not
//! secret, and keep the message recognisable); a SASL initial response
//! (mechanism name, client-first message) holds no secret. The message
//! length is rewritten. Only a payload that is wholly a sequence of typed
//! frontend messages is looked at, but for its last one cut short (a
//! payload cap, a torn capture): a password message cut after its header
//! has what it holds of its secret replaced, its length left as it was.

use std::ops::Range;

use crate::Redactor;

pub(crate) fn redact(redactor: &Redactor, payload: &[u8]) -> Option<Vec<u8>> {
    let (messages, torn) = messages_cut(payload)?;
    let torn = torn.filter(|&at| payload[at] == b'p' && at + 5 < payload.len());
    if torn.is_none() && !messages.iter().any(|m| payload[m.start] == b'p') {
        return None;
    }
    let mut out = Vec::with_capacity(payload.len() + crate::TOKEN_LEN);
    for message in messages {
        let bytes = &payload[message];
        let body = &bytes[5..];
        match (bytes[0], secret(body)) {
            (b'p', Some(secret)) => {
                let mut new_body = Vec::with_capacity(body.len() + crate::TOKEN_LEN);
                new_body.extend_from_slice(&body[..secret.start]);
                new_body.extend_from_slice(&redactor.token(&body[secret.clone()]));
                new_body.extend_from_slice(&body[secret.end..]);
                out.push(b'p');
                let len = u32::try_from(new_body.len() + 4).ok()?;
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(&new_body);
            }
            _ => out.extend_from_slice(bytes),
        }
    }
    if let Some(at) = torn {
        let body = &payload[at + 5..];
        out.extend_from_slice(&payload[at..at + 5]);
        match secret(body) {
            Some(secret) => {
                out.extend_from_slice(&body[..secret.start]);
                out.extend_from_slice(&redactor.token(&body[secret.clone()]));
                out.extend_from_slice(&body[secret.end..]);
            }
            None => out.extend_from_slice(body),
        }
    }
    Some(out)
}

/// Whether `payload` is wholly a sequence of typed frontend messages.
pub(crate) fn is_frontend(payload: &[u8]) -> bool {
    messages_cut(payload).is_some_and(|(_, torn)| torn.is_none())
}

/// The secret in a `p` message's body.
fn secret(body: &[u8]) -> Option<Range<usize>> {
    if body.starts_with(b"SCRAM-") || body.starts_with(b"SCRAM_") {
        return None;
    }
    if body.starts_with(b"c=") {
        let proof = body.windows(3).position(|w| w == b",p=")? + 3;
        let end = body[proof..]
            .iter()
            .position(|&b| b == b',')
            .map_or(body.len(), |n| proof + n);
        return (end > proof).then_some(proof..end);
    }
    let end = body.iter().position(|&b| b == 0).unwrap_or(body.len());
    (end > 0).then_some(0..end)
}

/// The whole typed messages making up the payload, and where a last one
/// cut short starts (its header whole); `None` if it is not all messages.
fn messages_cut(payload: &[u8]) -> Option<(Vec<Range<usize>>, Option<usize>)> {
    let mut messages = Vec::new();
    let mut at = 0;
    while at < payload.len() {
        let kind = *payload.get(at)?;
        if !kind.is_ascii_alphabetic() {
            return None;
        }
        let len = u32::from_be_bytes(payload.get(at + 1..at + 5)?.try_into().ok()?);
        let len = usize::try_from(len).ok()?;
        if len < 4 {
            return None;
        }
        let end = at.checked_add(1 + len)?;
        if end > payload.len() {
            // A login message is short: a huge length is rather text
            // (`pass...`) than a message cut short.
            return (len <= 0xffff).then_some((messages, Some(at)));
        }
        messages.push(at..end);
        at = end;
    }
    Some((messages, None))
}

#[cfg(test)]
mod tests {
    use crate::test_redactor;

    fn message(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![kind];
        out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    fn token(secret: &str) -> Vec<u8> {
        test_redactor().token(secret.as_bytes())
    }

    #[test]
    fn passwords_and_scram_proofs_are_redacted_with_their_length() {
        let redactor = test_redactor();
        let clear = message(b'p', b"md5abc\0");
        let mut expected_body = token("md5abc");
        expected_body.push(0);
        assert_eq!(redactor.redact(&clear), Some(message(b'p', &expected_body)));

        let final_message = b"c=biws,r=nonce,p=PROOF==";
        let mut expected = b"c=biws,r=nonce,p=".to_vec();
        expected.extend_from_slice(&token("PROOF=="));
        let mut payload = message(b'p', final_message);
        payload.extend_from_slice(&message(b'S', b""));
        let mut want = message(b'p', &expected);
        want.extend_from_slice(&message(b'S', b""));
        assert_eq!(redactor.redact(&payload), Some(want));
    }

    #[test]
    fn a_password_message_cut_short_has_its_part_replaced() {
        let redactor = test_redactor();
        let whole = message(b'p', b"md5abc\0");
        let mut want = whole[..5].to_vec();
        want.extend_from_slice(&token("md5a"));
        assert_eq!(redactor.redact(&whole[..9]), Some(want));
        let scram = message(b'p', b"c=biws,r=nonce,p=PROOF==");
        let mut want = scram[..5].to_vec();
        want.extend_from_slice(b"c=biws,r=nonce,p=");
        want.extend_from_slice(&token("PR"));
        assert_eq!(redactor.redact(&scram[..scram.len() - 5]), Some(want));
        let mut cut = message(b'p', b"pw\0");
        cut.pop();
        let mut want = cut[..5].to_vec();
        want.extend_from_slice(&token("pw"));
        assert_eq!(redactor.redact(&cut), Some(want));
        // Cut in the header or before a proof: nothing to hide.
        assert_eq!(redactor.redact(&whole[..5]), None);
        assert_eq!(redactor.redact(&scram[..10]), None);
        // Text starting with p is no message cut short.
        assert_eq!(redactor.redact(b"password=1"), None);
    }

    #[test]
    fn other_messages_are_left_alone() {
        let redactor = test_redactor();
        let initial = message(b'p', b"SCRAM-SHA-256\0\0\0\0\x10n,,n=,r=nonce123");
        assert_eq!(redactor.redact(&initial), None);
        assert_eq!(redactor.redact(&message(b'Q', b"SELECT 1\0")), None);
        assert_eq!(redactor.redact(&message(b'p', b"\0")), None);
        assert_eq!(redactor.redact(b"p\0\0\0\x02"), None);
    }
}
