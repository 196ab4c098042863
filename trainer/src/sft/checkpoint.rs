//! Training checkpoints: LoRA values, AdamW moments and the step, written atomically, so that a
//! run killed at any moment (even `kill -9`) resumes and ends with the adapter an uninterrupted
//! run would have produced. The data position and dropout masks are functions of the step and
//! the seed, so the step is all the RNG and data state there is.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::config::SftConfig;

const DIR: &str = "checkpoint";
const OLD: &str = "checkpoint.old";
const STATE: &str = "state.json";
const TENSORS: &str = "state.safetensors";

#[derive(Serialize, Deserialize)]
struct StateFile {
    step: u64,
    config: SftConfig,
}

/// What a checkpoint restores.
pub struct Checkpoint {
    /// Optimiser steps already taken.
    pub step: u64,
    pub config: SftConfig,
    /// Trainable tensors, in the trainer's fixed order.
    pub params: Vec<Tensor>,
    /// AdamW moments, same order.
    pub moments: Vec<(Tensor, Tensor)>,
}

pub fn exists(output: &Path) -> bool {
    output.join(DIR).join(STATE).exists() || output.join(OLD).join(STATE).exists()
}

pub fn save(
    output: &Path,
    step: u64,
    config: &SftConfig,
    params: &[Tensor],
    moments: &[(Tensor, Tensor)],
) -> anyhow::Result<()> {
    let tmp = tempfile::Builder::new()
        .prefix(".checkpoint-")
        .tempdir_in(output)
        .with_context(|| format!("{}: cannot write a checkpoint", output.display()))?;
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for (i, p) in params.iter().enumerate() {
        tensors.insert(format!("param.{i}"), p.copy()?);
    }
    for (i, (m, v)) in moments.iter().enumerate() {
        tensors.insert(format!("m.{i}"), m.copy()?);
        tensors.insert(format!("v.{i}"), v.copy()?);
    }
    candle_core::safetensors::save(&tensors, tmp.path().join(TENSORS))?;
    let state = StateFile {
        step,
        config: config.clone(),
    };
    std::fs::write(tmp.path().join(STATE), serde_json::to_vec_pretty(&state)?)?;
    for f in [TENSORS, STATE] {
        std::fs::File::open(tmp.path().join(f))?.sync_all()?;
    }
    // Swap in the new checkpoint so that one complete checkpoint always exists on disk.
    let dir = output.join(DIR);
    let old = output.join(OLD);
    if old.exists() {
        std::fs::remove_dir_all(&old)?;
    }
    if dir.exists() {
        std::fs::rename(&dir, &old)?;
    }
    std::fs::rename(tmp.keep(), &dir)?;
    if old.exists() {
        std::fs::remove_dir_all(&old)?;
    }
    Ok(())
}

pub fn load(output: &Path, device: &Device) -> anyhow::Result<Checkpoint> {
    let dir: PathBuf = if output.join(DIR).join(STATE).exists() {
        output.join(DIR)
    } else {
        output.join(OLD)
    };
    let state_path = dir.join(STATE);
    let state: StateFile = serde_json::from_slice(
        &std::fs::read(&state_path)
            .with_context(|| format!("{}: cannot read", state_path.display()))?,
    )
    .with_context(|| format!("{}: not a trainer checkpoint", state_path.display()))?;
    let tensors_path = dir.join(TENSORS);
    let mut tensors = candle_core::safetensors::load(&tensors_path, device)
        .with_context(|| format!("{}: cannot read", tensors_path.display()))?;
    let mut take = |name: String| {
        tensors
            .remove(&name)
            .with_context(|| format!("{}: no tensor {name}", tensors_path.display()))
    };
    let mut params = Vec::new();
    let mut moments = Vec::new();
    let mut i = 0;
    while let Ok(p) = take(format!("param.{i}")) {
        params.push(p);
        moments.push((take(format!("m.{i}"))?, take(format!("v.{i}"))?));
        i += 1;
    }
    if params.is_empty() {
        bail!("{}: holds no parameters", tensors_path.display());
    }
    Ok(Checkpoint {
        step: state.step,
        config: state.config,
        params,
        moments,
    })
}
