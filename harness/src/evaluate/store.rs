//! The output folder of a scoring run, and how a killed run resumes.
//!
//! ```text
//! DIR/.progress/lock                  held (flock) by the run writing DIR; the OS drops it on exit
//! DIR/.progress/run.json              what every task of DIR shares: model hash, options
//! DIR/.progress/<task>/task.json      what the task's items depend on: plugin, data, options
//! DIR/.progress/<task>/<first>-<n>.jsonl  finished items, one chunk per file
//! DIR/.progress/<task>/report.json    the task's report, once every item is done
//! ```
//!
//! Each file is written to a temporary name and renamed, so it is either wholly there or not at
//! all: a run killed at any moment loses at most the chunk in flight, and a restart with the same
//! command skips what is saved. A restart whose model, options, plugin or data differ from what
//! the saved work was computed with is refused, naming what changed. The reports of DIR are
//! rebuilt from every finished task in it, so a later run with other tasks adds to them.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use dtm_plugin_api::{ItemScore, Outcome};

use super::error::{EvalError, Result};
use crate::engine::Stats;

/// Version of this layout; a folder written by another version is refused, not misread.
const FORMAT: u64 = 2;

/// How one program ran in the sandbox.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Execution {
    pub status: Outcome,
    /// The limit that ended the program: `fuel` (its deterministic work budget), `wall` (the
    /// wall-clock safety net) or `memory`; absent when none did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<String>,
    /// `AssertionError`, `IndentationError`, ... (absent on a pass).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    /// The end of the program's stderr (where the traceback is), bounded.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stderr_tail: String,
    /// The work the program did, in fuel units (deterministic, unlike its wall time, so that a
    /// resumed or repeated run writes the same samples).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
}

/// One scored item as `samples.jsonl` holds it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Sample {
    pub task: String,
    pub doc_id: usize,
    pub subtask: String,
    /// `{"context", "continuation"}`, `{"context", "until", "max_new_tokens"}` or `{"text"}`.
    pub requests: Vec<Value>,
    /// `{"logprob", "is_greedy"}`, the generated text, or `{"logprob"}` (rolling).
    pub responses: Vec<Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub programs: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outcomes: Vec<Outcome>,
    /// How each program ran: error type and message, the limit that ended it, its stderr's end.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub executions: Vec<Execution>,
    pub extracted: BTreeMap<String, String>,
    pub gold: String,
    pub metrics: BTreeMap<String, Option<f64>>,
    #[serde(default)]
    pub groups: Vec<String>,
}

impl Sample {
    pub fn score(&self) -> ItemScore {
        ItemScore {
            doc_id: self.doc_id,
            subtask: self.subtask.clone(),
            metrics: self.metrics.clone(),
            extracted: self.extracted.clone(),
            gold: self.gold.clone(),
            groups: self.groups.clone(),
        }
    }
}

/// The cost of one saved chunk, written as its first line.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ChunkCost {
    pub tokens: Stats,
    pub wall_seconds: f64,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ChunkLine {
    Header { chunk: ChunkCost },
    Sample(Box<Sample>),
}

/// Everything saved of one task.
#[derive(Debug, Default)]
pub struct Saved {
    pub samples: BTreeMap<usize, Sample>,
    /// Summed over every chunk, whichever run computed it.
    pub cost: ChunkCost,
}

/// A finished task's report as saved, with its samples.
pub struct FinishedTask {
    pub report: Value,
    pub samples: Vec<Sample>,
}

pub struct RunStore {
    dir: PathBuf,
    progress: PathBuf,
    // Held for the store's life: the OS releases the lock when the process ends, however.
    _lock: File,
}

/// Writes `contents` to `path` through a temporary file in the same directory and a rename.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .map_err(|e| EvalError::io(dir, "cannot create a temporary file", e))?;
    tmp.write_all(contents)
        .and_then(|_| tmp.as_file().sync_all())
        .map_err(|e| EvalError::io(path, "cannot write", e))?;
    tmp.persist(path)
        .map_err(|e| EvalError::io(path, "cannot rename into place", e.error))?;
    Ok(())
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| EvalError::io(path, "cannot read", e))?;
    serde_json::from_str(&text).map_err(|e| EvalError::Corrupt {
        path: path.to_owned(),
        problem: format!("not valid JSON ({e})"),
    })
}

