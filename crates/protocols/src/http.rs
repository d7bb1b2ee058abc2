//! http: not implemented yet.

use crate::{Completeness, NormalizeOptions, Normalized, Protocol};

/// The http protocol.
pub struct Http;

impl Protocol for Http {
    fn name(&self) -> &'static str {
        "http"
    }

    fn detect_request(&self, _bytes: &[u8]) -> bool {
        false
    }

    fn frame_request(&self, _bytes: &[u8]) -> Completeness {
        Completeness::Unknown
    }

    fn normalize(&self, _request: &[u8], _options: &NormalizeOptions) -> Option<Normalized> {
        None
    }
}
