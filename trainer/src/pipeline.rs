//! The pieces `trainer dtm` and `trainer soup` compose: train a run unless it is finished, turn a
//! GGUF base into the Hugging Face folder merging reads, merge adapters in ΔW space, and guard a
//! folder's settings so that a resumed pipeline never mixes stages made with other settings.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use candle_core::Device;
use dtm_model::checkpoint::export::{self, ExportOptions};
use serde_json::Value;

use crate::merge::{self, registry, MergeReport, MergeSpec, ModelInput, ModelRef};
use crate::sft::{self, Plan, SftConfig, StepLog};

/// The adapter folder of a finished SFT run in `output`.
pub fn finished_adapter(output: &Path) -> Option<PathBuf> {
    let adapter = output.join("adapter");
    adapter
        .join(dtm_model::adapter::WEIGHTS_FILE)
        .is_file()
        .then_some(adapter)
}

/// Trains `config` into `output` unless it already finished there; a killed run resumes from
/// its last checkpoint. Returns the adapter folder.
pub fn train(
    config: &SftConfig,
    output: &Path,
    device: &Device,
    on_step: &mut dyn FnMut(&StepLog, &Plan),
) -> anyhow::Result<PathBuf> {
    if let Some(adapter) = finished_adapter(output) {
        let saved: SftConfig = serde_json::from_slice(
            &std::fs::read(output.join("train_config.json")).with_context(|| {
                format!(
                    "{}: finished run without train_config.json",
                    output.display()
                )
            })?,
        )?;
        if &saved != config {
            bail!(
                "{} holds a finished run with other settings; use another --output",
                output.display()
            );
        }
        return Ok(adapter);
    }
    Ok(sft::run(config, output, true, device, on_step)?.adapter)
}

/// The base as a Hugging Face folder: itself, or (for a GGUF file) a float32 conversion written
/// once into `work/base-hf`.
pub fn hf_base(model: &Path, work: &Path) -> anyhow::Result<PathBuf> {
    if model.is_dir() {
        return Ok(model.to_owned());
    }
    let out = work.join("base-hf");
    if !out.join("config.json").is_file() {
        export::export(model, None, &out, &ExportOptions::default(), &mut |_| {})?;
    }
    Ok(out)
}

/// How the adapters are merged (the `trainer merge` options a pipeline passes on).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct MergeSettings {
    pub method: String,
    pub weights: Vec<f64>,
    pub density: Option<f64>,
    pub lambda: Option<f64>,
    pub normalize: Option<bool>,
    pub seed: u64,
    /// Average A and B separately (the released code) instead of ΔW.
    pub lora_factors: bool,
    /// Fisher averaging: one Fisher file per adapter, in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fisher: Vec<PathBuf>,
}

/// Merges PEFT adapters trained on `base` into a Hugging Face folder at `output`.
pub fn merge_adapters(
    base: &Path,
    work: &Path,
    adapters: &[PathBuf],
    settings: &MergeSettings,
    output: &Path,
) -> anyhow::Result<Option<MergeReport>> {
    if !settings.weights.is_empty() && settings.weights.len() != adapters.len() {
        bail!(
            "{} merge weights for {} models",
            settings.weights.len(),
            adapters.len()
        );
    }
    if !settings.fisher.is_empty() && settings.fisher.len() != adapters.len() {
        bail!(
            "{} Fisher files for {} models",
            settings.fisher.len(),
            adapters.len()
        );
    }
    let weight = |i: usize| settings.weights.get(i).copied().unwrap_or(1.0);
    if settings.lora_factors {
        if settings.method != "linear" {
            bail!("averaging LoRA factors is a linear merge: use --merge linear");
        }
        let merged_adapter = work.join("merged-adapter");
        let weights: Vec<f64> = (0..adapters.len()).map(weight).collect();
        merge::lora_factors::merge_factors(
            adapters,
            &weights,
            settings.normalize.unwrap_or(true),
            &merged_adapter,
            true,
        )?;
        export::export(
            base,
            Some(&merged_adapter),
            output,
            &ExportOptions::default(),
            &mut |_| {},
        )?;
        return Ok(None);
    }
    let method = registry::find(&settings.method).with_context(|| {
        format!(
            "unknown merge method {:?} (known: {})",
            settings.method,
            registry::names().join(", ")
        )
    })?;
    let base_hf = hf_base(base, work)?;
    let mut spec = MergeSpec::new(method, output.to_owned());
    spec.base = Some(ModelRef::folder(&base_hf));
    spec.models = adapters
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let mut params = std::collections::BTreeMap::new();
            params.insert(
                "weight".to_owned(),
                merge::params::Setting::number(weight(i)),
            );
            if let Some(d) = settings.density {
                params.insert("density".to_owned(), merge::params::Setting::number(d));
            }
            if let Some(f) = settings.fisher.get(i) {
                params.insert(
                    "fisher".to_owned(),
                    merge::params::Setting::text(f.display().to_string()),
                );
            }
            ModelInput {
                model: ModelRef {
                    folder: base_hf.clone(),
                    adapter: Some(a.clone()),
                },
                params,
            }
        })
        .collect();
    if let Some(l) = settings.lambda {
        spec.params
            .insert("lambda".to_owned(), merge::params::Setting::number(l));
    }
    if let Some(n) = settings.normalize {
        spec.params
            .insert("normalize".to_owned(), merge::params::Setting::bool(n));
    }
    spec.seed = settings.seed;
    spec.overwrite = true;
    Ok(Some(merge::merge(&spec, &mut |_| {})?))
}

/// Records `settings` in `file`, or checks them against what an earlier run recorded there;
/// a difference is refused naming every field that changed.
pub fn guard_settings(file: &Path, settings: &Value) -> anyhow::Result<()> {
    if let Ok(text) = std::fs::read_to_string(file) {
        let before: Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: not valid JSON", file.display()))?;
        if &before != settings {
            bail!(
                "{} was made with other settings ({}); use another --output",
                file.parent().unwrap_or(file).display(),
                sft::changed_fields(&before, settings)
            );
        }
        return Ok(());
    }
    crate::data::write_atomic(
        file,
        (serde_json::to_string_pretty(settings)? + "\n").as_bytes(),
    )?;
    Ok(())
}
