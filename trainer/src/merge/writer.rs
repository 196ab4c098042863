//! The output: a Hugging Face folder written tensor by tensor.
//!
//! Every output tensor's name, dtype and shape is known before the first one is computed, so
//! each shard's safetensors header is written up front and tensors are streamed after it: no
//! shard is ever held in memory. The folder is built under a temporary name next to the target
//! and renamed into place only when complete.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use half::{bf16, f16};
use rayon::prelude::*;
use safetensors::tensor::{Dtype, Metadata, TensorInfo};
use serde_json::Value;

use super::{MergeError, CHUNK};

/// A dtype a merge writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutDtype {
    F32,
    F16,
    BF16,
}

impl OutDtype {
    pub fn dtype(self) -> Dtype {
        match self {
            OutDtype::F32 => Dtype::F32,
            OutDtype::F16 => Dtype::F16,
            OutDtype::BF16 => Dtype::BF16,
        }
    }

    /// The name transformers writes in config.json.
    pub fn torch_name(self) -> &'static str {
        match self {
            OutDtype::F32 => "float32",
            OutDtype::F16 => "float16",
            OutDtype::BF16 => "bfloat16",
        }
    }
}

impl FromStr for OutDtype {
    type Err = String;

    /// mergekit's names (`bfloat16`, `float16`, `float32`, optionally `torch.`-prefixed).
    fn from_str(s: &str) -> Result<Self, String> {
        match s.strip_prefix("torch.").unwrap_or(s) {
            "float32" => Ok(OutDtype::F32),
            "float16" => Ok(OutDtype::F16),
            "bfloat16" => Ok(OutDtype::BF16),
            _ => Err(format!(
                "dtype {s:?} is not one of float32, float16, bfloat16"
            )),
        }
    }
}

/// One tensor of the output, in writing order.
#[derive(Debug, Clone)]
pub struct Planned {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
}

impl Planned {
    fn bytes(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.bitsize() / 8
    }
}

struct Shard {
    file_name: String,
    /// Indices into the plan.
    tensors: std::ops::Range<usize>,
}

/// Writes the planned tensors, in order, into shards of at most `shard_size` bytes (a tensor
/// larger than that gets a shard of its own), named as transformers names them.
pub struct ShardedWriter {
    dir: PathBuf,
    plan: Vec<Planned>,
    shards: Vec<Shard>,
    next: usize,
    current: Option<(usize, BufWriter<File>)>,
    buffer: Vec<u8>,
    written: u64,
}

impl ShardedWriter {
    pub fn new(dir: &Path, plan: Vec<Planned>, shard_size: u64) -> Self {
        let mut ranges = Vec::new();
        let (mut start, mut size) = (0usize, 0u64);
        for (i, t) in plan.iter().enumerate() {
            let b = t.bytes() as u64;
            if i > start && size + b > shard_size {
                ranges.push(start..i);
                start = i;
                size = 0;
            }
            size += b;
        }
        if !plan.is_empty() {
            ranges.push(start..plan.len());
        }
        let n = ranges.len();
        let shards = ranges
            .into_iter()
            .enumerate()
            .map(|(i, tensors)| Shard {
                file_name: if n == 1 {
                    "model.safetensors".to_owned()
                } else {
                    format!("model-{:05}-of-{n:05}.safetensors", i + 1)
                },
                tensors,
            })
            .collect();
        Self {
            dir: dir.to_owned(),
            plan,
            shards,
            next: 0,
            current: None,
            buffer: Vec::new(),
            written: 0,
        }
    }

    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Writes the next planned tensor, converting from f32.
    pub fn write_next(&mut self, values: &[f32]) -> Result<(), MergeError> {
        let index = self.next;
        let planned = self
            .plan
            .get(index)
            .ok_or_else(|| MergeError::Spec("more tensors written than planned".into()))?;
        if values.len() != planned.shape.iter().product::<usize>() {
            return Err(MergeError::tensor(
                &planned.name,
                format!(
                    "the merge produced {} values for shape {:?}",
                    values.len(),
                    planned.shape
                ),
            ));
        }
        let dtype = planned.dtype;
        let shard = self
            .shards
            .iter()
            .position(|s| s.tensors.contains(&index))
            .expect("every planned tensor has a shard");
        if self.current.as_ref().map(|(s, _)| *s) != Some(shard) {
            self.close_current()?;
            let file = self.open_shard(shard)?;
            self.current = Some((shard, file));
        }
        encode(dtype, values, &mut self.buffer);
        let path = self.dir.join(&self.shards[shard].file_name);
        let (_, file) = self.current.as_mut().expect("opened above");
        file.write_all(&self.buffer)
            .map_err(|e| MergeError::output(&path, format!("cannot write: {e}")))?;
        self.written += self.buffer.len() as u64;
        self.next += 1;
        Ok(())
    }

