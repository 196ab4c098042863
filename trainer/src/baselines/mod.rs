//! The Table 1 baselines that fight forgetting during SFT (PROTOCOL.md §4), as parts that the one
//! SFT loop composes: a [`Regulariser`] whose penalty joins the loss (L2, EWC), and replay chunks
//! that join the optimiser batches (Replay).
//!
//! With LoRA the fine-tuned change of a matrix W is ΔW = s·B·A (s = alpha / r); both penalties are
//! sums over the adapted matrices, so they are computed, and differentiated, one matrix at a time.

pub mod ewc;
pub mod l2;
pub mod replay;

use candle_core::{DType, Result, Tensor};

use crate::lora::LoraParams;

pub use ewc::Ewc;
pub use l2::L2;
pub use replay::Replay;

/// A penalty on the LoRA factors, added to the training loss.
pub trait Regulariser {
    /// The penalty's term for adapted layer `index` (its factors `layer.a`, `layer.b`): a scalar
    /// tensor with a backward graph to them. The penalty is the sum of the terms.
    fn layer_penalty(&self, index: usize, layer: &LoraParams) -> Result<Tensor>;
}

/// The penalty's value and its gradients, in [`crate::lora::vars`] order (A then B of each
/// layer). Each layer's term is differentiated on its own, so only one layer's graph (for EWC,
/// one ΔW) is alive at a time.
pub fn penalty_gradients(
    regulariser: &dyn Regulariser,
    params: &[LoraParams],
) -> Result<(f64, Vec<Tensor>)> {
    let mut value = 0.0;
    let mut grads = Vec::with_capacity(2 * params.len());
    for (index, layer) in params.iter().enumerate() {
        let term = regulariser.layer_penalty(index, layer)?;
        value += term.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let mut store = term.backward()?;
        for var in [&layer.a, &layer.b] {
            grads.push(match store.remove(var.as_tensor()) {
                // A factor's gradient here is a product with the other factor, a variable, so
                // candle records its graph; detached, the optimiser's moments do not keep every
                // step's graph (and ΔW-sized intermediates) alive.
                Some(g) => g.detach(),
                None => var.as_tensor().zeros_like()?,
            });
        }
    }
    Ok((value, grads))
}
