//! What a merge reads: memory-mapped safetensors (a checkpoint folder, sharded or not, or a
//! single file such as a Fisher file), and model references — a checkpoint folder, optionally
//! with a PEFT adapter applied on top (ΔW = s·B·A on the adapted linear layers).
//!
//! Tensors are read one at a time into f32. After each read the pages are handed back to the
//! kernel (`MADV_DONTNEED`), so the resident size stays that of the tensors being merged rather
//! than growing to the inputs' total size.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::Device;
use dtm_model::adapter::{self, PeftAdapter};
use dtm_model::checkpoint::hf;
use half::{bf16, f16};
use memmap2::{Mmap, UncheckedAdvice};
use rayon::prelude::*;
use safetensors::tensor::{Dtype, SafeTensors};

use super::{MergeError, CHUNK};

/// A model a merge reads.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ModelRef {
    /// A Hugging Face checkpoint folder (config.json and safetensors).
    pub folder: PathBuf,
    /// A PEFT LoRA adapter folder applied on top of `folder`.
    pub adapter: Option<PathBuf>,
}

impl ModelRef {
    pub fn folder(folder: impl Into<PathBuf>) -> Self {
        Self {
            folder: folder.into(),
            adapter: None,
        }
    }

    /// Reads a model as given on the command line or in a mergekit config: a checkpoint
    /// folder, mergekit's `FOLDER+ADAPTER`, or an adapter folder alone, which applies to `base`.
    pub fn parse(text: &str, base: Option<&ModelRef>) -> Result<Self, MergeError> {
        let whole = Path::new(text);
        if !whole.exists() {
            if let Some((folder, adapter)) = text.split_once('+') {
                if Path::new(folder).is_dir() && Path::new(adapter).is_dir() {
                    return Ok(Self {
                        folder: folder.into(),
                        adapter: Some(adapter.into()),
                    });
                }
            }
            return Err(MergeError::input(
                whole,
                "no such folder (models are local folders; nothing is downloaded)",
            ));
        }
        if is_adapter(whole) {
            let base = base.ok_or_else(|| {
                MergeError::input(
                    whole,
                    "is a PEFT adapter: give the model it applies to as the base (--base / base_model)",
                )
            })?;
            if base.adapter.is_some() {
                return Err(MergeError::input(
                    whole,
                    format!("is a PEFT adapter, and the base {base} is itself an adapter"),
                ));
            }
            return Ok(Self {
                folder: base.folder.clone(),
                adapter: Some(whole.to_owned()),
            });
        }
        Ok(Self::folder(whole))
    }
}

impl fmt::Display for ModelRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.adapter {
            Some(a) => write!(f, "{}+{}", self.folder.display(), a.display()),
            None => write!(f, "{}", self.folder.display()),
        }
    }
}

/// Whether `dir` is a PEFT adapter folder.
pub fn is_adapter(dir: &Path) -> bool {
    dir.join(adapter::CONFIG_FILE).is_file()
}

/// The dtypes a merge reads and writes.
pub fn is_float(dtype: Dtype) -> bool {
    matches!(dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16)
}

/// Where one tensor lies.
#[derive(Debug, Clone)]
pub struct Entry {
    file: usize,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Byte range inside the file.
    start: usize,
    end: usize,
}

impl Entry {
    pub fn bytes(&self) -> usize {
        self.end - self.start
    }

    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

struct Mapped {
    path: PathBuf,
    map: Mmap,
}

/// The memory-mapped safetensors of a checkpoint folder (one file or the shards its index
/// lists) or a single `.safetensors` file.
pub struct TensorFiles {
    /// The folder or file, for messages.
    pub path: PathBuf,
    files: Vec<Mapped>,
    entries: HashMap<String, Entry>,
    /// Tensor names in file order (by shard, then offset), the order reads are cheapest in.
    order: Vec<String>,
}

impl TensorFiles {
    pub fn open(path: &Path) -> Result<Self, MergeError> {
        let paths = if path.is_dir() {
            hf::weight_files(path)?
        } else if path.is_file() {
            vec![path.to_owned()]
        } else {
            return Err(MergeError::input(path, "no such file or folder"));
        };
        let mut files = Vec::new();
        let mut entries = HashMap::new();
        let mut order = Vec::new();
        for (i, p) in paths.iter().enumerate() {
            hf::check_safetensors(p)?;
            let file =
                File::open(p).map_err(|e| MergeError::input(p, format!("cannot open: {e}")))?;
            // SAFETY: the file is mapped read-only; like every mmap-based loader we assume nobody
            // truncates or rewrites an input while the merge runs.
            let map = unsafe { Mmap::map(&file) }
                .map_err(|e| MergeError::input(p, format!("cannot map: {e}")))?;
            let (header_len, meta) = SafeTensors::read_metadata(&map)
                .map_err(|e| MergeError::input(p, format!("not a safetensors file: {e}")))?;
            let data_start = 8 + header_len;
            let mut here: Vec<(String, Entry)> = meta
                .tensors()
                .into_iter()
                .map(|(name, info)| {
                    let entry = Entry {
                        file: i,
                        dtype: info.dtype,
                        shape: info.shape.clone(),
                        start: data_start + info.data_offsets.0,
                        end: data_start + info.data_offsets.1,
                    };
                    (name, entry)
                })
                .collect();
            here.sort_by_key(|(_, e)| e.start);
            for (name, entry) in here {
                if entries.contains_key(&name) {
                    return Err(MergeError::input(
                        p,
                        format!("tensor {name} is stored twice in this checkpoint"),
                    ));
                }
                order.push(name.clone());
                entries.insert(name, entry);
            }
            files.push(Mapped {
                path: p.clone(),
                map,
            });
        }
        Ok(Self {
            path: path.to_owned(),
            files,
            entries,
            order,
        })
    }

