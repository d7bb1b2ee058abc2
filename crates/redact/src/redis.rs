//! redis: the password of `AUTH [user] password` and of
//! `HELLO <ver> AUTH user password`, in RESP arrays (what every client
//! sends; inline commands are not redacted). The bulk length is rewritten
//! for the token. Pipelined commands are each looked at; bytes after the
//! last whole command are kept as they are, but for a command cut short
//! (a payload cap, a torn capture) after `AUTH`, or after `HELLO`'s `AUTH`
//! and before its password is whole: the rest of the payload is then
//! replaced by a token (no length is fixed up: the command is cut anyway).

use std::ops::Range;

use crate::Redactor;

pub(crate) fn redact(redactor: &Redactor, payload: &[u8]) -> Option<Vec<u8>> {
    if payload.first() != Some(&b'*') {
        return None;
    }
    let mut secrets: Vec<Range<usize>> = Vec::new();
    let mut at = 0;
    let mut torn = None;
    while payload.get(at) == Some(&b'*') {
        let Some((arguments, end)) = command(payload, at) else {
            torn = torn_secret(payload, at);
            break;
        };
        secrets.extend(secret_argument(payload, &arguments));
        at = end;
    }
    if secrets.is_empty() && torn.is_none() {
        return None;
    }
    // Each secret is a bulk string: rewrite `$<len>\r\n<secret>` whole.
    let mut out = Vec::with_capacity(payload.len() + secrets.len() * crate::TOKEN_LEN);
    let mut copied = 0;
    for secret in secrets {
        let header_start = payload[..secret.start.saturating_sub(2)]
            .iter()
            .rposition(|&b| b == b'$')
            .unwrap_or(secret.start);
        out.extend_from_slice(&payload[copied..header_start]);
        let token = redactor.token(&payload[secret.clone()]);
        out.extend_from_slice(format!("${}\r\n", token.len()).as_bytes());
        out.extend_from_slice(&token);
        copied = secret.end;
    }
    match torn {
        Some(tail) => {
            out.extend_from_slice(&payload[copied..tail]);
            out.extend_from_slice(&redactor.token(&payload[tail..]));
        }
        None => out.extend_from_slice(&payload[copied..]),
    }
    Some(out)
}

/// Where the secret part of a command cut short at `at` starts: after
/// `AUTH`'s name, or after `HELLO`'s `AUTH` keyword, when something follows.
fn torn_secret(payload: &[u8], at: usize) -> Option<usize> {
    let (count, mut next) = number_line(payload, at + 1)?;
    // The whole arguments before the cut, and where each ends.
    let mut words: Vec<(&[u8], usize)> = Vec::new();
    while words.len() < count && payload.get(next) == Some(&b'$') {
        let Some((len, start)) = number_line(payload, next + 1) else {
            break;
        };
        let end = start.checked_add(len)?;
        if payload.get(end..end.checked_add(2)?) != Some(b"\r\n") {
            break;
        }
        words.push((&payload[start..end], end + 2));
        next = end + 2;
    }
    let is = |n: usize, name: &[u8]| {
        words
            .get(n)
            .is_some_and(|(w, _)| w.eq_ignore_ascii_case(name))
    };
    let secret_at = if is(0, b"AUTH") {
        words.first()?.1
    } else if is(0, b"HELLO") {
        let auth = (2..words.len()).find(|&n| is(n, b"AUTH"))?;
        // The password (AUTH's second word) is not whole, or it would not
        // be cut here.
        words.get(auth)?.1
    } else {
        return None;
    };
    (secret_at < payload.len()).then_some(secret_at)
}

/// Whether `payload` starts with a whole RESP array of bulk strings.
pub(crate) fn is_resp(payload: &[u8]) -> bool {
    payload.first() == Some(&b'*') && command(payload, 0).is_some()
}

/// The secret among a command's arguments.
fn secret_argument(payload: &[u8], arguments: &[Range<usize>]) -> Option<Range<usize>> {
    let word = |n: usize| arguments.get(n).map(|r| &payload[r.clone()]);
    let is = |n: usize, name: &[u8]| word(n).is_some_and(|w| w.eq_ignore_ascii_case(name));
    if is(0, b"AUTH") {
        return match arguments.len() {
            2 => arguments.get(1).cloned(),
            3 => arguments.get(2).cloned(),
            _ => None,
        };
    }
    if is(0, b"HELLO") {
        let auth = (2..arguments.len()).find(|&n| is(n, b"AUTH"))?;
        return arguments.get(auth + 2).cloned();
    }
    None
}

