//! Weight matrices kept in a quantized type (as a GGUF file stores them) and multiplied with
//! candle's quantized matmul: the optional, approximate compute path behind `--quantized`.
//!
//! Only products of a few rows use them: decoding one to three sequences, where reading the
//! weights dominates and the quantized ones are 3.8 times smaller than float32. With more rows
//! the arithmetic dominates, and candle's quantized kernels (one block at a time) lose to the
//! float matrix product: at [m, 576]·[576, 1536] quantized/float time was 0.70 at m = 1, 0.54 at
//! 2, 0.72 at 3, 1.10 at 4, 1.7 at 8 and 5.2 at 16 rows (2 cores). Prompts, scoring and larger
//! decoding batches therefore run on the float weights (the same values, dequantized) and give
//! the float results.
//!
//! On the CPU a matrix is cut into row blocks that rayon multiplies in parallel, each with
//! candle's kernel. candle's own parallel loop (a spinning barrier pool) collapsed on a machine
//! shared with other processes: 61% of the time went to waiting on descheduled workers, and
//! SmolLM2 generated 12 tokens/s instead of the 50 its arithmetic allows. Q4_1 weights, for
//! which candle has only scalar code, go through [`super::q4_1`] instead.

use std::borrow::Cow;
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{DType, Device, Module, Result, Shape, Tensor, D};
use rayon::prelude::*;

use super::q4_1::Q4_1Matrix;

/// Row blocks per CPU thread, so that a thread slowed by another process hands work on.
const BLOCKS_PER_THREAD: usize = 2;

/// The most rows a product runs quantized (see the module documentation).
pub const MAX_ROWS: usize = 3;

/// Whether a product with input `x` runs on the quantized weight: few rows, no gradient.
pub(crate) fn applies(x: &Tensor) -> bool {
    let rows: usize = x.dims()[..x.rank().saturating_sub(1)].iter().product();
    rows <= MAX_ROWS && !x.track_op()
}

/// An `[out, in]` weight matrix in a quantized type, for `x·Wᵀ`.
#[derive(Clone, Debug)]
pub struct QuantizedWeight {
    kernel: Kernel,
    shape: Shape,
    dtype: GgmlDType,
}

#[derive(Clone, Debug)]
enum Kernel {
    /// Row blocks of W, in order, each multiplied by candle's quantized matmul.
    Candle(Vec<QMatMul>),
    /// Q4_1 on the CPU.
    Q4_1(Arc<Q4_1Matrix>),
}

impl QuantizedWeight {
    /// `weight` (`[out, in]`, on the CPU, as stored) placed on `device` for inference. On the
    /// CPU, Q4_1 runs on [`super::q4_1`], and another type candle has no vectorised kernel for
    /// is re-encoded as Q8_0 first (see [`has_vector_kernel`]).
    pub fn new(weight: &QTensor, device: &Device) -> Result<Self> {
        let (rows, cols) = weight.shape().dims2()?;
        if device.is_cpu() && weight.dtype() == GgmlDType::Q4_1 {
            if let Some(m) = Q4_1Matrix::new(rows, cols, weight.data()?.into_owned()) {
                return Ok(Self {
                    kernel: Kernel::Q4_1(Arc::new(m)),
                    shape: weight.shape().clone(),
                    dtype: GgmlDType::Q4_1,
                });
            }
        }
        let reencoded;
        let weight = if !device.is_cpu() || has_vector_kernel(weight.dtype()) {
            weight
        } else {
            reencoded = QTensor::quantize(&weight.dequantize(&Device::Cpu)?, GgmlDType::Q8_0)?;
            &reencoded
        };
        let dtype = weight.dtype();
        let row_bytes = cols / dtype.block_size() * dtype.type_size();
        let data = weight.data()?;
        let count = if device.is_cpu() {
            (rayon::current_num_threads() * BLOCKS_PER_THREAD).clamp(1, rows.max(1))
        } else {
            1
        };
        let (base, extra) = (rows / count, rows % count);
        let mut blocks = Vec::with_capacity(count);
        let mut first = 0;
        for i in 0..count {
            let n = base + usize::from(i < extra);
            let bytes = &data[first * row_bytes..(first + n) * row_bytes];
            let storage = QStorage::from_data(Cow::Borrowed(bytes), device, dtype)?;
            blocks.push(QMatMul::from_qtensor(QTensor::new(storage, (n, cols))?)?);
            first += n;
        }
        Ok(Self {
            kernel: Kernel::Candle(blocks),
            shape: weight.shape().clone(),
            dtype,
        })
    }

    /// `[out, in]`.
    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    /// The type the products run in (after any re-encoding).
    pub fn dtype(&self) -> GgmlDType {
        self.dtype
    }

