//! Helper hints (`docs/helper-hints.md`): datagrams a service sends to
//! 127.127.127.127:127 to tell koala which request it is working for.
//!
//! Wire format, compatible with the original koala: `COMMAND\nBODY`. The
//! number a command takes is the decimal BODY (the recommended form: with
//! flags 0 the datagram is harmless where koala is absent) or, for services
//! instrumented for the original, the integer `flags` argument of sendto.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

/// Where hints are sent. Nothing listens there: without koala they vanish.
pub const HINT_ADDRESS: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(127, 127, 127, 127), 127));

/// Longest hint accepted; real hints are a few dozen bytes.
pub const MAX_HINT_BYTES: usize = 4096;

const DELEGATE: &str = "to-koala!set-delegated-from-thread-id";
const SHUTDOWN: &str = "to-koala!thread-shutdown";
/// Commands of the original koala that this one rejects (logged).
const NOT_SUPPORTED: &[&str] = &[
    "to-koala!get-trace-header",
    "to-koala!get-trace-header-key",
    "to-koala!set-trace-header-key",
    "to-koala!read-storage",
    "to-koala!call-function",
    "to-koala!return-function",
];

/// What a hint asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hint {
    /// From now on the calling thread works for virtual thread `virtual_id`
    /// (0: for itself again).
    Delegate { virtual_id: u64 },
    /// End and write the current session now: the calling thread's, or
    /// that of virtual thread `virtual_id`.
    Shutdown { virtual_id: Option<u64> },
}

/// Why a datagram to the hint address was ignored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HintError {
    Empty,
    TooLarge(usize),
    NotText,
    Unknown(String),
    NotSupported(&'static str),
    BadNumber(String),
    MissingNumber(&'static str),
    NegativeFlags(i32),
}

impl fmt::Display for HintError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HintError::Empty => f.write_str("empty hint"),
            HintError::TooLarge(len) => {
                write!(f, "hint of {len} bytes is larger than {MAX_HINT_BYTES}")
            }
            HintError::NotText => f.write_str("hint command is not text"),
            HintError::Unknown(command) => write!(f, "unknown hint command {command:?}"),
            HintError::NotSupported(command) => write!(
                f,
                "{command} is not supported by this koala (trace headers, storage and function \
                 recording are not implemented)"
            ),
            HintError::BadNumber(body) => write!(f, "hint body {body:?} is not a whole number"),
            HintError::MissingNumber(command) => {
                write!(
                    f,
                    "{command} needs a virtual thread id (decimal body, or sendto flags)"
                )
            }
            HintError::NegativeFlags(flags) => {
                write!(f, "sendto flags {flags} are not a virtual thread id")
            }
        }
    }
}

impl std::error::Error for HintError {}

/// Parses a hint datagram sent with `flags`.
pub fn parse(payload: &[u8], flags: i32) -> Result<Hint, HintError> {
    if payload.is_empty() {
        return Err(HintError::Empty);
    }
    if payload.len() > MAX_HINT_BYTES {
        return Err(HintError::TooLarge(payload.len()));
    }
    let (command, body) = match payload.iter().position(|&b| b == b'\n') {
        Some(newline) => (&payload[..newline], &payload[newline + 1..]),
        None => (payload, &payload[payload.len()..]),
    };
    let command = std::str::from_utf8(command)
        .map_err(|_| HintError::NotText)?
        .trim();
    match command {
        DELEGATE => Ok(Hint::Delegate {
            virtual_id: number(body, flags)?.ok_or(HintError::MissingNumber(DELEGATE))?,
        }),
        SHUTDOWN => Ok(Hint::Shutdown {
            virtual_id: number(body, flags)?.filter(|&n| n != 0),
        }),
        _ => match NOT_SUPPORTED.iter().find(|&&c| c == command) {
            Some(command) => Err(HintError::NotSupported(command)),
            None => Err(HintError::Unknown(command.chars().take(64).collect())),
        },
    }
}

