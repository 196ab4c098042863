//! The one decoder-only transformer behind every supported architecture.
//!
//! Reads top-down: norms and rotary embeddings, attention, MLP, block, model. Architecture
//! differences come from [`ModelConfig`] settings. Without gradients, norms (float32), rotary
//! embeddings and the attention's scale-mask-softmax run as one-pass kernels (candle's, and
//! [`fused`]); with gradients they run as [`kernels`]' ops, which record a closed-form backward
//! (candle's fused kernels record none, and the trainer reuses this code).

use std::cell::RefCell;
use std::collections::HashMap;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;

use super::config::{Activation, ModelConfig, NormStyle, RopeSpec};
use super::fused;
use super::kernels::{self, masked_softmax};
use super::kv_cache::KvCache;
use super::matmul::{matmul, weight_product};
use super::projection::{DropoutKey, Projection};
use super::quantized::QuantizedWeight;

type Result<T> = candle_core::Result<T>;

/// Which implementation of the softmax the attention uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernels {
    /// candle's fused softmax: fastest, no backward pass.
    Fused,
    /// Differentiable tensor ops, for training.
    Differentiable,
}

/// The precision of norms, attention scores and logits: float32, or float64 for a float64 model
/// (gradient checks by finite differences need every step in float64).
fn upcast(dtype: DType) -> DType {
    if dtype == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

/// Additive mask value: finite, so that a query that sees nothing (a padding row) stays finite.
const MASKED: f32 = -1e30;

#[derive(Debug, Clone)]
struct RmsNorm {
    weight: Tensor,
    eps: f64,
    style: NormStyle,
}

impl RmsNorm {
    fn load(vb: VarBuilder, size: usize, eps: f64, style: NormStyle) -> Result<Self> {
        Ok(Self {
            weight: vb.get(size, "weight")?,
            eps,
            style,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        if x.track_op() && upcast(dtype) == dtype {
            // Training: one graph node instead of seven (same arithmetic).
            let w = match self.style {
                NormStyle::Scale => self.weight.clone(),
                NormStyle::OnePlusScale => (self.weight.to_dtype(dtype)? + 1.0)?,
            };
            return kernels::rms_norm(x, &w, self.eps);
        }
        if dtype == DType::F32 {
            // Inference in float32: candle's one-pass kernel (same formula; float64 stays on
            // the tensor ops, whose sums candle's kernel would take in float32).
            let w = match self.style {
                NormStyle::Scale => self.weight.clone(),
                NormStyle::OnePlusScale => (self.weight.to_dtype(dtype)? + 1.0)?,
            };
            return candle_nn::ops::rms_norm(&x.contiguous()?, &w, self.eps as f32);
        }
        let x32 = x.to_dtype(upcast(dtype))?;
        let inv_rms = (x32.sqr()?.mean_keepdim(D::Minus1)? + self.eps)?
            .sqrt()?
            .recip()?;
        let normed = x32.broadcast_mul(&inv_rms)?;
        match self.style {
            // transformers casts back before the weight for Llama-style norms ...
            NormStyle::Scale => normed.to_dtype(dtype)?.broadcast_mul(&self.weight),
            // ... and after it for Gemma's (1 + w).
            NormStyle::OnePlusScale => {
                let w = (self.weight.to_dtype(upcast(dtype))? + 1.0)?;
                normed.broadcast_mul(&w)?.to_dtype(dtype)
            }
        }
    }
}

/// cos/sin of every (row, position) for one rope setting, shaped `[batch, 1, seq, head_dim]`
/// (both halves, for the differentiable kernel) and `[batch, seq, head_dim / 2]` (one half, for
/// candle's fused rope).
struct RotaryAngles {
    cos: Tensor,
    sin: Tensor,
    cos_half: Tensor,
    sin_half: Tensor,
}

impl RotaryAngles {
    fn new(spec: &RopeSpec, head_dim: usize, positions: &Tensor, dtype: DType) -> Result<Self> {
        let (b, t) = positions.dims2()?;
        let inv_freq: Vec<f32> = spec
            .inv_freq(head_dim)
            .into_iter()
            .map(|f| f as f32)
            .collect();
        let inv_freq = Tensor::from_vec(inv_freq, (1, head_dim / 2), positions.device())?;
        let pos = positions.to_dtype(DType::F32)?.reshape((b * t, 1))?;
        let freqs = pos.broadcast_mul(&inv_freq)?;
        let emb = Tensor::cat(&[&freqs, &freqs], 1)?.reshape((b, 1, t, head_dim))?;
        let half = freqs.reshape((b, t, head_dim / 2))?;
        Ok(Self {
            cos: emb.cos()?.to_dtype(dtype)?,
            sin: emb.sin()?.to_dtype(dtype)?,
            cos_half: half.cos()?.to_dtype(dtype)?,
            sin_half: half.sin()?.to_dtype(dtype)?,
        })
    }

    /// `x·cos + rotate_half(x)·sin` on `[batch, heads, seq, head_dim]` (transformers' convention).
    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        if x.track_op() {
            return kernels::rope(x, &self.cos, &self.sin);
        }
        // Inference: candle's one-pass kernel, the same products and sums.
        candle_nn::rotary_emb::rope(&x.contiguous()?, &self.cos_half, &self.sin_half)
    }
}

/// Everything one forward call shares across layers.
struct ForwardContext<'a> {
    /// One mask per distinct sliding window (None = full attention), `[batch, 1, 1, q, k]`.
    masks: Vec<(Option<usize>, Tensor)>,
    angles: Vec<(&'a RopeSpec, RotaryAngles)>,
    kernels: Kernels,
    /// Set while training with LoRA dropout.
    dropout: Option<DropoutKey>,
    /// The routing weights of every mixture-of-LoRA layer, in the order the layers ran.
    routes: RefCell<Vec<Tensor>>,
}

impl ForwardContext<'_> {
    fn mask(&self, window: Option<usize>) -> &Tensor {
        &self
            .masks
            .iter()
            .find(|(w, _)| *w == window)
            .expect("mask built for every window")
            .1
    }

    fn angles(&self, spec: &RopeSpec) -> &RotaryAngles {
        &self
            .angles
            .iter()
            .find(|(s, _)| *s == spec)
            .expect("angles built for every rope")
            .1
    }

    /// Runs one linear layer, keeping the routing weights a mixture of LoRA experts returns.
    fn project(&self, proj: &Projection, x: &Tensor) -> Result<Tensor> {
        let (y, route) = proj.forward_routed(x, self.dropout)?;
        if let Some(route) = route {
            self.routes.borrow_mut().push(route);
        }
        Ok(y)
    }
}

#[derive(Debug, Clone)]
struct Attention {
    q_proj: Projection,
    k_proj: Projection,
    v_proj: Projection,
    o_proj: Projection,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
    scale: f64,
    softcap: Option<f64>,
}

impl Attention {
    fn load(vb: VarBuilder, cfg: &ModelConfig, index: u64) -> Result<Self> {
        let (h, kv, hd, d) = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
            cfg.hidden_size,
        );
        let norm = |name: &str| RmsNorm::load(vb.pp(name), hd, cfg.rms_norm_eps, cfg.norm_style);
        Ok(Self {
            q_proj: Projection::load(vb.pp("q_proj"), d, h * hd, cfg.qkv_bias, index)?,
            k_proj: Projection::load(vb.pp("k_proj"), d, kv * hd, cfg.qkv_bias, index + 1)?,
            v_proj: Projection::load(vb.pp("v_proj"), d, kv * hd, cfg.qkv_bias, index + 2)?,
            o_proj: Projection::load(vb.pp("o_proj"), h * hd, d, false, index + 3)?,
            q_norm: cfg.qk_norm.then(|| norm("q_norm")).transpose()?,
            k_norm: cfg.qk_norm.then(|| norm("k_norm")).transpose()?,
            num_heads: h,
            num_kv_heads: kv,
            head_dim: hd,
            scale: cfg.attention_scale,
            softcap: cfg.attn_logit_softcapping,
        })
    }

    fn heads(
        &self,
        x: &Tensor,
        proj: &Projection,
        n: usize,
        norm: Option<&RmsNorm>,
        ctx: &ForwardContext,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let y = ctx.project(proj, x)?.reshape((b, t, n, self.head_dim))?;
        let y = match norm {
            Some(norm) => norm.forward(&y)?,
            None => y,
        };
        y.transpose(1, 2)?.contiguous()
    }

    fn forward(
        &self,
        x: &Tensor,
        layer: usize,
        spec: &super::config::LayerSpec,
        ctx: &ForwardContext,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let angles = ctx.angles(&spec.rope);
        let q = angles.apply(&self.heads(
            x,
            &self.q_proj,
            self.num_heads,
            self.q_norm.as_ref(),
            ctx,
        )?)?;
        let k = angles.apply(&self.heads(
            x,
            &self.k_proj,
            self.num_kv_heads,
            self.k_norm.as_ref(),
            ctx,
        )?)?;
        let v = self.heads(x, &self.v_proj, self.num_kv_heads, None, ctx)?;
        let (k, v) = match cache {
            Some(cache) => cache.append(layer, k, v)?,
            None => (k, v),
        };
        let s = k.dim(2)?;
        // Grouped-query attention without copying keys: the query heads that share one kv head
        // are stacked along the sequence axis.
        let rep = self.num_heads / self.num_kv_heads;
        let q = q.reshape((b, self.num_kv_heads, rep * t, self.head_dim))?;
        if ctx.kernels == Kernels::Differentiable && self.softcap.is_none() {
            // Training: one fused, differentiable masked softmax (see `kernels`).
            let scores = matmul(&q, &k.t()?)?.to_dtype(upcast(x.dtype()))?.reshape((
                b,
                self.num_kv_heads,
                rep,
                t,
                s,
            ))?;
            let probs = masked_softmax(&scores, ctx.mask(spec.sliding_window), self.scale)?
                .to_dtype(v.dtype())?
                .reshape((b, self.num_kv_heads, rep * t, s))?;
            return self.attend(&probs, &v, b, t, ctx);
        }
        if ctx.kernels == Kernels::Fused && self.softcap.is_none() {
            // Inference: scale, mask and softmax in one pass (see `fused`); a half-precision
            // model scales in its own dtype first, as transformers does.
            let scores = matmul(&q, &k.t()?)?;
            let (scores, scale) = if upcast(x.dtype()) == x.dtype() {
                (scores, self.scale)
            } else {
                ((scores * self.scale)?.to_dtype(upcast(x.dtype()))?, 1.0)
            };
            let scores = scores.reshape((b, self.num_kv_heads, rep, t, s))?;
            let probs = fused::masked_softmax(&scores, ctx.mask(spec.sliding_window), scale)?
                .to_dtype(v.dtype())?
                .reshape((b, self.num_kv_heads, rep * t, s))?;
            return self.attend(&probs, &v, b, t, ctx);
        }
        let scores = (matmul(&q, &k.t()?)? * self.scale)?.to_dtype(upcast(x.dtype()))?;
        let scores = match self.softcap {
            Some(cap) => ((scores / cap)?.tanh()? * cap)?,
            None => scores,
        };
        let scores = scores
            .reshape((b, self.num_kv_heads, rep, t, s))?
            .broadcast_add(&ctx.mask(spec.sliding_window).to_dtype(scores.dtype())?)?;
        let probs = match ctx.kernels {
            Kernels::Fused => candle_nn::ops::softmax_last_dim(&scores)?,
            Kernels::Differentiable => candle_nn::ops::softmax(&scores, D::Minus1)?,
        };
        let probs = probs
            .to_dtype(v.dtype())?
            .reshape((b, self.num_kv_heads, rep * t, s))?;
        self.attend(&probs, &v, b, t, ctx)
    }

    /// Attention-weighted values through the output projection.
    fn attend(
        &self,
        probs: &Tensor,
        v: &Tensor,
        b: usize,
        t: usize,
        ctx: &ForwardContext,
    ) -> Result<Tensor> {
        let out = matmul(probs, v)?.reshape((b, self.num_heads, t, self.head_dim))?;
        let out = out
            .transpose(1, 2)?
            .reshape((b, t, self.num_heads * self.head_dim))?;
        ctx.project(&self.o_proj, &out)
    }
}

