//! DARE: drop each entry of a task vector with probability 1 − density and rescale the
//! survivors (by 1/density as in the paper by default; `l1` keeps the L1 norm as current
//! mergekit does), then combine by task arithmetic (`dare_linear`) or TIES' sign election
//! (`dare_ties`).
//!
//! The drops are reproducible: the random stream of a tensor's chunk depends only on the seed,
//! the model's position, the tensor's name and the chunk's index, never on thread scheduling.

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use super::registry::Job;
use super::rescale::{self, Rescale};
use super::{task_arithmetic, ties, CHUNK};

pub fn kernel_linear(job: &mut Job<'_>) -> Result<(), String> {
    drop_all(job);
    let p = job.params;
    let mut out = std::mem::take(&mut job.out);
    task_arithmetic::combine(
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

pub fn kernel_ties(job: &mut Job<'_>) -> Result<(), String> {
    drop_all(job);
    let p = job.params;
    let mut out = std::mem::take(&mut job.out);
    ties::consensus(
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

fn drop_all(job: &mut Job<'_>) {
    let p = job.params;
    for (i, (d, &density)) in job.inputs.iter_mut().zip(&p.densities).enumerate() {
        drop_entries(d, density, p.rescale, stream_key(job.seed, i, job.tensor));
    }
}

/// The key of model `model`'s random streams for `tensor` under `seed`.
pub fn stream_key(seed: u64, model: usize, tensor: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"dtm-dare");
    h.update(seed.to_le_bytes());
    h.update((model as u64).to_le_bytes());
    h.update(tensor.as_bytes());
    h.finalize().into()
}

/// Keeps each entry with probability `density` (independently; chunk c of CHUNK entries draws
/// from ChaCha8 stream c of `key`), then rescales the survivors. A density of 1 or more leaves
/// the tensor as it is.
pub fn drop_entries(delta: &mut [f32], density: f64, rescale: Rescale, key: [u8; 32]) {
    if density >= 1.0 {
        return;
    }
    let before = if rescale == Rescale::L1 {
        rescale::l1(delta)
    } else {
        0.0
    };
    // keep ⇔ a uniform u32 < density · 2³², so P(keep) = density to within 2⁻³².
    let threshold = (density * 4_294_967_296.0).round() as u64;
    delta
        .par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(c, chunk)| {
            let mut rng = ChaCha8Rng::from_seed(key);
            rng.set_stream(c as u64);
            for x in chunk {
                if u64::from(rng.next_u32()) >= threshold {
                    *x = 0.0;
                }
            }
        });
    rescale.apply(before, delta, density);
}
