//! The L2-norm baseline: λ/2 · Σ ‖ΔW‖²_F over the adapted matrices.
//!
//! ‖s·B·A‖²_F = s²·tr(AᵀBᵀBA) = s²·tr((BᵀB)(AAᵀ)) = s²·Σᵢⱼ (BᵀB)ᵢⱼ (AAᵀ)ᵢⱼ (AAᵀ is symmetric):
//! two r×r Gram matrices instead of the [out, in] product.

use candle_core::{Result, Tensor};

use super::Regulariser;
use crate::lora::LoraParams;

#[derive(Debug, Clone, Copy)]
pub struct L2 {
    /// λ
    pub lambda: f64,
    /// The LoRA scale s = alpha / r.
    pub scale: f64,
}

impl Regulariser for L2 {
    fn layer_penalty(&self, _index: usize, layer: &LoraParams) -> Result<Tensor> {
        let (a, b) = (layer.a.as_tensor(), layer.b.as_tensor());
        let btb = b.t()?.matmul(b)?;
        let aat = a.matmul(&a.t()?)?;
        (btb * aat)?.sum_all()? * (0.5 * self.lambda * self.scale * self.scale)
    }
}
