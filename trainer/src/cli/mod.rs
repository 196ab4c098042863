//! The `trainer` command line: one subcommand per file.

mod bench;
mod data;
mod fisher;
mod sft;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "trainer",
    version,
    about = "LoRA instruction tuning, the paper's baselines, Disperse-Then-Merge and model merging",
    long_about = "LoRA instruction tuning, the paper's baselines, Disperse-Then-Merge and model merging.\n\n\
        Models are Hugging Face folders (config.json, safetensors, tokenizer.json) or GGUF files; \
        everything written is read back by `harness score` and by PEFT/transformers."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Instruction data: build mixtures from the shared corpora.
    #[command(subcommand)]
    Data(data::DataCommand),
    /// LoRA instruction tuning (the paper's Vanilla SFT); writes a PEFT adapter.
    Sft(Box<sft::SftArgs>),
    /// The diagonal empirical Fisher of the adapted weight matrices (for EWC and Fisher merging).
    Fisher(fisher::FisherArgs),
    /// Speed and peak memory of LoRA training steps on random token batches.
    Bench(bench::BenchArgs),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Data(cmd) => data::run(cmd),
        Command::Sft(args) => sft::run(*args),
        Command::Bench(args) => bench::run(args),
        Command::Fisher(args) => fisher::run(args),
    }
}
