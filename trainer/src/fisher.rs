//! The diagonal empirical Fisher of a model's adapted weight matrices: for every matrix W, the
//! mean over sequences of (∂ℓ_n/∂W)², where ℓ_n is sequence n's mean target-token
//! log-likelihood — one backward pass per sequence (per-example gradients, not the square of a
//! batch gradient).
//!
//! EWC uses the base model's Fisher on pre-training-like text; DTM's Fisher merge uses each
//! sub-model's Fisher on its own portion of the SFT data. With a LoRA adapter attached, the
//! gradient with respect to the base weight W equals the gradient with respect to the effective
//! weight W + s·B·A, so the adapted model's Fisher is taken with the adapter in place.
//!
//! Files are safetensors, one float32 tensor per matrix named as in the checkpoint
//! (`model.layers.0.mlp.gate_proj.weight`), with metadata saying what they were computed from
//! (`model_sha256` lets EWC refuse a Fisher of another model).

use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use dtm_model::adapter::AdapterConfig;
use dtm_model::model::Decoder;
use dtm_model::tokenizer::TextTokenizer;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::data::examples::{tokenize, Example, TokenizeOptions};
use crate::data::{read_jsonl, text, DataError};
use crate::loss::{weighted_nll, WeightedSequence};
use crate::sft::{loss_weights, LossReduction};

/// What the `format` metadata entry of a Fisher file says.
pub const FORMAT: &str = "dtm diagonal empirical Fisher";

#[derive(Debug, thiserror::Error)]
pub enum FisherError {
    #[error("{file}: {problem}")]
    File { file: PathBuf, problem: String },
    #[error("--lora-targets: the model has no layer named {0} (layers are q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)")]
    NoLayer(String),
    #[error("no sequence to take the Fisher over")]
    NoSequences,
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}

impl FisherError {
    fn file(file: &Path, problem: impl Into<String>) -> Self {
        Self::File {
            file: file.to_owned(),
            problem: problem.into(),
        }
    }
}

/// A diagonal Fisher: one tensor per weight matrix, and where it came from.
#[derive(Debug, Clone)]
pub struct Fisher {
    /// Weight name (`model.layers.0.mlp.gate_proj.weight`) → F, same shape as the weight.
    pub tensors: BTreeMap<String, Tensor>,
    pub metadata: BTreeMap<String, String>,
}

/// The checkpoint name of a linear layer's weight.
pub fn weight_name(module: &str) -> String {
    format!("{module}.weight")
}

/// The linear layers of `decoder` that `targets` (module suffixes, as `--lora-targets`) name.
pub fn target_modules(decoder: &Decoder, targets: &[String]) -> Result<Vec<String>, FisherError> {
    let probe = AdapterConfig::lora(1, 1.0, 0.0, targets, "");
    let modules: Vec<String> = decoder
        .projections()
        .into_iter()
        .map(|(name, _)| name)
        .filter(|name| probe.targets(name))
        .collect();
    for t in targets {
        if !modules
            .iter()
            .any(|m| m == t || m.ends_with(&format!(".{t}")))
        {
            return Err(FisherError::NoLayer(t.clone()));
        }
    }
    Ok(modules)
}

/// The Fisher of the weights of `modules` over `sequences` (each one's targets are the tokens
/// from `target_start` on), in the decoder's dtype. Whatever adapters the decoder carries stay
/// in place. `on_sequence` is told how many sequences are done.
pub fn compute(
    decoder: &mut Decoder,
    modules: &[String],
    sequences: &[&Example],
    on_sequence: &mut dyn FnMut(usize),
) -> Result<BTreeMap<String, Tensor>, FisherError> {
    if sequences.is_empty() {
        return Err(FisherError::NoSequences);
    }
    // The weights become variables for the duration, then the frozen originals come back.
    let mut originals = Vec::new();
    let mut vars = Vec::new();
    for (name, proj) in decoder.projections_mut() {
        if modules.contains(&name) {
            let original = proj.weight().clone();
            let var = Var::from_tensor(&original)?;
            proj.set_weight(var.as_tensor().clone());
            originals.push((name, original));
            vars.push(var);
        }
    }
    let result = accumulate(decoder, &vars, sequences, on_sequence);
    let mut by_name: HashMap<String, Tensor> = originals.iter().cloned().collect();
    for (name, proj) in decoder.projections_mut() {
        if let Some(w) = by_name.remove(&name) {
            proj.set_weight(w);
        }
    }
    let sums = result?;
    let n = sequences.len() as f64;
    originals
        .into_iter()
        .zip(sums)
        .map(|((module, _), sum)| Ok((weight_name(&module), (sum / n)?)))
        .collect()
}

