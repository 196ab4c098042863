//! The rows of the report: one per (method, task) with the headline metric, and for every
//! method but the baseline its paired comparison with the baseline.

use std::collections::BTreeMap;

use rayon::prelude::*;
use serde::Serialize;

use dtm_plugin_api::host::summarise;

use super::error::ReportError;
use super::pairing::{differences, pair};
use super::runs::Run;
use super::stats::{self, Comparison};

/// Benchmarks in the order of the paper's Table 1; other tasks follow alphabetically.
pub const PAPER_ORDER: [&str; 9] = [
    "gsm8k",
    "mmlu",
    "bbh",
    "arc_challenge",
    "openbookqa",
    "race",
    "humaneval",
    "mbpp",
    "truthfulqa_mc1",
];

/// A task as scored, or one subtask of it.
#[derive(Clone, Debug, PartialEq)]
pub struct Scope {
    pub task: String,
    pub subtask: Option<String>,
}

impl Scope {
    pub fn name(&self) -> &str {
        self.subtask.as_deref().unwrap_or(&self.task)
    }
}

fn task_rank(task: &str) -> (usize, &str) {
    let family = task.split(':').next().unwrap_or(task);
    let rank = PAPER_ORDER
        .iter()
        .position(|t| *t == family)
        .unwrap_or(PAPER_ORDER.len());
    (rank, task)
}

