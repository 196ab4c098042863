//! `loglikelihood` and `loglikelihood_rolling`: both reduce to scoring the last `n` tokens of a
//! token sequence.

use serde::{Deserialize, Serialize};

use super::prefix_cache::common_prefix_len;
use super::tokenize::encode_pair;
use super::{Engine, Stats};
use crate::error::{Result, RuntimeError};
use crate::model::Batch;

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

    /// Scores requests in batches of neighbours in sorted order, each batch's common prefix
    /// computed once.
    pub(crate) fn score(&mut self, requests: &[ScoreRequest]) -> Result<Vec<Scored>> {
        let mut order: Vec<usize> = (0..requests.len()).collect();
        order.sort_by(|&a, &b| requests[a].tokens.cmp(&requests[b].tokens));
        let mut out: Vec<Option<Scored>> = vec![None; requests.len()];
        for chunk in batches(requests, &order, self.options.batch_size.max(1)) {
            let batch: Vec<&ScoreRequest> = chunk.iter().map(|&i| &requests[i]).collect();
            for (&i, scored) in chunk.iter().zip(self.score_batch(&batch)?) {
                out[i] = Some(scored);
            }
        }
        Ok(out
            .into_iter()
            .map(|s| s.expect("every request scored"))
            .collect())
    }

    fn score_batch(&mut self, batch: &[&ScoreRequest]) -> Result<Vec<Scored>> {
        let model = &self.model;
        // Model input is tokens[..len-1]; the first scored position is len-1-scored.
        let first_scored: Vec<usize> = batch
            .iter()
            .map(|r| r.tokens.len() - 1 - r.scored)
            .collect();
        let mut shared = batch[0].tokens.len() - 1;
        for r in &batch[1..] {
            shared = shared.min(common_prefix_len(&batch[0].tokens, &r.tokens));
        }
        // Every row keeps its scored positions (and at least one token) outside the prefix.
        shared = shared.min(*first_scored.iter().min().expect("non-empty batch"));
        if self.options.prefix_cache_entries == 0 {
            shared = 0;
        }
        let mut stats = Stats {
            requested: batch.iter().map(|r| r.tokens.len() - 1).sum(),
            ..Stats::default()
        };
        let mut cache = if shared > 0 {
            self.prefixes
                .get(model, &batch[0].tokens[..shared], &mut stats)?
                .repeat_row(batch.len())?
        } else {
            model.new_cache(batch.len())
        };
        let rest_len = batch
            .iter()
            .map(|r| r.tokens.len() - 1 - shared)
            .max()
            .unwrap_or(0);
        let mut tokens = Vec::with_capacity(batch.len());
        let mut positions = Vec::with_capacity(batch.len());
        let mut valid = Vec::with_capacity(batch.len());
        for r in batch {
            let rest = &r.tokens[shared..r.tokens.len() - 1];
            let pad = rest_len - rest.len();
            stats.forwarded += rest.len();
            stats.padding += pad;
            let mut t = rest.to_vec();
            t.resize(rest_len, 0);
            tokens.push(t);
            positions.push((shared as i64..(shared + rest_len) as i64).collect());
            let mut v = vec![true; rest.len()];
            v.resize(rest_len, false);
            valid.push(v);
        }
        let hidden = model.forward(
            &Batch {
                tokens: &tokens,
                positions: &positions,
                valid: &valid,
            },
            &mut cache,
        )?;
        let mut at = Vec::new();
        let mut targets = Vec::new();
        for (row, (r, &first)) in batch.iter().zip(&first_scored).enumerate() {
            for k in 0..r.scored {
                at.push((row, first - shared + k));
                targets.push(r.tokens[first + k + 1]);
            }
        }
        let (logprobs, greedy) = model.next_token(&hidden, &at)?.target_logprobs(&targets)?;
        self.stats.add(&stats);
        let mut out = Vec::with_capacity(batch.len());
        let mut offset = 0;
        for r in batch {
            out.push(Scored {
                logprobs: logprobs[offset..offset + r.scored].to_vec(),
                greedy: greedy[offset..offset + r.scored].to_vec(),
            });
            offset += r.scored;
        }
        Ok(out)
    }
}

/// Cuts the sorted requests into batches. Requests that share their whole context (the choices
/// of one question) get a batch of their own, so that the context is computed once, as the
/// batch's common prefix; lone requests fill batches of `size`.
fn batches(requests: &[ScoreRequest], order: &[usize], size: usize) -> Vec<Vec<usize>> {
    let context = |i: usize| &requests[i].tokens[..requests[i].tokens.len() - requests[i].scored];
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut singles: Vec<usize> = Vec::new();
    let mut k = 0;
    while k < order.len() {
        let mut end = k + 1;
        while end < order.len() && context(order[end]) == context(order[k]) {
            end += 1;
        }
        if end - k > 1 {
            out.extend(order[k..end].chunks(size).map(<[usize]>::to_vec));
        } else {
            singles.push(order[k]);
            if singles.len() == size {
                out.push(std::mem::take(&mut singles));
            }
        }
        k = end;
    }
    if !singles.is_empty() {
        out.push(singles);
    }
    out
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
