//! Deita's scoring rule with any model `harness` loads: the prompt goes in as a document (BOS
//! first when the tokenizer adds one, no chat template — Deita calls `tokenizer.encode(prompt)`
//! with transformers' defaults), and the score is Σₖ k·pₖ where p is the softmax over the logits
//! of the tokens "1"…"6" at the position right after the prompt.
//!
//! Deita's scorers read the ids of the bare digit pieces (Llama: 29896… are "1"…, not "▁1"; the
//! prompt's trailing space is already a token of its own), so the six ids here are the vocabulary
//! entries spelled exactly "1"…"6". A vocabulary without one of them cannot give this score and
//! is refused rather than approximated.

use candle_core::{DType, Tensor};
use dtm_model::model::{Batch, Decoder};
use dtm_model::tokenizer::TextTokenizer;

use super::SelectError;

/// The score scale: the digit tokens whose probabilities are read, and their values 1…6.
pub const DIGITS: [&str; 6] = ["1", "2", "3", "4", "5", "6"];

/// How many prompts share a forward pass.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    pub rows: usize,
    /// Rows × the widest row's length.
    pub tokens: usize,
}

/// Scores prompts with one model.
pub struct DigitScorer<'m> {
    decoder: &'m Decoder,
    tokenizer: &'m TextTokenizer,
    digit_ids: [u32; 6],
}

impl<'m> DigitScorer<'m> {
    /// Fails when "1"…"6" are not each one token of the scorer's vocabulary.
    pub fn new(decoder: &'m Decoder, tokenizer: &'m TextTokenizer) -> Result<Self, SelectError> {
        Ok(Self {
            decoder,
            tokenizer,
            digit_ids: digit_ids(tokenizer)?,
        })
    }

    pub fn digit_ids(&self) -> [u32; 6] {
        self.digit_ids
    }

    /// The token ids the model reads for a prompt.
    pub fn encode(&self, prompt: &str) -> Result<Vec<u32>, SelectError> {
        Ok(self.tokenizer.encode_document(prompt)?)
    }

    /// Scores of `prompts` (token ids), in their order. Prompts of similar length are batched
    /// together: at most `batch.rows` per forward pass, and at most `batch.tokens` padded tokens
    /// (so that a few very long prompts do not share a pass; a longer prompt goes alone).
    pub fn score(&self, prompts: &[Vec<u32>], batch: BatchLimits) -> Result<Vec<f64>, SelectError> {
        let mut order: Vec<usize> = (0..prompts.len()).collect();
        order.sort_by_key(|&i| prompts[i].len());
        let mut out = vec![0.0; prompts.len()];
        let mut rest = order.as_slice();
        while !rest.is_empty() {
            // Sorted by length: the last row of a group is its widest.
            let mut n = 1;
            while n < rest.len()
                && n < batch.rows
                && (n + 1) * prompts[rest[n]].len() <= batch.tokens
            {
                n += 1;
            }
            let (group, tail) = rest.split_at(n);
            let rows: Vec<&[u32]> = group.iter().map(|&i| prompts[i].as_slice()).collect();
            for (&i, logits) in group.iter().zip(self.digit_logits(&rows)?) {
                out[i] = expected_score(logits);
            }
            rest = tail;
        }
        Ok(out)
    }

