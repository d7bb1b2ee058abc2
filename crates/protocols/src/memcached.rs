//! memcached: not implemented yet.

use crate::{Completeness, NormalizeOptions, Normalized, Protocol};

/// The memcached protocol.
pub struct Memcached;

impl Protocol for Memcached {
    fn name(&self) -> &'static str {
        "memcached"
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
