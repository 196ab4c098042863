//! LoRAMoE (Dou et al., 2023): a mixture of LoRA experts with a dense token-level router in every
//! adapted layer (the layer itself is [`dtm_model::model::MoeLora`]), trained with the localized
//! balancing constraint.
//!
//! What follows the released code (Ablustrund/LoRAMoE: `peft/tuners/lora.py`,
//! `transformers/models/llama/modeling_llama.py`, `build_dataset.py`, `run_loramoe.sh`):
//! - Initialisation: every expert's A and the router are Kaiming-uniform with a = √5, i.e.
//!   U(−1/√in, 1/√in); every B is 0.
//! - The constraint of one layer: expert i's importance for a sample is the sum of its routing
//!   weight over the sample's tokens, scaled by 1 + δ when the sample's type favours the expert
//!   and by 1 − δ otherwise; the term is cv² = unbiased variance / (mean² + 10⁻¹⁰) of those
//!   importances (0 with a single one), times λ. The terms of all layers are summed and added to
//!   the language-modelling loss.
//! - Types: the released data's `task_type` is 1 for world-knowledge records (closed-book QA),
//!   whose type favours experts 0..E/2, and 0 for downstream-task records, favouring E/2..E; so
//!   E must be even when λ > 0.
//! - λ (`blc_weight`) and δ (`blc_alpha`) default to 0, the released script's values: its run
//!   trains without the constraint.
//!
//! Where this differs, and why:
//! - cv² is taken per sample over its E experts and averaged over the optimiser step's samples.
//!   The released layer takes it over one device's flattened `[batch, E]` importances; its script
//!   runs one sample per device without accumulation, where the two agree, and the per-sample
//!   form makes the step's result independent of `--micro-batch-size`.
//! - Padding tokens add no importance (the released batches of one sample had none).
//! - Every mixture layer contributes; the released model passed types to its MLP layers only
//!   (its targets), so an attention target would have added nothing there.
//! - The experts of a layer share one dropout mask (see `MoeLora`).

use std::path::Path;

use candle_core::{DType, Result, Tensor, Var};
use dtm_model::adapter::moe::{MoeAdapter, MoeAdapterConfig, MoeWeights};
use dtm_model::adapter::AdapterConfig;
use dtm_model::model::projection::splitmix;
use dtm_model::model::{Adapter, Decoder, MoeLora};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::data::DataError;
use crate::lora::check_targets;

/// The LoRAMoE settings of an SFT run (`--moe-*`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MoeConfig {
    /// E, experts per adapted layer.
    pub experts: usize,
    /// Rank of every expert.
    pub rank: usize,
    /// λ, the weight of the localized balancing constraint.
    pub balance: f64,
    /// δ, the degree of imbalance between the expert groups.
    pub delta: f64,
    /// The record field that names each record's type (read when λ > 0).
    pub type_field: String,
}

impl MoeConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.experts == 0 {
            anyhow::bail!("--moe-experts must be positive");
        }
        if self.rank == 0 {
            anyhow::bail!("--moe-rank must be positive");
        }
        if !(self.balance.is_finite() && self.balance >= 0.0) {
            anyhow::bail!("--moe-balance must be a non-negative number");
        }
        if !(0.0..1.0).contains(&self.delta) {
            anyhow::bail!("--moe-balance-delta must be in [0, 1)");
        }
        if self.balance > 0.0 && !self.experts.is_multiple_of(2) {
            anyhow::bail!(
                "--moe-balance > 0 needs an even --moe-experts (the constraint splits the experts into two halves, one per record type); got {}",
                self.experts
            );
        }
        Ok(())
    }
}

/// The shape of the mixtures to attach.
#[derive(Debug, Clone, PartialEq)]
pub struct MoeSettings {
    pub experts: usize,
    pub r: usize,
    pub alpha: f64,
    pub dropout: f64,
    /// Module name suffixes (`gate_proj`, …).
    pub targets: Vec<String>,
}

impl MoeSettings {
    pub fn scale(&self) -> f64 {
        self.alpha / self.r as f64
    }

    /// The adapter folder's config; λ and δ are recorded there as provenance.
    pub fn adapter_config(&self, base_model: &str, balance: f64, delta: f64) -> MoeAdapterConfig {
        MoeAdapterConfig::new(
            self.experts,
            self.r,
            self.alpha,
            self.dropout,
            &self.targets,
            base_model,
            balance,
            delta,
        )
    }
}