#[derive(Debug, Clone)]
struct Mlp {
    gate_proj: Projection,
    up_proj: Projection,
    down_proj: Projection,
    activation: Activation,
}

impl Mlp {
    fn load(vb: VarBuilder, cfg: &ModelConfig, index: u64) -> Result<Self> {
        let (d, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            gate_proj: Projection::load(vb.pp("gate_proj"), d, i, false, index)?,
            up_proj: Projection::load(vb.pp("up_proj"), d, i, false, index + 1)?,
            down_proj: Projection::load(vb.pp("down_proj"), i, d, false, index + 2)?,
            activation: cfg.activation,
        })
    }

    fn forward(&self, x: &Tensor, ctx: &ForwardContext) -> Result<Tensor> {
        let gate = ctx.project(&self.gate_proj, x)?;
        if self.activation == Activation::Silu && !gate.track_op() {
            // Inference: activation and product in one pass.
            let up = ctx.project(&self.up_proj, x)?;
            return ctx.project(&self.down_proj, &fused::silu_mul(&gate, &up)?);
        }
        let gate = match self.activation {
            Activation::Silu => candle_nn::ops::silu(&gate)?,
            Activation::GeluTanh => gate.gelu()?,
        };
        ctx.project(&self.down_proj, &(gate * ctx.project(&self.up_proj, x)?)?)
    }
}

