//! Task arithmetic: θ₀ + λ·Σ wᵢδᵢ (the sum divided by Σ wᵢ when `normalize` is set).

use rayon::prelude::*;

use super::registry::Job;
use super::CHUNK;

pub fn kernel(job: &mut Job<'_>) -> Result<(), String> {
    let mut out = std::mem::take(&mut job.out);
    let p = job.params;
    combine(
        &mut out,
        job.base()?,
        &job.inputs(),
        &p.weights,
        p.normalize,
        p.lambda,
    );
    job.out = out;
    Ok(())
}

/// `out` = θ₀ + λ·Σ wᵢδᵢ, the sum divided by Σ wᵢ when normalising (a sum of weights within
/// 1e-8 of 0 divides by 1, as mergekit does).
pub fn combine(
    out: &mut [f32],
    base: &[f32],
    deltas: &[&[f32]],
    weights: &[f64],
    normalize: bool,
    lambda: f64,
) {
    let total: f64 = weights.iter().sum();
    let divisor = if normalize && total.abs() >= 1e-8 {
        total as f32
    } else {
        1.0
    };
    let weights: Vec<f32> = weights.iter().map(|&w| w as f32).collect();
    let lambda = lambda as f32;
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(c, o)| {
        let range = c * CHUNK..c * CHUNK + o.len();
        o.fill(0.0);
        for (d, &w) in deltas.iter().zip(&weights) {
            for (m, x) in o.iter_mut().zip(&d[range.clone()]) {
                *m += w * x;
            }
        }
        for (o, b) in o.iter_mut().zip(&base[range.clone()]) {
            *o = b + *o / divisor * lambda;
        }
    });
}
