//! Writing a Hugging Face folder from any checkpoint the runtime loads (HF folder or GGUF file),
//! optionally with a PEFT LoRA adapter merged into its weights (`W + s·B·A` for each adapted
//! layer). `harness convert` and `trainer export` are this module.
//!
//! The folder holds `config.json`, the tokenizer files, `generation_config.json` and
//! `model.safetensors` (or shards with `model.safetensors.index.json` past a size limit). From an
//! HF source the config and tokenizer files are copied (only the dtype in config.json changes);
//! from a GGUF source they are synthesised from the [`ModelConfig`] and the rebuilt tokenizer.
//! Everything is written into a temporary sibling folder that is renamed into place at the end,
//! so an interrupted export leaves nothing behind.

pub mod hf_config;
mod tokenizer_files;
mod weights;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use serde_json::{json, Value};

use crate::adapter::PeftAdapter;
use crate::checkpoint::{gguf, hf};
use crate::error::LoadError;
use crate::model::ModelConfig;
use weights::{Entry, Merges, Source};

/// transformers' default `max_shard_size` ("5GB").
pub const DEFAULT_MAX_SHARD_BYTES: u64 = 5_000_000_000;

/// Files of an HF folder that describe the model or its tokenizer; copied as they are (but
/// config.json, whose dtype is updated).
const COPIED_FILES: [&str; 10] = [
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
];

#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// dtype of the floating-point weights written (F32 or BF16); merging is done in F32.
    pub dtype: DType,
    /// Weights past this many bytes are split into shards.
    pub max_shard_bytes: u64,
    /// Replace an existing output folder instead of refusing.
    pub overwrite: bool,
}

impl Default for ExportOptions {
    fn default() -> Self {
        Self {
            dtype: DType::F32,
            max_shard_bytes: DEFAULT_MAX_SHARD_BYTES,
            overwrite: false,
        }
    }
}

/// Where an export is, for a progress display.
#[derive(Debug, Clone, Copy)]
pub enum ExportProgress<'a> {
    /// The checkpoint and adapter are read and checked; `merged` layers get an adapter delta.
    Planned {
        tensors: usize,
        bytes: u64,
        merged: usize,
    },
    /// Shard `index` (from 1) of `total` is being written.
    Writing {
        file: &'a str,
        index: usize,
        total: usize,
    },
}

