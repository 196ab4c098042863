//! Elastic weight consolidation: λ/2 · Σ F ⊙ ΔW² over the adapted matrices, F the diagonal
//! Fisher of the base model's weights W (see [`crate::fisher`]; a Fisher over the LoRA factors at
//! initialisation would be degenerate: with B = 0 every ∂L/∂A is zero).
//!
//! The penalty needs ΔW = s·B·A entry by entry, so each layer's [out, in] product is formed, one
//! layer at a time.

use std::path::Path;

use candle_core::{Result, Tensor};

use super::Regulariser;
use crate::fisher::{Fisher, FisherError};
use crate::lora::LoraParams;

#[derive(Debug, Clone)]
pub struct Ewc {
    /// λ
    lambda: f64,
    /// The LoRA scale s = alpha / r.
    scale: f64,
    /// F of each adapted layer, in the order of the trainer's layers.
    fisher: Vec<Tensor>,
}

impl Ewc {
    /// Takes from `fisher` (read from `path`) the tensor of every layer in `params`; a missing one
    /// is an error naming it.
    pub fn new(
        lambda: f64,
        scale: f64,
        fisher: &Fisher,
        path: &Path,
        params: &[LoraParams],
    ) -> std::result::Result<Self, FisherError> {
        let fisher = params
            .iter()
            .map(|p| {
                let f = fisher.for_module(path, &p.module)?;
                Ok(f.to_device(p.a.device())?.to_dtype(p.a.dtype())?)
            })
            .collect::<std::result::Result<Vec<_>, FisherError>>()?;
        Ok(Self {
            lambda,
            scale,
            fisher,
        })
    }
}

impl Regulariser for Ewc {
    fn layer_penalty(&self, index: usize, layer: &LoraParams) -> Result<Tensor> {
        let delta = (layer.b.as_tensor().matmul(layer.a.as_tensor())? * self.scale)?;
        (&self.fisher[index] * delta.sqr()?)?.sum_all()? * (0.5 * self.lambda)
    }
}
