//! Typed errors of the runtime. Only the binary turns them into text for people.

use std::path::Path;

/// A checkpoint, tokenizer or config that cannot be used, with the file it came from.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {problem}")]
pub struct LoadError {
    pub file: String,
    pub problem: String,
}

impl LoadError {
    pub fn new(file: impl AsRef<str>, problem: impl Into<String>) -> Self {
        Self {
            file: file.as_ref().to_owned(),
            problem: problem.into(),
        }
    }

    pub fn at(path: &Path, problem: impl Into<String>) -> Self {
        Self::new(path.display().to_string(), problem)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("tensor computation failed: {}", first_line(.0))]
    Candle(#[from] candle_core::Error),
    #[error("tokenizer failed: {0}")]
    Tokenizer(String),
    #[error("{0}")]
    Request(String),
    /// NaN or infinite logits: broken weights, or values that overflow the compute dtype.
    #[error("{model}: the model produced non-finite logits (NaN or infinity): its weights are broken or overflow in this dtype")]
    NonFiniteLogits { model: String },
}

pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

/// candle's errors append a backtrace when RUST_BACKTRACE is set; people need the first line.
pub fn first_line(e: &impl std::fmt::Display) -> String {
    e.to_string().lines().next().unwrap_or("").trim().to_owned()
}
