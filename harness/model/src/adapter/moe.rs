//! Mixture-of-LoRA-experts (LoRAMoE) adapters on disk, in a folder that extends PEFT's.
//!
//! `adapter_config.json` holds PEFT's LoRA fields (`r`, `lora_alpha`, `lora_dropout`,
//! `target_modules`, `task_type`, `base_model_name_or_path`, `bias: "none"`) with
//! `peft_type: "LORAMOE"`, plus the released code's (Ablustrund/LoRAMoE) names for its settings:
//! `lora_nums` (E, the experts per layer), `blc_weight` (λ, the balance loss weight) and
//! `blc_alpha` (δ, the degree of imbalance between the two expert groups). λ and δ only record
//! how the adapter was trained; inference does not use them.
//!
//! `adapter_model.safetensors` (float32) holds, for every adapted module `<m>` (transformers'
//! name, `model.layers.0.mlp.gate_proj`), under PEFT's `base_model.model.` prefix and with the
//! released code's parameter names:
//!
//! | tensor | shape |
//! |---|---|
//! | `base_model.model.<m>.lora_route.weight` | `[E, in]` (the router; no bias) |
//! | `base_model.model.<m>.lora_A{i}.weight`, i = 0..E−1 | `[r, in]` |
//! | `base_model.model.<m>.lora_B{i}.weight`, i = 0..E−1 | `[out, r]` |
//!
//! The layer computes `y = W·x + Σᵢ gᵢ(x)·(lora_alpha/r)·B_i·A_i·x` with
//! `g(x) = softmax(lora_route·x)` (see [`crate::model::MoeLora`]). `peft_type` is not `LORA` on
//! purpose: PEFT refuses the unknown type instead of reading the folder as a plain LoRA adapter
//! whose tensors it does not recognise.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::{save_folder, CONFIG_FILE, PREFIX, WEIGHTS_FILE};
use crate::error::{first_line, LoadError};
use crate::model::{Adapter, Decoder, MoeLora};

/// `peft_type` of a LoRAMoE adapter folder.
pub const PEFT_TYPE: &str = "LORAMOE";

/// `adapter_config.json` of a LoRAMoE adapter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MoeAdapterConfig {
    /// Always [`PEFT_TYPE`].
    pub peft_type: String,
    pub task_type: String,
    /// Rank of every expert.
    pub r: usize,
    pub lora_alpha: f64,
    pub lora_dropout: f64,
    /// Module name suffixes (`gate_proj`).
    pub target_modules: Vec<String>,
    pub base_model_name_or_path: String,
    /// E, the experts per adapted layer.
    pub lora_nums: usize,
    /// λ, the weight of the localized balancing constraint the adapter was trained with.
    #[serde(default)]
    pub blc_weight: f64,
    /// δ, the constraint's degree of imbalance between the two expert groups.
    #[serde(default)]
    pub blc_alpha: f64,
    #[serde(default)]
    pub bias: String,
}

impl MoeAdapterConfig {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        experts: usize,
        r: usize,
        alpha: f64,
        dropout: f64,
        targets: &[String],
        base_model: &str,
        balance: f64,
        delta: f64,
    ) -> Self {
        Self {
            peft_type: PEFT_TYPE.into(),
            task_type: "CAUSAL_LM".into(),
            r,
            lora_alpha: alpha,
            lora_dropout: dropout,
            target_modules: targets.to_vec(),
            base_model_name_or_path: base_model.into(),
            lora_nums: experts,
            blc_weight: balance,
            blc_alpha: delta,
            bias: "none".into(),
        }
    }

    /// `alpha / r`, every expert's scale.
    pub fn scale(&self) -> f64 {
        self.lora_alpha / self.r as f64
    }
}

/// The tensors of one adapted layer.
#[derive(Debug, Clone)]
pub struct MoeWeights {
    /// `[E, in]`
    pub router: Tensor,
    /// Per expert, `[r, in]`.
    pub a: Vec<Tensor>,
    /// Per expert, `[out, r]`.
    pub b: Vec<Tensor>,
}

/// A LoRAMoE adapter: its config and, per adapted module, the router and the experts.
#[derive(Debug, Clone)]
pub struct MoeAdapter {
    pub config: MoeAdapterConfig,
    pub weights: BTreeMap<String, MoeWeights>,
}

