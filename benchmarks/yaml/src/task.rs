//! One YAML task as a benchmark: its description, and, once loaded, its items (prompts built as
//! lm-eval builds them) and the scoring of the model's answers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dtm_plugin_api::host::Aggregate;
use dtm_plugin_api::{
    Description, Item, ItemScore, LoadOptions, MetricSpec, OutputType as ApiOutputType, Request,
    Response, TaskInfo,
};

use crate::config::{MetricKind, OutputType, TaskConfig};
use crate::data::{self, columns};
use crate::error::{Result, YamlError};
use crate::fewshot::ShotPicker;
use crate::metrics::{self, exact_match, BYTES, LOGLIKELIHOOD, WORDS};
use crate::pyfmt::py_repr;
use crate::template::{Doc, Renderer, Target};
use crate::{filters, pyfmt};

/// A task file, read and checked; its data is read by [`YamlTask::load`].
#[derive(Clone, Debug)]
pub struct YamlTask {
    pub config: TaskConfig,
}

/// What each document needs at scoring time.
struct Plan {
    choices: Vec<String>,
    target: Target,
    /// `loglikelihood_rolling`: the scored text (for its word and byte counts).
    text: String,
}

/// A loaded task: items built, ready to score.
pub struct LoadedYamlTask {
    config: TaskConfig,
    info: TaskInfo,
    items: Vec<Item>,
    plans: BTreeMap<usize, Plan>,
    data_files: Vec<PathBuf>,
}

impl YamlTask {
    pub fn name(&self) -> &str {
        &self.config.task
    }

    pub fn file(&self) -> &Path {
        &self.config.file
    }

    /// Metric names as lm-eval reports them: `metric,filter`.
    fn metric_names(&self) -> Vec<(String, MetricKind, bool)> {
        let mut out = Vec::new();
        for f in &self.config.filters {
            for m in &self.config.metrics {
                out.push((
                    format!("{},{}", m.kind.name(), f.name),
                    m.kind,
                    m.higher_is_better,
                ));
            }
        }
        out
    }

    pub fn describe(&self) -> Description {
        let c = &self.config;
        let metrics: Vec<MetricSpec> = self
            .metric_names()
            .into_iter()
            .map(|(name, kind, higher_is_better)| MetricSpec {
                help: format!(
                    "lm-eval's {} ({} aggregation)",
                    kind.name(),
                    kind.aggregation()
                ),
                name,
                higher_is_better,
            })
            .collect();
        Description {
            name: c.task.clone(),
            version: c.version.clone(),
            summary: format!(
                "lm-eval YAML task ({}, {})",
                c.output_type.name(),
                c.file.display()
            ),
            // The ABI's output types name what the harness must do: log-likelihood tasks need
            // nothing beyond what multiple-choice ones do (no sandbox).
            output_type: match c.output_type {
                OutputType::GenerateUntil => ApiOutputType::GenerateUntil,
                _ => ApiOutputType::MultipleChoice,
            },
            headline_metric: metrics[0].name.clone(),
            metrics,
            default_num_fewshot: c.num_fewshot,
            // Bounded by the few-shot split, which is checked when the data is read.
            max_num_fewshot: usize::MAX,
            subtasks: vec![c.task.clone()],
            groups: vec![],
            options: vec![],
            program_timeout_s: None,
        }
    }

    /// The metric names aggregated over the corpus (not as means).
    pub fn corpus_metrics(&self) -> Vec<(String, MetricKind)> {
        self.metric_names()
            .into_iter()
            .filter(|(_, k, _)| k.aggregation() != "mean")
            .map(|(n, k, _)| (n, k))
            .collect()
    }

