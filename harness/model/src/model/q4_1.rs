//! `x·Wᵀ` with W in GGML's Q4_1 type, on the CPU, for a few rows of `x`: the type of
//! SmolLM2's GGUF, for which candle has only scalar code (it ran SmolLM2 at 4 tokens/s).
//!
//! Q4_1 stores each run of 32 weights of a row as a block: a scale `d` and an offset `m` (f16)
//! and 32 four-bit codes `q` (`w = d·q + m`; the low nibbles of the 16 bytes are weights 0–15,
//! the high nibbles 16–31). As in GGML, `x` is quantized per block of 32 to 8 bits
//! (`x ≈ dₓ·p`, `p` in −127..=127) and a block's product is
//! `d·dₓ·Σ q·p + m·dₓ·Σ p`; AVX2 computes `Σ q·p` 32 at a time. Rows of W are shared out to the
//! rayon threads.

use rayon::prelude::*;

/// Weights per block.
pub const BLOCK: usize = 32;
/// Bytes per block: `d`, `m` (f16) and 16 bytes of codes.
pub const BLOCK_BYTES: usize = 20;

/// Rows of W per rayon work item.
const ROWS_PER_ITEM: usize = 16;

/// An `[out, in]` matrix of Q4_1 blocks, as a GGUF file stores it.
#[derive(Debug)]
pub struct Q4_1Matrix {
    rows: usize,
    cols: usize,
    /// `rows × cols / 32` blocks of `BLOCK_BYTES`, row-major.
    data: Vec<u8>,
}

/// One block of `x`, quantized to 8 bits.
#[derive(Clone, Copy)]
struct XBlock {
    /// Scale `dₓ`.
    d: f32,
    /// `dₓ·Σ p`.
    s: f32,
    p: [i8; BLOCK],
}

impl Q4_1Matrix {
    /// `data` holds `rows × cols / 32` Q4_1 blocks; `cols` is a multiple of 32.
    pub fn new(rows: usize, cols: usize, data: Vec<u8>) -> Option<Self> {
        (cols.is_multiple_of(BLOCK) && data.len() == rows * cols / BLOCK * BLOCK_BYTES)
            .then_some(Self { rows, cols, data })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// `x·Wᵀ` for `x`: `m` rows of `cols` values, row-major → `m × rows` values.
    pub fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        assert_eq!(
            x.len(),
            m * self.cols,
            "x is not m rows of {} values",
            self.cols
        );
        let blocks = self.cols / BLOCK;
        let xq: Vec<Vec<XBlock>> = x.chunks_exact(self.cols).map(quantize_row).collect();
        let row_bytes = blocks * BLOCK_BYTES;
        let avx2 = has_avx2();
        // Output laid out row of W major (item by item), transposed into x-row major at the end.
        let mut out_t = vec![0f32; self.rows * m];
        out_t
            .par_chunks_mut(ROWS_PER_ITEM * m)
            .enumerate()
            .for_each(|(item, out)| {
                let first = item * ROWS_PER_ITEM;
                for (r, out) in out.chunks_exact_mut(m).enumerate() {
                    let w = &self.data[(first + r) * row_bytes..(first + r + 1) * row_bytes];
                    for (o, xq) in out.iter_mut().zip(&xq) {
                        *o = if avx2 {
                            // SAFETY: AVX2, FMA and F16C are present (checked at run time).
                            unsafe { dot_avx2(w, xq) }
                        } else {
                            dot_scalar(w, xq)
                        };
                    }
                }
            });
        let mut out = vec![0f32; m * self.rows];
        for (j, col) in out_t.chunks_exact(m).enumerate() {
            for (i, &v) in col.iter().enumerate() {
                out[i * self.rows + j] = v;
            }
        }
        out
    }
}

fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// GGML's 8-bit quantization of activations, per block of 32: `dₓ = max|x| / 127`.
fn quantize_row(x: &[f32]) -> Vec<XBlock> {
    x.chunks_exact(BLOCK)
        .map(|x| {
            let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
            let d = amax / 127.0;
            let inv = if d != 0.0 { 1.0 / d } else { 0.0 };
            let mut p = [0i8; BLOCK];
            let mut sum = 0i32;
            for (p, &x) in p.iter_mut().zip(x) {
                *p = (x * inv).round() as i8;
                sum += i32::from(*p);
            }
            XBlock {
                d,
                s: d * sum as f32,
                p,
            }
        })
        .collect()
}

fn scale_and_offset(block: &[u8]) -> (f32, f32) {
    (
        half::f16::from_le_bytes([block[0], block[1]]).to_f32(),
        half::f16::from_le_bytes([block[2], block[3]]).to_f32(),
    )
}

