//! Reading `harness score` output folders: `results.json` for each task's protocol settings and
//! data hashes, `samples.jsonl` for the per-item metrics.
//!
//! The structs here are this module's own view of those files (only the fields a report needs),
//! so the scorer can add fields without breaking reports.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;
use serde_json::Value;

use super::error::ReportError;

/// A run as named on the command line: `DIR`, `NAME=DIR`, either followed by `@key=value,…`.
#[derive(Clone, Debug, PartialEq)]
pub struct RunSpec {
    pub name: String,
    pub dir: PathBuf,
    /// Settings the run was made with (`k=4`, `data=10000`, `series=dtm`), for the plots of a
    /// metric against a varied setting.
    pub labels: BTreeMap<String, String>,
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | '+'))
}

fn parse_labels(s: &str) -> Option<BTreeMap<String, String>> {
    s.split(',')
        .map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (is_name(k) && !v.is_empty()).then(|| (k.to_owned(), v.to_owned()))
        })
        .collect()
}

impl FromStr for RunSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        // A trailing `@key=value,…` is labels only when it parses as such, so a folder whose
        // name holds an `@` still works.
        let (body, labels) = match s.rsplit_once('@') {
            Some((body, tail)) => match parse_labels(tail) {
                Some(labels) => (body, labels),
                None => (s, BTreeMap::new()),
            },
            None => (s, BTreeMap::new()),
        };
        let (name, dir) = match body.split_once('=') {
            Some((name, dir)) if is_name(name) => (name.to_owned(), PathBuf::from(dir)),
            _ => {
                let dir = PathBuf::from(body);
                let name = dir
                    .file_name()
                    .and_then(|n| n.to_str())
                    .filter(|n| is_name(n))
                    .ok_or_else(|| {
                        format!("{s:?}: cannot name this run from its folder; write NAME=DIR")
                    })?
                    .to_owned();
                (name, dir)
            }
        };
        if dir.as_os_str().is_empty() {
            return Err(format!("{s:?}: no folder given"));
        }
        Ok(RunSpec { name, dir, labels })
    }
}

/// One scored item: its subtask and per-item metric values (`None` = unavailable).
#[derive(Clone, Debug, PartialEq)]
pub struct ItemScores {
    pub subtask: String,
    pub metrics: BTreeMap<String, Option<f64>>,
}

/// One task of one run.
#[derive(Clone, Debug)]
pub struct TaskResult {
    pub headline_metric: String,
    pub plugin: String,
    pub plugin_version: String,
    /// Protocol settings that must agree between compared runs: everything the scorer records
    /// under `protocol` except which items were taken (`limit`, `num_items`: the item sets are
    /// compared directly) and the data file names (their hashes are compared).
    pub settings: BTreeMap<String, Value>,
    /// Data file (relative to the data folder) → sha256.
    pub data_files: BTreeMap<String, String>,
    pub items: BTreeMap<usize, ItemScores>,
}

impl TaskResult {
    /// The headline metric of the items in `scope` (all items when `None`), by doc_id.
    pub fn headline(&self, subtask: Option<&str>) -> BTreeMap<usize, Option<f64>> {
        self.items
            .iter()
            .filter(|(_, i)| subtask.is_none_or(|s| i.subtask == s))
            .map(|(&id, i)| (id, i.metrics.get(&self.headline_metric).copied().flatten()))
            .collect()
    }

    /// Subtasks of the items, when there is more than one.
    pub fn subtasks(&self) -> Vec<String> {
        let mut s: Vec<String> = self.items.values().map(|i| i.subtask.clone()).collect();
        s.sort();
        s.dedup();
        if s.len() > 1 {
            s
        } else {
            Vec::new()
        }
    }
}

#[derive(Clone, Debug)]
pub struct Run {
    pub name: String,
    pub dir: PathBuf,
    pub labels: BTreeMap<String, String>,
    pub tasks: BTreeMap<String, TaskResult>,
}

#[derive(Deserialize)]
struct ResultsFile {
    tasks: BTreeMap<String, TaskEntry>,
}