/// What was written.
#[derive(Debug, Clone)]
pub struct ExportSummary {
    pub output: PathBuf,
    /// Every file of the folder, by name.
    pub files: Vec<String>,
    pub tensors: usize,
    /// Bytes of weights.
    pub bytes: u64,
    /// Linear layers whose adapter delta was merged in.
    pub merged: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The checkpoint or the adapter cannot be read, or they do not fit together.
    #[error(transparent)]
    Read(#[from] LoadError),
    /// The model has a setting transformers' config for its architecture cannot state.
    #[error("{file}: cannot be written as a Hugging Face config: {problem}")]
    Unrepresentable { file: String, problem: String },
    #[error("{file}: {problem}")]
    Write { file: String, problem: String },
}

impl ExportError {
    fn write(path: &Path, problem: impl std::fmt::Display) -> Self {
        Self::Write {
            file: path.display().to_string(),
            problem: problem.to_string(),
        }
    }
}

/// The files of an export other than the weights: name → content.
type TextFiles = Vec<(String, Vec<u8>)>;

/// Writes `source` (with `adapter` merged, when given) as a Hugging Face folder at `output`.
pub fn export(
    source: &Path,
    adapter: Option<&Path>,
    output: &Path,
    options: &ExportOptions,
    progress: &mut dyn FnMut(ExportProgress),
) -> Result<ExportSummary, ExportError> {
    if !matches!(options.dtype, DType::F32 | DType::BF16) {
        return Err(ExportError::write(
            output,
            format!("cannot write {:?} weights (f32 or bf16)", options.dtype),
        ));
    }
    check_output(source, output, options.overwrite)?;
    if !source.exists() {
        return Err(LoadError::at(source, "no such file or directory").into());
    }
    let (config, text_files, mut source_tensors, mut entries) = if source.is_dir() {
        open_hf(source, options.dtype)?
    } else {
        open_gguf(source, options.dtype)?
    };
    let zeros = weights::missing_biases(&config, &entries, options.dtype);
    entries.extend(zeros);
    let merges = match adapter {
        None => Merges::none(),
        Some(dir) => {
            let peft = PeftAdapter::load(dir, &Device::Cpu)?;
            Merges::new(&peft, dir, &config, &entries)?
        }
    };
    let tensors = entries.len();
    let bytes: u64 = entries.iter().map(Entry::bytes).sum();
    progress(ExportProgress::Planned {
        tensors,
        bytes,
        merged: merges.len(),
    });

    let parent = output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)
        .map_err(|e| ExportError::write(parent, format!("cannot create: {e}")))?;
    let tmp = tempfile::Builder::new()
        .prefix(".export-")
        .tempdir_in(parent)
        .map_err(|e| ExportError::write(parent, format!("cannot write: {e}")))?;
    let mut files = Vec::new();
    for (name, content) in &text_files {
        std::fs::write(tmp.path().join(name), content)
            .map_err(|e| ExportError::write(&output.join(name), e))?;
        files.push(name.clone());
    }
    let shards = weights::plan_shards(entries, options.max_shard_bytes);
    let total = shards.len();
    let shard_name = |i: usize| {
        if total == 1 {
            "model.safetensors".to_owned()
        } else {
            format!("model-{:05}-of-{total:05}.safetensors", i + 1)
        }
    };
    let mut weight_map = serde_json::Map::new();
    for (i, shard) in shards.iter().enumerate() {
        let name = shard_name(i);
        progress(ExportProgress::Writing {
            file: &name,
            index: i + 1,
            total,
        });
        let path = tmp.path().join(&name);
        weights::write_shard(&mut source_tensors, &merges, shard, &path).map_err(|e| {
            // A read error names the source; a write error names the temporary file, which is
            // about to vanish: name the output instead.
            if e.file == path.display().to_string() {
                ExportError::write(&output.join(&name), e.problem)
            } else {
                e.into()
            }
        })?;
        for e in shard {
            weight_map.insert(e.name.clone(), json!(name));
        }
        files.push(name);
    }
    if total > 1 {
        let index = json!({"metadata": {"total_size": bytes}, "weight_map": weight_map});
        let name = "model.safetensors.index.json";
        std::fs::write(tmp.path().join(name), pretty(&index))
            .map_err(|e| ExportError::write(&output.join(name), e))?;
        files.push(name.to_owned());
    }
    if output.exists() {
        // `check_output` allowed it: empty, or --overwrite.
        std::fs::remove_dir_all(output)
            .map_err(|e| ExportError::write(output, format!("cannot replace: {e}")))?;
    }
    let kept = tmp.keep();
    std::fs::rename(&kept, output).map_err(|e| {
        let _ = std::fs::remove_dir_all(&kept);
        ExportError::write(
            output,
            format!("cannot move the finished folder into place: {e}"),
        )
    })?;
    files.sort();
    Ok(ExportSummary {
        output: output.to_owned(),
        files,
        tensors,
        bytes,
        merged: merges.len(),
    })
}

/// Refuses to write over the source or over a folder with something in it (unless `overwrite`).
fn check_output(source: &Path, output: &Path, overwrite: bool) -> Result<(), ExportError> {
    if !output.exists() {
        return Ok(());
    }
    if !output.is_dir() {
        return Err(ExportError::write(output, "exists and is not a folder"));
    }
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b || a.starts_with(&b),
        _ => false,
    };
    if same(source, output) {
        return Err(ExportError::write(
            output,
            "is the checkpoint being exported; choose another output folder",
        ));
    }
    let empty = std::fs::read_dir(output)
        .map_err(|e| ExportError::write(output, format!("cannot list: {e}")))?
        .next()
        .is_none();
    if !empty && !overwrite {
        return Err(ExportError::write(
            output,
            "already exists and is not empty (pass --overwrite to replace it)",
        ));
    }
    Ok(())
}

