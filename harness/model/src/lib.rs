//! The model runtime that `harness` (evaluation) and `trainer` (LoRA training, merging) share:
//! checkpoint loading (Hugging Face folder or GGUF), one architecture-neutral decoder whose
//! linear layers may carry LoRA adapters, the tokenisation rules, and device choice.
//!
//! Nothing here knows about benchmarks, plugins or the sandbox.

pub mod adapter;
pub mod blas;
pub mod checkpoint;
pub mod device;
pub mod error;
pub mod memory;
pub mod model;
pub mod tokenizer;
