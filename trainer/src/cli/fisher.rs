//! `trainer fisher`: the diagonal empirical Fisher of a model's adapted matrices (EWC's F, and
//! each sub-model's F for DTM's Fisher merge).

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::bail;
use candle_core::DType;
use clap::Args;
use dtm_model::checkpoint::{fingerprint, load_with_adapter};
use dtm_model::device::{device, DeviceKind};
use dtm_trainer::fisher::{self, DataKind, Fisher};
use dtm_trainer::sft::peak_rss_mb;
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Args)]
pub struct FisherArgs {
    /// Checkpoint: a Hugging Face folder or a .gguf file.
    #[arg(long)]
    model: PathBuf,
    /// A PEFT adapter on top of --model: the Fisher is then the adapted model's, of its effective
    /// weights W + (alpha/r)·B·A (what DTM's Fisher merge needs). EWC needs the base model's.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Plain text — a .txt file (one document per line), a .jsonl file with a `text` field, or a
    /// folder of them (../shared/data/replay_text for EWC) — cut into --max-len-token chunks, with
    /// every token after the first a target; or SFT JSONL (Alpaca or chat records), with `trainer
    /// sft`'s targets (the response and its EOS).
    #[arg(long)]
    data: PathBuf,
    /// Output: safetensors, one float32 tensor per adapted matrix named as in the checkpoint
    /// (model.layers.0.mlp.gate_proj.weight), with metadata naming the model and data.
    #[arg(long)]
    output: PathBuf,
    /// Average over N sequences drawn at random (seeded) instead of all of them.
    #[arg(long)]
    samples: Option<usize>,
    /// Chunk length of text; SFT records longer than this are cut at the end.
    #[arg(long, default_value_t = 1024)]
    max_len: usize,
    /// The matrices, by layer name: q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "gate_proj,up_proj,down_proj"
    )]
    lora_targets: Vec<String>,
    /// SFT records without EOS appended (as in a `trainer sft --no-eos` run).
    #[arg(long)]
    no_eos: bool,
    /// Seeds the choice of --samples sequences.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// cpu, or cuda (needs a build with --features cuda).
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceKind,
}

impl FisherArgs {
    /// The Fisher stage of `trainer dtm --merge fisher`: sub-model `adapter` on its own portion,
    /// over the matrices and sequence length it was trained with.
    #[allow(clippy::too_many_arguments)]
    pub fn stage(
        model: PathBuf,
        adapter: PathBuf,
        data: PathBuf,
        output: PathBuf,
        samples: Option<usize>,
        max_len: usize,
        lora_targets: Vec<String>,
        append_eos: bool,
        seed: u64,
        device: DeviceKind,
    ) -> Self {
        Self {
            model,
            adapter: Some(adapter),
            data,
            output,
            samples,
            max_len,
            lora_targets,
            no_eos: !append_eos,
            seed,
            device,
        }
    }
}

pub fn run(args: FisherArgs) -> anyhow::Result<()> {
    if args.samples == Some(0) {
        bail!("--samples must be positive");
    }
    if args.max_len < 2 {
        bail!("--max-len must be at least 2");
    }
    let started = Instant::now();
    let device = device(args.device)?;
    let mut model = load_with_adapter(&args.model, args.adapter.as_deref(), DType::F32, &device)?;
    let modules = fisher::target_modules(&model.decoder, &args.lora_targets)?;
    let (kind, sequences) =
        fisher::read_sequences(&args.data, &model.tokenizer, args.max_len, !args.no_eos)?;
    let picked = fisher::sample(&sequences, args.samples, args.seed);
    let tokens: usize = picked.iter().map(|e| e.tokens.len()).sum();
    eprintln!(
        "Fisher of {} matrices over {} of {} {} ({tokens} tokens)",
        modules.len(),
        picked.len(),
        sequences.len(),
        match kind {
            DataKind::Text => "text chunks",
            DataKind::Sft => "SFT records",
        }
    );
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = ProgressBar::new(picked.len() as u64);
        b.set_style(
            ProgressStyle::with_template(
                "{bar:30} {pos}/{len} sequences  [{elapsed_precise} < {eta_precise}]",
            )
            .expect("valid template"),
        );
        b
    });
    let total = picked.len();
    let mut on_sequence = |done: usize| match &bar {
        Some(b) => b.set_position(done as u64),
        None if done == total || done.is_multiple_of((total / 10).max(1)) => {
            eprintln!("{done}/{total} sequences")
        }
        None => {}
    };
    let tensors = fisher::compute(&mut model.decoder, &modules, &picked, &mut on_sequence)?;
    if let Some(b) = bar {
        b.finish();
    }
    let mut metadata = BTreeMap::from([
        ("model".to_owned(), args.model.display().to_string()),
        ("model_sha256".to_owned(), fingerprint(&args.model)?),
        (
            "adapter".to_owned(),
            args.adapter
                .as_ref()
                .map(|a| a.display().to_string())
                .unwrap_or_default(),
        ),
        ("data".to_owned(), args.data.display().to_string()),
        ("sequences".to_owned(), picked.len().to_string()),
        ("tokens".to_owned(), tokens.to_string()),
        ("max_len".to_owned(), args.max_len.to_string()),
        ("lora_targets".to_owned(), args.lora_targets.join(",")),
        ("seed".to_owned(), args.seed.to_string()),
    ]);
    if let Some(adapter) = &args.adapter {
        metadata.insert("adapter_sha256".to_owned(), fingerprint(adapter)?);
    }
    fisher::save(&args.output, &Fisher { tensors, metadata })?;
    let wall_s = started.elapsed().as_secs_f64();
    eprintln!(
        "wrote {} in {wall_s:.1} s ({:.0} tokens/s), peak memory {:.0} MB",
        args.output.display(),
        tokens as f64 / wall_s,
        peak_rss_mb()
    );
    Ok(())
}