fn pretty(v: &Value) -> Vec<u8> {
    let mut s = serde_json::to_string_pretty(v).expect("JSON serialises");
    s.push('\n');
    s.into_bytes()
}

type Opened = (ModelConfig, TextFiles, Source, Vec<Entry>);

/// An HF folder: config.json with the new dtype, the tokenizer files as they are.
fn open_hf(dir: &Path, dtype: DType) -> Result<Opened, ExportError> {
    let folder = hf::open(dir)?;
    let config_path = dir.join("config.json");
    let text = std::fs::read_to_string(&config_path)
        .map_err(|e| LoadError::at(&config_path, format!("cannot read: {e}")))?;
    let mut config_json: Value = serde_json::from_str(&text)
        .map_err(|e| LoadError::at(&config_path, format!("not valid JSON: {e}")))?;
    for key in ["dtype", "torch_dtype"] {
        config_json[key] = json!(hf_config::dtype_name(dtype));
    }
    let mut files = vec![("config.json".to_owned(), pretty(&config_json))];
    for name in COPIED_FILES {
        let path = dir.join(name);
        if path.is_file() {
            let content = std::fs::read(&path)
                .map_err(|e| LoadError::at(&path, format!("cannot read: {e}")))?;
            files.push((name.to_owned(), content));
        }
    }
    let (source, entries) = Source::mapped(&folder.weight_files, dtype)?;
    Ok((folder.config, files, source, entries))
}

/// A GGUF file: config, generation config and tokenizer files synthesised from its metadata.
fn open_gguf(path: &Path, dtype: DType) -> Result<Opened, ExportError> {
    let file = gguf::open(path)?;
    let unrepresentable = |problem: String| ExportError::Unrepresentable {
        file: path.display().to_string(),
        problem,
    };
    let config = hf_config::config_json(&file.config, dtype).map_err(|e| unrepresentable(e.0))?;
    let tokenizer = tokenizer_files::tokenizer_json(&file.tokenizer).map_err(unrepresentable)?;
    let tokenizer_config = tokenizer_files::tokenizer_config_json(
        &file.tokenizer,
        file.config.max_position_embeddings,
        file.pad_token_id,
        file.chat_template.as_deref(),
    );
    let generation = hf_config::generation_config_json(&file.config, file.pad_token_id);
    let files = vec![
        ("config.json".to_owned(), pretty(&config)),
        ("generation_config.json".to_owned(), pretty(&generation)),
        ("tokenizer.json".to_owned(), tokenizer.into_bytes()),
        (
            "tokenizer_config.json".to_owned(),
            pretty(&tokenizer_config),
        ),
    ];
    let (source, entries) = Source::loaded(file.tensors, path, dtype);
    Ok((file.config, files, source, entries))
}

/// `5GB`, `500MB`, `2GiB` or a plain number of bytes (decimal units, like transformers').
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a size such as 5GB or 500MB"))?;
    let scale: f64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1.0,
        "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "KIB" => 1024.0,
        "MIB" => 1024.0 * 1024.0,
        "GIB" => 1024.0 * 1024.0 * 1024.0,
        other => {
            return Err(format!(
                "{text:?}: unknown unit {other:?} (B, KB, MB, GB, KiB, MiB, GiB)"
            ))
        }
    };
    let bytes = (number * scale).round();
    if bytes < 1.0 {
        return Err(format!("{text:?}: must be at least one byte"));
    }
    Ok(bytes as u64)
}
