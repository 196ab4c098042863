//! The decoder's matmul op on the installed OpenBLAS against products computed here in float64
//! (and against candle's own matmul and its gradients), on the layouts the decoder produces and
//! on awkward ones. The library is part of the set-up (`scripts/fetch-openblas.sh`, run by
//! `scripts/setup.sh` and CI); its absence fails these tests loudly rather than skipping them.

use candle_core::{DType, Device, IndexOp, Tensor, Var};
use dtm_model::blas::Blas;
use dtm_model::model::matmul::{linear, matmul};

fn blas() -> &'static Blas {
    Blas::global().unwrap_or_else(|| {
        panic!(
            "\n\n*** These tests need OpenBLAS at {} — run `scripts/fetch-openblas.sh` first (or set DTM_BLAS). ***\n",
            dtm_model::blas::default_path().unwrap().display()
        )
    })
}

/// Reproducible values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f64> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f64 / (1u64 << 52) as f64 - 1.0
        })
        .collect()
}

fn tensor(shape: &[usize], seed: u64, dtype: DType) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(values(n, seed), shape, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

/// The product of every batch of `a: [.., m, k]` and `b: [.., k, n]`, summed in float64 here.
fn reference(a: &Tensor, b: &Tensor) -> Vec<f64> {
    let (ad, bd) = (a.dims().to_vec(), b.dims().to_vec());
    let r = ad.len();
    let (m, k, n) = (ad[r - 2], ad[r - 1], bd[r - 1]);
    let batch: usize = ad[..r - 2].iter().product();
    let flat = |t: &Tensor, rows, cols| -> Vec<f64> {
        t.to_dtype(DType::F64)
            .unwrap()
            .reshape((batch, rows, cols))
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    let (x, y) = (flat(a, m, k), flat(b, k, n));
    let mut out = vec![0.0; batch * m * n];
    for p in 0..batch {
        for i in 0..m {
            for j in 0..n {
                out[(p * m + i) * n + j] = (0..k)
                    .map(|l| x[(p * m + i) * k + l] * y[(p * k + l) * n + j])
                    .sum();
            }
        }
    }
    out
}

fn assert_close(got: &Tensor, want: &[f64], what: &str) {
    let got: Vec<f64> = got
        .to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(got.len(), want.len(), "{what}: size");
    let tol = if what.contains("F64") { 1e-12 } else { 1e-5 };
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{what}: element {i}: {g} vs {w}"
        );
    }
}

fn check(a: &Tensor, b: &Tensor, what: &str) {
    let what = format!("{what} {:?}", a.dtype());
    let got = matmul(a, b).unwrap();
    let mut shape = a.dims().to_vec();
    *shape.last_mut().unwrap() = b.dim(b.rank() - 1).unwrap();
    assert_eq!(got.dims(), shape.as_slice(), "{what}: shape");
    let want = reference(a, b);
    assert_close(&got, &want, &what);
    // candle's own matmul (where it accepts the layout) agrees as well.
    if let Ok(theirs) = a.matmul(b) {
        assert_close(&theirs, &want, &format!("{what} (candle)"));
    }
}

#[test]
fn blas_products_equal_float64_sums_on_odd_shapes() {
    blas();
    for dtype in [DType::F32, DType::F64] {
        for (i, &(m, k, n)) in [
            (1, 1, 1),
            (1, 7, 1),
            (3, 5, 7),
            (17, 33, 65),
            (130, 257, 70),
            // one row, many columns: split across threads by columns
            (1, 300, 4099),
            // many rows: split by rows
            (513, 64, 300),
        ]
        .iter()
        .enumerate()
        {
            let a = tensor(&[m, k], 2 * i as u64, dtype);
            let b = tensor(&[k, n], 2 * i as u64 + 1, dtype);
            check(&a, &b, &format!("[{m},{k}]x[{k},{n}]"));
        }
    }
}

