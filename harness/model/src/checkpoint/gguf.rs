//! A single GGUF file: metadata becomes a [`ModelConfig`], every tensor is dequantised to the
//! target dtype under its transformers name, and the tokenizer comes from a `tokenizer.json`
//! beside the file or, failing that, from the GGUF metadata. On request the quantized weight
//! matrices are kept as stored, for the quantized compute path.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::{Device, Tensor};

use super::gguf_tokenizer;
use crate::error::{first_line, LoadError};
use crate::model::config::{LayerSpec, RopeScaling, RopeSpec};
use crate::model::{Architecture, ModelConfig};
use crate::tokenizer::TextTokenizer;

pub struct GgufFile {
    pub config: ModelConfig,
    pub tokenizer: TextTokenizer,
    /// Dequantised float32 weights under transformers' names, on the CPU.
    pub tensors: HashMap<String, Tensor>,
    /// `tokenizer.chat_template`, kept so that an exported folder chats like the original.
    pub chat_template: Option<String>,
    /// `tokenizer.ggml.padding_token_id`.
    pub pad_token_id: Option<u32>,
    /// With [`open_with`]`(_, true)`: every weight matrix stored in a quantized type, as stored
    /// (Llama's q/k rows put back in transformers' order), under its transformers name.
    pub quantized: HashMap<String, QTensor>,
}

pub(crate) struct Metadata<'a> {
    pub map: &'a HashMap<String, Value>,
    pub file: &'a Path,
    /// Names of every tensor in the file.
    pub tensor_names: Vec<&'a str>,
}

impl Metadata<'_> {
    pub fn err(&self, problem: impl Into<String>) -> LoadError {
        LoadError::at(self.file, problem)
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key)
    }

    pub fn u64(&self, key: &str) -> Result<u64, LoadError> {
        self.opt_u64(key)?
            .ok_or_else(|| self.err(format!("missing metadata `{key}`")))
    }

    pub fn opt_u64(&self, key: &str) -> Result<Option<u64>, LoadError> {
        self.get(key)
            .map(|v| {
                v.to_u64()
                    .or_else(|_| v.to_u32().map(u64::from))
                    .or_else(|_| v.to_i32().map(|x| x as u64))
            })
            .transpose()
            .map_err(|_| self.err(format!("metadata `{key}` is not an integer")))
    }

    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>, LoadError> {
        self.get(key)
            .map(|v| v.to_f32().map(f64::from).or_else(|_| v.to_f64()))
            .transpose()
            .map_err(|_| self.err(format!("metadata `{key}` is not a number")))
    }

    pub fn str(&self, key: &str) -> Result<&str, LoadError> {
        self.get(key)
            .ok_or_else(|| self.err(format!("missing metadata `{key}`")))?
            .to_string()
            .map(String::as_str)
            .map_err(|_| self.err(format!("metadata `{key}` is not a string")))
    }

    pub fn opt_bool(&self, key: &str) -> Option<bool> {
        self.get(key).and_then(|v| v.to_bool().ok())
    }
}

pub fn open(path: &Path) -> Result<GgufFile, LoadError> {
    open_with(path, false)
}

