//! mysql: not implemented yet.

use crate::{Completeness, NormalizeOptions, Normalized, Protocol};

/// The mysql protocol.
pub struct Mysql;

impl Protocol for Mysql {
    fn name(&self) -> &'static str {
        "mysql"
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