    /// The six digit logits at the last position of each row, in one forward pass: rows are
    /// right-padded, padding is masked out and never read.
    pub fn digit_logits(&self, rows: &[&[u32]]) -> Result<Vec<[f64; 6]>, SelectError> {
        if rows.iter().any(|r| r.is_empty()) {
            return Err(SelectError::Settings(
                "an empty prompt cannot be scored".into(),
            ));
        }
        let width = rows.iter().map(|r| r.len()).max().unwrap_or(0);
        let mut tokens = Vec::with_capacity(rows.len());
        let mut positions = Vec::with_capacity(rows.len());
        let mut valid = Vec::with_capacity(rows.len());
        for row in rows {
            let mut t = row.to_vec();
            t.resize(width, 0);
            tokens.push(t);
            positions.push((0..width as i64).collect::<Vec<_>>());
            valid.push((0..width).map(|p| p < row.len()).collect::<Vec<_>>());
        }
        let batch = Batch {
            tokens: &tokens,
            positions: &positions,
            valid: &valid,
        };
        let mut cache = self.decoder.new_cache(rows.len());
        let hidden = self.decoder.forward(&batch, &mut cache)?;
        let last: Vec<(usize, usize)> = rows
            .iter()
            .enumerate()
            .map(|(b, r)| (b, r.len() - 1))
            .collect();
        let logits = self.decoder.logits_at(&hidden, &last)?;
        let ids = Tensor::new(&self.digit_ids[..], logits.device())?;
        let digits = logits
            .index_select(&ids, 1)?
            .to_dtype(DType::F64)?
            .to_vec2::<f64>()?;
        Ok(digits
            .into_iter()
            .map(|row| row.try_into().expect("six digit logits per row"))
            .collect())
    }
}

/// The vocabulary ids of "1"…"6".
pub fn digit_ids(tokenizer: &TextTokenizer) -> Result<[u32; 6], SelectError> {
    let mut ids = [0u32; 6];
    for (slot, digit) in ids.iter_mut().zip(DIGITS) {
        let id = tokenizer
            .inner()
            .token_to_id(digit)
            .ok_or(SelectError::NotOneToken {
                digit,
                problem: "no vocabulary entry is that digit alone".into(),
            })?;
        let text = tokenizer.decode(&[id])?;
        if text != digit {
            return Err(SelectError::NotOneToken {
                digit,
                problem: format!("its vocabulary entry (id {id}) decodes to {text:?}"),
            });
        }
        *slot = id;
    }
    Ok(ids)
}

/// Σₖ k·softmax(logits)ₖ for k = 1…6.
pub fn expected_score(logits: [f64; 6]) -> f64 {
    let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let weights = logits.map(|l| (l - max).exp());
    let total: f64 = weights.iter().sum();
    weights
        .iter()
        .enumerate()
        .map(|(k, w)| (k + 1) as f64 * w / total)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_score_of_known_distributions() {
        assert!((expected_score([0.0; 6]) - 3.5).abs() < 1e-12);
        // All mass on "6".
        assert!((expected_score([-1e4, -1e4, -1e4, -1e4, -1e4, 0.0]) - 6.0).abs() < 1e-12);
        // p ∝ (e^0, e^ln3, 0…): 1·¼ + 2·¾.
        let l = [0.0, 3f64.ln(), -1e4, -1e4, -1e4, -1e4];
        assert!((expected_score(l) - 1.75).abs() < 1e-12);
        // Shifting every logit changes nothing.
        let a = [0.3, -1.2, 2.0, 0.1, 0.0, -0.7];
        assert!((expected_score(a) - expected_score(a.map(|x| x + 900.0))).abs() < 1e-12);
    }

    fn word_level(vocab: &[&str]) -> TextTokenizer {
        let vocab: serde_json::Map<String, serde_json::Value> = vocab
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_string(), i.into()))
            .collect();
        let json = serde_json::json!({
            "version": "1.0",
            "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"},
            "pre_tokenizer": {"type": "Whitespace"},
            "decoder": null
        });
        let inner = TextTokenizer::from_json(&json.to_string(), "test").unwrap();
        TextTokenizer::new(inner, None, vec![], false)
    }

    #[test]
    fn every_digit_must_be_one_vocabulary_entry() {
        let ok = word_level(&["<unk>", "6", "5", "4", "3", "2", "1"]);
        assert_eq!(digit_ids(&ok).unwrap(), [6, 5, 4, 3, 2, 1]);
        let missing = word_level(&["<unk>", "1", "2", "3", "4", "5", "66"]);
        let e = digit_ids(&missing).unwrap_err().to_string();
        assert!(
            e.contains("\"6\"") && e.contains("no vocabulary entry"),
            "{e}"
        );
    }
}