#[derive(Debug, Clone)]
struct Block {
    attn: Attention,
    mlp: Mlp,
    input_norm: RmsNorm,
    /// Llama: the norm before the MLP. Gemma 3: the norm after attention.
    post_attention_norm: RmsNorm,
    /// Gemma 3 only: before and after the MLP.
    feedforward_norms: Option<(RmsNorm, RmsNorm)>,
}

impl Block {
    fn load(vb: VarBuilder, cfg: &ModelConfig, layer: usize) -> Result<Self> {
        // Projection indices: 8 per layer (q, k, v, o, gate, up, down).
        let index = 8 * layer as u64;
        let norm = |name: &str| {
            RmsNorm::load(
                vb.pp(name),
                cfg.hidden_size,
                cfg.rms_norm_eps,
                cfg.norm_style,
            )
        };
        Ok(Self {
            attn: Attention::load(vb.pp("self_attn"), cfg, index)?,
            mlp: Mlp::load(vb.pp("mlp"), cfg, index + 4)?,
            input_norm: norm("input_layernorm")?,
            post_attention_norm: norm("post_attention_layernorm")?,
            feedforward_norms: if cfg.sandwich_norms {
                Some((
                    norm("pre_feedforward_layernorm")?,
                    norm("post_feedforward_layernorm")?,
                ))
            } else {
                None
            },
        })
    }

