//! fastcgi: not implemented yet.

use crate::{Completeness, NormalizeOptions, Normalized, Protocol};

/// The fastcgi protocol.
pub struct FastCgi;

impl Protocol for FastCgi {
    fn name(&self) -> &'static str {
        "fastcgi"
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
