//! Training kernels: one graph node each, with a hand-written backward.
//!
//! candle's fused softmax, RMSNorm and rotary kernels record no backward pass, and the same
//! computations written with plain tensor ops keep every temporary alive until the backward pass
//! (for the softmax alone five `[batch, heads, q, k]` tensors per layer: 19 GB for SmolLM2 at
//! 4 × 512 tokens). These ops keep only their input and output; their backward is the closed
//! form, checked against the plain-op graph in the tests below.

use candle_core::op::BackpropOp;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Storage, Tensor, D};

/// `softmax(scale · scores + mask)` over the last dimension; `mask` broadcasts to `scores`.
pub fn masked_softmax(scores: &Tensor, mask: &Tensor, scale: f64) -> Result<Tensor> {
    let mask = mask.to_dtype(scores.dtype())?;
    apply(
        scores,
        Kernel {
            name: "masked-softmax",
            forward: Box::new(move |x| super::fused::masked_softmax(x, &mask, scale)),
            backward: Box::new(move |_, y, g| {
                // p ⊙ (g − Σ g ⊙ p), times the scale.
                let dot = (g * y)?.sum_keepdim(D::Minus1)?;
                (y * g.broadcast_sub(&dot)?)? * scale
            }),
        },
    )
}

/// RMSNorm with a frozen weight: `x / √(mean(x²) + eps) · w` over the last dimension. The
/// backward is `r·w⊙g − x·r³/n·Σ(g⊙w⊙x)` with `r = 1/√(mean(x²) + eps)`.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let (w_fwd, w_bwd) = (weight.clone(), weight.clone());
    apply(
        x,
        Kernel {
            name: "rms-norm",
            forward: Box::new(move |x| {
                let r = (x.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
                x.broadcast_mul(&r)?.broadcast_mul(&w_fwd)
            }),
            backward: Box::new(move |x, _, g| {
                let n = x.dim(D::Minus1)? as f64;
                let r = (x.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
                let gw = g.broadcast_mul(&w_bwd)?;
                let dot = (&gw * x)?.sum_keepdim(D::Minus1)?;
                let coef = (r.powf(3.0)? * dot)? / n;
                gw.broadcast_mul(&r)? - x.broadcast_mul(&coef?)?
            }),
        },
    )
}

/// Rotary embedding `x·cos + rotate_half(x)·sin` (transformers' convention, `rotate_half(x) =
/// [−x₂, x₁]`); the backward rotates the other way: `g·cos + [h₂, −h₁]` with `h = g·sin`.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (c1, s1, c2, s2) = (cos.clone(), sin.clone(), cos.clone(), sin.clone());
    apply(
        x,
        Kernel {
            name: "rope",
            forward: Box::new(move |x| {
                let half = x.dim(D::Minus1)? / 2;
                let (x1, x2) = (
                    x.narrow(D::Minus1, 0, half)?,
                    x.narrow(D::Minus1, half, half)?,
                );
                let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
                x.broadcast_mul(&c1)? + rotated.broadcast_mul(&s1)?
            }),
            backward: Box::new(move |_, _, g| {
                let h = g.broadcast_mul(&s2)?;
                let half = h.dim(D::Minus1)? / 2;
                let (h1, h2) = (
                    h.narrow(D::Minus1, 0, half)?,
                    h.narrow(D::Minus1, half, half)?,
                );
                g.broadcast_mul(&c2)? + Tensor::cat(&[&h2, &h1.neg()?], D::Minus1)?
            }),
        },
    )
}

type Forward = Box<dyn Fn(&Tensor) -> Result<Tensor> + Send + Sync>;
type Backward = Box<dyn Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor> + Send + Sync>;

/// A unary op whose forward and backward are written with ordinary tensor ops on detached
/// tensors: the graph records one node (input and output), not the forward's temporaries.
struct Kernel {
    name: &'static str,
    forward: Forward,
    /// `(input, output, output gradient) → input gradient`.
    backward: Backward,
}

fn apply(x: &Tensor, kernel: Kernel) -> Result<Tensor> {
    x.contiguous()?.apply_op1(kernel)
}

