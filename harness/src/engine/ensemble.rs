//! What the engine scores with: one model, or an ensemble of models that share a tokenizer (the
//! DTM paper's Table 7 baseline), whose next-token distributions are combined at every position
//! the engine scores and at every greedy generation step.
//!
//! Every member runs the same token batch with its own KV cache; the engine sees one cache, one
//! forward pass and one distribution per position, so batching and prefix reuse work unchanged.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::next_token::{log_softmax_f64, NextToken};
use super::{check_finite, same_tokenizer};
use crate::checkpoint::LoadedModel;
use crate::error::Result;
use crate::model::{Batch, KvCache, Segments};
use crate::tokenizer::TextTokenizer;

/// How an ensemble combines its members at a position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum EnsembleMode {
    /// The mean of the members' log-softmax, reported as it is (the log of the geometric mean of
    /// their probabilities; not renormalised).
    Logprobs,
    /// The mean of the members' logits, then the usual log-softmax.
    Logits,
}

impl EnsembleMode {
    pub fn name(self) -> &'static str {
        match self {
            Self::Logprobs => "logprobs",
            Self::Logits => "logits",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EnsembleError {
    #[error("an ensemble needs at least one model")]
    Empty,
    #[error("{first} and {other} have different tokenizers ({difference}); an ensemble averages the models' distributions token id by token id, so they must share one tokenizer")]
    Tokenizers {
        first: String,
        other: String,
        difference: String,
    },
    #[error("{first} has {first_vocab} output logits and {other} has {other_vocab}; an ensemble's models must have the same output vocabulary")]
    Vocabulary {
        first: String,
        first_vocab: usize,
        other: String,
        other_vocab: usize,
    },
    #[error("{first} and {other} are on different devices")]
    Devices { first: String, other: String },
}

/// One model, or several combined with a [`EnsembleMode`].
#[derive(Clone)]
pub struct Ensemble<'m> {
    members: Vec<&'m LoadedModel>,
    mode: EnsembleMode,
}

impl<'m> From<&'m LoadedModel> for Ensemble<'m> {
    fn from(model: &'m LoadedModel) -> Self {
        Self {
            members: vec![model],
            mode: EnsembleMode::Logprobs,
        }
    }
}

impl<'m> Ensemble<'m> {
    /// Refuses members whose tokenizers, output vocabularies or devices differ, naming both.
    pub fn new(members: Vec<&'m LoadedModel>, mode: EnsembleMode) -> Result<Self, EnsembleError> {
        let first = *members.first().ok_or(EnsembleError::Empty)?;
        for other in &members[1..] {
            if let Some(difference) = same_tokenizer::difference(&first.tokenizer, &other.tokenizer)
            {
                return Err(EnsembleError::Tokenizers {
                    first: describe(first),
                    other: describe(other),
                    difference,
                });
            }
            let (a, b) = (first.config().vocab_size, other.config().vocab_size);
            if a != b {
                return Err(EnsembleError::Vocabulary {
                    first: describe(first),
                    first_vocab: a,
                    other: describe(other),
                    other_vocab: b,
                });
            }
            if !first.decoder.device().same_device(other.decoder.device()) {
                return Err(EnsembleError::Devices {
                    first: describe(first),
                    other: describe(other),
                });
            }
        }
        Ok(Self { members, mode })
    }

    pub fn members(&self) -> &[&'m LoadedModel] {
        &self.members
    }

    pub fn mode(&self) -> EnsembleMode {
        self.mode
    }