    /// `x·Wᵀ` for `x: [.., in]` → `[.., out]`, no backward pass.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.contiguous()?;
        match &self.kernel {
            Kernel::Candle(blocks) if blocks.len() == 1 => blocks[0].forward(&x),
            Kernel::Candle(blocks) => {
                let parts = blocks
                    .par_iter()
                    .map(|b| b.forward(&x))
                    .collect::<Result<Vec<_>>>()?;
                Tensor::cat(&parts, D::Minus1)
            }
            Kernel::Q4_1(w) => {
                let mut dims = x.dims().to_vec();
                let cols = dims.pop().unwrap_or(0);
                let rows = x.elem_count() / cols.max(1);
                let values = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                dims.push(w.rows());
                Tensor::from_vec(w.matmul(&values, rows), dims, x.device())?.to_dtype(x.dtype())
            }
        }
    }
}

/// Whether candle's quantized matmul has a vectorised CPU kernel for weights of this type. Its
/// scalar code for the others (Q4_1, Q5_0, Q5_1, Q8_1) ran SmolLM2's Q4_1 weights at 4 tokens/s,
/// slower than float32. Q4_1 has its own kernel here ([`super::q4_1`]); the others are
/// re-encoded as Q8_0: the stored values to within half a step of 1/127 of their block's
/// largest magnitude, at 8.5 bits a weight (for SmolLM2's Q4_1 weights that nearly doubled the
/// log-probability error, mean 0.072 against 0.049 with the Q4_1 kernel).
pub fn has_vector_kernel(dtype: GgmlDType) -> bool {
    !matches!(
        dtype,
        GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1 | GgmlDType::Q8_1
    )
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};

    use super::*;

    /// Cut into row blocks or not, the product is the one candle's quantized matmul gives, and
    /// close to the float one.
    #[test]
    fn row_blocks_multiply_as_the_whole_matrix() {
        let d = Device::Cpu;
        let w = Tensor::arange(0f32, 37.0 * 64.0, &d)
            .unwrap()
            .affine(0.013, 0.0)
            .unwrap()
            .sin()
            .unwrap()
            .reshape((37, 64))
            .unwrap();
        let x = Tensor::arange(0f32, 3.0 * 64.0, &d)
            .unwrap()
            .cos()
            .unwrap()
            .reshape((1, 3, 64))
            .unwrap();
        for dtype in [
            GgmlDType::Q8_0,
            GgmlDType::Q4K,
            GgmlDType::Q5_0,
            GgmlDType::Q4_1,
        ] {
            let k = if dtype == GgmlDType::Q4K { 256 } else { 64 };
            let w = if k == 64 {
                w.clone()
            } else {
                Tensor::cat(&[&w, &w, &w, &w], 1).unwrap()
            };
            let x = if k == 64 {
                x.clone()
            } else {
                Tensor::cat(&[&x, &x, &x, &x], 2).unwrap()
            };
            let q = QTensor::quantize(&w, dtype).unwrap();
            let weight = QuantizedWeight::new(&q, &d).unwrap();
            // What candle's quantized matmul gives for the whole matrix (Q5_0 re-encoded).
            let whole = QMatMul::from_qtensor(if dtype == GgmlDType::Q5_0 {
                QTensor::quantize(&q.dequantize(&d).unwrap(), GgmlDType::Q8_0).unwrap()
            } else {
                QTensor::quantize(&w, dtype).unwrap()
            })
            .unwrap();
            let (got, want) = (weight.forward(&x).unwrap(), whole.forward(&x).unwrap());
            assert_eq!(got.dims(), [1, 3, 37]);
            let (got_v, want_v) = (
                got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                want.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
            if dtype == GgmlDType::Q4_1 {
                // Our kernel (see `q4_1`): the same arithmetic up to float rounding.
                for (g, w) in got_v.iter().zip(&want_v) {
                    assert!((g - w).abs() < 2e-3 * (1.0 + w.abs()), "{g} vs {w}");
                }
            } else {
                assert_eq!(got_v, want_v, "{dtype:?}");
            }
            // And close to the float product: within 2% of the sum of the terms' magnitudes.
            let float = x.matmul(&w.t().unwrap().unsqueeze(0).unwrap()).unwrap();
            let max = |t: Tensor| {
                t.abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_dtype(DType::F32)
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
            };
            let magnitude = x
                .abs()
                .unwrap()
                .matmul(&w.abs().unwrap().t().unwrap().unsqueeze(0).unwrap())
                .unwrap();
            let (err, scale) = (max((got - &float).unwrap()), max(magnitude));
            assert!(err < 0.02 * scale, "{dtype:?}: {err} of {scale}");
        }
    }
}
