//! The decoder's linear layers: a frozen weight (and bias), optionally with an adapter.
//!
//! LoRA: `y = x·Wᵀ + b + s·B·A·dropout(x)` with `A: [r, in]`, `B: [out, r]`, `s = alpha / r` —
//! PEFT's LoRA, including where its dropout sits (on the adapter's input only).
//!
//! A mixture of LoRA experts (LoRAMoE, Dou et al. 2023, [`MoeLora`]):
//! `y = x·Wᵀ + b + Σᵢ gᵢ(x)·s·Bᵢ·Aᵢ·dropout(x)` with a dense token-level router
//! `g(x) = softmax(W_r·x)`, `W_r: [E, in]`.
//!
//! This is the only place in the runtime that knows about adapters: inference with an adapter,
//! LoRA and LoRAMoE training and gradients with respect to the frozen weights (the Fisher of EWC)
//! all go through [`Projection::forward`] (or [`Projection::forward_routed`], which also returns
//! a mixture's routing weights).

use candle_core::{DType, Result, Tensor, D};
use candle_nn::{Linear, VarBuilder};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::matmul::{linear, matmul, weight_product};
use super::quantized::QuantizedWeight;

/// A LoRA adapter on one linear layer.
#[derive(Debug, Clone)]
pub struct Lora {
    /// `[r, in]`
    pub a: Tensor,
    /// `[out, r]`
    pub b: Tensor,
    /// `alpha / r`
    pub scale: f64,
    /// Probability of zeroing an input element of the adapter path while training.
    pub dropout: f64,
}

impl Lora {
    pub fn rank(&self) -> Result<usize> {
        self.a.dim(0)
    }

    /// `s·B·A`, the adapter's change to the weight, `[out, in]`.
    pub fn delta_weight(&self) -> Result<Tensor> {
        self.b.matmul(&self.a)? * self.scale
    }
}

/// A mixture of LoRA experts on one linear layer (LoRAMoE): `E` experts of rank `r` and a dense
/// token-level router.
///
/// What follows the released code (Ablustrund/LoRAMoE, `peft/tuners/lora.py`): the router is a
/// bias-free linear layer `[E, in]` that reads the layer's input *without* dropout; its softmax is
/// taken in float32 (float64 for a float64 model) and cast back to the activations' dtype; every
/// expert's `B·A` is scaled by `s = alpha / r`; dropout applies to the experts' input only.
/// Where this differs: the released layer calls its dropout module once per expert, so each
/// expert sees its own mask; here the experts of a layer share one mask, as the formula
/// `Σᵢ gᵢ(x)·s·Bᵢ·Aᵢ·dropout(x)` writes it. That lets the layer run as two matmuls over the
/// stacked experts, and with `E = 1` (softmax ≡ 1) it is exactly plain LoRA, mask included.
#[derive(Debug, Clone)]
pub struct MoeLora {
    /// `[E, in]`: router logits are `x·W_rᵀ`.
    pub router: Tensor,
    /// Per expert, `[r, in]`.
    pub a: Vec<Tensor>,
    /// Per expert, `[out, r]`.
    pub b: Vec<Tensor>,
    /// `alpha / r`
    pub scale: f64,
    /// Probability of zeroing an input element of the experts' path while training.
    pub dropout: f64,
}

impl MoeLora {
    pub fn experts(&self) -> usize {
        self.a.len()
    }

    pub fn rank(&self) -> Result<usize> {
        match self.a.first() {
            Some(a) => a.dim(0),
            None => candle_core::bail!("a mixture of LoRA experts without experts"),
        }
    }

    /// The routing weights `g(x)`, `[n, E]`, of flattened inputs `[n, in]`; every row sums to 1.
    pub fn route(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let logits = matmul(x, &self.router.t()?)?.to_dtype(softmax_dtype(dtype))?;
        // Shift by the (constant) row maximum for range; it cancels in the softmax.
        let max = logits.max_keepdim(D::Minus1)?.detach();
        let e = logits.broadcast_sub(&max)?.exp()?;
        e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?.to_dtype(dtype)
    }
}