/// Σ over sequences of the squared per-sequence gradient of each variable; a matrix's squared
/// gradient is folded into its sum as soon as it leaves the gradient store.
fn accumulate(
    decoder: &Decoder,
    vars: &[Var],
    sequences: &[&Example],
    on_sequence: &mut dyn FnMut(usize),
) -> Result<Vec<Tensor>, FisherError> {
    let mut sums: Vec<Tensor> = vars
        .iter()
        .map(|v| v.as_tensor().zeros_like())
        .collect::<candle_core::Result<_>>()?;
    for (i, example) in sequences.iter().enumerate() {
        // Weight 1/T on each of the T targets: the sequence's mean token NLL (= −ℓ_n).
        let weights = loss_weights(&[*example], LossReduction::Token);
        let seq = WeightedSequence {
            tokens: &example.tokens,
            weights: &weights[0],
        };
        let (loss, _) = weighted_nll(decoder, &[seq], None)?;
        let mut store = loss.backward()?;
        for (sum, var) in sums.iter_mut().zip(vars) {
            if let Some(g) = store.remove(var.as_tensor()) {
                // Detached: a gradient may still hold its backward graph, which the running sum
                // would otherwise keep alive from one sequence to the next.
                *sum = (&*sum + g.detach().sqr()?)?;
            }
        }
        on_sequence(i + 1);
    }
    Ok(sums)
}

/// Writes a Fisher as float32 safetensors with its metadata, atomically.
pub fn save(path: &Path, fisher: &Fisher) -> Result<(), FisherError> {
    let tensors = fisher
        .tensors
        .iter()
        .map(|(name, t)| Ok((name.clone(), t.to_dtype(DType::F32)?.contiguous()?)))
        .collect::<candle_core::Result<Vec<_>>>()?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)
        .map_err(|e| FisherError::file(dir, format!("cannot create: {e}")))?;
    let tmp = tempfile::NamedTempFile::new_in(dir)
        .map_err(|e| FisherError::file(dir, format!("cannot write: {e}")))?;
    let metadata: HashMap<String, String> = fisher
        .metadata
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .chain([("format".to_owned(), FORMAT.to_owned())])
        .collect();
    safetensors::serialize_to_file(
        tensors.iter().map(|(n, t)| (n.as_str(), t)),
        Some(metadata),
        tmp.path(),
    )
    .map_err(|e| FisherError::file(path, format!("cannot write: {e}")))?;
    tmp.as_file()
        .sync_all()
        .map_err(|e| FisherError::file(path, format!("cannot write: {e}")))?;
    tmp.persist(path)
        .map_err(|e| FisherError::file(path, format!("cannot write: {}", e.error)))?;
    Ok(())
}

/// Reads a Fisher file (its tensors in `dtype` on `device`, and its metadata), one tensor at a
/// time, so that reading takes no more memory than the tensors themselves plus one of them.
pub fn load(path: &Path, dtype: DType, device: &Device) -> Result<Fisher, FisherError> {
    use std::io::{Read, Seek, SeekFrom};
    let bad = |problem: String| FisherError::file(path, problem);
    let not_safetensors = |e: &dyn std::fmt::Display| bad(format!("not a safetensors file: {e}"));
    let mut file = std::fs::File::open(path).map_err(|e| bad(format!("cannot read: {e}")))?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(|e| not_safetensors(&e))?;
    let len = u64::from_le_bytes(len);
    if len > 100 << 20 {
        return Err(not_safetensors(&format!("a {len}-byte header")));
    }
    let mut header = vec![0u8; len as usize];
    file.read_exact(&mut header)
        .map_err(|e| not_safetensors(&e))?;
    let mut header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| not_safetensors(&e))?;
    let metadata: BTreeMap<String, String> = header
        .remove("__metadata__")
        .and_then(|m| serde_json::from_value(m).ok())
        .unwrap_or_default();
    let mut tensors = BTreeMap::new();
    for (name, info) in header {
        let info: safetensors::tensor::TensorInfo =
            serde_json::from_value(info).map_err(|e| not_safetensors(&e))?;
        let (begin, end) = info.data_offsets;
        let mut bytes = vec![0u8; end.saturating_sub(begin)];
        file.seek(SeekFrom::Start(8 + len + begin as u64))
            .and_then(|_| file.read_exact(&mut bytes))
            .map_err(|e| bad(format!("tensor {name}: cannot read: {e}")))?;
        let view = safetensors::tensor::TensorView::new(info.dtype, info.shape, &bytes)
            .map_err(|e| bad(format!("tensor {name}: {e}")))?;
        let t = candle_core::safetensors::Load::load(&view, device)
            .and_then(|t| t.to_dtype(dtype))
            .map_err(|e| bad(format!("tensor {name}: {e}")))?;
        tensors.insert(name, t);
    }
    if tensors.is_empty() {
        return Err(bad("holds no tensor".into()));
    }
    Ok(Fisher { tensors, metadata })
}

