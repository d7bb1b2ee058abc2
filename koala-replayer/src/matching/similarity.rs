//! Weighted token similarity between two normalised requests, and the
//! upper bound on it that ranks candidates before any alignment.

use std::ops::Range;

/// Weight multiplier of HTTP header fields. Headers to one dependency are
/// mostly the same boilerplate on every request, so they count for less
/// than the request line and body.
pub(crate) const HEADER_SECTION_WEIGHT: u32 = 1;
/// Weight multiplier of everything else.
pub(crate) const CONTENT_SECTION_WEIGHT: u32 = 8;
/// Per-byte weight of a word (a run of letters in text): names of
/// operations, fields, tables, which say what a request asks for.
pub(crate) const WORD_BYTE_WEIGHT: u32 = 12;
/// Per-byte weight of punctuation, spaces and line endings (structure), and
/// of letters amid binary bytes (not taken for names).
pub(crate) const STRUCTURE_BYTE_WEIGHT: u32 = 2;
/// Per-byte weight of a value (a run of letters and digits with at least
/// one digit) and of non-printable bytes: ids, but also timestamps, nonces,
/// hashes and signatures, which change from run to run.
pub(crate) const VALUE_BYTE_WEIGHT: u32 = 1;
/// Largest middle part (tokens × tokens) aligned exactly; past it the
/// middle is compared as a multiset of tokens (order ignored).
pub(crate) const ALIGNMENT_CELL_BUDGET: usize = 1 << 18;

/// A token: a run of ASCII letters and digits, or any other single byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Token {
    pub hash: u64,
    /// Byte length times the byte weight of the section it is in.
    pub weight: u32,
}

/// 64-bit FNV-1a with a final avalanche.
fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Murmur3's fmix64.
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^ (hash >> 33)
}

/// Whether the letters at `start..end` sit in text: next to printable
/// ASCII or whitespace on at least one side (or the edge of the input).
/// Letters between two binary bytes are more likely part of a number or a
/// nonce than a name.
fn is_text_context(bytes: &[u8], start: usize, end: usize) -> bool {
    let texty = |byte: Option<&u8>| {
        byte.is_none_or(|byte| byte.is_ascii_graphic() || byte.is_ascii_whitespace())
    };
    texty(start.checked_sub(1).and_then(|before| bytes.get(before))) || texty(bytes.get(end))
}

/// Splits `bytes` into tokens. A token weighs its length times its class
/// weight (word, structure or value) times its section weight (headers or
/// content).
pub(crate) fn tokenize(bytes: &[u8], header_range: &Range<usize>, tokens: &mut Vec<Token>) {
    tokens.clear();
    let mut at = 0;
    while at < bytes.len() {
        let mut end = at + 1;
        if bytes[at].is_ascii_alphanumeric() {
            // Runs never cross a section boundary (CRLF separates them anyway).
            let limit = if header_range.contains(&at) {
                header_range.end
            } else if at < header_range.start {
                header_range.start
            } else {
                bytes.len()
            };
            while end < limit && bytes[end].is_ascii_alphanumeric() {
                end += 1;
            }
        }
        let token = &bytes[at..end];
        let section_weight = if header_range.contains(&at) {
            HEADER_SECTION_WEIGHT
        } else {
            CONTENT_SECTION_WEIGHT
        };
        let class_weight = if token.iter().any(u8::is_ascii_digit) {
            VALUE_BYTE_WEIGHT
        } else if token[0].is_ascii_alphabetic() && is_text_context(bytes, at, end) {
            WORD_BYTE_WEIGHT
        } else if token[0].is_ascii_graphic() || token[0].is_ascii_whitespace() {
            STRUCTURE_BYTE_WEIGHT
        } else {
            VALUE_BYTE_WEIGHT
        };
        let len = u32::try_from(token.len()).unwrap_or(u32::MAX);
        let weight = len
            .saturating_mul(class_weight)
            .saturating_mul(section_weight);
        tokens.push(Token {
            hash: hash_bytes(token),
            weight,
        });
        at = end;
    }
}

/// The request's shape: its tokens with every run of values (tokens with
/// a digit, non-printable bytes) folded into one placeholder. Two requests
/// of one shape differ only in values: a timestamp, an id, a nonce.
pub(crate) fn shape(bytes: &[u8]) -> u64 {
    const VALUE: &[u8] = b"\x00value";
    let mut folded: Vec<u8> = Vec::with_capacity(bytes.len());
    let mut in_value = false;
    let mut at = 0;
    while at < bytes.len() {
        let mut end = at + 1;
        if bytes[at].is_ascii_alphanumeric() {
            while end < bytes.len() && bytes[end].is_ascii_alphanumeric() {
                end += 1;
            }
        }
        let token = &bytes[at..end];
        let is_value = token.iter().any(u8::is_ascii_digit)
            || !(token[0].is_ascii_graphic() || token[0].is_ascii_whitespace());
        if is_value {
            if !in_value {
                folded.extend_from_slice(VALUE);
            }
        } else {
            folded.extend_from_slice(token);
            // Separates tokens, so `ab` `c` and `a` `bc` differ.
            folded.push(0);
        }
        in_value = is_value;
        at = end;
    }
    hash_bytes(&folded)
}

