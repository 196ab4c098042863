//! `trainer data …`

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use dtm_trainer::data::{self, mix};

#[derive(Subcommand)]
pub enum DataCommand {
    /// Build a Tulu-like mixture: COUNT records drawn (seeded, without replacement) from each
    /// named corpus, written as one JSONL with `source` and `source_index` on every record.
    Mix(MixArgs),
}

#[derive(Args)]
pub struct MixArgs {
    /// Records per source, e.g. `flan_v2_cot=400,codealpaca=200,lima=100,alpaca_gpt4=300`.
    /// Sources: flan_v2_cot, codealpaca, lima, alpaca_gpt4.
    #[arg(long, required = true)]
    counts: String,
    /// The shared data folder (default: $DTM_DATA_DIR, else ../shared/data).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output JSONL file (written atomically).
    #[arg(long)]
    output: PathBuf,
}

pub fn run(cmd: DataCommand) -> anyhow::Result<()> {
    match cmd {
        DataCommand::Mix(args) => {
            let counts = parse_counts(&args.counts)?;
            let data_dir = args
                .data_dir
                .or_else(|| std::env::var_os("DTM_DATA_DIR").map(PathBuf::from))
                .unwrap_or_else(|| PathBuf::from("../shared/data"));
            let records = mix::mix(&data_dir, &counts, args.seed)?;
            data::write_jsonl(&args.output, &records)?;
            for (name, n) in &counts {
                eprintln!("{name}: {n} records");
            }
            eprintln!(
                "wrote {} records to {}",
                records.len(),
                args.output.display()
            );
            Ok(())
        }
    }
}

pub(crate) fn parse_counts(text: &str) -> anyhow::Result<Vec<(String, usize)>> {
    let mut out: Vec<(String, usize)> = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, n) = part
            .split_once('=')
            .with_context(|| format!("--counts: {part:?} is not NAME=COUNT"))?;
        let n: usize = n
            .trim()
            .parse()
            .with_context(|| format!("--counts: {n:?} is not a count"))?;
        if n == 0 {
            bail!("--counts: {name} has count 0");
        }
        if out.iter().any(|(m, _)| m == name.trim()) {
            bail!("--counts: {name} is named twice");
        }
        out.push((name.trim().to_owned(), n));
    }
    if out.is_empty() {
        bail!("--counts names no source");
    }
    Ok(out)
}
