//! Per-token log-probabilities of a text, for debugging a model against a reference.

use serde::Serialize;

use super::Engine;
use crate::error::Result;
use crate::model::Batch;

#[derive(Debug, Clone, Serialize)]
pub struct TokenReport {
    pub id: u32,
    /// log P(ids[i] | ids[<i]); `None` for the first token.
    pub logprob: Option<f64>,
    /// The `k` most likely next ids after ids[..=i], with their log-probabilities.
    pub top5: Vec<(u32, f64)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TextReport {
    pub ids: Vec<u32>,
    pub tokens: Vec<TokenReport>,
}

impl Engine<'_> {
    /// Tokenises `text` (BOS added when the tokenizer adds one) and reports every position.
    pub fn inspect(&mut self, text: &str, k: usize) -> Result<TextReport> {
        let ids = self.model.tokenizer().encode_document(text)?;
        if ids.is_empty() {
            return Ok(TextReport {
                ids,
                tokens: Vec::new(),
            });
        }
        let model = &self.model;
        let mut cache = model.new_cache(1);
        let n = ids.len();
        let positions: Vec<i64> = (0..n as i64).collect();
        let hidden = model.forward(
            &Batch {
                tokens: std::slice::from_ref(&ids),
                positions: &[positions],
                valid: &[vec![true; n]],
            },
            &mut cache,
        )?;
        self.stats.requested += n;
        self.stats.forwarded += n;
        let at: Vec<(usize, usize)> = (0..n).map(|p| (0, p)).collect();
        let logprobs = model.next_token(&hidden, &at)?.log_prob_rows()?;
        let tokens = ids
            .iter()
            .enumerate()
            .map(|(i, &id)| {
                let row = &logprobs[i];
                let mut top: Vec<u32> = (0..row.len() as u32).collect();
                let k = k.min(top.len());
                top.select_nth_unstable_by(k.saturating_sub(1), |&a, &b| {
                    row[b as usize].total_cmp(&row[a as usize])
                });
                top.truncate(k);
                top.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]).then(a.cmp(&b)));
                TokenReport {
                    id,
                    logprob: (i > 0).then(|| logprobs[i - 1][id as usize]),
                    top5: top.into_iter().map(|t| (t, row[t as usize])).collect(),
                }
            })
            .collect();
        Ok(TextReport { ids, tokens })
    }
}

impl Engine<'_> {
    /// `log P(ids[i] | ids[<i])` for every `i > start`, computed the way greedy generation
    /// computes its distributions: `ids[..=start]` run as a prompt (one forward pass), then every
    /// later token fed on its own, each pass extending the cache. (Compare [`Engine::inspect`],
    /// which runs the whole text in one pass.)
    pub fn decode_logprobs(&mut self, ids: &[u32], start: usize) -> Result<Vec<f64>> {
        if start >= ids.len() {
            return Ok(Vec::new());
        }
        let model = &self.model;
        let mut cache = model.new_cache(1);
        cache.reserve(ids.len())?;
        let mut out = Vec::with_capacity(ids.len() - start - 1);
        let mut from = 0;
        for end in start + 1..=ids.len() {
            let hidden = model.forward(
                &Batch {
                    tokens: &[ids[from..end].to_vec()],
                    positions: &[(from as i64..end as i64).collect()],
                    valid: &[vec![true; end - from]],
                },
                &mut cache,
            )?;
            if let Some(&next) = ids.get(end) {
                let at = [(0, end - from - 1)];
                let (logprobs, _) = model.next_token(&hidden, &at)?.target_logprobs(&[next])?;
                out.push(logprobs[0]);
            }
            from = end;
        }
        self.stats.requested += ids.len();
        self.stats.forwarded += ids.len();
        Ok(out)
    }
}
