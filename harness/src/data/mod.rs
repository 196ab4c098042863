//! The data files dtm reads: a manifest naming each file's upstream source (at a pinned commit)
//! and sha256, where the data folder is, and downloading (`fetch`) and checking (`verify`) it.
//!
//! The data folder is, in this order: the folder given explicitly (`--data-dir`); `$DTM_DATA_DIR`;
//! `$XDG_DATA_HOME/dtm/data`; `$HOME/.local/share/dtm/data`; the `shared/data` folder beside the
//! source checkout this harness was built from. The first that exists is used; `fetch` installs
//! into the first of the first four that is set.

use std::collections::{BTreeSet, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

/// The manifest: `path \t sha256 \t bytes \t source`, `#` lines are comments.
const MANIFEST: &str = include_str!("../../data/manifest.tsv");

/// Files that are not upstream files (few-shot exemplars extracted from an upstream config; see
/// the data folder's SOURCES.md), shipped inside the binary.
const EMBEDDED: [(&str, &[u8]); 2] = [
    (
        "gsm8k/cot_exemplars.jsonl",
        include_bytes!("../../data/derived/gsm8k/cot_exemplars.jsonl"),
    ),
    (
        "truthfulqa/qa_primer.jsonl",
        include_bytes!("../../data/derived/truthfulqa/qa_primer.jsonl"),
    ),
];

/// Largest file (or archive) a download may deliver.
const MAX_DOWNLOAD: u64 = 64 << 20;

/// Where a file comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Url(String),
    /// A member of the zip archive at `url`.
    ZipMember {
        url: String,
        member: String,
    },
    Embedded(&'static [u8]),
}

/// One data file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Relative to the data folder.
    pub path: String,
    pub sha256: String,
    pub bytes: u64,
    pub source: Source,
}

impl Entry {
    /// The benchmark or corpus the file belongs to: its first path component (`gsm8k`, `mmlu`).
    pub fn group(&self) -> &str {
        self.path.split('/').next().unwrap_or("")
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum DataError {
    #[error("no benchmark data folder found (looked for {}); run `harness data fetch` to download the data into {}, or pass --data-dir", tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "), install.display())]
    NotFound {
        tried: Vec<PathBuf>,
        install: PathBuf,
    },
    #[error("{}: missing{}; run `harness data fetch --dir {} --only {group}` to download it", first.display(), if *more > 0 { format!(" (and {more} more files of {group})") } else { String::new() }, dir.display())]
    Missing {
        dir: PathBuf,
        group: String,
        first: PathBuf,
        more: usize,
    },
    #[error("unknown data group `{0}` (known: {1})")]
    UnknownGroup(String, String),
    #[error("{}: {problem}", path.display())]
    Io { path: PathBuf, problem: String },
    #[error("{} file(s) could not be fetched: {}", failures.len(), failures.join("; "))]
    Fetch { failures: Vec<String> },
}

fn io(path: &Path, problem: impl std::fmt::Display) -> DataError {
    DataError::Io {
        path: path.to_owned(),
        problem: problem.to_string(),
    }
}

/// Every file of the manifest, in path order.
pub fn manifest() -> Vec<Entry> {
    MANIFEST
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            assert_eq!(f.len(), 4, "built-in manifest line: {line}");
            let source = match f[3].split(' ').collect::<Vec<_>>().as_slice() {
                ["url", url] => Source::Url((*url).to_owned()),
                ["zip", url, member] => Source::ZipMember {
                    url: (*url).to_owned(),
                    member: (*member).to_owned(),
                },
                ["embedded"] => Source::Embedded(
                    EMBEDDED
                        .iter()
                        .find(|(p, _)| *p == f[0])
                        .unwrap_or_else(|| panic!("no embedded copy of {}", f[0]))
                        .1,
                ),
                _ => panic!("built-in manifest source: {line}"),
            };
            Entry {
                path: f[0].to_owned(),
                sha256: f[1].to_owned(),
                bytes: f[2].parse().expect("built-in manifest size"),
                source,
            }
        })
        .collect()
}

/// The manifest group holding a benchmark plugin's data (`arc_challenge` → `arc`).
pub fn group_of_task(task: &str) -> Option<&'static str> {
    let name = task.split(':').next().unwrap_or(task);
    let group = match name {
        "arc_challenge" => "arc",
        "truthfulqa_mc1" => "truthfulqa",
        other => other,
    };
    let groups = groups();
    groups.into_iter().find(|g| *g == group)
}

/// The groups of the manifest, sorted.
pub fn groups() -> Vec<&'static str> {
    let set: BTreeSet<&'static str> = MANIFEST
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split('/').next())
        .collect();
    set.into_iter().collect()
}

