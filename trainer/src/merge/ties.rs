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
    // Zero what lies below the threshold and count, per chunk, the entries equal to it ...
    let equal_per_chunk: Vec<usize> = delta
        .par_chunks_mut(CHUNK)
        .map(|c| {
            let mut equal = 0;
            for x in c {
                let m = magnitude_bits(*x);
                equal += usize::from(m == bits);
                if m < bits {
                    *x = 0.0;
                }
            }
            equal
        })
        .collect();
    // ... then keep only the first `keep_equal` of those, in index order.
    if equal > keep_equal {
        let mut seen = 0;
        let allowed: Vec<usize> = equal_per_chunk
            .iter()
            .map(|&n| {
                let allow = keep_equal.saturating_sub(seen).min(n);
                seen += n;
                allow
            })
            .collect();
        delta
            .par_chunks_mut(CHUNK)
            .zip(allowed.par_iter().zip(&equal_per_chunk))
            .filter(|(_, (allow, n))| allow < n)
            .for_each(|(c, (&allow, _))| {
                let mut kept = 0;
                for x in c.iter_mut().filter(|x| magnitude_bits(**x) == bits) {
                    if kept < allow {
                        kept += 1;
                    } else {
                        *x = 0.0;
                    }
                }
            });
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

/// The k-th largest magnitude (1 ≤ k ≤ n) in linear time, where a sort would be n log n: a
/// radix select over two parallel histograms, of the magnitudes' high 16 bits (sign-less
/// exponent and top mantissa bits) and then of the low 16 bits of those in the bucket found.
fn kth_largest_magnitude(x: &[f32], k: usize) -> Threshold {
    let high = histogram(x, |b| (b >> 16, true));
    let (hi, above_hi) = descend(&high, k);
    let hi = hi as u32;
    let low = histogram(x, |b| (b & 0xffff, b >> 16 == hi));
    let (lo, above_lo) = descend(&low, k - above_hi);
    Threshold {
        bits: (hi << 16) | lo as u32,
        keep_equal: k - above_hi - above_lo,
        equal: low[lo] as usize,
    }
}

/// The bucket holding the k-th largest value, and how many values lie in higher buckets.
fn descend(hist: &[u32], k: usize) -> (usize, usize) {
    let mut above = 0;
    for bucket in (0..hist.len()).rev() {
        let n = hist[bucket] as usize;
        if above + n >= k {
            return (bucket, above);
        }
        above += n;
    }
    unreachable!("k ≤ number of values")
}

/// Counts of magnitudes by `bucket` (a 16-bit key, and whether to count the value at all;
/// branch-free so that the loop stays tight).
fn histogram(x: &[f32], bucket: impl Fn(u32) -> (u32, bool) + Sync) -> Vec<u32> {
    const BUCKETS: usize = 1 << 16;
    let per_task = x.len().div_ceil(rayon::current_num_threads()).max(CHUNK);
    let parts: Vec<Vec<u32>> = x
        .par_chunks(per_task)
        .map(|c| {
            let mut h = vec![0u32; BUCKETS];
            for v in c {
                let (key, count) = bucket(magnitude_bits(*v));
                h[key as usize & (BUCKETS - 1)] += u32::from(count);
            }
            h
        })
        .collect();
    let mut total = vec![0u32; BUCKETS];
    for part in parts {
        total.iter_mut().zip(part).for_each(|(t, p)| *t += p);
    }
    total
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
            // Written without branches so that it vectorises.
            for ((m, dv), (s, x)) in mixed
                .iter_mut()
                .zip(divisor.iter_mut())
                .zip(sum.iter().zip(&d[range.clone()]))
            {
                let v = w * x;
                let agrees = (*s >= 0.0 && v > 0.0) | (*s < 0.0 && v < 0.0);
                *m += if agrees { v } else { 0.0 };
                *dv += if agrees { w } else { 0.0 };
            }
        }
        for ((o, b), (m, dv)) in o
            .iter_mut()
            .zip(&base[range.clone()])
            .zip(mixed.iter().zip(&divisor))
        {
            let m = if normalize {
                m / if *dv == 0.0 { 1.0 } else { *dv }
            } else {
                *m
            };
            *o = b + m * lambda;
        }
    });
}
