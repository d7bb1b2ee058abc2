//! Small parsing primitives the protocol modules share: a three-way parse
//! result, line helpers, decimal numbers and printable text.

use crate::Completeness;

/// Progress of a parse step: a value, or why there is none.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step<T> {
    Done(T),
    NeedMore,
    Invalid,
}

/// Propagates `NeedMore` and `Invalid` out of a function returning `Step`.
macro_rules! step {
    ($expr:expr) => {
        match $expr {
            $crate::parse::Step::Done(value) => value,
            $crate::parse::Step::NeedMore => return $crate::parse::Step::NeedMore,
            $crate::parse::Step::Invalid => return $crate::parse::Step::Invalid,
        }
    };
}
pub(crate) use step;

impl<T> Step<T> {
    pub(crate) fn map_done<U>(self, map: impl FnOnce(T) -> U) -> Step<U> {
        match self {
            Step::Done(value) => Step::Done(map(value)),
            Step::NeedMore => Step::NeedMore,
            Step::Invalid => Step::Invalid,
        }
    }

    /// The value, if the step is done.
    pub(crate) fn done(self) -> Option<T> {
        match self {
            Step::Done(value) => Some(value),
            Step::NeedMore | Step::Invalid => None,
        }
    }
}

impl Step<usize> {
    /// A message length as a framing answer.
    pub(crate) fn into_completeness(self) -> Completeness {
        match self {
            Step::Done(len) => Completeness::Complete(len),
            Step::NeedMore => Completeness::NeedMore,
            Step::Invalid => Completeness::Unknown,
        }
    }
}

/// Where the line starting at `start` ends (the position after its `\n`);
/// `None` while the `\n` has not arrived.
pub(crate) fn line_end(bytes: &[u8], start: usize) -> Option<usize> {
    let rest = bytes.get(start..)?;
    rest.iter()
        .position(|&byte| byte == b'\n')
        .map(|at| start + at + 1)
}