/// The tasks the runs hold (only `only` when given), each followed by its subtasks when
/// `subtasks` is set.
pub fn scopes(
    runs: &[Run],
    only: Option<&[String]>,
    subtasks: bool,
) -> Result<Vec<Scope>, ReportError> {
    let mut tasks: Vec<&String> = runs.iter().flat_map(|r| r.tasks.keys()).collect();
    tasks.sort_by_key(|t| task_rank(t));
    tasks.dedup();
    if let Some(only) = only {
        for t in only {
            if !tasks.contains(&t) {
                return Err(ReportError::Usage(format!(
                    "--tasks: no run has task `{t}` (they have: {})",
                    tasks
                        .iter()
                        .map(|t| t.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        tasks.retain(|t| only.contains(t));
    }
    let mut out = Vec::new();
    for task in tasks {
        out.push(Scope {
            task: task.clone(),
            subtask: None,
        });
        if subtasks {
            let mut subs: Vec<String> = runs
                .iter()
                .filter_map(|r| r.tasks.get(task))
                .flat_map(|t| t.subtasks())
                .collect();
            subs.sort();
            subs.dedup();
            out.extend(subs.into_iter().map(|s| Scope {
                task: task.clone(),
                subtask: Some(s),
            }));
        }
    }
    Ok(out)
}

/// One line of the table (and of report.json's `rows`).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Row {
    pub method: String,
    /// The task, or the subtask (`mmlu:anatomy`).
    pub task: String,
    pub metric: String,
    /// Mean over the method's items; `None` when some item's value is unavailable.
    pub value: Option<f64>,
    pub stderr: Option<f64>,
    pub n: usize,
    /// Method − baseline over the paired items.
    pub delta: Option<f64>,
    pub ci95: Option<[f64; 2]>,
    pub p_value: Option<f64>,
    /// Holm-adjusted over every p-value of the table.
    pub p_holm: Option<f64>,
    /// `mcnemar_exact`, `sign_flip_exact` or `sign_flip_sampled`.
    pub test: Option<&'static str>,
    /// Items the comparison used.
    pub n_paired: Option<usize>,
    /// For 0/1 metrics: [baseline right & method wrong, baseline wrong & method right].
    pub discordant: Option<[usize; 2]>,
    /// Why a row has no comparison, or what it was compared despite.
    pub note: Option<String>,
}

/// Statistics settings.
#[derive(Clone, Copy, Debug)]
pub struct StatsOptions {
    pub resamples: usize,
    pub seed: u64,
    pub allow_mismatch: bool,
}

/// Paired per-item values: (baseline, method).
type Paired = (Vec<f64>, Vec<f64>);

/// Builds every row; runs that differ from the baseline on a task are refused (all of them
/// named in one error) unless `allow_mismatch`.
pub fn rows(
    runs: &[Run],
    baseline: &str,
    scopes: &[Scope],
    opts: StatsOptions,
) -> Result<Vec<Row>, ReportError> {
    let base = runs
        .iter()
        .find(|r| r.name == baseline)
        .expect("the baseline is one of the runs");
    let mut refused = Vec::new();
    // Each row, and the paired (baseline, method) values when it gets a comparison.
    let mut pending: Vec<(Row, Option<Paired>)> = Vec::new();
    let mut verdicts: BTreeMap<(&str, &str), Vec<String>> = BTreeMap::new();
    for scope in scopes {
        for run in runs {
            let Some(result) = run.tasks.get(&scope.task) else {
                continue;
            };
            let values = result.headline(scope.subtask.as_deref());
            if values.is_empty() {
                continue; // a subtask this run did not score
            }
            let all: Vec<Option<f64>> = values.values().copied().collect();
            let summary = summarise(&all);
            let mut row = Row {
                method: run.name.clone(),
                task: scope.name().to_owned(),
                metric: result.headline_metric.clone(),
                value: summary.mean,
                stderr: summary.stderr,
                n: summary.n,
                delta: None,
                ci95: None,
                p_value: None,
                p_holm: None,
                test: None,
                n_paired: None,
                discordant: None,
                note: None,
            };
            if summary.unavailable > 0 {
                row.note = Some(format!("{} items unavailable", summary.unavailable));
            }
            if run.name == baseline {
                pending.push((row, None));
                continue;
            }
            let Some(base_result) = base.tasks.get(&scope.task) else {
                row.note = Some(format!("baseline `{baseline}` has no `{}`", scope.task));
                pending.push((row, None));
                continue;
            };
            let diffs = verdicts
                .entry((run.name.as_str(), scope.task.as_str()))
                .or_insert_with(|| differences(baseline, base_result, &run.name, result));
            if !diffs.is_empty() && !opts.allow_mismatch {
                if scope.subtask.is_none() {
                    refused.push(format!(
                        "{}: `{}` vs baseline `{baseline}`: {}",
                        scope.task,
                        run.name,
                        diffs.join("; ")
                    ));
                }
                continue;
            }
            if base_result.headline_metric != result.headline_metric {
                // Even --allow-mismatch cannot compare two different metrics.
                row.note = Some(format!("not compared: {}", diffs.join("; ")));
                pending.push((row, None));
                continue;
            }
            let base_values = base_result.headline(scope.subtask.as_deref());
            match pair(&base_values, &values) {
                None => {
                    row.note = Some("values unavailable: not compared".into());
                    pending.push((row, None));
                }
                Some((ids, _, _)) if ids.is_empty() => {
                    row.note = Some("no items in common with the baseline".into());
                    pending.push((row, None));
                }
                Some((ids, b, m)) => {
                    row.n_paired = Some(ids.len());
                    if !diffs.is_empty() {
                        row.note = Some(format!(
                            "--allow-mismatch: compared on {} common items; {}",
                            ids.len(),
                            diffs.join("; ")
                        ));
                    }
                    pending.push((row, Some((b, m))));
                }
            }
        }
    }
    if !refused.is_empty() {
        return Err(ReportError::Mismatch(refused));
    }
    let comparisons: Vec<Option<Comparison>> = pending
        .par_iter()
        .map(|(_, values)| {
            values
                .as_ref()
                .map(|(b, m)| stats::compare(b, m, opts.resamples, opts.seed))
        })
        .collect();
    let mut rows: Vec<Row> = pending
        .into_iter()
        .zip(comparisons)
        .map(|((mut row, _), c)| {
            if let Some(c) = c {
                row.delta = Some(c.delta);
                row.ci95 = Some(c.ci95);
                row.p_value = Some(c.p_value);
                row.test = Some(c.test.name());
                row.discordant = c.discordant;
            }
            row
        })
        .collect();
    let tested: Vec<usize> = (0..rows.len())
        .filter(|&i| rows[i].p_value.is_some())
        .collect();
    let p: Vec<f64> = tested.iter().map(|&i| rows[i].p_value.unwrap()).collect();
    for (i, adjusted) in tested.into_iter().zip(stats::holm(&p)) {
        rows[i].p_holm = Some(adjusted);
    }
    Ok(rows)
}
