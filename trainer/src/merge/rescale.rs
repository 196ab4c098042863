//! What happens to the entries of a task vector that survive sparsification (TIES' trim,
//! DARE's drop).

use std::fmt;
use std::str::FromStr;

/// How survivors are rescaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rescale {
    /// Left as they are.
    None,
    /// Divided by the density (the DARE paper: survivors of a drop with probability 1 − d are
    /// scaled by 1/d, so the expected task vector is unchanged).
    Density,
    /// Scaled so the tensor keeps its L1 norm (what current mergekit does for `rescale: true`);
    /// left alone when either norm is below 1e-7.
    L1,
}

impl Rescale {
    pub const NAMES: [&'static str; 3] = ["none", "density", "l1"];

    /// Rescales `kept` (the sparsified `original`, same length) in place.
    pub fn apply(self, original_l1: f64, kept: &mut [f32], density: f64) {
        match self {
            Rescale::None => {}
            Rescale::Density => {
                let s = (1.0 / density) as f32;
                kept.iter_mut().for_each(|x| *x *= s);
            }
            Rescale::L1 => {
                const EPS: f64 = 1e-7;
                let after = l1(kept);
                if original_l1 < EPS || after < EPS {
                    return;
                }
                let s = (original_l1 / after) as f32;
                kept.iter_mut().for_each(|x| *x *= s);
            }
        }
    }
}

impl fmt::Display for Rescale {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Rescale::None => "none",
            Rescale::Density => "density",
            Rescale::L1 => "l1",
        })
    }
}

impl FromStr for Rescale {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Rescale::None),
            "density" => Ok(Rescale::Density),
            "l1" => Ok(Rescale::L1),
            _ => Err(format!(
                "rescale {s:?} is not one of {}",
                Rescale::NAMES.join(", ")
            )),
        }
    }
}

/// Σ|x| in f64, so that norms of large tensors do not lose precision.
pub fn l1(x: &[f32]) -> f64 {
    x.iter().map(|v| v.abs() as f64).sum()
}