fn selected(only: &[String]) -> Result<Vec<Entry>, DataError> {
    let known = groups();
    for g in only {
        if !known.contains(&g.as_str()) {
            return Err(DataError::UnknownGroup(g.clone(), known.join(", ")));
        }
    }
    Ok(manifest()
        .into_iter()
        .filter(|e| only.is_empty() || only.iter().any(|g| g == e.group()))
        .collect())
}

fn env_dir(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// Where `fetch` installs when no folder is given: `$DTM_DATA_DIR`, else
/// `$XDG_DATA_HOME/dtm/data`, else `$HOME/.local/share/dtm/data`.
pub fn install_dir() -> PathBuf {
    env_dir("DTM_DATA_DIR")
        .or_else(|| env_dir("XDG_DATA_HOME").map(|d| d.join("dtm/data")))
        .or_else(|| env_dir("HOME").map(|h| h.join(".local/share/dtm/data")))
        .unwrap_or_else(|| PathBuf::from(".local/share/dtm/data"))
}

/// The `shared/data` folder beside the source checkout the harness was built from.
fn checkout_data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data")
}

/// The data folder (see the module documentation for the order), made absolute.
pub fn locate(explicit: Option<&Path>) -> Result<PathBuf, DataError> {
    if let Some(dir) = explicit {
        return std::fs::canonicalize(dir)
            .ok()
            .filter(|d| d.is_dir())
            .ok_or_else(|| io(dir, "data folder not found"));
    }
    let mut tried = Vec::new();
    if let Some(d) = env_dir("DTM_DATA_DIR") {
        // Named explicitly: used or refused, never skipped.
        return std::fs::canonicalize(&d)
            .ok()
            .filter(|c| c.is_dir())
            .ok_or_else(|| io(&d, "data folder not found (from DTM_DATA_DIR)"));
    }
    if let Some(d) = env_dir("XDG_DATA_HOME") {
        tried.push(d.join("dtm/data"));
    }
    if let Some(h) = env_dir("HOME") {
        tried.push(h.join(".local/share/dtm/data"));
    }
    tried.push(checkout_data());
    for d in &tried {
        if d.is_dir() {
            return std::fs::canonicalize(d).map_err(|e| io(d, e));
        }
    }
    Err(DataError::NotFound {
        tried,
        install: install_dir(),
    })
}

/// Fails, naming the first missing file and the command that fetches it, when a file of
/// `group` is absent from `dir`.
pub fn require_group(dir: &Path, group: &str) -> Result<(), DataError> {
    let missing: Vec<PathBuf> = manifest()
        .iter()
        .filter(|e| e.group() == group)
        .map(|e| dir.join(&e.path))
        .filter(|p| !p.is_file())
        .collect();
    match missing.first() {
        None => Ok(()),
        Some(first) => Err(DataError::Missing {
            dir: dir.to_owned(),
            group: group.to_owned(),
            first: first.clone(),
            more: missing.len() - 1,
        }),
    }
}

/// sha256 of a file, hex.
fn sha256_of(path: &Path) -> Result<String, DataError> {
    let mut file = std::fs::File::open(path).map_err(|e| io(path, e))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(|e| io(path, e))?;
    Ok(hex::encode(hasher.finalize()))
}

/// What `verify` found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Check {
    /// Files present with the manifest's sha256.
    pub ok: usize,
    pub missing: Vec<String>,
    /// (path, sha256 found).
    pub wrong: Vec<(String, String)>,
}

impl Check {
    pub fn is_ok(&self) -> bool {
        self.missing.is_empty() && self.wrong.is_empty()
    }
}

/// Checks every file of the `only` groups (all when empty) in `dir` against the manifest.
pub fn verify(dir: &Path, only: &[String]) -> Result<Check, DataError> {
    let mut check = Check::default();
    for e in selected(only)? {
        let path = dir.join(&e.path);
        if !path.is_file() {
            check.missing.push(e.path);
            continue;
        }
        let actual = sha256_of(&path)?;
        if actual == e.sha256 {
            check.ok += 1;
        } else {
            check.wrong.push((e.path, actual));
        }
    }
    Ok(check)
}

/// What `fetch` did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Fetched {
    /// Files already present and correct.
    pub present: usize,
    /// Files downloaded (or written from the embedded copy).
    pub written: usize,
}

/// `url` as served by `mirror`: `https://host/path` becomes `MIRROR/host/path`.
fn mirrored(url: &str, mirror: Option<&str>) -> String {
    match mirror {
        None => url.to_owned(),
        Some(m) => {
            let rest = url.split_once("://").map_or(url, |(_, r)| r);
            format!("{}/{rest}", m.trim_end_matches('/'))
        }
    }
}

