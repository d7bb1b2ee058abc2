//! A request prepared for matching.

use std::ops::Range;

/// Options of normalisation.
#[derive(Clone, Copy, Debug, Default)]
pub struct NormalizeOptions<'a> {
    /// HTTP headers (lower-case names) dropped before comparing.
    pub volatile_headers: &'a [String],
}

/// A request prepared for matching.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Normalized {
    /// Canonical bytes: the exact index key and what scoring compares.
    pub bytes: Vec<u8>,
    /// The part of `bytes` holding HTTP header fields, which weighs less in
    /// scoring; empty for other protocols.
    pub header_range: Range<usize>,
    /// The operation: requests are only compared with recorded requests of
    /// the same key. Empty for protocols that are not recognised.
    pub key: Vec<u8>,
    /// Where scoring starts: the bytes before it spell the operation key,
    /// equal for every candidate, and would only dilute the differences.
    pub scored_from: usize,
}

impl Normalized {
    /// Unrecognised bytes: kept as they are, no operation key.
    pub fn raw(request: &[u8]) -> Self {
        Normalized {
            bytes: request.to_vec(),
            ..Normalized::default()
        }
    }

    /// A request compared as it is, under operation `key`; scoring starts at
    /// `scored_from` (after the bytes that spell the key, if they lead).
    pub fn keyed(request: &[u8], key: Vec<u8>, scored_from: usize) -> Self {
        Normalized {
            bytes: request.to_vec(),
            header_range: 0..0,
            key,
            scored_from,
        }
    }

    /// The bytes scoring compares, and the header range within them.
    pub fn scored(&self) -> (&[u8], Range<usize>) {
        let start = self.scored_from.min(self.bytes.len());
        let shift = |at: usize| at.saturating_sub(start);
        (
            &self.bytes[start..],
            shift(self.header_range.start)..shift(self.header_range.end),
        )
    }
}
