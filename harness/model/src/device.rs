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

/// Fixes the CPU thread count for the rest of the process (`RAYON_NUM_THREADS`, unless the user
/// set it), to the value candle would choose itself.
///
/// Without it candle works the count out again at every matrix product (it reads
/// `/proc/cpuinfo` each time): about 270 reads of that file per generated token of a 30-layer
/// model. Call it first thing in `main`, before any other thread exists.
pub fn pin_thread_count() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let threads = candle_core::utils::get_num_threads();
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    }
}