#[test]
fn transposed_strided_and_broadcast_operands() {
    blas();
    for dtype in [DType::F32, DType::F64] {
        // Transposed views (a weight read as Wᵀ, keys as Kᵀ).
        let a = tensor(&[40, 30], 1, dtype);
        let w = tensor(&[50, 30], 2, dtype);
        check(&a, &w.t().unwrap(), "x·Wᵀ");
        check(&a.t().unwrap(), &tensor(&[40, 20], 3, dtype), "aᵀ·b");
        // One row (a matrix-vector product) against both weight orientations, and a row read
        // with a stride.
        let row = tensor(&[1, 30], 15, dtype);
        check(&row, &w.t().unwrap(), "one row · Wᵀ");
        check(&row, &tensor(&[30, 70], 16, dtype), "one row · B");
        let column = tensor(&[30, 3], 17, dtype)
            .narrow(1, 1, 1)
            .unwrap()
            .t()
            .unwrap();
        check(&column, &w.t().unwrap(), "strided row · Wᵀ");
        check(
            &tensor(&[3, 1, 30], 18, dtype),
            &tensor(&[3, 30, 2000], 19, dtype),
            "batched rows",
        );
        // Column windows: rows further apart than their length.
        let wide = tensor(&[40, 100], 4, dtype);
        check(
            &wide.narrow(1, 10, 30).unwrap(),
            &w.t().unwrap(),
            "narrowed lhs",
        );
        let wide_b = tensor(&[30, 90], 5, dtype);
        check(&a, &wide_b.narrow(1, 3, 50).unwrap(), "narrowed rhs");
        // Neither rows nor columns contiguous: copied first.
        let every_other = tensor(&[40, 60], 6, dtype)
            .reshape((40, 30, 2))
            .unwrap()
            .i((.., .., 0))
            .unwrap();
        check(&every_other, &w.t().unwrap(), "stride-2 columns");
        // Batch dimensions: attention's [batch, heads, q, d] × [batch, heads, d, k].
        let q = tensor(&[2, 3, 11, 8], 7, dtype);
        let k = tensor(&[2, 3, 13, 8], 8, dtype);
        check(&q, &k.t().unwrap(), "q·kᵀ");
        // Heads swapped into place (non-contiguous batch, collapsible after a copy).
        let x = tensor(&[2, 11, 3, 8], 9, dtype).transpose(1, 2).unwrap();
        check(&x, &k.t().unwrap(), "transposed batch");
        // One weight broadcast over the batch (stride 0).
        let wb = w.t().unwrap().broadcast_as((4, 30, 50)).unwrap();
        check(&tensor(&[4, 6, 30], 10, dtype), &wb, "broadcast rhs");
        // A batch of one and a batch of size-1 dimensions.
        check(
            &tensor(&[1, 1, 5, 4], 11, dtype),
            &tensor(&[1, 1, 4, 6], 12, dtype),
            "unit batch",
        );
        // Empty and k = 0 products.
        check(
            &tensor(&[0, 4], 13, dtype),
            &tensor(&[4, 3], 14, dtype),
            "no rows",
        );
        let z = matmul(
            &Tensor::zeros((3, 0), dtype, &Device::Cpu).unwrap(),
            &Tensor::zeros((0, 2), dtype, &Device::Cpu).unwrap(),
        )
        .unwrap();
        assert_close(&z, &[0.0; 6], &format!("k = 0 {dtype:?}"));
    }
}

#[test]
fn work_is_shared_evenly_on_any_number_of_threads() {
    blas();
    // Three products on two, three and five threads: each is cut so that every thread gets
    // a share; the result must not depend on the cut.
    let a = tensor(&[3, 70, 90], 1, DType::F32);
    let b = tensor(&[3, 90, 110], 2, DType::F32);
    let want = reference(&a, &b);
    for threads in [1, 2, 3, 5] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let got = pool.install(|| matmul(&a, &b).unwrap());
        assert_close(&got, &want, &format!("{threads} threads"));
    }
}

#[test]
fn mismatched_shapes_are_errors() {
    let a = tensor(&[3, 4], 1, DType::F32);
    assert!(matmul(&a, &tensor(&[5, 2], 2, DType::F32)).is_err());
    assert!(matmul(&a, &tensor(&[1, 4, 2], 2, DType::F32)).is_err());
    assert!(matmul(&tensor(&[4], 3, DType::F32), &a).is_err());
}

