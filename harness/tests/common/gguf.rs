//! Writes small GGUF files from the tiny Hugging Face checkpoints, laid out as llama.cpp's
//! converter lays them out (its tensor names; Gemma norms stored as 1 + w), so that the GGUF
//! loader can be tested on architectures no real GGUF in the cache covers.

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::Device;

/// llama.cpp's name of a transformers tensor.
fn gguf_name(hf: &str, gemma: bool) -> String {
    match hf {
        "model.embed_tokens.weight" => return "token_embd.weight".into(),
        "model.norm.weight" => return "output_norm.weight".into(),
        "lm_head.weight" => return "output.weight".into(),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.").expect("a layer tensor");
    let (layer, name) = rest.split_once('.').unwrap();
    let (module, suffix) = name.rsplit_once('.').unwrap();
    let short = match module {
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        "input_layernorm" => "attn_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        "post_attention_layernorm" if gemma => "post_attention_norm",
        "post_attention_layernorm" => "ffn_norm",
        "pre_feedforward_layernorm" => "ffn_norm",
        "post_feedforward_layernorm" => "post_ffw_norm",
        other => panic!("no GGUF name for {other}"),
    };
    format!("blk.{layer}.{short}.{suffix}")
}

/// Metadata every test GGUF carries: the architecture's sizes, taken from `config.json`.
fn base_metadata(arch: &str, config: &serde_json::Value) -> Vec<(String, Value)> {
    let n = |k: &str| {
        config[k]
            .as_u64()
            .unwrap_or_else(|| panic!("config lacks {k}")) as u32
    };
    let key = |k: &str| format!("{arch}.{k}");
    vec![
        ("general.architecture".into(), Value::String(arch.into())),
        (key("embedding_length"), Value::U32(n("hidden_size"))),
        (key("block_count"), Value::U32(n("num_hidden_layers"))),
        (
            key("feed_forward_length"),
            Value::U32(n("intermediate_size")),
        ),
        (
            key("attention.head_count"),
            Value::U32(n("num_attention_heads")),
        ),
        (
            key("attention.head_count_kv"),
            Value::U32(n("num_key_value_heads")),
        ),
        (
            key("context_length"),
            Value::U32(n("max_position_embeddings")),
        ),
        (
            key("attention.layer_norm_rms_epsilon"),
            Value::F32(config["rms_norm_eps"].as_f64().unwrap() as f32),
        ),
        (
            "tokenizer.ggml.bos_token_id".into(),
            Value::U32(n("bos_token_id")),
        ),
        (
            "tokenizer.ggml.eos_token_id".into(),
            Value::U32(n("eos_token_id")),
        ),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
    ]
}

/// Writes `<dir>/<name>.gguf` (float32 tensors) from the tiny checkpoint folder `src`, with the
/// base metadata plus `extra` (a `None` value removes a base key), and copies `tokenizer.json`
/// beside it. Returns the file's path.
pub fn write_tiny(src: &Path, arch: &str, extra: &[(&str, Option<Value>)], dir: &Path) -> PathBuf {
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    let gemma = arch == "gemma3";
    let mut metadata = base_metadata(arch, &config);
    for (k, v) in extra {
        metadata.retain(|(m, _)| m != k);
        if let Some(v) = v {
            metadata.push(((*k).to_owned(), v.clone()));
        }
    }
    let weights =
        candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    let mut names: Vec<&String> = weights.keys().collect();
    names.sort();
    let tensors: Vec<(String, QTensor)> = names
        .into_iter()
        .map(|hf| {
            let t = &weights[hf];
            let t = if gemma && hf.ends_with("norm.weight") {
                (t + 1.0).unwrap()
            } else {
                t.clone()
            };
            (
                gguf_name(hf, gemma),
                QTensor::quantize(&t, GgmlDType::F32).unwrap(),
            )
        })
        .collect();
    let path = dir.join(format!("{arch}.gguf"));
    let mut file = std::fs::File::create(&path).unwrap();
    let meta_refs: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    gguf_file::write(&mut file, &meta_refs, &tensor_refs).unwrap();
    std::fs::copy(src.join("tokenizer.json"), dir.join("tokenizer.json")).unwrap();
    path
}