/// The trainable tensors of one adapted layer.
#[derive(Debug, Clone)]
pub struct MoeParams {
    pub module: String,
    /// `[E, in]`
    pub router: Var,
    /// Per expert, `[r, in]`.
    pub a: Vec<Var>,
    /// Per expert, `[out, r]`.
    pub b: Vec<Var>,
}

/// Separates the routers' random stream from the experts' (see [`attach`]).
const ROUTER_STREAM: u64 = 0x726f_7574_6572;

/// Attaches fresh trainable mixtures to every targeted layer of `decoder`, in the decoder's
/// order. The experts' A come from the same seeded stream, in the same order, as
/// [`crate::lora::attach`] draws plain LoRA's A, so that one expert starts exactly where plain
/// LoRA starts with the same seed; the routers come from a stream of their own.
pub fn attach(
    decoder: &mut Decoder,
    settings: &MoeSettings,
    seed: u64,
) -> anyhow::Result<Vec<MoeParams>> {
    let dtype = decoder.dtype();
    let mut experts_rng = ChaCha8Rng::seed_from_u64(seed);
    let mut router_rng = ChaCha8Rng::seed_from_u64(splitmix(seed ^ ROUTER_STREAM));
    let probe = AdapterConfig::lora(settings.r, settings.alpha, 0.0, &settings.targets, "");
    let mut params = Vec::new();
    let mut modules = Vec::new();
    for (module, proj) in decoder.projections_mut() {
        modules.push(module.clone());
        if !probe.targets(&module) {
            continue;
        }
        let (inp, out) = proj.dims()?;
        let device = proj.weight().device().clone();
        // Kaiming-uniform with a = √5 on an [_, in] weight: U(−1/√in, 1/√in).
        let bound = 1.0 / (inp as f64).sqrt();
        let uniform = |rng: &mut ChaCha8Rng, rows: usize| -> Result<Var> {
            let values: Vec<f32> = (0..rows * inp)
                .map(|_| rng.random_range(-bound..bound) as f32)
                .collect();
            Var::from_tensor(&Tensor::from_vec(values, (rows, inp), &device)?.to_dtype(dtype)?)
        };
        let mut a = Vec::with_capacity(settings.experts);
        let mut b = Vec::with_capacity(settings.experts);
        for _ in 0..settings.experts {
            a.push(uniform(&mut experts_rng, settings.r)?);
            b.push(Var::zeros((out, settings.r), dtype, &device)?);
        }
        let router = uniform(&mut router_rng, settings.experts)?;
        proj.set_adapter(Some(Adapter::Moe(MoeLora {
            router: router.as_tensor().clone(),
            a: a.iter().map(|v| v.as_tensor().clone()).collect(),
            b: b.iter().map(|v| v.as_tensor().clone()).collect(),
            scale: settings.scale(),
            dropout: settings.dropout,
        })));
        params.push(MoeParams {
            module,
            router,
            a,
            b,
        });
    }
    check_targets(&modules, &settings.targets)?;
    Ok(params)
}

/// All trainable tensors in a fixed order: per layer, the router, then A and B of each expert.
pub fn vars(params: &[MoeParams]) -> Vec<Var> {
    params
        .iter()
        .flat_map(|p| {
            std::iter::once(p.router.clone()).chain(
                p.a.iter()
                    .zip(&p.b)
                    .flat_map(|(a, b)| [a.clone(), b.clone()]),
            )
        })
        .collect()
}

/// The current values as a LoRAMoE adapter (float32).
pub fn to_adapter(params: &[MoeParams], config: MoeAdapterConfig) -> Result<MoeAdapter> {
    let f32 = |v: &Var| v.as_tensor().to_dtype(DType::F32);
    let weights = params
        .iter()
        .map(|p| {
            Ok((
                p.module.clone(),
                MoeWeights {
                    router: f32(&p.router)?,
                    a: p.a.iter().map(f32).collect::<Result<_>>()?,
                    b: p.b.iter().map(f32).collect::<Result<_>>()?,
                },
            ))
        })
        .collect::<Result<_>>()?;
    Ok(MoeAdapter { config, weights })
}