    fn projections(&self) -> [(&'static str, &Projection); 7] {
        [
            ("self_attn.q_proj", &self.attn.q_proj),
            ("self_attn.k_proj", &self.attn.k_proj),
            ("self_attn.v_proj", &self.attn.v_proj),
            ("self_attn.o_proj", &self.attn.o_proj),
            ("mlp.gate_proj", &self.mlp.gate_proj),
            ("mlp.up_proj", &self.mlp.up_proj),
            ("mlp.down_proj", &self.mlp.down_proj),
        ]
    }

    fn projections_mut(&mut self) -> [(&'static str, &mut Projection); 7] {
        [
            ("self_attn.q_proj", &mut self.attn.q_proj),
            ("self_attn.k_proj", &mut self.attn.k_proj),
            ("self_attn.v_proj", &mut self.attn.v_proj),
            ("self_attn.o_proj", &mut self.attn.o_proj),
            ("mlp.gate_proj", &mut self.mlp.gate_proj),
            ("mlp.up_proj", &mut self.mlp.up_proj),
            ("mlp.down_proj", &mut self.mlp.down_proj),
        ]
    }

    fn forward(
        &self,
        x: &Tensor,
        layer: usize,
        spec: &super::config::LayerSpec,
        ctx: &ForwardContext,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let attn = self
            .attn
            .forward(&self.input_norm.forward(x)?, layer, spec, ctx, cache)?;
        match &self.feedforward_norms {
            None => {
                let x = (x + attn)?;
                let mlp = self
                    .mlp
                    .forward(&self.post_attention_norm.forward(&x)?, ctx)?;
                x + mlp
            }
            Some((pre, post)) => {
                let x = (x + self.post_attention_norm.forward(&attn)?)?;
                let mlp = self.mlp.forward(&pre.forward(&x)?, ctx)?;
                x + post.forward(&mlp)?
            }
        }
    }
}

/// A decoder-only language model: token ids in, hidden states out; the output head is applied
/// separately, at the positions a caller asks for.
#[derive(Debug, Clone)]
pub struct Decoder {
    cfg: ModelConfig,
    embed_tokens: Tensor,
    blocks: Vec<Block>,
    norm: RmsNorm,
    lm_head: Tensor,
    /// The output head in a quantized type, when the model runs quantized (see
    /// [`Decoder::use_quantized`]).
    lm_head_quantized: Option<QuantizedWeight>,
    kernels: Kernels,
}

/// One batch of new tokens: every row has the same number of slots; `valid[b][t] == false` marks
/// padding, which is never attended to.
pub struct Batch<'a> {
    pub tokens: &'a [Vec<u32>],
    pub positions: &'a [Vec<i64>],
    pub valid: &'a [Vec<bool>],
}

/// Several sequences packed into one row of a [`Batch`], each seeing only its own tokens.
///
/// Every new token belongs to a segment. A token sees the cached keys and the new tokens of its
/// own segment and of the segments above it (`parent`, up to segment 0, the trunk), always only
/// at positions up to its own. Choices of one question thus share the question's tokens (one
/// segment) without seeing each other (a segment each, children of the question's).
pub struct Segments<'a> {
    /// `[batch][seq]`: the segment of every new token.
    pub of_token: &'a [Vec<u32>],
    /// `[batch][segment]`: the parent of every segment; `parent[s] < s` for `s > 0`, and
    /// `parent[0] == 0`.
    pub parent: &'a [Vec<u32>],
}

