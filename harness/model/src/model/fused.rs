//! One-pass CPU kernels for inference: the attention's scale-mask-softmax, the SwiGLU MLP's
//! `silu(gate)·up` and the log-sum-exp of logit rows. None records a backward pass; on devices
//! other than the CPU each runs as the tensor ops it replaces.
//!
//! Softmax: written as separate tensor ops it takes four passes over the largest tensor of a
//! forward pass (`[batch, heads, queries, keys]`), and the exponential of every masked score (the
//! mask adds -1e30) takes the C library's slow underflow path, which sets `errno`: 12% of a
//! scoring run's time on SmolLM2. Here a score that far below its row's maximum is 0 without
//! calling `exp` (it would round to 0 anyway), so the result is the same softmax. Float32 runs on
//! vector units with a polynomial `exp` (see `rows_f32`).

use candle_core::backend::BackendStorage;
#[cfg(feature = "cuda")]
use candle_core::{op::BackpropOp, Storage};
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// `softmax(scale · scores + mask)` over the last dimension, in the scores' dtype (float32 or
/// float64); `mask` (additive) broadcasts to `scores`. No backward pass (the training kernel
/// [`super::kernels::masked_softmax`] wraps it).
pub fn masked_softmax(scores: &Tensor, mask: &Tensor, scale: f64) -> Result<Tensor> {
    let mask = mask
        .to_dtype(scores.dtype())?
        .broadcast_as(scores.shape())?;
    scores
        .contiguous()?
        .apply_op2_no_bwd(&mask, &MaskedSoftmax { scale })
}

struct MaskedSoftmax {
    scale: f64,
}

/// The float types the CPU kernel runs in.
trait Float: Copy + Send + Sync + PartialOrd + std::ops::Add<Output = Self> {
    /// Below this (relative to the row maximum) `exp` rounds to 0.
    const UNDERFLOW: Self;
    const ZERO: Self;
    const ONE: Self;
    const NEG_INFINITY: Self;
    fn from_f64(v: f64) -> Self;
    fn mul(self, other: Self) -> Self;
    fn sub(self, other: Self) -> Self;
    fn div(self, other: Self) -> Self;
    fn exp(self) -> Self;
    /// One row of the softmax (see [`softmax_row`]).
    fn row(x: &[Self], m: &[Self], scale: Self, out: &mut [MaybeUninit<Self>]);
    /// `log Σ exp` of one row, shifted by its maximum.
    fn log_sum_exp_row(x: &[Self]) -> Self;
}

impl Float for f32 {
    // exp(-104) = 6.8e-46 rounds to 0: the smallest subnormal float32 is 1.4e-45.
    const UNDERFLOW: f32 = -104.0;
    const ZERO: f32 = 0.0;
    const ONE: f32 = 1.0;
    const NEG_INFINITY: f32 = f32::NEG_INFINITY;
    fn from_f64(v: f64) -> f32 {
        v as f32
    }
    fn mul(self, o: f32) -> f32 {
        self * o
    }
    fn sub(self, o: f32) -> f32 {
        self - o
    }
    fn div(self, o: f32) -> f32 {
        self / o
    }
    fn exp(self) -> f32 {
        f32::exp(self)
    }
    fn row(x: &[f32], m: &[f32], scale: f32, out: &mut [MaybeUninit<f32>]) {
        rows_f32::softmax_row(x, m, scale, out)
    }
    fn log_sum_exp_row(x: &[f32]) -> f32 {
        rows_f32::log_sum_exp(x)
    }
}