fn download(agent: &ureq::Agent, url: &str) -> Result<Vec<u8>, String> {
    let mut response = agent.get(url).call().map_err(|e| format!("{url}: {e}"))?;
    response
        .body_mut()
        .with_config()
        .limit(MAX_DOWNLOAD)
        .read_to_vec()
        .map_err(|e| format!("{url}: {e}"))
}

fn zip_member(archive: &[u8], member: &str) -> Result<Vec<u8>, String> {
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(archive))
        .map_err(|e| format!("not a readable zip archive: {e}"))?;
    // The member may sit under a top folder of the archive.
    let name = zip
        .file_names()
        .filter_map(Result::ok)
        .find(|n| n == member || n.ends_with(&format!("/{member}")))
        .map(|n| n.into_owned())
        .ok_or_else(|| format!("the archive has no member {member}"))?;
    let mut file = zip.by_name(&name).map_err(|e| format!("{name}: {e}"))?;
    let mut out = Vec::new();
    file.read_to_end(&mut out)
        .map_err(|e| format!("{name}: {e}"))?;
    Ok(out)
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut tmp =
        tempfile::NamedTempFile::new_in(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    std::io::Write::write_all(&mut tmp, bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    tmp.persist(path)
        .map_err(|e| format!("{}: {}", path.display(), e.error))?;
    Ok(())
}

/// Downloads every file of the `only` groups (all when empty) that is missing from `dir` or
/// differs from the manifest, checks its sha256 and writes it in place (atomically). `mirror`
/// replaces `https://` with a mirror's base URL. `progress` hears about each file written.
pub fn fetch(
    dir: &Path,
    only: &[String],
    mirror: Option<&str>,
    progress: &mut dyn FnMut(&str),
) -> Result<Fetched, DataError> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(300)))
        .build()
        .into();
    let mut archives: HashMap<String, Result<Vec<u8>, String>> = HashMap::new();
    let mut report = Fetched::default();
    let mut failures = Vec::new();
    for e in selected(only)? {
        let path = dir.join(&e.path);
        if path.is_file() && sha256_of(&path)? == e.sha256 {
            report.present += 1;
            continue;
        }
        let bytes = match &e.source {
            Source::Embedded(b) => Ok(b.to_vec()),
            Source::Url(url) => download(&agent, &mirrored(url, mirror)),
            Source::ZipMember { url, member } => {
                let url = mirrored(url, mirror);
                let archive = archives
                    .entry(url.clone())
                    .or_insert_with(|| download(&agent, &url));
                archive
                    .as_ref()
                    .map_err(Clone::clone)
                    .and_then(|a| zip_member(a, member).map_err(|p| format!("{url}: {p}")))
            }
        };
        let written = bytes.and_then(|b| {
            let actual = hex::encode(Sha256::digest(&b));
            if actual != e.sha256 {
                return Err(format!(
                    "{}: downloaded content has sha256 {actual}, the manifest says {}",
                    e.path, e.sha256
                ));
            }
            write_file(&path, &b)
        });
        match written {
            Ok(()) => {
                report.written += 1;
                progress(&e.path);
            }
            Err(problem) => failures.push(problem),
        }
    }
    if failures.is_empty() {
        Ok(report)
    } else {
        Err(DataError::Fetch { failures })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manifest_parses_and_names_every_benchmark() {
        let m = manifest();
        assert!(m.len() > 1500, "{}", m.len());
        for g in [
            "gsm8k",
            "mmlu",
            "bbh",
            "arc",
            "openbookqa",
            "race",
            "humaneval",
            "mbpp",
            "truthfulqa",
        ] {
            assert!(m.iter().any(|e| e.group() == g), "{g}");
        }
        for e in &m {
            assert_eq!(e.sha256.len(), 64, "{}", e.path);
            if let Source::Embedded(b) = e.source {
                assert_eq!(hex::encode(Sha256::digest(b)), e.sha256, "{}", e.path);
            }
        }
        assert_eq!(group_of_task("arc_challenge"), Some("arc"));
        assert_eq!(group_of_task("mmlu:anatomy"), Some("mmlu"));
        assert_eq!(group_of_task("tiny_qa"), None);
    }

    #[test]
    fn mirrors_replace_the_scheme() {
        assert_eq!(
            mirrored(
                "https://raw.githubusercontent.com/a/b",
                Some("http://127.0.0.1:9/m/")
            ),
            "http://127.0.0.1:9/m/raw.githubusercontent.com/a/b"
        );
        assert_eq!(mirrored("https://x/y", None), "https://x/y");
    }
}
