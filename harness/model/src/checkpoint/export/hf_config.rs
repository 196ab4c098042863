//! [`ModelConfig`] → transformers' `config.json` and `generation_config.json`: the inverse of
//! [`ModelConfig::from_hf_json`], for checkpoints (GGUF) that come without a config.
//!
//! The file is what transformers 5 writes (`rope_parameters`, per layer type for Gemma 3; explicit
//! `layer_types`) plus the top-level fields older readers want (`rope_theta`, `torch_dtype`,
//! Gemma's `rope_local_base_freq`). A setting that the architecture's config cannot state — a
//! Llama with sliding windows, a Qwen2 without q/k/v biases — is refused, never written wrongly.

use candle_core::DType;
use serde_json::{json, Map, Value};

use crate::model::config::{LayerSpec, RopeScaling, RopeSpec};
use crate::model::{Architecture, ModelConfig};

/// What a config holds that transformers' config for its architecture cannot express.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unrepresentable(pub String);

fn refuse<T>(problem: impl Into<String>) -> Result<T, Unrepresentable> {
    Err(Unrepresentable(problem.into()))
}

/// transformers' name of a weight dtype.
pub fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        DType::F64 => "float64",
        _ => "float32",
    }
}

/// `config.json` for `config`, whose weights are stored in `dtype`.
pub fn config_json(config: &ModelConfig, dtype: DType) -> Result<Value, Unrepresentable> {
    check_fixed_settings(config)?;
    let arch = config.architecture;
    let gemma = arch == Architecture::Gemma3;
    let mut c = Map::new();
    let mut set = |k: &str, v: Value| {
        c.insert(k.to_owned(), v);
    };
    set("architectures", json!([class_name(arch)]));
    set("model_type", json!(arch.name()));
    set("vocab_size", json!(config.vocab_size));
    set("hidden_size", json!(config.hidden_size));
    set("intermediate_size", json!(config.intermediate_size));
    set("num_hidden_layers", json!(config.num_layers()));
    set("num_attention_heads", json!(config.num_attention_heads));
    set("num_key_value_heads", json!(config.num_key_value_heads));
    set("head_dim", json!(config.head_dim));
    set("rms_norm_eps", json!(config.rms_norm_eps));
    set(
        "max_position_embeddings",
        json!(config.max_position_embeddings),
    );
    set("tie_word_embeddings", json!(config.tie_word_embeddings));
    let activation = match config.activation {
        crate::model::config::Activation::Silu => "silu",
        crate::model::config::Activation::GeluTanh => "gelu_pytorch_tanh",
    };
    set(
        if gemma {
            "hidden_activation"
        } else {
            "hidden_act"
        },
        json!(activation),
    );
    match arch {
        Architecture::Qwen2 if !config.qkv_bias => {
            return refuse("Qwen2 always has q/k/v biases; this model has none")
        }
        Architecture::Qwen2 => {}
        Architecture::Mistral if config.qkv_bias => {
            return refuse("Mistral has no attention biases; this model has q/k/v biases")
        }
        Architecture::Mistral => {}
        // transformers puts the bias on o_proj as well; the weights writer adds a zero one.
        Architecture::Llama | Architecture::Gemma3 => {
            set("attention_bias", json!(config.qkv_bias));
        }
    }
    if arch == Architecture::Llama {
        set("mlp_bias", json!(false));
    }
    set("attention_dropout", json!(0.0));
    set_attention_scale(config, &mut set)?;
    set(
        "attn_logit_softcapping",
        json!(config.attn_logit_softcapping),
    );
    set(
        "final_logit_softcapping",
        json!(config.final_logit_softcapping),
    );
    set_layers(config, &mut set)?;
    set("bos_token_id", json!(config.bos_token_id));
    set("eos_token_id", token_ids(&config.eos_token_ids));
    set("dtype", json!(dtype_name(dtype)));
    set("torch_dtype", json!(dtype_name(dtype)));
    set("use_cache", json!(true));
    Ok(Value::Object(c))
}

/// `generation_config.json`: the special tokens generation stops at.
pub fn generation_config_json(config: &ModelConfig, pad_token_id: Option<u32>) -> Value {
    let mut g = json!({
        "bos_token_id": config.bos_token_id,
        "eos_token_id": token_ids(&config.eos_token_ids),
    });
    if let Some(pad) = pad_token_id {
        g["pad_token_id"] = json!(pad);
    }
    g
}

fn class_name(arch: Architecture) -> &'static str {
    match arch {
        Architecture::Llama => "LlamaForCausalLM",
        Architecture::Mistral => "MistralForCausalLM",
        Architecture::Qwen2 => "Qwen2ForCausalLM",
        Architecture::Gemma3 => "Gemma3ForCausalLM",
    }
}

/// transformers writes one id as a number and several as a list.
fn token_ids(ids: &[u32]) -> Value {
    match ids {
        [] => Value::Null,
        [one] => json!(one),
        many => json!(many),
    }
}

/// Norm style, q/k norms, sandwich norms and the embedding multiplier follow from the
/// architecture alone; a config that differs cannot be written as that architecture.
fn check_fixed_settings(config: &ModelConfig) -> Result<(), Unrepresentable> {
    let fixed = config.architecture.defaults();
    if fixed.norm_style != config.norm_style
        || fixed.qk_norm != config.qk_norm
        || fixed.sandwich_norms != config.sandwich_norms
        || fixed.embedding_multiplier(config.hidden_size) != config.embedding_multiplier
    {
        return refuse(format!(
            "its norms or embedding scale differ from what {} implies",
            config.architecture.name()
        ));
    }
    Ok(())
}

