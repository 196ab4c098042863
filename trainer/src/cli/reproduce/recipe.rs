//! The recipe file of `trainer reproduce`: TOML, read into typed settings. Every table refuses
//! fields it does not know, and every error names the file, line and column.
//!
//! The field-by-field reference is `RECIPE_HELP` (printed by `trainer reproduce --help`) and
//! recipes/README.md; the shipped recipes carry comments on every field they set.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Deserialize;
use toml::Spanned;

use crate::cli::sft::SftOptions;

/// A whole recipe.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Recipe {
    /// A short name (printed, and the Slurm job-name prefix).
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// The base checkpoint: a Hugging Face folder or a .gguf file.
    pub model: PathBuf,
    /// cpu, or cuda (binaries built with the `cuda` feature).
    #[serde(default = "default_device")]
    pub device: String,
    pub data: DataSpec,
    /// `trainer sft` flags shared by every training run (spelt as on the command line without
    /// the leading dashes); methods add to or override them. Read here for its checks (names,
    /// types, with their line); the stages merge the raw tables.
    #[serde(default)]
    #[allow(dead_code)]
    pub train: SftOptions,
    pub eval: EvalSpec,
    pub report: ReportSpec,
    #[serde(rename = "method")]
    pub methods: Vec<Spanned<MethodSpec>>,
    /// Measured speeds: how --dry-run turns tokens into hours.
    pub speeds: Option<Speeds>,
    #[serde(default)]
    pub slurm: SlurmSpec,
}

fn default_device() -> String {
    "cpu".into()
}

/// The SFT data: a JSONL file, or a `trainer data mix` of the shared corpora.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DataSpec {
    pub file: Option<PathBuf>,
    /// `trainer data mix --counts`, e.g. "flan_v2_cot=400,codealpaca=200".
    pub mix: Option<String>,
    /// `trainer data mix --seed`.
    #[serde(default)]
    pub seed: u64,
    /// The shared data folder the mixture draws from (default ../shared/data).
    pub data_dir: Option<PathBuf>,
}

/// What every model is scored on: the `harness score` settings, the same for every model.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct EvalSpec {
    pub tasks: Vec<String>,
    pub limit: Option<usize>,
    /// An item-list file (`harness score --items`).
    pub items: Option<PathBuf>,
    pub num_fewshot: Option<usize>,
    pub max_new_tokens: Option<usize>,
    /// Benchmark data (default ../shared/data).
    pub data_dir: Option<PathBuf>,
    /// Plugin options, `task.name=value`.
    #[serde(default)]
    pub options: Vec<String>,
    /// Folders of lm-eval task YAML files.
    #[serde(default)]
    pub include_path: Vec<PathBuf>,
    /// Slices per model (`--shard I/N`), joined by `harness merge-shards`.
    #[serde(default = "one")]
    pub shards: usize,
    pub batch_size: Option<usize>,
    pub chunk_size: Option<usize>,
    /// Shared-prefix KV caches kept across chunks (0: reuse within a chunk only, which makes
    /// joined shards equal an unsharded run byte for byte).
    pub prefix_cache: Option<usize>,
    /// f32, bf16 or f16.
    pub dtype: Option<String>,
    pub max_length: Option<usize>,
    pub seed: Option<u64>,
    /// Do not run model-written programs (code benchmarks report pass@1 as unavailable).
    #[serde(default)]
    pub no_exec: bool,
}

fn one() -> usize {
    1
}

/// `harness report` over every scored method.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ReportSpec {
    /// The method every other is compared with (the paper: Vanilla SFT).
    pub baseline: String,
    #[serde(default)]
    pub paper_reference: bool,
    #[serde(default)]
    pub subtasks: bool,
    #[serde(default)]
    pub allow_mismatch: bool,
    pub seed: Option<u64>,
    pub resamples: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// The base model, untuned.
    Base,
    /// One `trainer sft` run: Vanilla, L2, EWC, Replay, LoRAMoE, … by its `train` flags.
    Sft,
    /// Deita: `trainer select`, then SFT on the selected records.
    Deita,
    /// Uniform Soup: SFT runs differing in their `runs` flags, averaged linearly.
    Soup,
    /// Disperse-Then-Merge.
    Dtm,
    /// The ensemble of a DTM method's sub-models (Table 7).
    Ensemble,
}

