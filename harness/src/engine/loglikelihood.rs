//! `loglikelihood` and `loglikelihood_rolling`: both reduce to scoring the last `n` tokens of a
//! token sequence.

use serde::{Deserialize, Serialize};

use super::packing;
use super::tokenize::encode_pair;
use super::{Engine, Stats};
use crate::error::{Result, RuntimeError};
use crate::model::{Batch, Segments};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoglikelihoodRequest {
    pub context: String,
    pub continuation: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoglikelihoodResult {
    /// Sum of the continuation tokens' log-probabilities.
    pub logprob: f64,
    /// Every continuation token is the argmax at its position.
    pub is_greedy: bool,
    pub continuation_ids: Vec<u32>,
    pub token_logprobs: Vec<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RollingResult {
    pub logprob: f64,
    /// The document's ids (BOS excluded) and the log-probability of each.
    pub ids: Vec<u32>,
    pub token_logprobs: Vec<f64>,
}

/// Score the last `scored` tokens of `tokens` (each given everything before it).
#[derive(Debug, Clone)]
pub(crate) struct ScoreRequest {
    pub tokens: Vec<u32>,
    pub scored: usize,
}

#[derive(Debug, Clone)]
pub(crate) struct Scored {
    pub logprobs: Vec<f64>,
    pub greedy: Vec<bool>,
}

impl Engine<'_> {
    pub fn loglikelihood(
        &mut self,
        requests: &[LoglikelihoodRequest],
    ) -> Result<Vec<LoglikelihoodResult>> {
        let tokenizer = self.model.tokenizer();
        let max = self.max_length();
        let mut scores = Vec::with_capacity(requests.len());
        let mut pairs = Vec::with_capacity(requests.len());
        for r in requests {
            let pair = encode_pair(tokenizer, &r.context, &r.continuation)?;
            if pair.continuation.is_empty() {
                return Err(RuntimeError::Request(format!(
                    "continuation {:?} encodes to no tokens after context {:?}",
                    r.continuation,
                    truncate_for_message(&r.context)
                )));
            }
            let mut tokens = pair.context.clone();
            tokens.extend(&pair.continuation);
            // lm-eval keeps the last max_length + 1 tokens (the last one is only a target).
            if tokens.len() > max + 1 {
                tokens.drain(..tokens.len() - (max + 1));
            }
            let scored = pair.continuation.len().min(tokens.len() - 1);
            scores.push(ScoreRequest { tokens, scored });
            pairs.push(pair);
        }
        let results = self.score(&scores)?;
        Ok(results
            .into_iter()
            .zip(pairs)
            .map(|(s, pair)| LoglikelihoodResult {
                logprob: s.logprobs.iter().sum(),
                is_greedy: s.greedy.iter().all(|&g| g),
                continuation_ids: pair.continuation,
                token_logprobs: s.logprobs,
            })
            .collect())
    }

    /// Log-probability of every token of each document, in windows of the model's length, each
    /// window seeing the tokens right before it (lm-eval's rolling windows).
    pub fn loglikelihood_rolling(&mut self, documents: &[String]) -> Result<Vec<RollingResult>> {
        if documents.is_empty() {
            return Ok(Vec::new());
        }
        let tokenizer = self.model.tokenizer();
        let start = tokenizer
            .bos_token_id()
            .or_else(|| tokenizer.eos_token_ids().first().copied())
            .ok_or_else(|| {
                RuntimeError::Request(
                    "rolling loglikelihood needs a BOS or EOS token to start the first window"
                        .into(),
                )
            })?;
        let max = self.max_length();
        let mut windows = Vec::new();
        let mut owners = Vec::new();
        let mut ids_per_doc = Vec::new();
        for (d, doc) in documents.iter().enumerate() {
            let ids = tokenizer.encode(doc)?;
            let mut all = vec![start];
            all.extend(&ids);
            let mut done = 0;
            while done < ids.len() {
                let end = (done + max).min(ids.len());
                // Predict ids[done..end] (= all[done+1..end+1]) from up to `max` tokens before each.
                let from = (end + 1).saturating_sub(max + 1);
                windows.push(ScoreRequest {
                    tokens: all[from..end + 1].to_vec(),
                    scored: end - done,
                });
                owners.push(d);
                done = end;
            }
            ids_per_doc.push(ids);
        }
        let scored = self.score(&windows)?;
        let mut out: Vec<RollingResult> = ids_per_doc
            .into_iter()
            .map(|ids| RollingResult {
                logprob: 0.0,
                ids,
                token_logprobs: Vec::new(),
            })
            .collect();
        for (s, d) in scored.into_iter().zip(owners) {
            out[d].logprob += s.logprobs.iter().sum::<f64>();
            out[d].token_logprobs.extend(s.logprobs);
        }
        Ok(out)
    }

    /// Scores requests in packed forward passes (see [`packing`]).
    pub(crate) fn score(&mut self, requests: &[ScoreRequest]) -> Result<Vec<Scored>> {
        let reuse = self.options.prefix_cache_entries > 0;
        let mut out: Vec<Option<Scored>> = vec![None; requests.len()];
        for pass in packing::plan(requests, self.options.batch_size, reuse) {
            for (i, scored) in self.score_pass(requests, &pass)? {
                out[i] = Some(scored);
            }
        }
        Ok(out
            .into_iter()
            .map(|s| s.expect("every request scored"))
            .collect())
    }

    fn score_pass(
        &mut self,
        requests: &[ScoreRequest],
        pass: &packing::Pass,
    ) -> Result<Vec<(usize, Scored)>> {
        let model = &self.model;
        let mut stats = Stats {
            requested: pass
                .placements
                .iter()
                .map(|&(i, _, _)| requests[i].tokens.len() - 1)
                .sum(),
            forwarded: pass.forwarded(),
            padding: pass.padding(),
            ..Stats::default()
        };
        let rows = pass.tokens.len();
        let mut cache = if pass.trunk > 0 {
            self.prefixes
                .get(
                    model,
                    &requests[pass.trunk_of].tokens[..pass.trunk],
                    &mut stats,
                )?
                .repeat_row(rows)?
        } else {
            model.new_cache(rows)
        };
        let hidden = model.forward_segmented(
            &Batch {
                tokens: &pass.tokens,
                positions: &pass.positions,
                valid: &pass.valid,
            },
            &Segments {
                of_token: &pass.segment,
                parent: &pass.parent,
            },
            &mut cache,
        )?;
        let mut at = Vec::new();
        let mut targets = Vec::new();
        for &(i, row, slot) in &pass.placements {
            let r = &requests[i];
            let first = r.tokens.len() - 1 - r.scored;
            for k in 0..r.scored {
                at.push((row, slot + k));
                targets.push(r.tokens[first + k + 1]);
            }
        }
        let (logprobs, greedy) = model.next_token(&hidden, &at)?.target_logprobs(&targets)?;
        self.stats.add(&stats);
        let mut out = Vec::with_capacity(pass.placements.len());
        let mut offset = 0;
        for &(i, _, _) in &pass.placements {
            let n = requests[i].scored;
            out.push((
                i,
                Scored {
                    logprobs: logprobs[offset..offset + n].to_vec(),
                    greedy: greedy[offset..offset + n].to_vec(),
                },
            ));
            offset += n;
        }
        Ok(out)
    }
}

fn truncate_for_message(s: &str) -> String {
    let tail: String = s
        .chars()
        .rev()
        .take(60)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    if tail.len() < s.len() {
        format!("…{tail}")
    } else {
        tail
    }
}
