//! LoRA adapters in PEFT's on-disk format, so that adapters trained here load in PEFT and
//! adapters trained with PEFT load here.
//!
//! A folder holds `adapter_config.json` (`peft_type: LORA`, `r`, `lora_alpha`, `lora_dropout`,
//! `target_modules`, …) and `adapter_model.safetensors` with one `A`/`B` pair per adapted module,
//! named `base_model.model.<module>.lora_A.weight` / `.lora_B.weight`, where `<module>` is the
//! transformers name of the linear layer (`model.layers.0.mlp.gate_proj`).
//!
//! A mixture of LoRA experts (LoRAMoE) has its own folder format, which extends this one
//! ([`moe`]); [`AnyAdapter::load`] reads either kind, by the config's `peft_type`.

pub mod moe;

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{first_line, LoadError};
use crate::model::{Decoder, Lora};

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
const PREFIX: &str = "base_model.model.";

/// The fields of PEFT's `adapter_config.json` that define a plain LoRA adapter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterConfig {
    pub peft_type: String,
    pub task_type: String,
    pub r: usize,
    pub lora_alpha: f64,
    pub lora_dropout: f64,
    /// Module name suffixes (`gate_proj`) as PEFT accepts them.
    pub target_modules: Vec<String>,
    pub base_model_name_or_path: String,
    #[serde(default)]
    pub bias: String,
    #[serde(default)]
    pub use_rslora: bool,
    #[serde(default)]
    pub use_dora: bool,
    #[serde(default)]
    pub fan_in_fan_out: bool,
}

impl AdapterConfig {
    pub fn lora(r: usize, alpha: f64, dropout: f64, targets: &[String], base_model: &str) -> Self {
        Self {
            peft_type: "LORA".into(),
            task_type: "CAUSAL_LM".into(),
            r,
            lora_alpha: alpha,
            lora_dropout: dropout,
            target_modules: targets.to_vec(),
            base_model_name_or_path: base_model.into(),
            bias: "none".into(),
            use_rslora: false,
            use_dora: false,
            fan_in_fan_out: false,
        }
    }

    /// `alpha / r` (PEFT's scaling without rsLoRA).
    pub fn scale(&self) -> f64 {
        self.lora_alpha / self.r as f64
    }

    /// Whether a module (`model.layers.0.mlp.gate_proj`) is one of the targets.
    pub fn targets(&self, module: &str) -> bool {
        self.target_modules
            .iter()
            .any(|t| module == t || module.ends_with(&format!(".{t}")))
    }
}

/// A LoRA adapter: its config and, per adapted module, `(A [r, in], B [out, r])`.
#[derive(Debug, Clone)]
pub struct PeftAdapter {
    pub config: AdapterConfig,
    pub weights: BTreeMap<String, (Tensor, Tensor)>,
}