/// One row of the table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct MethodSpec {
    pub name: String,
    pub kind: Kind,
    /// `trainer sft` flags for this method's runs, over the shared `[train]`.
    pub train: Option<SftOptions>,
    /// sft with `reg = "ewc"`: the base model's Fisher, from `trainer fisher`.
    pub fisher: Option<FisherSpec>,
    /// deita: the selection.
    pub select: Option<SelectSpec>,
    /// soup: one table of `trainer sft` flags per ingredient (e.g. { lr = 2e-4, seed = 2 }).
    pub runs: Option<Vec<SftOptions>>,
    /// dtm: the number of portions and sub-models.
    pub k: Option<usize>,
    pub dispersal: Option<DispersalSpec>,
    pub merge: Option<MergeSpec>,
    /// dtm: score every sub-model too (the report's error-overlap figures need them).
    #[serde(default)]
    pub score_submodels: bool,
    /// ensemble: the dtm method whose sub-models are combined.
    pub of: Option<String>,
    /// ensemble: logprobs (default) or logits.
    pub mode: Option<String>,
    /// Labels for the report's setting plots, e.g. { k = "4", series = "dtm" }.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// `trainer fisher` settings (the data is pre-training-like text for EWC).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FisherSpec {
    pub data: Option<PathBuf>,
    pub samples: Option<usize>,
    pub max_len: Option<usize>,
    pub seed: Option<u64>,
}

/// `trainer select` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SelectSpec {
    #[serde(default = "deita_complexity")]
    pub method: String,
    /// Default: the base model.
    pub scorer: Option<PathBuf>,
    pub threshold: Option<f64>,
    pub top_k: Option<usize>,
    pub batch_size: Option<usize>,
}

fn deita_complexity() -> String {
    "deita-complexity".into()
}

/// `trainer disperse` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DispersalSpec {
    #[serde(default = "random")]
    pub method: String,
    pub embed: Option<String>,
    pub encoder: Option<PathBuf>,
    /// Default: the training seed (as `trainer dtm` does).
    pub seed: Option<u64>,
    pub restarts: Option<usize>,
    pub max_iter: Option<usize>,
}

fn random() -> String {
    "random".into()
}

impl Default for DispersalSpec {
    fn default() -> Self {
        DispersalSpec {
            method: random(),
            embed: None,
            encoder: None,
            seed: None,
            restarts: None,
            max_iter: None,
        }
    }
}

/// `trainer merge` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct MergeSpec {
    #[serde(default = "linear")]
    pub method: String,
    #[serde(default)]
    pub weights: Vec<f64>,
    pub density: Option<f64>,
    pub lambda: Option<f64>,
    pub normalize: Option<bool>,
    pub rescale: Option<String>,
    pub seed: Option<u64>,
    /// Average the LoRA factors A and B (the released script); linear only.
    #[serde(default)]
    pub lora_factors: bool,
    /// fisher: each sub-model's Fisher on its own portion.
    pub fisher: Option<FisherSpec>,
}

fn linear() -> String {
    "linear".into()
}

impl Default for MergeSpec {
    fn default() -> Self {
        MergeSpec {
            method: linear(),
            weights: Vec::new(),
            density: None,
            lambda: None,
            normalize: None,
            rescale: None,
            seed: None,
            lora_factors: false,
            fisher: None,
        }
    }
}

/// Speeds measured on the machine that runs the recipe.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Speeds {
    /// Where and how they were measured.
    pub measured: String,
    /// LoRA training tokens per second (`trainer bench`).
    pub train_tokens_per_s: f64,
    /// Tokens forwarded per second when scoring (`harness bench`, loglikelihood with reuse).
    pub score_tokens_per_s: f64,
    /// Tokens generated per second (`harness bench`, greedy generation).
    pub generate_tokens_per_s: f64,
}

