//! `trainer embed`: one text's sentence embedding, as JSON (a check on the encoder that
//! `trainer disperse --method kmeans` clusters with).

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use dtm_model::device::{device, DeviceKind};
use dtm_trainer::embed::{self, SentenceEncoder};

#[derive(Args)]
pub struct EmbedArgs {
    /// A sentence-transformers folder of the BERT family (modules.json, config.json,
    /// model.safetensors, tokenizer.json). Default: $DTM_CACHE/models/all-MiniLM-L6-v2, which
    /// `scripts/fetch-models.sh minilm` fetches.
    #[arg(long)]
    encoder: Option<PathBuf>,
    /// The text to embed.
    #[arg(long)]
    text: String,
    #[arg(long, value_enum, default_value_t = DeviceKind::Cpu)]
    device: DeviceKind,
}

pub fn run(args: EmbedArgs) -> anyhow::Result<()> {
    let (encoder, _) = load_encoder(args.encoder, args.device)?;
    let embedding = encoder.encode_one(&args.text)?;
    // A struct rather than `json!`, so that the f32 values print at f32 precision.
    #[derive(serde::Serialize)]
    struct Output {
        embedding: Vec<f32>,
    }
    println!("{}", serde_json::to_string(&Output { embedding })?);
    Ok(())
}

/// Loads the named encoder folder, or the default one with a hint on how to fetch it.
pub(super) fn load_encoder(
    dir: Option<PathBuf>,
    kind: DeviceKind,
) -> anyhow::Result<(SentenceEncoder, PathBuf)> {
    let dir = match dir {
        Some(dir) => dir,
        None => {
            let dir = embed::default_encoder_dir();
            if !dir.exists() {
                bail!(
                    "no sentence encoder at {}: run `scripts/fetch-models.sh minilm` (or pass --encoder DIR)",
                    dir.display()
                );
            }
            dir
        }
    };
    let device = device(kind)?;
    let encoder = SentenceEncoder::load(&dir, &device)
        .with_context(|| format!("cannot load the sentence encoder {}", dir.display()))?;
    Ok((encoder, dir))
}
