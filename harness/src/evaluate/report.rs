//! The files a scoring run leaves: results.json, samples.jsonl, results.csv, results.md. They are
//! rebuilt from every finished task of the output folder, so a run with other tasks adds to an
//! earlier run's report and a failed task never erases a finished one.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use dtm_plugin_api::host::{Aggregate, MetricSummary};
use dtm_plugin_api::{Description, ItemScore, TaskInfo};

use super::error::{EvalError, Result};
use super::store::{write_atomic, ChunkCost, FinishedTask, Sample};
use crate::engine::Stats;

/// Everything reported about one task.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskReport {
    pub task: String,
    /// `{"name", "version", "path", "sha256", "kind"}` of the plugin library or YAML task file.
    pub plugin: Value,
    pub protocol: TaskInfo,
    pub headline_metric: String,
    pub n_items: usize,
    pub metrics: BTreeMap<String, Value>,
    pub subtasks: BTreeMap<String, BTreeMap<String, Value>>,
    pub groups: BTreeMap<String, BTreeMap<String, Value>>,
    /// sha256 of each data file the task read, relative to the data folder.
    pub data_files: BTreeMap<String, String>,
    /// Model time spent on the task's items, summed over every run that computed some.
    pub wall_seconds: f64,
    /// Items computed by the run that finished the task (the rest by earlier, interrupted ones).
    pub items_computed: usize,
    /// Tokens spent on the task's items, summed over every run that computed some.
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
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        task: &str,
        description: &Description,
        plugin: Value,
        info: TaskInfo,
        samples: &[Sample],
        cost: &ChunkCost,
        computed: usize,
        aggregate: &dyn Fn(&[ItemScore]) -> Aggregate,
        data_files: BTreeMap<String, String>,
    ) -> Self {
        let scores: Vec<_> = samples.iter().map(Sample::score).collect();
        let Aggregate {
            overall,
            subtasks,
            groups,
        } = aggregate(&scores);
        TaskReport {
            task: task.to_owned(),
            plugin,
            protocol: info,
            headline_metric: description.headline_metric.clone(),
            n_items: samples.len(),
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
            wall_seconds: cost.wall_seconds,
            items_computed: computed,
            tokens: cost.tokens.clone(),
        }
    }

    /// The headline metric's value and standard error.
    pub fn headline(&self) -> (Option<f64>, Option<f64>) {
        let m = self.metrics.get(&self.headline_metric);
        let get = |k: &str| m.and_then(|m| m[k].as_f64());
        (get("value"), get("stderr"))
    }
}

/// How every report shows a metric: a fraction with four decimals (console and results.md;
/// JSON and CSV carry the full value on the same scale).
pub fn format_value(x: Option<f64>) -> String {
    x.map_or("unavailable".to_owned(), |x| format!("{x:.4}"))
}

fn reports(tasks: &[FinishedTask]) -> Result<Vec<TaskReport>> {
    tasks
        .iter()
        .map(|t| {
            serde_json::from_value(t.report.clone()).map_err(|e| EvalError::Corrupt {
                path: format!("report of {}", t.report["task"]).into(),
                problem: e.to_string(),
            })
        })
        .collect()
}

