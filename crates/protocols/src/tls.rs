//! Recognising TLS on the wire: the bytes a connection carries when its
//! encryption happens where the library cannot see it (Java's JSSE, Go, a
//! statically linked OpenSSL, BoringSSL, or an OpenSSL fed through memory
//! BIOs). Not an application protocol — nothing is framed, matched or
//! replayed here — so it is not in the [`crate::CATALOGUE`]: the recorder
//! asks [`looks_like_tls`] about the first bytes of each exchange and marks
//! it `"tls": "ciphertext"`.

/// The record content types a TLS stream starts with (or carries between
/// records): change_cipher_spec, alert, handshake, application_data.
const CONTENT_TYPES: [u8; 4] = [0x14, 0x15, 0x16, 0x17];

/// The largest record body TLS allows (2^14 plus the expansion allowed to a
/// protected record).
const MAX_RECORD_BODY: usize = (1 << 14) + 2048;

/// Whether `bytes`, the first bytes of an exchange, are a TLS record: a
/// content type, a protocol version `03 00`..`03 04` and a length TLS
/// allows; with fewer than 5 bytes, a handshake record's beginning
/// (`16 03`). A first handshake record must hold a ClientHello or a
/// ServerHello (message type 1 or 2) when its fourth byte after the header
/// is there. Plain protocols never start this way: HTTP, RESP and the
/// memcached text protocol start with printable bytes; a PostgreSQL startup
/// message's length would be over 369 MB; a MySQL packet header `16 03 xx`
/// would be a sequence number that no first packet has.
pub fn looks_like_tls(bytes: &[u8]) -> bool {
    match bytes {
        [] | [_] => false,
        [0x16, 0x03] | [0x16, 0x03, 0x00..=0x04] | [0x16, 0x03, 0x00..=0x04, _] => true,
        [content, 0x03, minor, high, low, rest @ ..] => {
            let length = usize::from(*high) << 8 | usize::from(*low);
            CONTENT_TYPES.contains(content)
                && *minor <= 0x04
                && length > 0
                && length <= MAX_RECORD_BODY
                && (*content != 0x16 || rest.first().is_none_or(|t| matches!(t, 1 | 2)))
        }
        _ => false,
    }
}

/// Whether `bytes` start with a TLS ClientHello record: what a client sends
/// first, and the surest sign that a connection was encrypted end to end.
pub fn is_client_hello(bytes: &[u8]) -> bool {
    matches!(bytes, [0x16, 0x03, 0x00..=0x04, _, _, 0x01, ..])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first bytes of a real ClientHello (Python's ssl, OpenSSL 3).
    const CLIENT_HELLO: &[u8] = &[
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03, 0x5a,
    ];
    /// A ServerHello's first bytes.
    const SERVER_HELLO: &[u8] = &[0x16, 0x03, 0x03, 0x00, 0x7a, 0x02, 0x00, 0x00, 0x76];
    /// TLS 1.3 application data.
    const APPLICATION_DATA: &[u8] = &[0x17, 0x03, 0x03, 0x00, 0x35, 0xa1, 0x9f];

    #[test]
    fn recognises_tls_records() {
        assert!(looks_like_tls(CLIENT_HELLO));
        assert!(is_client_hello(CLIENT_HELLO));
        assert!(looks_like_tls(SERVER_HELLO));
        assert!(!is_client_hello(SERVER_HELLO));
        assert!(looks_like_tls(APPLICATION_DATA));
        assert!(looks_like_tls(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x01, 0x00]));
    }

    #[test]
    fn a_cut_handshake_header_is_enough() {
        assert!(looks_like_tls(&[0x16, 0x03]));
        assert!(looks_like_tls(&[0x16, 0x03, 0x01]));
        assert!(looks_like_tls(&[0x16, 0x03, 0x01, 0x02]));
        assert!(!looks_like_tls(&[0x16]));
        assert!(!looks_like_tls(&[0x17, 0x03]));
    }

    #[test]
    fn plain_protocols_are_not_tls() {
        for plain in [
            &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"*1\r\n$4\r\nPING\r\n",
            b"get key\r\n",
            // PostgreSQL SSLRequest and startup message.
            &[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f],
            &[0, 0, 0, 0x54, 0, 3, 0, 0, b'u', b's'],
            // A MySQL greeting.
            &[0x4a, 0, 0, 0, 0x0a, b'8', b'.'],
            // The 'S' answering an SSLRequest.
            b"S",
        ] {
            assert!(!looks_like_tls(plain), "{plain:?}");
            assert!(!is_client_hello(plain), "{plain:?}");
        }
    }

    #[test]
    fn bad_versions_lengths_and_handshake_types_are_not_tls() {
        assert!(!looks_like_tls(&[0x16, 0x03, 0x05, 0x00, 0x10, 0x01]));
        assert!(!looks_like_tls(&[0x16, 0x02, 0x00, 0x00, 0x10, 0x01]));
        assert!(!looks_like_tls(&[0x17, 0x03, 0x03, 0x00, 0x00]));
        assert!(!looks_like_tls(&[0x17, 0x03, 0x03, 0xff, 0xff, 0x00]));
        // A handshake record that holds no hello.
        assert!(!looks_like_tls(&[0x16, 0x03, 0x03, 0x00, 0x10, 0x0b]));
    }

    #[test]
    fn never_panics_on_any_prefix() {
        for len in 0..CLIENT_HELLO.len() {
            let _ = looks_like_tls(&CLIENT_HELLO[..len]);
            let _ = is_client_hello(&CLIENT_HELLO[..len]);
        }
        for first in 0..=255u8 {
            for second in [0u8, 3, 0xff] {
                let _ = looks_like_tls(&[first, second, 3, 0, 5, 1]);
            }
        }
    }
}