/// [`open`], also keeping the quantized weight matrices when `keep_quantized`.
pub fn open_with(path: &Path, keep_quantized: bool) -> Result<GgufFile, LoadError> {
    let file = File::open(path).map_err(|e| LoadError::at(path, format!("cannot open: {e}")))?;
    let size = file
        .metadata()
        .map_err(|e| LoadError::at(path, format!("cannot stat: {e}")))?
        .len();
    let mut reader = BufReader::new(file);
    let content = Content::read(&mut reader).map_err(|e| {
        LoadError::at(
            path,
            format!("not a readable GGUF file: {}", first_line(&e)),
        )
    })?;
    check_extents(&content, size, path)?;
    let meta = Metadata {
        map: &content.metadata,
        file: path,
        tensor_names: content.tensor_infos.keys().map(String::as_str).collect(),
    };
    let arch_name = meta.str("general.architecture")?.to_owned();
    let architecture = match arch_name.as_str() {
        "llama" => Architecture::Llama,
        "qwen2" => Architecture::Qwen2,
        "gemma3" => Architecture::Gemma3,
        other => {
            return Err(meta.err(format!(
                "unsupported architecture `{other}` (supported in GGUF: llama, qwen2, gemma3)"
            )))
        }
    };
    let (tensors, quantized) =
        load_tensors(&content, &mut reader, &meta, architecture, keep_quantized)?;
    let config = config(&meta, architecture, &arch_name, &tensors)?;
    let tokenizer = match path
        .parent()
        .map(|d| d.join("tokenizer.json"))
        .filter(|p| p.exists())
    {
        Some(json) => {
            let text = std::fs::read_to_string(&json)
                .map_err(|e| LoadError::at(&json, format!("cannot read: {e}")))?;
            let inner = TextTokenizer::from_json(&text, &json.display().to_string())?;
            let (bos, eos, add_bos) = gguf_tokenizer::special_ids(&meta)?;
            TextTokenizer::new(inner, bos, eos, add_bos)
        }
        None => gguf_tokenizer::from_metadata(&meta)?,
    };
    if tokenizer.vocab_size() > config.vocab_size {
        return Err(meta.err(format!(
            "tokenizer has {} tokens but the embedding has {} rows: they do not belong together",
            tokenizer.vocab_size(),
            config.vocab_size
        )));
    }
    let chat_template = meta
        .get("tokenizer.chat_template")
        .and_then(|v| v.to_string().ok())
        .cloned();
    let pad_token_id = meta
        .opt_u64("tokenizer.ggml.padding_token_id")?
        .map(|v| v as u32);
    Ok(GgufFile {
        config,
        tokenizer,
        tensors,
        chat_template,
        pad_token_id,
        quantized,
    })
}

/// Refuses a file whose tensors reach past its end (an interrupted download).
fn check_extents(content: &Content, size: u64, path: &Path) -> Result<(), LoadError> {
    for (name, info) in &content.tensor_infos {
        let elems = info.shape.elem_count() as u64;
        let bytes =
            elems / info.ggml_dtype.block_size() as u64 * info.ggml_dtype.type_size() as u64;
        let end = content.tensor_data_offset + info.offset + bytes;
        if end > size {
            return Err(LoadError::at(
                path,
                format!("truncated GGUF file: tensor `{name}` ends at byte {end}, the file has {size} bytes"),
            ));
        }
    }
    Ok(())
}

/// GGUF tensor name → transformers name.
fn hf_name(gguf: &str, arch: Architecture) -> Option<String> {
    let simple = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(s) = simple {
        return Some(s.to_owned());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, name) = rest.split_once('.')?;
    let (module, suffix) = name.rsplit_once('.')?;
    let gemma = arch == Architecture::Gemma3;
    let hf = match module {
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "attn_q_norm" => "self_attn.q_norm",
        "attn_k_norm" => "self_attn.k_norm",
        "attn_norm" => "input_layernorm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        "post_attention_norm" => "post_attention_layernorm",
        "ffn_norm" if gemma => "pre_feedforward_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "post_ffw_norm" => "post_feedforward_layernorm",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{suffix}"))
}

type Tensors = (HashMap<String, Tensor>, HashMap<String, QTensor>);

fn load_tensors(
    content: &Content,
    reader: &mut BufReader<File>,
    meta: &Metadata,
    arch: Architecture,
    keep_quantized: bool,
) -> Result<Tensors, LoadError> {
    let prefix = meta.str("general.architecture")?;
    let heads = meta.u64(&format!("{prefix}.attention.head_count"))? as usize;
    let kv_heads = meta
        .opt_u64(&format!("{prefix}.attention.head_count_kv"))?
        .map_or(heads, |v| v as usize);
    let mut out = HashMap::new();
    let mut quantized = HashMap::new();
    for name in content.tensor_infos.keys() {
        let Some(hf) = hf_name(name, arch) else {
            // rope_freqs and similar precomputed helpers are recomputed from the config.
            continue;
        };
        let wrap = |e: candle_core::Error| meta.err(format!("tensor `{name}`: {}", first_line(&e)));
        let q = content.tensor(reader, name, &Device::Cpu).map_err(wrap)?;
        let t = q.dequantize(&Device::Cpu).map_err(wrap)?;
        // llama.cpp permutes q/k rows of Llama checkpoints for its interleaved rope; undo it.
        let permuted_heads = match (arch, hf.as_str()) {
            (Architecture::Llama, n) if n.ends_with("q_proj.weight") => Some(heads),
            (Architecture::Llama, n) if n.ends_with("k_proj.weight") => Some(kv_heads),
            _ => None,
        };
        if keep_quantized && is_quantized(q.dtype()) && q.shape().rank() == 2 {
            let q = match permuted_heads {
                Some(h) => unpermute_quantized(&q, h).map_err(wrap)?,
                None => q,
            };
            quantized.insert(hf.clone(), q);
        }
        let t = match (permuted_heads, arch, hf.as_str()) {
            (Some(h), _, _) => unpermute(&t, h).map_err(wrap)?,
            // llama.cpp stores Gemma norms as 1 + w; transformers' weight is w.
            (None, Architecture::Gemma3, n) if n.ends_with("norm.weight") => {
                (t - 1.0).map_err(wrap)?
            }
            _ => t,
        };
        out.insert(hf, t);
    }
    Ok((out, quantized))
}