impl Segments<'_> {
    fn check(&self, batch: &Batch) -> Result<()> {
        if self.of_token.len() != batch.tokens.len() || self.parent.len() != batch.tokens.len() {
            candle_core::bail!("segments: one list per batch row expected");
        }
        for (row, (of, parent)) in self.of_token.iter().zip(self.parent).enumerate() {
            if of.len() != batch.tokens[row].len() {
                candle_core::bail!(
                    "segments: row {row} has {} tokens but {} segment ids",
                    batch.tokens[row].len(),
                    of.len()
                );
            }
            if parent.first().is_some_and(|&p| p != 0) {
                candle_core::bail!("segments: row {row}: segment 0 must be its own parent");
            }
            if let Some(s) = (1..parent.len()).find(|&s| parent[s] as usize >= s) {
                candle_core::bail!(
                    "segments: row {row}: segment {s} has parent {} (must be smaller)",
                    parent[s]
                );
            }
            if let Some(&s) = of.iter().find(|&&s| s as usize >= parent.len().max(1)) {
                candle_core::bail!("segments: row {row}: segment {s} has no parent entry");
            }
        }
        Ok(())
    }

    /// `[segment][segment]` of one row: whether a token of the first may see one of the second.
    fn visibility(&self, row: usize) -> Vec<Vec<bool>> {
        let parent = &self.parent[row];
        let n = parent.len().max(1);
        let mut sees = vec![vec![false; n]; n];
        for (q, sees) in sees.iter_mut().enumerate() {
            let mut s = q;
            loop {
                sees[s] = true;
                if s == 0 {
                    break;
                }
                s = parent[s] as usize;
            }
        }
        sees
    }
}

impl Decoder {
    /// Loads from a `VarBuilder` whose names follow transformers' (`model.layers.N.…`).
    pub fn load(vb: VarBuilder, cfg: &ModelConfig) -> Result<Self> {
        let embed_tokens = vb
            .pp("model.embed_tokens")
            .get((cfg.vocab_size, cfg.hidden_size), "weight")?;
        let blocks = (0..cfg.num_layers())
            .map(|i| Block::load(vb.pp(format!("model.layers.{i}")), cfg, i))
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::load(
            vb.pp("model.norm"),
            cfg.hidden_size,
            cfg.rms_norm_eps,
            cfg.norm_style,
        )?;
        let lm_head = if cfg.tie_word_embeddings {
            embed_tokens.clone()
        } else {
            vb.pp("lm_head")
                .get((cfg.vocab_size, cfg.hidden_size), "weight")?
        };
        Ok(Self {
            cfg: cfg.clone(),
            embed_tokens,
            blocks,
            norm,
            lm_head,
            lm_head_quantized: None,
            kernels: Kernels::Fused,
        })
    }