impl PeftAdapter {
    /// Reads a PEFT adapter folder; refuses what this runtime does not implement (DoRA, rsLoRA,
    /// LoRA biases, fan-in-fan-out weights, other PEFT types) by name.
    pub fn load(dir: &Path, device: &Device) -> Result<Self, LoadError> {
        let config_path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&config_path)
            .map_err(|e| LoadError::at(&config_path, format!("cannot read: {e}")))?;
        let config: AdapterConfig = serde_json::from_str(&text)
            .map_err(|e| LoadError::at(&config_path, format!("not a LoRA adapter config: {e}")))?;
        let refuse = |what: &str| {
            Err(LoadError::at(
                &config_path,
                format!("{what} is not supported"),
            ))
        };
        if config.peft_type == moe::PEFT_TYPE {
            return Err(LoadError::at(
                &config_path,
                "a mixture of LoRA experts (LoRAMoE) has no single B·A: its router makes the update input-dependent, so it cannot be merged or used as a plain LoRA adapter; `harness … --adapter` runs it unmerged",
            ));
        }
        if config.peft_type != "LORA" {
            return refuse(&format!("peft_type {:?}", config.peft_type));
        }
        if config.use_dora {
            return refuse("DoRA (use_dora)");
        }
        if config.use_rslora {
            return refuse("rsLoRA (use_rslora)");
        }
        if config.fan_in_fan_out {
            return refuse("fan_in_fan_out");
        }
        if !config.bias.is_empty() && config.bias != "none" {
            return refuse(&format!("bias {:?}", config.bias));
        }
        if config.r == 0 {
            return Err(LoadError::at(&config_path, "r must be positive"));
        }
        let weights_path = dir.join(WEIGHTS_FILE);
        let tensors = candle_core::safetensors::load(&weights_path, device).map_err(|e| {
            LoadError::at(&weights_path, format!("cannot read: {}", first_line(&e)))
        })?;
        let mut a = BTreeMap::new();
        let mut b = BTreeMap::new();
        for (name, t) in tensors {
            let t = t
                .to_dtype(DType::F32)
                .map_err(|e| LoadError::at(&weights_path, first_line(&e)))?;
            let module = name.strip_prefix(PREFIX).unwrap_or(&name);
            if let Some(m) = module.strip_suffix(".lora_A.weight") {
                a.insert(m.to_owned(), t);
            } else if let Some(m) = module.strip_suffix(".lora_B.weight") {
                b.insert(m.to_owned(), t);
            } else {
                return Err(LoadError::at(
                    &weights_path,
                    format!("unexpected tensor {name} (only lora_A/lora_B weights are supported)"),
                ));
            }
        }
        let mut weights = BTreeMap::new();
        for (module, a_t) in a {
            let b_t = b.remove(&module).ok_or_else(|| {
                LoadError::at(&weights_path, format!("{module} has lora_A but no lora_B"))
            })?;
            weights.insert(module, (a_t, b_t));
        }
        if let Some(module) = b.keys().next() {
            return Err(LoadError::at(
                &weights_path,
                format!("{module} has lora_B but no lora_A"),
            ));
        }
        if weights.is_empty() {
            return Err(LoadError::at(&weights_path, "holds no LoRA weights"));
        }
        Ok(Self { config, weights })
    }

    /// The adapter currently attached to a decoder's projections.
    pub fn from_decoder(decoder: &Decoder, config: AdapterConfig) -> Self {
        let weights = decoder
            .projections()
            .into_iter()
            .filter_map(|(name, p)| p.lora().map(|l| (name, (l.a.clone(), l.b.clone()))))
            .collect();
        Self { config, weights }
    }

    /// Writes the folder atomically: files go to a temporary sibling folder that replaces `dir`.
    pub fn save(&self, dir: &Path) -> Result<(), LoadError> {
        let mut named = Vec::new();
        for (module, (a, b)) in &self.weights {
            named.push((format!("{PREFIX}{module}.lora_A.weight"), a));
            named.push((format!("{PREFIX}{module}.lora_B.weight"), b));
        }
        save_folder(dir, &self.config, named)
    }

    /// Attaches the adapter to the decoder's projections (unmerged, as PEFT runs it). Every
    /// adapted module must exist with matching shapes.
    pub fn attach(&self, decoder: &mut Decoder) -> Result<(), LoadError> {
        let dtype = decoder.dtype();
        let mut projections: BTreeMap<String, _> = decoder.projections_mut().into_iter().collect();
        for (module, (a, b)) in &self.weights {
            let p = projections.get_mut(module).ok_or_else(|| {
                LoadError::new(
                    WEIGHTS_FILE,
                    format!("the model has no linear layer {module}"),
                )
            })?;
            let (inp, out) = p
                .dims()
                .map_err(|e| LoadError::new(WEIGHTS_FILE, first_line(&e)))?;
            let r = self.config.r;
            if a.dims() != [r, inp] || b.dims() != [out, r] {
                return Err(LoadError::new(
                    WEIGHTS_FILE,
                    format!(
                        "{module}: lora_A {:?} / lora_B {:?} do not fit a [{out}, {inp}] layer with r = {r}",
                        a.dims(),
                        b.dims()
                    ),
                ));
            }
            let device = p.weight().device().clone();
            let cast = |t: &Tensor| t.to_device(&device).and_then(|t| t.to_dtype(dtype));
            let lora = Lora {
                a: cast(a).map_err(|e| LoadError::new(WEIGHTS_FILE, first_line(&e)))?,
                b: cast(b).map_err(|e| LoadError::new(WEIGHTS_FILE, first_line(&e)))?,
                scale: self.config.scale(),
                dropout: self.config.lora_dropout,
            };
            p.set_lora(Some(lora));
        }
        Ok(())
    }
}

