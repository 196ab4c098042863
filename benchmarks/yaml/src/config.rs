//! A task file read into a typed configuration: `include:` resolution, the supported subset of
//! lm-eval's fields, and a refusal naming the file, line and field for everything else.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use crate::error::{Origin, Result, YamlError};
use crate::node::{self, Node, Value};

/// lm-eval's four request kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputType {
    MultipleChoice,
    GenerateUntil,
    Loglikelihood,
    LoglikelihoodRolling,
}

impl OutputType {
    pub fn name(self) -> &'static str {
        match self {
            OutputType::MultipleChoice => "multiple_choice",
            OutputType::GenerateUntil => "generate_until",
            OutputType::Loglikelihood => "loglikelihood",
            OutputType::LoglikelihoodRolling => "loglikelihood_rolling",
        }
    }
}

/// A `doc_to_*` or `description` value: a field name of the documents or a Jinja template
/// (decided per document set, as lm-eval does: a name among the columns is a field).
#[derive(Clone, Debug)]
pub struct Template {
    pub source: String,
    pub origin: Origin,
    pub field: &'static str,
}

/// `doc_to_target`: a template, a constant index, or a constant list.
#[derive(Clone, Debug)]
pub enum TargetSpec {
    Template(Template),
    Index(usize),
    List(Vec<serde_json::Value>),
}

/// `doc_to_choice`: a template (a field or a rendered list literal) or a constant list.
#[derive(Clone, Debug)]
pub enum ChoiceSpec {
    Template(Template),
    List(Vec<String>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataFormat {
    Json,
    Csv,
}

/// Local data files by split name (relative paths resolved against the folder of the YAML file
/// that names them).
#[derive(Clone, Debug)]
pub struct Dataset {
    pub format: DataFormat,
    pub splits: BTreeMap<String, Vec<PathBuf>>,
    pub origin: Origin,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sampler {
    /// lm-eval's default: `random.Random(seed).sample`, the evaluated document excluded when the
    /// few-shot split is the test split.
    Default,
    /// The first N documents of the few-shot split.
    FirstN,
}

#[derive(Clone, Debug)]
pub struct Generation {
    pub until: Vec<String>,
    pub max_gen_toks: usize,
}

/// One step of a filter pipeline.
#[derive(Clone, Debug)]
pub enum FilterStep {
    Regex {
        pattern: regex::Regex,
        group_select: i64,
        fallback: String,
    },
    TakeFirst,
    Lowercase,
    Uppercase,
    Map {
        mapping: BTreeMap<String, String>,
        default: Option<String>,
    },
}

#[derive(Clone, Debug)]
pub struct FilterPipeline {
    pub name: String,
    pub steps: Vec<FilterStep>,
}

/// The metrics of the subset. Each knows its output types and its aggregation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    Acc,
    AccNorm,
    ExactMatch,
    /// `exp(-mean(loglikelihood))` over items (lm-eval's `perplexity` aggregation).
    Perplexity,
    /// `exp(-Σ loglikelihood / Σ words)`.
    WordPerplexity,
    /// `exp(-Σ loglikelihood / Σ bytes)`.
    BytePerplexity,
    /// `-Σ loglikelihood / Σ bytes / ln 2`.
    BitsPerByte,
}

impl MetricKind {
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "acc" => MetricKind::Acc,
            "acc_norm" => MetricKind::AccNorm,
            "exact_match" => MetricKind::ExactMatch,
            "perplexity" => MetricKind::Perplexity,
            "word_perplexity" => MetricKind::WordPerplexity,
            "byte_perplexity" => MetricKind::BytePerplexity,
            "bits_per_byte" => MetricKind::BitsPerByte,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            MetricKind::Acc => "acc",
            MetricKind::AccNorm => "acc_norm",
            MetricKind::ExactMatch => "exact_match",
            MetricKind::Perplexity => "perplexity",
            MetricKind::WordPerplexity => "word_perplexity",
            MetricKind::BytePerplexity => "byte_perplexity",
            MetricKind::BitsPerByte => "bits_per_byte",
        }
    }

