//! The trainer: LoRA instruction tuning (the paper's Vanilla SFT) on the decoder that `harness`
//! scores, the Table 1 baselines, data dispersal and model merging.
//!
//! Model code lives in `dtm-model`; this crate holds the training recipes and the parts they
//! compose (data, optimiser, schedules, checkpoints).

pub mod baselines;
pub mod data;
pub mod disperse;
pub mod embed;
pub mod fisher;
pub mod lora;
pub mod loss;
pub mod merge;
pub mod moe;
pub mod optim;
pub mod pipeline;
pub mod select;
pub mod sft;