#[test]
fn gradients_match_candles_and_skip_frozen_operands() {
    blas();
    let dtype = DType::F64;
    let a = Var::from_tensor(&tensor(&[2, 5, 7], 1, dtype)).unwrap();
    let b = Var::from_tensor(&tensor(&[2, 7, 4], 2, dtype)).unwrap();
    let w = tensor(&[2, 5, 4], 3, dtype);
    let ours = (matmul(a.as_tensor(), b.as_tensor()).unwrap() * &w)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let theirs = (a.as_tensor().matmul(b.as_tensor()).unwrap() * &w)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    for v in [&a, &b] {
        let want = theirs.get(v.as_tensor()).unwrap();
        let want: Vec<f64> = want.flatten_all().unwrap().to_vec1().unwrap();
        assert_close(ours.get(v.as_tensor()).unwrap(), &want, "gradient F64");
    }
    // A frozen weight: the input gets its gradient, the weight none at all.
    let x = Var::from_tensor(&tensor(&[6, 7], 4, dtype)).unwrap();
    let frozen = tensor(&[3, 7], 5, dtype);
    let y = linear(x.as_tensor(), &frozen).unwrap();
    let grads = y.sum_all().unwrap().backward().unwrap();
    assert!(grads.get(&frozen).is_none());
    // d(Σ x·Wᵀ)/dx = 1·W: every row is the column sums of Wᵀ, i.e. Σ over W's rows.
    let col_sums: Vec<f64> = frozen.sum(0).unwrap().to_vec1().unwrap();
    let want: Vec<f64> = (0..6).flat_map(|_| col_sums.clone()).collect();
    assert_close(
        grads.get(x.as_tensor()).unwrap(),
        &want,
        "linear input gradient F64",
    );
}

#[test]
fn the_library_reports_what_it_is() {
    let blas = blas();
    assert!(blas.path().exists());
    // OpenBLAS names the kernels it picked for this CPU, and reports say so.
    assert!(blas.core().is_some_and(|c| !c.is_empty()), "{blas:?}");
    let said = Blas::describe();
    assert!(said.contains(&*blas.path().to_string_lossy()), "{said}");
    assert!(said.contains(blas.core().unwrap()), "{said}");
}

#[test]
fn linear_layers_on_any_rank_and_their_gradients() {
    blas();
    for dtype in [DType::F32, DType::F64] {
        let w = tensor(&[7, 5], 1, dtype);
        // [2, 3, 5], a transposed (non-nesting) [3, 2, 5] and a single vector [5].
        let x = tensor(&[2, 3, 5], 2, dtype);
        let xt = x.transpose(0, 1).unwrap();
        for (x, name) in [
            (x.clone(), "3-d"),
            (xt, "transposed"),
            (tensor(&[5], 3, dtype), "vector"),
        ] {
            let got = linear(&x, &w).unwrap();
            let mut shape = x.dims().to_vec();
            *shape.last_mut().unwrap() = 7;
            assert_eq!(got.dims(), shape.as_slice(), "{name}");
            let flat = x.reshape(((), 5)).unwrap();
            let want = reference(&flat, &w.t().unwrap());
            assert_close(&got, &want, &format!("linear {name} {dtype:?}"));
        }
    }
    // Gradients of both operands against candle's own matmul.
    let x = Var::from_tensor(&tensor(&[2, 3, 5], 4, DType::F64)).unwrap();
    let w = Var::from_tensor(&tensor(&[7, 5], 5, DType::F64)).unwrap();
    let g = tensor(&[2, 3, 7], 6, DType::F64);
    let ours = (linear(x.as_tensor(), w.as_tensor()).unwrap() * &g)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let theirs = (x
        .as_tensor()
        .broadcast_matmul(&w.as_tensor().t().unwrap())
        .unwrap()
        * &g)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    for v in [&x, &w] {
        let want: Vec<f64> = theirs
            .get(v.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_close(
            ours.get(v.as_tensor()).unwrap(),
            &want,
            "linear gradient F64",
        );
    }
}