    /// Runs inference on quantized weights: every linear layer and the output head that has an
    /// entry in `weights` (transformers names, `model.layers.0.mlp.up_proj.weight`,
    /// `lm_head.weight`, or `model.embed_tokens.weight` for a tied head; `[out, in]` as stored
    /// in a GGUF file) multiplies products of up to [`super::quantized::MAX_ROWS`] rows (decoding) by
    /// it with candle's quantized matmul instead of by its float weight: faster, approximate.
    /// Longer products and training keep the float weights. Returns how many took a quantized
    /// weight. Types candle has no vectorised kernel for are re-encoded first
    /// (see [`super::quantized::has_vector_kernel`]).
    pub fn use_quantized(&mut self, weights: &HashMap<String, QTensor>) -> Result<usize> {
        let device = self.device().clone();
        let on_device = |name: &str, float: &Tensor| -> Result<Option<QuantizedWeight>> {
            let Some(q) = weights.get(name) else {
                return Ok(None);
            };
            if q.shape() != float.shape() {
                candle_core::bail!(
                    "quantized {name} has shape {:?}, the model's weight {:?}",
                    q.shape(),
                    float.shape()
                );
            }
            QuantizedWeight::new(q, &device).map(Some)
        };
        let mut count = 0;
        for (name, p) in self.projections_mut() {
            let q = on_device(&format!("{name}.weight"), p.weight())?;
            count += usize::from(q.is_some());
            p.set_quantized(q);
        }
        let head = if self.cfg.tie_word_embeddings {
            "model.embed_tokens.weight"
        } else {
            "lm_head.weight"
        };
        self.lm_head_quantized = on_device(head, &self.lm_head)?;
        count += usize::from(self.lm_head_quantized.is_some());
        Ok(count)
    }

    /// Quantizes every linear layer's float weight and the output head to `dtype` and runs
    /// inference on them ([`Decoder::use_quantized`]): what a GGUF file of this model in that
    /// type would run. Dimensions must be multiples of the type's block size.
    pub fn quantize(&mut self, dtype: GgmlDType) -> Result<usize> {
        let mut weights = HashMap::new();
        for (name, p) in self.projections() {
            weights.insert(
                format!("{name}.weight"),
                QTensor::quantize(&p.weight().to_dtype(DType::F32)?, dtype)?,
            );
        }
        let head = if self.cfg.tie_word_embeddings {
            "model.embed_tokens.weight"
        } else {
            "lm_head.weight"
        };
        weights.insert(
            head.to_owned(),
            QTensor::quantize(&self.lm_head.to_dtype(DType::F32)?, dtype)?,
        );
        self.use_quantized(&weights)
    }

    /// Whether any weight runs quantized.
    pub fn is_quantized(&self) -> bool {
        self.lm_head_quantized.is_some() || self.projections().iter().any(|(_, p)| p.is_quantized())
    }

    pub fn with_kernels(mut self, kernels: Kernels) -> Self {
        self.kernels = kernels;
        self
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        self.embed_tokens.device()
    }

    pub fn dtype(&self) -> DType {
        self.embed_tokens.dtype()
    }

    pub fn new_cache(&self, batch: usize) -> KvCache {
        KvCache::new(self.cfg.num_layers(), batch)
    }

    /// Runs new tokens through the model, extending `cache`; returns final hidden states
    /// `[batch, seq, hidden]` (after the last norm).
    pub fn forward(&self, batch: &Batch, cache: &mut KvCache) -> Result<Tensor> {
        self.forward_with(batch, None, cache)
    }

    fn forward_with(
        &self,
        batch: &Batch,
        segments: Option<&Segments>,
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        check_batch(batch, self.cfg.vocab_size)?;
        if cache.batch() != batch.tokens.len() {
            candle_core::bail!(
                "cache has {} rows but the batch has {}",
                cache.batch(),
                batch.tokens.len()
            );
        }
        for (row, (pos, ok)) in batch.positions.iter().zip(batch.valid).enumerate() {
            cache.positions[row].extend_from_slice(pos);
            cache.valid[row].extend_from_slice(ok);
        }
        let (key_pos, key_valid) = (cache.positions.clone(), cache.valid.clone());
        Ok(self
            .run(
                batch,
                Some(cache),
                Keys {
                    positions: &key_pos,
                    valid: &key_valid,
                    segments,
                },
                self.kernels,
                None,
            )?
            .0)
    }

