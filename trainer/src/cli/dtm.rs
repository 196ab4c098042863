//! `trainer dtm`: Disperse-Then-Merge end to end — disperse the data into K portions, train one
//! LoRA sub-model per portion from the same base and the same initialisation (the same --seed
//! draws the same LoRA init), merge them, and write the merged model as a Hugging Face folder.
//!
//! Every stage leaves a completion mark (assignments.json, each sub-model's adapter, the merged
//! config.json), so a killed run started again continues where it stopped and a finished
//! sub-model is never retrained. `--only J` trains sub-model J alone (a cluster array job).

use std::path::{Path, PathBuf};

use anyhow::bail;
use clap::Args;
use dtm_model::device::{device, DeviceKind};
use dtm_trainer::disperse::EmbedField;
use dtm_trainer::pipeline::{self, MergeSettings};
use serde_json::json;

use dtm_trainer::sft::SftConfig;

use super::disperse::{self, DisperseArgs};
use super::fisher::{self, FisherArgs};
use super::sft::{progress_printer, SftOptions};

#[derive(Args)]
pub struct DtmArgs {
    /// Base checkpoint: a Hugging Face folder or a .gguf file.
    #[arg(long)]
    model: PathBuf,
    /// The full SFT data (JSONL).
    #[arg(long)]
    data: PathBuf,
    /// Number of portions and sub-models.
    #[arg(long, default_value_t = 4)]
    k: usize,
    /// Dispersal: random (the paper's main result) or kmeans on sentence embeddings.
    #[arg(long, default_value = "random")]
    method: String,
    /// kmeans only: embed the instruction, the response or both.
    #[arg(long, value_enum)]
    embed: Option<EmbedField>,
    /// kmeans only: the sentence encoder folder.
    #[arg(long)]
    encoder: Option<PathBuf>,
    /// Merge method (linear = the paper's weighted average; task_arithmetic, ties, dare_linear,
    /// dare_ties), applied to the sub-models' ΔW = s·B·A; or fisher: each sub-model's diagonal
    /// Fisher on its own portion is computed after it is trained (submodels/portion-J/fisher.safetensors)
    /// and weighs its adapted matrices (Σ FᵢWᵢ / Σ Fᵢ; other tensors are the base's).
    #[arg(long, default_value = "linear")]
    merge: String,
    /// fisher only: estimate each sub-model's Fisher from N of its portion's records drawn at
    /// random (seeded by --seed) instead of all of them.
    #[arg(long)]
    fisher_samples: Option<usize>,
    /// One merge weight per sub-model (default equal: 1/K after linear's normalisation).
    #[arg(long, value_delimiter = ',')]
    merge_weights: Vec<f64>,
    /// TIES/DARE density.
    #[arg(long)]
    density: Option<f64>,
    /// Task arithmetic / TIES / DARE scale.
    #[arg(long)]
    lambda: Option<f64>,
    /// Average the LoRA factors A and B separately (the released script) instead of ΔW.
    #[arg(long)]
    lora_factors: bool,
    /// Train only sub-model J (1-based) and stop: one array-job task on a cluster.
    #[arg(long)]
    only: Option<usize>,
    /// Output folder: disperse/, submodels/portion-J/, merged/ (the DTM model).
    #[arg(long)]
    output: PathBuf,
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceKind,
    #[command(flatten)]
    options: SftOptions,
}

