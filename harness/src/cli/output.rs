//! How the binary reports: writing to stdout without panicking on a closed pipe, one error line
//! without repeated causes, and an exit code per kind of failure.

use std::io::Write;
use std::path::PathBuf;

use dtm_harness::data::DataError;
use dtm_harness::engine::EnsembleError;
use dtm_harness::error::{LoadError, RuntimeError};
use dtm_harness::evaluate::error::EvalError;
use dtm_harness::report::ReportError;
use dtm_plugin_api::host::PluginError;
use dtm_yaml_tasks::YamlError;

/// Failures the command line itself detects.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Flags or task names that do not make a valid command (exit 2).
    #[error("{0}")]
    Usage(String),
    /// An input that cannot be used (exit 3).
    #[error("{0}")]
    BadInput(String),
    /// Some tasks failed; the others' results are written (exit 1).
    #[error("{failed} of {total} tasks failed (see the errors above; results.json lists them under \"errors\"); the results of the others are in {}", dir.display())]
    TasksFailed {
        failed: usize,
        total: usize,
        dir: PathBuf,
    },
}

/// Writes one line to stdout; a closed pipe comes back as an error (see [`is_broken_pipe`]).
pub fn print_line(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")?;
    out.flush()?;
    Ok(())
}

/// Whether the failure is stdout's reader having gone away.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// The error and its causes on one line, leaving out a cause whose text the line already holds
/// (typed errors often print their source themselves).
pub fn message(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        let text = text.trim();
        if text.is_empty() || line.contains(text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(text);
    }
    line
}

const TASKS_FAILED: u8 = 1;
const USAGE: u8 = 2;
const BAD_INPUT: u8 = 3;
const INTERNAL: u8 = 4;

fn runtime_code(e: &RuntimeError) -> u8 {
    match e {
        RuntimeError::Candle(_) => INTERNAL,
        _ => BAD_INPUT,
    }
}

/// The exit code for a failure: the kind of its first cause that has one.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if let Some(c) = cause.downcast_ref::<CliError>() {
            return match c {
                CliError::Usage(_) => USAGE,
                CliError::BadInput(_) => BAD_INPUT,
                CliError::TasksFailed { .. } => TASKS_FAILED,
            };
        }
        if let Some(e) = cause.downcast_ref::<EvalError>() {
            return match e {
                EvalError::Runtime(r) => runtime_code(r),
                EvalError::Options(_) => USAGE,
                _ => BAD_INPUT,
            };
        }
        if let Some(r) = cause.downcast_ref::<RuntimeError>() {
            return runtime_code(r);
        }
        if let Some(r) = cause.downcast_ref::<ReportError>() {
            return match r {
                ReportError::Usage(_) => USAGE,
                ReportError::Plot { .. } => INTERNAL,
                _ => BAD_INPUT,
            };
        }
        if cause.is::<LoadError>()
            || cause.is::<PluginError>()
            || cause.is::<DataError>()
            || cause.is::<YamlError>()
            || cause.is::<EnsembleError>()
            || cause.is::<dtm_sandbox::SandboxError>()
            || cause.is::<std::io::Error>()
        {
            return BAD_INPUT;
        }
    }
    INTERNAL
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_already_in_the_line_is_not_repeated() {
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, "file too short");
        let e = anyhow::Error::new(io).context("x.so: file too short");
        assert_eq!(message(&e), "x.so: file too short");
        let e = anyhow::anyhow!("root cause").context("reading x");
        assert_eq!(message(&e), "reading x: root cause");
    }

    #[test]
    fn exit_codes_follow_the_kind_of_failure() {
        assert_eq!(exit_code(&CliError::Usage("x".into()).into()), 2);
        assert_eq!(exit_code(&CliError::BadInput("x".into()).into()), 3);
        let partial = CliError::TasksFailed {
            failed: 1,
            total: 2,
            dir: "out".into(),
        };
        assert_eq!(exit_code(&partial.into()), 1);
        assert_eq!(exit_code(&LoadError::new("m", "bad").into()), 3);
        assert_eq!(exit_code(&anyhow::anyhow!("a bug")), 4);
        let candle = RuntimeError::Candle(candle_core::Error::Msg("x".into()));
        assert_eq!(exit_code(&EvalError::Runtime(candle).into()), 4);
    }
}
