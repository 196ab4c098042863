//! What can go wrong while building a report.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{path}: cannot read")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: cannot write")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A file that is there but not what `harness score` (or `trainer sft`) writes.
    #[error("{path}:{line}: {problem}")]
    Malformed {
        path: PathBuf,
        line: usize,
        problem: String,
    },
    /// Files that each parse but disagree with each other.
    #[error("{path}: {problem}")]
    Inconsistent { path: PathBuf, problem: String },
    /// Arguments that cannot work together (an unknown baseline, a bad run name, …).
    #[error("{0}")]
    Usage(String),
    /// Runs that may not be compared; one line per (task, method).
    #[error(
        "runs that differ are refused (pass --allow-mismatch to compare the items they share):\n  {}",
        .0.join("\n  ")
    )]
    Mismatch(Vec<String>),
    #[error("plot {file}: {message}")]
    Plot { file: String, message: String },
}
