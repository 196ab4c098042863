//! The JSON types that cross the plugin boundary.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What a plugin says about itself (`dtm_plugin_describe`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Description {
    /// Task name as lm-eval spells it, e.g. `gsm8k`.
    pub name: String,
    /// Version of the plugin's prompt/scoring protocol.
    pub version: String,
    /// One line for humans.
    pub summary: String,
    pub output_type: OutputType,
    /// Metrics every [`ItemScore`] carries.
    pub metrics: Vec<MetricSpec>,
    /// The metric to print as the benchmark's number.
    pub headline_metric: String,
    pub default_num_fewshot: usize,
    /// The largest `num_fewshot` the plugin can honour.
    pub max_num_fewshot: usize,
    /// Subtask names (`mmlu:anatomy`); a task without subtasks lists just its own name.
    pub subtasks: Vec<String>,
    /// Aggregation groups an item may belong to (MMLU categories); may be empty.
    pub groups: Vec<String>,
    /// Plugin-specific named options accepted in [`LoadOptions::flags`].
    pub options: Vec<OptionSpec>,
    /// Default per-program time limit for the sandbox (code benchmarks).
    pub program_timeout_s: Option<f64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputType {
    MultipleChoice,
    GenerateUntil,
    /// Generation whose text becomes programs run in the sandbox.
    Code,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricSpec {
    pub name: String,
    pub higher_is_better: bool,
    pub help: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OptionSpec {
    pub name: String,
    pub help: String,
    /// Accepted values; the first is the default.
    pub values: Vec<String>,
}

/// Options given at load time.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadOptions {
    /// Override of the number of few-shot examples (≤ `max_num_fewshot`).
    #[serde(default)]
    pub num_fewshot: Option<usize>,
    /// Keep only the first N items of each subtask (upstream file order).
    #[serde(default)]
    pub limit: Option<usize>,
    /// Cap on `max_new_tokens` of every generation request (e.g. BBH on CPU).
    #[serde(default)]
    pub max_new_tokens: Option<usize>,
    /// Plugin-specific options by name, see [`Description::options`].
    #[serde(default)]
    pub flags: BTreeMap<String, String>,
}

/// The settings a loaded task actually uses (print them beside the result).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskInfo {
    pub name: String,
    pub num_fewshot: usize,
    pub limit: Option<usize>,
    pub max_new_tokens: Option<usize>,
    /// Every plugin option with its effective value (defaults filled in).
    pub flags: BTreeMap<String, String>,
    /// Number of items after `limit`.
    pub num_items: usize,
    /// The data files `load` read, relative to the data folder (the harness records their
    /// hashes with the results). Filled from [`crate::record_data_file`].
    #[serde(default)]
    pub data_files: Vec<String>,
}

/// A request to the model (PROTOCOL.md §1).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    Loglikelihood {
        context: String,
        continuation: String,
    },
    GenerateUntil {
        context: String,
        until: Vec<String>,
        max_new_tokens: usize,
    },
    LoglikelihoodRolling {
        text: String,
    },
}

/// One scored unit: its requests are answered in order and handed back to `score`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Item {
    /// Unique within the task; stable under `limit`.
    pub doc_id: usize,
    /// `task` or `task:subtask`.
    pub subtask: String,
    pub requests: Vec<Request>,
}

/// The model's answer to one [`Request`], same position.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Loglikelihood { logprob: f64, is_greedy: bool },
    Text(String),
    Rolling { logprob: f64 },
}

/// Sandbox result of one program. `Unavailable` = no sandbox: the item's metric is unavailable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Passed,
    Failed,
    TimedOut,
    MemoryExceeded,
    Crashed,
    Unavailable,
}

/// The score of one item.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ItemScore {
    pub doc_id: usize,
    pub subtask: String,
    /// Metric name → value; `None` (JSON null) = unavailable for this item.
    pub metrics: BTreeMap<String, Option<f64>>,
    /// What was extracted from the responses, by name (e.g. `strict`, `flexible`, `acc`).
    pub extracted: BTreeMap<String, String>,
    pub gold: String,
    /// Aggregation groups (e.g. the MMLU category).
    pub groups: Vec<String>,
}

/// Arguments of `dtm_plugin_load`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LoadCall {
    pub data_dir: String,
    pub options: LoadOptions,
}

/// Arguments of `dtm_plugin_programs` / `dtm_plugin_score`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ItemCall {
    pub doc_id: usize,
    pub responses: Vec<Response>,
    #[serde(default)]
    pub outcomes: Vec<Outcome>,
}

/// Every string a plugin returns: `{"ok": T}` or `{"error": "message"}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Envelope<T> {
    Ok(T),
    Error(String),
}