/// A run's `run.json`, refused when another version of the harness wrote it.
fn read_run(path: &Path) -> Result<Value> {
    let run = read_json(path)?;
    if run.get("format") != Some(&FORMAT.into()) {
        return Err(EvalError::Corrupt {
            path: path.to_owned(),
            problem: format!(
                "written by another version of the harness (progress format {}, this one reads {FORMAT})",
                run.get("format").map_or("1".into(), Value::to_string)
            ),
        });
    }
    Ok(run)
}

fn write_json(path: &Path, value: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).expect("JSON values serialise");
    write_atomic(path, text.as_bytes())
}

/// Takes the folder's lock, or says who holds it.
fn lock(progress: &Path, dir: &Path) -> Result<File> {
    let path = progress.join("lock");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| EvalError::io(&path, "cannot open the lock file", e))?;
    match file.try_lock() {
        Ok(()) => {
            // Who holds it, for the message a second run prints. The lock itself is the flock,
            // which the OS drops when this process ends, however it ends.
            let note = format!("process {}\n", std::process::id());
            file.set_len(0)
                .and_then(|()| (&file).write_all(note.as_bytes()))
                .map_err(|e| EvalError::io(&path, "cannot write the lock file", e))?;
            Ok(file)
        }
        Err(TryLockError::WouldBlock) => Err(EvalError::Locked {
            dir: dir.to_owned(),
            holder: std::fs::read_to_string(&path)
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty()),
        }),
        Err(TryLockError::Error(e)) => Err(EvalError::io(&path, "cannot lock", e)),
    }
}

impl RunStore {
    /// Opens (or creates) `dir` and takes its lock. `identity` must equal the one of the work
    /// already saved there.
    pub fn open(dir: &Path, identity: &Value) -> Result<Self> {
        let progress = dir.join(".progress");
        std::fs::create_dir_all(&progress)
            .map_err(|e| EvalError::io(&progress, "cannot create", e))?;
        let lock = lock(&progress, dir)?;
        let mut identity = identity.clone();
        identity["format"] = FORMAT.into();
        let run = progress.join("run.json");
        if run.exists() {
            let earlier = read_run(&run)?;
            let changes = differences(&earlier, &identity, "");
            if !changes.is_empty() {
                return Err(EvalError::Mismatch {
                    dir: dir.to_owned(),
                    what: "a run".into(),
                    changes: changes.join(", "),
                    remove: progress,
                });
            }
        } else {
            write_json(&run, &identity)?;
        }
        Ok(Self {
            dir: dir.to_owned(),
            progress,
            _lock: lock,
        })
    }