/// A request tokenised once, with what the upper bound needs.
pub(crate) struct RequestProfile {
    pub tokens: Vec<Token>,
    pub total: u64,
    /// Each distinct token hash with its total weight in the request.
    pub distinct: Vec<(u64, u64)>,
}

impl RequestProfile {
    pub fn new(bytes: &[u8], header_range: &Range<usize>) -> Self {
        let mut tokens = Vec::new();
        tokenize(bytes, header_range, &mut tokens);
        let total = total_weight(&tokens);
        let distinct = distinct_weights(&tokens);
        RequestProfile {
            tokens,
            total,
            distinct,
        }
    }
}

pub(crate) fn total_weight(tokens: &[Token]) -> u64 {
    tokens.iter().map(|token| u64::from(token.weight)).sum()
}

/// Each distinct token hash with its summed weight, sorted by hash.
pub(crate) fn distinct_weights(tokens: &[Token]) -> Vec<(u64, u64)> {
    let mut pairs: Vec<(u64, u64)> = tokens
        .iter()
        .map(|token| (token.hash, u64::from(token.weight)))
        .collect();
    pairs.sort_unstable();
    let mut totals: Vec<(u64, u64)> = Vec::with_capacity(pairs.len());
    for (hash, weight) in pairs {
        match totals.last_mut() {
            Some((last, total)) if *last == hash => *total += weight,
            _ => totals.push((hash, weight)),
        }
    }
    totals
}

/// An upper bound of [`similarity`] between a request and a candidate of
/// which `absent_weight` of the request's weight is known not to occur in
/// the candidate: no more than the rest, nor than the lighter side, can be
/// shared.
pub(crate) fn upper_bound(request_total: u64, absent_weight: u64, candidate_total: u64) -> f64 {
    let shared = (request_total - absent_weight.min(request_total)).min(candidate_total);
    dice(shared, request_total, candidate_total)
}

/// Dice coefficient on weights: twice the shared weight over both totals.
fn dice(shared: u64, left_total: u64, right_total: u64) -> f64 {
    let both = left_total + right_total;
    if both == 0 {
        1.0
    } else {
        (2 * shared) as f64 / both as f64
    }
}

/// Similarity in `0.0..=1.0` of two token lists: the weight of their
/// heaviest common subsequence, as a Dice coefficient. Equal leading and
/// trailing tokens are matched first; the differing middle is aligned
/// exactly when it is at most [`ALIGNMENT_CELL_BUDGET`] cells, otherwise
/// compared as multisets.
pub(crate) fn similarity(left: &[Token], right: &[Token]) -> f64 {
    let (left_total, right_total) = (total_weight(left), total_weight(right));
    let shared_weight = |a: &Token, b: &Token| u64::from(a.weight.min(b.weight));

    let prefix = left
        .iter()
        .zip(right)
        .take_while(|(a, b)| a.hash == b.hash)
        .count();
    let mut shared: u64 = left[..prefix]
        .iter()
        .zip(right)
        .map(|(a, b)| shared_weight(a, b))
        .sum();
    let (left_rest, right_rest) = (&left[prefix..], &right[prefix..]);
    let suffix = left_rest
        .iter()
        .rev()
        .zip(right_rest.iter().rev())
        .take_while(|(a, b)| a.hash == b.hash)
        .count();
    shared += left_rest
        .iter()
        .rev()
        .zip(right_rest.iter().rev())
        .take(suffix)
        .map(|(a, b)| shared_weight(a, b))
        .sum::<u64>();
    let left_middle = &left_rest[..left_rest.len() - suffix];
    let right_middle = &right_rest[..right_rest.len() - suffix];

    if !left_middle.is_empty() && !right_middle.is_empty() {
        shared += if left_middle.len().saturating_mul(right_middle.len()) <= ALIGNMENT_CELL_BUDGET {
            heaviest_common_subsequence(left_middle, right_middle)
        } else {
            multiset_overlap(left_middle, right_middle)
        };
    }
    dice(shared, left_total, right_total)
}

/// Weight of the heaviest common subsequence: the LCS dynamic programme with
/// token weights, two rows of memory.
fn heaviest_common_subsequence(left: &[Token], right: &[Token]) -> u64 {
    let mut previous = vec![0u64; right.len() + 1];
    let mut current = vec![0u64; right.len() + 1];
    for a in left {
        for (column, b) in right.iter().enumerate() {
            let mut best = previous[column + 1].max(current[column]);
            if a.hash == b.hash {
                best = best.max(previous[column] + u64::from(a.weight.min(b.weight)));
            }
            current[column + 1] = best;
        }
        std::mem::swap(&mut previous, &mut current);
    }
    previous[right.len()]
}

/// Shared weight of two token multisets, ignoring order.
fn multiset_overlap(left: &[Token], right: &[Token]) -> u64 {
    let (left, right) = (distinct_weights(left), distinct_weights(right));
    let (mut i, mut j, mut shared) = (0, 0, 0u64);
    while i < left.len() && j < right.len() {
        match left[i].0.cmp(&right[j].0) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                shared += left[i].1.min(right[j].1);
                i += 1;
                j += 1;
            }
        }
    }
    shared
}