    /// Read the data and build every item. `seed` seeds the default few-shot sampler (lm-eval's
    /// `--seed`, whose few-shot part defaults to 1234).
    pub fn load(&self, options: &LoadOptions, seed: u64) -> Result<LoadedYamlTask> {
        let c = &self.config;
        let task_err = |message: String| YamlError::Task {
            task: c.task.clone(),
            message,
        };
        if let Some(k) = options.flags.keys().next() {
            return Err(task_err(format!(
                "unknown option {k:?} (YAML tasks have none)"
            )));
        }
        let mut splits: BTreeMap<&str, Vec<Doc>> = BTreeMap::new();
        let mut data_files = Vec::new();
        let mut read = |name: &str| -> Result<()> {
            if splits.contains_key(name) {
                return Ok(());
            }
            let files = &c.dataset.splits[name];
            for f in files {
                if !f.is_file() {
                    return Err(YamlError::field(
                        &c.dataset.origin,
                        "dataset_kwargs.data_files",
                        format!("{}: no such file", f.display()),
                    ));
                }
            }
            data_files.extend(files.iter().cloned());
            let docs = data::read_split(c.dataset.format, files).map_err(task_err)?;
            let (key, _) = c
                .dataset
                .splits
                .get_key_value(name)
                .expect("checked at config");
            splits.insert(key.as_str(), docs);
            Ok(())
        };
        let eval_split = c
            .test_split
            .as_deref()
            .or(c.validation_split.as_deref())
            .expect("checked at config");
        read(eval_split)?;
        let num_fewshot = options.num_fewshot.unwrap_or(c.num_fewshot);
        // lm-eval's `fewshot_docs()`: the few-shot split, else training, validation, test.
        let fewshot_split = c
            .fewshot_split
            .as_deref()
            .or(c.training_split.as_deref())
            .or(c.validation_split.as_deref())
            .or(c.test_split.as_deref())
            .expect("an evaluated split exists");
        if num_fewshot > 0 {
            if c.output_type == OutputType::LoglikelihoodRolling {
                return Err(task_err("loglikelihood_rolling takes no shots".into()));
            }
            read(fewshot_split)?;
        }
        let eval_docs = &splits[eval_split];
        if eval_docs.is_empty() {
            return Err(task_err(format!("the {eval_split} split has no documents")));
        }
        let renderer = Renderer::new(columns(eval_docs));
        let has_choices = c.doc_to_choice.is_some();
        let doc_err = |split: &str, i: usize, message: String| YamlError::Doc {
            task: c.task.clone(),
            split: split.to_string(),
            doc: i,
            message,
        };
        let empty = Vec::new();
        let pool = if num_fewshot > 0 {
            &splits[fewshot_split]
        } else {
            &empty
        };
        // lm-eval excludes the evaluated document only when the few-shot split is the test split.
        let mut picker = ShotPicker::new(c.sampler, pool, c.fewshot_split == c.test_split, seed);
        let limit = options.limit.unwrap_or(usize::MAX);
        let mut items = Vec::new();
        let mut plans = BTreeMap::new();
        for (i, doc) in eval_docs.iter().enumerate().take(limit) {
            let e = |m: String| doc_err(eval_split, i, m);
            let shots = picker.pick(num_fewshot, doc).map_err(e)?;
            let mut context = match &c.description {
                Some(t) => renderer.description(t, doc).map_err(e)?,
                None => String::new(),
            };
            for shot in shots {
                let text = self.text(&renderer, shot).map_err(e)?;
                let choices = self.choices(&renderer, shot).map_err(e)?;
                let target = self.target(&renderer, shot).map_err(e)?;
                // lm-eval's `build_qa_turn`: an empty answer adds neither delimiter.
                let answer =
                    shot_answer(&target, has_choices.then_some(&choices[..])).map_err(e)?;
                context.push_str(&text);
                if let Some(a) = answer {
                    context.push_str(&c.target_delimiter);
                    context.push_str(&a);
                    context.push_str(&c.fewshot_delimiter);
                }
            }
            let choices = self.choices(&renderer, doc).map_err(e)?;
            let target = self.target(&renderer, doc).map_err(e)?;
            let text = match c.output_type {
                OutputType::LoglikelihoodRolling => String::new(),
                _ => self.text(&renderer, doc).map_err(e)?,
            };
            context.push_str(&text);
            let mut plan = Plan {
                choices,
                target,
                text: String::new(),
            };
            let requests = match c.output_type {
                OutputType::MultipleChoice => {
                    gold_indices(&plan.target, &plan.choices).map_err(e)?;
                    dtm_bench_common::mc::requests(&context, &plan.choices, &c.target_delimiter)
                }
                OutputType::GenerateUntil => {
                    gold_texts(&plan.target, has_choices.then_some(&plan.choices[..]))
                        .map_err(e)?;
                    let max = options
                        .max_new_tokens
                        .map_or(c.generation.max_gen_toks, |cap| {
                            cap.min(c.generation.max_gen_toks)
                        });
                    vec![Request::GenerateUntil {
                        context,
                        until: c.generation.until.clone(),
                        max_new_tokens: max,
                    }]
                }
                OutputType::Loglikelihood => vec![Request::Loglikelihood {
                    context,
                    // lm-eval scores the target as given: no delimiter is added.
                    continuation: target_text(&plan.target).map_err(e)?,
                }],
                OutputType::LoglikelihoodRolling => {
                    plan.text = target_text(&plan.target).map_err(e)?;
                    vec![Request::LoglikelihoodRolling {
                        text: plan.text.clone(),
                    }]
                }
            };
            items.push(Item {
                doc_id: i,
                subtask: c.task.clone(),
                requests,
            });
            plans.insert(i, plan);
        }
        let base = c.file.parent().unwrap_or(Path::new("."));
        let info = TaskInfo {
            name: c.task.clone(),
            num_fewshot,
            limit: options.limit,
            max_new_tokens: options.max_new_tokens,
            flags: BTreeMap::new(),
            num_items: items.len(),
            data_files: data_files
                .iter()
                .map(|f| f.strip_prefix(base).unwrap_or(f).display().to_string())
                .collect(),
        };
        Ok(LoadedYamlTask {
            config: c.clone(),
            info,
            items,
            plans,
            data_files,
        })
    }

