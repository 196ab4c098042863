//! The next-token distribution at the positions the engine asks about, as one model's logits or
//! an ensemble's combination, and what the engine reads from it: target log-probabilities,
//! whether a target is the argmax, the greedy choice.

use candle_core::{DType, Tensor, D};

/// `[n, vocab]` scores, one row per asked position.
#[derive(Debug, Clone)]
pub struct NextToken {
    scores: Tensor,
    /// Whether `scores` are already the log-probabilities to report (an ensemble's mean of its
    /// members' log-softmax, float64) rather than logits that still need a log-softmax.
    log_probs: bool,
}

impl NextToken {
    /// Logits (float32 or float64): log-probabilities are their log-softmax.
    pub fn logits(scores: Tensor) -> Self {
        Self {
            scores,
            log_probs: false,
        }
    }

    /// Scores that are reported as they are (float64).
    pub fn log_probs(scores: Tensor) -> Self {
        Self {
            scores,
            log_probs: true,
        }
    }

    /// The raw scores: logits, or log-probabilities (see [`NextToken::is_log_probs`]).
    pub fn scores(&self) -> &Tensor {
        &self.scores
    }

    pub fn is_log_probs(&self) -> bool {
        self.log_probs
    }

    /// Log-probability of `targets[i]` in row `i`, and whether it is the row's argmax.
    pub fn target_logprobs(&self, targets: &[u32]) -> candle_core::Result<(Vec<f64>, Vec<bool>)> {
        let idx = Tensor::from_vec(targets.to_vec(), (targets.len(), 1), self.scores.device())?;
        let picked = self.scores.gather(&idx, 1)?.squeeze(1)?;
        let logprobs = if self.log_probs {
            picked.to_dtype(DType::F64)?.to_vec1::<f64>()?
        } else {
            // Each value minus its row's log Σ exp, subtracted in float64.
            let lse = log_sum_exp(&self.scores)?
                .to_dtype(DType::F64)?
                .to_vec1::<f64>()?;
            picked
                .to_dtype(DType::F64)?
                .to_vec1::<f64>()?
                .iter()
                .zip(&lse)
                .map(|(&p, &l)| p - l)
                .collect()
        };
        let greedy = self
            .argmax()?
            .iter()
            .zip(targets)
            .map(|(a, t)| a == t)
            .collect();
        Ok((logprobs, greedy))
    }

    /// The most likely id of each row (the greedy choice).
    pub fn argmax(&self) -> candle_core::Result<Vec<u32>> {
        self.scores.argmax(D::Minus1)?.to_vec1::<u32>()
    }

    /// Every row's full log-probability vector.
    pub fn log_prob_rows(&self) -> candle_core::Result<Vec<Vec<f64>>> {
        let rows = if self.log_probs {
            self.scores.clone()
        } else {
            self.scores
                .broadcast_sub(&log_sum_exp(&self.scores)?.unsqueeze(D::Minus1)?)?
        };
        rows.to_dtype(DType::F64)?.to_vec2::<f64>()
    }
}

/// Row-wise log Σ exp, shifted by the row maximum for stability (one pass per row on the CPU).
pub(crate) fn log_sum_exp(logits: &Tensor) -> candle_core::Result<Tensor> {
    crate::model::fused::log_sum_exp(logits)
}

/// Row-wise log-softmax in float64, computed as the single-model path computes it (log Σ exp in
/// the logits' own precision, the subtraction in float64), so that an ensemble of a model with
/// itself reports exactly what the model alone does.
pub(crate) fn log_softmax_f64(logits: &Tensor) -> candle_core::Result<Tensor> {
    let lse = log_sum_exp(logits)?
        .to_dtype(DType::F64)?
        .unsqueeze(D::Minus1)?;
    logits.to_dtype(DType::F64)?.broadcast_sub(&lse)
}