impl MoeLora {
    /// `Σᵢ gᵢ(x)·s·Bᵢ·Aᵢ·input` and the routing weights `g(x)`, `[.., E]`; `input` is `x`
    /// after the experts' dropout.
    fn forward(&self, x: &Tensor, input: &Tensor) -> Result<(Tensor, Tensor)> {
        let dims = input.dims().to_vec();
        let width = dims[dims.len() - 1];
        let flat = input.reshape(((), width))?;
        let gates = self.route(&x.reshape(((), width))?)?;
        let (e, r) = (self.experts(), self.rank()?);
        // The experts stacked: [E·r, in] down, then each expert's r columns weighted by its
        // gate, then [out, E·r] up — Σᵢ gᵢ·s·Bᵢ·Aᵢ·x in two matmuls.
        let down = matmul(&flat, &Tensor::cat(&self.a, 0)?.t()?)?;
        let n = down.dim(0)?;
        let weights = gates
            .unsqueeze(2)?
            .broadcast_as((n, e, r))?
            .reshape((n, e * r))?;
        let up = matmul(
            &(down * weights)?,
            &(Tensor::cat(&self.b, 1)? * self.scale)?.t()?,
        )?;
        let mut out_shape = dims.clone();
        *out_shape.last_mut().expect("at least one dim") = self.b[0].dim(0)?;
        let mut route_shape = dims;
        *route_shape.last_mut().expect("at least one dim") = e;
        Ok((up.reshape(out_shape)?, gates.reshape(route_shape)?))
    }
}

/// The precision of a router's softmax: float32, or float64 for a float64 model.
fn softmax_dtype(dtype: DType) -> DType {
    if dtype == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

/// What a linear layer carries on top of its frozen weight.
#[derive(Debug, Clone)]
pub enum Adapter {
    Lora(Lora),
    Moe(MoeLora),
}

impl Adapter {
    fn dropout(&self) -> f64 {
        match self {
            Adapter::Lora(l) => l.dropout,
            Adapter::Moe(m) => m.dropout,
        }
    }
}

/// Where the random dropout masks of one forward pass come from: a counter-based stream, so that
/// a training run resumed from a checkpoint draws exactly the masks an uninterrupted run would.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DropoutKey(pub u64);

impl DropoutKey {
    fn stream(self, projection: u64) -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(splitmix(self.0 ^ splitmix(projection)))
    }
}

/// SplitMix64's finaliser: decorrelates nearby seeds.
pub fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[derive(Debug, Clone)]
pub struct Projection {
    linear: Linear,
    /// The frozen weight in a quantized type, when the model runs quantized: inference on a few
    /// rows multiplies by it instead of by `linear`'s float weight (see [`quantized`]).
    quantized: Option<QuantizedWeight>,
    adapter: Option<Adapter>,
    /// Unique within the decoder; selects this layer's dropout stream.
    index: u64,
}

impl Projection {
    pub fn load(
        vb: VarBuilder,
        in_dim: usize,
        out_dim: usize,
        bias: bool,
        index: u64,
    ) -> Result<Self> {
        Ok(Self {
            linear: candle_nn::linear_b(in_dim, out_dim, bias, vb)?,
            quantized: None,
            adapter: None,
            index,
        })
    }

    /// The frozen weight, `[out, in]`.
    pub fn weight(&self) -> &Tensor {
        self.linear.weight()
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.linear.bias()
    }

    /// The plain LoRA adapter, if that is what the layer carries.
    pub fn lora(&self) -> Option<&Lora> {
        match &self.adapter {
            Some(Adapter::Lora(l)) => Some(l),
            _ => None,
        }
    }

    pub fn set_lora(&mut self, lora: Option<Lora>) {
        self.adapter = lora.map(Adapter::Lora);
    }

    /// The mixture of LoRA experts, if that is what the layer carries.
    pub fn moe(&self) -> Option<&MoeLora> {
        match &self.adapter {
            Some(Adapter::Moe(m)) => Some(m),
            _ => None,
        }
    }

    pub fn adapter(&self) -> Option<&Adapter> {
        self.adapter.as_ref()
    }

    pub fn set_adapter(&mut self, adapter: Option<Adapter>) {
        self.adapter = adapter;
    }

