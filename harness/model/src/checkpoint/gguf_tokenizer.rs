//! Rebuilds a Hugging Face tokenizer from GGUF metadata (`tokenizer.ggml.*`), for GGUF files
//! that come without a `tokenizer.json`.
//!
//! Byte-level BPE (`gpt2`) keeps the vocabulary and merges as they are and chooses the
//! pre-tokenizer from `tokenizer.ggml.pre`. SentencePiece BPE (`llama`, e.g. Gemma) has scores
//! instead of merges; merges are derived from them the way transformers' converter does: every
//! split of a piece into two pieces of the vocabulary, ranked by the merged piece's score.

use std::collections::HashMap;

use serde_json::{json, Value as Json};

use super::gguf::Metadata;
use crate::error::LoadError;
use crate::tokenizer::TextTokenizer;

const NORMAL: i64 = 1;
const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;

/// BOS id, EOS ids and whether BOS is added, from the GGUF metadata.
pub(crate) fn special_ids(meta: &Metadata) -> Result<(Option<u32>, Vec<u32>, bool), LoadError> {
    let bos = meta
        .opt_u64("tokenizer.ggml.bos_token_id")?
        .map(|v| v as u32);
    let mut eos: Vec<u32> = meta
        .opt_u64("tokenizer.ggml.eos_token_id")?
        .map(|v| v as u32)
        .into_iter()
        .collect();
    if let Some(eot) = meta.opt_u64("tokenizer.ggml.eot_token_id")? {
        if !eos.contains(&(eot as u32)) {
            eos.push(eot as u32);
        }
    }
    let model = meta
        .get("tokenizer.ggml.model")
        .and_then(|v| v.to_string().ok())
        .map(String::as_str);
    // llama.cpp's default: SentencePiece vocabularies add BOS, byte-level BPE ones do not.
    let add_bos = meta
        .opt_bool("tokenizer.ggml.add_bos_token")
        .unwrap_or(model == Some("llama"));
    Ok((bos, eos, add_bos))
}

fn string_list(meta: &Metadata, key: &str) -> Result<Vec<String>, LoadError> {
    let list = meta
        .get(key)
        .ok_or_else(|| meta.err(format!("missing metadata `{key}`")))?;
    let list = list
        .to_vec()
        .map_err(|_| meta.err(format!("metadata `{key}` is not a list")))?;
    list.iter()
        .map(|v| {
            v.to_string()
                .cloned()
                .map_err(|_| meta.err(format!("metadata `{key}` holds a non-string")))
        })
        .collect()
}