/// `limit 20, max_new_tokens 256, ...` from the header's options (tasks left out).
fn settings_line(options: &Value) -> String {
    let Some(o) = options.as_object() else {
        return String::new();
    };
    o.iter()
        .filter(|(k, _)| k.as_str() != "tasks")
        .map(|(k, v)| {
            let v = match v {
                Value::Null => "default".to_owned(),
                Value::String(s) => s.clone(),
                Value::Object(m) if m.is_empty() => "none".to_owned(),
                other => other.to_string(),
            };
            format!("{k} {v}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `` `PATH` (sha256 `…`, ARCH) ``, and the adapter when there is one.
fn model_line(model: &Value) -> String {
    let mut line = format!(
        "`{}` (sha256 `{}`, {})",
        model["path"].as_str().unwrap_or("?"),
        model["sha256"].as_str().unwrap_or("?"),
        model["architecture"].as_str().unwrap_or("?"),
    );
    if let Some(a) = model["adapter"].as_object() {
        line.push_str(&format!(
            " with adapter `{}` (sha256 `{}`)",
            a.get("path").and_then(Value::as_str).unwrap_or("?"),
            a.get("sha256").and_then(Value::as_str).unwrap_or("?"),
        ));
    }
    line
}

fn markdown(header: &Value, reports: &[TaskReport]) -> String {
    let model = &header["model"];
    let mut md = String::from("# harness score\n\n");
    match model["members"].as_array() {
        Some(members) => {
            md.push_str(&format!(
                "- model: an ensemble ({}) of\n",
                model["ensemble"].as_str().unwrap_or("?")
            ));
            for m in members {
                md.push_str(&format!("  - {}\n", model_line(m)));
            }
        }
        None => md.push_str(&format!("- model: {}\n", model_line(model))),
    }
    md.push_str(&format!(
        "- settings: {}\n",
        settings_line(&header["options"])
    ));
    md.push_str(&format!(
        "- harness {}; values are fractions (1.0 = every item right), as in results.json and results.csv\n\n",
        header["harness_version"].as_str().unwrap_or("?")
    ));
    md.push_str("| task | metric | value | ± stderr | n |\n|---|---|---|---|---|\n");
    for r in reports {
        let (value, stderr) = r.headline();
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            r.task,
            r.headline_metric,
            format_value(value),
            format_value(stderr),
            r.n_items
        ));
    }
    md
}

fn csv(reports: &[TaskReport]) -> Result<Vec<u8>> {
    let mut csv = csv::Writer::from_writer(Vec::new());
    let io = |e: csv::Error| EvalError::Corrupt {
        path: "results.csv".into(),
        problem: e.to_string(),
    };
    csv.write_record(["task", "scope", "metric", "value", "stderr", "n"])
        .map_err(io)?;
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
                ])
                .map_err(io)?;
            }
        }
    }
    csv.into_inner().map_err(|e| EvalError::Corrupt {
        path: "results.csv".into(),
        problem: e.to_string(),
    })
}

