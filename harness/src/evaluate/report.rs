//! The files a scoring run leaves: results.json, samples.jsonl, results.csv, results.md.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;
use serde::Serialize;
use serde_json::{json, Value};

use dtm_plugin_api::host::{Aggregate, MetricSummary};
use dtm_plugin_api::{Description, TaskInfo};

use super::source::TaskSource;
use super::store::{write_atomic, Sample};
use super::TaskRun;
use crate::engine::Stats;

/// Everything reported about one task.
#[derive(Serialize)]
pub struct TaskReport {
    pub task: String,
    pub plugin: Value,
    pub protocol: TaskInfo,
    pub headline_metric: String,
    pub n_items: usize,
    pub metrics: BTreeMap<String, Value>,
    pub subtasks: BTreeMap<String, BTreeMap<String, Value>>,
    pub groups: BTreeMap<String, BTreeMap<String, Value>>,
    pub data_files: BTreeMap<String, String>,
    pub wall_seconds: f64,
    pub items_computed: usize,
    pub tokens: Stats,
}

fn metric_json(m: &MetricSummary) -> Value {
    json!({"value": m.mean, "stderr": m.stderr, "n": m.n, "unavailable": m.unavailable})
}

fn table(t: &BTreeMap<String, MetricSummary>) -> BTreeMap<String, Value> {
    t.iter().map(|(k, v)| (k.clone(), metric_json(v))).collect()
}

impl TaskReport {
    /// `aggregate` turns the item scores into the reported tables (the task's own aggregation).
    pub fn new(
        task: &str,
        source: &dyn TaskSource,
        info: TaskInfo,
        run: &TaskRun,
        aggregate: &dyn Fn(&[dtm_plugin_api::ItemScore]) -> Aggregate,
        data_files: BTreeMap<String, String>,
    ) -> Self {
        let description: &Description = source.describe();
        let scores: Vec<_> = run.samples.iter().map(Sample::score).collect();
        let Aggregate {
            overall,
            subtasks,
            groups,
        } = aggregate(&scores);
        TaskReport {
            task: task.to_owned(),
            plugin: json!({"name": description.name, "version": description.version, "path": source.path().display().to_string(), "kind": source.kind().name()}),
            protocol: info,
            headline_metric: description.headline_metric.clone(),
            n_items: run.samples.len(),
            metrics: table(&overall),
            subtasks: if subtasks.len() > 1 {
                subtasks
                    .iter()
                    .map(|(k, v)| (k.clone(), table(v)))
                    .collect()
            } else {
                BTreeMap::new()
            },
            groups: groups.iter().map(|(k, v)| (k.clone(), table(v))).collect(),
            data_files,
            wall_seconds: run.wall_seconds,
            items_computed: run.computed,
            tokens: run.stats.clone(),
        }
    }

    fn headline(&self) -> (Option<f64>, Option<f64>) {
        let m = self.metrics.get(&self.headline_metric);
        let get = |k: &str| m.and_then(|m| m[k].as_f64());
        (get("value"), get("stderr"))
    }
}

/// Writes results.json, results.csv, results.md and samples.jsonl into `dir`, each atomically.
/// `errors`: the tasks that failed (loading, answering or scoring), with why; recorded in
/// results.json under `errors`.
pub fn write_all(
    dir: &Path,
    header: Value,
    reports: &[TaskReport],
    errors: &BTreeMap<String, String>,
    samples: &[&[Sample]],
    wall_seconds: f64,
) -> Result<()> {
    let mut results = header;
    results["tasks"] = serde_json::to_value(
        reports
            .iter()
            .map(|r| (r.task.clone(), r))
            .collect::<BTreeMap<_, _>>(),
    )?;
    results["errors"] = serde_json::to_value(errors)?;
    results["wall_seconds"] = json!(wall_seconds);
    write_atomic(
        &dir.join("results.json"),
        serde_json::to_string_pretty(&results)?.as_bytes(),
    )?;

    let mut csv = csv::Writer::from_writer(Vec::new());
    csv.write_record(["task", "scope", "metric", "value", "stderr", "n"])?;
    let fmt = |v: &Value| v.as_f64().map(|x| format!("{x}")).unwrap_or_default();
    for r in reports {
        let scopes = std::iter::once((r.task.clone(), &r.metrics))
            .chain(r.groups.iter().map(|(g, t)| (format!("group:{g}"), t)))
            .chain(r.subtasks.iter().map(|(s, t)| (s.clone(), t)));
        for (scope, t) in scopes {
            for (metric, v) in t {
                csv.write_record([
                    r.task.as_str(),
                    scope.as_str(),
                    metric,
                    &fmt(&v["value"]),
                    &fmt(&v["stderr"]),
                    &v["n"].to_string(),
                ])?;
            }
        }
    }
    write_atomic(&dir.join("results.csv"), &csv.into_inner()?)?;

    let mut md = String::from("| task | metric | value | ± stderr | n |\n|---|---|---|---|---|\n");
    for r in reports {
        let (value, stderr) = r.headline();
        let pct =
            |x: Option<f64>| x.map_or("unavailable".to_owned(), |x| format!("{:.2}", 100.0 * x));
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            r.task,
            r.headline_metric,
            pct(value),
            pct(stderr),
            r.n_items
        ));
    }
    write_atomic(&dir.join("results.md"), md.as_bytes())?;

    let mut lines = String::new();
    for s in samples.iter().flat_map(|s| s.iter()) {
        lines.push_str(&serde_json::to_string(s)?);
        lines.push('\n');
    }
    write_atomic(&dir.join("samples.jsonl"), lines.as_bytes())?;
    Ok(())
}