    pub fn names(&self) -> &[String] {
        &self.order
    }

    pub fn entry(&self, name: &str) -> Option<&Entry> {
        self.entries.get(name)
    }

    /// Reads a tensor into `out` as f32; returns the bytes read.
    pub fn read_f32(&self, name: &str, out: &mut Vec<f32>) -> Result<usize, MergeError> {
        let entry = self.entries.get(name).ok_or_else(|| {
            MergeError::tensor(name, format!("missing from {}", self.path.display()))
        })?;
        let mapped = &self.files[entry.file];
        let bytes = &mapped.map[entry.start..entry.end];
        out.clear();
        out.resize(entry.len(), 0.0);
        decode(entry.dtype, bytes, out).map_err(|problem| {
            MergeError::tensor(name, format!("{problem} (in {})", mapped.path.display()))
        })?;
        // SAFETY: the map is read-only and private, so dropping its pages loses nothing: a later
        // access reads them from the file again. No reference into these pages outlives `bytes`.
        // A failure only means the pages stay resident.
        let _ = unsafe {
            mapped
                .map
                .unchecked_advise_range(UncheckedAdvice::DontNeed, entry.start, bytes.len())
        };
        Ok(bytes.len())
    }
}

/// Little-endian bytes of `dtype` into f32.
fn decode(dtype: Dtype, bytes: &[u8], out: &mut [f32]) -> Result<(), String> {
    let size = match dtype {
        Dtype::F32 => 4,
        Dtype::F16 | Dtype::BF16 => 2,
        other => {
            return Err(format!(
                "dtype {other:?} is not a floating-point type this merge reads (F32, F16, BF16)"
            ))
        }
    };
    if bytes.len() != out.len() * size {
        return Err(format!(
            "{} bytes stored for {} elements of {dtype:?}",
            bytes.len(),
            out.len()
        ));
    }
    out.par_chunks_mut(CHUNK)
        .zip(bytes.par_chunks(CHUNK * size))
        .for_each(|(o, b)| match dtype {
            Dtype::F32 => o
                .iter_mut()
                .zip(b.chunks_exact(4))
                .for_each(|(o, b)| *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            Dtype::BF16 => o
                .iter_mut()
                .zip(b.chunks_exact(2))
                .for_each(|(o, b)| *o = bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()),
            _ => o
                .iter_mut()
                .zip(b.chunks_exact(2))
                .for_each(|(o, b)| *o = f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()),
        });
    Ok(())
}

/// A loaded LoRA adapter: per adapted weight (`<module>.weight`), its factors and scale.
pub struct Adapter {
    pub path: PathBuf,
    pub inner: PeftAdapter,
}

impl Adapter {
    pub fn load(path: &Path) -> Result<Self, MergeError> {
        Ok(Self {
            path: path.to_owned(),
            inner: PeftAdapter::load(path, &Device::Cpu)?,
        })
    }

    /// The weight names the adapter changes, with their module names.
    pub fn weights(&self) -> impl Iterator<Item = (String, &str)> {
        self.inner
            .weights
            .keys()
            .map(|m| (format!("{m}.weight"), m.as_str()))
    }

    /// Checks every adapted module against the checkpoint it applies to.
    pub fn check_against(&self, files: &TensorFiles) -> Result<(), MergeError> {
        let r = self.inner.config.r;
        for (weight, module) in self.weights() {
            let entry = files.entry(&weight).ok_or_else(|| {
                MergeError::input(
                    &self.path,
                    format!(
                        "adapts {module}, but {} has no tensor {weight}",
                        files.path.display()
                    ),
                )
            })?;
            let (a, b) = &self.inner.weights[module];
            let [out, inp] = entry.shape[..] else {
                return Err(MergeError::input(
                    &self.path,
                    format!("adapts {module}, but {weight} has shape {:?}", entry.shape),
                ));
            };
            if a.dims() != [r, inp] || b.dims() != [out, r] {
                return Err(MergeError::input(
                    &self.path,
                    format!(
                        "{module}: lora_A {:?} / lora_B {:?} do not fit {weight} {:?} with r = {r}",
                        a.dims(),
                        b.dims(),
                        entry.shape
                    ),
                ));
            }
        }
        Ok(())
    }

    /// ΔW = (α/r)·B·A for `weight`, or `None` when the adapter leaves it alone.
    pub fn delta(&self, weight: &str) -> Result<Option<Vec<f32>>, MergeError> {
        let Some(module) = weight.strip_suffix(".weight") else {
            return Ok(None);
        };
        let Some((a, b)) = self.inner.weights.get(module) else {
            return Ok(None);
        };
        let fail = |e: candle_core::Error| {
            MergeError::input(&self.path, format!("{module}: cannot compute B·A: {e}"))
        };
        let delta = (b.matmul(a).map_err(fail)? * self.inner.config.scale()).map_err(fail)?;
        Ok(Some(
            delta
                .flatten_all()
                .and_then(|t| t.to_vec1())
                .map_err(fail)?,
        ))
    }
}