    /// Opens the finished or interrupted run in `dir` to read it, taking its lock (a run still
    /// writing it is refused); returns its identity as [`RunStore::open`] was given it.
    pub fn open_existing(dir: &Path) -> Result<(Self, Value)> {
        let progress = dir.join(".progress");
        let run = progress.join("run.json");
        if !run.is_file() {
            return Err(EvalError::Corrupt {
                path: run,
                problem: "missing: not the output folder of `harness score`".into(),
            });
        }
        let lock = lock(&progress, dir)?;
        let mut identity = read_run(&run)?;
        if let Some(o) = identity.as_object_mut() {
            o.remove("format");
        }
        let store = Self {
            dir: dir.to_owned(),
            progress,
            _lock: lock,
        };
        Ok((store, identity))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn task_dir(&self, task: &str) -> PathBuf {
        self.progress.join(task.replace([':', '/'], "_"))
    }

    /// Checks that the saved work of `task` (if any) was computed from the same plugin, data and
    /// options as `identity` says the task is now; records `identity` for a task not begun.
    pub fn begin_task(&self, task: &str, identity: &Value) -> Result<()> {
        let dir = self.task_dir(task);
        std::fs::create_dir_all(&dir).map_err(|e| EvalError::io(&dir, "cannot create", e))?;
        let path = dir.join("task.json");
        if path.exists() {
            let earlier = read_json(&path)?;
            let changes = differences(&earlier, identity, "");
            if !changes.is_empty() {
                return Err(EvalError::Mismatch {
                    dir: self.dir.clone(),
                    what: format!("work on {task}"),
                    changes: changes.join(", "),
                    remove: dir,
                });
            }
            Ok(())
        } else {
            write_json(&path, identity)
        }
    }

    /// The identity [`RunStore::begin_task`] recorded for `task`, if it was begun.
    pub fn task_identity(&self, task: &str) -> Result<Option<Value>> {
        let path = self.task_dir(task).join("task.json");
        path.is_file().then(|| read_json(&path)).transpose()
    }

    /// Items of `task` saved by earlier (possibly killed) runs, by doc_id, and what they cost.
    pub fn finished(&self, task: &str) -> Result<Saved> {
        let mut out = Saved::default();
        for (cost, samples) in self.chunks(task)? {
            out.cost.tokens.add(&cost.tokens);
            out.cost.wall_seconds += cost.wall_seconds;
            for s in samples {
                out.samples.insert(s.doc_id, s);
            }
        }
        Ok(out)
    }

    /// The saved chunks of `task` as they were saved: each one's cost and items.
    pub fn chunks(&self, task: &str) -> Result<Vec<(ChunkCost, Vec<Sample>)>> {
        let dir = self.task_dir(task);
        if !dir.exists() {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for path in chunk_files(&dir)? {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| EvalError::io(&path, "cannot read", e))?;
            let (mut cost, mut samples) = (ChunkCost::default(), Vec::new());
            for (n, line) in text.lines().enumerate() {
                let line: ChunkLine =
                    serde_json::from_str(line).map_err(|e| EvalError::Corrupt {
                        path: path.clone(),
                        problem: format!("line {}: not a saved sample ({e})", n + 1),
                    })?;
                match line {
                    ChunkLine::Header { chunk } => {
                        cost.tokens.add(&chunk.tokens);
                        cost.wall_seconds += chunk.wall_seconds;
                    }
                    ChunkLine::Sample(s) => samples.push(*s),
                }
            }
            out.push((cost, samples));
        }
        Ok(out)
    }

    /// Deletes the saved items and the report of `task` (its identity stays): for work that is
    /// written again whole from elsewhere (`harness merge-shards`).
    pub fn forget_items(&self, task: &str) -> Result<()> {
        let dir = self.task_dir(task);
        if !dir.exists() {
            return Ok(());
        }
        let report = dir.join("report.json");
        for path in chunk_files(&dir)?.into_iter().chain([report]) {
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(EvalError::io(&path, "cannot delete", e))
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Saves a chunk of finished items of `task`, with what computing them cost, atomically.
    pub fn save(&self, task: &str, samples: &[Sample], cost: &ChunkCost) -> Result<()> {
        let Some(first) = samples.first() else {
            return Ok(());
        };
        let dir = self.task_dir(task);
        std::fs::create_dir_all(&dir).map_err(|e| EvalError::io(&dir, "cannot create", e))?;
        let mut text =
            serde_json::to_string(&serde_json::json!({ "chunk": cost })).expect("serialisable");
        text.push('\n');
        for s in samples {
            text.push_str(&serde_json::to_string(s).expect("samples serialise"));
            text.push('\n');
        }
        write_atomic(
            &dir.join(format!("{:08}-{}.jsonl", first.doc_id, samples.len())),
            text.as_bytes(),
        )
    }

    /// Records `task` as finished, with its report.
    pub fn finish_task(&self, task: &str, report: &Value) -> Result<()> {
        write_json(&self.task_dir(task).join("report.json"), report)
    }

    /// Every finished task of the folder, in name order, with its samples in doc_id order.
    pub fn finished_tasks(&self) -> Result<Vec<FinishedTask>> {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(&self.progress)
            .map_err(|e| EvalError::io(&self.progress, "cannot list", e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.join("report.json").is_file())
            .collect();
        dirs.sort();
        let mut out = Vec::new();
        for dir in dirs {
            let report = read_json(&dir.join("report.json"))?;
            let task = report["task"]
                .as_str()
                .ok_or_else(|| EvalError::Corrupt {
                    path: dir.join("report.json"),
                    problem: "no `task` field".into(),
                })?
                .to_owned();
            let samples = self.finished(&task)?.samples.into_values().collect();
            out.push(FinishedTask { report, samples });
        }
        Ok(out)
    }
}

/// The chunk files of a task folder (temporary files left by a kill are not chunks).
pub fn chunk_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| EvalError::io(dir, "cannot list", e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("jsonl"))
        .collect();
    files.sort();
    Ok(files)
}

/// Human-readable differences between two JSON values: `limit (2, now 3)`, nested keys joined
/// with dots (`data_files.gsm8k/test.jsonl (3730d312…, now 0f0e91c4…)`).
pub fn differences(earlier: &Value, now: &Value, prefix: &str) -> Vec<String> {
    match (earlier, now) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter()
                .flat_map(|k| {
                    let name = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    differences(
                        a.get(k).unwrap_or(&Value::Null),
                        b.get(k).unwrap_or(&Value::Null),
                        &name,
                    )
                })
                .collect()
        }
        (a, b) if a == b => Vec::new(),
        (a, b) => vec![format!("{prefix} ({}, now {})", short(a), short(b))],
    }
}

fn short(v: &Value) -> String {
    match v {
        Value::Null => "none".into(),
        Value::String(s) if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) => {
            format!("sha256 {}…", &s[..12])
        }
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(doc_id: usize) -> Sample {
        Sample {
            task: "t".into(),
            doc_id,
            subtask: "t".into(),
            requests: vec![],
            responses: vec![],
            programs: vec![],
            outcomes: vec![],
            executions: vec![],
            extracted: BTreeMap::new(),
            gold: "A".into(),
            metrics: BTreeMap::from([("acc".to_string(), Some(1.0))]),
            groups: vec![],
        }
    }

    fn cost(generated: usize) -> ChunkCost {
        ChunkCost {
            tokens: Stats {
                generated,
                ..Stats::default()
            },
            wall_seconds: 1.5,
        }
    }

    #[test]
    fn saved_chunks_come_back_with_their_cost_and_other_settings_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let fp = serde_json::json!({"model": "m", "limit": 3});
        {
            let store = RunStore::open(dir.path(), &fp).unwrap();
            store.save("t", &[sample(0), sample(1)], &cost(5)).unwrap();
            store.save("t", &[sample(2)], &cost(7)).unwrap();
            // A temporary file left by a kill is ignored.
            std::fs::write(store.task_dir("t").join(".tmpXYZ"), "{half").unwrap();
        }
        let again = RunStore::open(dir.path(), &fp).unwrap();
        let saved = again.finished("t").unwrap();
        assert_eq!(
            saved.samples.keys().copied().collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
        assert_eq!(saved.cost.tokens.generated, 12);
        assert_eq!(saved.cost.wall_seconds, 3.0);
        drop(again);
        let other = serde_json::json!({"model": "m", "limit": 4});
        let err = RunStore::open(dir.path(), &other)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("limit (3, now 4)"), "{err}");
    }

