//! postgres: not implemented yet.

use crate::{Completeness, NormalizeOptions, Normalized, Protocol};

/// The postgres protocol.
pub struct Postgres;

impl Protocol for Postgres {
    fn name(&self) -> &'static str {
        "postgres"
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
