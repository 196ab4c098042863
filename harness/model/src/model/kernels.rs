//! Fused kernels that record a backward pass.
//!
//! candle's fused softmax has no backward, and the same softmax written with plain tensor ops
//! keeps five `[batch, heads, q, k]` tensors alive per layer until the backward pass (scaled
//! scores, masked scores, shifted, exponentials, probabilities): 19 GB for SmolLM2 at 4 × 512
//! tokens. [`masked_softmax`] runs candle's fused kernel forward and keeps only its input and
//! output; the backward is the softmax Jacobian-vector product `p ⊙ (g − Σ g ⊙ p)`.

use candle_core::op::BackpropOp;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Storage, Tensor, D};

/// `softmax(scale · scores + mask)` over the last dimension; `mask` broadcasts to `scores`.
pub fn masked_softmax(scores: &Tensor, mask: &Tensor, scale: f64) -> Result<Tensor> {
    let scores = scores.contiguous()?;
    scores.apply_op1(MaskedSoftmax {
        mask: mask.to_dtype(scores.dtype())?,
        scale,
    })
}

struct MaskedSoftmax {
    mask: Tensor,
    scale: f64,
}

impl MaskedSoftmax {
    fn forward(&self, input: Storage, layout: &Layout) -> Result<Tensor> {
        if !layout.is_contiguous() || layout.start_offset() != 0 {
            candle_core::bail!("masked softmax expects a contiguous input");
        }
        let x = Tensor::from_storage(input, layout.shape().clone(), BackpropOp::none(), false);
        candle_nn::ops::softmax_last_dim(&(x * self.scale)?.broadcast_add(&self.mask)?)
    }
}

impl CustomOp1 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "masked-softmax"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        let y = self.forward(Storage::Cpu(storage.try_clone(layout)?), layout)?;
        let (s, l) = y.storage_and_layout();
        match &*s {
            Storage::Cpu(c) => Ok((c.try_clone(l)?, l.shape().clone())),
            _ => candle_core::bail!("masked softmax: the result left the CPU"),
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        let y = self.forward(Storage::Cuda(storage.try_clone(layout)?), layout)?;
        let (s, l) = y.storage_and_layout();
        match &*s {
            Storage::Cuda(c) => Ok((c.try_clone(l)?, l.shape().clone())),
            _ => candle_core::bail!("masked softmax: the result left the GPU"),
        }
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let dot = (grad * res)?.sum_keepdim(D::Minus1)?;
        let g = (res * grad.broadcast_sub(&dot)?)?;
        Ok(Some((g * self.scale)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    #[test]
    fn matches_plain_ops_forward_and_backward() {
        let d = Device::Cpu;
        let x = Var::from_tensor(
            &Tensor::arange(0f64, 24.0, &d)
                .unwrap()
                .sin()
                .unwrap()
                .reshape((2, 3, 4))
                .unwrap(),
        )
        .unwrap();
        let mask = Tensor::new(&[[0f64, 0.0, -1e30, 0.0]], &d).unwrap();
        let w = Tensor::arange(0f64, 24.0, &d)
            .unwrap()
            .cos()
            .unwrap()
            .reshape((2, 3, 4))
            .unwrap();
        let fused = masked_softmax(x.as_tensor(), &mask, 0.7).unwrap();
        let plain = candle_nn::ops::softmax(
            &(x.as_tensor() * 0.7).unwrap().broadcast_add(&mask).unwrap(),
            D::Minus1,
        )
        .unwrap();
        let diff = (&fused - &plain).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f64>().unwrap() < 1e-12);
        let g1 = (fused * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (plain * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let diff = (g1.get(x.as_tensor()).unwrap() - g2.get(x.as_tensor()).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert!(diff.to_scalar::<f64>().unwrap() < 1e-12);
        assert_eq!(g1.get(x.as_tensor()).unwrap().dtype(), DType::F64);
    }
}
