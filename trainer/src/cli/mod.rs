//! The `trainer` command line: one subcommand per file.

mod data;
mod merge;

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
    Merge(merge::MergeArgs),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Data(cmd) => data::run(cmd),
        Command::Merge(args) => merge::run(args),
    }
}