/// The body's number when there is one, else the flags' (the original form).
fn number(body: &[u8], flags: i32) -> Result<Option<u64>, HintError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| HintError::BadNumber(String::from_utf8_lossy(body).into()))?;
    let text = text.trim();
    if !text.is_empty() {
        return text
            .parse()
            .map(Some)
            .map_err(|_| HintError::BadNumber(text.chars().take(64).collect()));
    }
    match flags {
        0 => Ok(None),
        f if f < 0 => Err(HintError::NegativeFlags(f)),
        f => Ok(Some(f as u64)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_number_travels_in_the_body() {
        assert_eq!(
            parse(b"to-koala!set-delegated-from-thread-id\n1001", 0),
            Ok(Hint::Delegate { virtual_id: 1001 })
        );
        assert_eq!(
            parse(b"to-koala!set-delegated-from-thread-id\n 7 \n", 0),
            Ok(Hint::Delegate { virtual_id: 7 })
        );
        assert_eq!(
            parse(b"to-koala!set-delegated-from-thread-id\n0", 0),
            Ok(Hint::Delegate { virtual_id: 0 })
        );
        assert_eq!(
            parse(b"to-koala!thread-shutdown\n42", 0),
            Ok(Hint::Shutdown {
                virtual_id: Some(42)
            })
        );
        assert_eq!(
            parse(b"to-koala!thread-shutdown\n", 0),
            Ok(Hint::Shutdown { virtual_id: None })
        );
        assert_eq!(
            parse(b"to-koala!thread-shutdown", 0),
            Ok(Hint::Shutdown { virtual_id: None })
        );
    }

    #[test]
    fn the_original_form_carries_it_in_flags() {
        assert_eq!(
            parse(b"to-koala!set-delegated-from-thread-id\n", 1001),
            Ok(Hint::Delegate { virtual_id: 1001 })
        );
        assert_eq!(
            parse(b"to-koala!thread-shutdown\n", 5),
            Ok(Hint::Shutdown {
                virtual_id: Some(5)
            })
        );
        // A body number wins: flags may hold real sendto flags (MSG_DONTWAIT).
        assert_eq!(
            parse(b"to-koala!set-delegated-from-thread-id\n9", MSG_DONTWAIT),
            Ok(Hint::Delegate { virtual_id: 9 })
        );
    }

    /// libc's MSG_DONTWAIT (this crate does not depend on libc).
    const MSG_DONTWAIT: i32 = 0x40;

    #[test]
    fn bad_hints_say_what_is_wrong() {
        assert_eq!(parse(b"", 0), Err(HintError::Empty));
        assert_eq!(
            parse(&vec![b'a'; MAX_HINT_BYTES + 1], 0),
            Err(HintError::TooLarge(MAX_HINT_BYTES + 1))
        );
        assert_eq!(parse(b"\xff\xfe\n1", 0), Err(HintError::NotText));
        assert_eq!(
            parse(b"to-koala!fly\n1", 0),
            Err(HintError::Unknown("to-koala!fly".into()))
        );
        assert_eq!(
            parse(b"to-koala!set-delegated-from-thread-id\n", 0),
            Err(HintError::MissingNumber(DELEGATE))
        );
        assert_eq!(
            parse(b"to-koala!set-delegated-from-thread-id\nabc", 0),
            Err(HintError::BadNumber("abc".into()))
        );
        assert_eq!(
            parse(b"to-koala!set-delegated-from-thread-id\n-3", 0),
            Err(HintError::BadNumber("-3".into()))
        );
        assert_eq!(
            parse(b"to-koala!thread-shutdown\n", -1),
            Err(HintError::NegativeFlags(-1))
        );
        assert_eq!(
            parse(b"to-koala!read-storage\nabc", 0),
            Err(HintError::NotSupported("to-koala!read-storage"))
        );
        let message = parse(b"to-koala!get-trace-header\n", 0)
            .unwrap_err()
            .to_string();
        assert!(message.contains("not supported"), "{message}");
    }

    #[test]
    fn no_input_panics() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 80) as usize;
            let bytes: Vec<u8> = (0..len).map(|i| (state >> (i % 56)) as u8).collect();
            let _ = parse(&bytes, (state >> 3) as i32);
            let mut with_command = DELEGATE.as_bytes().to_vec();
            with_command.push(b'\n');
            with_command.extend_from_slice(&bytes);
            let _ = parse(&with_command, 0);
        }
    }
}