/// One row of W (its blocks' bytes) times one quantized row of `x`.
fn dot_scalar(w: &[u8], x: &[XBlock]) -> f32 {
    let mut sum = 0f32;
    for (block, x) in w.chunks_exact(BLOCK_BYTES).zip(x) {
        let (d, m) = scale_and_offset(block);
        let mut qp = 0i32;
        for (j, &byte) in block[4..].iter().enumerate() {
            qp += i32::from(byte & 0x0F) * i32::from(x.p[j]);
            qp += i32::from(byte >> 4) * i32::from(x.p[j + BLOCK / 2]);
        }
        sum += d * x.d * qp as f32 + m * x.s;
    }
    sum
}

/// [`dot_scalar`] with AVX2: per block, `maddubs` multiplies the 32 unsigned codes by the 32
/// signed activations and adds pairs (at most 2·15·127, no overflow), `madd` widens to eight
/// 32-bit sums, and one FMA adds them scaled by `d·dₓ`; F16C converts `d` and `m`.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_avx2(w: &[u8], x: &[XBlock]) -> f32 {
    use std::arch::x86_64::*;
    let low = _mm_set1_epi8(0x0F);
    let ones = _mm256_set1_epi16(1);
    let mut acc = _mm256_setzero_ps();
    let mut offsets = 0f32;
    for (block, x) in w.chunks_exact(BLOCK_BYTES).zip(x) {
        // SAFETY: a block is 20 bytes: `d`, `m` (f16) in the first 4, then 16 bytes of codes;
        // `x.p` is 32 bytes; all loads are unaligned.
        let dm = _mm_cvtph_ps(_mm_cvtsi32_si128(std::ptr::read_unaligned(
            block.as_ptr() as *const i32
        )));
        let (d, m) = (_mm_cvtss_f32(dm), _mm_cvtss_f32(_mm_shuffle_ps(dm, dm, 1)));
        let codes = _mm_loadu_si128(block[4..].as_ptr() as *const __m128i);
        let q = _mm256_set_m128i(
            _mm_and_si128(_mm_srli_epi16(codes, 4), low),
            _mm_and_si128(codes, low),
        );
        let p = _mm256_loadu_si256(x.p.as_ptr() as *const __m256i);
        let sums = _mm256_madd_epi16(_mm256_maddubs_epi16(q, p), ones);
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), _mm256_set1_ps(d * x.d), acc);
        offsets += m * x.s;
    }
    let half = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    let pair = _mm_add_ps(half, _mm_movehl_ps(half, half));
    let one = _mm_add_ss(pair, _mm_shuffle_ps(pair, pair, 1));
    _mm_cvtss_f32(one) + offsets
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn dot_avx2(w: &[u8], x: &[XBlock]) -> f32 {
    dot_scalar(w, x)
}

#[cfg(test)]
mod tests {
    use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
    use candle_core::{Device, Module, Tensor};

    use super::*;

    fn matrix(rows: usize, cols: usize) -> (Tensor, QTensor) {
        let w = Tensor::arange(0f32, (rows * cols) as f32, &Device::Cpu)
            .unwrap()
            .affine(0.7, 0.3)
            .unwrap()
            .sin()
            .unwrap()
            .reshape((rows, cols))
            .unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q4_1).unwrap();
        (w, q)
    }

    /// Against candle's (scalar) Q4_1 product, which quantizes `x` the same way: equal up to
    /// float rounding (candle rounds `dₓ·Σp` to f16).
    #[test]
    fn matches_candles_q4_1_product() {
        let (rows, cols, m) = (70, 96, 3);
        let (_, q) = matrix(rows, cols);
        let ours = Q4_1Matrix::new(rows, cols, q.data().unwrap().into_owned()).unwrap();
        let x = Tensor::arange(0f32, (m * cols) as f32, &Device::Cpu)
            .unwrap()
            .affine(0.31, -2.0)
            .unwrap()
            .cos()
            .unwrap()
            .reshape((m, cols))
            .unwrap();
        let got = ours.matmul(&x.flatten_all().unwrap().to_vec1::<f32>().unwrap(), m);
        let want = QMatMul::from_qtensor(q)
            .unwrap()
            .forward(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(got.len(), m * rows);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!((g - w).abs() < 2e-3 * (1.0 + w.abs()), "{i}: {g} vs {w}");
        }
        // The vectorised and scalar dot products agree.
        let xq = quantize_row(&x.get(0).unwrap().to_vec1::<f32>().unwrap());
        let row = &ours.data[..cols / BLOCK * BLOCK_BYTES];
        if has_avx2() {
            let (a, b) = (dot_scalar(row, &xq), unsafe { dot_avx2(row, &xq) });
            assert!((a - b).abs() < 1e-4 * (1.0 + a.abs()), "{a} vs {b}");
        }
    }

    #[test]
    fn refuses_data_of_the_wrong_size() {
        assert!(Q4_1Matrix::new(2, 64, vec![0; 2 * 2 * BLOCK_BYTES]).is_some());
        assert!(Q4_1Matrix::new(2, 64, vec![0; 3 * BLOCK_BYTES]).is_none());
        assert!(Q4_1Matrix::new(2, 48, vec![0; 2 * BLOCK_BYTES]).is_none());
    }
}
