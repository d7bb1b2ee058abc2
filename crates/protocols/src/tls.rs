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

/// A stand-in X.509 certificate (DER) for a replayed TLS connection, for
/// clients that read the peer's certificate after the handshake (libcurl
/// refuses to go on without one when it verifies, and checks the host name
/// against it). Its subject and subjectAltName carry `dns` and `ip` (the
/// names the client asked for); it is valid from 2020 to 2099. Nothing in it
/// is secret or verifiable: the key is the P-256 generator point and the
/// signature is a dummy. Replay reports the verification as succeeded
/// (`SSL_get_verify_result`), so no client checks the signature; the
/// certificate only exists on connections koala's own servers answer.
pub fn stand_in_certificate(dns: Option<&str>, ip: Option<std::net::IpAddr>) -> Vec<u8> {
    const ECDSA_SHA256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
    const EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
    const PRIME256V1: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    const COMMON_NAME: &[u8] = &[0x06, 0x03, 0x55, 0x04, 0x03];
    const SUBJECT_ALT_NAME: &[u8] = &[0x06, 0x03, 0x55, 0x1d, 0x11];
    /// The uncompressed generator point of P-256: a valid public key.
    const GENERATOR: [u8; 65] = [
        0x04, 0x6b, 0x17, 0xd1, 0xf2, 0xe1, 0x2c, 0x42, 0x47, 0xf8, 0xbc, 0xe6, 0xe5, 0x63, 0xa4,
        0x40, 0xf2, 0x77, 0x03, 0x7d, 0x81, 0x2d, 0xeb, 0x33, 0xa0, 0xf4, 0xa1, 0x39, 0x45, 0xd8,
        0x98, 0xc2, 0x96, 0x4f, 0xe3, 0x42, 0xe2, 0xfe, 0x1a, 0x7f, 0x9b, 0x8e, 0xe7, 0xeb, 0x4a,
        0x7c, 0x0f, 0x9e, 0x16, 0x2b, 0xce, 0x33, 0x57, 0x6b, 0x31, 0x5e, 0xce, 0xcb, 0xb6, 0x40,
        0x68, 0x37, 0xbf, 0x51, 0xf5,
    ];
    let name = |text: &str| {
        let attribute = der(0x30, &[COMMON_NAME, &der(0x0c, text.as_bytes())].concat());
        der(0x30, &der(0x31, &attribute))
    };
    let algorithm = der(0x30, ECDSA_SHA256);
    let subject = dns
        .map(str::to_string)
        .or_else(|| ip.map(|ip| ip.to_string()))
        .unwrap_or_else(|| "koala replay".into());
    let mut names = Vec::new();
    if let Some(dns) = dns {
        names.extend(der(0x82, dns.as_bytes()));
    }
    match ip {
        Some(std::net::IpAddr::V4(v4)) => names.extend(der(0x87, &v4.octets())),
        Some(std::net::IpAddr::V6(v6)) => names.extend(der(0x87, &v6.octets())),
        None => {}
    }
    let san = der(
        0x30,
        &[SUBJECT_ALT_NAME, &der(0x04, &der(0x30, &names))].concat(),
    );
    let key = der(
        0x30,
        &[
            der(0x30, &[EC_PUBLIC_KEY, PRIME256V1].concat()),
            der(0x03, &[&[0u8][..], &GENERATOR].concat()),
        ]
        .concat(),
    );
    let tbs = der(
        0x30,
        &[
            der(0xa0, &der(0x02, &[2])),
            der(0x02, &[1]),
            algorithm.clone(),
            name("koala replay"),
            der(
                0x30,
                &[der(0x17, b"200101000000Z"), der(0x18, b"20991231235959Z")].concat(),
            ),
            name(&subject),
            key,
            der(0xa3, &der(0x30, &san)),
        ]
        .concat(),
    );
    // ECDSA-Sig-Value { r 1, s 1 }: well formed, never checked.
    let signature = der(
        0x03,
        &[0x00, 0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01],
    );
    der(0x30, &[tbs, algorithm, signature].concat())
}

/// One DER element: `tag`, its definite length, `content`.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|&b| b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

#[cfg(test)]
mod certificate_tests {
    use super::*;

    /// Reads one DER element: (tag, content, rest).
    fn element(bytes: &[u8]) -> (u8, &[u8], &[u8]) {
        let tag = bytes[0];
        let (len, head) = match bytes[1] {
            short if short < 0x80 => (short as usize, 2),
            long => {
                let n = (long & 0x7f) as usize;
                let len = bytes[2..2 + n]
                    .iter()
                    .fold(0usize, |acc, &b| acc << 8 | b as usize);
                (len, 2 + n)
            }
        };
        (tag, &bytes[head..head + len], &bytes[head + len..])
    }

    #[test]
    fn lengths_are_definite_der() {
        assert_eq!(der(0x04, &[1, 2]), [0x04, 2, 1, 2]);
        let long = der(0x04, &[0; 300]);
        assert_eq!(&long[..4], &[0x04, 0x82, 0x01, 0x2c]);
        assert_eq!(long.len(), 304);
    }

    #[test]
    fn the_certificate_is_one_sequence_naming_the_host() {
        let cert =
            stand_in_certificate(Some("api.example.test"), Some("127.0.0.1".parse().unwrap()));
        let (tag, body, rest) = element(&cert);
        assert_eq!((tag, rest.len()), (0x30, 0));
        let (tbs_tag, tbs, after) = element(body);
        assert_eq!(tbs_tag, 0x30);
        let (algorithm, _, after) = element(after);
        let (signature, _, after) = element(after);
        assert_eq!((algorithm, signature, after.len()), (0x30, 0x03, 0));
        // The SAN holds the DNS name and the IP address, as a client checks them.
        let find = |needle: &[u8]| tbs.windows(needle.len()).any(|w| w == needle);
        assert!(find(&der(0x82, b"api.example.test")));
        assert!(find(&der(0x87, &[127, 0, 0, 1])));
        assert!(find(&der(0x0c, b"api.example.test")), "subject CN");
    }

    #[test]
    fn without_names_it_still_parses() {
        let cert = stand_in_certificate(None, None);
        let (tag, _, rest) = element(&cert);
        assert_eq!((tag, rest.len()), (0x30, 0));
    }
}
