//! A Hugging Face checkpoint folder: config.json, (sharded) safetensors, tokenizer.json and the
//! optional tokenizer_config.json / generation_config.json.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::LoadError;
use crate::model::config::token_id_list;
use crate::model::ModelConfig;
use crate::tokenizer::TextTokenizer;

pub struct HfFolder {
    pub config: ModelConfig,
    pub tokenizer: TextTokenizer,
    pub weight_files: Vec<PathBuf>,
}

fn read_text(path: &Path) -> Result<String, LoadError> {
    std::fs::read_to_string(path).map_err(|e| LoadError::at(path, format!("cannot read: {e}")))
}

fn read_optional_json(path: &Path) -> Result<Option<Value>, LoadError> {
    if !path.exists() {
        return Ok(None);
    }
    let text = read_text(path)?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| LoadError::at(path, format!("not valid JSON: {e}")))
}

pub fn open(dir: &Path) -> Result<HfFolder, LoadError> {
    let config_path = dir.join("config.json");
    if !config_path.exists() {
        return Err(LoadError::at(
            dir,
            "not a checkpoint: no config.json (expected a Hugging Face folder or a .gguf file)",
        ));
    }
    let config = ModelConfig::from_hf_json(
        &read_text(&config_path)?,
        &config_path.display().to_string(),
    )?;
    let weight_files = weight_files(dir)?;
    for f in &weight_files {
        check_safetensors(f)?;
    }
    let tokenizer = tokenizer(dir, &config)?;
    Ok(HfFolder {
        config,
        tokenizer,
        weight_files,
    })
}

/// The folder's weight files: `model.safetensors`, else the shards its index lists.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    let Some(json) = read_optional_json(&index)? else {
        return Err(LoadError::at(
            dir,
            "no weights: neither model.safetensors nor model.safetensors.index.json",
        ));
    };
    let map = json
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| LoadError::at(&index, "missing object `weight_map`"))?;
    let files: BTreeSet<&str> = map.values().filter_map(Value::as_str).collect();
    if files.is_empty() {
        return Err(LoadError::at(&index, "`weight_map` names no files"));
    }
    files
        .into_iter()
        .map(|f| {
            let p = dir.join(f);
            if p.exists() {
                Ok(p)
            } else {
                Err(LoadError::at(
                    &index,
                    format!("shard `{f}` is listed but missing"),
                ))
            }
        })
        .collect()
}

/// Checks a safetensors file's header against its length, so that a truncated download is
/// reported as such instead of failing deep inside the loader.
pub fn check_safetensors(path: &Path) -> Result<(), LoadError> {
    safetensors_header(path).map(|_| ())
}

/// The header of a safetensors file (tensor name → `{dtype, shape, data_offsets}`, plus
/// `__metadata__`), after checking that the file holds all the data it declares.
pub(crate) fn safetensors_header(path: &Path) -> Result<serde_json::Map<String, Value>, LoadError> {
    let err = |p: String| LoadError::at(path, p);
    let mut file = std::fs::File::open(path).map_err(|e| err(format!("cannot open: {e}")))?;
    let size = file
        .metadata()
        .map_err(|e| err(format!("cannot stat: {e}")))?
        .len();
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(|_| {
        err(format!(
            "truncated safetensors file: {size} bytes, too short for a header"
        ))
    })?;
    let header_len = u64::from_le_bytes(len);
    if header_len > size.saturating_sub(8) {
        return Err(err(format!("truncated safetensors file: header of {header_len} bytes declared, file has {size} bytes")));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header)
        .map_err(|e| err(format!("cannot read header: {e}")))?;
    let header: Value = serde_json::from_slice(&header)
        .map_err(|e| err(format!("corrupt safetensors header: {e}")))?;
    let Value::Object(header) = header else {
        return Err(err("corrupt safetensors header: not an object".into()));
    };
    let data_end = header
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .filter_map(|(_, v)| v.get("data_offsets")?.as_array()?.get(1)?.as_u64())
        .max()
        .unwrap_or(0);
    let available = size - 8 - header_len;
    if data_end > available {
        return Err(err(format!(
            "truncated safetensors file: tensors need {data_end} bytes of data, file holds {available}"
        )));
    }
    Ok(header)
}

/// A special token given as `"<s>"` or `{"content": "<s>", …}`.
fn special_token_text(v: Option<&Value>) -> Option<&str> {
    match v? {
        Value::String(s) => Some(s),
        Value::Object(o) => o.get("content")?.as_str(),
        _ => None,
    }
}

fn tokenizer(dir: &Path, config: &ModelConfig) -> Result<TextTokenizer, LoadError> {
    let path = dir.join("tokenizer.json");
    if !path.exists() {
        return Err(LoadError::at(dir, "no tokenizer.json"));
    }
    let inner = TextTokenizer::from_json(&read_text(&path)?, &path.display().to_string())?;
    let tok_config_path = dir.join("tokenizer_config.json");
    let tok_config = read_optional_json(&tok_config_path)?;
    let gen_config_path = dir.join("generation_config.json");
    let gen_config = read_optional_json(&gen_config_path)?;

    let by_text = |key: &str| {
        special_token_text(tok_config.as_ref()?.get(key)).and_then(|t| inner.token_to_id(t))
    };
    let bos = by_text("bos_token")
        .or_else(|| {
            gen_config
                .as_ref()
                .and_then(|g| token_id_list(g.get("bos_token_id")))
                .and_then(|v| v.first().copied())
        })
        .or(config.bos_token_id);
    let mut eos: Vec<u32> = Vec::new();
    if let Some(g) = &gen_config {
        eos.extend(token_id_list(g.get("eos_token_id")).ok_or_else(|| {
            LoadError::at(
                &gen_config_path,
                "`eos_token_id` is not a token id or a list of them",
            )
        })?);
    }
    eos.extend(config.eos_token_ids.iter().copied());
    eos.extend(by_text("eos_token"));
    let mut seen = BTreeSet::new();
    eos.retain(|id| seen.insert(*id));

    // transformers adds BOS when tokenizer_config says so, else when the post-processor does.
    let add_bos = match tok_config
        .as_ref()
        .and_then(|c| c.get("add_bos_token"))
        .and_then(Value::as_bool)
    {
        Some(flag) => flag,
        None => {
            let with = inner
                .encode("a", true)
                .map(|e| e.get_ids().to_vec())
                .unwrap_or_default();
            bos.is_some() && with.first() == bos.as_ref() && with.len() > 1
        }
    };
    let tokenizer = TextTokenizer::new(inner, bos, eos, add_bos);
    if tokenizer.vocab_size() > config.vocab_size {
        return Err(LoadError::at(
            &path,
            format!(
                "tokenizer has {} tokens but the model's vocabulary has {} rows (config.json vocab_size): they do not belong together",
                tokenizer.vocab_size(),
                config.vocab_size
            ),
        ));
    }
    Ok(tokenizer)
}
