//! The causal language-modelling loss on chosen target tokens.
//!
//! Each target token gets a weight, and the loss is `Σ weight · (−log p(token | prefix))`: the
//! token mean over an optimiser step is weight `1 / targets in the step`; the per-sequence mean is
//! `1 / (targets in the sequence · sequences in the step)`. Only differentiable ops are used.

mod token_nll;

use candle_core::{DType, Result, Tensor};
use dtm_model::model::{Batch, Decoder, DropoutKey};
pub use token_nll::token_nll;

/// One sequence of a micro-batch: its tokens and per-token loss weights (0 = not a target).
pub struct WeightedSequence<'a> {
    pub tokens: &'a [u32],
    /// `weights[j]` applies to token j predicted from position j − 1; `weights[0]` is ignored.
    pub weights: &'a [f64],
}

/// Right-pads the sequences into one batch and returns the weighted loss (a scalar tensor with a
/// backward graph to the trainable parameters) and the plain sum of target log-losses (for logs).
pub fn weighted_nll(
    decoder: &Decoder,
    seqs: &[WeightedSequence],
    dropout: Option<DropoutKey>,
) -> Result<(Tensor, f64)> {
    let (loss, total, _) = weighted_nll_routed(decoder, seqs, dropout)?;
    Ok((loss, total))
}

/// [`weighted_nll`], and the routing weights `[sequences, len, E]` of every mixture-of-LoRA
/// layer (rows as `seqs`, right-padded; none without such layers or without targets).
pub fn weighted_nll_routed(
    decoder: &Decoder,
    seqs: &[WeightedSequence],
    dropout: Option<DropoutKey>,
) -> Result<(Tensor, f64, Vec<Tensor>)> {
    let len = seqs.iter().map(|s| s.tokens.len()).max().unwrap_or(0);
    let pad = seqs
        .first()
        .and_then(|s| s.tokens.first())
        .copied()
        .unwrap_or(0);
    let mut tokens = Vec::with_capacity(seqs.len());
    let mut positions = Vec::with_capacity(seqs.len());
    let mut valid = Vec::with_capacity(seqs.len());
    let mut at = Vec::new();
    let mut labels = Vec::new();
    let mut weights = Vec::new();
    for (row, s) in seqs.iter().enumerate() {
        let n = s.tokens.len();
        let mut t = s.tokens.to_vec();
        t.resize(len, pad);
        tokens.push(t);
        positions.push((0..len as i64).collect::<Vec<_>>());
        valid.push((0..len).map(|i| i < n).collect::<Vec<_>>());
        for j in 1..n {
            if s.weights[j] != 0.0 {
                at.push((row, j - 1));
                labels.push(s.tokens[j]);
                weights.push(s.weights[j]);
            }
        }
    }
    let device = decoder.device().clone();
    if at.is_empty() {
        let zero = Tensor::zeros((), decoder.dtype(), &device)?;
        return Ok((zero, 0.0, Vec::new()));
    }
    let batch = Batch {
        tokens: &tokens,
        positions: &positions,
        valid: &valid,
    };
    let (hidden, routes) = decoder.forward_train_routed(&batch, dropout)?;
    let logits = decoder.logits_at(&hidden, &at)?;
    let nll = token_nll(&logits, &labels)?;
    let weights = Tensor::from_vec(weights, labels.len(), &device)?.to_dtype(nll.dtype())?;
    let loss = (&nll * &weights)?.sum_all()?;
    let total = nll
        .detach()
        .to_dtype(DType::F64)?
        .sum_all()?
        .to_scalar::<f64>()?;
    Ok((loss, total, routes))
}