/// Whether tensors of this type are stored quantized (not as plain floats).
fn is_quantized(dtype: GgmlDType) -> bool {
    !matches!(dtype, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16)
}

/// [`unpermute`] on quantized rows: each row is a run of whole blocks, so rows move as bytes.
fn unpermute_quantized(q: &QTensor, heads: usize) -> candle_core::Result<QTensor> {
    let (rows, cols) = q.shape().dims2()?;
    let dtype = q.dtype();
    let row_bytes = cols / dtype.block_size() * dtype.type_size();
    let data = q.data()?;
    let half = rows / heads / 2;
    let mut out = Vec::with_capacity(data.len());
    for head in 0..heads {
        for side in 0..2 {
            for pair in 0..half {
                let old = (head * half + pair) * 2 + side;
                out.extend_from_slice(&data[old * row_bytes..(old + 1) * row_bytes]);
            }
        }
    }
    QTensor::new(
        QStorage::from_data(Cow::Owned(out), &Device::Cpu, dtype)?,
        (rows, cols),
    )
}

/// Inverse of llama.cpp's q/k permutation: rows (head, pair, half) → (head, half, pair).
fn unpermute(w: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    w.reshape((heads, rows / heads / 2, 2, cols))?
        .transpose(1, 2)?
        .reshape((rows, cols))
}

