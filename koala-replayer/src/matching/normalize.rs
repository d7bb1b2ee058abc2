//! Canonical form of a request, and the operation it performs: the
//! protocol catalogue's (`koala_protocols`), one module per protocol.
//!
//! Two requests that mean the same thing normalise to the same bytes (so
//! the exact index finds them), and two requests for different operations
//! get different operation keys (so they are never compared at all).

use koala_protocols::NormalizeOptions;
pub(crate) use koala_protocols::Normalized;

/// Normalises `request` with the protocol it belongs to; bytes no protocol
/// recognises are kept as they are, with no operation key.
pub(crate) fn normalize(request: &[u8], volatile_headers: &[String]) -> Normalized {
    koala_protocols::normalize(request, &NormalizeOptions { volatile_headers })
}
