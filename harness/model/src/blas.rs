//! An optional BLAS for float32/float64 matrix products on the CPU, opened at run time.
//!
//! candle's CPU matmul (the pure-Rust `gemm` crate) reaches about 0.75× OpenBLAS's speed on one
//! core and scales worse across cores. Nothing is linked: `scripts/fetch-openblas.sh` installs
//! a pinned, hash-checked OpenBLAS (PyPI's `scipy-openblas32` wheel) into the model cache and
//! this module opens it on first use; without it every product runs on candle's matmul, so the
//! build and the results do not depend on it (only the speed does).
//!
//! Which library: `DTM_BLAS` names a shared library exporting the CBLAS interface with 32-bit
//! integers (`cblas_sgemm`/`cblas_dgemm`, or `scipy_`-prefixed as the wheel names them), or
//! `off` for candle's matmul; otherwise `$DTM_CACHE/lib/libscipy_openblas.so` (`DTM_CACHE`
//! defaults to `~/.cache/dtm`) when it exists. `DTM_BLAS_CORETYPE` picks OpenBLAS's kernels
//! (default: its AVX-512 ones where the CPU has AVX-512; see `prepare_openblas_environment`).
//!
//! Threads: the library is held to one thread per call and [`Blas::gemm`] splits a product over
//! rayon's pool, so BLAS threads never compete with (or spin beside) the pool that runs every
//! other operation.

use std::ffi::c_int;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use rayon::prelude::*;

/// Why a BLAS could not be used.
#[derive(Debug, thiserror::Error)]
pub enum BlasError {
    #[error("cannot open BLAS library {path}: {source}")]
    Open {
        path: PathBuf,
        source: libloading::Error,
    },
    #[error("BLAS library {path} exports no `{symbol}` (nor `scipy_{symbol}`): not a CBLAS with 32-bit integers")]
    Symbol { path: PathBuf, symbol: &'static str },
}

const ROW_MAJOR: c_int = 101;
const NO_TRANS: c_int = 111;
const TRANS: c_int = 112;

type Gemm<T> = unsafe extern "C" fn(
    order: c_int,
    trans_a: c_int,
    trans_b: c_int,
    m: c_int,
    n: c_int,
    k: c_int,
    alpha: T,
    a: *const T,
    lda: c_int,
    b: *const T,
    ldb: c_int,
    beta: T,
    c: *mut T,
    ldc: c_int,
);
type Gemv<T> = unsafe extern "C" fn(
    order: c_int,
    trans: c_int,
    m: c_int,
    n: c_int,
    alpha: T,
    a: *const T,
    lda: c_int,
    x: *const T,
    incx: c_int,
    beta: T,
    y: *mut T,
    incy: c_int,
);
type SetThreads = unsafe extern "C" fn(c_int);
type CoreName = unsafe extern "C" fn() -> *const std::ffi::c_char;

/// An opened CBLAS.
pub struct Blas {
    path: PathBuf,
    sgemm: Gemm<f32>,
    dgemm: Gemm<f64>,
    sgemv: Gemv<f32>,
    dgemv: Gemv<f64>,
    core: Option<String>,
    /// Keeps the functions above mapped.
    _library: libloading::Library,
}

impl std::fmt::Debug for Blas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blas")
            .field("path", &self.path)
            .field("core", &self.core)
            .finish()
    }
}

/// The element types a BLAS multiplies.
pub trait BlasFloat: Copy + Send + Sync + 'static {
    fn gemm(blas: &Blas) -> Gemm<Self>;
    fn gemv(blas: &Blas) -> Gemv<Self>;
    const ZERO: Self;
    const ONE: Self;
}

impl BlasFloat for f32 {
    fn gemm(blas: &Blas) -> Gemm<f32> {
        blas.sgemm
    }
    fn gemv(blas: &Blas) -> Gemv<f32> {
        blas.sgemv
    }
    const ZERO: f32 = 0.0;
    const ONE: f32 = 1.0;
}

impl BlasFloat for f64 {
    fn gemm(blas: &Blas) -> Gemm<f64> {
        blas.dgemm
    }
    fn gemv(blas: &Blas) -> Gemv<f64> {
        blas.dgemv
    }
    const ZERO: f64 = 0.0;
    const ONE: f64 = 1.0;
}

