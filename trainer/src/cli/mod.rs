//! The `trainer` command line: one subcommand per file.

mod bench;
mod data;
mod disperse;
mod dtm;
mod embed;
mod export;
mod fisher;
mod merge;
mod reproduce;
mod select;
mod sft;
mod soup;

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
    /// Merge a LoRA adapter into its base model and write a Hugging Face folder.
    Export(export::ExportArgs),
    /// Split SFT data into K portions (random, or k-means on sentence embeddings).
    Disperse(disperse::DisperseArgs),
    /// Print a text's sentence embedding (the encoder `disperse --method kmeans` uses).
    Embed(embed::EmbedArgs),
    Merge(merge::MergeArgs),
    /// Data selection by Deita scores (complexity, quality) with a scorer model.
    Select(Box<select::SelectArgs>),
    /// Disperse-Then-Merge: disperse the data, train K sub-models, merge them.
    Dtm(Box<dtm::DtmArgs>),
    /// Uniform Soup: M full-data runs with other learning rates and seeds, averaged.
    Soup(Box<soup::SoupArgs>),
    /// A whole table of the paper from one recipe: every stage from data to report, resumable,
    /// with its cost printed first (--dry-run) and as Slurm jobs (--emit-slurm).
    Reproduce(reproduce::ReproduceArgs),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Data(cmd) => data::run(cmd),
        Command::Sft(args) => sft::run(*args),
        Command::Dtm(args) => dtm::run(*args),
        Command::Soup(args) => soup::run(*args),
        Command::Bench(args) => bench::run(args),
        Command::Export(args) => export::run(args),
        Command::Disperse(args) => disperse::run(args),
        Command::Embed(args) => embed::run(args),
        Command::Merge(args) => merge::run(args),
        Command::Select(args) => select::run(*args),
        Command::Fisher(args) => fisher::run(args),
        Command::Reproduce(args) => reproduce::run(args),
    }
}
