//! Without a BLAS the matmul op runs on candle's matmul, with the same results; a library that
//! cannot be used is an error naming it. (Its own test binary: the process-wide library is
//! chosen once, from `DTM_BLAS`, before the first product.)

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use dtm_model::blas::{Blas, BlasError};
use dtm_model::model::matmul::matmul;

#[test]
fn a_missing_library_falls_back_to_candle() {
    let missing = "/nonexistent/libopenblas-for-dtm-tests.so";
    std::env::set_var("DTM_BLAS", missing);
    assert!(Blas::global().is_none(), "a missing library is not used");
    assert_eq!(Blas::describe(), "candle's matmul");

    let err = Blas::open(Path::new(missing)).unwrap_err();
    assert!(matches!(err, BlasError::Open { .. }));
    assert!(err.to_string().contains(missing), "{err}");
    // A library that exists but is no CBLAS (the C maths library).
    let err = Blas::open(Path::new("libm.so.6")).unwrap_err();
    assert!(
        matches!(
            err,
            BlasError::Symbol {
                symbol: "cblas_sgemm",
                ..
            }
        ),
        "{err}"
    );

    // Products still come out right, by hand: [[1, 2, 3], [4, 5, 6]] · [[1, 0], [0, 1], [1, 1]].
    for dtype in [DType::F32, DType::F64] {
        let a = Tensor::new(&[[1f64, 2., 3.], [4., 5., 6.]], &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let b = Tensor::new(&[[1f64, 0.], [0., 1.], [1., 1.]], &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let y: Vec<Vec<f64>> = matmul(&a, &b)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_vec2()
            .unwrap();
        assert_eq!(y, vec![vec![4.0, 5.0], vec![10.0, 11.0]]);
        // Transposed operand and a batch, through candle's matmul.
        let y: Vec<Vec<f64>> = matmul(&b.t().unwrap(), &a.t().unwrap())
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_vec2()
            .unwrap();
        assert_eq!(y, vec![vec![4.0, 10.0], vec![5.0, 11.0]]);
        let y = matmul(&a.unsqueeze(0).unwrap(), &b.unsqueeze(0).unwrap()).unwrap();
        assert_eq!(y.dims(), [1, 2, 2]);
    }
}
