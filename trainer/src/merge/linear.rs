//! Linear merge (model soup): Σ wᵢθᵢ / Σ wᵢ, or the plain weighted sum when `normalize` is false.

use rayon::prelude::*;

use super::registry::Job;
use super::CHUNK;

pub fn kernel(job: &mut Job<'_>) -> Result<(), String> {
    let mut out = std::mem::take(&mut job.out);
    let result = linear(
        &mut out,
        &job.inputs(),
        &job.params.weights,
        job.params.normalize,
    );
    job.out = out;
    result
}

/// Writes the weighted average (or sum) of same-shaped tensors into `out`.
pub fn linear(
    out: &mut [f32],
    models: &[&[f32]],
    weights: &[f64],
    normalize: bool,
) -> Result<(), String> {
    let total: f64 = weights.iter().sum();
    if normalize && total == 0.0 {
        return Err("the weights sum to 0, so they cannot be normalised".into());
    }
    let weights: Vec<f32> = weights.iter().map(|&w| w as f32).collect();
    let total = total as f32;
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(c, o)| {
        let range = c * CHUNK..c * CHUNK + o.len();
        o.fill(0.0);
        for (m, &w) in models.iter().zip(&weights) {
            for (o, x) in o.iter_mut().zip(&m[range.clone()]) {
                *o += w * x;
            }
        }
        if normalize {
            o.iter_mut().for_each(|o| *o /= total);
        }
    });
    Ok(())
}