/// One tensor's place in the folder, parsed from its name.
enum Part {
    Router,
    A(usize),
    B(usize),
}

/// `<module>.lora_route.weight` / `<module>.lora_A3.weight` → (module, part).
fn parse_name(name: &str) -> Option<(&str, Part)> {
    let stem = name.strip_prefix(PREFIX).unwrap_or(name);
    let stem = stem.strip_suffix(".weight")?;
    let (module, leaf) = stem.rsplit_once('.')?;
    let index = |digits: &str| -> Option<usize> {
        (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
            .then(|| digits.parse().ok())
            .flatten()
    };
    let part = if leaf == "lora_route" {
        Part::Router
    } else if let Some(i) = leaf.strip_prefix("lora_A").and_then(index) {
        Part::A(i)
    } else if let Some(i) = leaf.strip_prefix("lora_B").and_then(index) {
        Part::B(i)
    } else {
        return None;
    };
    Some((module, part))
}

#[derive(Default)]
struct Parts {
    router: Option<Tensor>,
    a: BTreeMap<usize, Tensor>,
    b: BTreeMap<usize, Tensor>,
}

impl MoeAdapter {
    /// Reads a LoRAMoE folder; every module needs its router and all E experts, with shapes that
    /// agree (`[E, in]`, `[r, in]`, `[out, r]`).
    pub fn load(dir: &Path, device: &Device) -> Result<Self, LoadError> {
        let config_path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&config_path)
            .map_err(|e| LoadError::at(&config_path, format!("cannot read: {e}")))?;
        let config: MoeAdapterConfig = serde_json::from_str(&text).map_err(|e| {
            LoadError::at(&config_path, format!("not a LoRAMoE adapter config: {e}"))
        })?;
        if config.peft_type != PEFT_TYPE {
            return Err(LoadError::at(
                &config_path,
                format!("peft_type is {:?}, not {PEFT_TYPE:?}", config.peft_type),
            ));
        }
        if config.r == 0 {
            return Err(LoadError::at(&config_path, "r must be positive"));
        }
        if config.lora_nums == 0 {
            return Err(LoadError::at(
                &config_path,
                "lora_nums (experts) must be positive",
            ));
        }
        if !config.bias.is_empty() && config.bias != "none" {
            return Err(LoadError::at(
                &config_path,
                format!("bias {:?} is not supported", config.bias),
            ));
        }
        let weights_path = dir.join(WEIGHTS_FILE);
        let tensors = candle_core::safetensors::load(&weights_path, device).map_err(|e| {
            LoadError::at(&weights_path, format!("cannot read: {}", first_line(&e)))
        })?;
        let bad = |problem: String| LoadError::at(&weights_path, problem);
        let mut modules: BTreeMap<String, Parts> = BTreeMap::new();
        for (name, t) in tensors {
            let Some((module, part)) = parse_name(&name) else {
                return Err(bad(format!(
                    "unexpected tensor {name} (a LoRAMoE folder holds lora_route, lora_A<i> and lora_B<i> weights)"
                )));
            };
            let t = t.to_dtype(DType::F32).map_err(|e| bad(first_line(&e)))?;
            let parts = modules.entry(module.to_owned()).or_default();
            match part {
                Part::Router => parts.router = Some(t),
                Part::A(i) => {
                    parts.a.insert(i, t);
                }
                Part::B(i) => {
                    parts.b.insert(i, t);
                }
            }
        }
        if modules.is_empty() {
            return Err(bad("holds no LoRAMoE weights".into()));
        }
        let (e, r) = (config.lora_nums, config.r);
        let mut weights = BTreeMap::new();
        for (module, parts) in modules {
            let router = parts
                .router
                .ok_or_else(|| bad(format!("{module} has experts but no lora_route")))?;
            let take = |map: BTreeMap<usize, Tensor>, factor: &str| {
                let found: Vec<usize> = map.keys().copied().collect();
                if found != (0..e).collect::<Vec<_>>() {
                    return Err(bad(format!(
                        "{module}: lora_nums is {e}, so lora_{factor}0 … lora_{factor}{} are expected; found indices {found:?}",
                        e - 1
                    )));
                }
                Ok(map.into_values().collect::<Vec<_>>())
            };
            let (a, b) = (take(parts.a, "A")?, take(parts.b, "B")?);
            let (experts, inp) = router.dims2().map_err(|e| bad(format!("{module}: {e}")))?;
            let out = b[0].dim(0).map_err(|e| bad(format!("{module}: {e}")))?;
            let fits = experts == e
                && a.iter().all(|t| t.dims() == [r, inp])
                && b.iter().all(|t| t.dims() == [out, r]);
            if !fits {
                return Err(bad(format!(
                    "{module}: lora_route {:?}, lora_A {:?}, lora_B {:?} do not agree with lora_nums = {e}, r = {r}",
                    router.dims(),
                    a.iter().map(|t| t.dims().to_vec()).collect::<Vec<_>>(),
                    b.iter().map(|t| t.dims().to_vec()).collect::<Vec<_>>(),
                )));
            }
            weights.insert(module, MoeWeights { router, a, b });
        }
        Ok(Self { config, weights })
    }

    /// Writes the folder atomically (a temporary sibling folder replaces `dir`).
    pub fn save(&self, dir: &Path) -> Result<(), LoadError> {
        let mut named = Vec::new();
        for (module, w) in &self.weights {
            named.push((format!("{PREFIX}{module}.lora_route.weight"), &w.router));
            for (i, (a, b)) in w.a.iter().zip(&w.b).enumerate() {
                named.push((format!("{PREFIX}{module}.lora_A{i}.weight"), a));
                named.push((format!("{PREFIX}{module}.lora_B{i}.weight"), b));
            }
        }
        save_folder(dir, &self.config, named)
    }

    /// Attaches the mixtures to the decoder's linear layers. Every adapted module must exist
    /// and fit the layer's `[out, in]`.
    pub fn attach(&self, decoder: &mut Decoder) -> Result<(), LoadError> {
        let dtype = decoder.dtype();
        let mut projections: BTreeMap<String, _> = decoder.projections_mut().into_iter().collect();
        let bad = |problem: String| LoadError::new(WEIGHTS_FILE, problem);
        for (module, w) in &self.weights {
            let p = projections
                .get_mut(module)
                .ok_or_else(|| bad(format!("the model has no linear layer {module}")))?;
            let (inp, out) = p.dims().map_err(|e| bad(first_line(&e)))?;
            let (e, r) = (self.config.lora_nums, self.config.r);
            let fits = w.router.dims() == [e, inp]
                && w.a.iter().all(|t| t.dims() == [r, inp])
                && w.b.iter().all(|t| t.dims() == [out, r]);
            if !fits {
                return Err(bad(format!(
                    "{module}: lora_route {:?} / experts of rank {r} do not fit a [{out}, {inp}] layer",
                    w.router.dims()
                )));
            }
            let device = p.weight().device().clone();
            let cast = |t: &Tensor| {
                t.to_device(&device)
                    .and_then(|t| t.to_dtype(dtype))
                    .map_err(|e| bad(first_line(&e)))
            };
            let moe = MoeLora {
                router: cast(&w.router)?,
                a: w.a.iter().map(cast).collect::<Result<_, _>>()?,
                b: w.b.iter().map(cast).collect::<Result<_, _>>()?,
                scale: self.config.scale(),
                dropout: self.config.lora_dropout,
            };
            p.set_adapter(Some(Adapter::Moe(moe)));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensor_names_parse() {
        let module = |n: &str| parse_name(n).map(|(m, _)| m.to_owned());
        assert!(matches!(
            parse_name("base_model.model.model.layers.0.mlp.up_proj.lora_A12.weight"),
            Some(("model.layers.0.mlp.up_proj", Part::A(12)))
        ));
        assert!(matches!(
            parse_name("base_model.model.m.lora_B0.weight"),
            Some(("m", Part::B(0)))
        ));
        assert!(matches!(
            parse_name("base_model.model.m.lora_route.weight"),
            Some(("m", Part::Router))
        ));
        // Plain LoRA names and odd indices are not LoRAMoE tensors.
        assert_eq!(module("base_model.model.m.lora_A.weight"), None);
        assert_eq!(module("base_model.model.m.lora_A+1.weight"), None);
        assert_eq!(module("base_model.model.m.lora_A1.bias"), None);
    }
}
