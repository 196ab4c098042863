//! Device and dtype choice, kept out of the model code: the algorithms take a `Device` and never
//! ask which kind it is.

use candle_core::{DType, Device};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceKind {
    Cpu,
    /// The first CUDA GPU (needs the `cuda` cargo feature).
    Cuda,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Precision {
    F32,
    Bf16,
}

impl Precision {
    pub fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::Bf16 => DType::BF16,
        }
    }
}

pub fn device(kind: DeviceKind) -> candle_core::Result<Device> {
    match kind {
        DeviceKind::Cpu => Ok(Device::Cpu),
        DeviceKind::Cuda if cfg!(feature = "cuda") => Device::new_cuda(0),
        DeviceKind::Cuda => Err(candle_core::Error::Msg(
            "this harness was built without CUDA; rebuild with `cargo build --release --features cuda`".into(),
        )),
    }
}

/// Fixes the CPU threads for the rest of the process; call it first thing in `main`, before
/// any other thread exists. Variables the user set are left alone.
///
/// - `RAYON_NUM_THREADS` (matrix products, the model's own parallel loops) to the value candle
///   would choose itself: without it candle works the count out again at every matrix product,
///   reading `/proc/cpuinfo` each time, about 270 times per generated token of a 30-layer model.
/// - `CANDLE_NUM_THREADS=1`: candle's second pool (element-wise operations, quantized products)
///   waits for its workers by spinning, and on a machine shared with other processes that wait
///   outlasts the work whenever a worker is descheduled (measured: 61% of the time of quantized
///   generation). The element-wise work is small next to the products, which keep every thread.
/// - The calling thread becomes one of rayon's threads: the many small parallel products of
///   decoding then run partly on it, instead of handing all of it to the workers and sleeping
///   until they are done (quantized generation at batch 1: 96 instead of 70 tokens/s, same
///   machine and load; float32 unchanged, with less CPU time).
pub fn pin_thread_count() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let threads = candle_core::utils::get_num_threads();
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    }
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    let threads = candle_core::utils::get_num_threads();
    // With one thread the pool would be the caller alone, and work handed to rayon from another
    // thread would wait for it: keep rayon's own worker then.
    if threads > 1 {
        // Fails only if the pool exists already; it then stays as it is.
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .use_current_thread()
            .build_global();
    }
}
