//! Typed errors of the scoring layer. The binary turns them into one line and an exit code.

use std::path::PathBuf;

use dtm_plugin_api::host::PluginError;
use dtm_yaml_tasks::YamlError;

use crate::error::{LoadError, RuntimeError};

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The model failed a request (broken weights, a request it cannot encode, ...).
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// A plugin refused a call or broke its contract.
    #[error(transparent)]
    Plugin(#[from] PluginError),
    /// A YAML task file, or the data it names, that cannot be used.
    #[error(transparent)]
    Yaml(#[from] YamlError),
    /// A benchmark whose description, items or scores break the plugin contract.
    #[error("{0}")]
    Contract(String),
    /// Options (`--option`, `--num-fewshot`) a benchmark refuses.
    #[error("{0}")]
    Options(String),
    /// A call about one item failed (the plugin's or the YAML task's).
    #[error("{task}: doc {doc_id}: {call}: {source}")]
    Item {
        task: String,
        doc_id: usize,
        call: &'static str,
        source: Box<EvalError>,
    },
    /// A file that cannot be read or hashed (a data file, the plugin library).
    #[error(transparent)]
    Load(#[from] LoadError),
    /// Reading or writing the output folder failed.
    #[error("{}: {problem}: {source}", path.display())]
    Io {
        path: PathBuf,
        problem: &'static str,
        source: std::io::Error,
    },
    /// A file in the output folder that this harness did not write the way it reads it.
    #[error("{}: {problem}; delete it (or the output folder) to start over", path.display())]
    Corrupt { path: PathBuf, problem: String },
    /// The output folder holds work done with other settings or inputs.
    #[error("{} holds {what} done with other settings or inputs: {changes}; use another --output, or delete {} to redo it", dir.display(), remove.display())]
    Mismatch {
        dir: PathBuf,
        /// "a run" or "work on gsm8k".
        what: String,
        /// What changed, e.g. "limit (2, now 3)".
        changes: String,
        /// What to delete to start that part over.
        remove: PathBuf,
    },
    /// A plugin file or folder that cannot be used, or two plugins claiming one name.
    #[error("{}: {problem}", path.display())]
    PluginFile { path: PathBuf, problem: String },
    /// An `--items` list that cannot be read or names items or tasks the run does not have.
    #[error("{0}")]
    Items(String),
    /// Another process is writing the same output folder.
    #[error("{} is in use by another harness run{}; wait for it to finish or use another --output", dir.display(), holder.as_ref().map(|h| format!(" ({h})")).unwrap_or_default())]
    Locked {
        dir: PathBuf,
        holder: Option<String>,
    },
}

impl EvalError {
    pub(crate) fn io(
        path: impl Into<PathBuf>,
        problem: &'static str,
        source: std::io::Error,
    ) -> Self {
        Self::Io {
            path: path.into(),
            problem,
            source,
        }
    }

    pub(crate) fn item(task: &str, doc_id: usize, call: &'static str, source: EvalError) -> Self {
        Self::Item {
            task: task.to_owned(),
            doc_id,
            call,
            source: Box::new(source),
        }
    }
}

pub type Result<T, E = EvalError> = std::result::Result<T, E>;