    fn text(&self, r: &Renderer, doc: &Doc) -> std::result::Result<String, String> {
        match &self.config.doc_to_text {
            Some(t) => r.text(t, doc, self.config.doc_to_choice.is_some()),
            None => Ok(String::new()),
        }
    }

    fn choices(&self, r: &Renderer, doc: &Doc) -> std::result::Result<Vec<String>, String> {
        match &self.config.doc_to_choice {
            Some(spec) => r.choices(spec, doc),
            None => Ok(Vec::new()),
        }
    }

    fn target(&self, r: &Renderer, doc: &Doc) -> std::result::Result<Target, String> {
        match &self.config.doc_to_target {
            Some(spec) => r.target(spec, doc, self.config.doc_to_choice.is_some()),
            None => Ok(Target::Text(String::new())),
        }
    }
}

/// The answer written after a shot (lm-eval's `build_qa_turn`): the indexed choice, the first of
/// a list, or the text; `None` for an empty answer.
fn shot_answer(
    t: &Target,
    choices: Option<&[String]>,
) -> std::result::Result<Option<String>, String> {
    let a = match (t, choices) {
        (Target::Index(i), Some(c)) => c
            .get(*i)
            .cloned()
            .ok_or_else(|| format!("target index {i} is out of range for {} choices", c.len()))?,
        (Target::Index(i), None) => {
            return Err(format!(
                "the target is the integer {i}, but there are no choices to index"
            ))
        }
        (Target::List(v), _) => match v.first() {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(other) => {
                return Err(format!(
                    "the first target {} is not a string",
                    py_repr(other)
                ))
            }
            None => return Err("the target is an empty list".into()),
        },
        (Target::Text(s), _) => s.clone(),
    };
    Ok((!a.is_empty()).then_some(a))
}

/// Multiple choice: the gold indices (one, or several for a list target).
fn gold_indices(t: &Target, choices: &[String]) -> std::result::Result<Vec<usize>, String> {
    let check = |i: usize| {
        if i < choices.len() {
            Ok(i)
        } else {
            Err(format!(
                "target index {i} is out of range for {} choices",
                choices.len()
            ))
        }
    };
    match t {
        Target::Index(i) => Ok(vec![check(*i)?]),
        Target::Text(s) => choices
            .iter()
            .position(|c| c == s)
            .map(|i| vec![i])
            .ok_or_else(|| format!("target {s:?} is not among the choices {choices:?}")),
        Target::List(v) => v
            .iter()
            .map(|x| match x.as_u64() {
                Some(i) => check(i as usize),
                None => Err(format!("list target {} is not a choice index", py_repr(x))),
            })
            .collect(),
    }
}

/// Generation: the acceptable answers, as text (lm-eval: an index picks a choice; a list is any
/// of its items; anything else is `str()`ed).
fn gold_texts(t: &Target, choices: Option<&[String]>) -> std::result::Result<Vec<String>, String> {
    match (t, choices) {
        (Target::Index(i), Some(c)) => Ok(vec![c
            .get(*i)
            .cloned()
            .ok_or_else(|| format!("target index {i} is out of range for {} choices", c.len()))?]),
        (Target::Index(i), None) => Ok(vec![i.to_string()]),
        (Target::List(v), _) => Ok(v.iter().map(pyfmt::py_str).collect()),
        (Target::Text(s), _) => Ok(vec![s.clone()]),
    }
}

/// Log-likelihood tasks: the target as one text.
fn target_text(t: &Target) -> std::result::Result<String, String> {
    match t {
        Target::Text(s) => Ok(s.clone()),
        Target::Index(i) => Ok(i.to_string()),
        Target::List(v) => Err(format!(
            "the target is a list ({}); a log-likelihood task scores one text",
            py_repr(&serde_json::Value::Array(v.clone()))
        )),
    }
}

fn ll(responses: &[Response], i: usize) -> std::result::Result<(f64, bool), String> {
    match responses.get(i) {
        Some(Response::Loglikelihood { logprob, is_greedy }) => Ok((*logprob, *is_greedy)),
        Some(Response::Rolling { logprob }) => Ok((*logprob, false)),
        other => Err(format!(
            "response {i}: expected a log-likelihood, got {other:?}"
        )),
    }
}