    /// [`Decoder::forward`] for rows that pack several sequences (see [`Segments`]). Afterwards
    /// the cache keeps only the new tokens of segment 0 visible to later calls.
    pub fn forward_segmented(
        &self,
        batch: &Batch,
        segments: &Segments,
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        segments.check(batch)?;
        let cached = cache.len();
        let hidden = self.forward_with(batch, Some(segments), cache)?;
        for (row, of) in segments.of_token.iter().enumerate() {
            for (i, &s) in of.iter().enumerate() {
                if s != 0 {
                    cache.valid[row][cached + i] = false;
                }
            }
        }
        Ok(hidden)
    }

    /// The training forward pass: whole sequences, no KV cache, only differentiable ops (candle's
    /// fused kernels record no backward pass), LoRA dropout drawn from `dropout` when given.
    pub fn forward_train(&self, batch: &Batch, dropout: Option<DropoutKey>) -> Result<Tensor> {
        Ok(self.forward_train_routed(batch, dropout)?.0)
    }

    /// [`Decoder::forward_train`], and the routing weights `[batch, seq, experts]` of every
    /// mixture-of-LoRA layer in the order the layers run (none without such layers), for the
    /// trainer's load-balancing loss.
    pub fn forward_train_routed(
        &self,
        batch: &Batch,
        dropout: Option<DropoutKey>,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        check_batch(batch, self.cfg.vocab_size)?;
        self.run(
            batch,
            None,
            Keys {
                positions: batch.positions,
                valid: batch.valid,
                segments: None,
            },
            Kernels::Differentiable,
            dropout,
        )
    }

