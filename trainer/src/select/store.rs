//! The saved progress of a `trainer select` run, so that a killed run resumes.
//!
//! Records are scored in fixed chunks of the file (records `[k·C, (k+1)·C)`); each finished chunk
//! is written to `DIR/.progress/scores/` under a temporary name and renamed, so it is there whole
//! or not at all. A restart with the same command recomputes only the chunks that are missing,
//! batched exactly as the first run would have batched them, and so ends with the same scores.
//! `DIR/.progress/run.json` records what determines the scores (method, scorer, data, precision);
//! a restart with other values is refused rather than mixed in.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::SelectError;
use crate::data::write_atomic;

pub struct ScoreStore {
    run: PathBuf,
    chunks: PathBuf,
    fingerprint: Value,
}

/// One scored record as a chunk file holds it. Scores are kept as text (Rust's shortest
/// round-trip form) so that a resumed run reads back exactly the bits it saved.
#[derive(Serialize, Deserialize)]
struct SavedLine {
    index: usize,
    parts: Vec<String>,
}

fn store_error(path: &Path, problem: impl Into<String>) -> SelectError {
    SelectError::Store {
        path: path.to_owned(),
        problem: problem.into(),
    }
}

impl ScoreStore {
    /// Opens the progress of `dir`; `fingerprint` must equal an earlier run's. Nothing is written
    /// before the first chunk is saved, so a run that fails before scoring leaves no trace.
    pub fn open(dir: &Path, fingerprint: &Value) -> Result<Self, SelectError> {
        let progress = dir.join(".progress");
        let run = progress.join("run.json");
        if run.exists() {
            let text = std::fs::read_to_string(&run)
                .map_err(|e| store_error(&run, format!("cannot read: {e}")))?;
            let earlier: Value = serde_json::from_str(&text).map_err(|_| {
                store_error(&run, "corrupt; delete the output directory to start over")
            })?;
            if &earlier != fingerprint {
                return Err(SelectError::Settings(format!(
                    "{} holds scores made with other settings ({}); use another --output or delete it",
                    dir.display(),
                    differing_keys(&earlier, fingerprint).join(", ")
                )));
            }
        }
        Ok(Self {
            run,
            chunks: progress.join("scores"),
            fingerprint: fingerprint.clone(),
        })
    }

    /// Scores saved by earlier (possibly killed) runs: record index → the method's part scores.
    pub fn finished(
        &self,
        records: usize,
        parts: usize,
    ) -> Result<BTreeMap<usize, Vec<f64>>, SelectError> {
        let mut out = BTreeMap::new();
        if !self.run.exists() {
            return Ok(out); // chunks without run.json cannot be vouched for
        }
        let entries = std::fs::read_dir(&self.chunks)
            .map_err(|e| store_error(&self.chunks, format!("cannot list: {e}")))?;
        for entry in entries {
            let path = entry
                .map_err(|e| store_error(&self.chunks, format!("cannot list: {e}")))?
                .path();
            if path.extension().and_then(|e| e.to_str()) != Some("jsonl") {
                continue; // a temporary file left by a kill
            }
            let text = std::fs::read_to_string(&path)
                .map_err(|e| store_error(&path, format!("cannot read: {e}")))?;
            for (n, line) in text.lines().enumerate() {
                let bad = |p: &str| store_error(&path, format!("line {}: {p}", n + 1));
                let saved: SavedLine = serde_json::from_str(line)
                    .map_err(|_| bad("corrupt; delete the output directory to start over"))?;
                let scores = saved
                    .parts
                    .iter()
                    .map(|s| s.parse::<f64>())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| bad("a score is not a number"))?;
                if saved.index >= records || scores.len() != parts {
                    return Err(bad("does not fit this data and method"));
                }
                out.insert(saved.index, scores);
            }
        }
        Ok(out)
    }

    /// Saves one finished chunk atomically, named after its first record and its length (no
    /// saved chunk can start with a record that is not yet saved, so names never collide).
    pub fn save(&self, scores: &[(usize, Vec<f64>)]) -> Result<(), SelectError> {
        let Some((first, _)) = scores.first() else {
            return Ok(());
        };
        if !self.run.exists() {
            let text = serde_json::to_string_pretty(&self.fingerprint).expect("JSON serialises");
            write_atomic(&self.run, text.as_bytes())?;
        }
        let mut text = String::new();
        for (index, parts) in scores {
            let line = SavedLine {
                index: *index,
                parts: parts.iter().map(f64::to_string).collect(),
            };
            text.push_str(&serde_json::to_string(&line).expect("JSON serialises"));
            text.push('\n');
        }
        let path = self
            .chunks
            .join(format!("{first:09}-{}.jsonl", scores.len()));
        Ok(write_atomic(&path, text.as_bytes())?)
    }
}

fn differing_keys(a: &Value, b: &Value) -> Vec<String> {
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
        return vec!["everything".into()];
    };
    let mut keys: Vec<String> = a
        .keys()
        .chain(b.keys())
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_scores_come_back_bit_for_bit_and_other_settings_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let fp = serde_json::json!({"method": "deita-complexity", "dtype": "f32"});
        let store = ScoreStore::open(dir.path(), &fp).unwrap();
        let odd = 1.0 / 3.0 + 1e-17 * 7.0;
        store.save(&[(0, vec![odd]), (1, vec![0.1 + 0.2])]).unwrap();
        store.save(&[(4, vec![5.999999999999999])]).unwrap();
        // A temporary file left by a kill is ignored.
        std::fs::write(store.chunks.join(".tmpXYZ"), "{half").unwrap();
        let again = ScoreStore::open(dir.path(), &fp).unwrap();
        let done = again.finished(5, 1).unwrap();
        assert_eq!(done.keys().copied().collect::<Vec<_>>(), vec![0, 1, 4]);
        assert_eq!(done[&0][0].to_bits(), odd.to_bits());
        assert_eq!(done[&1][0].to_bits(), (0.1f64 + 0.2).to_bits());
        assert!(again.finished(3, 1).is_err(), "index 4 of 3 records");
        assert!(again.finished(5, 2).is_err(), "two parts expected");
        let other = serde_json::json!({"method": "deita-quality", "dtype": "f32"});
        let err = ScoreStore::open(dir.path(), &other)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("other settings (method)"), "{err}");
    }
}