/// The arguments of the RESP array of bulk strings at `at`, and its end.
fn command(payload: &[u8], at: usize) -> Option<(Vec<Range<usize>>, usize)> {
    let (count, mut at) = number_line(payload, at + 1)?;
    let mut arguments = Vec::with_capacity(count.min(16));
    for _ in 0..count {
        if payload.get(at) != Some(&b'$') {
            return None;
        }
        let (len, start) = number_line(payload, at + 1)?;
        let end = start.checked_add(len)?;
        if payload.get(end..end + 2) != Some(b"\r\n") {
            return None;
        }
        arguments.push(start..end);
        at = end + 2;
    }
    Some((arguments, at))
}

/// A decimal number ended by CRLF at `at`, and where the next line starts.
fn number_line(payload: &[u8], at: usize) -> Option<(usize, usize)> {
    let digits = payload
        .get(at..)?
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    if digits == 0 || digits > 9 || payload.get(at + digits..at + digits + 2) != Some(b"\r\n") {
        return None;
    }
    let value = std::str::from_utf8(&payload[at..at + digits])
        .ok()?
        .parse()
        .ok()?;
    Some((value, at + digits + 2))
}

#[cfg(test)]
mod tests {
    use crate::test_redactor;

    fn resp(words: &[&str]) -> String {
        let mut out = format!("*{}\r\n", words.len());
        for word in words {
            out.push_str(&format!("${}\r\n{word}\r\n", word.len()));
        }
        out
    }

    fn token(secret: &str) -> String {
        String::from_utf8(test_redactor().token(secret.as_bytes())).unwrap()
    }

    fn redact(payload: &str) -> Option<String> {
        test_redactor()
            .redact(payload.as_bytes())
            .map(|bytes| String::from_utf8(bytes).unwrap())
    }

    #[test]
    fn auth_passwords_are_redacted_with_their_length() {
        assert_eq!(
            redact(&resp(&["AUTH", "s3cret"])).unwrap(),
            resp(&["AUTH", &token("s3cret")])
        );
        assert_eq!(
            redact(&resp(&["auth", "default", "s3cret"])).unwrap(),
            resp(&["auth", "default", &token("s3cret")])
        );
        let pipelined = resp(&["SELECT", "1"])
            + &resp(&["HELLO", "3", "AUTH", "u", "pw", "SETNAME", "n"])
            + "*1\r\n$4\r\nPI";
        assert_eq!(
            redact(&pipelined).unwrap(),
            resp(&["SELECT", "1"])
                + &resp(&["HELLO", "3", "AUTH", "u", &token("pw"), "SETNAME", "n"])
                + "*1\r\n$4\r\nPI"
        );
    }

    #[test]
    fn a_command_cut_after_auth_has_its_rest_replaced() {
        let auth = "*2\r\n$4\r\nAUTH\r\n";
        for cut in ["$", "$6\r\ns3c", "$6\r\ns3cret", "$6\r\ns3cret\r"] {
            assert_eq!(
                redact(&format!("{auth}{cut}")).unwrap(),
                format!("{auth}{}", token(cut))
            );
        }
        let hello = "*5\r\n$5\r\nHELLO\r\n$1\r\n3\r\n$4\r\nAUTH\r\n";
        for cut in ["$1\r\nu", "$1\r\nu\r\n$2\r\np"] {
            assert_eq!(
                redact(&format!("{hello}{cut}")).unwrap(),
                format!("{hello}{}", token(cut))
            );
        }
        // After a whole AUTH, a cut one: both.
        let two = resp(&["AUTH", "pw"]) + auth + "$2\r\np";
        assert_eq!(
            redact(&two).unwrap(),
            resp(&["AUTH", &token("pw")]) + auth + &token("$2\r\np")
        );
        // Cut before any secret: as is.
        assert_eq!(redact(auth), None);
        assert_eq!(redact("*2\r\n$4\r\nAU"), None);
        assert_eq!(
            redact("*5\r\n$5\r\nHELLO\r\n$1\r\n3\r\n$4\r\nAUTH\r\n"),
            None
        );
        assert_eq!(redact("*3\r\n$5\r\nHELLO\r\n$1\r\n3\r\n$2\r\nAU"), None);
        assert_eq!(redact("*2\r\n$3\r\nGET\r\n$3\r\nke"), None);
    }

    #[test]
    fn other_commands_and_bad_resp_are_left_alone() {
        assert_eq!(redact(&resp(&["GET", "AUTH"])), None);
        assert_eq!(redact(&resp(&["AUTH"])), None);
        assert_eq!(redact(&resp(&["HELLO", "3"])), None);
        // An AUTH that does not parse whole is taken as cut: its rest goes.
        assert_eq!(
            redact("*2\r\n$4\r\nAUTH\r\n$99\r\nx\r\n").unwrap(),
            format!("*2\r\n$4\r\nAUTH\r\n{}", token("$99\r\nx\r\n"))
        );
        assert_eq!(redact("AUTH inline\r\n"), None);
        assert_eq!(redact("*99999999999\r\n"), None);
    }
}
