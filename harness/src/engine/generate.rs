//! `generate_until`: greedy decoding with a KV cache, stopped by stop strings, EOS or a token
//! budget, with continuous batching: up to `batch_size` rows decode together, and when a row
//! finishes the next waiting request takes its place, so the batch stays full until the queue is
//! empty.
//!
//! Requests are taken in sorted order so that prompts sharing a preamble follow each other and
//! reuse its cached keys. Newcomers are prefilled together (left-padded to a common length), then
//! joined to the running rows in one new cache with room for the rest of the token budget; every
//! decoding step writes its keys into that room in place. The only copies of the cache are made
//! when rows join or leave.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::ensemble::{EnsembleCache, Hidden};
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

/// One request being generated.
struct Row {
    request: usize,
    ids: Vec<u32>,
    text: String,
    done: bool,
    /// The position of the next token fed to the model.
    next_position: i64,
}

/// The rows decoding together and their cache (cache row `i` is `rows[i]`).
struct Running {
    rows: Vec<Row>,
    cache: Option<EnsembleCache>,
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
        let mut queue: VecDeque<usize> = VecDeque::with_capacity(order.len());
        for i in order {
            if requests[i].max_new_tokens == 0 {
                out[i] = Some(Generation {
                    text: String::new(),
                    ids: Vec::new(),
                });
            } else {
                queue.push_back(i);
            }
        }
        let capacity = self.options.batch_size.max(1);
        let mut stats = Stats::default();
        let mut running = Running {
            rows: Vec::new(),
            cache: None,
        };
        loop {
            let live = running.rows.iter().filter(|r| !r.done).count();
            let admit = (capacity - live).min(queue.len());
            if admit > 0 {
                let newcomers: Vec<usize> = queue.drain(..admit).collect();
                running = self.admit(
                    requests, &prompts, &shared, &newcomers, running, &mut out, &mut stats,
                )?;
                // Newcomers may have finished at their first token: look again.
                continue;
            }
            if live < running.rows.len() {
                // Nobody is waiting: the finished rows just leave.
                let keep: Vec<usize> = (0..running.rows.len())
                    .filter(|&i| !running.rows[i].done)
                    .collect();
                running.cache = match (&running.cache, keep.is_empty()) {
                    (Some(c), false) => Some(c.select_rows(&keep)?),
                    _ => None,
                };
                running.rows.retain(|r| !r.done);
            }
            if running.rows.is_empty() {
                break;
            }
            self.decode_step(requests, &mut running, &mut out, &mut stats)?;
        }
        self.stats.add(&stats);
        Ok(out
            .into_iter()
            .map(|g| g.expect("every request generated"))
            .collect())
    }

    /// Prefills `newcomers` together, takes their first tokens, and makes one batch of them and
    /// the unfinished rows of `running`.
    #[allow(clippy::too_many_arguments)]
    fn admit(
        &mut self,
        requests: &[GenerateRequest],
        prompts: &[Vec<u32>],
        shared: &[usize],
        newcomers: &[usize],
        running: Running,
        out: &mut [Option<Generation>],
        stats: &mut Stats,
    ) -> Result<Running> {
        let model = &self.model;
        stats.requested += newcomers.iter().map(|&i| prompts[i].len()).sum::<usize>();
        // Each newcomer starts from its own cached prefix; the prefixes are stacked (left-padded)
        // with room for the unshared rest, which is left-padded to a common width.
        let row_caches = newcomers
            .iter()
            .map(|&i| match shared[i] {
                0 => Ok(model.new_cache(1)),
                n => self.prefixes.get(model, &prompts[i][..n], stats),
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let width = newcomers
            .iter()
            .map(|&i| prompts[i].len() - shared[i])
            .max()
            .unwrap_or(0);
        let parts: Vec<(&EnsembleCache, usize)> = row_caches.iter().map(|c| (c, 0)).collect();
        let mut group = EnsembleCache::gather_rows(&parts, width)?;
        let mut tokens = Vec::with_capacity(newcomers.len());
        let mut positions = Vec::with_capacity(newcomers.len());
        let mut valid = Vec::with_capacity(newcomers.len());
        for &i in newcomers {
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
        let hidden = model.forward(
            &Batch {
                tokens: &tokens,
                positions: &positions,
                valid: &valid,
            },
            &mut group,
        )?;
        let mut joined: Vec<Row> = newcomers
            .iter()
            .map(|&i| Row {
                request: i,
                ids: Vec::new(),
                text: String::new(),
                done: false,
                next_position: prompts[i].len() as i64,
            })
            .collect();
        let at: Vec<(usize, usize)> = (0..newcomers.len()).map(|r| (r, width - 1)).collect();
        self.take_tokens(requests, &hidden, &at, &mut joined, out)?;

        // One new cache: the running rows that go on, then the newcomers.
        let Running { rows, cache } = running;
        let mut parts: Vec<(&EnsembleCache, usize)> = Vec::new();
        let mut kept: Vec<Row> = Vec::new();
        for (r, row) in rows.into_iter().enumerate() {
            if !row.done {
                parts.push((cache.as_ref().expect("running rows have a cache"), r));
                kept.push(row);
            }
        }
        parts.extend((0..joined.len()).map(|r| (&group, r)));
        kept.extend(joined);
        let spare = kept
            .iter()
            .map(|r| {
                requests[r.request]
                    .max_new_tokens
                    .saturating_sub(r.ids.len())
            })
            .max()
            .unwrap_or(0);
        let cache = EnsembleCache::gather_rows(&parts, spare)?;
        Ok(Running {
            rows: kept,
            cache: Some(cache),
        })
    }

    /// Feeds every row its last token and takes the next one.
    fn decode_step(
        &mut self,
        requests: &[GenerateRequest],
        running: &mut Running,
        out: &mut [Option<Generation>],
        stats: &mut Stats,
    ) -> Result<()> {
        let n = running.rows.len();
        let tokens: Vec<Vec<u32>> = running
            .rows
            .iter()
            .map(|r| vec![*r.ids.last().expect("a running row has a token")])
            .collect();
        let positions: Vec<Vec<i64>> = running.rows.iter().map(|r| vec![r.next_position]).collect();
        let valid = vec![vec![true]; n];
        stats.generated += n;
        stats.decode_steps += 1;
        let cache = running.cache.as_mut().expect("running rows have a cache");
        let hidden = self.model.forward(
            &Batch {
                tokens: &tokens,
                positions: &positions,
                valid: &valid,
            },
            cache,
        )?;
        for row in &mut running.rows {
            row.next_position += 1;
        }
        let at: Vec<(usize, usize)> = (0..n).map(|r| (r, 0)).collect();
        self.take_tokens(requests, &hidden, &at, &mut running.rows, out)
    }

    /// The greedy choice of the (combined) distribution at `at[i]` becomes `rows[i]`'s next
    /// token; a row ends at EOS, at a stop string or at its token budget, and its generation is
    /// recorded in `out` then.
    fn take_tokens(
        &self,
        requests: &[GenerateRequest],
        hidden: &Hidden,
        at: &[(usize, usize)],
        rows: &mut [Row],
        out: &mut [Option<Generation>],
    ) -> Result<()> {
        let tokenizer = self.model.tokenizer();
        let eos = tokenizer.eos_token_ids();
        let next = self.model.next_token(hidden, at)?.argmax()?;
        for (row, &id) in rows.iter_mut().zip(&next) {
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
            if row.done {
                out[row.request] = Some(Generation {
                    text: row.text.clone(),
                    ids: row.ids.clone(),
                });
            }
        }
        Ok(())
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
