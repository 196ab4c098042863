//! Trainable LoRA parameters on a decoder: which layers, their initial values (PEFT's init or a
//! given adapter), and the adapter they make.

use std::collections::{BTreeMap, BTreeSet};

use candle_core::{DType, Result, Tensor, Var};
use dtm_model::adapter::{AdapterConfig, PeftAdapter};
use dtm_model::model::{Decoder, Lora};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[derive(Debug, Clone, PartialEq)]
pub struct LoraSettings {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f64,
    /// Module name suffixes (`gate_proj`, `q_proj`, …).
    pub targets: Vec<String>,
}

impl LoraSettings {
    pub fn scale(&self) -> f64 {
        self.alpha / self.r as f64
    }

    pub fn adapter_config(&self, base_model: &str) -> AdapterConfig {
        AdapterConfig::lora(self.r, self.alpha, self.dropout, &self.targets, base_model)
    }
}

/// The trainable factors of one adapted layer.
#[derive(Debug, Clone)]
pub struct LoraParams {
    pub module: String,
    pub a: Var,
    pub b: Var,
}

/// Attaches fresh trainable LoRA factors to every targeted layer of `decoder`, initialised as
/// PEFT does (A ~ Kaiming-uniform with a = √5, i.e. U(−1/√in, 1/√in); B = 0) from `seed`, or
/// copied from `init` when given. Layers come in the decoder's order.
pub fn attach(
    decoder: &mut Decoder,
    settings: &LoraSettings,
    seed: u64,
    init: Option<&PeftAdapter>,
) -> anyhow::Result<Vec<LoraParams>> {
    let dtype = decoder.dtype();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let probe = AdapterConfig::lora(
        settings.r,
        settings.alpha,
        settings.dropout,
        &settings.targets,
        "",
    );
    let mut params = Vec::new();
    let mut modules = Vec::new();
    for (module, proj) in decoder.projections_mut() {
        modules.push(module.clone());
        if !probe.targets(&module) {
            continue;
        }
        let (inp, out) = proj.dims()?;
        let device = proj.weight().device().clone();
        let (a, b) = match init {
            Some(adapter) => {
                let (a, b) = adapter
                    .weights
                    .get(&module)
                    .ok_or_else(|| anyhow::anyhow!("--init-adapter has no weights for {module}"))?;
                if a.dims() != [settings.r, inp] || b.dims() != [out, settings.r] {
                    anyhow::bail!(
                        "--init-adapter: {module} has lora_A {:?} / lora_B {:?}, expected [{}, {inp}] / [{out}, {}]",
                        a.dims(),
                        b.dims(),
                        settings.r,
                        settings.r
                    );
                }
                (
                    a.to_device(&device)?.to_dtype(dtype)?,
                    b.to_device(&device)?.to_dtype(dtype)?,
                )
            }
            None => {
                let bound = 1.0 / (inp as f64).sqrt();
                let values: Vec<f32> = (0..settings.r * inp)
                    .map(|_| rng.random_range(-bound..bound) as f32)
                    .collect();
                let a = Tensor::from_vec(values, (settings.r, inp), &device)?.to_dtype(dtype)?;
                let b = Tensor::zeros((out, settings.r), dtype, &device)?;
                (a, b)
            }
        };
        let (a, b) = (Var::from_tensor(&a)?, Var::from_tensor(&b)?);
        proj.set_lora(Some(Lora {
            a: a.as_tensor().clone(),
            b: b.as_tensor().clone(),
            scale: settings.scale(),
            dropout: settings.dropout,
        }));
        params.push(LoraParams { module, a, b });
    }
    check_targets(&modules, &settings.targets)?;
    if let Some(adapter) = init {
        let used: Vec<&String> = params.iter().map(|p| &p.module).collect();
        if let Some(extra) = adapter.weights.keys().find(|k| !used.contains(k)) {
            anyhow::bail!(
                "--init-adapter has weights for {extra}, which --lora-targets does not train"
            );
        }
    }
    Ok(params)
}

/// Every target names some of the decoder's layers (`modules`, transformers' names).
pub fn check_targets(modules: &[String], targets: &[String]) -> anyhow::Result<()> {
    let matched: BTreeSet<&str> = targets
        .iter()
        .filter(|t| modules.iter().any(|m| m.ends_with(&format!(".{t}"))))
        .map(String::as_str)
        .collect();
    for t in targets {
        if !matched.contains(t.as_str()) {
            anyhow::bail!("--lora-targets: the model has no layer named {t} (layers are q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)");
        }
    }
    Ok(())
}

/// The current values as a PEFT adapter (float32).
pub fn to_adapter(params: &[LoraParams], config: AdapterConfig) -> Result<PeftAdapter> {
    let weights = params
        .iter()
        .map(|p| {
            Ok((
                p.module.clone(),
                (
                    p.a.as_tensor().to_dtype(DType::F32)?,
                    p.b.as_tensor().to_dtype(DType::F32)?,
                ),
            ))
        })
        .collect::<Result<BTreeMap<_, _>>>()?;
    Ok(PeftAdapter { config, weights })
}

/// All trainable tensors in a fixed order: A then B of each layer.
pub fn vars(params: &[LoraParams]) -> Vec<Var> {
    params
        .iter()
        .flat_map(|p| [p.a.clone(), p.b.clone()])
        .collect()
}