impl LoadedYamlTask {
    pub fn info(&self) -> &TaskInfo {
        &self.info
    }

    pub fn items(&self) -> &[Item] {
        &self.items
    }

    /// The data files read, as paths to hash.
    pub fn data_files(&self) -> &[PathBuf] {
        &self.data_files
    }

    pub fn score(
        &self,
        doc_id: usize,
        responses: &[Response],
    ) -> std::result::Result<ItemScore, String> {
        let c = &self.config;
        let plan = self
            .plans
            .get(&doc_id)
            .ok_or_else(|| format!("unknown doc_id {doc_id}"))?;
        let mut s = ItemScore {
            doc_id,
            subtask: c.task.clone(),
            ..Default::default()
        };
        let name = |kind: MetricKind, filter: &str| format!("{},{filter}", kind.name());
        match c.output_type {
            OutputType::MultipleChoice => {
                let n = plan.choices.len();
                if responses.len() != n {
                    return Err(format!("expected {n} responses, got {}", responses.len()));
                }
                let lls: Vec<(f64, bool)> = (0..n)
                    .map(|i| ll(responses, i))
                    .collect::<std::result::Result<_, _>>()?;
                let values: Vec<f64> = lls.iter().map(|x| x.0).collect();
                let (pred, pred_norm) = dtm_bench_common::mc::predictions(&values, &plan.choices);
                let gold = gold_indices(&plan.target, &plan.choices)?;
                s.gold = gold
                    .iter()
                    .map(|&g| plan.choices[g].clone())
                    .collect::<Vec<_>>()
                    .join(" | ");
                for m in &c.metrics {
                    let v = match m.kind {
                        MetricKind::Acc => gold.contains(&pred),
                        MetricKind::AccNorm => gold.contains(&pred_norm),
                        MetricKind::ExactMatch => gold.iter().any(|&g| lls[g].1),
                        _ => unreachable!("checked at config"),
                    };
                    s.metrics.insert(name(m.kind, "none"), Some(v as u8 as f64));
                }
                s.extracted.insert("acc".into(), plan.choices[pred].clone());
                s.extracted
                    .insert("acc_norm".into(), plan.choices[pred_norm].clone());
            }
            OutputType::GenerateUntil => {
                let text = dtm_bench_common::text_response(responses, 0)?;
                let golds = gold_texts(
                    &plan.target,
                    c.doc_to_choice.is_some().then_some(&plan.choices[..]),
                )?;
                s.gold = golds.join(" | ");
                for f in &c.filters {
                    let answer = filters::apply(f, text)?;
                    for m in &c.metrics {
                        s.metrics.insert(
                            name(m.kind, &f.name),
                            Some(exact_match(&answer, &golds, &m.exact_match)),
                        );
                    }
                    s.extracted.insert(f.name.clone(), answer);
                }
            }
            OutputType::Loglikelihood => {
                let (logprob, is_greedy) = ll(responses, 0)?;
                s.gold = target_text(&plan.target)?;
                for m in &c.metrics {
                    let v = match m.kind {
                        MetricKind::Acc => is_greedy as u8 as f64,
                        _ => (-logprob).exp(),
                    };
                    s.metrics.insert(name(m.kind, "none"), Some(v));
                }
                s.extracted
                    .insert(LOGLIKELIHOOD.into(), logprob.to_string());
            }
            OutputType::LoglikelihoodRolling => {
                let (logprob, _) = ll(responses, 0)?;
                // lm-eval: words are `re.split(r"\s+", text)` pieces, bytes UTF-8 bytes.
                let words = regex::Regex::new(r"\s+")
                    .expect("valid")
                    .split(&plan.text)
                    .count();
                let bytes = plan.text.len();
                s.gold = String::new();
                for m in &c.metrics {
                    let v = match m.kind {
                        MetricKind::WordPerplexity => (-logprob / words as f64).exp(),
                        MetricKind::BytePerplexity => (-logprob / bytes.max(1) as f64).exp(),
                        _ => -logprob / bytes.max(1) as f64 / std::f64::consts::LN_2,
                    };
                    s.metrics.insert(name(m.kind, "none"), Some(v));
                }
                s.extracted
                    .insert(LOGLIKELIHOOD.into(), logprob.to_string());
                s.extracted.insert(WORDS.into(), words.to_string());
                s.extracted.insert(BYTES.into(), bytes.to_string());
            }
        }
        Ok(s)
    }

    /// Aggregate item scores: means for the mean metrics, lm-eval's corpus formulas for the
    /// perplexity family.
    pub fn aggregate(&self, scores: &[ItemScore]) -> Aggregate {
        let task = YamlTask {
            config: self.config.clone(),
        };
        metrics::aggregate_with(scores, &task.corpus_metrics())
    }
}
