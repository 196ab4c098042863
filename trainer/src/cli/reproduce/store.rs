//! Where stages live on disk: `OUT/stages/<name>-<key>/`, keyed by a hash of everything the
//! stage depends on, with `done.json` written atomically when, and only when, it finished.
//!
//! Input files and folders are hashed by content; hashes are remembered per file (by size and
//! modification time) in `OUT/.reproduce/hashes.json`, so a large checkpoint is read once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::graph::{Graph, Part};

/// Characters of the key in a stage folder's name.
const KEY_CHARS: usize = 12;

#[derive(Serialize, Deserialize, Clone, PartialEq)]
struct Remembered {
    len: u64,
    modified_ns: u128,
    sha256: String,
}

/// Content hashes of files and folders, remembered between runs.
pub struct Hasher {
    file: PathBuf,
    known: BTreeMap<PathBuf, Remembered>,
    changed: bool,
}

impl Hasher {
    pub fn open(out: &Path) -> Hasher {
        let file = out.join(".reproduce/hashes.json");
        let known = std::fs::read_to_string(&file)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        Hasher {
            file,
            known,
            changed: false,
        }
    }

    /// sha256 of a file, or of a folder's files (relative names and contents, recursively, in
    /// name order).
    pub fn hash(&mut self, path: &Path) -> anyhow::Result<String> {
        let meta = std::fs::metadata(path)
            .with_context(|| format!("{}: input missing", path.display()))?;
        if !meta.is_dir() {
            return self.hash_file(path, &meta);
        }
        let mut files = Vec::new();
        walk(path, &mut files)?;
        files.sort();
        let mut h = Sha256::new();
        for f in files {
            let meta = std::fs::metadata(&f)?;
            let rel = f.strip_prefix(path).unwrap_or(&f);
            h.update(rel.to_string_lossy().as_bytes());
            h.update([0]);
            h.update(self.hash_file(&f, &meta)?.as_bytes());
            h.update([b'\n']);
        }
        Ok(hex::encode(h.finalize()))
    }

    fn hash_file(&mut self, path: &Path, meta: &std::fs::Metadata) -> anyhow::Result<String> {
        let modified_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        if let Some(r) = self.known.get(path) {
            if r.len == meta.len() && r.modified_ns == modified_ns {
                return Ok(r.sha256.clone());
            }
        }
        let sha256 = dtm_model::checkpoint::sha256_file(path)?;
        self.known.insert(
            path.to_owned(),
            Remembered {
                len: meta.len(),
                modified_ns,
                sha256: sha256.clone(),
            },
        );
        self.changed = true;
        Ok(sha256)
    }

    /// Writes the remembered hashes back (best effort: they only save time).
    pub fn save(&self) {
        if !self.changed {
            return;
        }
        if let Some(dir) = self.file.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        if let Ok(text) = serde_json::to_string(&self.known) {
            let _ = dtm_trainer::data::write_atomic(&self.file, text.as_bytes());
        }
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for entry in
        std::fs::read_dir(dir).with_context(|| format!("{}: cannot list", dir.display()))?
    {
        let path = entry?.path();
        if path.is_dir() {
            walk(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

/// Every stage's key, in graph order; `None` for a stage whose inputs (or whose upstream
/// stages' inputs) are missing, with the first missing input.
pub fn keys(graph: &Graph, hasher: &mut Hasher) -> Vec<Result<String, String>> {
    let mut keys: Vec<Result<String, String>> = Vec::with_capacity(graph.stages.len());
    for stage in &graph.stages {
        let mut h = Sha256::new();
        h.update(stage.program.name().as_bytes());
        let mut missing = None;
        for arg in &stage.args {
            h.update([0]);
            for part in &arg.0 {
                match part {
                    Part::Lit(s) => {
                        h.update(b"L");
                        h.update(s.as_bytes());
                    }
                    Part::Input(p) => match hasher.hash(p) {
                        Ok(c) => {
                            h.update(b"I");
                            h.update(c.as_bytes());
                        }
                        Err(e) => missing = missing.or(Some(format!("{e:#}"))),
                    },
                    Part::Out(s, rel) => match &keys[*s] {
                        Ok(k) => {
                            h.update(b"O");
                            h.update(k.as_bytes());
                            h.update(rel.as_bytes());
                        }
                        Err(e) => missing = missing.or(Some(e.clone())),
                    },
                    Part::Own(rel) => {
                        h.update(b"S");
                        h.update(rel.as_bytes());
                    }
                }
            }
        }
        keys.push(match missing {
            Some(e) => Err(e),
            None => Ok(hex::encode(h.finalize())),
        });
    }
    hasher.save();
    keys
}

/// The output folder of a stage with `key`.
pub fn stage_dir(out: &Path, name: &str, key: &str) -> PathBuf {
    out.join("stages")
        .join(format!("{name}-{}", &key[..KEY_CHARS]))
}

/// What a finished stage leaves in `done.json`.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Done {
    pub name: String,
    pub key: String,
    pub command: Vec<String>,
    pub started_unix: u64,
    pub wall_seconds: f64,
    pub host: String,
}

pub const DONE_FILE: &str = "done.json";

/// The record of a finished stage in `dir`, if it finished.
pub fn done(dir: &Path) -> Option<Done> {
    let text = std::fs::read_to_string(dir.join(DONE_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

/// The argument list of stage `i` with real paths: inputs as they are, stage outputs under
/// their keyed folders.
pub fn render(graph: &Graph, keys: &[String], out: &Path, i: usize) -> Vec<String> {
    let dir_of = |s: usize| stage_dir(out, &graph.stages[s].name, &keys[s]);
    let join = |base: PathBuf, rel: &str| {
        if rel.is_empty() {
            base
        } else {
            base.join(rel)
        }
    };
    graph.stages[i]
        .args
        .iter()
        .map(|a| {
            a.0.iter()
                .map(|p| match p {
                    Part::Lit(s) => s.clone(),
                    Part::Input(p) => p.display().to_string(),
                    Part::Out(s, rel) => join(dir_of(*s), rel).display().to_string(),
                    Part::Own(rel) => join(dir_of(i), rel).display().to_string(),
                })
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folder_hashes_follow_content_and_names_and_are_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(data.join("sub")).unwrap();
        std::fs::write(data.join("a.txt"), "a").unwrap();
        std::fs::write(data.join("sub/b.txt"), "b").unwrap();
        let mut h = Hasher::open(dir.path());
        let first = h.hash(&data).unwrap();
        h.save();
        let mut again = Hasher::open(dir.path());
        assert!(!again.known.is_empty(), "hashes remembered");
        assert_eq!(again.hash(&data).unwrap(), first);
        std::fs::write(data.join("sub/b.txt"), "B").unwrap();
        assert_ne!(Hasher::open(dir.path()).hash(&data).unwrap(), first);
        std::fs::write(data.join("sub/b.txt"), "b").unwrap();
        std::fs::rename(data.join("sub/b.txt"), data.join("sub/c.txt")).unwrap();
        assert_ne!(Hasher::open(dir.path()).hash(&data).unwrap(), first);
        assert!(h.hash(&dir.path().join("nothing")).is_err());
    }
}