    /// lm-eval's aggregation of the metric (the only one accepted for it).
    pub fn aggregation(self) -> &'static str {
        match self {
            MetricKind::Acc | MetricKind::AccNorm | MetricKind::ExactMatch => "mean",
            MetricKind::Perplexity => "perplexity",
            MetricKind::WordPerplexity | MetricKind::BytePerplexity => "weighted_perplexity",
            MetricKind::BitsPerByte => "bits_per_byte",
        }
    }

    pub fn default_higher_is_better(self) -> bool {
        matches!(
            self,
            MetricKind::Acc | MetricKind::AccNorm | MetricKind::ExactMatch
        )
    }

    /// The output types whose results lm-eval computes this metric from.
    pub fn applies_to(self, t: OutputType) -> bool {
        use OutputType::*;
        match self {
            MetricKind::Acc => matches!(t, MultipleChoice | Loglikelihood),
            MetricKind::AccNorm => t == MultipleChoice,
            MetricKind::ExactMatch => matches!(t, MultipleChoice | GenerateUntil),
            MetricKind::Perplexity => t == Loglikelihood,
            MetricKind::WordPerplexity | MetricKind::BytePerplexity | MetricKind::BitsPerByte => {
                t == LoglikelihoodRolling
            }
        }
    }

    /// lm-eval's `DEFAULT_METRIC_REGISTRY`: the metrics of a task without `metric_list`.
    pub fn defaults(t: OutputType) -> &'static [MetricKind] {
        match t {
            OutputType::MultipleChoice => &[MetricKind::Acc, MetricKind::AccNorm],
            OutputType::GenerateUntil => &[MetricKind::ExactMatch],
            OutputType::Loglikelihood => &[MetricKind::Perplexity, MetricKind::Acc],
            OutputType::LoglikelihoodRolling => &[
                MetricKind::WordPerplexity,
                MetricKind::BytePerplexity,
                MetricKind::BitsPerByte,
            ],
        }
    }
}

/// `exact_match` options (lm-eval's `exact_match_hf_evaluate`).
#[derive(Clone, Debug, Default)]
pub struct ExactMatchOptions {
    pub ignore_case: bool,
    pub ignore_punctuation: bool,
    pub ignore_numbers: bool,
    pub regexes_to_ignore: Vec<regex::Regex>,
}

#[derive(Clone, Debug)]
pub struct MetricConfig {
    pub kind: MetricKind,
    pub higher_is_better: bool,
    pub exact_match: ExactMatchOptions,
}

/// One task file, includes resolved, checked against the supported subset.
#[derive(Clone, Debug)]
pub struct TaskConfig {
    /// The task's own file.
    pub file: PathBuf,
    /// The files merged into it by `include:` (at every depth, in reading order): with `file`,
    /// everything the task's definition was read from, which a run's identity hashes.
    pub includes: Vec<PathBuf>,
    pub task: String,
    pub tags: Vec<String>,
    pub version: String,
    pub dataset: Dataset,
    pub test_split: Option<String>,
    pub validation_split: Option<String>,
    pub training_split: Option<String>,
    pub fewshot_split: Option<String>,
    pub output_type: OutputType,
    pub doc_to_text: Option<Template>,
    pub doc_to_target: Option<TargetSpec>,
    pub doc_to_choice: Option<ChoiceSpec>,
    pub description: Option<Template>,
    pub target_delimiter: String,
    pub fewshot_delimiter: String,
    pub num_fewshot: usize,
    pub sampler: Sampler,
    pub generation: Generation,
    /// `filter_list`, or lm-eval's default `none` pipeline (`take_first`).
    pub filters: Vec<FilterPipeline>,
    pub metrics: Vec<MetricConfig>,
    /// Where `output_type` was given (or the `task` line), for errors found later.
    pub origin: Origin,
}

/// lm-eval's default `max_gen_toks` (`lm_eval/defaults.py`).
pub const DEFAULT_MAX_GEN_TOKS: usize = 256;

/// What a `*.yaml` file in a task folder is.
pub enum FileKind {
    Task(Box<TaskConfig>),
    /// No `task:` key: a base file for `include:` (lm-eval skips these too).
    Fragment,
}

/// Fields merged from a file and its includes; each remembers where it was written.
struct Fields {
    entries: Vec<(String, Node)>,
}

impl Fields {
    fn take(&mut self, name: &str) -> Option<Node> {
        let i = self.entries.iter().position(|(k, _)| k == name)?;
        Some(self.entries.remove(i).1)
    }
}

fn read_map(path: &Path) -> Result<Vec<(String, Node)>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| YamlError::file(path, None, format!("cannot read: {e}")))?;
    let node = node::parse(path, &text)?;
    match node.value {
        Value::Map(m) => Ok(m),
        _ => Err(YamlError::file(
            path,
            Some(node.origin.line),
            format!("a task file is a mapping, not {}", node.kind()),
        )),
    }
}