/// Writes results.json, results.csv, results.md and samples.jsonl into `dir`, each atomically,
/// from every finished task. `errors`: the tasks of this run that failed (loading, answering or
/// scoring), with why; recorded in results.json under `errors`.
pub fn write_all(
    dir: &Path,
    header: &Value,
    tasks: &[FinishedTask],
    errors: &BTreeMap<String, String>,
) -> Result<Vec<TaskReport>> {
    let reports = reports(tasks)?;
    let mut results = header.clone();
    results["tasks"] = tasks
        .iter()
        .map(|t| {
            (
                t.report["task"].as_str().unwrap_or("?").to_owned(),
                t.report.clone(),
            )
        })
        .collect::<serde_json::Map<_, _>>()
        .into();
    results["errors"] = json!(errors);
    results["wall_seconds"] = json!(reports.iter().map(|r| r.wall_seconds).sum::<f64>());
    write_atomic(
        &dir.join("results.json"),
        serde_json::to_string_pretty(&results)
            .expect("serialisable")
            .as_bytes(),
    )?;
    write_atomic(&dir.join("results.csv"), &csv(&reports)?)?;
    write_atomic(
        &dir.join("results.md"),
        markdown(header, &reports).as_bytes(),
    )?;
    let mut lines = String::new();
    for s in tasks.iter().flat_map(|t| &t.samples) {
        lines.push_str(&serde_json::to_string(s).expect("serialisable"));
        lines.push('\n');
    }
    write_atomic(&dir.join("samples.jsonl"), lines.as_bytes())?;
    Ok(reports)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dtm_plugin_api::OutputType;

    fn sample(doc_id: usize, subtask: &str, group: &str, acc: f64) -> Sample {
        Sample {
            task: "t".into(),
            doc_id,
            subtask: subtask.into(),
            requests: vec![],
            responses: vec![],
            programs: vec![],
            outcomes: vec![],
            executions: vec![],
            extracted: BTreeMap::new(),
            gold: "A".into(),
            metrics: BTreeMap::from([("acc".to_string(), Some(acc))]),
            groups: vec![group.into()],
        }
    }

    /// Per task, subtask and group: mean and sample standard error (sd / sqrt(n)), by hand.
    #[test]
    fn per_task_statistics_are_means_with_sample_standard_errors() {
        let samples = [
            sample(0, "t:a", "g1", 1.0),
            sample(1, "t:a", "g1", 0.0),
            sample(2, "t:b", "g2", 1.0),
            sample(3, "t:b", "g1", 1.0),
        ];
        let description = Description {
            name: "t".into(),
            version: "1".into(),
            summary: String::new(),
            output_type: OutputType::MultipleChoice,
            metrics: vec![],
            headline_metric: "acc".into(),
            default_num_fewshot: 0,
            max_num_fewshot: 0,
            subtasks: vec![],
            groups: vec![],
            options: vec![],
            program_timeout_s: None,
        };
        let info = TaskInfo {
            name: "t".into(),
            num_fewshot: 0,
            limit: None,
            max_new_tokens: None,
            flags: BTreeMap::new(),
            num_items: 4,
            data_files: vec![],
        };
        let cost = ChunkCost {
            tokens: Stats {
                requested: 10,
                forwarded: 7,
                padding: 1,
                generated: 3,
                decode_steps: 2,
            },
            wall_seconds: 2.5,
        };
        let r = TaskReport::new(
            "t",
            &description,
            json!({}),
            info,
            &samples,
            &cost,
            4,
            &dtm_plugin_api::host::aggregate,
            BTreeMap::new(),
        );
        let close = |v: &Value, want: f64| (v.as_f64().unwrap() - want).abs() < 1e-12;
        // Overall: 1, 0, 1, 1 → mean 0.75; variance (3·0.0625 + 0.5625) / 3 = 0.25; se √(0.25/4) = 0.25.
        assert!(close(&r.metrics["acc"]["value"], 0.75), "{:?}", r.metrics);
        assert!(close(&r.metrics["acc"]["stderr"], 0.25), "{:?}", r.metrics);
        assert_eq!(r.metrics["acc"]["n"], 4);
        // t:a: 1, 0 → 0.5 ± √(0.5/2) = 0.5; t:b: 1, 1 → 1 ± 0.
        assert!(close(&r.subtasks["t:a"]["acc"]["value"], 0.5));
        assert!(close(&r.subtasks["t:a"]["acc"]["stderr"], 0.5));
        assert!(close(&r.subtasks["t:b"]["acc"]["value"], 1.0));
        assert!(close(&r.subtasks["t:b"]["acc"]["stderr"], 0.0));
        // g1: 1, 0, 1 → 2/3 ± √((2·1/9 + 4/9) / 2 / 3) = √(1/9) = 1/3; g2: one item, no stderr.
        assert!(close(&r.groups["g1"]["acc"]["value"], 2.0 / 3.0));
        assert!(close(&r.groups["g1"]["acc"]["stderr"], 1.0 / 3.0));
        assert!(r.groups["g2"]["acc"]["stderr"].is_null());
        assert_eq!((r.n_items, r.items_computed), (4, 4));
        assert_eq!((r.tokens.generated, r.wall_seconds), (3, 2.5));
        assert_eq!(r.headline(), (Some(0.75), Some(0.25)));
    }

    #[test]
    fn every_report_shows_values_on_one_scale() {
        assert_eq!(format_value(Some(0.123456)), "0.1235");
        assert_eq!(format_value(None), "unavailable");
    }
}