/// `trainer reproduce --emit-slurm` settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SlurmSpec {
    pub account: Option<String>,
    /// Partition of the jobs that run a model.
    pub partition: Option<String>,
    /// `--gres` of the jobs that run a model, e.g. "gpu:1".
    pub gres: Option<String>,
    /// Partition of the jobs that only move files (data, dispersal, merges, reports); default
    /// `partition`, without `gres`.
    pub cpu_partition: Option<String>,
    pub cpus_per_task: Option<usize>,
    pub mem: Option<String>,
    /// Wall-time limit of a job when [speeds] cannot estimate it, e.g. "24:00:00".
    pub time: Option<String>,
    /// Limit = estimated hours × this factor (at least 15 minutes) when [speeds] is given.
    pub time_factor: Option<f64>,
    /// Shell lines run before every job (module loads, library paths).
    #[serde(default)]
    pub setup: Vec<String>,
    /// Further `#SBATCH` options, e.g. "--qos=normal".
    #[serde(default)]
    pub sbatch: Vec<String>,
}

/// A recipe read from `path`, with the raw tables that `train` settings merge from.
pub struct Loaded {
    pub path: PathBuf,
    pub text: String,
    pub recipe: Recipe,
    pub raw: toml::Table,
}

/// `path:line:column` of a byte offset.
pub fn location(path: &Path, text: &str, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    format!("{}:{line}:{column}", path.display())
}

/// Reads and checks a recipe file.
pub fn load(path: &Path) -> anyhow::Result<Loaded> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read the recipe", path.display()))?;
    let recipe: Recipe = toml::from_str(&text).map_err(|e| {
        let at = e.span().map_or(path.display().to_string(), |s| {
            location(path, &text, s.start)
        });
        anyhow::anyhow!("{at}: {}", e.message().trim_end())
    })?;
    let raw: toml::Table = toml::from_str(&text).expect("parsed once already");
    let loaded = Loaded {
        path: path.to_owned(),
        text,
        recipe,
        raw,
    };
    loaded.check()?;
    Ok(loaded)
}

impl Loaded {
    /// `path:line:column` of where method `i` starts.
    pub fn method_at(&self, i: usize) -> String {
        location(&self.path, &self.text, self.recipe.methods[i].span().start)
    }

    /// The method named `name`.
    pub fn method(&self, name: &str) -> Option<&MethodSpec> {
        self.recipe
            .methods
            .iter()
            .map(|m| m.get_ref())
            .find(|m| m.name == name)
    }

    /// The raw `train` table of method `i` (empty when it has none).
    pub fn method_train(&self, i: usize) -> toml::Table {
        self.raw_method(i)
            .and_then(|m| m.get("train"))
            .and_then(|t| t.as_table())
            .cloned()
            .unwrap_or_default()
    }

    /// The raw `runs` tables of soup method `i`.
    pub fn method_runs(&self, i: usize) -> Vec<toml::Table> {
        self.raw_method(i)
            .and_then(|m| m.get("runs"))
            .and_then(|r| r.as_array())
            .map(|a| a.iter().filter_map(|t| t.as_table().cloned()).collect())
            .unwrap_or_default()
    }

    fn raw_method(&self, i: usize) -> Option<&toml::Table> {
        self.raw
            .get("method")
            .and_then(|m| m.as_array())
            .and_then(|a| a.get(i))
            .and_then(|m| m.as_table())
    }

    /// The shared raw `[train]` table.
    pub fn shared_train(&self) -> toml::Table {
        self.raw
            .get("train")
            .and_then(|t| t.as_table())
            .cloned()
            .unwrap_or_default()
    }