fn config(
    meta: &Metadata,
    architecture: Architecture,
    p: &str,
    tensors: &HashMap<String, Tensor>,
) -> Result<ModelConfig, LoadError> {
    let key = |k: &str| format!("{p}.{k}");
    let defaults = architecture.defaults();
    let hidden_size = meta.u64(&key("embedding_length"))? as usize;
    let num_attention_heads = meta.u64(&key("attention.head_count"))? as usize;
    if num_attention_heads == 0 {
        return Err(meta.err(format!("metadata `{}` is 0", key("attention.head_count"))));
    }
    let num_key_value_heads = meta
        .opt_u64(&key("attention.head_count_kv"))?
        .map_or(num_attention_heads, |v| v as usize);
    let head_dim = meta
        .opt_u64(&key("attention.key_length"))?
        .map_or(hidden_size / num_attention_heads, |v| v as usize);
    let num_layers = meta.u64(&key("block_count"))? as usize;
    let vocab_size = tensors
        .get("model.embed_tokens.weight")
        .ok_or_else(|| meta.err("missing tensor `token_embd.weight`"))?
        .dim(0)
        .map_err(|e| meta.err(first_line(&e)))?;
    let gemma = architecture == Architecture::Gemma3;
    let undetermined = |what: &str, why: &str| {
        meta.err(format!(
            "cannot determine {what} of this {p} model: {why}; the GGUF file does not record it"
        ))
    };
    let theta = match meta.opt_f64(&key("rope.freq_base"))? {
        Some(t) => t,
        // llama.cpp reads a missing base as 10000, which is transformers' default for Llama and
        // Qwen2 but not for Gemma 3 (1e6): there the file alone does not say which was meant.
        None if gemma => {
            return Err(undetermined(
                &format!("the rope base (`{}`)", key("rope.freq_base")),
                "llama.cpp and transformers default it differently for Gemma 3",
            ))
        }
        None => defaults.rope_theta,
    };
    let scaling = match (
        meta.get(&key("rope.scaling.type"))
            .and_then(|v| v.to_string().ok()),
        meta.opt_f64(&key("rope.scaling.factor"))?,
    ) {
        (Some(t), Some(factor)) if t == "linear" => RopeScaling::Linear { factor },
        (Some(t), _) if t != "none" => {
            return Err(meta.err(format!("unsupported rope scaling `{t}`")))
        }
        _ => RopeScaling::None,
    };
    if tensors_named(meta, "rope_freqs") {
        // Llama 3.1-style frequency scaling stored as a tensor of per-frequency factors.
        return Err(meta.err(
            "tensor `rope_freqs.weight` (per-frequency rope factors, Llama 3.1 style) is not supported",
        ));
    }
    let global = RopeSpec { theta, scaling };
    let window = meta
        .opt_u64(&key("attention.sliding_window"))?
        .map(|w| w as usize);
    let pattern = meta
        .opt_u64(&key("attention.sliding_window_pattern"))?
        .map(|v| v as usize);
    let local = match defaults.local_rope_theta {
        Some(default) => Some(RopeSpec {
            theta: meta.opt_f64(&key("rope.freq_base_swa"))?.unwrap_or(default),
            scaling: RopeScaling::None,
        }),
        None => None,
    };
    let layers = (0..num_layers)
        .map(|i| {
            // llama.cpp's Gemma 3: every sixth layer global (the architecture's pattern), the
            // others local with their own rope base.
            let sliding = local.is_some() && defaults.is_sliding(i, pattern);
            if sliding && window.is_none() {
                return Err(meta.err(format!(
                    "missing metadata `{}` (layer {i} uses sliding-window attention)",
                    key("attention.sliding_window")
                )));
            }
            Ok(LayerSpec {
                sliding_window: if sliding { window } else { None },
                rope: match (&local, sliding) {
                    (Some(local), true) => local.clone(),
                    _ => global.clone(),
                },
            })
        })
        .collect::<Result<Vec<_>, LoadError>>()?;
    let attention_scale = match meta.opt_f64(&key("attention.scale"))? {
        Some(scale) => scale,
        None => match defaults.query_pre_attn_scalar {
            None => (head_dim as f64).powf(-0.5),
            Some(_) => gemma3_attention_scale(num_layers, hidden_size, num_attention_heads, head_dim)
                .ok_or_else(|| {
                    undetermined(
                        &format!(
                            "the attention scale (query_pre_attn_scalar; `{}`)",
                            key("attention.scale")
                        ),
                        &format!(
                            "{num_layers} layers is none of the Gemma 3 sizes whose scale llama.cpp knows (18, 26, 34, 48, 62)"
                        ),
                    )
                })?,
        },
    };
    let (bos, eos, _) = gguf_tokenizer::special_ids(meta)?;
    Ok(ModelConfig {
        architecture,
        vocab_size,
        hidden_size,
        intermediate_size: meta.u64(&key("feed_forward_length"))? as usize,
        num_attention_heads,
        num_key_value_heads,
        head_dim,
        rms_norm_eps: meta
            .opt_f64(&key("attention.layer_norm_rms_epsilon"))?
            .unwrap_or(defaults.rms_norm_eps),
        max_position_embeddings: meta
            .opt_u64(&key("context_length"))?
            .map_or(defaults.max_position_embeddings, |v| v as usize),
        tie_word_embeddings: !tensors.contains_key("lm_head.weight"),
        qkv_bias: tensors.contains_key("model.layers.0.self_attn.q_proj.bias"),
        activation: defaults.activation,
        norm_style: defaults.norm_style,
        qk_norm: defaults.qk_norm,
        sandwich_norms: defaults.sandwich_norms,
        embedding_multiplier: defaults.embedding_multiplier(hidden_size),
        attention_scale,
        attn_logit_softcapping: meta.opt_f64(&key("attn_logit_softcapping"))?,
        final_logit_softcapping: meta.opt_f64(&key("final_logit_softcapping"))?,
        layers,
        bos_token_id: bos,
        eos_token_ids: eos,
    })
}

/// Gemma 3's query_pre_attn_scalar as llama.cpp derives it from the model size (GGUF has no key
/// for it): hidden_size / heads for the 27B model (62 layers), head_dim for the 270M, 1B, 4B and
/// 12B models, where the two coincide with the published configs. `None` for other sizes.
fn gemma3_attention_scale(
    layers: usize,
    hidden_size: usize,
    heads: usize,
    head_dim: usize,
) -> Option<f64> {
    let scalar = match layers {
        62 => hidden_size / heads,
        18 | 26 | 34 | 48 => head_dim,
        _ => return None,
    };
    Some((scalar as f64).powf(-0.5))
}

/// Whether the file holds a tensor named `name.weight` (one we do not map).
fn tensors_named(meta: &Metadata, name: &str) -> bool {
    meta.tensor_names
        .iter()
        .any(|t| *t == format!("{name}.weight"))
}
