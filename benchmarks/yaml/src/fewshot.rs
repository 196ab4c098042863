//! Choosing the solved examples shown before each document (lm-eval's `samplers.py`):
//! `first_n` takes the first N of the few-shot split; the default draws them with
//! `random.Random(seed).sample`, one draw per evaluated document in document order, so the
//! examples of document i depend on the draws made for the documents before it, exactly as in
//! lm-eval. When the few-shot split is the evaluated split, the document itself is excluded
//! (N + 1 are drawn, the document dropped, N kept).

use crate::config::Sampler;
use crate::data::doc_eq;
use crate::pyrandom::PyRandom;
use crate::template::Doc;

pub struct ShotPicker<'a> {
    sampler: Sampler,
    pool: &'a [Doc],
    exclude_evaluated: bool,
    rng: PyRandom,
}

impl<'a> ShotPicker<'a> {
    pub fn new(sampler: Sampler, pool: &'a [Doc], exclude_evaluated: bool, seed: u64) -> Self {
        ShotPicker {
            sampler,
            pool,
            exclude_evaluated,
            rng: PyRandom::new(seed),
        }
    }

    /// The `n` examples for `doc`, in prompt order.
    pub fn pick(&mut self, n: usize, doc: &Doc) -> Result<Vec<&'a Doc>, String> {
        if n == 0 {
            return Ok(Vec::new());
        }
        // lm-eval passes no document to exclude when it is empty (`if not eval_doc`).
        let exclude = self.exclude_evaluated && !doc.is_empty();
        let pool = self.pool;
        let shots: Vec<&Doc> = match self.sampler {
            Sampler::FirstN => {
                let kept: Vec<&Doc> = pool
                    .iter()
                    .filter(|d| !(exclude && doc_eq(d, doc)))
                    .collect();
                if n > kept.len() {
                    return Err(format!(
                        "{n} shots asked for, but the few-shot split has {} documents to offer",
                        kept.len()
                    ));
                }
                kept.into_iter().take(n).collect()
            }
            Sampler::Default => {
                let k = if exclude { n + 1 } else { n };
                if k > pool.len() {
                    return Err(format!(
                        "{n} shots asked for, but the few-shot split has {} documents{}",
                        pool.len(),
                        if exclude {
                            " (one of them the evaluated document)"
                        } else {
                            ""
                        }
                    ));
                }
                let drawn = self.rng.sample(pool.len(), k);
                let shots: Vec<&Doc> = drawn
                    .into_iter()
                    .map(|i| &pool[i])
                    .filter(|d| !(exclude && doc_eq(d, doc)))
                    .take(n)
                    .collect();
                if shots.len() != n {
                    return Err(format!(
                        "the few-shot split holds the evaluated document more than once; {} of {n} shots left",
                        shots.len()
                    ));
                }
                shots
            }
        };
        Ok(shots)
    }
}