/// One operand: element `(i, j)` of the matrix sits at `data[offset + i·row + j·col]`.
#[derive(Debug, Clone, Copy)]
pub struct Operand {
    pub offset: usize,
    pub row: usize,
    pub col: usize,
}

/// One `[m, k] × [k, n]` product into a row-major `[m, n]` block of the output at `out_offset`.
#[derive(Debug, Clone, Copy)]
pub struct Product {
    pub a: Operand,
    pub b: Operand,
    pub out_offset: usize,
}

/// Below this many multiply-adds a product is not worth handing to another thread.
const MIN_PARALLEL_WORK: usize = 1 << 18;

impl Blas {
    /// Opens a CBLAS shared library and holds it to one thread per call.
    pub fn open(path: &Path) -> Result<Self, BlasError> {
        // SAFETY: loading a library runs its initialisers; the libraries this is meant for
        // (OpenBLAS builds) only set up their own state.
        let library =
            unsafe { libloading::Library::new(path) }.map_err(|source| BlasError::Open {
                path: path.to_owned(),
                source,
            })?;
        // SAFETY: the symbols are looked up under their CBLAS names, whose C signatures the
        // function types above spell out.
        unsafe {
            let sgemm = *symbol::<Gemm<f32>>(&library, path, "cblas_sgemm")?;
            let dgemm = *symbol::<Gemm<f64>>(&library, path, "cblas_dgemm")?;
            let sgemv = *symbol::<Gemv<f32>>(&library, path, "cblas_sgemv")?;
            let dgemv = *symbol::<Gemv<f64>>(&library, path, "cblas_dgemv")?;
            if let Ok(set) = symbol::<SetThreads>(&library, path, "openblas_set_num_threads") {
                set(1);
            }
            let core = symbol::<CoreName>(&library, path, "openblas_get_corename")
                .ok()
                .map(|f| f())
                .filter(|p| !p.is_null())
                .map(|p| std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned());
            Ok(Self {
                path: path.to_owned(),
                sgemm,
                dgemm,
                sgemv,
                dgemv,
                core,
                _library: library,
            })
        }
    }

