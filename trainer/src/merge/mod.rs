//! Model merging: linear averaging, task arithmetic, TIES, DARE (linear and TIES) and Fisher
//! averaging, with mergekit's semantics and defaults (PROTOCOL §4 "Merging").
//!
//! A merge streams: the inputs are memory-mapped, each output tensor is computed from the same
//! tensor of every input (read one at a time, in f32) and written straight into its output shard,
//! so the memory a merge needs is a few copies of the largest tensor, whatever the model's size.
//!
//! - [`registry`]: the one list of methods (parameters as data, defaults, paper URLs).
//! - [`linear`], [`task_arithmetic`], [`ties`], [`dare`], [`fisher`]: one formula each.
//! - [`params`]: parameter settings (scalars, layer gradients, name filters) and how a tensor's
//!   value is looked up, as mergekit does.
//! - [`inputs`]: memory-mapped safetensors and the model references a merge reads (HF folders,
//!   PEFT adapters on a base).
//! - [`writer`]: sharded safetensors output written tensor by tensor, and the folder around it.
//! - [`pipeline`]: the streaming loop that ties them together ([`merge`]).
//! - [`config`]: mergekit's YAML schema, read into a [`MergeSpec`].
//! - [`lora_factors`]: the released DTM script's merge of LoRA factors (A and B separately).

pub mod config;
pub mod dare;
pub mod fisher;
pub mod inputs;
pub mod linear;
pub mod lora_factors;
pub mod params;
pub mod pipeline;
pub mod registry;
pub mod rescale;
pub mod task_arithmetic;
pub mod ties;
pub mod writer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use inputs::ModelRef;
pub use params::Setting;
pub use pipeline::{merge, MergeReport, Progress};
pub use registry::{MethodInfo, METHODS};
pub use rescale::Rescale;
pub use writer::OutDtype;

/// Elements per unit of parallel work (and per DARE random stream, so it is part of what a seed
/// reproduces).
pub const CHUNK: usize = 1 << 16;

/// Output shards are cut past this many bytes unless told otherwise (mergekit's and
/// transformers' default, 5 GB).
pub const DEFAULT_SHARD_SIZE: u64 = 5_000_000_000;

/// Why a merge cannot be done; every variant names the file, tensor or setting at fault.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    /// An input (checkpoint folder, safetensors file, adapter, Fisher file) that cannot be used.
    #[error("{}: {problem}", path.display())]
    Input { path: PathBuf, problem: String },
    /// Inputs that disagree on a tensor, or a tensor a method cannot merge.
    #[error("tensor {tensor}: {problem}")]
    Tensor { tensor: String, problem: String },
    /// A mergekit config that cannot be used.
    #[error("{}: {problem}", file.display())]
    Config { file: PathBuf, problem: String },
    /// A method, parameter or option that does not fit.
    #[error("{0}")]
    Spec(String),
    /// The output cannot be written.
    #[error("{}: {problem}", path.display())]
    Output { path: PathBuf, problem: String },
}

impl MergeError {
    pub fn input(path: &Path, problem: impl Into<String>) -> Self {
        Self::Input {
            path: path.to_owned(),
            problem: problem.into(),
        }
    }

    pub fn tensor(tensor: &str, problem: impl Into<String>) -> Self {
        Self::Tensor {
            tensor: tensor.to_owned(),
            problem: problem.into(),
        }
    }

    pub fn output(path: &Path, problem: impl Into<String>) -> Self {
        Self::Output {
            path: path.to_owned(),
            problem: problem.into(),
        }
    }
}

impl From<dtm_model::error::LoadError> for MergeError {
    fn from(e: dtm_model::error::LoadError) -> Self {
        Self::Input {
            path: PathBuf::from(e.file),
            problem: e.problem,
        }
    }
}

/// One model of a merge with its own parameter settings (mergekit's `models[].parameters`).
#[derive(Debug, Clone)]
pub struct ModelInput {
    pub model: ModelRef,
    pub params: BTreeMap<String, Setting>,
}

/// Everything a merge needs, whether it came from the command line or a mergekit config.
#[derive(Debug, Clone)]
pub struct MergeSpec {
    pub method: &'static MethodInfo,
    /// The base model: the origin of task vectors, the model adapters apply to, and the donor of
    /// config and tokenizer. Methods that average full weights (linear, fisher) do not average it.
    pub base: Option<ModelRef>,
    pub models: Vec<ModelInput>,
    /// Global parameters (mergekit's top-level `parameters`).
    pub params: BTreeMap<String, Setting>,
    /// The dtype written; `None` keeps the inputs' dtype of each tensor.
    pub out_dtype: Option<OutDtype>,
    /// Where the tokenizer files (and generation_config.json) are copied from (mergekit's
    /// `tokenizer_source`); default: the base, else the first model. config.json always comes
    /// from the base, else the first model.
    pub tokenizer_source: Option<ModelRef>,
    /// Seeds DARE's random drops; the same seed gives the same output bytes.
    pub seed: u64,
    pub shard_size: u64,
    pub output: PathBuf,
    /// Replace an existing output folder instead of refusing.
    pub overwrite: bool,
}

impl MergeSpec {
    pub fn new(method: &'static MethodInfo, output: PathBuf) -> Self {
        Self {
            method,
            base: None,
            models: Vec::new(),
            params: BTreeMap::new(),
            out_dtype: None,
            tokenizer_source: None,
            seed: 0,
            shard_size: DEFAULT_SHARD_SIZE,
            output,
            overwrite: false,
        }
    }
}
