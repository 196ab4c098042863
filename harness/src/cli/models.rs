//! The models a command runs: one `--model`, or several combined as an ensemble, each with its
//! `--adapter` paired by order. A checkpoint named more than once is read once and its weights
//! shared (an ensemble of one base with several adapters holds the base once), and what a run
//! records about the models (results.json, the resume fingerprint) is built here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use candle_core::{DType, Device};
use serde_json::{json, Value};

use dtm_harness::checkpoint::{self, LoadedModel};
use dtm_harness::engine::{Ensemble, EnsembleMode};
use dtm_harness::error::LoadError;
use dtm_model::adapter::AnyAdapter;

use super::output::CliError;

/// `--adapter none` stands for "no adapter" where adapters are paired with several models.
const NO_ADAPTER: &str = "none";

/// One `--model` with its adapter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub model: PathBuf,
    pub adapter: Option<PathBuf>,
}

/// Pairs `--adapter`s with `--model`s: none at all, or exactly one per model in the same order
/// (`none` for a model without one). `--ensemble` needs at least two models.
pub fn pair(models: &[PathBuf], adapters: &[PathBuf], ensemble_flag: bool) -> Result<Vec<Member>> {
    let usage = |m: String| Err(CliError::Usage(m).into());
    if models.is_empty() {
        return usage("--model is required".into());
    }
    if ensemble_flag && models.len() < 2 {
        return usage("--ensemble combines several models: give --model at least twice".into());
    }
    if !adapters.is_empty() && adapters.len() != models.len() {
        return usage(format!(
            "--adapter given {} times for {} --model; give one per --model, in the same order (`--adapter {NO_ADAPTER}` for a model without one)",
            adapters.len(),
            models.len()
        ));
    }
    Ok(models
        .iter()
        .enumerate()
        .map(|(i, model)| Member {
            model: model.clone(),
            adapter: adapters
                .get(i)
                .filter(|a| a.as_os_str() != NO_ADAPTER)
                .cloned(),
        })
        .collect())
}

/// The loaded members, in `--model` order.
pub struct LoadedModels {
    members: Vec<LoadedModel>,
    mode: EnsembleMode,
}

/// Loads every member; a checkpoint path named several times is read once. With `quantized`,
/// every member must be a GGUF file and runs on its quantized weights.
pub fn load(
    members: &[Member],
    mode: EnsembleMode,
    dtype: DType,
    device: &Device,
    quantized: bool,
) -> Result<LoadedModels> {
    let mut bases: BTreeMap<&Path, LoadedModel> = BTreeMap::new();
    let mut loaded = Vec::with_capacity(members.len());
    for m in members {
        if !bases.contains_key(m.model.as_path()) {
            let model = if quantized {
                checkpoint::load_quantized(&m.model, dtype, device)?
            } else {
                checkpoint::load(&m.model, dtype, device)?
            };
            bases.insert(&m.model, model);
        }
        let base = &bases[m.model.as_path()];
        // Cloning a decoder shares its weight tensors; attaching an adapter replaces only the
        // clone's projections.
        let mut model = LoadedModel {
            path: base.path.clone(),
            adapter: None,
            decoder: base.decoder.clone(),
            tokenizer: base.tokenizer.clone(),
        };
        if let Some(dir) = &m.adapter {
            // A LoRA (PEFT) or LoRAMoE adapter, by its config's peft_type.
            let adapter = AnyAdapter::load(dir, device)?;
            // `attach` names the adapter's file by its name alone; give its full path.
            adapter
                .attach(&mut model.decoder)
                .map_err(|e| LoadError::at(&dir.join(&e.file), e.problem))?;
            model.adapter = Some(dir.clone());
        }
        loaded.push(model);
    }
    let models = LoadedModels {
        members: loaded,
        mode,
    };
    // Refuse different tokenizers now, before anything is written.
    models.ensemble()?;
    Ok(models)
}

