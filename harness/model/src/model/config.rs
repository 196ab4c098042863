//! One architecture-neutral description of a decoder-only transformer.
//!
//! Every checkpoint format (HF `config.json`, GGUF metadata) is translated into [`ModelConfig`];
//! the decoder reads nothing else. Architecture differences are settings here, not code paths
//! scattered through the model.

use serde_json::Value;

use crate::error::LoadError;

/// The architectures the runtime implements. Anything else is refused by name at load time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    Llama,
    Mistral,
    Qwen2,
    Gemma3,
}

impl Architecture {
    /// Maps a transformers `model_type` to an architecture.
    pub fn from_model_type(model_type: &str) -> Option<Self> {
        match model_type {
            "llama" => Some(Self::Llama),
            "mistral" => Some(Self::Mistral),
            "qwen2" => Some(Self::Qwen2),
            "gemma3_text" | "gemma3" => Some(Self::Gemma3),
            _ => None,
        }
    }

    /// What the architecture fixes, and what it defaults to when a checkpoint does not say: the
    /// one place both loaders (HF `config.json`, GGUF metadata) read. The defaults are those of
    /// transformers' config classes (`LlamaConfig`, `MistralConfig`, `Qwen2Config`,
    /// `Gemma3TextConfig`).
    pub fn defaults(self) -> ArchitectureDefaults {
        let gemma = self == Self::Gemma3;
        ArchitectureDefaults {
            activation: if gemma {
                Activation::GeluTanh
            } else {
                Activation::Silu
            },
            norm_style: if gemma {
                NormStyle::OnePlusScale
            } else {
                NormStyle::Scale
            },
            qk_norm: gemma,
            sandwich_norms: gemma,
            scale_embeddings: gemma,
            rope_theta: if gemma { 1e6 } else { 1e4 },
            local_rope_theta: gemma.then_some(1e4),
            sliding_window_pattern: gemma.then_some(6),
            query_pre_attn_scalar: gemma.then_some(256.0),
            rms_norm_eps: 1e-6,
            max_position_embeddings: match self {
                Self::Llama => 2048,
                Self::Mistral | Self::Gemma3 => 131_072,
                Self::Qwen2 => 32_768,
            },
            tie_word_embeddings: gemma,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Mistral => "mistral",
            Self::Qwen2 => "qwen2",
            Self::Gemma3 => "gemma3_text",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Activation {
    Silu,
    /// `gelu_pytorch_tanh`, Gemma's activation.
    GeluTanh,
}

/// How RMSNorm applies its weight.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum NormStyle {
    /// `x̂ · w` (Llama, Qwen2, Mistral).
    Scale,
    /// `x̂ · (1 + w)` (Gemma), the stored weight is an offset from one.
    OnePlusScale,
}

/// Frequencies for rotary position embeddings.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeSpec {
    pub theta: f64,
    pub scaling: RopeScaling,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor` (transformers' `linear`).
    Linear {
        factor: f64,
    },
    /// Llama 3.1's band-wise rescaling of the inverse frequencies.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

impl RopeSpec {
    /// Inverse frequencies for a head of `head_dim` dimensions.
    pub fn inv_freq(&self, head_dim: usize) -> Vec<f64> {
        let base: Vec<f64> = (0..head_dim / 2)
            .map(|i| 1.0 / self.theta.powf((2 * i) as f64 / head_dim as f64))
            .collect();
        match &self.scaling {
            RopeScaling::None => base,
            RopeScaling::Linear { factor } => base.iter().map(|f| f / factor).collect(),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: old_len,
            } => {
                let low_wavelen = old_len / low_freq_factor;
                let high_wavelen = old_len / high_freq_factor;
                base.iter()
                    .map(|&freq| {
                        let wavelen = 2.0 * std::f64::consts::PI / freq;
                        if wavelen < high_wavelen {
                            freq
                        } else if wavelen > low_wavelen {
                            freq / factor
                        } else {
                            let smooth = (old_len / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * freq / factor + smooth * freq
                        }
                    })
                    .collect()
            }
        }
    }
}

/// See [`Architecture::defaults`].
#[derive(Debug, Clone, PartialEq)]
pub struct ArchitectureDefaults {
    pub activation: Activation,
    pub norm_style: NormStyle,
    pub qk_norm: bool,
    pub sandwich_norms: bool,
    /// Embeddings multiplied by sqrt(hidden_size) (Gemma).
    pub scale_embeddings: bool,
    /// Rope base of full-attention layers.
    pub rope_theta: f64,
    /// Rope base of sliding-window layers, when the architecture gives them their own (Gemma 3).
    pub local_rope_theta: Option<f64>,
    /// Every n-th layer is global, the others sliding-window (Gemma 3).
    pub sliding_window_pattern: Option<usize>,
    /// The attention scale is this^-0.5 instead of head_dim^-0.5 (Gemma 3).
    pub query_pre_attn_scalar: Option<f64>,
    pub rms_norm_eps: f64,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
}

impl ArchitectureDefaults {
    pub fn embedding_multiplier(&self, hidden_size: usize) -> Option<f64> {
        self.scale_embeddings.then(|| (hidden_size as f64).sqrt())
    }

    /// Whether layer `i` of `n` is a sliding-window layer under the architecture's pattern
    /// (`pattern` overrides the default one).
    pub fn is_sliding(&self, i: usize, pattern: Option<usize>) -> bool {
        match pattern.or(self.sliding_window_pattern) {
            Some(p) if p > 0 => !(i + 1).is_multiple_of(p),
            _ => false,
        }
    }
}

/// Per-layer attention settings (Gemma 3 and Mistral mix local and global layers).
#[derive(Debug, Clone, PartialEq)]
pub struct LayerSpec {
    /// A query at position i sees keys j with `i - window < j <= i` (transformers' rule).
    pub sliding_window: Option<usize>,
    pub rope: RopeSpec,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Biases on the q/k/v projections (Qwen2).
    pub qkv_bias: bool,
    pub activation: Activation,
    pub norm_style: NormStyle,
    /// RMSNorm on each head's queries and keys before RoPE (Gemma 3).
    pub qk_norm: bool,
    /// Extra norms after attention and around the MLP (Gemma 3's four norms per layer).
    pub sandwich_norms: bool,
    /// Embeddings multiplied by this (Gemma: sqrt(hidden_size)).
    pub embedding_multiplier: Option<f64>,
    /// Scale applied to q·k (usually head_dim^-0.5; Gemma 3: query_pre_attn_scalar^-0.5).
    pub attention_scale: f64,
    pub attn_logit_softcapping: Option<f64>,
    pub final_logit_softcapping: Option<f64>,
    pub layers: Vec<LayerSpec>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

impl ModelConfig {
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Reads a transformers `config.json` (as written by transformers 4 or 5).
    pub fn from_hf_json(text: &str, file: &str) -> Result<Self, LoadError> {
        let json: Value = serde_json::from_str(text)
            .map_err(|e| LoadError::new(file, format!("not valid JSON: {e}")))?;
        HfConfigReader { json: &json, file }.read()
    }
}

/// Reads fields with errors that name the file and the field.
struct HfConfigReader<'a> {
    json: &'a Value,
    file: &'a str,
}

impl HfConfigReader<'_> {
    fn err(&self, problem: impl Into<String>) -> LoadError {
        LoadError::new(self.file, problem)
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.json.get(key).filter(|v| !v.is_null())
    }

    fn usize(&self, key: &str) -> Result<usize, LoadError> {
        self.opt_usize(key)?
            .ok_or_else(|| self.err(format!("missing field `{key}`")))
    }

    fn opt_usize(&self, key: &str) -> Result<Option<usize>, LoadError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(|n| Some(n as usize))
                .ok_or_else(|| self.err(format!("field `{key}` is not a non-negative integer"))),
        }
    }

    fn opt_f64(&self, key: &str) -> Result<Option<f64>, LoadError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.err(format!("field `{key}` is not a number"))),
        }
    }

    fn opt_bool(&self, key: &str) -> Result<Option<bool>, LoadError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.err(format!("field `{key}` is not a boolean"))),
        }
    }

    fn token_ids(&self, key: &str) -> Result<Vec<u32>, LoadError> {
        token_id_list(self.get(key))
            .ok_or_else(|| self.err(format!("field `{key}` is not a token id or a list of them")))
    }

    fn read(&self) -> Result<ModelConfig, LoadError> {
        let model_type = self
            .get("model_type")
            .and_then(Value::as_str)
            .ok_or_else(|| self.err("missing field `model_type`"))?;
        let architecture = Architecture::from_model_type(model_type).ok_or_else(|| {
            self.err(format!(
                "unsupported architecture `{model_type}` (supported: llama, mistral, qwen2, gemma3_text)"
            ))
        })?;
        let hidden_size = self.usize("hidden_size")?;
        let num_attention_heads = self.usize("num_attention_heads")?;
        let num_layers = self.usize("num_hidden_layers")?;
        let num_key_value_heads = self
            .opt_usize("num_key_value_heads")?
            .unwrap_or(num_attention_heads);
        let head_dim = self
            .opt_usize("head_dim")?
            .unwrap_or(hidden_size / num_attention_heads);
        if num_attention_heads == 0
            || num_key_value_heads == 0
            || num_attention_heads % num_key_value_heads != 0
        {
            return Err(self.err(format!(
                "num_attention_heads ({num_attention_heads}) must be a positive multiple of num_key_value_heads ({num_key_value_heads})"
            )));
        }
        let defaults = architecture.defaults();
        let activation = match self
            .get("hidden_activation")
            .or_else(|| self.get("hidden_act"))
            .and_then(Value::as_str)
        {
            None => defaults.activation,
            Some("silu" | "swish") => Activation::Silu,
            Some("gelu_pytorch_tanh" | "gelu_new") => Activation::GeluTanh,
            Some(other) => return Err(self.err(format!("unsupported activation `{other}`"))),
        };
        let layers = self.layer_specs(architecture, num_layers)?;
        let attention_scale = match defaults.query_pre_attn_scalar {
            Some(default) => self
                .opt_f64("query_pre_attn_scalar")?
                .unwrap_or(default)
                .powf(-0.5),
            None => (head_dim as f64).powf(-0.5),
        };
        Ok(ModelConfig {
            architecture,
            vocab_size: self.usize("vocab_size")?,
            hidden_size,
            intermediate_size: self.usize("intermediate_size")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: self
                .opt_f64("rms_norm_eps")?
                .unwrap_or(defaults.rms_norm_eps),
            max_position_embeddings: self
                .opt_usize("max_position_embeddings")?
                .unwrap_or(defaults.max_position_embeddings),
            tie_word_embeddings: self
                .opt_bool("tie_word_embeddings")?
                .unwrap_or(defaults.tie_word_embeddings),
            qkv_bias: match architecture {
                Architecture::Qwen2 => true,
                _ => self.opt_bool("attention_bias")?.unwrap_or(false),
            },
            activation,
            norm_style: defaults.norm_style,
            qk_norm: defaults.qk_norm,
            sandwich_norms: defaults.sandwich_norms,
            embedding_multiplier: defaults.embedding_multiplier(hidden_size),
            attention_scale,
            attn_logit_softcapping: self.opt_f64("attn_logit_softcapping")?,
            final_logit_softcapping: self.opt_f64("final_logit_softcapping")?,
            layers,
            bos_token_id: self.token_ids("bos_token_id")?.first().copied(),
            eos_token_ids: self.token_ids("eos_token_id")?,
        })
    }

    /// Rope parameters for one layer type. transformers 5 writes `rope_parameters` (per layer
    /// type for Gemma 3); older files write `rope_theta` / `rope_scaling` at the top level.
    fn rope_spec(
        &self,
        layer_type: Option<&str>,
        fallback_theta_key: &str,
        arch_default: f64,
    ) -> Result<RopeSpec, LoadError> {
        let params = self.get("rope_parameters");
        let params = match (params, layer_type) {
            (Some(p), Some(t)) if p.get(t).is_some() => p.get(t),
            (Some(p), _) if p.get("rope_theta").is_some() || p.get("rope_type").is_some() => {
                Some(p)
            }
            _ => self.get("rope_scaling"),
        };
        let theta = params
            .and_then(|p| p.get("rope_theta"))
            .and_then(Value::as_f64)
            .or(self.opt_f64(fallback_theta_key)?);
        // No theta named: transformers falls back on the config class's default, and so do we.
        let theta = theta.unwrap_or(arch_default);
        let kind = params
            .and_then(|p| p.get("rope_type").or_else(|| p.get("type")))
            .and_then(Value::as_str)
            .unwrap_or("default");
        let num = |key: &str| -> Result<f64, LoadError> {
            params
                .and_then(|p| p.get(key))
                .and_then(Value::as_f64)
                .ok_or_else(|| self.err(format!("rope type `{kind}` needs `{key}`")))
        };
        let scaling = match kind {
            "default" => RopeScaling::None,
            "linear" => RopeScaling::Linear {
                factor: num("factor")?,
            },
            "llama3" => RopeScaling::Llama3 {
                factor: num("factor")?,
                low_freq_factor: num("low_freq_factor")?,
                high_freq_factor: num("high_freq_factor")?,
                original_max_position_embeddings: num("original_max_position_embeddings")?,
            },
            other => {
                return Err(self.err(format!(
                    "unsupported rope type `{other}` (supported: default, linear, llama3)"
                )))
            }
        };
        Ok(RopeSpec { theta, scaling })
    }

    fn layer_specs(
        &self,
        architecture: Architecture,
        num_layers: usize,
    ) -> Result<Vec<LayerSpec>, LoadError> {
        let window = self.opt_usize("sliding_window")?;
        let layer_types: Option<Vec<String>> = match self.get("layer_types") {
            None => None,
            Some(v) => Some(
                v.as_array()
                    .and_then(|a| {
                        a.iter()
                            .map(|t| t.as_str().map(str::to_owned))
                            .collect::<Option<Vec<_>>>()
                    })
                    .ok_or_else(|| self.err("field `layer_types` is not a list of strings"))?,
            ),
        };
        if let Some(types) = &layer_types {
            if types.len() != num_layers {
                return Err(self.err(format!(
                    "`layer_types` has {} entries but num_hidden_layers is {num_layers}",
                    types.len()
                )));
            }
        }
        let defaults = architecture.defaults();
        let is_sliding = |i: usize| -> Result<bool, LoadError> {
            Ok(match architecture {
                Architecture::Llama => false,
                Architecture::Mistral => window.is_some(),
                Architecture::Qwen2 => {
                    let enabled = self.opt_bool("use_sliding_window")?.unwrap_or(false);
                    let first = self.opt_usize("max_window_layers")?.unwrap_or(num_layers);
                    let typed = layer_types.as_ref().map(|t| t[i] == "sliding_attention");
                    enabled && window.is_some() && typed.unwrap_or(i >= first)
                }
                Architecture::Gemma3 => match &layer_types {
                    Some(t) => t[i] == "sliding_attention",
                    None => {
                        let pattern = self
                            .opt_usize("sliding_window_pattern")?
                            .or(self.opt_usize("_sliding_window_pattern")?);
                        defaults.is_sliding(i, pattern)
                    }
                },
            })
        };
        let global = self.rope_spec(Some("full_attention"), "rope_theta", defaults.rope_theta)?;
        let local = if let Some(local_default) = defaults.local_rope_theta {
            let mut local = self.rope_spec(
                Some("sliding_attention"),
                "rope_local_base_freq",
                local_default,
            )?;
            if self
                .get("rope_parameters")
                .and_then(|p| p.get("sliding_attention"))
                .is_none()
            {
                // Older Gemma 3 configs: local layers never scale, whatever `rope_scaling` says.
                local.scaling = RopeScaling::None;
                if let Some(theta) = self.opt_f64("rope_local_base_freq")? {
                    local.theta = theta;
                }
            }
            local
        } else {
            global.clone()
        };
        (0..num_layers)
            .map(|i| {
                let sliding = is_sliding(i)?;
                if sliding && window.is_none() {
                    return Err(self.err(format!(
                        "layer {i} uses sliding attention but `sliding_window` is missing"
                    )));
                }
                Ok(LayerSpec {
                    sliding_window: if sliding { window } else { None },
                    rope: if sliding {
                        local.clone()
                    } else {
                        global.clone()
                    },
                })
            })
            .collect()
    }
}

/// `5`, `[1, 2]` or absent, as transformers writes token ids.
pub(crate) fn token_id_list(v: Option<&Value>) -> Option<Vec<u32>> {
    match v {
        None | Some(Value::Null) => Some(Vec::new()),
        Some(Value::Number(n)) => n.as_u64().map(|n| vec![n as u32]),
        Some(Value::Array(a)) => a.iter().map(|x| x.as_u64().map(|n| n as u32)).collect(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TINY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/models/tiny");

    fn read(name: &str) -> ModelConfig {
        let path = format!("{TINY}/{name}/config.json");
        ModelConfig::from_hf_json(&std::fs::read_to_string(&path).unwrap(), &path).unwrap()
    }

    #[test]
    fn gemma3_layers_follow_layer_types_and_rope_parameters() {
        let c = read("gemma3");
        assert_eq!(c.layers[0].sliding_window, Some(4));
        assert_eq!(c.layers[0].rope.theta, 1e4);
        assert_eq!(c.layers[1].sliding_window, None);
        assert_eq!(c.layers[1].rope.theta, 1e6);
        assert!(
            (c.attention_scale - 0.25).abs() < 1e-12,
            "query_pre_attn_scalar 16"
        );
        assert_eq!(c.norm_style, NormStyle::OnePlusScale);
    }

    #[test]
    fn rope_theta_is_read_from_rope_parameters_alone() {
        let json = r#"{"model_type":"llama","hidden_size":32,"num_attention_heads":4,"num_hidden_layers":1,
            "intermediate_size":64,"vocab_size":10,"rope_parameters":{"rope_theta":500000.0,"rope_type":"default"}}"#;
        let c = ModelConfig::from_hf_json(json, "config.json").unwrap();
        assert_eq!(c.layers[0].rope.theta, 5e5);
    }

    #[test]
    fn qwen2_ignores_window_unless_enabled() {
        let c = read("qwen2");
        assert!(c.layers.iter().all(|l| l.sliding_window.is_none()));
        assert!(c.qkv_bias && !c.tie_word_embeddings);
    }

    #[test]
    fn errors_name_file_and_field() {
        let json = r#"{"model_type":"llama","hidden_size":32,"num_attention_heads":4,"num_hidden_layers":1,"vocab_size":10}"#;
        let e = ModelConfig::from_hf_json(json, "/m/config.json").unwrap_err();
        assert_eq!(
            e.to_string(),
            "/m/config.json: missing field `intermediate_size`"
        );
        let e = ModelConfig::from_hf_json(r#"{"model_type":"gpt2"}"#, "c.json").unwrap_err();
        assert!(
            e.to_string().contains("unsupported architecture `gpt2`"),
            "{e}"
        );
    }

    fn close(got: &[f64], want: &[f64]) {
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() <= 1e-12 * w.abs(), "{got:?} vs {want:?}");
        }
    }

    #[test]
    fn linear_rope_scaling_divides_every_frequency() {
        // theta 10000, head_dim 4: base frequencies 10000^0 = 1 and 10000^(-2/4) = 0.01.
        let spec = RopeSpec {
            theta: 1e4,
            scaling: RopeScaling::Linear { factor: 4.0 },
        };
        close(&spec.inv_freq(4), &[0.25, 0.0025]);
    }

    #[test]
    fn llama3_rope_scaling_keeps_high_scales_low_and_blends_the_middle_band() {
        // theta 5e5, head_dim 8: base frequencies 5e5^(-i/4) = 1, 0.0376060309, 0.0014142136,
        // 0.0000531830; wavelengths 2π/f = 6.28, 167.1, 4442.9, 118142.8. With factor 8,
        // low/high factors 1/4 and an original length of 8192, the bands are: wavelength below
        // 8192/4 = 2048 unchanged, above 8192/1 = 8192 divided by 8, between blended with
        // smooth = (8192/4442.88 - 1) / (4 - 1) = 0.2811270:
        // (1 - 0.2811270) * 0.0014142136 / 8 + 0.2811270 * 0.0014142136 = 0.000524846161.
        let spec = RopeSpec {
            theta: 5e5,
            scaling: RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192.0,
            },
        };
        close(
            &spec.inv_freq(8),
            &[
                1.0,
                0.037_606_030_930_863_93,
                0.000_524_846_160_992_954_7,
                5.318_295_896_944_989e-5 / 8.0,
            ],
        );
    }

    #[test]
    fn gemma3_defaults_fill_what_the_config_leaves_out() {
        // No query_pre_attn_scalar, rope thetas, pattern, eps or max length: transformers'
        // Gemma3TextConfig defaults (256, 1e6 / 1e4, every sixth layer global, 1e-6, 131072).
        let json = r#"{"model_type":"gemma3_text","hidden_size":32,"num_attention_heads":4,"head_dim":8,
            "num_hidden_layers":7,"intermediate_size":64,"vocab_size":10,"sliding_window":4}"#;
        let c = ModelConfig::from_hf_json(json, "config.json").unwrap();
        assert!((c.attention_scale - 1.0 / 16.0).abs() < 1e-15, "256^-0.5");
        let sliding: Vec<bool> = c
            .layers
            .iter()
            .map(|l| l.sliding_window.is_some())
            .collect();
        assert_eq!(sliding, [true, true, true, true, true, false, true]);
        assert_eq!(c.layers[0].rope.theta, 1e4);
        assert_eq!(c.layers[5].rope.theta, 1e6);
        assert_eq!((c.rms_norm_eps, c.max_position_embeddings), (1e-6, 131_072));
        assert!(c.tie_word_embeddings);
    }
}
