//! The decoder's linear layers: a frozen weight (and bias), optionally with a LoRA adapter.
//!
//! `y = x·Wᵀ + b + s·B·A·dropout(x)` with `A: [r, in]`, `B: [out, r]`, `s = alpha / r` — PEFT's
//! LoRA, including where its dropout sits (on the adapter's input only). This is the only place in
//! the runtime that knows about adapters: inference with an adapter, LoRA training and gradients
//! with respect to the frozen weights (the Fisher of EWC) all go through [`Projection::forward`].

use std::sync::Arc;

use candle_core::{
    backend::BackendStorage, CpuStorage, CustomOp1, Layout, Module, Result, Shape, Tensor,
};
use candle_nn::{Linear, VarBuilder};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

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
    lora: Option<Lora>,
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
            lora: None,
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

    pub fn lora(&self) -> Option<&Lora> {
        self.lora.as_ref()
    }

    pub fn set_lora(&mut self, lora: Option<Lora>) {
        self.lora = lora;
    }

    /// Replaces the frozen weight (e.g. by a `Var` whose gradient the Fisher needs).
    pub fn set_weight(&mut self, weight: Tensor) {
        self.linear = Linear::new(weight, self.linear.bias().cloned());
    }

    /// `(in, out)` features.
    pub fn dims(&self) -> Result<(usize, usize)> {
        let (out, inp) = self.weight().dims2()?;
        Ok((inp, out))
    }

    pub fn forward(&self, x: &Tensor, dropout: Option<DropoutKey>) -> Result<Tensor> {
        let base = if x.track_op() && !self.weight().is_variable() {
            // Training: gradients flow through x but the weight is frozen, so skip the weight
            // gradient candle's matmul backward would compute and throw away.
            let y = frozen_matmul(x, self.weight())?;
            match self.bias() {
                Some(b) => y.broadcast_add(b)?,
                None => y,
            }
        } else {
            self.linear.forward(x)?
        };
        let Some(lora) = &self.lora else {
            return Ok(base);
        };
        let input = match dropout {
            Some(key) if lora.dropout > 0.0 => self.dropout(x, lora.dropout, key)?,
            _ => x.clone(),
        };
        let dims = input.dims().to_vec();
        let flat = input.flatten_to(dims.len() - 2)?;
        let flat = flat.reshape(((), dims[dims.len() - 1]))?;
        let down = flat.matmul(&lora.a.t()?)?;
        // Scaling the small B rather than the [tokens, out] product keeps one activation less.
        let up = down.matmul(&(&lora.b * lora.scale)?.t()?)?;
        let mut out_shape = dims;
        let last = out_shape.len() - 1;
        out_shape[last] = lora.b.dim(0)?;
        base + up.reshape(out_shape)?
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

/// `x·Wᵀ` whose backward pass returns the gradient of `x` only.
pub(crate) fn frozen_matmul(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let (out, inp) = weight.dims2()?;
    let flat = x.reshape(((), inp))?.contiguous()?;
    let y = flat.apply_op1_arc(Arc::new(Box::new(FrozenLinear {
        weight: weight.contiguous()?,
    })))?;
    let mut out_shape = dims;
    let last = out_shape.len() - 1;
    out_shape[last] = out;
    y.reshape(out_shape)
}

/// The custom op behind [`frozen_matmul`]: `[n, in] → [n, out]` with a captured weight.
struct FrozenLinear {
    /// `[out, in]`, contiguous.
    weight: Tensor,
}

impl FrozenLinear {
    fn shapes(&self, layout: &Layout) -> Result<(usize, usize, usize, Layout)> {
        let (n, k) = layout.shape().dims2()?;
        let (out, inp) = self.weight.dims2()?;
        if k != inp {
            candle_core::bail!("frozen linear: input has {k} features, weight expects {inp}");
        }
        // Wᵀ as a strided view: [in, out] with strides (1, in).
        let wt = Layout::contiguous((out, inp)).transpose(0, 1)?;
        Ok((n, k, out, wt))
    }
}

impl CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, k, out, wt) = self.shapes(layout)?;
        let (w, _) = self.weight.storage_and_layout();
        let candle_core::Storage::Cpu(w) = &*w else {
            candle_core::bail!("frozen linear: weight and input are on different devices");
        };
        let y = storage.matmul(w, (1, n, out, k), layout, &wt)?;
        Ok((y, Shape::from((n, out))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (n, k, out, wt) = self.shapes(layout)?;
        let (w, _) = self.weight.storage_and_layout();
        let candle_core::Storage::Cuda(w) = &*w else {
            candle_core::bail!("frozen linear: weight and input are on different devices");
        };
        let y = storage.matmul(w, (1, n, out, k), layout, &wt)?;
        Ok((y, Shape::from((n, out))))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad_res.matmul(&self.weight)?))
    }
}