impl Float for f64 {
    // exp(-746) rounds to 0: the smallest subnormal float64 is 4.9e-324 = exp(-744.4).
    const UNDERFLOW: f64 = -746.0;
    const ZERO: f64 = 0.0;
    const ONE: f64 = 1.0;
    const NEG_INFINITY: f64 = f64::NEG_INFINITY;
    fn from_f64(v: f64) -> f64 {
        v
    }
    fn mul(self, o: f64) -> f64 {
        self * o
    }
    fn sub(self, o: f64) -> f64 {
        self - o
    }
    fn div(self, o: f64) -> f64 {
        self / o
    }
    fn exp(self) -> f64 {
        f64::exp(self)
    }
    fn row(x: &[f64], m: &[f64], scale: f64, out: &mut [MaybeUninit<f64>]) {
        softmax_row(x, m, scale, out)
    }
    fn log_sum_exp_row(x: &[f64]) -> f64 {
        let max = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if max == f64::NEG_INFINITY {
            return max;
        }
        max + x.iter().map(|&v| (v - max).exp()).sum::<f64>().ln()
    }
}

/// One row: `out = softmax(scale · x + m)`; `out` may start uninitialised.
fn softmax_row<T: Float>(x: &[T], m: &[T], scale: T, out: &mut [MaybeUninit<T>]) {
    let mut max = T::NEG_INFINITY;
    for (&x, &m) in x.iter().zip(m) {
        let v = x.mul(scale) + m;
        if v > max {
            max = v;
        }
    }
    let mut sum = T::ZERO;
    for ((o, &x), &m) in out.iter_mut().zip(x).zip(m) {
        let d = (x.mul(scale) + m).sub(max);
        let e = if d < T::UNDERFLOW { T::ZERO } else { d.exp() };
        o.write(e);
        sum = sum + e;
    }
    let inv = T::ONE.div(sum);
    for o in out.iter_mut() {
        // SAFETY: written just above.
        let e = unsafe { o.assume_init() };
        o.write(e.mul(inv));
    }
}

/// The float32 row on vector units: `exp` by range reduction and a polynomial (within 2 ulp of
/// libm's `expf` down to exp(-87); below that 0, as the underflow cut does for float64), maxima
/// and sums over 16 lanes. Compiled for AVX2 + FMA and chosen at run time where the CPU has
/// them, else the same code for the baseline instruction set.
mod rows_f32 {
    use std::mem::MaybeUninit;

    /// Below this `exp_neg` gives 0: exp(-87) = 1.6e-38 is near the smallest normal float32.
    const CUT: f32 = -87.0;
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    /// ln 2 in two parts (Cody and Waite): `k·LN2_HI` is exact for the k that occur here.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    /// 1.5·2²³: adding and subtracting it rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;