fn number_list<T>(
    meta: &Metadata,
    key: &str,
    f: impl Fn(&candle_core::quantized::gguf_file::Value) -> Option<T>,
) -> Result<Option<Vec<T>>, LoadError> {
    let Some(list) = meta.get(key) else {
        return Ok(None);
    };
    let list = list
        .to_vec()
        .map_err(|_| meta.err(format!("metadata `{key}` is not a list")))?;
    list.iter()
        .map(|v| f(v).ok_or_else(|| meta.err(format!("metadata `{key}` holds a non-number"))))
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

pub(crate) fn from_metadata(meta: &Metadata) -> Result<TextTokenizer, LoadError> {
    let model = meta.str("tokenizer.ggml.model")?;
    let tokens = string_list(meta, "tokenizer.ggml.tokens")?;
    let types = number_list(meta, "tokenizer.ggml.token_type", |v| {
        v.to_i32()
            .ok()
            .map(i64::from)
            .or_else(|| v.to_u32().ok().map(i64::from))
    })?
    .unwrap_or_else(|| vec![NORMAL; tokens.len()]);
    if types.len() != tokens.len() {
        return Err(
            meta.err("`tokenizer.ggml.token_type` and `tokenizer.ggml.tokens` differ in length")
        );
    }
    let added: Vec<Json> = tokens
        .iter()
        .zip(&types)
        .enumerate()
        .filter(|(_, (_, &t))| t == CONTROL || t == USER_DEFINED)
        .map(|(id, (content, &t))| {
            json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": t == CONTROL})
        })
        .collect();
    let vocab: serde_json::Map<String, Json> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect();
    let spec = match model {
        "gpt2" => {
            let merges = string_list(meta, "tokenizer.ggml.merges")?;
            let pre = meta
                .get("tokenizer.ggml.pre")
                .and_then(|v| v.to_string().ok())
                .map_or("default", String::as_str);
            let (normalizer, pre_tokenizer) = byte_level_pre_tokenizer(pre).ok_or_else(|| {
                meta.err(format!(
                    "unsupported GGUF pre-tokenizer `{pre}` (supported: default, gpt2, smollm, qwen2, llama-bpe); put the model's tokenizer.json beside the file"
                ))
            })?;
            json!({
                "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
                "normalizer": normalizer, "pre_tokenizer": pre_tokenizer, "post_processor": null,
                "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
                "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                          "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                          "vocab": vocab, "merges": merges}
            })
        }
        "llama" => {
            let scores = number_list(meta, "tokenizer.ggml.scores", |v| v.to_f32().ok())?
                .ok_or_else(|| meta.err("missing metadata `tokenizer.ggml.scores`"))?;
            let merges = merges_from_scores(&tokens, &types, &scores);
            let unk = meta
                .opt_u64("tokenizer.ggml.unknown_token_id")?
                .and_then(|i| tokens.get(i as usize).cloned());
            let mut normalizers = Vec::new();
            if meta
                .opt_bool("tokenizer.ggml.add_space_prefix")
                .unwrap_or(true)
            {
                normalizers.push(json!({"type": "Prepend", "prepend": "▁"}));
            }
            normalizers
                .push(json!({"type": "Replace", "pattern": {"String": " "}, "content": "▁"}));
            json!({
                "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
                "normalizer": {"type": "Sequence", "normalizers": normalizers},
                "pre_tokenizer": null, "post_processor": null,
                "decoder": {"type": "Sequence", "decoders": [
                    {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                    {"type": "ByteFallback"}, {"type": "Fuse"}]},
                "model": {"type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
                          "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                          "vocab": vocab, "merges": merges}
            })
        }
        other => {
            return Err(meta.err(format!(
                "unsupported GGUF tokenizer model `{other}` (supported: gpt2, llama)"
            )))
        }
    };
    let inner = TextTokenizer::from_json(&spec.to_string(), &meta.file.display().to_string())?;
    let (bos, eos, add_bos) = special_ids(meta)?;
    Ok(TextTokenizer::new(inner, bos, eos, add_bos))
}

/// (normalizer, pre-tokenizer) for llama.cpp's byte-level pre-tokenizer names.
fn byte_level_pre_tokenizer(pre: &str) -> Option<(Json, Json)> {
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    let split = |pattern: &str| json!({"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false});
    Some(match pre {
        "default" | "gpt2" => (Json::Null, byte_level(true)),
        "smollm" => (
            Json::Null,
            json!({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level(true)]}),
        ),
        "qwen2" => (
            json!({"type": "NFC"}),
            json!({"type": "Sequence", "pretokenizers": [
                split(r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"),
                byte_level(false)]}),
        ),
        "llama-bpe" | "llama3" => (
            Json::Null,
            json!({"type": "Sequence", "pretokenizers": [
                split(r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"),
                byte_level(false)]}),
        ),
        _ => return None,
    })
}

/// Every split of a normal piece into two vocabulary pieces is a merge; a merge ranks by the
/// merged piece's score (higher first), ties by the ids of its halves.
fn merges_from_scores(tokens: &[String], types: &[i64], scores: &[f32]) -> Vec<Json> {
    let index: HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| types[*i] == NORMAL)
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    let mut merges: Vec<(f32, usize, usize)> = Vec::new();
    for (id, piece) in tokens.iter().enumerate() {
        if types[id] != NORMAL || piece.chars().nth(1).is_none() {
            continue;
        }
        for (cut, _) in piece.char_indices().skip(1) {
            if let (Some(&l), Some(&r)) = (index.get(&piece[..cut]), index.get(&piece[cut..])) {
                merges.push((scores.get(id).copied().unwrap_or(0.0), l, r));
            }
        }
    }
    merges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    merges
        .into_iter()
        .map(|(_, l, r)| json!([tokens[l], tokens[r]]))
        .collect()
}