    /// The process-wide library (see the module notes), opened on first use; `None` means
    /// candle's matmul. A library named by `DTM_BLAS` that cannot be opened is reported once on
    /// stderr, then candle's matmul is used.
    pub fn global() -> Option<&'static Blas> {
        static GLOBAL: OnceLock<Option<Blas>> = OnceLock::new();
        GLOBAL
            .get_or_init(|| {
                let path = match std::env::var_os("DTM_BLAS") {
                    Some(v) if v == "off" || v.is_empty() => return None,
                    Some(v) => PathBuf::from(v),
                    None => {
                        let default = default_path()?;
                        if !default.exists() {
                            return None;
                        }
                        default
                    }
                };
                prepare_openblas_environment();
                match Blas::open(&path) {
                    Ok(blas) => Some(blas),
                    Err(e) => {
                        eprintln!("warning: {e}; using candle's matmul");
                        None
                    }
                }
            })
            .as_ref()
    }

    /// What runs the CPU's float32/float64 matrix products, for reports: the library and its
    /// kernels, or candle's matmul.
    pub fn describe() -> String {
        match Blas::global() {
            Some(b) => format!(
                "BLAS {} ({} kernels)",
                b.path.display(),
                b.core().unwrap_or("unknown")
            ),
            None => "candle's matmul".to_owned(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The kernel family OpenBLAS chose for this CPU (e.g. `Haswell`), when it says.
    pub fn core(&self) -> Option<&str> {
        self.core.as_deref()
    }

    /// `out[p] = a[p] · b[p]` for every product `p` (each `[m, k] × [k, n]`, written row-major
    /// with `n` columns), split over rayon's pool. Operands whose last two strides are neither
    /// row- nor column-major must be copied by the caller first ([`Blas::supports`]). Every
    /// element of every output block is written (`out` may start uninitialised).
    ///
    /// # Safety
    /// Every operand's elements lie within its slice, the output blocks lie within `out` and do
    /// not overlap, and `m`, `n`, `k` fit in a C `int`.
    pub unsafe fn gemm<T: BlasFloat>(
        &self,
        (m, n, k): (usize, usize, usize),
        a: &[T],
        b: &[T],
        out: &mut [std::mem::MaybeUninit<T>],
        products: &[Product],
    ) {
        if m == 0 || n == 0 {
            return;
        }
        // Each product is cut into `pieces` row (or column) ranges so that every thread gets
        // the same share of the work: the smallest count that makes products × pieces a
        // multiple of the threads, unless the work is too small to share.
        let threads = rayon::current_num_threads().max(1);
        let work = products.len() * m * n * k.max(1);
        let shared = threads > 1 && work >= MIN_PARALLEL_WORK;
        let pieces = if !shared {
            1
        } else {
            threads / gcd(products.len(), threads)
        };
        let split_rows = m >= n || m >= pieces * 4;
        let along = if split_rows { m } else { n };
        let pieces = pieces.min(along);
        let tasks: Vec<(usize, std::ops::Range<usize>)> = (0..products.len())
            .flat_map(|p| {
                (0..pieces).map(move |i| (p, along * i / pieces..along * (i + 1) / pieces))
            })
            .filter(|(_, r)| !r.is_empty())
            .collect();
        let out = SendPtr(out.as_mut_ptr().cast::<T>());
        let run = |&(p, ref range): &(usize, std::ops::Range<usize>)| {
            let prod = &products[p];
            let (mut a_off, mut b_off, mut out_off) =
                (prod.a.offset, prod.b.offset, prod.out_offset);
            let (rows, cols) = if split_rows {
                a_off += range.start * prod.a.row;
                out_off += range.start * n;
                (range.len(), n)
            } else {
                b_off += range.start * prod.b.col;
                out_off += range.start;
                (m, range.len())
            };
            // SAFETY: the caller guarantees the operands and disjoint output blocks; the
            // ranges cut each block into disjoint pieces.
            unsafe {
                self.gemm_one(
                    (rows, cols, k),
                    (a.as_ptr().add(a_off), prod.a),
                    (b.as_ptr().add(b_off), prod.b),
                    out.get().add(out_off),
                    n,
                )
            }
        };
        if !shared {
            // One thread, or too little work to be worth waking another.
            tasks.iter().for_each(run);
        } else {
            tasks.par_iter().for_each(run);
        }
    }

    /// One product on the calling thread.
    unsafe fn gemm_one<T: BlasFloat>(
        &self,
        (m, n, k): (usize, usize, usize),
        (a, a_op): (*const T, Operand),
        (b, b_op): (*const T, Operand),
        out: *mut T,
        ldc: usize,
    ) {
        if k == 0 {
            for i in 0..m {
                for j in 0..n {
                    out.add(i * ldc + j).write(T::ZERO);
                }
            }
            return;
        }
        // With beta = 0 the library writes C without reading it.
        if m == 1 {
            // One row: a matrix-vector product reads B once, where GEMM would first repack it
            // (OpenBLAS: 4–10× slower for a [1, 576] × [576, 49152] output head).
            let (tb, ldb) = leading(b_op, k, n);
            // y = Bᵀ·x: B row-major [k, n] is read transposed; B column-major is [n, k] as is.
            let (trans, rows, cols) = if tb == NO_TRANS {
                (TRANS, k, n)
            } else {
                (NO_TRANS, n, k)
            };
            (T::gemv(self))(
                ROW_MAJOR,
                trans,
                rows as c_int,
                cols as c_int,
                T::ONE,
                b,
                ldb,
                a,
                a_op.col.max(1) as c_int,
                T::ZERO,
                out,
                1,
            );
            return;
        }
        let (ta, lda) = leading(a_op, m, k);
        let (tb, ldb) = leading(b_op, k, n);
        (T::gemm(self))(
            ROW_MAJOR,
            ta,
            tb,
            m as c_int,
            n as c_int,
            k as c_int,
            T::ONE,
            a,
            lda,
            b,
            ldb,
            T::ZERO,
            out,
            ldc as c_int,
        );
    }

    /// Whether an `[rows, cols]` operand with these strides can be handed over as it is.
    pub fn supports(op: Operand, rows: usize, cols: usize) -> bool {
        row_major(op, rows, cols).is_some() || col_major(op, rows, cols).is_some()
    }
}

/// Transposition flag and leading dimension of an operand that [`Blas::supports`].
fn leading(op: Operand, rows: usize, cols: usize) -> (c_int, c_int) {
    match row_major(op, rows, cols) {
        Some(ld) => (NO_TRANS, ld as c_int),
        None => (
            TRANS,
            col_major(op, rows, cols).expect("operand layout checked by the caller") as c_int,
        ),
    }
}

/// The leading dimension if rows are contiguous (a stride of a length-1 axis does not matter).
fn row_major(op: Operand, rows: usize, cols: usize) -> Option<usize> {
    if cols > 1 && op.col != 1 {
        return None;
    }
    let ld = if rows > 1 { op.row } else { cols };
    (ld >= cols.max(1)).then_some(ld.max(1))
}

/// The leading dimension if columns are contiguous.
fn col_major(op: Operand, rows: usize, cols: usize) -> Option<usize> {
    if rows > 1 && op.row != 1 {
        return None;
    }
    let ld = if cols > 1 { op.col } else { rows };
    (ld >= rows.max(1)).then_some(ld.max(1))
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a.max(1)
    } else {
        gcd(b, a % b)
    }
}

/// An output pointer shared by the threads that write disjoint parts of it.
#[derive(Clone, Copy)]
struct SendPtr<T>(*mut T);
// SAFETY: every task writes its own block (see `Blas::gemm`).
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    fn get(self) -> *mut T {
        self.0
    }
}

