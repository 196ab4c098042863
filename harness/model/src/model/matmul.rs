//! The decoder's matrix products: one op that runs on a BLAS on the CPU when one is installed
//! (see [`crate::blas`]) and on candle's matmul otherwise (and on every other device).
//!
//! Its backward pass returns gradients only for operands that take part in a graph: a frozen
//! weight (a plain tensor) gets none, so training with LoRA does not compute the weight
//! gradients candle's matmul would compute and throw away; a weight made a `Var` (the Fisher of
//! EWC) gets its gradient as usual.

use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

use crate::blas::{Blas, BlasFloat, Operand, Product};

/// `a · b` over the last two dimensions, batched over the leading ones (which must be equal),
/// as `Tensor::matmul`.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (ad, bd) = (a.dims(), b.dims());
    let rank = ad.len();
    if rank < 2
        || bd.len() != rank
        || ad[..rank - 2] != bd[..rank - 2]
        || ad[rank - 1] != bd[rank - 2]
    {
        return Err(candle_core::Error::ShapeMismatchBinaryOp {
            lhs: a.shape().clone(),
            rhs: b.shape().clone(),
            op: "matmul",
        }
        .bt());
    }
    if ad.iter().chain(bd).any(|&d| d == 0) {
        // An empty product, or one over k = 0 (zeros); nothing to differentiate.
        let mut shape = ad.to_vec();
        shape[rank - 1] = bd[rank - 1];
        return Tensor::zeros(shape, a.dtype(), a.device());
    }
    let plain = |t: &Tensor| -> Result<Tensor> {
        if Batched::of(t.layout()).is_some() {
            Ok(t.clone())
        } else {
            t.contiguous()
        }
    };
    plain(a)?.apply_op2_arc(&plain(b)?, Arc::new(Box::new(MatMul)))
}

/// `x · wᵀ` for a weight `w: [out, in]` and any `x: [.., in]`, run as one `[tokens, in]`
/// product and recorded as one graph node (reshapes around a matmul would each add a
/// gradient accumulation to the backward pass). `w` gets a gradient only when it is in a graph.
pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (out, inp) = w.dims2()?;
    let dims = x.dims();
    if dims.last() != Some(&inp) {
        return Err(candle_core::Error::ShapeMismatchBinaryOp {
            lhs: x.shape().clone(),
            rhs: w.shape().clone(),
            op: "linear",
        }
        .bt());
    }
    let mut shape = dims.to_vec();
    *shape.last_mut().expect("checked above") = out;
    if x.elem_count() == 0 || w.elem_count() == 0 {
        return Tensor::zeros(shape, x.dtype(), x.device());
    }
    let x = if rows_view(x.layout()).is_some() {
        x.clone()
    } else {
        x.contiguous()?
    };
    let w = if Batched::of(w.layout()).is_some() {
        w.clone()
    } else {
        w.contiguous()?
    };
    x.apply_op2_arc(&w, Arc::new(Box::new(Linear)))
}

/// `x · wᵀ` for a model weight, on the fastest kernel that applies: the weight's quantized copy
/// for a few rows of inference (see [`super::quantized`]), the threaded one-row kernel when
/// decoding without a BLAS (see [`super::gemv`]), else [`linear`]. Every linear layer and the
/// output head go through here.
pub(crate) fn weight_product(
    x: &Tensor,
    w: &Tensor,
    quantized: Option<&super::quantized::QuantizedWeight>,
) -> Result<Tensor> {
    match quantized.filter(|_| super::quantized::applies(x)) {
        Some(q) => q.forward(&x.contiguous()?),
        None if super::gemv::applies(x, w) => super::gemv::row_times_weight_t(x, w),
        None => linear(x, w),
    }
}

