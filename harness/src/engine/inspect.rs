//! Per-token log-probabilities of a text, for debugging a model against a reference.

use candle_core::D;
use serde::Serialize;

use super::loglikelihood::log_sum_exp;
use super::{check_finite, Engine};
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
        let ids = self.model.tokenizer.encode_document(text)?;
        if ids.is_empty() {
            return Ok(TextReport {
                ids,
                tokens: Vec::new(),
            });
        }
        let decoder = &self.model.decoder;
        let mut cache = decoder.new_cache(1);
        let n = ids.len();
        let positions: Vec<i64> = (0..n as i64).collect();
        let hidden = decoder.forward(
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
        let logits = decoder.logits_at(&hidden, &at)?;
        check_finite(&logits, self.model)?;
        let logprobs = logits
            .broadcast_sub(&log_sum_exp(&logits)?.unsqueeze(D::Minus1)?)?
            .to_vec2::<f32>()?;
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
                    logprob: (i > 0).then(|| logprobs[i - 1][id as usize] as f64),
                    top5: top
                        .into_iter()
                        .map(|t| (t, row[t as usize] as f64))
                        .collect(),
                }
            })
            .collect();
        Ok(TextReport { ids, tokens })
    }
}
