//! Opening checkpoints: a Hugging Face folder or a single GGUF file, into one [`LoadedModel`];
//! writing one back as a Hugging Face folder ([`export`]).

pub mod export;
pub mod gguf;
mod gguf_tokenizer;
pub mod hf;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use crate::adapter::AnyAdapter;
use crate::error::{first_line, LoadError};
use crate::model::{Decoder, ModelConfig};
use crate::tokenizer::TextTokenizer;

/// A model ready to run, with its tokenizer.
pub struct LoadedModel {
    pub path: PathBuf,
    /// The adapter folder (PEFT LoRA or LoRAMoE) applied on top of the checkpoint, if any.
    pub adapter: Option<PathBuf>,
    pub decoder: Decoder,
    pub tokenizer: TextTokenizer,
}

impl LoadedModel {
    pub fn config(&self) -> &ModelConfig {
        self.decoder.config()
    }
}

/// Loads `path` (a checkpoint folder or a `.gguf` file) in `dtype` on `device`.
pub fn load(path: &Path, dtype: DType, device: &Device) -> Result<LoadedModel, LoadError> {
    load_with(path, dtype, device, false)
}

/// Loads a `.gguf` file whose linear layers and output head then run on the file's quantized
/// weights (candle's quantized matmul, see [`crate::model::Decoder::use_quantized`]) rather than
/// on float copies: faster, not exact. Everything else (embeddings, norms) runs in `dtype`.
pub fn load_quantized(
    path: &Path,
    dtype: DType,
    device: &Device,
) -> Result<LoadedModel, LoadError> {
    if path.is_dir() {
        return Err(LoadError::at(
            path,
            "quantized compute runs a GGUF file's quantized weights; this is a folder (give the .gguf file)",
        ));
    }
    load_with(path, dtype, device, true)
}

fn load_with(
    path: &Path,
    dtype: DType,
    device: &Device,
    quantized: bool,
) -> Result<LoadedModel, LoadError> {
    if !path.exists() {
        return Err(LoadError::at(path, "no such file or directory"));
    }
    let mut quantized_weights = None;
    let (config, tokenizer, vb, weights_name) = if path.is_dir() {
        let folder = hf::open(path)?;
        // SAFETY: the files are memory-mapped read-only; like every mmap-based loader we assume
        // nobody truncates them while the model is loading.
        let vb =
            unsafe { VarBuilder::from_mmaped_safetensors(&folder.weight_files, dtype, device) }
                .map_err(|e| {
                    LoadError::at(path, format!("cannot read weights: {}", first_line(&e)))
                })?;
        let name = folder
            .weight_files
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        (folder.config, folder.tokenizer, vb, name)
    } else {
        let file = gguf::open_with(path, quantized)?;
        let vb = VarBuilder::from_tensors(file.tensors, dtype, device);
        quantized_weights = quantized.then_some(file.quantized);
        (file.config, file.tokenizer, vb, path.display().to_string())
    };
    let mut decoder = Decoder::load(vb, &config)
        .map_err(|e| LoadError::new(&weights_name, weight_problem(&e)))?;
    if let Some(weights) = quantized_weights {
        let used = decoder
            .use_quantized(&weights)
            .map_err(|e| LoadError::at(path, format!("quantized weights: {}", first_line(&e))))?;
        if used == 0 {
            return Err(LoadError::at(
                path,
                "no weight matrix of this file is stored quantized: there is nothing for quantized compute to run",
            ));
        }
    }
    Ok(LoadedModel {
        path: path.to_owned(),
        adapter: None,
        decoder,
        tokenizer,
    })
}

/// A checkpoint's tokenizer and config without building the model (a GGUF file's weights are
/// still read: its tokenizer lives in the same file).
pub fn open_tokenizer(path: &Path) -> Result<(TextTokenizer, ModelConfig), LoadError> {
    if !path.exists() {
        return Err(LoadError::at(path, "no such file or directory"));
    }
    if path.is_dir() {
        let f = hf::open(path)?;
        Ok((f.tokenizer, f.config))
    } else {
        let f = gguf::open(path)?;
        Ok((f.tokenizer, f.config))
    }
}

/// Loads a checkpoint and, when given, applies an adapter folder to it: a PEFT LoRA adapter or
/// a mixture of LoRA experts (`peft_type: "LORAMOE"`, [`crate::adapter::moe`]).
pub fn load_with_adapter(
    path: &Path,
    adapter: Option<&Path>,
    dtype: DType,
    device: &Device,
) -> Result<LoadedModel, LoadError> {
    let mut model = load(path, dtype, device)?;
    if let Some(dir) = adapter {
        let adapter = AnyAdapter::load(dir, device)?;
        // `attach` names the adapter's file by its name alone; give its full path.
        adapter
            .attach(&mut model.decoder)
            .map_err(|e| LoadError::at(&dir.join(&e.file), e.problem))?;
        model.adapter = Some(dir.to_owned());
    }
    Ok(model)
}

fn weight_problem(e: &candle_core::Error) -> String {
    format!("weights do not match the config: {}", first_line(e))
}

/// sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String, LoadError> {
    use sha2::{Digest, Sha256};
    let mut file =
        std::fs::File::open(path).map_err(|e| LoadError::at(path, format!("cannot open: {e}")))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)
        .map_err(|e| LoadError::at(path, format!("cannot read: {e}")))?;
    Ok(hex::encode(hasher.finalize()))
}

/// One hash for a checkpoint: of the file, or of every file of a folder (name and content, in
/// name order), so that results name exactly the weights and tokenizer that produced them.
pub fn fingerprint(path: &Path) -> Result<String, LoadError> {
    use sha2::{Digest, Sha256};
    if !path.is_dir() {
        return sha256_file(path);
    }
    let mut names: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| LoadError::at(path, format!("cannot list: {e}")))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    names.sort();
    let mut hasher = Sha256::new();
    for f in names {
        hasher.update(
            f.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
                .as_bytes(),
        );
        hasher.update(sha256_file(&f)?.as_bytes());
    }
    Ok(hex::encode(hasher.finalize()))
}