/// Gemma 3 states the attention scale as `query_pre_attn_scalar^-0.5`; the others fix it at
/// `head_dim^-0.5`.
fn set_attention_scale(
    config: &ModelConfig,
    set: &mut impl FnMut(&str, Value),
) -> Result<(), Unrepresentable> {
    let scale = config.attention_scale;
    if config.architecture != Architecture::Gemma3 {
        if scale != (config.head_dim as f64).powf(-0.5) {
            return refuse(format!(
                "attention scale {scale} is not head_dim^-0.5, which {} fixes",
                config.architecture.name()
            ));
        }
        return Ok(());
    }
    let scalar = scale.powi(-2);
    // An integral scalar is written as transformers writes it, if it reads back to the same scale.
    let rounded = scalar.round();
    if rounded > 0.0 && rounded.powf(-0.5) == scale {
        set("query_pre_attn_scalar", json!(rounded as u64));
    } else {
        set("query_pre_attn_scalar", json!(scalar));
    }
    Ok(())
}

fn rope_json(spec: &RopeSpec) -> Value {
    // transformers wants integers where the value is a length.
    let length = |x: f64| {
        if x.fract() == 0.0 && x >= 0.0 {
            json!(x as u64)
        } else {
            json!(x)
        }
    };
    match &spec.scaling {
        RopeScaling::None => json!({"rope_type": "default", "rope_theta": spec.theta}),
        RopeScaling::Linear { factor } => {
            json!({"rope_type": "linear", "rope_theta": spec.theta, "factor": factor})
        }
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => json!({
            "rope_type": "llama3", "rope_theta": spec.theta, "factor": factor,
            "low_freq_factor": low_freq_factor, "high_freq_factor": high_freq_factor,
            "original_max_position_embeddings": length(*original_max_position_embeddings),
        }),
    }
}

/// The one value every layer in `layers` shares, or a refusal naming `what`.
fn shared<'a, T: PartialEq>(
    layers: impl Iterator<Item = &'a LayerSpec>,
    get: impl Fn(&'a LayerSpec) -> T,
    what: &str,
) -> Result<Option<T>, Unrepresentable> {
    let mut value: Option<T> = None;
    for layer in layers {
        let v = get(layer);
        match &value {
            Some(seen) if *seen != v => return refuse(format!("its layers differ in {what}")),
            Some(_) => {}
            None => value = Some(v),
        }
    }
    Ok(value)
}

/// Sliding windows and rope settings, per layer where the architecture allows it.
fn set_layers(
    config: &ModelConfig,
    set: &mut impl FnMut(&str, Value),
) -> Result<(), Unrepresentable> {
    let layers = &config.layers;
    let arch = config.architecture;
    let sliding = |l: &LayerSpec| l.sliding_window.is_some();
    let window = shared(
        layers.iter().filter(|l| sliding(l)),
        |l| l.sliding_window,
        "sliding window size",
    )?
    .flatten();
    let layer_types: Vec<&str> = layers
        .iter()
        .map(|l| {
            if sliding(l) {
                "sliding_attention"
            } else {
                "full_attention"
            }
        })
        .collect();
    if arch == Architecture::Gemma3 {
        let global = shared(
            layers.iter().filter(|l| !sliding(l)),
            |l| l.rope.clone(),
            "rope settings of full-attention layers",
        )?;
        let local = shared(
            layers.iter().filter(|l| sliding(l)),
            |l| l.rope.clone(),
            "rope settings of sliding-window layers",
        )?;
        // Gemma 3's defaults for a layer type the model does not use.
        let defaults = arch.defaults();
        let global = global.unwrap_or(RopeSpec {
            theta: defaults.rope_theta,
            scaling: RopeScaling::None,
        });
        let local = local.unwrap_or(RopeSpec {
            theta: defaults.local_rope_theta.unwrap_or(defaults.rope_theta),
            scaling: RopeScaling::None,
        });
        set("layer_types", json!(layer_types));
        set("sliding_window", json!(window));
        set(
            "rope_parameters",
            json!({"full_attention": rope_json(&global), "sliding_attention": rope_json(&local)}),
        );
        set("rope_theta", json!(global.theta));
        set("rope_local_base_freq", json!(local.theta));
        set("use_bidirectional_attention", json!(false));
        return Ok(());
    }
    let rope = shared(layers.iter(), |l| l.rope.clone(), "rope settings")?.unwrap_or(RopeSpec {
        theta: arch.defaults().rope_theta,
        scaling: RopeScaling::None,
    });
    set("rope_parameters", rope_json(&rope));
    set("rope_theta", json!(rope.theta));
    let any_sliding = layers.iter().any(sliding);
    match arch {
        Architecture::Llama if any_sliding => {
            return refuse("Llama has no sliding-window attention")
        }
        Architecture::Llama => {}
        Architecture::Mistral => {
            if any_sliding && !layers.iter().all(sliding) {
                return refuse("Mistral's sliding window applies to every layer or to none");
            }
            set("sliding_window", json!(window));
        }
        Architecture::Qwen2 => {
            // transformers' Qwen2 slides on the layers from `max_window_layers` on.
            let first = layers.iter().position(sliding).unwrap_or(layers.len());
            if layers[first..].iter().any(|l| !sliding(l)) {
                return refuse(
                    "Qwen2's sliding-window layers must be the last ones (from max_window_layers on)",
                );
            }
            set("use_sliding_window", json!(any_sliding));
            set("sliding_window", json!(window));
            set("max_window_layers", json!(first));
            set("layer_types", json!(layer_types));
        }
        Architecture::Gemma3 => unreachable!("handled above"),
    }
    Ok(())
}
