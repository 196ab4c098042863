//! The request engine: lm-eval's three request types over a model, or an [`Ensemble`] of models
//! sharing a tokenizer.
//!
//! Requests come in lists and answers go back in the same order, so the engine may reorder and
//! batch freely: it sorts token sequences so that shared prefixes sit side by side, computes a
//! few-shot preamble once (see [`prefix_cache`]), packs the questions that follow it into shared
//! forward passes with each question computed once for all of its choices (see `packing`), and
//! applies the output head only at the positions it scores.

pub mod ensemble;
pub mod generate;
pub mod inspect;
pub mod loglikelihood;
pub mod next_token;
pub(crate) mod packing;
pub mod prefix_cache;
pub mod same_tokenizer;
pub mod stats;
pub mod tokenize;

use candle_core::{DType, Tensor, D};

use crate::checkpoint::LoadedModel;
use crate::error::{Result, RuntimeError};

pub use ensemble::{Ensemble, EnsembleError, EnsembleMode};
pub use generate::{GenerateRequest, Generation};
pub use loglikelihood::{LoglikelihoodRequest, LoglikelihoodResult, RollingResult};
pub use stats::Stats;

use prefix_cache::PrefixCache;

/// Settings of the engine; the defaults suit a CPU.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Rows per forward pass. Scoring packs short sequences several to a row (each seeing only
    /// its own tokens); generation runs one sequence a row.
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
    pub(crate) model: Ensemble<'m>,
    pub(crate) options: EngineOptions,
    pub(crate) prefixes: PrefixCache,
    pub(crate) stats: Stats,
}

impl<'m> Engine<'m> {
    /// `model` is a `&LoadedModel` or an [`Ensemble`].
    pub fn new(model: impl Into<Ensemble<'m>>, options: EngineOptions) -> Self {
        let model = model.into();
        let prefixes = PrefixCache::new(options.prefix_cache_entries);
        Self {
            model,
            options,
            prefixes,
            stats: Stats::default(),
        }
    }

    /// The first (or only) model.
    pub fn model(&self) -> &'m LoadedModel {
        self.model.members()[0]
    }

    pub fn ensemble(&self) -> &Ensemble<'m> {
        &self.model
    }

    /// Tokens asked for versus tokens actually run through the model so far.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub(crate) fn max_length(&self) -> usize {
        self.options
            .max_length
            .unwrap_or(self.model.max_position_embeddings())
            .max(2)
    }
}

/// Fails when any row of `logits` holds NaN or infinity (a broken checkpoint, or values that
/// overflow the dtype), naming the model (an ensemble's member, with its adapter), instead of
/// letting NaN reach the scores.
pub(crate) fn check_finite(logits: &Tensor, model: &LoadedModel) -> Result<()> {
    let sums = logits
        .sum_keepdim(D::Minus1)?
        .flatten_all()?
        .to_dtype(DType::F64)?
        .to_vec1::<f64>()?;
    if sums.iter().all(|s| s.is_finite()) {
        Ok(())
    } else {
        Err(RuntimeError::NonFiniteLogits {
            model: ensemble::describe(model),
        })
    }
}