impl LoadedModels {
    /// What the engine scores with.
    pub fn ensemble(&self) -> Result<Ensemble<'_>> {
        Ok(Ensemble::new(self.members.iter().collect(), self.mode)?)
    }

    pub fn is_ensemble(&self) -> bool {
        self.members.len() > 1
    }

    /// The members' paths for people (`a + b`).
    pub fn describe(&self) -> String {
        self.members
            .iter()
            .map(dtm_harness::engine::ensemble::describe)
            .collect::<Vec<_>>()
            .join(" + ")
    }

    /// Hashes every member's checkpoint and adapter: what results.json records and what a resumed
    /// run must match.
    pub fn identity(&self) -> Result<Identity> {
        // A checkpoint shared by several members is hashed once.
        let mut hashes: BTreeMap<PathBuf, String> = BTreeMap::new();
        let mut hash = |p: &Path| -> Result<String> {
            if let Some(h) = hashes.get(p) {
                return Ok(h.clone());
            }
            let h = checkpoint::fingerprint(p)?;
            hashes.insert(p.to_owned(), h.clone());
            Ok(h)
        };
        let mut members = Vec::with_capacity(self.members.len());
        for m in &self.members {
            let adapter = match &m.adapter {
                Some(dir) => json!({"path": dir.display().to_string(), "sha256": hash(dir)?}),
                None => Value::Null,
            };
            members.push(MemberIdentity {
                path: m.path.display().to_string(),
                sha256: hash(&m.path)?,
                architecture: m.config().architecture.name().to_owned(),
                adapter,
            });
        }
        let quantized = self.members.iter().any(|m| m.decoder.is_quantized());
        Ok(Identity {
            members,
            mode: self.is_ensemble().then_some(self.mode),
            compute: quantized.then_some(QUANTIZED_COMPUTE),
        })
    }
}

/// What results.json and the resume fingerprint call the quantized compute path.
pub const QUANTIZED_COMPUTE: &str = "gguf-quantized";

struct MemberIdentity {
    path: String,
    sha256: String,
    architecture: String,
    adapter: Value,
}

/// The models of a run, hashed.
pub struct Identity {
    members: Vec<MemberIdentity>,
    /// `None` for a single model.
    mode: Option<EnsembleMode>,
    /// `None` for exact float compute (the default), else how the weights were run.
    compute: Option<&'static str>,
}

impl Identity {
    /// Adds the models to a run's identity (what a resumed run must match), by their hashes
    /// only: a checkpoint or adapter is the same wherever it lies and however its path is spelt.
    /// A single model records `model_sha256` (and `adapter_sha256` when it has an adapter); an
    /// ensemble records its mode and every member's hashes in order.
    pub fn add_to_fingerprint(&self, fingerprint: &mut Value) {
        let adapter_sha256 = |m: &MemberIdentity| m.adapter.get("sha256").cloned();
        // Only recorded when not the default, so that float runs keep their fingerprints.
        if let Some(compute) = self.compute {
            fingerprint["compute"] = json!(compute);
        }
        match self.mode {
            None => {
                let m = &self.members[0];
                fingerprint["model_sha256"] = json!(m.sha256);
                if let Some(h) = adapter_sha256(m) {
                    fingerprint["adapter_sha256"] = h;
                }
            }
            Some(mode) => {
                let members: Vec<Value> = self
                    .members
                    .iter()
                    .map(|m| json!({"model_sha256": m.sha256, "adapter_sha256": adapter_sha256(m)}))
                    .collect();
                fingerprint["ensemble"] = json!({"mode": mode, "members": members});
            }
        }
    }

    /// results.json's `model`: `{path, sha256, architecture, adapter, compute}`, or for an
    /// ensemble `{ensemble: MODE, members: [{path, sha256, architecture, adapter}, …], compute}`;
    /// `compute` is `float` or `gguf-quantized`.
    pub fn header(&self) -> Value {
        let member = |m: &MemberIdentity| json!({"path": m.path, "sha256": m.sha256, "architecture": m.architecture, "adapter": m.adapter});
        let mut header = match self.mode {
            None => member(&self.members[0]),
            Some(mode) => json!({
                "ensemble": mode,
                "members": self.members.iter().map(member).collect::<Vec<_>>(),
            }),
        };
        header["compute"] = json!(self.compute.unwrap_or("float"));
        header
    }
}
