//! lm-eval task YAML files as dtm benchmarks.
//!
//! A folder of `*.yaml` task files (lm-eval's format, a documented subset) becomes benchmarks the
//! harness scores like its compiled plugins: [`discover`] finds the tasks, [`YamlTask::describe`]
//! says what each one is, [`YamlTask::load`] reads its data and builds the requests, and
//! [`LoadedYamlTask::score`] scores the answers. Everything outside the subset is refused with the
//! file, line and field named.
//!
//! Modules: [`config`] (fields, `include:`), `data` (local json/csv splits), [`template`]
//! (Jinja rendering with lm-eval's semantics), `fewshot` (samplers), `filters`, `metrics`,
//! `task` (prompts and scoring), and the Python reproductions they rely on (`pyfmt`,
//! `pyrandom`).

pub mod config;
mod data;
pub mod error;
mod fewshot;
mod filters;
mod metrics;
mod node;
mod pyfmt;
mod pyrandom;
mod task;
pub mod template;

use std::path::{Path, PathBuf};

pub use error::{Origin, YamlError};
pub use task::{LoadedYamlTask, YamlTask};

/// lm-eval's default few-shot seed (`--seed`'s fourth value, `fewshot_random_seed`).
pub const DEFAULT_FEWSHOT_SEED: u64 = 1234;

/// Every `*.yaml` file under `dir` (recursively, sorted by path, as lm-eval's task index walks a
/// folder).
fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), YamlError> {
    let rd = std::fs::read_dir(dir)
        .map_err(|e| YamlError::file(dir, None, format!("cannot list the task folder: {e}")))?;
    for entry in rd {
        let p = entry
            .map_err(|e| YamlError::file(dir, None, format!("cannot list: {e}")))?
            .path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if p.is_dir() {
            if !matches!(name, "__pycache__" | ".ipynb_checkpoints") {
                yaml_files(&p, out)?;
            }
        } else if name.ends_with(".yaml") {
            out.push(p);
        }
    }
    Ok(())
}

/// The tasks of every folder in `dirs`. A file without `task:` is a base for `include:` and is
/// not a task; two tasks of one name are refused, naming both files.
pub fn discover(dirs: &[PathBuf]) -> Result<Vec<YamlTask>, YamlError> {
    let mut files = Vec::new();
    for d in dirs {
        if !d.is_dir() {
            return Err(YamlError::file(d, None, "--include-path: no such folder"));
        }
        let mut here = Vec::new();
        yaml_files(d, &mut here)?;
        here.sort();
        files.extend(here);
    }
    let mut tasks: Vec<YamlTask> = Vec::new();
    for f in files {
        if let config::FileKind::Task(config) = config::load(&f)? {
            if let Some(other) = tasks.iter().find(|t| t.config.task == config.task) {
                return Err(YamlError::field(
                    &config.origin,
                    "task",
                    format!(
                        "task {:?} is also defined by {}",
                        config.task,
                        other.config.file.display()
                    ),
                ));
            }
            tasks.push(YamlTask { config: *config });
        }
    }
    Ok(tasks)
}
