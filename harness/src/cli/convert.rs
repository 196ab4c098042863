//! `harness convert`: any checkpoint the harness loads, written as a Hugging Face folder.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use dtm_harness::checkpoint::export::{self, ExportOptions, ExportProgress};
use dtm_harness::device::Precision;

#[derive(Args)]
pub struct ConvertArgs {
    /// The checkpoint: a Hugging Face folder or a .gguf file (GGUF weights are dequantised).
    #[arg(long)]
    model: PathBuf,
    /// The folder to write (config.json, generation_config.json, tokenizer.json,
    /// tokenizer_config.json, model.safetensors); it appears only once complete.
    #[arg(long)]
    output: PathBuf,
    /// A PEFT LoRA adapter folder to merge into the weights (W + alpha/r · B·A).
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// dtype of the weights written.
    #[arg(long, value_enum, default_value = "f32")]
    dtype: Precision,
    /// Split the weights into shards of at most this size (with model.safetensors.index.json).
    #[arg(long, default_value = "5GB", value_parser = export::parse_size)]
    max_shard_size: u64,
    /// Replace --output if it exists and is not empty.
    #[arg(long)]
    overwrite: bool,
}

pub fn run(args: ConvertArgs) -> Result<()> {
    let options = ExportOptions {
        dtype: args.dtype.dtype(),
        max_shard_bytes: args.max_shard_size,
        overwrite: args.overwrite,
    };
    eprintln!("reading {}", args.model.display());
    let summary = export::export(
        &args.model,
        args.adapter.as_deref(),
        &args.output,
        &options,
        &mut print_progress,
    )?;
    eprintln!(
        "wrote {} ({} tensors, {:.1} MB; {})",
        summary.output.display(),
        summary.tensors,
        summary.bytes as f64 / 1e6,
        summary.files.join(", ")
    );
    Ok(())
}

fn print_progress(p: ExportProgress) {
    match p {
        ExportProgress::Planned {
            tensors,
            bytes,
            merged,
        } => eprintln!(
            "{tensors} tensors, {:.1} MB{}",
            bytes as f64 / 1e6,
            if merged > 0 {
                format!(", adapter merged into {merged} layers")
            } else {
                String::new()
            }
        ),
        ExportProgress::Writing { file, index, total } => {
            eprintln!("writing {file} ({index}/{total})")
        }
    }
}
