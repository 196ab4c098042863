//! The model: an architecture-neutral config, the shared decoder and its KV cache.

pub mod config;
pub mod decoder;
pub mod fused;
mod gemv;
pub mod kernels;
pub mod kv_cache;
pub mod matmul;
pub mod projection;
mod q4_1;
pub mod quantized;

pub use config::{Architecture, ModelConfig};
pub use decoder::{Batch, Decoder, Kernels, Segments};
pub use kv_cache::KvCache;
pub use projection::{Adapter, DropoutKey, Lora, MoeLora, Projection};