    #[test]
    fn a_folder_of_another_harness_version_is_named_as_such() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(".progress")).unwrap();
        std::fs::write(dir.path().join(".progress/run.json"), r#"{"model": "m"}"#).unwrap();
        let err = RunStore::open(dir.path(), &serde_json::json!({"model": "m"}))
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("another version of the harness (progress format 1"),
            "{err}"
        );
    }

    #[test]
    fn a_second_store_on_the_same_folder_is_refused_until_the_first_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let fp = serde_json::json!({"model": "m"});
        let first = RunStore::open(dir.path(), &fp).unwrap();
        let err = RunStore::open(dir.path(), &fp).err().unwrap();
        assert!(matches!(err, EvalError::Locked { .. }), "{err}");
        assert!(
            err.to_string()
                .contains(&format!("process {}", std::process::id())),
            "{err}"
        );
        drop(first);
        RunStore::open(dir.path(), &fp).unwrap();
    }

    #[test]
    fn a_task_whose_inputs_changed_is_refused_naming_the_change() {
        let dir = tempfile::tempdir().unwrap();
        let store = RunStore::open(dir.path(), &serde_json::json!({})).unwrap();
        let before = serde_json::json!({"plugin": {"name": "t", "sha256": "a".repeat(64)},
            "data_files": {"t/test.jsonl": "b".repeat(64)}});
        store.begin_task("t", &before).unwrap();
        store.begin_task("t", &before).unwrap();
        let mut after = before.clone();
        after["data_files"]["t/test.jsonl"] = "c".repeat(64).into();
        let err = store.begin_task("t", &after).unwrap_err().to_string();
        assert!(
            err.contains("work on t")
                && err.contains(
                    "data_files.t/test.jsonl (sha256 bbbbbbbbbbbb…, now sha256 cccccccccccc…)"
                ),
            "{err}"
        );
    }
}
