//! `trainer export`: a base model with a trained LoRA adapter merged in, written as a Hugging
//! Face folder that `harness`, transformers and mergekit load without PEFT.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use dtm_model::checkpoint::export::{self, ExportOptions, ExportProgress};
use dtm_model::device::Precision;

#[derive(Args)]
pub struct ExportArgs {
    /// The base checkpoint the adapter was trained on: a Hugging Face folder or a .gguf file.
    #[arg(long)]
    model: PathBuf,
    /// The PEFT LoRA adapter folder (adapter_config.json, adapter_model.safetensors); each
    /// adapted layer becomes W + alpha/r · B·A.
    #[arg(long)]
    adapter: PathBuf,
    /// The folder to write (config.json, tokenizer files, model.safetensors); it appears only
    /// once complete.
    #[arg(long)]
    output: PathBuf,
    /// dtype of the weights written (the merge itself is computed in f32).
    #[arg(long, value_enum, default_value = "f32")]
    dtype: Precision,
    /// Split the weights into shards of at most this size (with model.safetensors.index.json).
    #[arg(long, default_value = "5GB", value_parser = export::parse_size)]
    max_shard_size: u64,
    /// Replace --output if it exists and is not empty.
    #[arg(long)]
    overwrite: bool,
}

pub fn run(args: ExportArgs) -> Result<()> {
    let options = ExportOptions {
        dtype: args.dtype.dtype(),
        max_shard_bytes: args.max_shard_size,
        overwrite: args.overwrite,
    };
    eprintln!(
        "reading {} and {}",
        args.model.display(),
        args.adapter.display()
    );
    let summary = export::export(
        &args.model,
        Some(&args.adapter),
        &args.output,
        &options,
        &mut |p| match p {
            ExportProgress::Planned {
                tensors,
                bytes,
                merged,
            } => eprintln!(
                "{tensors} tensors, {:.1} MB; adapter merged into {merged} layers",
                bytes as f64 / 1e6
            ),
            ExportProgress::Writing { file, index, total } => {
                eprintln!("writing {file} ({index}/{total})")
            }
        },
    )?;
    eprintln!(
        "wrote {} ({})",
        summary.output.display(),
        summary.files.join(", ")
    );
    Ok(())
}