/// Read `path` and every file it includes (depth first, later files and the including file
/// winning, as lm-eval merges them). Every included file is added to `included`.
fn load_merged(
    path: &Path,
    seen: &mut Vec<PathBuf>,
    included: &mut Vec<PathBuf>,
) -> Result<Vec<(String, Node)>> {
    let canonical = path
        .canonicalize()
        .map_err(|e| YamlError::file(path, None, format!("cannot read: {e}")))?;
    if seen.contains(&canonical) {
        return Err(YamlError::file(
            path,
            None,
            format!(
                "include cycle: {}",
                seen.iter()
                    .chain(std::iter::once(&canonical))
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(" -> ")
            ),
        ));
    }
    seen.push(canonical);
    let mut own = read_map(path)?;
    let mut merged: Vec<(String, Node)> = Vec::new();
    if let Some(i) = own.iter().position(|(k, _)| k == "include") {
        let (_, inc) = own.remove(i);
        let names: Vec<Node> = match inc.value {
            Value::Seq(v) => v,
            _ => vec![inc],
        };
        for n in names {
            let Value::Str(name) = &n.value else {
                return Err(YamlError::field(
                    &n.origin,
                    "include",
                    format!("expected a file name, found {}", n.kind()),
                ));
            };
            let target = path.parent().unwrap_or(Path::new(".")).join(name);
            if !target.is_file() {
                return Err(YamlError::field(
                    &n.origin,
                    "include",
                    format!("{}: no such file", target.display()),
                ));
            }
            included.push(target.clone());
            let mut inc = load_merged(&target, seen, included)?;
            inc.retain(|(k, _)| k != "task_list");
            merge(&mut merged, inc);
        }
    }
    merge(&mut merged, own);
    seen.pop();
    Ok(merged)
}

fn merge(into: &mut Vec<(String, Node)>, from: Vec<(String, Node)>) {
    for (k, v) in from {
        match into.iter_mut().find(|(name, _)| *name == k) {
            Some(slot) => slot.1 = v,
            None => into.push((k, v)),
        }
    }
}

/// Fields accepted only with lm-eval's default value (they change nothing then).
const DEFAULT_ONLY: &[(&str, &str)] = &[
    ("repeats", "1"),
    ("should_decontaminate", "false"),
    ("unsafe_code", "false"),
];