impl Fisher {
    /// Refuses a Fisher that does not fit `decoder`: a tensor that names no linear layer of it,
    /// has another shape than that layer's weight, or holds a negative or non-finite value.
    pub fn check_against(&self, path: &Path, decoder: &Decoder) -> Result<(), FisherError> {
        let layers: HashMap<String, Vec<usize>> = decoder
            .projections()
            .into_iter()
            .map(|(name, p)| (weight_name(&name), p.weight().dims().to_vec()))
            .collect();
        for (name, t) in &self.tensors {
            let Some(dims) = layers.get(name) else {
                return Err(FisherError::file(
                    path,
                    format!("tensor {name} is not the weight of a linear layer of this model (a Fisher of another model?)"),
                ));
            };
            if t.dims() != dims.as_slice() {
                return Err(FisherError::file(
                    path,
                    format!(
                        "tensor {name} has shape {:?}, but this model's {name} is {dims:?} (a Fisher of another model?)",
                        t.dims()
                    ),
                ));
            }
            let flat = t.flatten_all()?.to_dtype(DType::F64)?;
            let min = flat.min(0)?.to_scalar::<f64>()?;
            let sum = flat.sum_all()?.to_scalar::<f64>()?;
            if !(min >= 0.0 && sum.is_finite()) {
                return Err(FisherError::file(
                    path,
                    format!("tensor {name} holds negative or non-finite values"),
                ));
            }
        }
        Ok(())
    }

    /// The tensor of one module's weight, or an error naming it.
    pub fn for_module(&self, path: &Path, module: &str) -> Result<&Tensor, FisherError> {
        let name = weight_name(module);
        self.tensors.get(&name).ok_or_else(|| {
            FisherError::file(
                path,
                format!("has no tensor {name}, which --lora-targets adapts (compute the Fisher with the same --lora-targets)"),
            )
        })
    }
}

/// How the data of a Fisher is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataKind {
    /// Plain text cut into chunks; every token after the first is a target.
    Text,
    /// SFT records; the targets are `trainer sft`'s (the response and its EOS).
    Sft,
}

/// Which kind a data path holds: a folder or `.txt` is text; a `.jsonl` whose first record has
/// `text` and no `instruction`/`messages` is text, otherwise SFT records.
pub fn data_kind(path: &Path) -> Result<DataKind, FisherError> {
    if path.is_dir() || path.extension().is_some_and(|e| e == "txt") {
        return Ok(DataKind::Text);
    }
    if path.extension().is_none_or(|e| e != "jsonl") {
        return Err(FisherError::file(
            path,
            "expected a .txt or .jsonl file or a folder of them",
        ));
    }
    let file = std::fs::File::open(path)
        .map_err(|e| FisherError::file(path, format!("cannot open: {e}")))?;
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| FisherError::file(path, format!("cannot read: {e}")))?;
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(&line)
            .map_err(|e| FisherError::file(path, format!("line {}: not valid JSON: {e}", i + 1)))?;
        let has = |k: &str| value.get(k).is_some();
        return Ok(if has("text") && !has("instruction") && !has("messages") {
            DataKind::Text
        } else {
            DataKind::Sft
        });
    }
    Err(FisherError::file(path, "holds no records"))
}

/// The sequences of a Fisher's data: text chunks of `max_len` tokens or tokenized SFT records
/// (cut at `max_len`; records left without a response token are skipped).
pub fn read_sequences(
    path: &Path,
    tokenizer: &TextTokenizer,
    max_len: usize,
    append_eos: bool,
) -> Result<(DataKind, Vec<Example>), FisherError> {
    let kind = data_kind(path)?;
    let examples = match kind {
        DataKind::Text => {
            let documents = text::read_documents(path)?;
            text::chunk(&documents, tokenizer, max_len, path)?
                .into_iter()
                .enumerate()
                .map(|(i, tokens)| Example {
                    tokens,
                    target_start: 1,
                    record: i,
                })
                .collect()
        }
        DataKind::Sft => {
            let records = read_jsonl(path)?;
            let (examples, _) = tokenize(
                &records,
                tokenizer,
                TokenizeOptions {
                    max_len,
                    append_eos,
                },
            )
            .map_err(|e| FisherError::file(path, e.to_string()))?;
            if examples.is_empty() {
                return Err(FisherError::file(
                    path,
                    format!("no record has a response token left after truncation to --max-len {max_len}"),
                ));
            }
            examples
        }
    };
    Ok((kind, examples))
}

/// `n` sequences drawn without replacement (seeded), in their original order; all when `n` is
/// `None` or at least their number.
pub fn sample(sequences: &[Example], n: Option<usize>, seed: u64) -> Vec<&Example> {
    let mut picked: Vec<usize> = (0..sequences.len()).collect();
    if let Some(n) = n.filter(|&n| n < sequences.len()) {
        picked.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        picked.truncate(n);
        picked.sort_unstable();
    }
    picked.into_iter().map(|i| &sequences[i]).collect()
}
