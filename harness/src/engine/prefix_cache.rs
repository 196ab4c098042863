//! Reuse of computed prefixes: a few one-row KV caches keyed by the tokens they hold. A new
//! prefix starts from the cached entry it shares the most tokens with (cut back to the shared
//! part), so a few-shot preamble is computed once for all the questions that follow it, and a
//! question once for all of its choices. An ensemble's entry holds one cache per member.

use candle_core::Result;

use crate::model::Batch;

use super::ensemble::{Ensemble, EnsembleCache};
use super::stats::Stats;

pub struct PrefixCache {
    entries: Vec<(Vec<u32>, EnsembleCache)>,
    capacity: usize,
}

impl PrefixCache {
    /// `capacity` 0 disables reuse (every prefix is computed from scratch).
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: Vec::new(),
            capacity,
        }
    }

    /// A one-row cache holding exactly `prefix`, computing only what no entry already holds.
    pub fn get(
        &mut self,
        model: &Ensemble,
        prefix: &[u32],
        stats: &mut Stats,
    ) -> Result<EnsembleCache> {
        let best = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, (tokens, _))| (i, common_prefix_len(tokens, prefix)))
            .max_by_key(|&(_, n)| n)
            .filter(|&(_, n)| n > 0);
        let mut cache = match best {
            Some((i, n)) => {
                let entry = self.entries.remove(i);
                let cut = entry.1.truncate(n)?;
                self.entries.push(entry); // most recently used last
                cut
            }
            None => model.new_cache(1),
        };
        let done = cache.len();
        if done < prefix.len() {
            let rest = prefix[done..].to_vec();
            let positions: Vec<i64> = (done as i64..prefix.len() as i64).collect();
            let valid = vec![true; rest.len()];
            stats.forwarded += rest.len();
            model.forward(
                &Batch {
                    tokens: &[rest],
                    positions: &[positions],
                    valid: &[valid],
                },
                &mut cache,
            )?;
        }
        if self.capacity > 0 && !prefix.is_empty() {
            self.entries.retain(|(t, _)| t.as_slice() != prefix);
            self.entries.push((prefix.to_vec(), cache.clone()));
            if self.entries.len() > self.capacity {
                self.entries.remove(0);
            }
        }
        Ok(cache)
    }
}

pub fn common_prefix_len(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}
