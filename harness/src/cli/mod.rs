//! Subcommands of `harness`.

mod bench;
mod convert;
mod data;
mod debug;
mod exec;
mod merge_shards;
mod models;
mod output;
mod report;
mod score;
mod values;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

use dtm_harness::device::{self, DeviceKind, Precision};
use dtm_harness::engine::{EngineOptions, EnsembleMode};

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
    Score(Box<score::ScoreArgs>),
    /// Join the outputs of `harness score --shard 1/N … N/N` into the run an unsharded
    /// `harness score` writes.
    MergeShards(merge_shards::MergeShardsArgs),
    /// Put `harness score` runs side by side: Table 1 with paired confidence intervals and
    /// tests against a baseline (Holm-corrected), and the paper's figures as SVG.
    Report(report::ReportArgs),
    /// List the benchmark plugins found, with version, item count on the data present, and metrics.
    List(score::ListArgs),
    /// Run a Python file in the sandbox and print the outcome as JSON.
    Exec(exec::ExecArgs),
    /// Write a checkpoint (HF folder or GGUF) as a Hugging Face folder: config.json, tokenizer
    /// files, safetensors; optionally with a LoRA adapter merged in.
    Convert(convert::ConvertArgs),
    /// Download (`fetch`) or check (`verify`) the benchmark data files against the manifest.
    #[command(subcommand)]
    Data(data::DataCommand),
}

/// How to load and run a model (or an ensemble of models); shared by every command that needs one.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// A Hugging Face checkpoint folder (config.json, safetensors, tokenizer.json) or a .gguf file.
    /// Repeat it for an ensemble: the models' distributions are combined at every scored position
    /// and every greedy generation step (see --ensemble); their tokenizers must be the same.
    #[arg(long = "model", value_name = "MODEL", required = true)]
    models: Vec<PathBuf>,
    /// An adapter folder (adapter_config.json, adapter_model.safetensors) applied on top of
    /// --model at load, unmerged: a PEFT LoRA adapter, as PEFT runs it, or a mixture of LoRA
    /// experts (peft_type LORAMOE, from `trainer sft --moe-experts`). With several --model: none,
    /// or one per --model in the same order, `none` for a model without one.
    #[arg(long = "adapter", value_name = "ADAPTER")]
    adapters: Vec<PathBuf>,
    /// How several --model are combined: `logprobs` (default) averages their log-softmax and
    /// reports it as it is; `logits` averages their logits, then takes the log-softmax.
    #[arg(long, value_enum, value_name = "MODE")]
    ensemble: Option<EnsembleMode>,
    /// Where the model runs: `cpu`, or `cuda` (the first GPU; needs a build with `--features cuda`).
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceKind,
    /// Compute precision (weights are converted at load).
    #[arg(long, value_enum, default_value = "f32")]
    dtype: Precision,
    /// Rows per forward pass (at least 1). Scoring packs short sequences several to a row (up to
    /// 256 tokens, each sequence seeing only its own tokens); generation runs one sequence a row.
    #[arg(long, default_value_t = 8, value_parser = values::at_least_one)]
    batch_size: usize,
    /// Shared-prefix KV caches kept for reuse (0 disables prefix reuse).
    #[arg(long, default_value_t = 8)]
    prefix_cache: usize,
    /// Longest input in tokens, at least 2 (default: the model's max_position_embeddings).
    #[arg(long, value_parser = values::at_least_two)]
    max_length: Option<usize>,
    /// Decode on the GGUF file's own quantized weights: products of one to three rows (greedy
    /// generation at batch sizes up to 3) multiply by them with candle's quantized matmul
    /// instead of by float copies. Faster there, not exact: log-probabilities move away from
    /// the float ones (`harness bench --quantized` measures by how much). Longer products
    /// (prompts, scoring, bigger batches) are faster in float and stay exact. Q5_0 and Q5_1,
    /// which candle has no vectorised kernel for, are re-encoded as Q8_0 at load. Every
    /// --model must be a .gguf file. Off by default; recorded in results.json and in the resume
    /// fingerprint, so quantized and float results never mix.
    #[arg(long)]
    quantized: bool,
}

impl ModelArgs {
    fn load(&self) -> Result<models::LoadedModels> {
        self.load_as(self.quantized)
    }

    /// Loads with or without quantized compute, whatever --quantized says.
    fn load_as(&self, quantized: bool) -> Result<models::LoadedModels> {
        let device = device::device(self.device)?;
        models::load(
            &self.members()?,
            self.mode(),
            self.dtype.dtype(),
            &device,
            quantized,
        )
    }

    /// Each --model with its --adapter, paired in order.
    fn members(&self) -> Result<Vec<models::Member>> {
        models::pair(&self.models, &self.adapters, self.ensemble.is_some())
    }

    /// The --model paths for people (`a + b`).
    fn describe(&self) -> String {
        self.models
            .iter()
            .map(|m| m.display().to_string())
            .collect::<Vec<_>>()
            .join(" + ")
    }

    fn mode(&self) -> EnsembleMode {
        self.ensemble.unwrap_or(EnsembleMode::Logprobs)
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
        Command::Score(a) => score::score(*a),
        Command::MergeShards(a) => merge_shards::run(a),
        Command::Report(a) => report::run(a),
        Command::List(a) => score::list(a),
        Command::Exec(a) => exec::run(a),
        Command::Convert(a) => convert::run(a),
        Command::Data(c) => data::run(c),
    }
}
