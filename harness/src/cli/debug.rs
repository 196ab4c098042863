//! `logprobs`, `loglikelihood`, `generate`: direct access to the runtime, for users checking a
//! model (or an ensemble) against another implementation.

use std::io::BufRead;
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use serde_json::json;

use dtm_harness::engine::{Engine, GenerateRequest, LoglikelihoodRequest};

use super::output::{print_line, CliError};
use super::{values, ModelArgs};

#[derive(Args)]
pub struct LogprobsArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The text to score.
    #[arg(long)]
    text: String,
    /// Alternatives listed per position (at least 1).
    #[arg(long, default_value_t = 5, value_parser = values::at_least_one)]
    top: usize,
}

pub fn logprobs(args: LogprobsArgs) -> Result<()> {
    let models = args.model.load()?;
    let mut engine = Engine::new(models.ensemble()?, args.model.engine_options());
    let report = engine.inspect(&args.text, args.top)?;
    print_line(&serde_json::to_string(&report)?)
}

#[derive(Args)]
pub struct LoglikelihoodArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// JSONL, one `{"context": …, "continuation": …}` per line.
    #[arg(long)]
    requests: PathBuf,
}

/// Reads JSONL requests; an error names the file and the line. `shape` describes one line.
pub(super) fn read_requests<T: serde::de::DeserializeOwned>(
    path: &PathBuf,
    shape: &str,
) -> Result<Vec<T>, CliError> {
    let bad = |problem: String| CliError::BadInput(format!("{}: {problem}", path.display()));
    let file = std::fs::File::open(path).map_err(|e| bad(format!("cannot open: {e}")))?;
    let mut out = Vec::new();
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| bad(format!("line {}: cannot read: {e}", n + 1)))?;
        if line.trim().is_empty() {
            continue;
        }
        let request: T = serde_json::from_str(&line).map_err(|e| {
            CliError::BadInput(format!(
                "{}:{}: expected {shape} ({e})",
                path.display(),
                n + 1
            ))
        })?;
        out.push(request);
    }
    if out.is_empty() {
        return Err(bad("no requests".into()));
    }
    Ok(out)
}

pub fn loglikelihood(args: LoglikelihoodArgs) -> Result<()> {
    let requests: Vec<LoglikelihoodRequest> =
        read_requests(&args.requests, "{\"context\": …, \"continuation\": …}")?;
    let models = args.model.load()?;
    let mut engine = Engine::new(models.ensemble()?, args.model.engine_options());
    let results = engine.loglikelihood(&requests)?;
    for r in results {
        print_line(
            &json!({"logprob": r.logprob, "is_greedy": r.is_greedy, "continuation_ids": r.continuation_ids})
                .to_string(),
        )?;
    }
    Ok(())
}

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The prompt.
    #[arg(long)]
    text: String,
    /// Tokens to generate at most (at least 1).
    #[arg(long, default_value_t = 32, value_parser = values::at_least_one)]
    max_new_tokens: usize,
    /// Stop strings (repeatable); the text is cut before the first one.
    #[arg(long)]
    until: Vec<String>,
}

pub fn generate(args: GenerateArgs) -> Result<()> {
    let models = args.model.load()?;
    let mut engine = Engine::new(models.ensemble()?, args.model.engine_options());
    let request = GenerateRequest {
        context: args.text,
        until: args.until,
        max_new_tokens: args.max_new_tokens,
    };
    let g = engine.generate_until(&[request])?.remove(0);
    print_line(&json!({"ids": g.ids, "text": g.text}).to_string())
}