/// Read one `*.yaml` file of a task folder.
pub fn load(path: &Path) -> Result<FileKind> {
    let mut includes = Vec::new();
    let entries = load_merged(path, &mut Vec::new(), &mut includes)?;
    let mut f = Fields { entries };
    for (_, n) in &f.entries {
        refuse_tags(n)?;
    }
    let Some(task_node) = f.take("task") else {
        if let Some(g) = f.take("group") {
            return Err(YamlError::field(
                &g.origin,
                "group",
                "group configurations (a `group:` with a list of tasks) are not supported; give each task file a `task:` name and a `tag:` to run them together",
            ));
        }
        return Ok(FileKind::Fragment);
    };
    let task = string(&task_node, "task")?;
    if task.is_empty() || task.contains([',', ':', '/', '=']) || task.trim() != task {
        return Err(YamlError::field(
            &task_node.origin,
            "task",
            format!(
                "{task:?} is not a usable task name (no spaces, commas, colons, slashes or `=`)"
            ),
        ));
    }
    let mut tags = Vec::new();
    for field in ["tag", "group"] {
        if let Some(n) = f.take(field) {
            match &n.value {
                Value::Str(s) => tags.push(s.clone()),
                Value::Seq(v) => {
                    for t in v {
                        tags.push(string(t, field)?);
                    }
                }
                _ => {
                    return Err(YamlError::field(
                        &n.origin,
                        field,
                        format!("expected a name or a list of names, found {}", n.kind()),
                    ))
                }
            }
        }
    }
    let version = match f.take("metadata") {
        None => "yaml".to_string(),
        Some(n) => metadata_version(&n)?,
    };
    let dataset = dataset(&mut f, &task_node.origin)?;
    let split = |f: &mut Fields, name: &'static str| -> Result<Option<String>> {
        f.take(name).map(|n| string(&n, name)).transpose()
    };
    let test_split = split(&mut f, "test_split")?;
    let validation_split = split(&mut f, "validation_split")?;
    let training_split = split(&mut f, "training_split")?;
    let fewshot_split = split(&mut f, "fewshot_split")?;
    for (field, s) in [
        ("test_split", &test_split),
        ("validation_split", &validation_split),
        ("training_split", &training_split),
        ("fewshot_split", &fewshot_split),
    ] {
        if let Some(s) = s {
            if !dataset.splits.contains_key(s) {
                return Err(YamlError::field(
                    &dataset.origin,
                    "dataset_kwargs.data_files",
                    format!(
                        "{field} is {s:?}, but data_files has no such split (it has: {})",
                        dataset
                            .splits
                            .keys()
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        }
    }
    if test_split.is_none() && validation_split.is_none() {
        return Err(YamlError::field(
            &task_node.origin,
            "test_split",
            "a task needs test_split or validation_split (the documents it is scored on)",
        ));
    }
    let (output_type, origin) = match f.take("output_type") {
        None => (OutputType::GenerateUntil, task_node.origin.clone()),
        Some(n) => {
            let t = match string(&n, "output_type")?.as_str() {
                "multiple_choice" => OutputType::MultipleChoice,
                "generate_until" => OutputType::GenerateUntil,
                "loglikelihood" => OutputType::Loglikelihood,
                "loglikelihood_rolling" => OutputType::LoglikelihoodRolling,
                other => {
                    return Err(YamlError::field(
                        &n.origin,
                        "output_type",
                        format!("{other:?} is not one of multiple_choice, generate_until, loglikelihood, loglikelihood_rolling"),
                    ))
                }
            };
            (t, n.origin)
        }
    };
    let doc_to_text = f
        .take("doc_to_text")
        .map(|n| template(&n, "doc_to_text"))
        .transpose()?;
    let doc_to_target = f.take("doc_to_target").map(|n| target(&n)).transpose()?;
    let doc_to_choice = f.take("doc_to_choice").map(|n| choice(&n)).transpose()?;
    let description = f
        .take("description")
        .map(|n| template(&n, "description"))
        .transpose()?
        .filter(|t| !t.source.is_empty());
    let target_delimiter = match f.take("target_delimiter") {
        Some(n) => string(&n, "target_delimiter")?,
        None => " ".into(),
    };
    let fewshot_delimiter = match f.take("fewshot_delimiter") {
        Some(n) => string(&n, "fewshot_delimiter")?,
        None => "\n\n".into(),
    };
    let num_fewshot = match f.take("num_fewshot") {
        Some(n) => match n.value {
            Value::Int(i) if i >= 0 => i as usize,
            Value::Null => 0,
            _ => {
                return Err(YamlError::field(
                    &n.origin,
                    "num_fewshot",
                    format!("expected a count, found {}", n.kind()),
                ))
            }
        },
        None => 0,
    };
    let sampler = match f.take("fewshot_config") {
        None => Sampler::Default,
        Some(n) => fewshot_config(&n)?,
    };
    let generation = generation(&mut f, output_type, &fewshot_delimiter)?;
    let filters = match f.take("filter_list") {
        None => vec![FilterPipeline {
            name: "none".into(),
            steps: vec![FilterStep::TakeFirst],
        }],
        Some(n) => {
            if output_type != OutputType::GenerateUntil {
                return Err(YamlError::field(
                    &n.origin,
                    "filter_list",
                    format!(
                        "filters apply to generated text; this task's output_type is {}",
                        output_type.name()
                    ),
                ));
            }
            filter_list(&n)?
        }
    };
    let metrics = match f.take("metric_list") {
        None => MetricKind::defaults(output_type)
            .iter()
            .map(|&kind| MetricConfig {
                kind,
                higher_is_better: kind.default_higher_is_better(),
                exact_match: ExactMatchOptions::default(),
            })
            .collect(),
        Some(n) => metric_list(&n, output_type)?,
    };
    match output_type {
        OutputType::MultipleChoice if doc_to_choice.is_none() => {
            return Err(YamlError::field(
                &origin,
                "doc_to_choice",
                "a multiple_choice task needs doc_to_choice",
            ))
        }
        OutputType::Loglikelihood | OutputType::LoglikelihoodRolling if doc_to_target.is_none() => {
            return Err(YamlError::field(
                &origin,
                "doc_to_target",
                format!("a {} task needs doc_to_target", output_type.name()),
            ))
        }
        _ => {}
    }
    if output_type == OutputType::LoglikelihoodRolling && num_fewshot > 0 {
        return Err(YamlError::field(
            &origin,
            "num_fewshot",
            "loglikelihood_rolling scores the target text alone; it takes no shots",
        ));
    }
    for (name, value) in DEFAULT_ONLY {
        if let Some(n) = f.take(name) {
            let v = match &n.value {
                Value::Int(i) => i.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => String::new(),
            };
            if v != *value {
                return Err(YamlError::field(
                    &n.origin,
                    name,
                    format!("only the default ({value}) is supported"),
                ));
            }
        }
    }
    if let Some((name, n)) = f.entries.first() {
        return Err(YamlError::field(&n.origin, name, unsupported_field(name)));
    }
    Ok(FileKind::Task(Box::new(TaskConfig {
        file: path.to_owned(),
        includes,
        task,
        tags,
        version,
        dataset,
        test_split,
        validation_split,
        training_split,
        fewshot_split,
        output_type,
        doc_to_text,
        doc_to_target,
        doc_to_choice,
        description,
        target_delimiter,
        fewshot_delimiter,
        num_fewshot,
        sampler,
        generation,
        filters,
        metrics,
        origin,
    })))
}

fn unsupported_field(name: &str) -> String {
    match name {
        "process_docs" | "process_results" | "custom_dataset" => {
            format!("{name} (Python code) is not supported")
        }
        "dataset_name" => {
            "dataset_name is not supported: name the local files in dataset_kwargs.data_files"
                .into()
        }
        _ => format!(
            "{name} is not supported by dtm's YAML tasks (see benchmarks/GUIDE.md for the subset)"
        ),
    }
}

fn refuse_tags(n: &Node) -> Result<()> {
    match &n.value {
        Value::Tagged(tag, inner) => {
            let what = if tag == "!function" {
                format!(
                    "`!function {}` calls Python, which dtm does not run; write the logic as a Jinja template or a compiled plugin",
                    match &inner.value {
                        Value::Str(s) => s.as_str(),
                        _ => "…",
                    }
                )
            } else {
                format!("the YAML tag {tag} is not supported")
            };
            Err(YamlError::file(&n.origin.file, Some(n.origin.line), what))
        }
        Value::Seq(v) => v.iter().try_for_each(refuse_tags),
        Value::Map(m) => m.iter().try_for_each(|(_, v)| refuse_tags(v)),
        _ => Ok(()),
    }
}

fn string(n: &Node, field: &str) -> Result<String> {
    match &n.value {
        Value::Str(s) => Ok(s.clone()),
        // PyYAML reads an unquoted number as a number; lm-eval formats it with str() where a
        // string is expected.
        Value::Int(i) => Ok(i.to_string()),
        _ => Err(YamlError::field(
            &n.origin,
            field,
            format!("expected a string, found {}", n.kind()),
        )),
    }
}

fn boolean(n: &Node, field: &str) -> Result<bool> {
    match &n.value {
        Value::Bool(b) => Ok(*b),
        // YAML 1.1 (PyYAML) booleans.
        Value::Str(s) if matches!(s.as_str(), "yes" | "Yes" | "YES" | "on" | "On" | "ON") => {
            Ok(true)
        }
        Value::Str(s) if matches!(s.as_str(), "no" | "No" | "NO" | "off" | "Off" | "OFF") => {
            Ok(false)
        }
        _ => Err(YamlError::field(
            &n.origin,
            field,
            format!("expected true or false, found {}", n.kind()),
        )),
    }
}

fn metadata_version(n: &Node) -> Result<String> {
    let Some(m) = n.as_map() else {
        return Err(YamlError::field(
            &n.origin,
            "metadata",
            "expected a mapping",
        ));
    };
    let mut version = "yaml".to_string();
    for (k, v) in m {
        match (k.as_str(), &v.value) {
            ("version", Value::Int(i)) => version = format!("{i}.0"),
            ("version", Value::Float(x)) => version = crate::pyfmt::float_repr(*x),
            ("version", Value::Str(s)) => version = s.clone(),
            _ => {
                return Err(YamlError::field(
                    &v.origin,
                    &format!("metadata.{k}"),
                    "only metadata.version is supported",
                ))
            }
        }
    }
    Ok(version)
}

fn template(n: &Node, field: &'static str) -> Result<Template> {
    match &n.value {
        Value::Str(s) => Ok(Template {
            source: s.clone(),
            origin: n.origin.clone(),
            field,
        }),
        Value::Int(_) if field == "doc_to_text" => Err(YamlError::field(
            &n.origin,
            field,
            "an integer doc_to_text (lm-eval's multiple-input tasks, e.g. winogrande) is not supported",
        )),
        _ => Err(YamlError::field(
            &n.origin,
            field,
            format!("expected a field name or a Jinja template, found {}", n.kind()),
        )),
    }
}

fn target(n: &Node) -> Result<TargetSpec> {
    match &n.value {
        Value::Int(i) if *i >= 0 => Ok(TargetSpec::Index(*i as usize)),
        Value::Seq(v) => Ok(TargetSpec::List(v.iter().map(Node::to_json).collect())),
        _ => Ok(TargetSpec::Template(template(n, "doc_to_target")?)),
    }
}

fn choice(n: &Node) -> Result<ChoiceSpec> {
    let list = |items: Vec<&Node>| -> Result<ChoiceSpec> {
        items
            .into_iter()
            .map(|c| string(c, "doc_to_choice"))
            .collect::<Result<_>>()
            .map(ChoiceSpec::List)
    };
    match &n.value {
        Value::Seq(v) => list(v.iter().collect()),
        // lm-eval takes a mapping's values in order.
        Value::Map(m) => list(m.iter().map(|(_, v)| v).collect()),
        _ => Ok(ChoiceSpec::Template(template(n, "doc_to_choice")?)),
    }
}

fn dataset(f: &mut Fields, task_origin: &Origin) -> Result<Dataset> {
    let Some(p) = f.take("dataset_path") else {
        return Err(YamlError::field(
            task_origin,
            "dataset_path",
            "missing: dtm reads local files (`dataset_path: json` or `csv` with dataset_kwargs.data_files)",
        ));
    };
    let format = match string(&p, "dataset_path")?.as_str() {
        "json" => DataFormat::Json,
        "csv" => DataFormat::Csv,
        other => {
            return Err(YamlError::field(
                &p.origin,
                "dataset_path",
                format!("{other:?} would be downloaded from the Hugging Face hub; dtm reads local files only: use `json` or `csv` with dataset_kwargs.data_files"),
            ))
        }
    };
    let Some(kw) = f.take("dataset_kwargs") else {
        return Err(YamlError::field(
            &p.origin,
            "dataset_kwargs",
            "missing: name the local files in dataset_kwargs.data_files",
        ));
    };
    let Some(entries) = kw.as_map() else {
        return Err(YamlError::field(
            &kw.origin,
            "dataset_kwargs",
            "expected a mapping",
        ));
    };
    // Relative paths resolve against the folder of the file that names them.
    let base = kw.origin.file.parent().unwrap_or(Path::new(".")).to_owned();
    let mut splits = BTreeMap::new();
    let mut data_origin = kw.origin.clone();
    for (k, v) in entries {
        if k != "data_files" {
            return Err(YamlError::field(
                &v.origin,
                &format!("dataset_kwargs.{k}"),
                "only dataset_kwargs.data_files is supported",
            ));
        }
        data_origin = v.origin.clone();
        let files = |n: &Node| -> Result<Vec<PathBuf>> {
            let names: Vec<&Node> = match &n.value {
                Value::Seq(items) => items.iter().collect(),
                _ => vec![n],
            };
            names
                .into_iter()
                .map(|n| {
                    let s = string(n, "dataset_kwargs.data_files")?;
                    if s.contains("://") || s.starts_with("hf:") {
                        return Err(YamlError::field(
                            &n.origin,
                            "dataset_kwargs.data_files",
                            format!("{s:?} is remote; dtm reads local files only"),
                        ));
                    }
                    Ok(base.join(s))
                })
                .collect()
        };
        match &v.value {
            Value::Map(m) => {
                for (split, n) in m {
                    splits.insert(split.clone(), files(n)?);
                }
            }
            // A bare file or list is datasets' `train` split.
            _ => {
                splits.insert("train".to_string(), files(v)?);
            }
        }
    }
    if splits.is_empty() {
        return Err(YamlError::field(
            &kw.origin,
            "dataset_kwargs.data_files",
            "missing: name the local data files",
        ));
    }
    Ok(Dataset {
        format,
        splits,
        origin: data_origin,
    })
}

fn fewshot_config(n: &Node) -> Result<Sampler> {
    let Some(m) = n.as_map() else {
        return Err(YamlError::field(
            &n.origin,
            "fewshot_config",
            "expected a mapping",
        ));
    };
    let mut sampler = Sampler::Default;
    for (k, v) in m {
        if k != "sampler" {
            return Err(YamlError::field(
                &v.origin,
                &format!("fewshot_config.{k}"),
                "only fewshot_config.sampler is supported",
            ));
        }
        sampler = match string(v, "fewshot_config.sampler")?.as_str() {
            "first_n" => Sampler::FirstN,
            "default" => Sampler::Default,
            other => {
                return Err(YamlError::field(
                    &v.origin,
                    "fewshot_config.sampler",
                    format!("{other:?} is not one of first_n, default"),
                ))
            }
        };
    }
    Ok(sampler)
}

fn generation(f: &mut Fields, t: OutputType, fewshot_delimiter: &str) -> Result<Generation> {
    let mut g = Generation {
        until: vec![fewshot_delimiter.to_string()],
        max_gen_toks: DEFAULT_MAX_GEN_TOKS,
    };
    let Some(n) = f.take("generation_kwargs") else {
        return Ok(g);
    };
    if t != OutputType::GenerateUntil {
        return Err(YamlError::field(
            &n.origin,
            "generation_kwargs",
            format!("applies to generate_until tasks; this one is {}", t.name()),
        ));
    }
    let Some(m) = n.as_map() else {
        return Err(YamlError::field(
            &n.origin,
            "generation_kwargs",
            "expected a mapping",
        ));
    };
    for (k, v) in m {
        let field = format!("generation_kwargs.{k}");
        match k.as_str() {
            "until" => {
                g.until = match &v.value {
                    Value::Seq(items) => items
                        .iter()
                        .map(|s| string(s, &field))
                        .collect::<Result<_>>()?,
                    _ => vec![string(v, &field)?],
                }
            }
            "max_gen_toks" => {
                g.max_gen_toks = match v.value {
                    Value::Int(i) if i > 0 => i as usize,
                    _ => {
                        return Err(YamlError::field(
                            &v.origin,
                            &field,
                            format!("expected a positive count, found {}", v.kind()),
                        ))
                    }
                }
            }
            "do_sample" => {
                if boolean(v, &field)? {
                    return Err(YamlError::field(
                        &v.origin,
                        &field,
                        "sampling (do_sample: true) is not supported: dtm decodes greedily",
                    ));
                }
            }
            "temperature" => {
                let t = match v.value {
                    Value::Int(i) => i as f64,
                    Value::Float(x) => x,
                    _ => f64::NAN,
                };
                if t != 0.0 {
                    return Err(YamlError::field(
                        &v.origin,
                        &field,
                        "sampling (temperature > 0) is not supported: dtm decodes greedily; use temperature: 0",
                    ));
                }
            }
            _ => {
                return Err(YamlError::field(
                    &v.origin,
                    &field,
                    "not supported (until, max_gen_toks, and greedy do_sample: false / temperature: 0 are)",
                ))
            }
        }
    }
    Ok(g)
}

fn filter_list(n: &Node) -> Result<Vec<FilterPipeline>> {
    let Value::Seq(items) = &n.value else {
        return Err(YamlError::field(
            &n.origin,
            "filter_list",
            "expected a list of filters",
        ));
    };
    let mut names = HashSet::new();
    let mut out = Vec::new();
    for item in items {
        let Some(m) = item.as_map() else {
            return Err(YamlError::field(
                &item.origin,
                "filter_list",
                "expected `name:` and `filter:`",
            ));
        };
        let mut name = None;
        let mut steps = None;
        for (k, v) in m {
            match k.as_str() {
                "name" => name = Some(string(v, "filter_list.name")?),
                "filter" => steps = Some(filter_steps(v)?),
                _ => {
                    return Err(YamlError::field(
                        &v.origin,
                        &format!("filter_list.{k}"),
                        "not supported (a filter has `name` and `filter`)",
                    ))
                }
            }
        }
        let (Some(name), Some(steps)) = (name, steps) else {
            return Err(YamlError::field(
                &item.origin,
                "filter_list",
                "each filter needs `name` and `filter`",
            ));
        };
        if !names.insert(name.clone()) {
            return Err(YamlError::field(
                &item.origin,
                "filter_list.name",
                format!("{name:?} is used twice"),
            ));
        }
        out.push(FilterPipeline { name, steps });
    }
    if out.is_empty() {
        return Err(YamlError::field(&n.origin, "filter_list", "empty"));
    }
    Ok(out)
}

fn filter_steps(n: &Node) -> Result<Vec<FilterStep>> {
    let Value::Seq(items) = &n.value else {
        return Err(YamlError::field(
            &n.origin,
            "filter_list.filter",
            "expected a list of steps",
        ));
    };
    items.iter().map(filter_step).collect()
}

fn filter_step(n: &Node) -> Result<FilterStep> {
    let Some(m) = n.as_map() else {
        return Err(YamlError::field(
            &n.origin,
            "filter_list.filter",
            "expected `function:` and its arguments",
        ));
    };
    let Some((_, f)) = m.iter().find(|(k, _)| k == "function") else {
        return Err(YamlError::field(
            &n.origin,
            "filter_list.filter",
            "a step needs `function:`",
        ));
    };
    let function = string(f, "filter_list.filter.function")?;
    let allowed: &[&str] = match function.as_str() {
        "regex" => &["regex_pattern", "group_select", "fallback"],
        "take_first" | "lowercase" | "uppercase" => &[],
        "map" => &["mapping_dict", "default_value"],
        other => {
            return Err(YamlError::field(
                &f.origin,
                "filter_list.filter.function",
                format!(
                    "{other:?} is not supported (regex, take_first, lowercase, uppercase, map are)"
                ),
            ))
        }
    };
    let arg = |name: &str| m.iter().find(|(k, _)| k == name).map(|(_, v)| v);
    for (k, v) in m {
        if k != "function" && !allowed.contains(&k.as_str()) {
            return Err(YamlError::field(
                &v.origin,
                &format!("filter_list.filter.{k}"),
                format!("not an argument of the {function} filter"),
            ));
        }
    }
    Ok(match function.as_str() {
        "regex" => {
            let source = match arg("regex_pattern") {
                Some(v) => string(v, "regex_pattern")?,
                None => r"#### (\-?[0-9\.\,]+)".to_string(),
            };
            let pattern = regex::Regex::new(&source).map_err(|e| {
                YamlError::field(
                    arg("regex_pattern").map_or(&f.origin, |v| &v.origin),
                    "filter_list.filter.regex_pattern",
                    format!("not a pattern dtm's regex engine accepts: {e}"),
                )
            })?;
            let group_select = match arg("group_select") {
                None => 0,
                Some(v) => match v.value {
                    Value::Int(i) => i,
                    _ => {
                        return Err(YamlError::field(
                            &v.origin,
                            "filter_list.filter.group_select",
                            "expected an integer",
                        ))
                    }
                },
            };
            let fallback = match arg("fallback") {
                None => "[invalid]".to_string(),
                Some(v) => string(v, "filter_list.filter.fallback")?,
            };
            FilterStep::Regex {
                pattern,
                group_select,
                fallback,
            }
        }
        "take_first" => FilterStep::TakeFirst,
        "lowercase" => FilterStep::Lowercase,
        "uppercase" => FilterStep::Uppercase,
        _ => {
            let mut mapping = BTreeMap::new();
            if let Some(v) = arg("mapping_dict") {
                let Some(entries) = v.as_map() else {
                    return Err(YamlError::field(
                        &v.origin,
                        "filter_list.filter.mapping_dict",
                        "expected a mapping",
                    ));
                };
                for (k, x) in entries {
                    mapping.insert(k.clone(), string(x, "filter_list.filter.mapping_dict")?);
                }
            }
            let default = arg("default_value")
                .map(|v| string(v, "filter_list.filter.default_value"))
                .transpose()?;
            FilterStep::Map { mapping, default }
        }
    })
}

fn metric_list(n: &Node, t: OutputType) -> Result<Vec<MetricConfig>> {
    let Value::Seq(items) = &n.value else {
        return Err(YamlError::field(
            &n.origin,
            "metric_list",
            "expected a list of metrics",
        ));
    };
    let mut out: Vec<MetricConfig> = Vec::new();
    for item in items {
        let Some(m) = item.as_map() else {
            return Err(YamlError::field(
                &item.origin,
                "metric_list",
                "expected `metric:` and its options",
            ));
        };
        let Some((_, name_node)) = m.iter().find(|(k, _)| k == "metric") else {
            return Err(YamlError::field(
                &item.origin,
                "metric_list",
                "an entry needs `metric:`",
            ));
        };
        let name = string(name_node, "metric_list.metric")?;
        let Some(kind) = MetricKind::from_name(&name) else {
            return Err(YamlError::field(
                &name_node.origin,
                "metric_list.metric",
                format!("{name:?} is not supported (acc, acc_norm, exact_match, perplexity, word_perplexity, byte_perplexity, bits_per_byte are)"),
            ));
        };
        if !kind.applies_to(t) {
            return Err(YamlError::field(
                &name_node.origin,
                "metric_list.metric",
                format!("{name} is not computed for {} tasks", t.name()),
            ));
        }
        if out.iter().any(|c| c.kind == kind) {
            return Err(YamlError::field(
                &name_node.origin,
                "metric_list.metric",
                format!("{name} is listed twice"),
            ));
        }
        let mut c = MetricConfig {
            kind,
            higher_is_better: kind.default_higher_is_better(),
            exact_match: ExactMatchOptions::default(),
        };
        for (k, v) in m {
            let field = format!("metric_list.{k}");
            match k.as_str() {
                "metric" => {}
                "aggregation" => {
                    let agg = string(v, &field)?;
                    if agg != kind.aggregation() {
                        return Err(YamlError::field(
                            &v.origin,
                            &field,
                            format!(
                                "{name} aggregates by {}; {agg:?} is not supported",
                                kind.aggregation()
                            ),
                        ));
                    }
                }
                "higher_is_better" => c.higher_is_better = boolean(v, &field)?,
                "ignore_case" | "ignore_punctuation" | "ignore_numbers" | "regexes_to_ignore"
                    if kind == MetricKind::ExactMatch =>
                {
                    match k.as_str() {
                        "ignore_case" => c.exact_match.ignore_case = boolean(v, &field)?,
                        "ignore_punctuation" => {
                            c.exact_match.ignore_punctuation = boolean(v, &field)?
                        }
                        "ignore_numbers" => c.exact_match.ignore_numbers = boolean(v, &field)?,
                        _ => {
                            let patterns: Vec<&Node> = match &v.value {
                                Value::Seq(items) => items.iter().collect(),
                                _ => vec![v],
                            };
                            for p in patterns {
                                let s = string(p, &field)?;
                                c.exact_match.regexes_to_ignore.push(
                                    regex::Regex::new(&s).map_err(|e| {
                                        YamlError::field(
                                            &p.origin,
                                            &field,
                                            format!(
                                                "not a pattern dtm's regex engine accepts: {e}"
                                            ),
                                        )
                                    })?,
                                );
                            }
                        }
                    }
                }
                _ => {
                    return Err(YamlError::field(
                        &v.origin,
                        &field,
                        format!("not an option of {name}"),
                    ))
                }
            }
        }
        out.push(c);
    }
    if out.is_empty() {
        return Err(YamlError::field(&n.origin, "metric_list", "empty"));
    }
    Ok(out)
}