    fn open_shard(&self, shard: usize) -> Result<BufWriter<File>, MergeError> {
        let s = &self.shards[shard];
        let path = self.dir.join(&s.file_name);
        let mut offset = 0;
        let infos: Vec<(String, TensorInfo)> = self.plan[s.tensors.clone()]
            .iter()
            .map(|t| {
                let n = t.bytes();
                offset += n;
                (
                    t.name.clone(),
                    TensorInfo {
                        dtype: t.dtype,
                        shape: t.shape.clone(),
                        data_offsets: (offset - n, offset),
                    },
                )
            })
            .collect();
        let format = HashMap::from([("format".to_owned(), "pt".to_owned())]);
        let meta = Metadata::new(Some(format), infos)
            .map_err(|e| MergeError::output(&path, format!("cannot build the header: {e}")))?;
        let mut header = serde_json::to_vec(&meta).expect("metadata serialises");
        // The data after the header starts 8-byte aligned, as the format asks.
        header.resize(header.len().next_multiple_of(8), b' ');
        let file = File::create(&path)
            .map_err(|e| MergeError::output(&path, format!("cannot create: {e}")))?;
        let mut file = BufWriter::with_capacity(1 << 20, file);
        file.write_all(&(header.len() as u64).to_le_bytes())
            .and_then(|_| file.write_all(&header))
            .map_err(|e| MergeError::output(&path, format!("cannot write: {e}")))?;
        Ok(file)
    }

    fn close_current(&mut self) -> Result<(), MergeError> {
        if let Some((shard, mut file)) = self.current.take() {
            let path = self.dir.join(&self.shards[shard].file_name);
            file.flush()
                .and_then(|_| file.get_ref().sync_all())
                .map_err(|e| MergeError::output(&path, format!("cannot write: {e}")))?;
        }
        Ok(())
    }

    /// Closes the last shard and writes the index when there are several; returns the bytes of
    /// tensor data written.
    pub fn finish(mut self) -> Result<u64, MergeError> {
        self.close_current()?;
        if self.next != self.plan.len() {
            return Err(MergeError::Spec(format!(
                "{} of {} planned tensors written",
                self.next,
                self.plan.len()
            )));
        }
        if self.shards.len() > 1 {
            let mut weight_map = BTreeMap::new();
            for s in &self.shards {
                for t in &self.plan[s.tensors.clone()] {
                    weight_map.insert(t.name.clone(), Value::from(s.file_name.clone()));
                }
            }
            let index = serde_json::json!({
                "metadata": {"total_size": self.written},
                "weight_map": weight_map,
            });
            let path = self.dir.join("model.safetensors.index.json");
            let text = serde_json::to_string_pretty(&index).expect("index serialises");
            std::fs::write(&path, text + "\n")
                .map_err(|e| MergeError::output(&path, format!("cannot write: {e}")))?;
        }
        Ok(self.written)
    }
}

/// f32 values as little-endian bytes of `dtype` (round to nearest even, as torch casts).
fn encode(dtype: Dtype, values: &[f32], out: &mut Vec<u8>) {
    let size = dtype.bitsize() / 8;
    out.clear();
    out.resize(values.len() * size, 0);
    out.par_chunks_mut(CHUNK * size)
        .zip(values.par_chunks(CHUNK))
        .for_each(|(b, v)| match dtype {
            Dtype::F32 => b
                .chunks_exact_mut(4)
                .zip(v)
                .for_each(|(b, v)| b.copy_from_slice(&v.to_le_bytes())),
            Dtype::BF16 => b
                .chunks_exact_mut(2)
                .zip(v)
                .for_each(|(b, v)| b.copy_from_slice(&bf16::from_f32(*v).to_bits().to_le_bytes())),
            _ => b
                .chunks_exact_mut(2)
                .zip(v)
                .for_each(|(b, v)| b.copy_from_slice(&f16::from_f32(*v).to_bits().to_le_bytes())),
        });
}