    /// Replaces the frozen weight (e.g. by a `Var` whose gradient the Fisher needs); a quantized
    /// copy of the old weight is dropped.
    pub fn set_weight(&mut self, weight: Tensor) {
        self.linear = Linear::new(weight, self.linear.bias().cloned());
        self.quantized = None;
    }

    /// Runs inference on this quantized copy of the frozen weight (`[out, in]`, see
    /// [`crate::model::Decoder::use_quantized`]); `None` goes back to the float weight.
    pub fn set_quantized(&mut self, weight: Option<QuantizedWeight>) {
        self.quantized = weight;
    }

    pub fn is_quantized(&self) -> bool {
        self.quantized.is_some()
    }

    /// `(in, out)` features.
    pub fn dims(&self) -> Result<(usize, usize)> {
        let (out, inp) = self.weight().dims2()?;
        Ok((inp, out))
    }

    pub fn forward(&self, x: &Tensor, dropout: Option<DropoutKey>) -> Result<Tensor> {
        Ok(self.forward_routed(x, dropout)?.0)
    }

    /// [`Projection::forward`], and for a mixture of LoRA experts its routing weights
    /// `[.., E]` (the input's leading dimensions), which the load-balancing loss reads.
    pub fn forward_routed(
        &self,
        x: &Tensor,
        dropout: Option<DropoutKey>,
    ) -> Result<(Tensor, Option<Tensor>)> {
        // A frozen weight gets no gradient (see `matmul`); one made a `Var` does.
        let base = weight_product(x, self.weight(), self.quantized.as_ref())?;
        let base = match self.bias() {
            Some(b) => base.broadcast_add(b)?,
            None => base,
        };
        let Some(adapter) = &self.adapter else {
            return Ok((base, None));
        };
        let input = match dropout {
            Some(key) if adapter.dropout() > 0.0 => self.dropout(x, adapter.dropout(), key)?,
            _ => x.clone(),
        };
        match adapter {
            Adapter::Lora(lora) => {
                // Scaling the small B rather than the [tokens, out] product keeps one
                // activation less.
                let down = linear(&input, &lora.a)?;
                let up = linear(&down, &(&lora.b * lora.scale)?)?;
                Ok(((base + up)?, None))
            }
            Adapter::Moe(moe) => {
                let (up, routes) = moe.forward(x, &input)?;
                Ok(((base + up)?, Some(routes)))
            }
        }
    }