    fn run(
        &self,
        batch: &Batch,
        mut cache: Option<&mut KvCache>,
        keys: Keys,
        kernels: Kernels,
        dropout: Option<DropoutKey>,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let b = batch.tokens.len();
        let t = batch.tokens.first().map_or(0, Vec::len);
        let device = self.device().clone();
        let mut windows: Vec<Option<usize>> =
            self.cfg.layers.iter().map(|l| l.sliding_window).collect();
        windows.sort();
        windows.dedup();
        let masks = windows
            .iter()
            .map(|&w| Ok((w, attention_mask(batch.positions, &keys, w, &device)?)))
            .collect::<Result<Vec<_>>>()?;
        let positions = Tensor::from_vec(batch.positions.concat(), (b, t), &device)?;
        let mut specs: Vec<&RopeSpec> = Vec::new();
        for l in &self.cfg.layers {
            if !specs.contains(&&l.rope) {
                specs.push(&l.rope);
            }
        }
        let angles = specs
            .into_iter()
            .map(|s| {
                Ok((
                    s,
                    RotaryAngles::new(s, self.cfg.head_dim, &positions, self.dtype())?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let ctx = ForwardContext {
            masks,
            angles,
            kernels,
            dropout,
            routes: RefCell::new(Vec::new()),
        };

        let ids = Tensor::from_vec(batch.tokens.concat(), b * t, &device)?;
        let mut x =
            self.embed_tokens
                .index_select(&ids, 0)?
                .reshape((b, t, self.cfg.hidden_size))?;
        if let Some(m) = self.cfg.embedding_multiplier {
            // transformers rounds the multiplier to the activation dtype first.
            let m = Tensor::new(m as f32, &device)?.to_dtype(x.dtype())?;
            x = x.broadcast_mul(&m)?;
        }
        for (i, (block, spec)) in self.blocks.iter().zip(&self.cfg.layers).enumerate() {
            x = block.forward(&x, i, spec, &ctx, cache.as_deref_mut())?;
        }
        Ok((self.norm.forward(&x)?, ctx.routes.into_inner()))
    }

    /// Every linear layer with its transformers name (`model.layers.3.mlp.gate_proj`).
    pub fn projections(&self) -> Vec<(String, &Projection)> {
        let mut out = Vec::new();
        for (i, block) in self.blocks.iter().enumerate() {
            for (name, p) in block.projections() {
                out.push((format!("model.layers.{i}.{name}"), p));
            }
        }
        out
    }

    /// Mutable access to every linear layer, named as in [`Decoder::projections`].
    pub fn projections_mut(&mut self) -> Vec<(String, &mut Projection)> {
        let mut out = Vec::new();
        for (i, block) in self.blocks.iter_mut().enumerate() {
            for (name, p) in block.projections_mut() {
                out.push((format!("model.layers.{i}.{name}"), p));
            }
        }
        out
    }

    /// The output head's weight `[vocab, hidden]` (the embedding matrix when tied).
    pub fn lm_head(&self) -> &Tensor {
        &self.lm_head
    }

    /// Logits `[n, vocab]` (float32; float64 for a float64 model) for the given `(row, position)` pairs of a `forward` output.
    pub fn logits_at(&self, hidden: &Tensor, at: &[(usize, usize)]) -> Result<Tensor> {
        let (_, t, d) = hidden.dims3()?;
        let idx: Vec<u32> = at.iter().map(|&(b, p)| (b * t + p) as u32).collect();
        let idx = Tensor::from_vec(idx, at.len(), hidden.device())?;
        let h = hidden.reshape(((), d))?.index_select(&idx, 0)?;
        // A frozen output head gets no gradient (see `matmul`).
        let logits = weight_product(&h, &self.lm_head, self.lm_head_quantized.as_ref())?;
        let logits = logits.to_dtype(upcast(h.dtype()))?;
        match self.cfg.final_logit_softcapping {
            Some(cap) => (logits / cap)?.tanh()? * cap,
            None => Ok(logits),
        }
    }
}

/// What a forward call's queries attend to: every key slot of every row (cached, then new).
struct Keys<'a> {
    positions: &'a [Vec<i64>],
    valid: &'a [Vec<bool>],
    segments: Option<&'a Segments<'a>>,
}

/// `[batch, 1, 1, q, k]` additive mask: query i sees key j when j is real, `pos_j <= pos_i`,
/// (with a window W) `pos_i - W < pos_j`, and (with segments) j is cached or in a segment that i
/// sees. The queries are the last `q` keys.
fn attention_mask(
    query_pos: &[Vec<i64>],
    keys: &Keys,
    window: Option<usize>,
    device: &Device,
) -> Result<Tensor> {
    let (key_pos, key_valid, segments) = (keys.positions, keys.valid, keys.segments);
    let b = query_pos.len();
    let t = query_pos.first().map_or(0, Vec::len);
    let s = key_pos.first().map_or(0, Vec::len);
    let new_from = s.saturating_sub(t);
    let mut mask = vec![MASKED; b * t * s];
    for row in 0..b {
        let seg = segments.map(|g| (&g.of_token[row], g.visibility(row)));
        for (i, &qp) in query_pos[row].iter().enumerate() {
            let out = &mut mask[(row * t + i) * s..(row * t + i + 1) * s];
            for (j, (&kp, &ok)) in key_pos[row].iter().zip(&key_valid[row]).enumerate() {
                let in_window = window.is_none_or(|w| qp - kp < w as i64);
                let related = match &seg {
                    Some((of, sees)) if j >= new_from => {
                        sees[of[i] as usize][of[j - new_from] as usize]
                    }
                    _ => true,
                };
                if ok && kp <= qp && in_window && related {
                    out[j] = 0.0;
                }
            }
        }
    }
    Tensor::from_vec(mask, (b, 1, 1, t, s), device)
}

/// A batch the decoder can run: rows of equal length in all three fields, known token ids.
fn check_batch(batch: &Batch, vocab_size: usize) -> Result<()> {
    let rows = batch.tokens.len();
    if batch.positions.len() != rows || batch.valid.len() != rows {
        candle_core::bail!(
            "batch has {rows} token rows, {} position rows and {} validity rows",
            batch.positions.len(),
            batch.valid.len()
        );
    }
    let width = batch.tokens.first().map_or(0, Vec::len);
    for (r, ((t, p), v)) in batch
        .tokens
        .iter()
        .zip(batch.positions)
        .zip(batch.valid)
        .enumerate()
    {
        if t.len() != width || p.len() != width || v.len() != width {
            candle_core::bail!(
                "batch row {r} has {} tokens, {} positions and {} validity flags; every row needs {width}",
                t.len(),
                p.len(),
                v.len()
            );
        }
        if let Some(id) = t.iter().find(|&&id| id as usize >= vocab_size) {
            candle_core::bail!(
                "token id {id} in batch row {r} is outside the vocabulary of {vocab_size}"
            );
        }
    }
    Ok(())
}
