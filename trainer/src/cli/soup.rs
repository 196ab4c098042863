//! `trainer soup`: Uniform Soup (Table 1) — M SFT runs on the full data that differ in learning
//! rate and seed, averaged linearly (in ΔW space) into one model.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use dtm_model::device::{device, DeviceKind};
use dtm_trainer::pipeline::{self, MergeSettings};
use serde_json::json;

use super::sft::{progress_printer, SftOptions};

#[derive(Args)]
pub struct SoupArgs {
    /// Base checkpoint: a Hugging Face folder or a .gguf file.
    #[arg(long)]
    model: PathBuf,
    /// The full SFT data (JSONL).
    #[arg(long)]
    data: PathBuf,
    /// The ingredients, `;`-separated, each `lr=X,seed=N` (either may be left out and then takes
    /// the shared value), e.g. `lr=3e-4,seed=1;lr=2e-4,seed=2;lr=1e-4,seed=3`.
    #[arg(long)]
    runs: String,
    /// Output folder: run-1 … run-M (each an SFT run) and merged/ (the soup).
    #[arg(long)]
    output: PathBuf,
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceKind,
    #[command(flatten)]
    options: SftOptions,
}

fn parse_runs(text: &str) -> anyhow::Result<Vec<(Option<f64>, Option<u64>)>> {
    let mut runs = Vec::new();
    for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (mut lr, mut seed) = (None, None);
        for kv in part.split(',').map(str::trim) {
            let (k, v) = kv
                .split_once('=')
                .with_context(|| format!("--runs: {kv:?} is not KEY=VALUE"))?;
            match k.trim() {
                "lr" => {
                    lr = Some(
                        v.trim()
                            .parse()
                            .with_context(|| format!("--runs: bad lr {v:?}"))?,
                    )
                }
                "seed" => {
                    seed = Some(
                        v.trim()
                            .parse()
                            .with_context(|| format!("--runs: bad seed {v:?}"))?,
                    )
                }
                other => bail!("--runs: unknown key {other:?} (lr, seed)"),
            }
        }
        runs.push((lr, seed));
    }
    if runs.len() < 2 {
        bail!("--runs needs at least two ingredients");
    }
    Ok(runs)
}

pub fn run(args: SoupArgs) -> anyhow::Result<()> {
    let runs = parse_runs(&args.runs)?;
    let device = device(args.device)?;
    let out = &args.output;
    std::fs::create_dir_all(out)?;
    let mut configs = Vec::new();
    for (lr, seed) in &runs {
        let mut options = args.options.clone();
        options.lr = lr.or(options.lr);
        options.seed = seed.or(options.seed);
        configs.push(options.config(args.model.clone(), args.data.clone())?);
    }
    pipeline::guard_settings(&out.join("soup.json"), &json!({ "runs": configs }))?;
    let mut adapters = Vec::new();
    for (i, config) in configs.iter().enumerate() {
        eprintln!(
            "== ingredient {}/{}: lr {:e}, seed {}",
            i + 1,
            configs.len(),
            config.lr,
            config.seed
        );
        let dir = out.join(format!("run-{}", i + 1));
        adapters.push(pipeline::train(
            config,
            &dir,
            &device,
            &mut progress_printer(),
        )?);
    }
    let merged = out.join("merged");
    if !merged.join("config.json").is_file() {
        eprintln!("== merge: uniform average of {} runs", adapters.len());
        let settings = MergeSettings {
            method: "linear".into(),
            weights: Vec::new(),
            density: None,
            lambda: None,
            normalize: None,
            seed: 0,
            lora_factors: false,
            fisher: Vec::new(),
        };
        pipeline::merge_adapters(&args.model, out, &adapters, &settings, &merged)?;
    }
    println!("Uniform Soup: {}", merged.display());
    Ok(())
}