    /// Inverted dropout (survivors scaled by 1/(1-p)), as `torch.nn.Dropout` in training mode.
    fn dropout(&self, x: &Tensor, p: f64, key: DropoutKey) -> Result<Tensor> {
        let mut rng = key.stream(self.index);
        let keep = 1.0 - p;
        let scale = (1.0 / keep) as f32;
        let mask: Vec<f32> = (0..x.elem_count())
            .map(|_| {
                if rng.random::<f64>() < keep {
                    scale
                } else {
                    0.0
                }
            })
            .collect();
        let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
        x * mask
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use candle_core::{DType, Device, Tensor};
    use candle_nn::VarBuilder;

    use super::*;

    /// Reproducible values in [-0.5, 0.5) without a random-number crate.
    fn values(n: usize, seed: u64) -> Vec<f64> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = splitmix(s);
                (s >> 11) as f64 / (1u64 << 53) as f64 - 0.5
            })
            .collect()
    }

    fn tensor(rows: usize, cols: usize, seed: u64) -> Tensor {
        Tensor::from_vec(values(rows * cols, seed), (rows, cols), &Device::Cpu).unwrap()
    }

    #[test]
    fn mixture_is_the_gated_sum_of_its_experts() {
        let (inp, out, r, e) = (5, 3, 2, 3);
        let weight = tensor(out, inp, 1);
        let vb = VarBuilder::from_tensors(
            HashMap::from([("weight".to_owned(), weight.clone())]),
            DType::F64,
            &Device::Cpu,
        );
        let mut p = Projection::load(vb, inp, out, false, 0).unwrap();
        let moe = MoeLora {
            router: tensor(e, inp, 2),
            a: (0..e).map(|i| tensor(r, inp, 10 + i as u64)).collect(),
            b: (0..e).map(|i| tensor(out, r, 20 + i as u64)).collect(),
            scale: 1.5,
            dropout: 0.0,
        };
        p.set_adapter(Some(Adapter::Moe(moe.clone())));
        // [batch 2, seq 2, in]
        let x = Tensor::from_vec(values(4 * inp, 3), (2, 2, inp), &Device::Cpu).unwrap();
        let (y, routes) = p.forward_routed(&x, None).unwrap();
        let routes = routes.expect("a mixture returns its routing weights");
        assert_eq!(routes.dims(), [2, 2, e]);
        let y: Vec<Vec<Vec<f64>>> = y.to_vec3().unwrap();
        let g: Vec<Vec<Vec<f64>>> = routes.to_vec3().unwrap();
        // By hand, one token at a time: W·x + Σᵢ softmax(W_r·x)ᵢ · s · Bᵢ·Aᵢ·x.
        let mat = |t: &Tensor| t.to_vec2::<f64>().unwrap();
        let matvec = |m: &[Vec<f64>], v: &[f64]| -> Vec<f64> {
            m.iter()
                .map(|row| row.iter().zip(v).map(|(a, b)| a * b).sum())
                .collect()
        };
        let xs: Vec<Vec<Vec<f64>>> = x.to_vec3().unwrap();
        for bi in 0..2 {
            for t in 0..2 {
                let xv = &xs[bi][t];
                let logits = matvec(&mat(&moe.router), xv);
                let z: f64 = logits.iter().map(|l| l.exp()).sum();
                let gates: Vec<f64> = logits.iter().map(|l| l.exp() / z).collect();
                let mut want = matvec(&mat(&weight), xv);
                for ((a, b), gate) in moe.a.iter().zip(&moe.b).zip(&gates) {
                    let up = matvec(&mat(b), &matvec(&mat(a), xv));
                    for (w, u) in want.iter_mut().zip(up) {
                        *w += gate * 1.5 * u;
                    }
                }
                for (got, want) in y[bi][t].iter().zip(&want) {
                    assert!((got - want).abs() < 1e-12, "{got} vs {want}");
                }
                for (got, want) in g[bi][t].iter().zip(&gates) {
                    assert!((got - want).abs() < 1e-12, "{got} vs {want}");
                }
                assert!((g[bi][t].iter().sum::<f64>() - 1.0).abs() < 1e-12);
            }
        }
        // A plain LoRA layer returns no routing weights.
        p.set_lora(Some(Lora {
            a: moe.a[0].clone(),
            b: moe.b[0].clone(),
            scale: 1.5,
            dropout: 0.0,
        }));
        assert!(p.forward_routed(&x, None).unwrap().1.is_none());
    }

    #[test]
    fn one_expert_is_plain_lora_bit_for_bit_with_dropout() {
        let (inp, out, r) = (6, 4, 2);
        let vb = VarBuilder::from_tensors(
            HashMap::from([("weight".to_owned(), tensor(out, inp, 5))]),
            DType::F64,
            &Device::Cpu,
        );
        let mut p = Projection::load(vb, inp, out, false, 7).unwrap();
        let (a, b) = (tensor(r, inp, 6), tensor(out, r, 7));
        let x = Tensor::from_vec(values(3 * inp, 8), (3, inp), &Device::Cpu).unwrap();
        let key = Some(DropoutKey(42));
        p.set_lora(Some(Lora {
            a: a.clone(),
            b: b.clone(),
            scale: 2.0,
            dropout: 0.3,
        }));
        let plain: Vec<Vec<f64>> = p.forward(&x, key).unwrap().to_vec2().unwrap();
        p.set_adapter(Some(Adapter::Moe(MoeLora {
            router: tensor(1, inp, 9),
            a: vec![a],
            b: vec![b],
            scale: 2.0,
            dropout: 0.3,
        })));
        let mixed: Vec<Vec<f64>> = p.forward(&x, key).unwrap().to_vec2().unwrap();
        assert_eq!(plain, mixed);
        let undropped: Vec<Vec<f64>> = p.forward(&x, None).unwrap().to_vec2().unwrap();
        assert_ne!(undropped, mixed, "the mask must change something");
    }
}
