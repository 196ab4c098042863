//! AdamW with torch's arithmetic: decoupled weight decay `p ← p·(1 − lr·wd)`, then
//! `p ← p − lr/(1 − β₁ᵗ) · m / (√v/√(1 − β₂ᵗ) + ε)`. candle-nn's AdamW defaults to weight decay
//! 0.01; here every value comes from the caller.

use candle_core::{Result, Tensor, Var};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

/// The optimiser's state for a fixed, ordered list of parameters.
pub struct AdamW {
    config: AdamWConfig,
    params: Vec<Var>,
    /// First and second moments, one pair per parameter.
    moments: Vec<(Tensor, Tensor)>,
    step: u64,
}

impl AdamW {
    pub fn new(params: Vec<Var>, config: AdamWConfig) -> Result<Self> {
        let moments = params
            .iter()
            .map(|p| Ok((p.zeros_like()?, p.zeros_like()?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            config,
            params,
            moments,
            step: 0,
        })
    }

    pub fn params(&self) -> &[Var] {
        &self.params
    }

    /// Steps taken so far.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// The moments, in parameter order (for checkpoints).
    pub fn moments(&self) -> &[(Tensor, Tensor)] {
        &self.moments
    }

    /// Restores a checkpointed state.
    pub fn restore(&mut self, step: u64, moments: Vec<(Tensor, Tensor)>) -> Result<()> {
        if moments.len() != self.params.len() {
            candle_core::bail!(
                "optimiser state has {} moment pairs for {} parameters",
                moments.len(),
                self.params.len()
            );
        }
        for ((m, v), p) in moments.iter().zip(&self.params) {
            if m.dims() != p.dims() || v.dims() != p.dims() {
                candle_core::bail!(
                    "optimiser state shape {:?} does not fit a parameter of shape {:?}",
                    m.dims(),
                    p.dims()
                );
            }
        }
        self.step = step;
        self.moments = moments;
        Ok(())
    }

    /// One update with learning rate `lr`; `grads[i]` belongs to `params[i]`.
    pub fn step(&mut self, grads: &[Tensor], lr: f64) -> Result<()> {
        if grads.len() != self.params.len() {
            candle_core::bail!(
                "{} gradients for {} parameters",
                grads.len(),
                self.params.len()
            );
        }
        self.step += 1;
        let c = self.config;
        let t = self.step as i32;
        let bias1 = 1.0 - c.beta1.powi(t);
        let bias2 = 1.0 - c.beta2.powi(t);
        for ((p, g), (m, v)) in self.params.iter().zip(grads).zip(self.moments.iter_mut()) {
            // Detached: a gradient that still holds its graph would chain every step's graph
            // through the moments.
            let g = g.detach().to_dtype(p.dtype())?;
            *m = ((&*m * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
            *v = ((&*v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let decayed = if c.weight_decay != 0.0 {
                (p.as_tensor() * (1.0 - lr * c.weight_decay))?
            } else {
                p.as_tensor().clone()
            };
            let denom = ((v.sqrt()? / bias2.sqrt())? + c.eps)?;
            let update = (m.div(&denom)? * (lr / bias1))?;
            p.set(&(decayed - update)?)?;
        }
        Ok(())
    }
}