/// Writes an adapter folder (`adapter_config.json` + `adapter_model.safetensors`, float32)
/// atomically: files go to a temporary sibling folder that replaces `dir`.
fn save_folder(
    dir: &Path,
    config: &impl Serialize,
    named: Vec<(String, &Tensor)>,
) -> Result<(), LoadError> {
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)
        .map_err(|e| LoadError::at(parent, format!("cannot create: {e}")))?;
    let tmp = tempfile::Builder::new()
        .prefix(".adapter-")
        .tempdir_in(parent)
        .map_err(|e| LoadError::at(parent, format!("cannot write: {e}")))?;
    let config = serde_json::to_string_pretty(config).expect("config serialises");
    let config_path = tmp.path().join(CONFIG_FILE);
    std::fs::write(&config_path, config + "\n")
        .map_err(|e| LoadError::at(&config_path, e.to_string()))?;
    let named = named
        .into_iter()
        .map(|(n, t)| {
            t.to_dtype(DType::F32)
                .and_then(|t| t.contiguous())
                .map(|t| (n, t))
        })
        .collect::<candle_core::Result<Vec<_>>>()
        .map_err(|e| LoadError::at(dir, first_line(&e)))?;
    let weights_path = tmp.path().join(WEIGHTS_FILE);
    candle_core::safetensors::save(&named.into_iter().collect(), &weights_path)
        .map_err(|e| LoadError::at(&weights_path, first_line(&e)))?;
    // Temporary files are private to their owner; an adapter is an ordinary output.
    #[cfg(unix)]
    for path in [&config_path, &weights_path] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
            .map_err(|e| LoadError::at(path, format!("cannot write: {e}")))?;
    }
    if dir.exists() {
        std::fs::remove_dir_all(dir)
            .map_err(|e| LoadError::at(dir, format!("cannot replace: {e}")))?;
    }
    let kept = tmp.keep();
    std::fs::rename(&kept, dir).map_err(|e| LoadError::at(dir, format!("cannot write: {e}")))?;
    Ok(())
}

/// Either kind of adapter folder this runtime applies.
#[derive(Debug, Clone)]
pub enum AnyAdapter {
    Lora(PeftAdapter),
    Moe(moe::MoeAdapter),
}

impl AnyAdapter {
    /// Reads an adapter folder, choosing the kind by `adapter_config.json`'s `peft_type`
    /// (`LORAMOE`: a mixture of LoRA experts; anything else goes to [`PeftAdapter::load`], which
    /// names what it does not support).
    pub fn load(dir: &Path, device: &Device) -> Result<Self, LoadError> {
        let config_path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&config_path)
            .map_err(|e| LoadError::at(&config_path, format!("cannot read: {e}")))?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| LoadError::at(&config_path, format!("not valid JSON: {e}")))?;
        if value.get("peft_type").and_then(|t| t.as_str()) == Some(moe::PEFT_TYPE) {
            Ok(Self::Moe(moe::MoeAdapter::load(dir, device)?))
        } else {
            Ok(Self::Lora(PeftAdapter::load(dir, device)?))
        }
    }

    /// Attaches the adapter to the decoder's linear layers.
    pub fn attach(&self, decoder: &mut Decoder) -> Result<(), LoadError> {
        match self {
            Self::Lora(a) => a.attach(decoder),
            Self::Moe(a) => a.attach(decoder),
        }
    }
}
