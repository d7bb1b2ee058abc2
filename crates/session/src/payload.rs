//! Lossless JSON form of raw bytes.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::de::{self, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Bytes as they crossed the socket.
///
/// In JSON a payload is a string when the bytes are valid UTF-8 (the string
/// is exactly those bytes), otherwise `{"base64": "<standard base64>"}`.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Payload(Vec<u8>);

impl Payload {
    pub fn new(bytes: Vec<u8>) -> Self {
        Payload(bytes)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<Vec<u8>> for Payload {
    fn from(bytes: Vec<u8>) -> Self {
        Payload(bytes)
    }
}

impl From<&[u8]> for Payload {
    fn from(bytes: &[u8]) -> Self {
        Payload(bytes.to_vec())
    }
}

impl From<&str> for Payload {
    fn from(text: &str) -> Self {
        Payload(text.as_bytes().to_vec())
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Payload({:?})", String::from_utf8_lossy(&self.0))
    }
}

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(&self.0) {
            Ok(text) => serializer.serialize_str(text),
            Err(_) => {
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry("base64", &BASE64.encode(&self.0))?;
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(PayloadVisitor)
    }
}

struct PayloadVisitor;

impl<'de> Visitor<'de> for PayloadVisitor {
    type Value = Payload;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(r#"a string or {"base64": "..."}"#)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Payload, E> {
        Ok(Payload(text.as_bytes().to_vec()))
    }

    fn visit_string<E: de::Error>(self, text: String) -> Result<Payload, E> {
        Ok(Payload(text.into_bytes()))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Payload, A::Error> {
        let mut bytes = None;
        while let Some(key) = map.next_key::<String>()? {
            if key != "base64" {
                return Err(de::Error::unknown_field(&key, &["base64"]));
            }
            let encoded: String = map.next_value()?;
            let decoded = BASE64
                .decode(encoded.as_bytes())
                .map_err(|e| de::Error::custom(format_args!("invalid base64 payload: {e}")))?;
            bytes = Some(decoded);
        }
        bytes
            .map(Payload)
            .ok_or_else(|| de::Error::missing_field("base64"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(bytes: &[u8]) -> String {
        let json = serde_json::to_string(&Payload::from(bytes)).unwrap();
        let back: Payload = serde_json::from_str(&json).unwrap();
        assert_eq!(back.as_bytes(), bytes, "round trip of {json}");
        json
    }

    #[test]
    fn utf8_is_a_plain_string() {
        assert_eq!(
            round_trip(b"GET / HTTP/1.1\r\n\r\n"),
            r#""GET / HTTP/1.1\r\n\r\n""#
        );
        assert_eq!(round_trip("héllo ✓".as_bytes()), "\"héllo ✓\"");
        assert_eq!(round_trip(b"\x00\x01\x7f"), "\"\\u0000\\u0001\x7f\"");
        assert_eq!(round_trip(b""), r#""""#);
    }

    #[test]
    fn invalid_utf8_is_base64() {
        assert_eq!(round_trip(&[0xff, 0x00, 0x80]), r#"{"base64":"/wCA"}"#);
        // A valid prefix does not make the whole payload text.
        assert_eq!(round_trip(b"abc\xc3"), r#"{"base64":"YWJjww=="}"#);
    }

    #[test]
    fn every_byte_value_round_trips() {
        let all: Vec<u8> = (0..=255).collect();
        round_trip(&all);
    }

    #[test]
    fn bad_forms_are_rejected_with_a_reason() {
        let err = serde_json::from_str::<Payload>(r#"{"base64":"!!"}"#).unwrap_err();
        assert!(err.to_string().contains("invalid base64"), "{err}");
        let err = serde_json::from_str::<Payload>(r#"{"hex":"00"}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `hex`"), "{err}");
        let err = serde_json::from_str::<Payload>("42").unwrap_err();
        assert!(err.to_string().contains("a string or"), "{err}");
        let err = serde_json::from_str::<Payload>("{}").unwrap_err();
        assert!(err.to_string().contains("missing field `base64`"), "{err}");
    }
}