    /// The tokenizer every member shares (the first member's).
    pub fn tokenizer(&self) -> &'m TextTokenizer {
        &self.members[0].tokenizer
    }

    /// The longest input every member accepts.
    pub fn max_position_embeddings(&self) -> usize {
        self.members
            .iter()
            .map(|m| m.config().max_position_embeddings)
            .min()
            .expect("an ensemble has a member")
    }

    pub fn new_cache(&self, batch: usize) -> EnsembleCache {
        EnsembleCache(
            self.members
                .iter()
                .map(|m| m.decoder.new_cache(batch))
                .collect(),
        )
    }

    /// Runs `batch` through every member, each extending its own cache.
    pub fn forward(&self, batch: &Batch, cache: &mut EnsembleCache) -> candle_core::Result<Hidden> {
        self.members
            .iter()
            .zip(&mut cache.0)
            .map(|(m, c)| m.decoder.forward(batch, c))
            .collect::<candle_core::Result<Vec<_>>>()
            .map(Hidden)
    }

    /// [`Ensemble::forward`] for rows that pack several sequences (see `Segments`).
    pub fn forward_segmented(
        &self,
        batch: &Batch,
        segments: &Segments,
        cache: &mut EnsembleCache,
    ) -> candle_core::Result<Hidden> {
        self.members
            .iter()
            .zip(&mut cache.0)
            .map(|(m, c)| m.decoder.forward_segmented(batch, segments, c))
            .collect::<candle_core::Result<Vec<_>>>()
            .map(Hidden)
    }

    /// The combined next-token distribution at the `(row, position)` pairs of a `forward` output.
    /// Every target log-probability and greedy step comes from here, so a member whose logits are
    /// NaN or infinite is refused here, by name.
    pub fn next_token(&self, hidden: &Hidden, at: &[(usize, usize)]) -> Result<NextToken> {
        let logits = |i: usize| -> Result<Tensor> {
            let member = self.members[i];
            let logits = member.decoder.logits_at(&hidden.0[i], at)?;
            check_finite(&logits, member)?;
            Ok(logits)
        };
        if self.members.len() == 1 {
            return Ok(NextToken::logits(logits(0)?));
        }
        let n = self.members.len() as f64;
        match self.mode {
            EnsembleMode::Logprobs => {
                let mut sum = log_softmax_f64(&logits(0)?)?;
                for i in 1..self.members.len() {
                    sum = (sum + log_softmax_f64(&logits(i)?)?)?;
                }
                Ok(NextToken::log_probs((sum / n)?))
            }
            EnsembleMode::Logits => {
                let mut sum = logits(0)?;
                for i in 1..self.members.len() {
                    sum = (sum + logits(i)?)?;
                }
                Ok(NextToken::logits((sum / n)?))
            }
        }
    }
}

/// A member's name in messages: its path, and its adapter when it has one.
pub fn describe(model: &LoadedModel) -> String {
    match &model.adapter {
        Some(a) => format!("{} (adapter {})", model.path.display(), a.display()),
        None => model.path.display().to_string(),
    }
}

/// Each member's output of one forward pass.
pub struct Hidden(Vec<Tensor>);

/// One KV cache per member, all holding the same token positions.
#[derive(Clone, Debug)]
pub struct EnsembleCache(Vec<KvCache>);

impl EnsembleCache {
    /// Number of cached key slots per row (padding included).
    pub fn len(&self) -> usize {
        self.0[0].len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The next position of each row: one past its last real key.
    pub fn next_positions(&self) -> Vec<i64> {
        self.0[0].next_positions()
    }

    /// The first `n` key slots of every row.
    pub fn truncate(&self, n: usize) -> candle_core::Result<Self> {
        self.each(|c| c.truncate(n))
    }

    /// Repeats a one-row cache `batch` times.
    pub fn repeat_row(&self, batch: usize) -> candle_core::Result<Self> {
        self.each(|c| c.repeat_row(batch))
    }

    /// Keeps only the given rows.
    pub fn select_rows(&self, rows: &[usize]) -> candle_core::Result<Self> {
        self.each(|c| c.select_rows(rows))
    }

    /// Stacks one-row caches into one batch, each member's rows left-padded to a common length.
    pub fn stack_rows(rows: &[EnsembleCache]) -> candle_core::Result<Self> {
        let members = rows.first().map_or(0, |r| r.0.len());
        (0..members)
            .map(|m| {
                let member: Vec<KvCache> = rows.iter().map(|r| r.0[m].clone()).collect();
                KvCache::stack_rows(&member)
            })
            .collect::<candle_core::Result<Vec<_>>>()
            .map(Self)
    }

    /// A new batch of the given `(cache, row)` rows with room for `spare` more slots (see
    /// [`KvCache::gather_rows`]), for every member.
    pub fn gather_rows(
        parts: &[(&EnsembleCache, usize)],
        spare: usize,
    ) -> candle_core::Result<Self> {
        let members = parts.first().map_or(0, |(c, _)| c.0.len());
        (0..members)
            .map(|m| {
                let member: Vec<(&KvCache, usize)> =
                    parts.iter().map(|(c, r)| (&c.0[m], *r)).collect();
                KvCache::gather_rows(&member, spare)
            })
            .collect::<candle_core::Result<Vec<_>>>()
            .map(Self)
    }

    /// Makes room for `additional` more slots per row in every member's cache.
    pub fn reserve(&mut self, additional: usize) -> candle_core::Result<()> {
        self.0.iter_mut().try_for_each(|c| c.reserve(additional))
    }

    fn each(
        &self,
        f: impl Fn(&KvCache) -> candle_core::Result<KvCache>,
    ) -> candle_core::Result<Self> {
        self.0
            .iter()
            .map(f)
            .collect::<candle_core::Result<_>>()
            .map(Self)
    }
}
