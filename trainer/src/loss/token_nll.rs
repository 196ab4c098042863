//! `−log softmax(logits)[label]` per row as one graph node with a closed-form backward.
//!
//! Written with tensor ops, the loss over a `[targets, vocabulary]` logit matrix (400 MB at 4 × 512
//! targets and SmolLM2's 49,152 tokens) takes about a dozen passes over it in the forward and
//! backward passes and keeps two copies alive for the backward. Here the forward is one pass per
//! row (running max and sum of exponentials) and the backward `(softmax − onehot) · g` two, with
//! nothing kept but the logits themselves. The CPU runs these loops natively; other devices run the
//! same formulas as tensor ops.

use std::sync::Arc;

use candle_core::backend::BackendStorage;
#[cfg(feature = "cuda")]
use candle_core::{op::BackpropOp, Storage, D};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// The negative log-likelihood of `labels[i]` under row i of `logits` (`[n, V]`, f32 or f64):
/// a `[n]` tensor that backpropagates to `logits`.
pub fn token_nll(logits: &Tensor, labels: &[u32]) -> Result<Tensor> {
    let (n, v) = logits.dims2()?;
    if labels.len() != n {
        candle_core::bail!("token_nll: {} labels for {n} rows", labels.len());
    }
    if let Some(&bad) = labels.iter().find(|&&l| l as usize >= v) {
        candle_core::bail!("token_nll: label {bad} is outside the vocabulary of {v}");
    }
    logits.contiguous()?.apply_op1(TokenNll {
        labels: Arc::new(labels.to_vec()),
    })
}

struct TokenNll {
    labels: Arc<Vec<u32>>,
}

/// `(softmax(logits) − onehot(labels)) · g` per row, for the backward pass.
struct TokenNllGrad {
    labels: Arc<Vec<u32>>,
}

trait Float: candle_core::WithDType + Send + Sync {
    fn exp(self) -> Self;
}

impl Float for f32 {
    fn exp(self) -> Self {
        f32::exp(self)
    }
}

impl Float for f64 {
    fn exp(self) -> Self {
        f64::exp(self)
    }
}

/// `log Σ exp(row)`, from the row's maximum so that no exponential overflows.
fn log_sum_exp<T: Float>(row: &[T]) -> T {
    let max = row.iter().copied().fold(
        T::from_f64(f64::NEG_INFINITY),
        |m, x| {
            if x > m {
                x
            } else {
                m
            }
        },
    );
    // Summed in f64: 49,152 f32 terms would otherwise lose about four digits.
    let sum: f64 = row.iter().map(|&x| (x - max).exp().to_f64()).sum();
    max + T::from_f64(sum.ln())
}

fn nll_rows<T: Float>(logits: &[T], v: usize, labels: &[u32]) -> Vec<T> {
    logits
        .par_chunks(v)
        .zip(labels.par_iter())
        .map(|(row, &label)| log_sum_exp(row) - row[label as usize])
        .collect()
}

fn grad_rows<T: Float>(logits: &[T], grad: &[T], v: usize, labels: &[u32]) -> Vec<T> {
    let mut out = vec![T::from_f64(0.0); logits.len()];
    out.par_chunks_mut(v)
        .zip(logits.par_chunks(v))
        .zip(grad.par_iter().zip(labels.par_iter()))
        .for_each(|((o, row), (&g, &label))| {
            let lse = log_sum_exp(row);
            for (o, &x) in o.iter_mut().zip(row) {
                *o = (x - lse).exp() * g;
            }
            o[label as usize] -= g;
        });
    out
}

fn contiguous<'a, T: candle_core::WithDType>(
    s: &'a CpuStorage,
    l: &Layout,
    op: &str,
) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s.as_slice::<T>()?[a..b]),
        None => candle_core::bail!("{op}: expects a contiguous input"),
    }
}

#[cfg(feature = "cuda")]
/// The same formulas as tensor ops (devices without a native loop here).
fn nll_with_tensor_ops(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let lse = logsumexp_rows(logits)?;
    lse - logits.gather(labels, D::Minus1)?
}

#[cfg(feature = "cuda")]
fn logsumexp_rows(logits: &Tensor) -> Result<Tensor> {
    let max = logits.max_keepdim(D::Minus1)?;
    let sum = logits.broadcast_sub(&max)?.exp()?.sum_keepdim(D::Minus1)?;
    max + sum.log()?
}

#[cfg(feature = "cuda")]
fn labels_on(labels: &[u32], device: &candle_core::Device) -> Result<Tensor> {
    Tensor::from_vec(labels.to_vec(), (labels.len(), 1), device)
}

impl CustomOp1 for TokenNll {
    fn name(&self) -> &'static str {
        "token-nll"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, v) = l.shape().dims2()?;
        let out = match s.dtype() {
            DType::F32 => {
                CpuStorage::F32(nll_rows(contiguous(s, l, "token-nll")?, v, &self.labels))
            }
            DType::F64 => {
                CpuStorage::F64(nll_rows(contiguous(s, l, "token-nll")?, v, &self.labels))
            }
            other => candle_core::bail!("token-nll: logits of dtype {other:?} (f32 or f64 only)"),
        };
        Ok((out, Shape::from(n)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let x = Tensor::from_storage(
            Storage::Cuda(s.try_clone(l)?),
            l.shape().clone(),
            BackpropOp::none(),
            false,
        );
        let y = nll_with_tensor_ops(&x, &labels_on(&self.labels, x.device())?)?
            .squeeze(D::Minus1)?
            .contiguous()?;
        let (st, yl) = y.storage_and_layout();
        match &*st {
            Storage::Cuda(c) => Ok((c.try_clone(yl)?, yl.shape().clone())),
            _ => candle_core::bail!("token-nll: the result left the GPU"),
        }
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let g = arg.detach().apply_op2(
            &grad.detach().contiguous()?,
            TokenNllGrad {
                labels: self.labels.clone(),
            },
        )?;
        Ok(Some(g))
    }
}