/// Looks `name` up, then `scipy_name` (how the scipy-openblas wheels prefix their exports).
unsafe fn symbol<'l, T>(
    library: &'l libloading::Library,
    path: &Path,
    name: &'static str,
) -> Result<libloading::Symbol<'l, T>, BlasError> {
    library
        .get::<T>(name.as_bytes())
        .or_else(|_| library.get::<T>(format!("scipy_{name}").as_bytes()))
        .map_err(|_| BlasError::Symbol {
            path: path.to_owned(),
            symbol: name,
        })
}

/// Settings OpenBLAS reads once, while it loads, and only from the environment.
///
/// - `OPENBLAS_NUM_THREADS=1`: [`Blas::gemm`] brings its own threads; this keeps OpenBLAS from
///   starting (and spinning) a pool of its own.
/// - `OPENBLAS_CORETYPE`: `DTM_BLAS_CORETYPE` when set, else `SkylakeX` on CPUs with AVX-512 (F,
///   BW, DQ, VL), else whatever the environment says (OpenBLAS then detects the CPU). OpenBLAS
///   0.3.34 runs AMD Zen 4/5 on its AVX2 (Haswell) kernels, half the speed of its AVX-512 ones on
///   a Zen 5 core (125 vs 250 GFLOP/s for SmolLM2's projections), and machine images often pin
///   `OPENBLAS_CORETYPE=Haswell` for numpy's sake; dtm's choice is its own.
fn prepare_openblas_environment() {
    let core = std::env::var("DTM_BLAS_CORETYPE")
        .ok()
        .or_else(|| has_avx512().then(|| "SkylakeX".to_owned()));
    // The library reads these with C's getenv while it loads, so they must be in the process
    // environment. Setting them races only with C code reading the environment on another
    // thread at this instant (Rust's own readers take std's lock).
    std::env::set_var("OPENBLAS_NUM_THREADS", "1");
    if let Some(core) = core {
        std::env::set_var("OPENBLAS_CORETYPE", core);
    }
}

#[cfg(target_arch = "x86_64")]
fn has_avx512() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512dq")
        && std::arch::is_x86_feature_detected!("avx512vl")
}

#[cfg(not(target_arch = "x86_64"))]
fn has_avx512() -> bool {
    false
}

/// `$DTM_CACHE/lib/libscipy_openblas.so`, where `scripts/fetch-openblas.sh` puts it.
pub fn default_path() -> Option<PathBuf> {
    let cache = match std::env::var_os("DTM_CACHE") {
        Some(c) => PathBuf::from(c),
        None => PathBuf::from(std::env::var_os("HOME")?).join(".cache/dtm"),
    };
    Some(cache.join("lib").join(library_file_name()))
}

fn library_file_name() -> &'static str {
    if cfg!(target_os = "macos") {
        "libscipy_openblas.dylib"
    } else if cfg!(target_os = "windows") {
        "libscipy_openblas.dll"
    } else {
        "libscipy_openblas.so"
    }
}
