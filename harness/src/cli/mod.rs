//! Subcommands of `harness`.

mod bench;
mod data;
mod debug;
mod exec;
mod output;
mod score;
mod values;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

use dtm_harness::checkpoint::{self, LoadedModel};
use dtm_harness::device::{self, DeviceKind, Precision};
use dtm_harness::engine::EngineOptions;

pub use output::{exit_code, is_broken_pipe, message};

/// What the exit status means; printed by `--help`.
pub const EXIT_CODES: &str = "Exit status: 0 success; 1 some tasks failed, the results of the others are written; \
2 usage error (bad flags or task names); 3 bad input (a model, data file, plugin or output folder that cannot be used); \
4 internal error.";

#[derive(Parser)]
#[command(name = "harness", version, about = "Evaluate language models the way research papers do", long_about = None, after_help = EXIT_CODES)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Per-token log-probabilities and top-5 alternatives of a text, as JSON.
    Logprobs(debug::LogprobsArgs),
    /// Score (context, continuation) pairs from a JSONL file; one JSON line per request.
    Loglikelihood(debug::LoglikelihoodArgs),
    /// Greedy continuation of a text, as JSON.
    Generate(debug::GenerateArgs),
    /// Measure tokens per second for batched loglikelihood (with and without prefix reuse) and
    /// greedy generation.
    Bench(bench::BenchArgs),
    /// Score a model on benchmarks; writes results.json, samples.jsonl, results.csv, results.md.
    #[command(after_help = EXIT_CODES)]
    Score(score::ScoreArgs),
    /// List the benchmark plugins found, with version, item count on the data present, and metrics.
    List(score::ListArgs),
    /// Run a Python file in the sandbox and print the outcome as JSON.
    Exec(exec::ExecArgs),
    /// Download (`fetch`) or check (`verify`) the benchmark data files against the manifest.
    #[command(subcommand)]
    Data(data::DataCommand),
}

/// How to load and run a model; shared by every command that needs one.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// A Hugging Face checkpoint folder (config.json, safetensors, tokenizer.json) or a .gguf file.
    #[arg(long)]
    model: PathBuf,
    /// Where the model runs: `cpu`, or `cuda` (the first GPU; needs a build with `--features cuda`).
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceKind,
    /// Compute precision (weights are converted at load).
    #[arg(long, value_enum, default_value = "f32")]
    dtype: Precision,
    /// Sequences per forward pass (at least 1).
    #[arg(long, default_value_t = 8, value_parser = values::at_least_one)]
    batch_size: usize,
    /// Shared-prefix KV caches kept for reuse (0 disables prefix reuse).
    #[arg(long, default_value_t = 8)]
    prefix_cache: usize,
    /// Longest input in tokens, at least 2 (default: the model's max_position_embeddings).
    #[arg(long, value_parser = values::at_least_two)]
    max_length: Option<usize>,
}

impl ModelArgs {
    fn load(&self) -> Result<LoadedModel> {
        let device = device::device(self.device)?;
        Ok(checkpoint::load(&self.model, self.dtype.dtype(), &device)?)
    }

    fn engine_options(&self) -> EngineOptions {
        EngineOptions {
            batch_size: self.batch_size,
            prefix_cache_entries: self.prefix_cache,
            max_length: self.max_length,
        }
    }
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Logprobs(a) => debug::logprobs(a),
        Command::Loglikelihood(a) => debug::loglikelihood(a),
        Command::Generate(a) => debug::generate(a),
        Command::Bench(a) => bench::run(a),
        Command::Score(a) => score::score(a),
        Command::List(a) => score::list(a),
        Command::Exec(a) => exec::run(a),
        Command::Data(c) => data::run(c),
    }
}
