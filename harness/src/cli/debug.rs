//! `logprobs`, `loglikelihood`, `generate`: direct access to the runtime, for users checking a
//! model (or an ensemble) against another implementation.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;

use dtm_harness::engine::{Engine, GenerateRequest, LoglikelihoodRequest};

use super::ModelArgs;

#[derive(Args)]
pub struct LogprobsArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The text to score.
    #[arg(long)]
    text: String,
    /// Alternatives listed per position.
    #[arg(long, default_value_t = 5)]
    top: usize,
}

pub fn logprobs(args: LogprobsArgs) -> Result<()> {
    let models = args.model.load()?;
    let mut engine = Engine::new(models.ensemble()?, args.model.engine_options());
    let report = engine.inspect(&args.text, args.top)?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
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
) -> Result<Vec<T>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("{}:{}: cannot read", path.display(), n + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let request: T = serde_json::from_str(&line)
            .with_context(|| format!("{}:{}: expected {shape}", path.display(), n + 1))?;
        out.push(request);
    }
    if out.is_empty() {
        bail!("{}: no requests", path.display());
    }
    Ok(out)
}

pub fn loglikelihood(args: LoglikelihoodArgs) -> Result<()> {
    let requests: Vec<LoglikelihoodRequest> =
        read_requests(&args.requests, "{\"context\": …, \"continuation\": …}")?;
    let models = args.model.load()?;
    let mut engine = Engine::new(models.ensemble()?, args.model.engine_options());
    let results = engine.loglikelihood(&requests)?;
    let mut out = std::io::stdout().lock();
    for r in results {
        writeln!(
            out,
            "{}",
            json!({"logprob": r.logprob, "is_greedy": r.is_greedy, "continuation_ids": r.continuation_ids})
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
    #[arg(long, default_value_t = 32)]
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
    println!("{}", json!({"ids": g.ids, "text": g.text}));
    Ok(())
}
