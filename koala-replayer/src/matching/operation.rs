//! The recorded calls of one operation, with a token index that bounds
//! their similarity to a request without aligning anything.

use std::collections::HashMap;

use super::similarity::RequestProfile;

/// Calls sharing an operation key.
#[derive(Clone, Debug, Default)]
pub(crate) struct Operation {
    /// Call indexes, in recorded order.
    pub members: Vec<usize>,
    /// Token hash → positions in `members` of the calls containing it.
    postings: HashMap<u64, Vec<u32>>,
}

impl Operation {
    /// Adds a call given its distinct token hashes.
    pub fn add(&mut self, call_index: usize, distinct: &[(u64, u64)]) {
        let position = u32::try_from(self.members.len()).unwrap_or(u32::MAX);
        self.members.push(call_index);
        for &(hash, _) in distinct {
            self.postings.entry(hash).or_default().push(position);
        }
    }

    /// For each member (by position), the weight of the request's tokens
    /// that do not occur in it. Tokens found in more than half the members
    /// are counted as present everywhere: their postings are long and they
    /// tell the members apart little, and undercounting keeps the bound valid.
    /// Cost: the members plus the postings of the request's rarer tokens.
    pub fn absent_weights(&self, profile: &RequestProfile) -> Vec<u64> {
        let count = self.members.len();
        let mut found = vec![0u64; count];
        let mut rare_weight = 0u64;
        for &(hash, weight) in &profile.distinct {
            match self.postings.get(&hash) {
                None => rare_weight += weight,
                Some(positions) if positions.len() * 2 > count => {}
                Some(positions) => {
                    rare_weight += weight;
                    for &position in positions {
                        if let Some(slot) = found.get_mut(position as usize) {
                            *slot += weight;
                        }
                    }
                }
            }
        }
        found
            .into_iter()
            .map(|present| rare_weight - present.min(rare_weight))
            .collect()
    }
}