pub fn run(args: DtmArgs) -> anyhow::Result<()> {
    if args.k < 2 {
        bail!("--k must be at least 2 (K = 1 is plain SFT)");
    }
    if let Some(j) = args.only {
        if j == 0 || j > args.k {
            bail!("--only {j}: sub-models are numbered 1..={}", args.k);
        }
    }
    let fisher_merge = args.merge == "fisher";
    if args.fisher_samples.is_some() && !fisher_merge {
        bail!("--fisher-samples only applies to --merge fisher");
    }
    if fisher_merge && args.lora_factors {
        bail!("--lora-factors averages A and B linearly; it cannot weigh them by a Fisher");
    }
    if args.fisher_samples == Some(0) {
        bail!("--fisher-samples must be positive");
    }
    let device = device(args.device)?;
    let out = &args.output;
    std::fs::create_dir_all(out)?;
    let seed = args.options.seed.unwrap_or(0);
    let template = args
        .options
        .config(args.model.clone(), PathBuf::from("<portion>"))?;
    let data_hash = dtm_model::checkpoint::sha256_file(&args.data)?;
    pipeline::guard_settings(
        &out.join("dtm.json"),
        &json!({
            "model": args.model, "data": args.data, "data_sha256": data_hash, "k": args.k,
            "method": args.method, "embed": args.embed.map(|e| format!("{e:?}")),
            "encoder": args.encoder, "seed": seed, "sft": template,
        }),
    )?;

    let portions = out.join("disperse");
    if !portions.join("assignments.json").is_file() {
        eprintln!(
            "== disperse: {} into {} portions ({})",
            args.data.display(),
            args.k,
            args.method
        );
        disperse::run(DisperseArgs::stage(
            args.data.clone(),
            args.k,
            args.method.clone(),
            args.embed,
            args.encoder.clone(),
            seed,
            portions.clone(),
            args.device,
        ))?;
    }
    let (mut adapters, mut fishers) = (Vec::new(), Vec::new());
    for j in 1..=args.k {
        if args.only.is_some_and(|only| only != j) {
            continue;
        }
        let dir = out.join("submodels").join(format!("portion-{j}"));
        let data = dtm_trainer::disperse::portion_path(&portions, j - 1);
        let config = args.options.config(args.model.clone(), data)?;
        match pipeline::finished_adapter(&dir) {
            Some(_) => eprintln!("== sub-model {j}/{}: finished earlier", args.k),
            None => eprintln!("== sub-model {j}/{}: training", args.k),
        }
        let adapter = pipeline::train(&config, &dir, &device, &mut progress_printer())?;
        if fisher_merge {
            fishers.push(submodel_fisher(&args, &config, &dir, &adapter, seed)?);
        }
        adapters.push(adapter);
    }
    if args.only.is_some() {
        eprintln!(
            "sub-model done; run without --only to merge once all {} are trained",
            args.k
        );
        return Ok(());
    }
    let settings = MergeSettings {
        method: args.merge.clone(),
        weights: args.merge_weights.clone(),
        density: args.density,
        lambda: args.lambda,
        normalize: None,
        seed,
        lora_factors: args.lora_factors,
        fisher: fishers,
    };
    let merged = out.join("merged");
    pipeline::guard_settings(&out.join("merge.json"), &serde_json::to_value(&settings)?)?;
    if merged.join("config.json").is_file() {
        eprintln!("== merge: finished earlier");
    } else {
        eprintln!("== merge: {} of {} sub-models", settings.method, args.k);
        if let Some(report) =
            pipeline::merge_adapters(&args.model, out, &adapters, &settings, &merged)?
        {
            eprintln!(
                "merged {} tensors in {:.1} s (peak memory {:.0} MB)",
                report.tensors,
                report.seconds,
                report.peak_rss.unwrap_or(0) as f64 / 1e6
            );
        }
    }
    println!("DTM model: {}", merged.display());
    Ok(())
}

/// Sub-model `dir`'s diagonal Fisher on its own portion, computed once (the file is written
/// atomically, so its presence marks the stage finished) with the settings guarded like the rest.
fn submodel_fisher(
    args: &DtmArgs,
    config: &SftConfig,
    dir: &Path,
    adapter: &Path,
    seed: u64,
) -> anyhow::Result<PathBuf> {
    let file = dir.join("fisher.safetensors");
    pipeline::guard_settings(
        &dir.join("fisher.json"),
        &json!({ "samples": args.fisher_samples, "seed": seed }),
    )?;
    if file.is_file() {
        eprintln!("== Fisher of {}: finished earlier", dir.display());
        return Ok(file);
    }
    eprintln!("== Fisher of {} on its portion", dir.display());
    fisher::run(FisherArgs::stage(
        args.model.clone(),
        adapter.to_owned(),
        config.data.clone(),
        file.clone(),
        args.fisher_samples,
        config.max_len,
        config.lora_targets.clone(),
        config.append_eos,
        seed,
        args.device,
    ))?;
    Ok(file)
}