/// The tokenizer's files (and generation settings), copied as mergekit copies them.
pub const SIDE_FILES: &[&str] = &[
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "added_tokens.json",
    "merges.txt",
    "vocab.json",
    "chat_template.jinja",
    "chat_template.json",
];

/// Copies config.json from `config_from` (its dtype set to `dtype` when given) and the
/// tokenizer files from `tokenizer_from`.
pub fn copy_side_files(
    config_from: &Path,
    tokenizer_from: &Path,
    dir: &Path,
    dtype: Option<OutDtype>,
) -> Result<(), MergeError> {
    let config_path = config_from.join("config.json");
    let text = std::fs::read_to_string(&config_path)
        .map_err(|e| MergeError::input(&config_path, format!("cannot read: {e}")))?;
    let mut config: Value = serde_json::from_str(&text)
        .map_err(|e| MergeError::input(&config_path, format!("not valid JSON: {e}")))?;
    if let (Some(dtype), Some(obj)) = (dtype, config.as_object_mut()) {
        // transformers 5 writes `dtype`, older versions `torch_dtype`; set whichever is there.
        let keys: Vec<&str> = ["dtype", "torch_dtype"]
            .into_iter()
            .filter(|k| obj.contains_key(*k))
            .collect();
        let keys = if keys.is_empty() {
            vec!["torch_dtype"]
        } else {
            keys
        };
        for k in keys {
            obj.insert(k.to_owned(), Value::from(dtype.torch_name()));
        }
    }
    let out = dir.join("config.json");
    let text = serde_json::to_string_pretty(&config).expect("config serialises");
    std::fs::write(&out, text + "\n")
        .map_err(|e| MergeError::output(&out, format!("cannot write: {e}")))?;
    for name in SIDE_FILES {
        let from = tokenizer_from.join(name);
        if from.is_file() {
            let to = dir.join(name);
            std::fs::copy(&from, &to).map_err(|e| {
                MergeError::output(&to, format!("cannot copy {}: {e}", from.display()))
            })?;
            // A copy keeps the source's mode; a read-only input should not make a read-only output.
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let _ = std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o644));
            }
        }
    }
    Ok(())
}

/// A folder built under a temporary name beside its target and moved into place by
/// [`Staging::commit`]; dropped uncommitted, it disappears.
pub struct Staging {
    tmp: tempfile::TempDir,
    target: PathBuf,
    overwrite: bool,
}

impl Staging {
    pub fn new(target: &Path, overwrite: bool) -> Result<Self, MergeError> {
        if target.exists() && !overwrite {
            let empty_dir =
                target.is_dir() && std::fs::read_dir(target).is_ok_and(|mut d| d.next().is_none());
            if !empty_dir {
                return Err(MergeError::output(
                    target,
                    "already exists (choose another output, or pass --overwrite)",
                ));
            }
        }
        let parent = target
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent)
            .map_err(|e| MergeError::output(parent, format!("cannot create: {e}")))?;
        let tmp = tempfile::Builder::new()
            .prefix(".merge-")
            .tempdir_in(parent)
            .map_err(|e| MergeError::output(parent, format!("cannot write: {e}")))?;
        Ok(Self {
            tmp,
            target: target.to_owned(),
            overwrite,
        })
    }

    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    pub fn commit(self) -> Result<(), MergeError> {
        if self.target.exists() {
            if self.target.is_dir() {
                std::fs::remove_dir_all(&self.target)
            } else if self.overwrite {
                std::fs::remove_file(&self.target)
            } else {
                Ok(())
            }
            .map_err(|e| MergeError::output(&self.target, format!("cannot replace: {e}")))?;
        }
        let kept = self.tmp.keep();
        // A temporary folder is private to its owner; the output is an ordinary folder.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&kept, std::fs::Permissions::from_mode(0o755));
        }
        std::fs::rename(&kept, &self.target)
            .map_err(|e| MergeError::output(&self.target, format!("cannot write: {e}")))
    }
}
