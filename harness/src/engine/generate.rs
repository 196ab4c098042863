//! `generate_until`: greedy decoding with a KV cache, stopped by stop strings, EOS or a token
//! budget. Rows of a batch share their common prefix; the rest is left-padded so that every row
//! produces its next token at the same column.

use serde::{Deserialize, Serialize};

use super::ensemble::EnsembleCache;
use super::prefix_cache::common_prefix_len;
use super::{Engine, Stats};
use crate::error::{Result, RuntimeError};
use crate::model::Batch;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerateRequest {
    pub context: String,
    /// Generation ends at the first occurrence of any of these; the text is cut before it.
    #[serde(default)]
    pub until: Vec<String>,
    pub max_new_tokens: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Generation {
    /// Generated text, cut before the first stop string.
    pub text: String,
    /// Every generated id (EOS included when it ended the generation).
    pub ids: Vec<u32>,
}

struct Row {
    request: usize,
    ids: Vec<u32>,
    done: bool,
    text: String,
}

impl Engine<'_> {
    pub fn generate_until(&mut self, requests: &[GenerateRequest]) -> Result<Vec<Generation>> {
        let tokenizer = self.model.tokenizer();
        let max = self.max_length();
        let mut prompts = Vec::with_capacity(requests.len());
        for r in requests {
            let mut ids = tokenizer.encode_document(&r.context)?;
            if ids.is_empty() {
                let start = tokenizer
                    .bos_token_id()
                    .or_else(|| tokenizer.eos_token_ids().first().copied())
                    .ok_or_else(|| {
                        RuntimeError::Request(
                            "empty prompt, and the tokenizer has neither BOS nor EOS to stand for it"
                                .into(),
                        )
                    })?;
                ids.push(start);
            }
            // Leave room for the generation, cutting the prompt from the left (lm-eval's rule).
            let room = max.saturating_sub(r.max_new_tokens).max(1);
            if ids.len() > room {
                ids.drain(..ids.len() - room);
            }
            prompts.push(ids);
        }
        let mut order: Vec<usize> = (0..requests.len()).collect();
        order.sort_by(|&a, &b| prompts[a].cmp(&prompts[b]));
        // Each prompt's reusable prefix: what it shares with a neighbour in sorted order (a
        // few-shot preamble), keeping at least its last token to forward.
        let mut shared = vec![0usize; prompts.len()];
        if self.options.prefix_cache_entries > 0 {
            for w in order.windows(2) {
                let n = common_prefix_len(&prompts[w[0]], &prompts[w[1]]);
                for &i in w {
                    shared[i] = shared[i].max(n.min(prompts[i].len() - 1));
                }
            }
        }
        let mut out: Vec<Option<Generation>> = vec![None; requests.len()];
        // A budget of no tokens generates nothing (and runs nothing).
        order.retain(|&i| {
            let empty = requests[i].max_new_tokens == 0;
            if empty {
                out[i] = Some(Generation {
                    text: String::new(),
                    ids: Vec::new(),
                });
            }
            !empty
        });
        for chunk in order.chunks(self.options.batch_size.max(1)) {
            for (i, generation) in self.generate_batch(requests, &prompts, &shared, chunk)? {
                out[i] = Some(generation);
            }
        }
        Ok(out
            .into_iter()
            .map(|g| g.expect("every request generated"))
            .collect())
    }

    fn generate_batch(
        &mut self,
        requests: &[GenerateRequest],
        prompts: &[Vec<u32>],
        shared: &[usize],
        chunk: &[usize],
    ) -> Result<Vec<(usize, Generation)>> {
        let model = &self.model;
        let tokenizer = model.tokenizer();
        let eos = tokenizer.eos_token_ids().to_vec();
        let mut stats = Stats {
            requested: chunk.iter().map(|&i| prompts[i].len()).sum(),
            ..Stats::default()
        };
        // Rows of one batch may come from different preambles: each row starts from its own
        // cached prefix, and the rows' caches are stacked (left-padded) into one.
        let row_caches = chunk
            .iter()
            .map(|&i| match shared[i] {
                0 => Ok(model.new_cache(1)),
                n => self.prefixes.get(model, &prompts[i][..n], &mut stats),
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let mut cache = EnsembleCache::stack_rows(&row_caches)?;

        // Prefill: left-pad the unshared parts to a common length.
        let width = chunk
            .iter()
            .map(|&i| prompts[i].len() - shared[i])
            .max()
            .unwrap_or(0);
        let mut tokens = Vec::new();
        let mut positions = Vec::new();
        let mut valid = Vec::new();
        for &i in chunk {
            let rest = &prompts[i][shared[i]..];
            let pad = width - rest.len();
            stats.forwarded += rest.len();
            stats.padding += pad;
            let mut t = vec![0u32; pad];
            t.extend_from_slice(rest);
            tokens.push(t);
            let mut p = vec![0i64; pad];
            p.extend(shared[i] as i64..(shared[i] + rest.len()) as i64);
            positions.push(p);
            let mut v = vec![false; pad];
            v.extend(std::iter::repeat_n(true, rest.len()));
            valid.push(v);
        }
        let mut hidden = model.forward(
            &Batch {
                tokens: &tokens,
                positions: &positions,
                valid: &valid,
            },
            &mut cache,
        )?;
        let mut rows: Vec<Row> = chunk
            .iter()
            .map(|&i| Row {
                request: i,
                ids: Vec::new(),
                done: false,
                text: String::new(),
            })
            .collect();
        let mut active: Vec<usize> = (0..rows.len()).collect();
        let mut last_col = width - 1;
        while !active.is_empty() {
            let at: Vec<(usize, usize)> = (0..active.len()).map(|r| (r, last_col)).collect();
            // The greedy choice of the (combined) distribution.
            let next = model.next_token(&hidden, &at)?.argmax()?;
            for (&row, &id) in active.iter().zip(&next) {
                let row = &mut rows[row];
                let request = &requests[row.request];
                row.ids.push(id);
                if eos.contains(&id) {
                    row.done = true;
                    row.text = tokenizer.decode(&row.ids[..row.ids.len() - 1])?;
                } else {
                    row.text = tokenizer.decode(&row.ids)?;
                    if let Some(cut) = first_stop(&row.text, &request.until) {
                        row.text.truncate(cut);
                        row.done = true;
                    }
                }
                if row.ids.len() >= request.max_new_tokens {
                    row.done = true;
                }
            }
            let keep: Vec<usize> = (0..active.len())
                .filter(|&k| !rows[active[k]].done)
                .collect();
            if keep.is_empty() {
                break;
            }
            if keep.len() < active.len() {
                cache = cache.select_rows(&keep)?;
            }
            active = keep.iter().map(|&k| active[k]).collect();
            let next_pos = cache.next_positions();
            let tokens: Vec<Vec<u32>> = active
                .iter()
                .map(|&r| vec![*rows[r].ids.last().expect("one token generated")])
                .collect();
            let positions: Vec<Vec<i64>> = next_pos.iter().map(|&p| vec![p]).collect();
            let valid = vec![vec![true]; active.len()];
            stats.generated += active.len();
            hidden = model.forward(
                &Batch {
                    tokens: &tokens,
                    positions: &positions,
                    valid: &valid,
                },
                &mut cache,
            )?;
            last_col = 0;
        }
        self.stats.add(&stats);
        Ok(rows
            .into_iter()
            .map(|r| {
                (
                    r.request,
                    Generation {
                        text: r.text,
                        ids: r.ids,
                    },
                )
            })
            .collect())
    }
}

/// Byte offset of the earliest stop string in `text`.
fn first_stop(text: &str, until: &[String]) -> Option<usize> {
    until
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()))
        .min()
}

#[cfg(test)]
mod tests {
    use super::first_stop;

    #[test]
    fn earliest_stop_string_wins() {
        let until = vec!["\nQ:".to_string(), "</s>".to_string()];
        assert_eq!(
            first_stop("The answer is 4.</s>\nQ: next", &until),
            Some(16)
        );
        assert_eq!(first_stop("no stop here", &until), None);
    }
}
