//! Errors of YAML tasks: every one names the file, the line and the field when there is one.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where a value was written: a file and a 1-based line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub file: Arc<PathBuf>,
    pub line: usize,
}

impl Origin {
    pub fn new(file: &Path, line: usize) -> Self {
        Origin {
            file: Arc::new(file.to_owned()),
            line,
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum YamlError {
    /// A problem in a task file, at a field.
    #[error("{origin}: {field}: {message}")]
    Field {
        origin: Origin,
        field: String,
        message: String,
    },
    /// A problem in a task file not tied to one field (syntax, a missing file).
    #[error("{path}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    File {
        path: PathBuf,
        line: Option<usize>,
        message: String,
    },
    /// A problem with one document of the data (a template that fails on it, a target out of
    /// range); `doc` is its 0-based position in its split.
    #[error("{task}: {split} document {doc}: {message}")]
    Doc {
        task: String,
        split: String,
        doc: usize,
        message: String,
    },
    /// A problem while scoring.
    #[error("{task}: {message}")]
    Task { task: String, message: String },
}

impl YamlError {
    pub fn field(origin: &Origin, field: &str, message: impl Into<String>) -> Self {
        YamlError::Field {
            origin: origin.clone(),
            field: field.to_owned(),
            message: message.into(),
        }
    }

    pub fn file(path: &Path, line: Option<usize>, message: impl Into<String>) -> Self {
        YamlError::File {
            path: path.to_owned(),
            line,
            message: message.into(),
        }
    }
}

pub type Result<T, E = YamlError> = std::result::Result<T, E>;