/// The expert group a record's type favours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpertGroup {
    /// World knowledge (type `1` or `"knowledge"`): experts 0..E/2.
    Knowledge,
    /// Downstream tasks (type `0` or `"task"`): experts E/2..E.
    Task,
}

impl ExpertGroup {
    fn parse(value: &Value) -> Option<Self> {
        match value {
            Value::Number(n) if n.as_u64() == Some(1) => Some(Self::Knowledge),
            Value::Number(n) if n.as_u64() == Some(0) => Some(Self::Task),
            Value::String(s) if s == "knowledge" => Some(Self::Knowledge),
            Value::String(s) if s == "task" => Some(Self::Task),
            _ => None,
        }
    }

    /// Whether this type favours expert `i` of `experts`.
    pub fn favours(self, i: usize, experts: usize) -> bool {
        match self {
            Self::Knowledge => i < experts / 2,
            Self::Task => i >= experts / 2,
        }
    }
}

/// Every record's type, in file order (blank lines skipped, as [`crate::data::read_jsonl`]
/// skips them): a missing field or a value other than 1/"knowledge" or 0/"task" is an error
/// naming the file and line.
pub fn read_types(path: &Path, field: &str) -> std::result::Result<Vec<ExpertGroup>, DataError> {
    let mut out = Vec::new();
    crate::data::for_each_json_line(path, |value, _| {
        let Some(field_value) = value.get(field) else {
            return Err(format!(
                "no `{field}` field; --moe-balance > 0 needs every record's type there (1 or \"knowledge\" for world knowledge, 0 or \"task\" for a downstream task; --moe-type-field names the field)"
            ));
        };
        let group = ExpertGroup::parse(field_value).ok_or_else(|| {
            format!(
                "`{field}` is {field_value}; a type is 1 or \"knowledge\" (world knowledge) or 0 or \"task\" (downstream task)"
            )
        })?;
        out.push(group);
        Ok(())
    })?;
    Ok(out)
}

/// The localized balancing constraint of a run.
#[derive(Debug, Clone)]
pub struct Balance {
    /// λ
    pub lambda: f64,
    /// δ
    pub delta: f64,
    /// The type of every record, indexed like `Example::record`.
    pub groups: Vec<ExpertGroup>,
}

impl Balance {
    /// The constraint's share of one micro-batch: `weight · Σ_sequences Σ_layers cv²`, where
    /// `routes` are the layers' routing weights `[batch, seq, E]` (rows as `sequences`, each
    /// `(tokens, record)`), and `weight = λ / sequences in the optimiser step` makes the step's
    /// shares add up to λ times the mean over its sequences.
    pub fn term(
        &self,
        routes: &[Tensor],
        sequences: &[(usize, usize)],
        weight: f64,
    ) -> Result<Tensor> {
        let lengths: Vec<usize> = sequences.iter().map(|&(n, _)| n).collect();
        let groups: Vec<ExpertGroup> = sequences.iter().map(|&(_, r)| self.groups[r]).collect();
        balance_term(routes, &lengths, &groups, self.delta, weight)
    }
}