    /// exp(d) for d ≤ 0.
    #[inline(always)]
    pub(super) fn exp_neg(d: f32) -> f32 {
        let c = if d < CUT { CUT } else { d };
        let shifted = c * LOG2E + ROUND;
        let k = shifted - ROUND;
        // k as an integer, read from the mantissa (a float-to-int cast would not vectorise).
        let k_int = shifted.to_bits().wrapping_sub(ROUND.to_bits());
        let r = (c - k * LN2_HI) - k * LN2_LO;
        // exp(r) on |r| ≤ ln2/2: a degree-7 minimax polynomial (Cephes' expf coefficients).
        let p = ((((1.987_569_2e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2)
            * r
            + 1.666_666_5e-1)
            * r
            + 0.5;
        let e = (p * r * r + r) + 1.0;
        let two_k = f32::from_bits(k_int.wrapping_add(127) << 23);
        if d < CUT {
            0.0
        } else {
            e * two_k
        }
    }

    const LANES: usize = 16;

    #[inline(always)]
    fn body(x: &[f32], m: &[f32], scale: f32, out: &mut [MaybeUninit<f32>]) {
        for ((o, &x), &m) in out.iter_mut().zip(x).zip(m) {
            o.write(x * scale + m);
        }
        // SAFETY: every element was written just above.
        let out = unsafe { &mut *(out as *mut [MaybeUninit<f32>] as *mut [f32]) };
        let max = max_of(out);
        let mut sums = [0f32; LANES];
        let mut chunks = out.chunks_exact_mut(LANES);
        for c in &mut chunks {
            for (s, v) in sums.iter_mut().zip(c) {
                *v = exp_neg(*v - max);
                *s += *v;
            }
        }
        let mut sum = 0f32;
        for v in chunks.into_remainder() {
            *v = exp_neg(*v - max);
            sum += *v;
        }
        sum += sums.iter().sum::<f32>();
        let inv = 1.0 / sum;
        for v in out.iter_mut() {
            *v *= inv;
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn body_avx2(x: &[f32], m: &[f32], scale: f32, out: &mut [MaybeUninit<f32>]) {
        body(x, m, scale, out)
    }

    #[inline(always)]
    fn max_of(x: &[f32]) -> f32 {
        let mut lanes = [f32::NEG_INFINITY; LANES];
        let mut chunks = x.chunks_exact(LANES);
        for c in &mut chunks {
            for (l, &v) in lanes.iter_mut().zip(c) {
                *l = if v > *l { v } else { *l };
            }
        }
        let mut max = chunks
            .remainder()
            .iter()
            .fold(f32::NEG_INFINITY, |a, &v| if v > a { v } else { a });
        for l in lanes {
            max = if l > max { l } else { max };
        }
        max
    }

    #[inline(always)]
    fn log_sum_exp_body(x: &[f32]) -> f32 {
        let max = max_of(x);
        if max == f32::NEG_INFINITY || max.is_nan() {
            return max;
        }
        let mut sums = [0f32; LANES];
        let mut chunks = x.chunks_exact(LANES);
        for c in &mut chunks {
            for (s, &v) in sums.iter_mut().zip(c) {
                *s += exp_neg(v - max);
            }
        }
        let mut sum: f32 = chunks.remainder().iter().map(|&v| exp_neg(v - max)).sum();
        sum += sums.iter().sum::<f32>();
        max + sum.ln()
    }

    /// `x · sigmoid(x)` with `sigmoid` from `exp(-|x|)`, which never overflows.
    #[inline(always)]
    fn silu_mul_body(g: &[f32], u: &[f32], out: &mut [MaybeUninit<f32>]) {
        for ((o, &g), &u) in out.iter_mut().zip(g).zip(u) {
            let a = if g < 0.0 { g } else { -g };
            let e = exp_neg(a);
            let sigmoid = if g < 0.0 {
                e / (1.0 + e)
            } else {
                1.0 / (1.0 + e)
            };
            o.write(g * sigmoid * u);
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn log_sum_exp_avx2(x: &[f32]) -> f32 {
        log_sum_exp_body(x)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn silu_mul_avx2(g: &[f32], u: &[f32], out: &mut [MaybeUninit<f32>]) {
        silu_mul_body(g, u, out)
    }

    fn vector_units() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    pub(super) fn log_sum_exp(x: &[f32]) -> f32 {
        #[cfg(target_arch = "x86_64")]
        if vector_units() {
            // SAFETY: the CPU has the features the function is compiled for.
            return unsafe { log_sum_exp_avx2(x) };
        }
        log_sum_exp_body(x)
    }

    pub(super) fn silu_mul(g: &[f32], u: &[f32], out: &mut [MaybeUninit<f32>]) {
        #[cfg(target_arch = "x86_64")]
        if vector_units() {
            // SAFETY: as above.
            return unsafe { silu_mul_avx2(g, u, out) };
        }
        silu_mul_body(g, u, out)
    }

    pub(super) fn softmax_row(x: &[f32], m: &[f32], scale: f32, out: &mut [MaybeUninit<f32>]) {
        #[cfg(target_arch = "x86_64")]
        if vector_units() {
            // SAFETY: the CPU has the features the function is compiled for.
            return unsafe { body_avx2(x, m, scale, out) };
        }
        body(x, m, scale, out)
    }
}

/// Rows handed to one thread at a time.
const ROWS_PER_TASK: usize = 64;

fn cpu_softmax<T: Float>(x: &[T], xl: &Layout, m: &[T], ml: &Layout, scale: f64) -> Result<Vec<T>> {
    let Some((start, end)) = xl.contiguous_offsets() else {
        candle_core::bail!("masked softmax: the scores must be contiguous");
    };
    let x = &x[start..end];
    let dims = xl.dims();
    let width = *dims.last().unwrap_or(&1);
    let mstrides = ml.stride();
    if width > 1 && mstrides[dims.len() - 1] != 1 {
        candle_core::bail!("masked softmax: the mask must be contiguous along the keys");
    }
    // Where each row's mask starts: the row index spelled out over the leading dimensions.
    let leading = &dims[..dims.len() - 1];
    let mask_start = |mut row: usize| {
        let mut offset = ml.start_offset();
        for (&size, &stride) in leading.iter().zip(mstrides).rev() {
            offset += (row % size) * stride;
            row /= size;
        }
        offset
    };
    let scale = T::from_f64(scale);
    let mut out = Vec::with_capacity(x.len());
    if width == 0 {
        return Ok(out);
    }
    out.spare_capacity_mut()[..x.len()]
        .par_chunks_mut(width * ROWS_PER_TASK)
        .zip(x.par_chunks(width * ROWS_PER_TASK))
        .enumerate()
        .for_each(|(task, (out, x))| {
            for (i, (out, x)) in out.chunks_mut(width).zip(x.chunks(width)).enumerate() {
                let ms = mask_start(task * ROWS_PER_TASK + i);
                T::row(x, &m[ms..ms + width], scale, out);
            }
        });
    // SAFETY: the rows tile the output and `softmax_row` writes every element of its row.
    unsafe { out.set_len(x.len()) };
    Ok(out)
}

impl CustomOp2 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "masked-softmax"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(m)) => {
                CpuStorage::F32(cpu_softmax(x, l1, m, l2, self.scale)?)
            }
            (CpuStorage::F64(x), CpuStorage::F64(m)) => {
                CpuStorage::F64(cpu_softmax(x, l1, m, l2, self.scale)?)
            }
            _ => candle_core::bail!(
                "masked softmax runs in float32 or float64, not {:?}",
                s1.dtype()
            ),
        };
        Ok((out, l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let scale = self.scale;
        on_gpu(&[(s1, l1), (s2, l2)], |t| {
            candle_nn::ops::softmax_last_dim(&(&t[0] * scale)?.broadcast_add(&t[1])?)
        })
    }
}

/// `silu(gate) · up` elementwise (the SwiGLU MLP), in one pass for float32 on the CPU; other
/// dtypes run as candle's ops.
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if gate.dtype() != candle_core::DType::F32 || gate.shape() != up.shape() {
        return candle_nn::ops::silu(gate)? * up;
    }
    gate.contiguous()?
        .apply_op2_no_bwd(&up.contiguous()?, &SiluMul)
}

struct SiluMul;

/// Elements handed to one thread at a time.
const ELEMENTS_PER_TASK: usize = 1 << 14;

impl CustomOp2 for SiluMul {
    fn name(&self) -> &'static str {
        "silu-mul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(g), CpuStorage::F32(u)) = (s1, s2) else {
            candle_core::bail!("silu-mul runs in float32, not {:?}", s1.dtype());
        };
        let (Some((g0, g1)), Some((u0, u1))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            candle_core::bail!("silu-mul: both inputs must be contiguous");
        };
        let (g, u) = (&g[g0..g1], &u[u0..u1]);
        let mut out = Vec::with_capacity(g.len());
        out.spare_capacity_mut()[..g.len()]
            .par_chunks_mut(ELEMENTS_PER_TASK)
            .zip(g.par_chunks(ELEMENTS_PER_TASK))
            .zip(u.par_chunks(ELEMENTS_PER_TASK))
            .for_each(|((o, g), u)| rows_f32::silu_mul(g, u, o));
        // SAFETY: the chunks tile the output and `silu_mul` writes each of its elements.
        unsafe { out.set_len(g.len()) };
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        on_gpu(&[(s1, l1), (s2, l2)], |t| {
            candle_nn::ops::silu(&t[0])? * &t[1]
        })
    }
}

/// `log Σ exp` over the last dimension of `[.., n]` logits, in their dtype, shifted by each
/// row's maximum. One pass per row for float32 and float64 on the CPU; candle's ops otherwise.
pub fn log_sum_exp(logits: &Tensor) -> Result<Tensor> {
    if !matches!(
        logits.dtype(),
        candle_core::DType::F32 | candle_core::DType::F64
    ) {
        let max = logits.max_keepdim(candle_core::D::Minus1)?;
        let sum = logits
            .broadcast_sub(&max)?
            .exp()?
            .sum_keepdim(candle_core::D::Minus1)?;
        return (sum.log()? + max)?.squeeze(candle_core::D::Minus1);
    }
    logits.contiguous()?.apply_op1_no_bwd(&LogSumExp)
}

struct LogSumExp;

fn cpu_log_sum_exp<T: Float>(x: &[T], l: &Layout) -> Result<(Vec<T>, Shape)> {
    let Some((start, end)) = l.contiguous_offsets() else {
        candle_core::bail!("log-sum-exp: the logits must be contiguous");
    };
    let dims = l.dims();
    let Some((&width, leading)) = dims.split_last() else {
        candle_core::bail!("log-sum-exp: the logits need a dimension to sum over");
    };
    let x = &x[start..end];
    let out = if width == 0 {
        vec![T::NEG_INFINITY; leading.iter().product()]
    } else {
        x.par_chunks(width).map(T::log_sum_exp_row).collect()
    };
    Ok((out, Shape::from(leading.to_vec())))
}

impl candle_core::CustomOp1 for LogSumExp {
    fn name(&self) -> &'static str {
        "log-sum-exp"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        match s {
            CpuStorage::F32(x) => {
                let (v, shape) = cpu_log_sum_exp(x, l)?;
                Ok((CpuStorage::F32(v), shape))
            }
            CpuStorage::F64(x) => {
                let (v, shape) = cpu_log_sum_exp(x, l)?;
                Ok((CpuStorage::F64(v), shape))
            }
            _ => candle_core::bail!(
                "log-sum-exp runs in float32 or float64, not {:?}",
                s.dtype()
            ),
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        on_gpu(&[(s, l)], |t| {
            let max = t[0].max_keepdim(candle_core::D::Minus1)?;
            let sum = t[0]
                .broadcast_sub(&max)?
                .exp()?
                .sum_keepdim(candle_core::D::Minus1)?;
            (sum.log()? + max)?.squeeze(candle_core::D::Minus1)
        })
    }
}

/// Runs `f` on GPU storages seen as tensors and hands back the result's storage.
#[cfg(feature = "cuda")]
fn on_gpu(
    inputs: &[(&candle_core::CudaStorage, &Layout)],
    f: impl FnOnce(&[Tensor]) -> Result<Tensor>,
) -> Result<(candle_core::CudaStorage, Shape)> {
    let tensors = inputs
        .iter()
        .map(|(s, l)| {
            Ok(Tensor::from_storage(
                Storage::Cuda(s.try_clone(l)?),
                l.shape().clone(),
                BackpropOp::none(),
                false,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let y = f(&tensors)?;
    let (s, l) = y.storage_and_layout();
    match &*s {
        Storage::Cuda(c) => Ok((c.try_clone(l)?, l.shape().clone())),
        _ => candle_core::bail!("the result left the GPU"),
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, D};

    use super::*;

    /// Against the tensor ops it replaces, in float64 and float32, with fully masked rows,
    /// a broadcast mask and scores far below the maximum.
    #[test]
    fn equals_scale_mask_softmax_as_tensor_ops() {
        let d = Device::Cpu;
        for dtype in [DType::F64, DType::F32] {
            let scores = (Tensor::arange(0f64, 2.0 * 3.0 * 4.0 * 5.0, &d)
                .unwrap()
                .sin()
                .unwrap()
                * 40.0)
                .unwrap()
                .reshape((2, 3, 4, 5))
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            // [2, 1, 4, 5]: causal-like, row 0 of batch 1 sees nothing.
            let mut m = vec![0f64; 2 * 4 * 5];
            for b in 0..2 {
                for i in 0..4 {
                    for j in 0..5 {
                        if j > i + 1 || (b == 1 && i == 0) {
                            m[(b * 4 + i) * 5 + j] = -1e30;
                        }
                    }
                }
            }
            let mask = Tensor::from_vec(m, (2, 1, 4, 5), &d)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let fused = masked_softmax(&scores, &mask, 0.7).unwrap();
            let plain = candle_nn::ops::softmax(
                &(&scores * 0.7).unwrap().broadcast_add(&mask).unwrap(),
                D::Minus1,
            )
            .unwrap();
            let diff = (fused - plain)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap()
                .to_scalar::<f64>()
                .unwrap();
            let tol = if dtype == DType::F64 { 1e-15 } else { 1e-6 };
            assert!(diff <= tol, "{dtype:?}: {diff}");
        }
    }

    #[test]
    fn vector_exp_is_within_two_ulp_of_libm() {
        let mut worst = 0f64;
        for i in 0..=870_000 {
            let d = -(i as f32) * 1e-4;
            let (got, want) = (rows_f32::exp_neg(d) as f64, (d as f64).exp());
            worst = worst.max((got - want).abs() / want);
        }
        assert!(worst < 2.5e-7, "relative error {worst}");
        assert_eq!(rows_f32::exp_neg(-88.0), 0.0);
        assert_eq!(rows_f32::exp_neg(-1e30), 0.0);
        assert_eq!(rows_f32::exp_neg(0.0), 1.0);
    }

    #[test]
    fn silu_mul_and_log_sum_exp_equal_candles_ops() {
        let d = Device::Cpu;
        // Values from -100 to 100: large arguments, both signs, and a row of -inf.
        let x = (Tensor::arange(0f32, 3.0 * 1000.0, &d)
            .unwrap()
            .sin()
            .unwrap()
            * 100.0)
            .unwrap()
            .reshape((3, 1000))
            .unwrap();
        let u = x.cos().unwrap();
        let fused = silu_mul(&x, &u).unwrap();
        let plain = (candle_nn::ops::silu(&x).unwrap() * &u).unwrap();
        let a: Vec<f32> = fused.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = plain.flatten_all().unwrap().to_vec1().unwrap();
        for (a, b) in a.iter().zip(&b) {
            assert!((a - b).abs() <= 1e-6 * (1.0 + b.abs()), "{a} vs {b}");
        }
        let rows = Tensor::cat(
            &[&x, &Tensor::full(f32::NEG_INFINITY, (1, 1000), &d).unwrap()],
            0,
        )
        .unwrap();
        for dtype in [DType::F32, DType::F64] {
            let rows = rows.to_dtype(dtype).unwrap();
            let got: Vec<f64> = log_sum_exp(&rows)
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap()
                .to_vec1()
                .unwrap();
            let v: Vec<Vec<f64>> = rows.to_dtype(DType::F64).unwrap().to_vec2().unwrap();
            for (g, row) in got.iter().zip(&v) {
                let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let want = if max == f64::NEG_INFINITY {
                    max
                } else {
                    max + row.iter().map(|x| (x - max).exp()).sum::<f64>().ln()
                };
                assert!(
                    g == &want || (g - want).abs() <= 1e-5 * want.abs(),
                    "{dtype:?}: {g} vs {want}"
                );
            }
        }
    }

    #[test]
    fn other_dtypes_are_refused() {
        let d = Device::Cpu;
        let x = Tensor::zeros((2, 3), DType::BF16, &d).unwrap();
        let err = masked_softmax(&x, &x, 1.0).unwrap_err();
        assert!(err.to_string().contains("float32"), "{err}");
    }
}