/// `[.., in]` seen as one `[rows, in]` matrix, when the leading dimensions nest into one stride
/// and the matrix is row- or column-major.
fn rows_view(layout: &Layout) -> Option<Batched> {
    let (dims, strides) = (layout.dims(), layout.stride());
    let (&cols, leading) = dims.split_last()?;
    let col = strides[dims.len() - 1];
    let rows: usize = leading.iter().product();
    let mut row = None;
    let mut expected = None;
    for (&d, &s) in leading.iter().zip(strides).rev() {
        if d == 1 {
            continue;
        }
        match expected {
            None => row = Some(s),
            Some(e) if e == s => {}
            Some(_) => return None,
        }
        expected = Some(s * d);
    }
    let view = Layout::new(
        Shape::from((rows, cols)),
        vec![row.unwrap_or(cols), col],
        layout.start_offset(),
    );
    Batched::of(&view)
}

/// The op behind [`linear`]: `[.., in] × [out, in]ᵀ`.
struct Linear;

impl Linear {
    fn shapes(&self, l1: &Layout, l2: &Layout) -> Result<(Batched, Batched, Shape)> {
        let (Some(x), Some(w)) = (rows_view(l1), Batched::of(&l2.transpose(0, 1)?)) else {
            candle_core::bail!("linear: operand layouts {l1:?} and {l2:?} were not prepared");
        };
        let mut out = l1.dims().to_vec();
        *out.last_mut().expect("rank checked") = w.cols;
        Ok((x, w, Shape::from(out)))
    }
}

impl CustomOp2 for Linear {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w, shape) = self.shapes(l1, l2)?;
        Ok((cpu_product(s1, s2, &x, &w)?, shape))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (x, w, shape) = self.shapes(l1, l2)?;
        let storage = s1.matmul(s2, (1, x.rows, w.cols, x.cols), &x.layout(), &w.layout())?;
        Ok((storage, shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // Computed from detached operands: gradients are plain values holding no graph.
        let (out, inp) = w.dims2()?;
        let g = grad.detach().reshape(((), out))?;
        let gx = if x.track_op() {
            Some(matmul(&g, &w.detach())?.reshape(x.shape())?)
        } else {
            None
        };
        let gw = if w.track_op() {
            let flat = x.detach().reshape(((), inp))?;
            Some(matmul(&g.t()?, &flat)?)
        } else {
            None
        };
        Ok((gx, gw))
    }
}

/// A `[.., m, k] × [.., k, n]` product of prepared operands on the CPU: BLAS when loaded and
/// the dtype is float32/float64, candle's matmul otherwise.
fn cpu_product(s1: &CpuStorage, s2: &CpuStorage, a: &Batched, b: &Batched) -> Result<CpuStorage> {
    Ok(match (Blas::global(), s1, s2) {
        (Some(blas), CpuStorage::F32(x), CpuStorage::F32(y)) => {
            CpuStorage::F32(blas_matmul(blas, x, y, (a, b))?)
        }
        (Some(blas), CpuStorage::F64(x), CpuStorage::F64(y)) => {
            CpuStorage::F64(blas_matmul(blas, x, y, (a, b))?)
        }
        _ => s1.matmul(
            s2,
            (a.batch, a.rows, b.cols, a.cols),
            &a.layout(),
            &b.layout(),
        )?,
    })
}

/// An operand seen as `[batch, rows, cols]`: batch `i` starts at `start + i·skip`.
#[derive(Debug, Clone, Copy)]
struct Batched {
    batch: usize,
    rows: usize,
    cols: usize,
    start: usize,
    skip: usize,
    row: usize,
    col: usize,
}