/// `weight · Σ_s Σ_layers cv²(I_s)`, with `I_s[i] = (1 ± δ) · Σ_{t < len_s} g_i(x_{s,t})`
/// (+ where sequence s's type favours expert i). Computed in float32 (float64 for float64
/// routes), as the released code's `cv_squared` casts to float.
pub fn balance_term(
    routes: &[Tensor],
    lengths: &[usize],
    groups: &[ExpertGroup],
    delta: f64,
    weight: f64,
) -> Result<Tensor> {
    let Some(first) = routes.first() else {
        candle_core::bail!("the balance term needs the routing weights of at least one layer");
    };
    let dtype = if first.dtype() == DType::F64 {
        DType::F64
    } else {
        DType::F32
    };
    let device = first.device().clone();
    let mut total = Tensor::zeros((), dtype, &device)?;
    for route in routes {
        let (b, t, e) = route.dims3()?;
        if b != lengths.len() || b != groups.len() {
            candle_core::bail!(
                "routing weights for {b} sequences, but {} lengths and {} types",
                lengths.len(),
                groups.len()
            );
        }
        if e == 1 {
            continue; // cv² of a single importance is 0.
        }
        let real: Vec<f64> = lengths
            .iter()
            .flat_map(|&n| (0..t).map(move |j| if j < n { 1.0 } else { 0.0 }))
            .collect();
        let real = Tensor::from_vec(real, (b, t, 1), &device)?.to_dtype(dtype)?;
        let importance = route.to_dtype(dtype)?.broadcast_mul(&real)?.sum(1)?;
        let factors: Vec<f64> = groups
            .iter()
            .flat_map(|g| {
                (0..e).map(move |i| {
                    if g.favours(i, e) {
                        1.0 + delta
                    } else {
                        1.0 - delta
                    }
                })
            })
            .collect();
        let factors = Tensor::from_vec(factors, (b, e), &device)?.to_dtype(dtype)?;
        let x = (importance * factors)?;
        let mean = x.mean_keepdim(1)?;
        let var = (x.broadcast_sub(&mean)?.sqr()?.sum_keepdim(1)? / (e - 1) as f64)?;
        let cv2 = (var / (mean.sqr()? + 1e-10)?)?;
        total = (total + cv2.sum_all()?)?;
    }
    total * weight
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn balance_term_by_hand() {
        // One layer, two sequences of 2 and 1 real tokens (the second padded), E = 4, δ = 0.1.
        let g = [
            [[0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1]],
            [[0.7, 0.1, 0.1, 0.1], [0.25, 0.25, 0.25, 0.25]], // the second token is padding
        ];
        let flat: Vec<f64> = g.iter().flatten().flatten().copied().collect();
        let route = Tensor::from_vec(flat, (2, 2, 4), &Device::Cpu).unwrap();
        let groups = [ExpertGroup::Knowledge, ExpertGroup::Task];
        let got = balance_term(&[route], &[2, 1], &groups, 0.1, 0.5)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        // Sequence 0: importances 0.5 each, weighted 1.1, 1.1, 0.9, 0.9.
        let cv2 = |x: [f64; 4]| {
            let m = x.iter().sum::<f64>() / 4.0;
            let v = x.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / 3.0;
            v / (m * m + 1e-10)
        };
        let s0 = cv2([0.55, 0.55, 0.45, 0.45]);
        // Sequence 1 (a downstream task): 0.7, 0.1, 0.1, 0.1 weighted 0.9, 0.9, 1.1, 1.1.
        let s1 = cv2([0.63, 0.09, 0.11, 0.11]);
        let want = 0.5 * (s0 + s1);
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        // By hand for sequence 0: mean 0.5, variance 4·0.05²/3 = 1/300, cv² = 1/75.
        assert!((s0 - 1.0 / 75.0).abs() < 1e-9);
    }

    #[test]
    fn groups_split_the_experts_in_halves() {
        let k: Vec<bool> = (0..4)
            .map(|i| ExpertGroup::Knowledge.favours(i, 4))
            .collect();
        let t: Vec<bool> = (0..4).map(|i| ExpertGroup::Task.favours(i, 4)).collect();
        assert_eq!(k, [true, true, false, false]);
        assert_eq!(t, [false, false, true, true]);
        assert_eq!(
            ExpertGroup::parse(&serde_json::json!(1)),
            Some(ExpertGroup::Knowledge)
        );
        assert_eq!(
            ExpertGroup::parse(&serde_json::json!("task")),
            Some(ExpertGroup::Task)
        );
        assert_eq!(ExpertGroup::parse(&serde_json::json!(2)), None);
        assert_eq!(ExpertGroup::parse(&serde_json::json!("1")), None);
    }

    #[test]
    fn types_are_read_per_record_with_file_and_line_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.jsonl");
        std::fs::write(
            &p,
            "{\"task_type\":1}\n\n{\"task_type\":\"task\"}\n{\"task_type\":7}\n",
        )
        .unwrap();
        let e = read_types(&p, "task_type").unwrap_err().to_string();
        assert!(e.contains("d.jsonl:4: `task_type` is 7"), "{e}");
        std::fs::write(&p, "{\"task_type\":1}\n\n{\"task_type\":0}\n").unwrap();
        assert_eq!(
            read_types(&p, "task_type").unwrap(),
            [ExpertGroup::Knowledge, ExpertGroup::Task]
        );
        let e = read_types(&p, "kind").unwrap_err().to_string();
        assert!(e.contains("d.jsonl:1: no `kind` field"), "{e}");
    }
}
