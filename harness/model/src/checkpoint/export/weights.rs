//! The weights of an export: read tensor by tensor from the source, LoRA deltas merged in, cast
//! to the output dtype and written as safetensors shards of bounded size.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};

use crate::adapter::{PeftAdapter, WEIGHTS_FILE};
use crate::checkpoint::hf::safetensors_header;
use crate::error::{first_line, LoadError};
use crate::model::{Architecture, ModelConfig};

/// Where the source tensors live.
pub(super) enum Source {
    /// A Hugging Face folder's safetensors files, memory-mapped and read one tensor at a time.
    Mapped {
        files: MmapedSafetensors,
        /// Tensor → the file it is in, for error messages.
        file_of: HashMap<String, PathBuf>,
    },
    /// Tensors already in memory (a dequantised GGUF file).
    Loaded {
        tensors: HashMap<String, Tensor>,
        file: PathBuf,
    },
}

/// One tensor to write.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub name: String,
    pub shape: Vec<usize>,
    /// The dtype written: the export's for floating-point tensors, the stored one otherwise.
    pub dtype: DType,
    /// Not in the source: written as zeros (transformers' o_proj bias of a model with q/k/v biases).
    pub zeros: bool,
}

impl Entry {
    pub fn bytes(&self) -> u64 {
        (self.shape.iter().product::<usize>() * self.dtype.size_in_bytes()) as u64
    }
}

fn stored_dtype(name: &str) -> Option<DType> {
    Some(match name {
        "F32" => DType::F32,
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        "F64" => DType::F64,
        "U8" => DType::U8,
        "U32" => DType::U32,
        "I64" => DType::I64,
        _ => return None,
    })
}

fn is_float(dtype: DType) -> bool {
    matches!(dtype, DType::F32 | DType::F16 | DType::BF16 | DType::F64)
}

impl Source {
    /// Memory-maps an HF folder's weight files and lists their tensors from the headers.
    pub fn mapped(
        weight_files: &[PathBuf],
        out_dtype: DType,
    ) -> Result<(Self, Vec<Entry>), LoadError> {
        let mut entries = Vec::new();
        let mut file_of = HashMap::new();
        for file in weight_files {
            for (name, info) in safetensors_header(file)? {
                if name == "__metadata__" {
                    continue;
                }
                let dtype_name = info.get("dtype").and_then(|d| d.as_str()).unwrap_or("?");
                let dtype = stored_dtype(dtype_name).ok_or_else(|| {
                    LoadError::at(
                        file,
                        format!("tensor {name}: unsupported dtype {dtype_name}"),
                    )
                })?;
                let shape = info
                    .get("shape")
                    .and_then(|s| s.as_array())
                    .and_then(|s| s.iter().map(|d| d.as_u64().map(|d| d as usize)).collect())
                    .ok_or_else(|| LoadError::at(file, format!("tensor {name}: no valid shape")))?;
                entries.push(Entry {
                    dtype: if is_float(dtype) { out_dtype } else { dtype },
                    name: name.clone(),
                    shape,
                    zeros: false,
                });
                file_of.insert(name, file.clone());
            }
        }
        // SAFETY: read-only maps; like every mmap-based loader we assume nobody truncates the
        // files while we read them.
        let files = unsafe { MmapedSafetensors::multi(weight_files) }.map_err(|e| {
            LoadError::new(
                weight_files
                    .first()
                    .map_or(String::new(), |p| p.display().to_string()),
                format!("cannot map: {}", first_line(&e)),
            )
        })?;
        Ok((Self::Mapped { files, file_of }, entries))
    }

    pub fn loaded(
        tensors: HashMap<String, Tensor>,
        file: &Path,
        out_dtype: DType,
    ) -> (Self, Vec<Entry>) {
        let entries = tensors
            .iter()
            .map(|(name, t)| Entry {
                name: name.clone(),
                shape: t.dims().to_vec(),
                dtype: if is_float(t.dtype()) {
                    out_dtype
                } else {
                    t.dtype()
                },
                zeros: false,
            })
            .collect();
        (
            Self::Loaded {
                tensors,
                file: file.to_owned(),
            },
            entries,
        )
    }

    /// The tensor `name`; one held in memory is handed over, so that memory shrinks as shards
    /// are written.
    fn take(&mut self, name: &str) -> Result<Tensor, LoadError> {
        match self {
            Self::Mapped { files, file_of } => files.load(name, &Device::Cpu).map_err(|e| {
                let file = file_of
                    .get(name)
                    .map_or(String::new(), |p| p.display().to_string());
                LoadError::new(file, format!("tensor {name}: {}", first_line(&e)))
            }),
            Self::Loaded { tensors, file } => tensors
                .remove(name)
                .ok_or_else(|| LoadError::at(file, format!("no tensor {name}"))),
        }
    }
}

/// Transformers' o_proj carries a bias whenever q/k/v do (Llama's and Gemma's `attention_bias`);
/// our decoder has none there, so a model with q/k/v biases gets zero o_proj biases.
pub(super) fn missing_biases(config: &ModelConfig, entries: &[Entry], dtype: DType) -> Vec<Entry> {
    let needs = config.qkv_bias
        && matches!(
            config.architecture,
            Architecture::Llama | Architecture::Gemma3
        );
    if !needs {
        return Vec::new();
    }
    (0..config.num_layers())
        .map(|i| format!("model.layers.{i}.self_attn.o_proj.bias"))
        .filter(|name| !entries.iter().any(|e| &e.name == name))
        .map(|name| Entry {
            name,
            shape: vec![config.hidden_size],
            dtype,
            zeros: true,
        })
        .collect()
}