/// `line` without its trailing `\n` or `\r\n`.
pub(crate) fn trim_line_ending(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// `value` without leading and trailing spaces and tabs.
pub(crate) fn trim_whitespace(mut value: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = value {
        value = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = value {
        value = rest;
    }
    value
}

/// The line starting at `at` up to its `\r\n`: its content and the position
/// after it. A bare `\n` does not end such a line. A line longer than
/// `max_len` is `Invalid`, as soon as that can be told.
pub(crate) fn crlf_line(bytes: &[u8], at: usize, max_len: Option<usize>) -> Step<(&[u8], usize)> {
    let rest = bytes.get(at..).unwrap_or_default();
    match rest.windows(2).position(|pair| pair == b"\r\n") {
        Some(len) if max_len.is_some_and(|max| len > max) => Step::Invalid,
        Some(len) => Step::Done((&rest[..len], at + len + 2)),
        None if max_len.is_some_and(|max| rest.len() > max + 1) => Step::Invalid,
        None => Step::NeedMore,
    }
}

/// A non-negative decimal of at most 18 digits (so it fits any `usize` on
/// 64-bit targets and never overflows); `None` for anything else.
pub(crate) fn parse_decimal(digits: &[u8]) -> Option<usize> {
    if digits.is_empty() || digits.len() > 18 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    digits.iter().try_fold(0usize, |total, &digit| {
        total
            .checked_mul(10)?
            .checked_add(usize::from(digit - b'0'))
    })
}

/// `bytes` as readable text: valid UTF-8 as it is, with control characters
/// other than newline and tab escaped (`\r`, `\x00`), and bytes that are
/// not UTF-8 as `\xNN`.
pub(crate) fn printable(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for character in chunk.valid().chars() {
            match character {
                '\n' | '\t' => out.push(character),
                '\r' => out.push_str("\\r"),
                _ if character.is_ascii_control() => {
                    out.push_str(&format!("\\x{:02x}", u32::from(character)));
                }
                _ if character.is_control() => out.extend(character.escape_unicode()),
                _ => out.push(character),
            }
        }
        for &byte in chunk.invalid() {
            out.push_str(&format!("\\x{byte:02x}"));
        }
    }
    out
}

/// Test helpers shared by the protocol modules.
#[cfg(test)]
pub(crate) mod testing {
    use crate::Completeness::{self, Complete, NeedMore};

    /// Every strict prefix of `message` (empty included) gives `NeedMore`
    /// from `frame`, the whole gives `Complete(len)`, and so does the whole
    /// followed by the start of another message.
    pub(crate) fn assert_frames(frame: impl Fn(&[u8]) -> Completeness, message: &[u8]) {
        for split in 0..message.len() {
            assert_eq!(
                frame(&message[..split]),
                NeedMore,
                "prefix {:?}",
                String::from_utf8_lossy(&message[..split])
            );
        }
        assert_eq!(
            frame(message),
            Complete(message.len()),
            "{:?}",
            String::from_utf8_lossy(message)
        );
        let mut pipelined = message.to_vec();
        pipelined.extend_from_slice(&message[..message.len() / 2]);
        assert_eq!(frame(&pipelined), Complete(message.len()));
    }

    /// Deterministic xorshift for fuzzing.
    pub(crate) struct Rng(pub u64);

    impl Rng {
        pub(crate) fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        pub(crate) fn below(&mut self, bound: usize) -> usize {
            (self.next() % bound.max(1) as u64) as usize
        }
    }

    /// `rounds` inputs derived from `seeds`: random bytes, random bytes from
    /// `alphabet`, seeds with bytes replaced, seeds cut short with junk.
    /// Each comes with a few random bytes that may follow it.
    pub(crate) fn fuzz_inputs(
        seeds: &[&[u8]],
        alphabet: &[u8],
        rounds: usize,
        mut each: impl FnMut(&[u8], &[u8]),
    ) {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for round in 0..rounds {
            let mut bytes = seeds[rng.below(seeds.len())].to_vec();
            match round % 4 {
                0 => bytes = (0..rng.below(64)).map(|_| rng.next() as u8).collect(),
                1 => {
                    bytes = (0..rng.below(64))
                        .map(|_| alphabet[rng.below(alphabet.len())])
                        .collect()
                }
                2 => {
                    for _ in 0..1 + rng.below(3) {
                        let at = rng.below(bytes.len());
                        if let Some(byte) = bytes.get_mut(at) {
                            *byte = alphabet[rng.below(alphabet.len())];
                        }
                    }
                }
                _ => {
                    bytes.truncate(rng.below(bytes.len() + 1));
                    bytes.extend((0..rng.below(4)).map(|_| rng.next() as u8));
                }
            }
            let extra: Vec<u8> = (0..rng.below(8)).map(|_| rng.next() as u8).collect();
            each(&bytes, &extra);
        }
    }

    /// A framing function under test.
    pub(crate) type Frame<'a> = dyn Fn(&[u8]) -> Completeness + 'a;

    /// The invariants every framing answer keeps: a complete message is not
    /// empty and fits, and extra bytes after it do not change it.
    pub(crate) fn check_frame(frame: &Frame<'_>, bytes: &[u8], extra: &[u8]) {
        if let Complete(len) = frame(bytes) {
            assert!(len > 0 && len <= bytes.len(), "{len} of {bytes:?}");
            let longer = [bytes, extra].concat();
            assert_eq!(frame(&longer), Complete(len), "{bytes:?} + {extra:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals() {
        assert_eq!(parse_decimal(b"0"), Some(0));
        assert_eq!(
            parse_decimal(b"123456789012345678"),
            Some(123_456_789_012_345_678)
        );
        for bad in [&b""[..], b"1234567890123456789", b"-1", b"+1", b"1a", b" 1"] {
            assert_eq!(parse_decimal(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn crlf_lines() {
        assert_eq!(crlf_line(b"+OK\r\nx", 1, None), Step::Done((&b"OK"[..], 5)));
        assert_eq!(crlf_line(b"+OK\n", 1, None), Step::NeedMore);
        assert_eq!(crlf_line(b":12345\r\n", 1, Some(4)), Step::Invalid);
        assert_eq!(crlf_line(b":123456", 1, Some(4)), Step::Invalid);
        assert_eq!(crlf_line(b":1234\r", 1, Some(4)), Step::NeedMore);
        assert_eq!(crlf_line(b"", 9, None), Step::NeedMore);
    }

    #[test]
    fn printable_text() {
        assert_eq!(
            printable(b"a\tb\r\nc\x00\x7f\xff\xc3\xa9"),
            "a\tb\\r\nc\\x00\\x7f\\xffé"
        );
    }
}
