//! The released DTM script's merge of LoRA sub-models: the A factors averaged with each other
//! and the B factors with each other, written as one PEFT adapter. The product of averages is
//! not the average of products (Σ wᵢBᵢAᵢ), which is what merging in ΔW space computes; this is
//! offered to reproduce the paper's code.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use dtm_model::adapter::PeftAdapter;

use super::inputs::Adapter;
use super::{linear, MergeError};

/// Averages the adapters' factors with `weights` (divided by their sum when `normalize`) and
/// writes the result to `output` as a PEFT adapter folder.
pub fn merge_factors(
    adapters: &[PathBuf],
    weights: &[f64],
    normalize: bool,
    output: &Path,
    overwrite: bool,
) -> Result<(), MergeError> {
    let Some(first_path) = adapters.first() else {
        return Err(MergeError::Spec("no adapters to merge".into()));
    };
    if weights.len() != adapters.len() {
        return Err(MergeError::Spec(format!(
            "{} weights for {} adapters",
            weights.len(),
            adapters.len()
        )));
    }
    if output.exists() && !overwrite {
        return Err(MergeError::output(
            output,
            "already exists (choose another output, or pass --overwrite)",
        ));
    }
    let loaded = adapters
        .iter()
        .map(|p| Adapter::load(p))
        .collect::<Result<Vec<_>, _>>()?;
    let first = &loaded[0].inner;
    for a in &loaded[1..] {
        let c = &a.inner.config;
        let same = c.r == first.config.r
            && c.lora_alpha == first.config.lora_alpha
            && c.target_modules == first.config.target_modules;
        if !same {
            return Err(MergeError::input(
                &a.path,
                format!(
                    "r = {}, alpha = {}, targets {:?}, but {} has r = {}, alpha = {}, targets {:?}: \
                     factors of different adapters can only be averaged when these agree",
                    c.r,
                    c.lora_alpha,
                    c.target_modules,
                    first_path.display(),
                    first.config.r,
                    first.config.lora_alpha,
                    first.config.target_modules
                ),
            ));
        }
        if let Some(m) = first
            .weights
            .keys()
            .find(|m| !a.inner.weights.contains_key(*m))
            .or_else(|| {
                a.inner
                    .weights
                    .keys()
                    .find(|m| !first.weights.contains_key(*m))
            })
        {
            return Err(MergeError::input(
                &a.path,
                format!(
                    "module {m} is adapted in one of {} and {} but not the other",
                    a.path.display(),
                    first_path.display()
                ),
            ));
        }
    }
    let mut merged = PeftAdapter {
        config: first.config.clone(),
        weights: Default::default(),
    };
    for (module, (a0, b0)) in &first.weights {
        let factor = |pick: fn(&(Tensor, Tensor)) -> &Tensor, t0: &Tensor| {
            let values = loaded
                .iter()
                .map(|l| {
                    let t = pick(&l.inner.weights[module]);
                    if t.dims() != t0.dims() {
                        return Err(MergeError::input(
                            &l.path,
                            format!(
                                "{module}: factor of shape {:?}, not {:?}",
                                t.dims(),
                                t0.dims()
                            ),
                        ));
                    }
                    t.flatten_all()
                        .and_then(|t| t.to_vec1::<f32>())
                        .map_err(|e| MergeError::input(&l.path, format!("{module}: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let slices: Vec<&[f32]> = values.iter().map(Vec::as_slice).collect();
            let mut out = vec![0f32; slices[0].len()];
            linear::linear(&mut out, &slices, weights, normalize)
                .map_err(|e| MergeError::tensor(module, e))?;
            Tensor::from_vec(out, t0.dims(), &Device::Cpu)
                .map_err(|e| MergeError::tensor(module, e.to_string()))
        };
        let a = factor(|p| &p.0, a0)?;
        let b = factor(|p| &p.1, b0)?;
        merged.weights.insert(module.clone(), (a, b));
    }
    merged.save(output)?;
    Ok(())
}
