//! TIES merging: trim each task vector to its largest-magnitude entries, elect a sign per entry,
//! and average the entries that agree with it.
//!
//! Trim keeps the top ⌊density·n⌋ entries of |δ| per tensor (mergekit's rule; at the threshold,
//! equal magnitudes are kept in index order). The elected sign is that of Σ wᵢδᵢ (+ when the
//! sum is 0); an entry agrees when wᵢδᵢ has that sign (a zero never agrees). The result is
//! θ₀ + λ·Σ_agreeing wᵢδᵢ, divided by Σ_agreeing wᵢ (1 where none agree) when normalising.

use rayon::prelude::*;

use super::registry::Job;
use super::rescale::{self, Rescale};
use super::CHUNK;

pub fn kernel(job: &mut Job<'_>) -> Result<(), String> {
    let p = job.params;
    for (d, &density) in job.inputs.iter_mut().zip(&p.densities) {
        trim(d, density, p.rescale);
    }
    let mut out = std::mem::take(&mut job.out);
    consensus(
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

/// Zeroes all but the ⌊density·n⌋ largest-magnitude entries, then rescales the survivors.
/// A density of 1 or more leaves the tensor as it is (not rescaled).
pub fn trim(delta: &mut [f32], density: f64, rescale: Rescale) {
    if density >= 1.0 || delta.is_empty() {
        return;
    }
    let k = (density * delta.len() as f64) as usize;
    let before = if rescale == Rescale::L1 {
        rescale::l1(delta)
    } else {
        0.0
    };
    if k == 0 {
        delta.iter_mut().for_each(|x| *x = 0.0);
        return;
    }
    let Threshold {
        bits,
        keep_equal,
        equal,
    } = kth_largest_magnitude(delta, k);
    let above_or_equal = |x: f32| magnitude_bits(x) >= bits;
    delta.par_chunks_mut(CHUNK).for_each(|c| {
        c.iter_mut()
            .filter(|x| !above_or_equal(**x))
            .for_each(|x| *x = 0.0)
    });
    // Entries equal to the threshold beyond the first `keep_equal` (in index order) go too.
    if equal > keep_equal {
        let mut equal_seen = 0usize;
        for x in delta.iter_mut() {
            if magnitude_bits(*x) == bits {
                equal_seen += 1;
                if equal_seen > keep_equal {
                    *x = 0.0;
                }
            }
        }
    }
    rescale.apply(before, delta, density);
}

/// |x| as an integer that orders like |x| (positive floats order like their bit patterns).
fn magnitude_bits(x: f32) -> u32 {
    x.to_bits() & 0x7fff_ffff
}

struct Threshold {
    /// The k-th largest |x|, as [`magnitude_bits`].
    bits: u32,
    /// How many entries equal to it belong to the top k.
    keep_equal: usize,
    /// How many entries equal it.
    equal: usize,
}

/// The k-th largest magnitude (1 ≤ k ≤ n) by a two-pass radix select on the high and low
/// 16 bits of |x|: linear time and parallel, where a sort would be n log n.
fn kth_largest_magnitude(x: &[f32], k: usize) -> Threshold {
    let high = histogram(x, |b| Some((b >> 16) as usize));
    let (hi, above_hi) = descend(&high, k);
    let low = histogram(x, |b| {
        ((b >> 16) as usize == hi).then_some((b & 0xffff) as usize)
    });
    let (lo, above_lo) = descend(&low, k - above_hi);
    let above = above_hi + above_lo;
    Threshold {
        bits: ((hi as u32) << 16) | lo as u32,
        keep_equal: k - above,
        equal: low[lo],
    }
}

/// The bucket holding the k-th largest value, and how many values lie in higher buckets.
fn descend(hist: &[usize], k: usize) -> (usize, usize) {
    let mut above = 0;
    for bucket in (0..hist.len()).rev() {
        if above + hist[bucket] >= k {
            return (bucket, above);
        }
        above += hist[bucket];
    }
    unreachable!("k ≤ number of values")
}

fn histogram(x: &[f32], bucket: impl Fn(u32) -> Option<usize> + Sync) -> Vec<usize> {
    const BUCKETS: usize = 1 << 16;
    let per_task = x.len().div_ceil(rayon::current_num_threads()).max(CHUNK);
    x.par_chunks(per_task)
        .map(|c| {
            let mut h = vec![0usize; BUCKETS];
            for v in c {
                if let Some(b) = bucket(magnitude_bits(*v)) {
                    h[b] += 1;
                }
            }
            h
        })
        .reduce(
            || vec![0usize; BUCKETS],
            |mut a, b| {
                a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
                a
            },
        )
}

/// `out` = θ₀ + TIES' sign election and disjoint mean of the task vectors (see the module docs).
pub fn consensus(
    out: &mut [f32],
    base: &[f32],
    deltas: &[&[f32]],
    weights: &[f64],
    normalize: bool,
    lambda: f64,
) {
    let weights: Vec<f32> = weights.iter().map(|&w| w as f32).collect();
    let lambda = lambda as f32;
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(c, o)| {
        let range = c * CHUNK..c * CHUNK + o.len();
        let mut sum = vec![0f32; o.len()];
        for (d, &w) in deltas.iter().zip(&weights) {
            for (s, x) in sum.iter_mut().zip(&d[range.clone()]) {
                *s += w * x;
            }
        }
        let mut mixed = vec![0f32; o.len()];
        let mut divisor = vec![0f32; o.len()];
        for (d, &w) in deltas.iter().zip(&weights) {
            for (j, x) in d[range.clone()].iter().enumerate() {
                let v = w * x;
                let agrees = if sum[j] >= 0.0 { v > 0.0 } else { v < 0.0 };
                if agrees {
                    mixed[j] += v;
                    divisor[j] += w;
                }
            }
        }
        for (j, (o, b)) in o.iter_mut().zip(&base[range.clone()]).enumerate() {
            let mut m = mixed[j];
            if normalize {
                m /= if divisor[j] == 0.0 { 1.0 } else { divisor[j] };
            }
            *o = b + m * lambda;
        }
    });
}