impl Batched {
    /// `None` when the batch dimensions do not collapse to one stride or the matrices are
    /// neither row- nor column-major (such an operand is copied first).
    fn of(layout: &Layout) -> Option<Self> {
        let (dims, strides) = (layout.dims(), layout.stride());
        let rank = dims.len();
        if rank < 2 {
            return None;
        }
        let (rows, cols) = (dims[rank - 2], dims[rank - 1]);
        let (row, col) = (strides[rank - 2], strides[rank - 1]);
        // Size-1 batch dimensions carry no stride; the rest must nest.
        let mut skip = None;
        let mut expected = None;
        for (&d, &s) in dims[..rank - 2].iter().zip(&strides[..rank - 2]).rev() {
            if d == 1 {
                continue;
            }
            match expected {
                None => skip = Some(s),
                Some(e) if e == s => {}
                Some(_) => return None,
            }
            expected = Some(s * d);
        }
        let batch = dims[..rank - 2].iter().product();
        let op = Operand {
            offset: 0,
            row,
            col,
        };
        Blas::supports(op, rows, cols).then_some(Self {
            batch,
            rows,
            cols,
            start: layout.start_offset(),
            skip: skip.unwrap_or(rows * cols),
            row,
            col,
        })
    }

    /// The same view as a rank-3 layout, as candle's own matmul takes it.
    fn layout(&self) -> Layout {
        Layout::new(
            Shape::from((self.batch, self.rows, self.cols)),
            vec![self.skip, self.row, self.col],
            self.start,
        )
    }

    fn operand(&self, i: usize) -> Operand {
        Operand {
            offset: self.start + i * self.skip,
            row: self.row,
            col: self.col,
        }
    }
}

/// The op behind [`matmul`]. Its operands have passed [`Batched::of`].
struct MatMul;

impl MatMul {
    fn shapes(&self, l1: &Layout, l2: &Layout) -> Result<(Batched, Batched, Shape)> {
        let (Some(a), Some(b)) = (Batched::of(l1), Batched::of(l2)) else {
            candle_core::bail!("matmul: operand layouts {l1:?} and {l2:?} were not prepared");
        };
        let mut out = l1.dims().to_vec();
        *out.last_mut().expect("rank checked") = b.cols;
        Ok((a, b, Shape::from(out)))
    }
}

fn blas_matmul<T: BlasFloat>(
    blas: &Blas,
    a: &[T],
    b: &[T],
    (la, lb): (&Batched, &Batched),
) -> Result<Vec<T>> {
    let (m, k, n) = (la.rows, la.cols, lb.cols);
    let fits = |x: usize| x <= i32::MAX as usize;
    if !(fits(m) && fits(n) && fits(k) && fits(la.row.max(la.col)) && fits(lb.row.max(lb.col))) {
        candle_core::bail!("matmul: [{m}, {k}] × [{k}, {n}] is too large for a 32-bit BLAS");
    }
    let products: Vec<Product> = (0..la.batch)
        .map(|i| Product {
            a: la.operand(i),
            b: lb.operand(i),
            out_offset: i * m * n,
        })
        .collect();
    let len = la.batch * m * n;
    let mut out = Vec::with_capacity(len);
    // SAFETY: `Batched::of` read every operand from a layout of a storage that holds it, and
    // the output blocks are the disjoint row-major `[m, n]` matrices that tile `out`, each
    // written in full by `gemm`.
    unsafe {
        blas.gemm(
            (m, n, k),
            a,
            b,
            &mut out.spare_capacity_mut()[..len],
            &products,
        );
        out.set_len(len);
    }
    Ok(out)
}

impl CustomOp2 for MatMul {
    fn name(&self) -> &'static str {
        "matmul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (a, b, shape) = self.shapes(l1, l2)?;
        Ok((cpu_product(s1, s2, &a, &b)?, shape))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (a, b, shape) = self.shapes(l1, l2)?;
        let storage = s1.matmul(
            s2,
            (a.batch, a.rows, b.cols, a.cols),
            &a.layout(),
            &b.layout(),
        )?;
        Ok((storage, shape))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // Gradients are plain values: computed from detached operands, they hold no graph.
        let rank = a.rank();
        let grad = grad.detach();
        let ga = if a.track_op() {
            Some(matmul(&grad, &b.detach().transpose(rank - 2, rank - 1)?)?)
        } else {
            None
        };
        let gb = if b.track_op() {
            Some(matmul(&a.detach().transpose(rank - 2, rank - 1)?, &grad)?)
        } else {
            None
        };
        Ok((ga, gb))
    }
}
