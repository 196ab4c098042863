//! The request engine: lm-eval's three request types over a [`LoadedModel`].
//!
//! Requests come in lists and answers go back in the same order, so the engine may reorder and
//! batch freely: it sorts token sequences so that shared prefixes sit side by side, computes each
//! batch's common prefix once (see [`prefix_cache`]), pads the rest, and applies the output head
//! only at the positions it scores.

pub mod generate;
pub mod inspect;
pub mod loglikelihood;
pub mod prefix_cache;
pub mod stats;
pub mod tokenize;

use candle_core::{Tensor, D};

use crate::checkpoint::LoadedModel;
use crate::error::{Result, RuntimeError};

pub use generate::{GenerateRequest, Generation};
pub use loglikelihood::{LoglikelihoodRequest, LoglikelihoodResult, RollingResult};
pub use stats::Stats;

use prefix_cache::PrefixCache;

/// Settings of the engine; the defaults suit a CPU.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Sequences per forward pass.
    pub batch_size: usize,
    /// Prefix KV caches kept for reuse; 0 turns reuse off (every token is recomputed).
    pub prefix_cache_entries: usize,
    /// Longest sequence fed to the model; longer inputs are cut from the left (lm-eval's rule).
    /// Defaults to the model's `max_position_embeddings`.
    pub max_length: Option<usize>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            batch_size: 8,
            prefix_cache_entries: 8,
            max_length: None,
        }
    }
}

pub struct Engine<'m> {
    pub(crate) model: &'m LoadedModel,
    pub(crate) options: EngineOptions,
    pub(crate) prefixes: PrefixCache,
    pub(crate) stats: Stats,
}

impl<'m> Engine<'m> {
    pub fn new(model: &'m LoadedModel, options: EngineOptions) -> Self {
        let prefixes = PrefixCache::new(options.prefix_cache_entries);
        Self {
            model,
            options,
            prefixes,
            stats: Stats::default(),
        }
    }

    pub fn model(&self) -> &LoadedModel {
        self.model
    }

    /// Tokens asked for versus tokens actually run through the model so far.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub(crate) fn max_length(&self) -> usize {
        self.options
            .max_length
            .unwrap_or(self.model.config().max_position_embeddings)
            .max(2)
    }
}

/// Fails when any row of `logits` holds NaN or infinity (a broken checkpoint, or values that
/// overflow the dtype), naming the model, instead of letting NaN reach the scores.
pub(crate) fn check_finite(logits: &Tensor, model: &LoadedModel) -> Result<()> {
    let sums = logits
        .sum_keepdim(D::Minus1)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    if sums.iter().all(|s| s.is_finite()) {
        Ok(())
    } else {
        Err(RuntimeError::NonFiniteLogits {
            model: model.path.display().to_string(),
        })
    }
}
