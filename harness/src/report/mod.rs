//! `harness report`: many `harness score` runs side by side, with paired significance.
//!
//! A reproduction is a comparison of methods on the same items. Runs are paired item by item on
//! (task, doc_id); each method's difference to the baseline gets a paired bootstrap confidence
//! interval and a paired test (exact McNemar for 0/1 metrics, sign-flip permutation for graded
//! ones), Holm-corrected across the table. Runs that scored different items, with different
//! protocol settings or from different data files are refused unless asked otherwise. The
//! trainer's `train_log.jsonl` files are read, not imported, for the loss curves.
//!
//! [`build`] computes everything in memory; [`write`] then writes `report.md`, `report.csv`,
//! `report.json` and `plots/*.svg`, each file atomically.

mod error;
mod error_sets;
mod output;
mod pairing;
mod paper;
pub mod plots;
mod runs;
pub mod stats;
mod table;
mod trainlog;

use std::path::PathBuf;

pub use error::ReportError;
pub use error_sets::ErrorSets;
pub use output::write;
pub use runs::{Run, RunSpec};
pub use table::{Row, Scope};
pub use trainlog::TrainSummary;

use plots::Plot;

/// What `harness report` was asked for.
#[derive(Clone, Debug)]
pub struct Options {
    /// The run every other is compared with.
    pub baseline: String,
    /// Only these tasks (all the runs hold when `None`).
    pub tasks: Option<Vec<String>>,
    /// Also a row per subtask (MMLU subjects, BBH tasks).
    pub subtasks: bool,
    /// Compare differing runs on their common items instead of refusing them.
    pub allow_mismatch: bool,
    /// Print the paper's Table 1 beside ours.
    pub paper_reference: bool,
    pub seed: u64,
    /// Bootstrap resamples (and sampled sign patterns when the sign-flip test cannot enumerate).
    pub resamples: usize,
    /// `(name, train_log.jsonl)` of training runs, for the loss curves.
    pub train_logs: Vec<(String, PathBuf)>,
    /// Sub-model runs whose error sets are compared (Figure 8).
    pub submodels: Vec<String>,
    /// Merged runs shown by how many sub-models got each item wrong (Figure 9).
    pub merged: Vec<String>,
    /// Tasks for Figures 8 and 9 (default: every task all those runs hold).
    pub error_tasks: Vec<String>,
}

/// A finished report, ready to be written.
pub struct Report {
    pub options: Options,
    pub runs: Vec<Run>,
    pub scopes: Vec<Scope>,
    pub rows: Vec<Row>,
    pub train_logs: Vec<TrainSummary>,
    pub error_sets: Vec<ErrorSets>,
    pub plots: Vec<Plot>,
}

fn check_names<'a>(what: &str, names: impl Iterator<Item = &'a str>) -> Result<(), ReportError> {
    let mut seen = std::collections::BTreeSet::new();
    for n in names {
        if !seen.insert(n) {
            return Err(ReportError::Usage(format!(
                "two {what} are named `{n}`; name them NAME=…"
            )));
        }
    }
    Ok(())
}

/// Loads the runs and train logs and computes the table, the statistics and the figures.
pub fn build(specs: &[RunSpec], options: &Options) -> Result<Report, ReportError> {
    if specs.is_empty() {
        return Err(ReportError::Usage("no runs given".into()));
    }
    check_names("runs", specs.iter().map(|s| s.name.as_str()))?;
    check_names(
        "train logs",
        options.train_logs.iter().map(|(n, _)| n.as_str()),
    )?;
    if !specs.iter().any(|s| s.name == options.baseline) {
        return Err(ReportError::Usage(format!(
            "--baseline `{}` is not among the runs ({})",
            options.baseline,
            specs
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    if options.resamples == 0 {
        return Err(ReportError::Usage("--resamples must be at least 1".into()));
    }
    if !options.merged.is_empty() && options.submodels.is_empty() {
        return Err(ReportError::Usage(
            "--merged needs --submodels (the runs whose errors it is shown against)".into(),
        ));
    }
    let runs: Vec<Run> = specs.iter().map(runs::load).collect::<Result<_, _>>()?;
    let scopes = table::scopes(&runs, options.tasks.as_deref(), options.subtasks)?;
    let rows = table::rows(
        &runs,
        &options.baseline,
        &scopes,
        table::StatsOptions {
            resamples: options.resamples,
            seed: options.seed,
            allow_mismatch: options.allow_mismatch,
        },
    )?;

    let methods: Vec<String> = runs.iter().map(|r| r.name.clone()).collect();
    let tasks: Vec<String> = scopes
        .iter()
        .filter(|s| s.subtask.is_none())
        .map(|s| s.task.clone())
        .collect();
    let mut plots = vec![plots::scores(&rows, &methods, &tasks)?];
    plots.extend(plots::setting_plots(&runs, &rows, &tasks)?);

    let logs: Vec<trainlog::TrainLog> = options
        .train_logs
        .iter()
        .map(|(name, path)| trainlog::load(name, path))
        .collect::<Result<_, _>>()?;
    if !logs.is_empty() {
        plots.push(plots::loss_curves(&logs)?);
    }

    let mut error_sets = Vec::new();
    if !options.submodels.is_empty() {
        let error_tasks = if options.error_tasks.is_empty() {
            let involved: Vec<&Run> = runs
                .iter()
                .filter(|r| options.submodels.contains(&r.name) || options.merged.contains(&r.name))
                .collect();
            let shared: Vec<String> = tasks
                .iter()
                .filter(|t| involved.iter().all(|r| r.tasks.contains_key(*t)))
                .cloned()
                .collect();
            if shared.is_empty() {
                return Err(ReportError::Usage(
                    "--submodels: no task is held by every sub-model and merged run".into(),
                ));
            }
            shared
        } else {
            options.error_tasks.clone()
        };
        for task in &error_tasks {
            let sets = error_sets::error_sets(
                &runs,
                task,
                &options.submodels,
                &options.merged,
                options.allow_mismatch,
            )?;
            plots.push(plots::upset(&sets)?);
            if !sets.merged.is_empty() {
                plots.push(plots::by_errors(&sets)?);
            }
            error_sets.push(sets);
        }
    }
    Ok(Report {
        options: options.clone(),
        runs,
        scopes,
        rows,
        train_logs: logs.iter().map(trainlog::TrainLog::summary).collect(),
        error_sets,
        plots,
    })
}
