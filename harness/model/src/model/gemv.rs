//! `x·Wᵀ` for a single row `x`, the shape of every linear layer and of the output head while
//! decoding one sequence, with the output features split across the CPU threads.
//!
//! candle's CPU matmul hands a one-row product to gemm's matrix–vector kernel, which runs on one
//! thread: greedy generation at batch 1 used one core. Here each thread runs that same kernel
//! on its share of the weight's rows, so every output is computed exactly as before (same kernel,
//! same order of summation), only in parallel.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// gemm gives a one-row product of at most this many outputs to a different kernel (its small
/// "horizontal" one), so every share here is larger: each output is then computed by the same
/// matrix–vector kernel, in the same order, as an unsplit product would compute it.
const SMALL_PRODUCT: usize = 16 * 16;

/// Work items per thread, so that a thread slowed by another process hands work to the others.
const ITEMS_PER_THREAD: usize = 4;

/// `x·Wᵀ` for `x: [1, in]`, `w: [out, in]` → `[1, out]`, without a backward pass.
pub(crate) fn row_times_weight_t(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    x.contiguous()?
        .apply_op1_no_bwd(&RowTimesWeightT { weight: w.clone() })
}

/// Whether [`row_times_weight_t`] applies: one row on the CPU, no gradient to record, and no
/// BLAS loaded (a BLAS splits one-row products across the threads itself, see
/// [`crate::blas::Blas::gemm`]).
pub(crate) fn applies(x: &Tensor, w: &Tensor) -> bool {
    let rows: usize = x.dims()[..x.rank().saturating_sub(1)].iter().product();
    rows == 1
        && x.rank() >= 2
        && x.device().is_cpu()
        && !x.track_op()
        && !w.track_op()
        && crate::blas::Blas::global().is_none()
}

struct RowTimesWeightT {
    /// `[out, in]`.
    weight: Tensor,
}

impl RowTimesWeightT {
    /// `(in, out)`, checked against the input's layout.
    fn dims(&self, layout: &Layout) -> Result<(usize, usize)> {
        let (out, inp) = self.weight.dims2()?;
        let k = *layout.dims().last().unwrap_or(&0);
        if k != inp || layout.shape().elem_count() != k {
            candle_core::bail!(
                "one-row matmul: input {:?} does not match a weight of {inp} features",
                layout.shape()
            );
        }
        Ok((inp, out))
    }

    fn out_shape(layout: &Layout, out: usize) -> Shape {
        let mut dims = layout.dims().to_vec();
        *dims.last_mut().expect("rank checked") = out;
        Shape::from(dims)
    }
}

impl CustomOp1 for RowTimesWeightT {
    fn name(&self) -> &'static str {
        "one-row-matmul"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (k, n) = self.dims(layout)?;
        let (w, w_layout) = self.weight.storage_and_layout();
        let candle_core::Storage::Cpu(w) = &*w else {
            candle_core::bail!("one-row matmul: weight and input are on different devices");
        };
        let Some((w_start, _)) = w_layout.contiguous_offsets() else {
            candle_core::bail!("one-row matmul: the weight must be contiguous");
        };
        let x_layout = Layout::contiguous_with_offset((1, k), layout.start_offset());
        // Rows `first..first + count` of W, transposed: [in, count] with strides (1, in).
        let chunk = |first: usize, count: usize| -> Result<CpuStorage> {
            let wt =
                Layout::contiguous_with_offset((count, k), w_start + first * k).transpose(0, 1)?;
            storage.matmul(w, (1, 1, count, k), &x_layout, &wt)
        };
        // rayon rather than candle's spinning barrier pool: on a machine shared with other
        // processes a spinning wait for a descheduled worker costs whole time slices, 200
        // times per token (measured: 7x slower than not splitting at all under load).
        let threads = rayon::current_num_threads();
        let items = (n / (SMALL_PRODUCT + 1)).min(threads * ITEMS_PER_THREAD);
        if threads == 1 || items < 2 || !matches!(storage, CpuStorage::F32(_)) {
            return Ok((chunk(0, n)?, Self::out_shape(layout, n)));
        }
        // `items` nearly equal shares of the output, each above SMALL_PRODUCT.
        let (base, extra) = (n / items, n % items);
        let mut dst = vec![0f32; n];
        let mut shares: Vec<(usize, &mut [f32])> = Vec::with_capacity(items);
        let (mut rest, mut first) = (dst.as_mut_slice(), 0);
        for item in 0..items {
            let len = base + usize::from(item < extra);
            let (head, tail) = rest.split_at_mut(len);
            shares.push((first, head));
            first += len;
            rest = tail;
        }
        shares.into_par_iter().try_for_each(|(first, out)| {
            match chunk(first, out.len())? {
                CpuStorage::F32(v) => out.copy_from_slice(&v),
                _ => candle_core::bail!("one-row matmul: expected float32"),
            }
            Ok(())
        })?;
        Ok((CpuStorage::F32(dst), Self::out_shape(layout, n)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (k, n) = self.dims(layout)?;
        let (w, w_layout) = self.weight.storage_and_layout();
        let candle_core::Storage::Cuda(w) = &*w else {
            candle_core::bail!("one-row matmul: weight and input are on different devices");
        };
        let Some((w_start, _)) = w_layout.contiguous_offsets() else {
            candle_core::bail!("one-row matmul: the weight must be contiguous");
        };
        let x_layout = Layout::contiguous_with_offset((1, k), layout.start_offset());
        let wt = Layout::contiguous_with_offset((n, k), w_start).transpose(0, 1)?;
        let y = storage.matmul(w, (1, 1, n, k), &x_layout, &wt)?;
        Ok((y, Self::out_shape(layout, n)))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::*;

    /// Bit for bit what candle's own matmul gives, at sizes that split into uneven chunks.
    #[test]
    fn equals_candle_matmul_exactly() {
        let d = Device::Cpu;
        for (out, inp) in [
            (1000, 576),
            (49, 33),
            (256, 8),
            (3 * SMALL_PRODUCT + 7, 64),
            (49152, 64),
        ] {
            let w = Tensor::arange(0f32, (out * inp) as f32, &d)
                .unwrap()
                .affine(0.37, 0.0)
                .unwrap()
                .sin()
                .unwrap()
                .reshape((out, inp))
                .unwrap();
            let x = Tensor::arange(0f32, inp as f32, &d)
                .unwrap()
                .affine(1.3, 0.1)
                .unwrap()
                .cos()
                .unwrap()
                .reshape((1, 1, inp))
                .unwrap();
            // With a BLAS loaded, one-row products go to it instead.
            assert_eq!(applies(&x, &w), crate::blas::Blas::global().is_none());
            let got = row_times_weight_t(&x, &w).unwrap();
            assert_eq!(got.dims(), [1, 1, out]);
            let want = x
                .reshape((1, inp))
                .unwrap()
                .matmul(&w.t().unwrap())
                .unwrap();
            assert_eq!(
                got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                want.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                "{out}×{inp}"
            );
        }
        let two_rows = Tensor::zeros((2, 8), candle_core::DType::F32, &d).unwrap();
        assert!(!applies(
            &two_rows,
            &Tensor::zeros((4, 8), candle_core::DType::F32, &d).unwrap()
        ));
    }
}