#[derive(Deserialize)]
struct TaskEntry {
    headline_metric: String,
    plugin: PluginEntry,
    protocol: BTreeMap<String, Value>,
    #[serde(default)]
    data_files: BTreeMap<String, String>,
    n_items: usize,
}

#[derive(Deserialize)]
struct PluginEntry {
    name: String,
    version: String,
}

#[derive(Deserialize)]
struct SampleLine {
    task: String,
    doc_id: usize,
    #[serde(default)]
    subtask: String,
    metrics: BTreeMap<String, Option<f64>>,
}

fn read(path: &Path) -> Result<String, ReportError> {
    std::fs::read_to_string(path).map_err(|source| ReportError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Loads the run folder named by `spec`.
pub fn load(spec: &RunSpec) -> Result<Run, ReportError> {
    let results_path = spec.dir.join("results.json");
    let results: ResultsFile =
        serde_json::from_str(&read(&results_path)?).map_err(|e| ReportError::Malformed {
            path: results_path.clone(),
            line: e.line(),
            problem: format!("not a `harness score` results.json: {e}"),
        })?;
    let samples_path = spec.dir.join("samples.jsonl");
    let mut items: BTreeMap<String, BTreeMap<usize, ItemScores>> = BTreeMap::new();
    for (n, line) in read(&samples_path)?.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let malformed = |problem: String| ReportError::Malformed {
            path: samples_path.clone(),
            line: n + 1,
            problem,
        };
        let s: SampleLine = serde_json::from_str(line)
            .map_err(|e| malformed(format!("not a `harness score` sample: {e}")))?;
        let scores = ItemScores {
            subtask: if s.subtask.is_empty() {
                s.task.clone()
            } else {
                s.subtask
            },
            metrics: s.metrics,
        };
        if items
            .entry(s.task.clone())
            .or_default()
            .insert(s.doc_id, scores)
            .is_some()
        {
            return Err(malformed(format!(
                "task `{}` doc_id {} appears twice",
                s.task, s.doc_id
            )));
        }
    }
    let mut tasks = BTreeMap::new();
    for (name, entry) in results.tasks {
        let task_items = items.remove(&name).unwrap_or_default();
        if task_items.len() != entry.n_items {
            return Err(ReportError::Inconsistent {
                path: samples_path.clone(),
                problem: format!(
                    "holds {} items of task `{name}`, but results.json says {}",
                    task_items.len(),
                    entry.n_items
                ),
            });
        }
        let mut settings = entry.protocol;
        for k in ["limit", "num_items", "data_files"] {
            settings.remove(k);
        }
        tasks.insert(
            name,
            TaskResult {
                headline_metric: entry.headline_metric,
                plugin: entry.plugin.name,
                plugin_version: entry.plugin.version,
                settings,
                data_files: entry.data_files,
                items: task_items,
            },
        );
    }
    if let Some(task) = items.keys().next() {
        return Err(ReportError::Inconsistent {
            path: samples_path,
            problem: format!("has items of task `{task}`, which results.json does not list"),
        });
    }
    Ok(Run {
        name: spec.name.clone(),
        dir: spec.dir.clone(),
        labels: spec.labels.clone(),
        tasks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_specs() {
        let s: RunSpec = "runs/vanilla".parse().unwrap();
        assert_eq!(
            (s.name.as_str(), s.dir.as_path()),
            ("vanilla", Path::new("runs/vanilla"))
        );
        let s: RunSpec = "dtm=out/a@k=4,series=dtm".parse().unwrap();
        assert_eq!(s.name, "dtm");
        assert_eq!(s.dir, Path::new("out/a"));
        assert_eq!(s.labels["k"], "4");
        assert_eq!(s.labels["series"], "dtm");
        // An `@` that does not start labels belongs to the folder name.
        let s: RunSpec = "x=out/a@b".parse().unwrap();
        assert_eq!(s.dir, Path::new("out/a@b"));
        assert!(s.labels.is_empty());
        assert!("x=".parse::<RunSpec>().is_err());
    }
}
