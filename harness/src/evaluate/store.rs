//! The output directory of a scoring run, and how a killed run resumes.
//!
//! Finished items are saved in chunk files under `DIR/.progress/<task>/`, each written to a
//! temporary name and renamed, so a chunk is either wholly there or not at all: a run killed at
//! any moment loses at most the chunk in flight, and a restart with the same command skips what
//! is saved. `DIR/.progress/run.json` records what the run was (model hash, options); a restart
//! with different settings is refused rather than mixed in.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use dtm_plugin_api::{ItemScore, Outcome};

/// One scored item as `samples.jsonl` holds it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Sample {
    pub task: String,
    pub doc_id: usize,
    pub subtask: String,
    /// `{"context", "continuation"}`, `{"context", "until", "max_new_tokens"}` or `{"text"}`.
    pub requests: Vec<serde_json::Value>,
    /// `{"logprob", "is_greedy"}`, the generated text, or `{"logprob"}` (rolling).
    pub responses: Vec<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub programs: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outcomes: Vec<Outcome>,
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

pub struct RunStore {
    dir: PathBuf,
    progress: PathBuf,
}

/// Writes `contents` to `path` through a temporary file in the same directory and a rename.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("{}: cannot create a temporary file", dir.display()))?;
    tmp.write_all(contents)
        .and_then(|_| tmp.as_file().sync_all())
        .with_context(|| format!("{}: cannot write", path.display()))?;
    tmp.persist(path)
        .with_context(|| format!("{}: cannot rename into place", path.display()))?;
    Ok(())
}

impl RunStore {
    /// Opens (or creates) `dir`; `fingerprint` must equal the one of an earlier run there.
    pub fn open(dir: &Path, fingerprint: &serde_json::Value) -> Result<Self> {
        let progress = dir.join(".progress");
        std::fs::create_dir_all(&progress)
            .with_context(|| format!("{}: cannot create", progress.display()))?;
        let run = progress.join("run.json");
        if run.exists() {
            let text = std::fs::read_to_string(&run)
                .with_context(|| format!("{}: cannot read", run.display()))?;
            let earlier: serde_json::Value = serde_json::from_str(&text).with_context(|| {
                format!(
                    "{}: corrupt; delete the output directory to start over",
                    run.display()
                )
            })?;
            if &earlier != fingerprint {
                bail!(
                    "{} holds a run with other settings ({}); use another --output or delete it",
                    dir.display(),
                    differing_keys(&earlier, fingerprint).join(", ")
                );
            }
        } else {
            write_atomic(&run, serde_json::to_string_pretty(fingerprint)?.as_bytes())?;
        }
        Ok(Self {
            dir: dir.to_owned(),
            progress,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn task_dir(&self, task: &str) -> PathBuf {
        self.progress.join(task.replace([':', '/'], "_"))
    }

    /// Items of `task` saved by earlier (possibly killed) runs, by doc_id.
    pub fn finished(&self, task: &str) -> Result<BTreeMap<usize, Sample>> {
        let mut out = BTreeMap::new();
        let dir = self.task_dir(task);
        if !dir.exists() {
            return Ok(out);
        }
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("{}: cannot list", dir.display()))?
        {
            let path = entry?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("jsonl") {
                continue; // a temporary file left by a kill
            }
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("{}: cannot read", path.display()))?;
            for (n, line) in text.lines().enumerate() {
                let sample: Sample = serde_json::from_str(line).with_context(|| {
                    format!("{}:{}: corrupt saved sample", path.display(), n + 1)
                })?;
                out.insert(sample.doc_id, sample);
            }
        }
        Ok(out)
    }

    /// Saves a chunk of finished items of `task` atomically.
    pub fn save(&self, task: &str, samples: &[Sample]) -> Result<()> {
        let Some(first) = samples.first() else {
            return Ok(());
        };
        let dir = self.task_dir(task);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("{}: cannot create", dir.display()))?;
        let mut text = String::new();
        for s in samples {
            text.push_str(&serde_json::to_string(s)?);
            text.push('\n');
        }
        write_atomic(
            &dir.join(format!("{:08}-{}.jsonl", first.doc_id, samples.len())),
            text.as_bytes(),
        )
    }
}

fn differing_keys(a: &serde_json::Value, b: &serde_json::Value) -> Vec<String> {
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
        return vec!["everything".into()];
    };
    let mut keys: Vec<String> = a
        .keys()
        .chain(b.keys())
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect();
    keys.dedup();
    keys
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
            extracted: BTreeMap::new(),
            gold: "A".into(),
            metrics: BTreeMap::from([("acc".to_string(), Some(1.0))]),
            groups: vec![],
        }
    }

    #[test]
    fn saved_chunks_come_back_and_other_settings_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let fp = serde_json::json!({"model": "m", "limit": 3});
        let store = RunStore::open(dir.path(), &fp).unwrap();
        store.save("t", &[sample(0), sample(1)]).unwrap();
        store.save("t", &[sample(2)]).unwrap();
        // A temporary file left by a kill is ignored.
        std::fs::write(store.task_dir("t").join(".tmpXYZ"), "{half").unwrap();
        let again = RunStore::open(dir.path(), &fp).unwrap();
        assert_eq!(
            again
                .finished("t")
                .unwrap()
                .keys()
                .copied()
                .collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
        let other = serde_json::json!({"model": "m", "limit": 4});
        let err = RunStore::open(dir.path(), &other)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("limit"), "{err}");
    }
}