/// The linear layers an adapter may change: those the decoder runs, named as transformers does.
fn projection_names(config: &ModelConfig) -> impl Iterator<Item = String> + '_ {
    const PROJECTIONS: [&str; 7] = [
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
    ];
    (0..config.num_layers()).flat_map(|i| {
        PROJECTIONS
            .iter()
            .map(move |p| format!("model.layers.{i}.{p}"))
    })
}

/// The adapter's layers, checked against the model before anything is written: weight name →
/// `(A, B, scale)`.
pub(super) struct Merges {
    by_weight: BTreeMap<String, (Tensor, Tensor, f64)>,
}

impl Merges {
    pub fn none() -> Self {
        Self {
            by_weight: BTreeMap::new(),
        }
    }

    /// Every adapted module must be one of the decoder's linear layers, with `A: [r, in]` and
    /// `B: [out, r]` fitting its `[out, in]` weight (the rules [`PeftAdapter::attach`] applies).
    pub fn new(
        adapter: &PeftAdapter,
        adapter_dir: &Path,
        config: &ModelConfig,
        entries: &[Entry],
    ) -> Result<Self, LoadError> {
        let weights_path = adapter_dir.join(WEIGHTS_FILE);
        let err = |problem: String| LoadError::at(&weights_path, problem);
        let projections: Vec<String> = projection_names(config).collect();
        let r = adapter.config.r;
        let mut by_weight = BTreeMap::new();
        for (module, (a, b)) in &adapter.weights {
            if !projections.contains(module) {
                return Err(err(format!("the model has no linear layer {module}")));
            }
            let weight = format!("{module}.weight");
            let shape = entries
                .iter()
                .find(|e| e.name == weight)
                .map(|e| e.shape.clone())
                .ok_or_else(|| err(format!("the model has no tensor {weight}")))?;
            let [out, inp] = shape[..] else {
                return Err(err(format!("{weight} is not a matrix: {shape:?}")));
            };
            if a.dims() != [r, inp] || b.dims() != [out, r] {
                return Err(err(format!(
                    "{module}: lora_A {:?} / lora_B {:?} do not fit a [{out}, {inp}] layer with r = {r}",
                    a.dims(),
                    b.dims()
                )));
            }
            by_weight.insert(weight, (a.clone(), b.clone(), adapter.config.scale()));
        }
        Ok(Self { by_weight })
    }

    pub fn len(&self) -> usize {
        self.by_weight.len()
    }

    /// `W + s·B·A` in float32 when `name` is adapted, else the tensor unchanged.
    fn apply(&self, name: &str, w: Tensor) -> candle_core::Result<Tensor> {
        match self.by_weight.get(name) {
            None => Ok(w),
            Some((a, b, scale)) => {
                let delta = (b.to_dtype(DType::F32)?.matmul(&a.to_dtype(DType::F32)?)? * *scale)?;
                w.to_dtype(DType::F32)? + delta
            }
        }
    }
}

/// Entries grouped into shards of at most `max_bytes` each (a tensor larger than that gets a
/// shard of its own), in name order.
pub(super) fn plan_shards(mut entries: Vec<Entry>, max_bytes: u64) -> Vec<Vec<Entry>> {
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    let mut shards: Vec<Vec<Entry>> = Vec::new();
    let mut size = 0;
    for e in entries {
        let bytes = e.bytes();
        match shards.last_mut() {
            Some(last) if size + bytes <= max_bytes => last.push(e),
            _ => {
                shards.push(vec![e]);
                size = 0;
            }
        }
        size += bytes;
    }
    shards
}

/// A tensor's little-endian bytes, ready for safetensors.
struct Raw {
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl safetensors::View for &Raw {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

fn raw(t: &Tensor) -> candle_core::Result<Raw> {
    let flat = t.flatten_all()?;
    macro_rules! bytes {
        ($ty:ty) => {
            flat.to_vec1::<$ty>()?
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect()
        };
    }
    let (dtype, data) = match t.dtype() {
        DType::F32 => (safetensors::Dtype::F32, bytes!(f32)),
        DType::BF16 => (safetensors::Dtype::BF16, bytes!(half::bf16)),
        DType::F16 => (safetensors::Dtype::F16, bytes!(half::f16)),
        DType::F64 => (safetensors::Dtype::F64, bytes!(f64)),
        DType::U8 => (safetensors::Dtype::U8, bytes!(u8)),
        DType::U32 => (safetensors::Dtype::U32, bytes!(u32)),
        DType::I64 => (safetensors::Dtype::I64, bytes!(i64)),
        other => candle_core::bail!("cannot write dtype {other:?}"),
    };
    Ok(Raw {
        dtype,
        shape: t.dims().to_vec(),
        data,
    })
}

/// Reads, merges, casts and writes one shard to `path`.
pub(super) fn write_shard(
    source: &mut Source,
    merges: &Merges,
    shard: &[Entry],
    path: &Path,
) -> Result<(), LoadError> {
    let mut tensors = Vec::with_capacity(shard.len());
    for e in shard {
        let wrap = |err: candle_core::Error| {
            LoadError::at(path, format!("tensor {}: {}", e.name, first_line(&err)))
        };
        let t = if e.zeros {
            Tensor::zeros(e.shape.as_slice(), e.dtype, &Device::Cpu).map_err(wrap)?
        } else {
            let t = source.take(&e.name)?;
            merges
                .apply(&e.name, t)
                .and_then(|t| t.to_dtype(e.dtype))
                .map_err(wrap)?
        };
        tensors.push((e.name.clone(), raw(&t).map_err(wrap)?));
    }
    let metadata = HashMap::from([("format".to_owned(), "pt".to_owned())]);
    safetensors::serialize_to_file(
        tensors.iter().map(|(n, r)| (n.as_str(), r)),
        Some(metadata),
        path,
    )
    .map_err(|e| LoadError::at(path, format!("cannot write: {e}")))
}