    /// Checks what the types alone cannot: each method's fields fit its kind, names are unique,
    /// references resolve.
    fn check(&self) -> anyhow::Result<()> {
        let r = &self.recipe;
        let top = |what: &str| format!("{}: {what}", self.path.display());
        if r.methods.is_empty() {
            bail!(top("the recipe names no [[method]]"));
        }
        if !matches!(r.device.as_str(), "cpu" | "cuda") {
            bail!(top(&format!("device {:?}: cpu or cuda", r.device)));
        }
        match (&r.data.file, &r.data.mix) {
            (Some(_), Some(_)) => bail!(top("[data] takes `file` or `mix`, not both")),
            (None, None) => bail!(top("[data] needs `file` (JSONL) or `mix` (source=count,…)")),
            _ => {}
        }
        if r.eval.tasks.is_empty() {
            bail!(top("[eval] tasks is empty"));
        }
        if r.eval.shards == 0 {
            bail!(top("[eval] shards must be at least 1"));
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, m) in r.methods.iter().enumerate() {
            let m = m.get_ref();
            let at = self.method_at(i);
            if m.name.is_empty()
                || !m
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                bail!(
                    "{at}: method name {:?}: use letters, digits, - and _",
                    m.name
                );
            }
            if !names.insert(m.name.as_str()) {
                bail!("{at}: a second method named {:?}", m.name);
            }
            let given: [(&str, bool); 9] = [
                ("train", m.train.is_some()),
                ("fisher", m.fisher.is_some()),
                ("select", m.select.is_some()),
                ("runs", m.runs.is_some()),
                ("k", m.k.is_some()),
                ("dispersal", m.dispersal.is_some()),
                ("merge", m.merge.is_some()),
                ("of", m.of.is_some()),
                ("mode", m.mode.is_some()),
            ];
            let allowed: &[&str] = match m.kind {
                Kind::Base => &[],
                Kind::Sft => &["train", "fisher"],
                Kind::Deita => &["train", "select"],
                Kind::Soup => &["train", "runs"],
                Kind::Dtm => &["train", "k", "dispersal", "merge"],
                Kind::Ensemble => &["of", "mode"],
            };
            for (field, set) in given {
                if set && !allowed.contains(&field) {
                    bail!(
                        "{at}: method {:?} of kind {:?} takes no `{field}`",
                        m.name,
                        m.kind
                    );
                }
            }
            if m.score_submodels && m.kind != Kind::Dtm {
                bail!("{at}: score-submodels is for dtm methods");
            }
            match m.kind {
                Kind::Deita => {
                    let Some(s) = &m.select else {
                        bail!("{at}: a deita method needs `select` (threshold or top-k)");
                    };
                    if s.threshold.is_some() == s.top_k.is_some() {
                        bail!("{at}: select takes one of threshold and top-k");
                    }
                }
                Kind::Soup => {
                    if m.runs.as_ref().is_none_or(|r| r.len() < 2) {
                        bail!("{at}: a soup needs `runs` with at least two ingredients");
                    }
                }
                Kind::Dtm => {
                    if m.k.is_none_or(|k| k < 2) {
                        bail!("{at}: a dtm method needs k >= 2");
                    }
                    let merge = m.merge.clone().unwrap_or_default();
                    if merge.fisher.is_some() != (merge.method == "fisher") {
                        bail!("{at}: merge.fisher goes with merge method \"fisher\", and only with it");
                    }
                }
                Kind::Ensemble => {
                    let of = m.of.as_deref().unwrap_or("");
                    match self.method(of) {
                        Some(d) if d.kind == Kind::Dtm => {}
                        _ => bail!("{at}: `of` must name a dtm method (got {of:?})"),
                    }
                    if let Some(mode) = &m.mode {
                        if !matches!(mode.as_str(), "logprobs" | "logits") {
                            bail!("{at}: mode {mode:?}: logprobs or logits");
                        }
                    }
                }
                Kind::Base | Kind::Sft => {}
            }
        }
        if self.method(&r.report.baseline).is_none() {
            bail!(top(&format!(
                "[report] baseline {:?} is not a method",
                r.report.baseline
            )));
        }
        Ok(())
    }
}