impl Kernel {
    fn run(&self, input: Storage, layout: &Layout) -> Result<Tensor> {
        if !layout.is_contiguous() || layout.start_offset() != 0 {
            candle_core::bail!("{}: expects a contiguous input", self.name);
        }
        let x = Tensor::from_storage(input, layout.shape().clone(), BackpropOp::none(), false);
        (self.forward)(&x)?.contiguous()
    }
}

impl CustomOp1 for Kernel {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        let y = self.run(Storage::Cpu(storage.try_clone(layout)?), layout)?;
        let (s, l) = y.storage_and_layout();
        match &*s {
            Storage::Cpu(c) => Ok((c.try_clone(l)?, l.shape().clone())),
            _ => candle_core::bail!("{}: the result left the CPU", self.name),
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        let y = self.run(Storage::Cuda(storage.try_clone(layout)?), layout)?;
        let (s, l) = y.storage_and_layout();
        match &*s {
            Storage::Cuda(c) => Ok((c.try_clone(l)?, l.shape().clone())),
            _ => candle_core::bail!("{}: the result left the GPU", self.name),
        }
    }

    fn bwd(&self, arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (x, y, g) = (arg.detach(), res.detach(), grad.detach());
        Ok(Some((self.backward)(&x, &y, &g)?))
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

    fn grad_of(f: impl Fn(&Tensor) -> Tensor, x: &Var, w: &Tensor) -> Tensor {
        let y = f(x.as_tensor());
        let g = (y * w).unwrap().sum_all().unwrap().backward().unwrap();
        g.get(x.as_tensor()).unwrap().clone()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    }

    #[test]
    fn rms_norm_and_rope_match_plain_ops() {
        let d = Device::Cpu;
        let x = Var::from_tensor(
            &Tensor::arange(0f64, 48.0, &d)
                .unwrap()
                .sin()
                .unwrap()
                .reshape((2, 3, 8))
                .unwrap(),
        )
        .unwrap();
        let w = Tensor::arange(0f64, 48.0, &d)
            .unwrap()
            .cos()
            .unwrap()
            .reshape((2, 3, 8))
            .unwrap();
        let weight = Tensor::arange(1f64, 9.0, &d).unwrap().sqrt().unwrap();
        let plain_norm = |x: &Tensor| {
            let r = (x.sqr().unwrap().mean_keepdim(D::Minus1).unwrap() + 1e-5)
                .unwrap()
                .sqrt()
                .unwrap()
                .recip()
                .unwrap();
            x.broadcast_mul(&r).unwrap().broadcast_mul(&weight).unwrap()
        };
        let fused = rms_norm(x.as_tensor(), &weight, 1e-5).unwrap();
        assert!(max_diff(&fused, &plain_norm(x.as_tensor())) < 1e-12);
        let g1 = grad_of(|x| rms_norm(x, &weight, 1e-5).unwrap(), &x, &w);
        let g2 = grad_of(plain_norm, &x, &w);
        assert!(max_diff(&g1, &g2) < 1e-12, "{}", max_diff(&g1, &g2));

        let angles = Tensor::arange(0f64, 24.0, &d)
            .unwrap()
            .reshape((3, 8))
            .unwrap();
        let (cos, sin) = (angles.cos().unwrap(), angles.sin().unwrap());
        let plain_rope = |x: &Tensor| {
            let (x1, x2) = (x.narrow(2, 0, 4).unwrap(), x.narrow(2, 4, 4).unwrap());
            let rotated = Tensor::cat(&[&x2.neg().unwrap(), &x1], 2).unwrap();
            (x.broadcast_mul(&cos).unwrap() + rotated.broadcast_mul(&sin).unwrap()).unwrap()
        };
        let fused = rope(x.as_tensor(), &cos, &sin).unwrap();
        assert!(max_diff(&fused, &plain_rope(x.as_tensor())) < 1e-12);
        let g1 = grad_of(|x| rope(x, &cos, &sin).unwrap(), &x, &w);
        let g2 = grad_of(plain_rope, &x, &w);
        assert!(max_diff(&g1, &g2) < 1e-12, "{}", max_diff(&g1, &g2));
    }
}
