//! Fisher-weighted averaging (Matena & Raffel): per entry, Σ wᵢFᵢθᵢ / Σ wᵢFᵢ, with each Fᵢ
//! floored (default 1e-6) so that entries no model has information about fall back to the
//! weighted mean instead of 0/0. A tensor without Fisher values (no file covers it) is the
//! weighted mean. Not in mergekit; PROTOCOL §4 names it.

use rayon::prelude::*;

use super::registry::Job;
use super::CHUNK;

pub fn kernel(job: &mut Job<'_>) -> Result<(), String> {
    let fishers: Vec<&[f32]> = job.fishers.iter().map(Vec::as_slice).collect();
    let mut out = std::mem::take(&mut job.out);
    let result = fisher(
        &mut out,
        &job.inputs(),
        &fishers,
        &job.params.weights,
        job.params.floor,
    );
    job.out = out;
    result
}

/// Writes the Fisher-weighted average of same-shaped tensors into `out`; with no `fishers`,
/// the weighted mean.
pub fn fisher(
    out: &mut [f32],
    models: &[&[f32]],
    fishers: &[&[f32]],
    weights: &[f64],
    floor: f64,
) -> Result<(), String> {
    if weights.iter().any(|&w| w < 0.0) || weights.iter().all(|&w| w == 0.0) {
        return Err(format!(
            "Fisher averaging needs weights ≥ 0, not all 0 (got {weights:?})"
        ));
    }
    if floor.is_nan() || floor <= 0.0 {
        return Err(format!("the Fisher floor must be positive (got {floor})"));
    }
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(c, o)| {
        let start = c * CHUNK;
        for (j, o) in o.iter_mut().enumerate() {
            let (mut num, mut den) = (0f64, 0f64);
            for (i, (m, &w)) in models.iter().zip(weights).enumerate() {
                let f = w * fishers
                    .get(i)
                    .map_or(floor, |f| f64::from(f[start + j]).max(floor));
                num += f * f64::from(m[start + j]);
                den += f;
            }
            *o = (num / den) as f32;
        }
    });
    Ok(())
}
