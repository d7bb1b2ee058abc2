//! redis: not implemented yet.

use crate::{Completeness, NormalizeOptions, Normalized, Protocol};

/// The redis protocol.
pub struct Redis;

impl Protocol for Redis {
    fn name(&self) -> &'static str {
        "redis"
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
