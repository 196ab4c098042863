//! The trainer: LoRA SFT, the baselines, data dispersal and merging.
//!
//! Nothing is implemented here yet; the crate exists so that the workspace has its final shape.