impl CustomOp2 for TokenNllGrad {
    fn name(&self) -> &'static str {
        "token-nll-grad"
    }

    fn cpu_fwd(
        &self,
        s: &CpuStorage,
        l: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, v) = l.shape().dims2()?;
        let op = "token-nll-grad";
        let out = match (s.dtype(), gs.dtype()) {
            (DType::F32, DType::F32) => CpuStorage::F32(grad_rows(
                contiguous(s, l, op)?,
                contiguous(gs, gl, op)?,
                v,
                &self.labels,
            )),
            (DType::F64, DType::F64) => CpuStorage::F64(grad_rows(
                contiguous(s, l, op)?,
                contiguous(gs, gl, op)?,
                v,
                &self.labels,
            )),
            (a, b) => candle_core::bail!("{op}: logits {a:?} with gradient {b:?}"),
        };
        Ok((out, l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
        gs: &candle_core::CudaStorage,
        gl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let x = Tensor::from_storage(
            Storage::Cuda(s.try_clone(l)?),
            l.shape().clone(),
            BackpropOp::none(),
            false,
        );
        let g = Tensor::from_storage(
            Storage::Cuda(gs.try_clone(gl)?),
            gl.shape().clone(),
            BackpropOp::none(),
            false,
        );
        let labels = labels_on(&self.labels, x.device())?;
        let softmax = x.broadcast_sub(&logsumexp_rows(&x)?)?.exp()?;
        let onehot = labels
            .broadcast_as((labels.dim(0)?, x.dim(1)?))?
            .eq(&Tensor::arange(0u32, x.dim(1)? as u32, x.device())?
                .unsqueeze(0)?
                .broadcast_as(x.shape())?)?
            .to_dtype(x.dtype())?;
        let y = (softmax - onehot)?
            .broadcast_mul(&g.unsqueeze(D::Minus1)?)?
            .contiguous()?;
        let (st, yl) = y.storage_and_layout();
        match &*st {
            Storage::Cuda(c) => Ok((c.try_clone(yl)?, yl.shape().clone())),
            _ => candle_core::bail!("token-nll-grad: the result left the GPU"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var, D};

    fn labels_on(labels: &[u32], device: &Device) -> Tensor {
        Tensor::from_vec(labels.to_vec(), (labels.len(), 1), device).unwrap()
    }

    /// The tensor-op formulation the op replaces (the loss code before it), for reference.
    fn reference(logits: &Tensor, labels: &[u32]) -> Tensor {
        let labels = labels_on(labels, logits.device());
        let max = logits.max_keepdim(D::Minus1).unwrap().detach();
        let shifted = logits.broadcast_sub(&max).unwrap();
        let log_z = shifted
            .exp()
            .unwrap()
            .sum_keepdim(D::Minus1)
            .unwrap()
            .log()
            .unwrap();
        (log_z - shifted.gather(&labels, D::Minus1).unwrap())
            .unwrap()
            .squeeze(D::Minus1)
            .unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    #[test]
    fn forward_and_gradient_match_the_tensor_op_loss() {
        let d = Device::Cpu;
        let labels = [3u32, 0, 6, 6, 1];
        for dtype in [DType::F64, DType::F32] {
            // Large offsets: the max shift must keep exp from overflowing.
            let x = (Tensor::arange(0f64, 35.0, &d).unwrap().sin().unwrap() * 40.0)
                .unwrap()
                .reshape((5, 7))
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let x = Var::from_tensor(&x).unwrap();
            let w = Tensor::new(&[0.5f64, -1.0, 2.0, 0.25, 1.5], &d)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let fused = token_nll(x.as_tensor(), &labels).unwrap();
            let plain = reference(x.as_tensor(), &labels);
            let tol = if dtype == DType::F64 { 1e-12 } else { 1e-4 };
            assert!(max_diff(&fused, &plain) < tol, "{dtype:?}");
            let g1 = (fused * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (plain * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let (g1, g2) = (
                g1.get(x.as_tensor()).unwrap(),
                g2.get(x.as_tensor()).unwrap(),
            );
            assert!(max_diff(g1, g2) < tol / 10.0, "{dtype:?}");
            assert_eq!(g1.dtype(), dtype);
        }
    }

    #[test]
    fn a_hand_computed_row() {
        // Row [0, ln 3]: softmax [1/4, 3/4]; label 0 → nll ln 4, gradient [1/4 − 1, 3/4].
        let x =
            Var::from_tensor(&Tensor::new(&[[0f64, 3f64.ln()]], &Device::Cpu).unwrap()).unwrap();
        let nll = token_nll(x.as_tensor(), &[0]).unwrap();
        assert!((nll.to_vec1::<f64>().unwrap()[0] - 4f64.ln()).abs() < 1e-15);
        let g = nll.sum_all().unwrap().backward().unwrap();
        let g = g.get(x.as_tensor()).unwrap().to_vec2::<f64>().unwrap();
        assert!(
            (g[0][0] + 0.75).abs() < 1e-15 && (g[0][1] - 0.75).abs() < 1e-15,
            "{g:?}"
        );
    }

    #[test]
    fn labels_outside_the_vocabulary_are_refused() {
        let x = Tensor::zeros((2, 4), DType::F32, &Device::Cpu).unwrap();
        let err = token_nll(&x, &[1, 4]).unwrap_err().to_string();
        assert!(
            err.contains("label 4") && err.contains("vocabulary of 4"),
            "{err}"
        );
        assert!(token_nll(&x, &[1]).is_err());
    }
}