/// The field-by-field reference, printed by `trainer reproduce --help`.
pub const RECIPE_HELP: &str = "\
RECIPE (TOML; unknown fields are errors, reported as FILE:LINE:COLUMN)
  name = \"table1-tiny\"          short name (progress lines, Slurm job names)
  description = \"…\"             free text
  model = \"PATH\"                base checkpoint: HF folder, or .gguf (converted once by
                                `harness convert`; every later stage reads the HF folder)
  device = \"cpu\"                cpu | cuda: --device of every stage that runs a model

  [data]                        the SFT data: `file` or `mix`
    file = \"sft.jsonl\"          Alpaca or chat JSONL
    mix = \"flan_v2_cot=400,codealpaca=200,lima=100,alpaca_gpt4=300\"
                                `trainer data mix --counts`
    seed = 0                    `trainer data mix --seed`
    data-dir = \"../shared/data\" the corpora

  [train]                       `trainer sft` flags for every run, without the dashes:
                                preset, lora-r, lora-alpha, lora-dropout, lora-targets = [..],
                                lr, betas = \"0.9,0.95\", eps, weight-decay, schedule,
                                warmup-steps, min-lr, max-grad-norm, batch-size,
                                micro-batch-size, max-len, epochs, max-steps, no-shuffle,
                                seed, no-eos, loss-reduction, checkpoint-every, reg,
                                reg-lambda, fisher, replay, replay-ratio, moe-experts,
                                moe-rank, moe-balance, moe-balance-delta, moe-type-field
                                (`trainer sft --help`; unset = the preset's value)

  [eval]                        `harness score` settings, the same for every model
    tasks = [\"arc_challenge\", \"mmlu\", …]   benchmarks or subtasks
    limit = 20                  first N items of each (sub)task
    items = \"items.json\"        explicit item lists {\"TASK\": [doc_id, …]} (--items)
    num-fewshot, max-new-tokens, data-dir, options = [\"task.name=value\"],
    include-path = [\"DIR\"], batch-size, chunk-size, prefix-cache, dtype, max-length, seed,
    no-exec
    shards = 1                  N > 1: every model is scored as N shards (--shard I/N),
                                joined by `harness merge-shards`

  [report]                      `harness report` over every scored method
    baseline = \"vanilla\"        the method compared with (paired tests, Holm)
    paper-reference, subtasks, allow-mismatch (booleans), seed, resamples

  [[method]]                    one per row; `name` (letters, digits, - _) and `kind`:
    kind = \"base\"               the base model, untuned
    kind = \"sft\"                one `trainer sft` run; `train = { … }` adds flags: L2
                                { reg = \"l2\", reg-lambda = λ }, EWC { reg = \"ewc\",
                                reg-lambda = λ } with fisher = { data = \"TEXT\", samples,
                                max-len, seed } (a `trainer fisher` stage of the base model),
                                Replay { replay = \"TEXT\", replay-ratio = 1 }, LoRAMoE
                                { moe-experts = 8, moe-rank = 4 }
    kind = \"deita\"              select = { method = \"deita-complexity\", scorer = PATH
                                (default: the base), threshold = T | top-k = N, batch-size },
                                then SFT on the selected records
    kind = \"soup\"               runs = [{ lr = 3e-4, seed = 1 }, …]: one SFT run per table
                                (flags over [train] and the method's train), merged linearly
    kind = \"dtm\"                k = 4; dispersal = { method = \"random\" | \"kmeans\", embed,
                                encoder, seed (default: the train seed), restarts, max-iter };
                                merge = { method = \"linear\" | task_arithmetic | ties |
                                dare_linear | dare_ties | fisher, weights = [..], density,
                                lambda, normalize, rescale, seed, lora-factors,
                                fisher = { samples, max-len, seed (default: the
                                train seed) } (method fisher) };
                                score-submodels = true scores the K sub-models too (the
                                report's error-overlap figures)
    kind = \"ensemble\"           of = \"DTM-METHOD\", mode = \"logprobs\" | \"logits\": the
                                ensemble of that method's sub-models (Table 7)
    labels = { k = \"4\", series = \"dtm\" }   report labels (setting plots)
    Methods that share a stage (same command, same inputs) share it: two dtm methods that
    differ only in `merge` train their sub-models once.

  [speeds]                      measured on the machine that runs the recipe (--dry-run hours)
    measured = \"how, where\"
    train-tokens-per-s, score-tokens-per-s (forwarded), generate-tokens-per-s

  [slurm]                       --emit-slurm: account, partition, gres = \"gpu:1\",
                                cpu-partition, cpus-per-task, mem, time = \"HH:MM:SS\",
                                time-factor, setup = [\"module load …\"], sbatch = [\"--qos=…\"]

Relative paths are relative to the directory `trainer reproduce` runs in; `~/` is the home
folder.";
