//! MySQL/MariaDB: the auth data of the protocol-41 handshake response (the
//! client's first packet, sequence id 1). The auth data's length prefix
//! and the packet length are rewritten for the token. Later auth packets
//! (an auth switch response, caching_sha2's full authentication) are not
//! redacted.

use crate::Redactor;

const CLIENT_PROTOCOL_41: u32 = 0x0200;
const CLIENT_SECURE_CONNECTION: u32 = 0x8000;
const CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA: u32 = 0x0020_0000;

pub(crate) fn redact(redactor: &Redactor, payload: &[u8]) -> Option<Vec<u8>> {
    let header = payload.get(..4)?;
    if header[3] != 1 {
        return None;
    }
    let len = usize::from(header[0]) | usize::from(header[1]) << 8 | usize::from(header[2]) << 16;
    let packet = payload.get(4..4 + len)?;
    let capabilities = u32::from_le_bytes(packet.get(..4)?.try_into().ok()?);
    // As the protocol catalogue recognises it: protocol 41, filler zero.
    if capabilities & CLIENT_PROTOCOL_41 == 0 || packet.get(9..28)?.iter().any(|&b| b != 0) {
        return None;
    }
    let user_end = 32 + packet.get(32..)?.iter().position(|&b| b == 0)?;
    let auth_at = user_end + 1;
    let rest = packet.get(auth_at..)?;
    // (where the auth data starts, its length, how its length is written)
    let (data_at, data_len, prefix) = if capabilities & CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA != 0 {
        let (value, width) = lenenc(rest)?;
        (auth_at + width, value, Prefix::Length)
    } else if capabilities & CLIENT_SECURE_CONNECTION != 0 {
        (auth_at + 1, usize::from(*rest.first()?), Prefix::Length)
    } else {
        (
            auth_at,
            rest.iter().position(|&b| b == 0)?,
            Prefix::NulEnded,
        )
    };
    let data_end = data_at.checked_add(data_len)?;
    let data = packet.get(data_at..data_end)?;
    if data.is_empty() {
        return None;
    }
    let token = redactor.token(data);
    let mut new_packet = packet[..auth_at].to_vec();
    match prefix {
        // A token is shorter than 251 bytes: one length byte either way.
        Prefix::Length => new_packet.push(u8::try_from(token.len()).ok()?),
        Prefix::NulEnded => {}
    }
    new_packet.extend_from_slice(&token);
    new_packet.extend_from_slice(&packet[data_end..]);
    let new_len = u32::try_from(new_packet.len())
        .ok()
        .filter(|&n| n < 1 << 24)?;
    let mut out = new_len.to_le_bytes()[..3].to_vec();
    out.push(1);
    out.extend_from_slice(&new_packet);
    out.extend_from_slice(&payload[4 + len..]);
    Some(out)
}

enum Prefix {
    Length,
    NulEnded,
}

/// A length-encoded integer: its value and width.
fn lenenc(bytes: &[u8]) -> Option<(usize, usize)> {
    let width = match *bytes.first()? {
        n @ 0..=0xfa => return Some((usize::from(n), 1)),
        0xfc => 2,
        0xfd => 3,
        0xfe => 8,
        _ => return None,
    };
    let mut value: u64 = 0;
    for (shift, &byte) in bytes.get(1..1 + width)?.iter().enumerate() {
        value |= u64::from(byte) << (8 * shift);
    }
    Some((usize::try_from(value).ok()?, 1 + width))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_redactor;

    /// A handshake response: capabilities, max packet, charset, filler,
    /// user, auth data (prefixed by its length), database, plugin.
    fn handshake(capabilities: u32, auth: &[u8], after: &[u8]) -> Vec<u8> {
        let mut packet = capabilities.to_le_bytes().to_vec();
        packet.extend_from_slice(&(1u32 << 24).to_le_bytes());
        packet.push(33);
        packet.extend_from_slice(&[0; 23]);
        packet.extend_from_slice(b"koala\0");
        if capabilities & (CLIENT_SECURE_CONNECTION | CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA) != 0 {
            packet.push(auth.len() as u8);
            packet.extend_from_slice(auth);
        } else {
            packet.extend_from_slice(auth);
            packet.push(0);
        }
        packet.extend_from_slice(after);
        let mut out = (packet.len() as u32).to_le_bytes()[..3].to_vec();
        out.push(1);
        out.extend_from_slice(&packet);
        out
    }

    #[test]
    fn auth_data_is_redacted_with_its_lengths() {
        let redactor = test_redactor();
        let scramble = [0x8a_u8; 20];
        let token = redactor.token(&scramble);
        for capabilities in [
            CLIENT_PROTOCOL_41 | CLIENT_SECURE_CONNECTION,
            CLIENT_PROTOCOL_41 | CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA,
            CLIENT_PROTOCOL_41,
        ] {
            let after = b"db\0mysql_native_password\0";
            let auth: &[u8] = if capabilities == CLIENT_PROTOCOL_41 {
                b"pw"
            } else {
                &scramble
            };
            let want_token = if capabilities == CLIENT_PROTOCOL_41 {
                redactor.token(b"pw")
            } else {
                token.clone()
            };
            assert_eq!(
                redactor.redact(&handshake(capabilities, auth, after)),
                Some(handshake(capabilities, &want_token, after)),
                "{capabilities:#x}"
            );
        }
    }

    #[test]
    fn other_packets_are_left_alone() {
        let redactor = test_redactor();
        let flags = CLIENT_PROTOCOL_41 | CLIENT_SECURE_CONNECTION;
        assert_eq!(redactor.redact(&handshake(flags, b"", b"")), None);
        let mut command = handshake(flags, b"pw", b"");
        command[3] = 0;
        assert_eq!(redactor.redact(&command), None);
        let mut cut = handshake(flags, b"pw", b"");
        cut.truncate(40);
        assert_eq!(redactor.redact(&cut), None);
        assert_eq!(lenenc(&[0xfc, 1, 2]), Some((0x201, 3)));
        assert_eq!(lenenc(&[0xff]), None);
    }
}
