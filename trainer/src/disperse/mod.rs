//! Disperse: split instruction data into K disjoint portions, one sub-model each (the "D" of
//! Disperse-Then-Merge). Methods are listed in [`registry`]; each lives in its own file.
//!
//! A dispersal directory holds `portion-1.jsonl … portion-K.jsonl` (the input lines, unchanged
//! and in file order within each portion) and `assignments.json` (the portion of every record
//! and how it was decided), which is written last: its presence means the dispersal is whole.

pub mod kmeans;
pub mod random;
pub mod registry;

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::data::{self, DataError, Record};
use crate::embed::EmbedError;
pub use kmeans::{KMeans, KMeansFit};
pub use registry::{Method, MethodInfo, METHODS};

#[derive(Debug, thiserror::Error)]
pub enum DisperseError {
    #[error("cannot split {n} records into {k} portions (K must be between 1 and the number of records)")]
    PortionCount { n: usize, k: usize },
    #[error("unknown dispersal method {name:?} (known: {known})")]
    UnknownMethod { name: String, known: String },
    #[error("embedding of record {index} (0-based) {problem}")]
    Embedding { index: usize, problem: String },
    #[error("the encoder returned {got} embeddings for {want} texts")]
    EmbeddingCount { got: usize, want: usize },
    #[error("{0}")]
    Setting(String),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Embed(#[from] EmbedError),
}

pub(crate) fn check_k(n: usize, k: usize) -> Result<(), DisperseError> {
    if k == 0 || k > n {
        return Err(DisperseError::PortionCount { n, k });
    }
    Ok(())
}

/// Which text of a record is embedded for clustering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum EmbedField {
    /// The instruction (with Alpaca's input on its own paragraph).
    Instruction,
    /// The response.
    Response,
    /// The instruction, a newline, then the response.
    Both,
}

impl EmbedField {
    pub fn text(self, record: &Record) -> String {
        match self {
            Self::Instruction => record.full_instruction(),
            Self::Response => record.output.clone(),
            Self::Both => format!("{}\n{}", record.full_instruction(), record.output),
        }
    }
}

/// How to disperse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub method: Method,
    pub k: usize,
    pub seed: u64,
    /// What k-means embeds (the released code clusters responses).
    pub embed: EmbedField,
    pub restarts: usize,
    pub max_iter: usize,
}

impl Plan {
    pub fn new(method: Method, k: usize, seed: u64) -> Self {
        let defaults = KMeans::new(k, seed);
        Self {
            method,
            k,
            seed,
            embed: EmbedField::Response,
            restarts: defaults.restarts,
            max_iter: defaults.max_iter,
        }
    }
}

/// The content of `assignments.json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Assignments {
    pub method: Method,
    pub seed: u64,
    pub k: usize,
    /// The input file, as given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    pub records: usize,
    /// Records per portion.
    pub sizes: Vec<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embed: Option<EmbedField>,
    /// The sentence encoder's folder.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encoder: Option<String>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub kmeans: Option<KMeansSummary>,
    /// The portion (0-based) of every input record, in file order.
    pub assignment: Vec<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KMeansSummary {
    /// Σ (1 − cos(embedding, its centroid)) of the kept restart.
    pub inertia: f64,
    pub iterations: usize,
    pub converged: bool,
    pub restarts: usize,
    pub max_iter: usize,
    pub best_restart: usize,
    pub restart_inertias: Vec<f64>,
}

/// Decides every record's portion. `embed` is called (once, with every record's text) only by
/// methods that cluster embeddings.
pub fn assign(
    plan: &Plan,
    records: &[Record],
    embed: impl FnOnce(&[String]) -> Result<Vec<Vec<f32>>, DisperseError>,
) -> Result<Assignments, DisperseError> {
    check_k(records.len(), plan.k)?;
    let (assignment, kmeans, embed_field) = match plan.method {
        Method::Random => (
            random::assign(records.len(), plan.k, plan.seed)?,
            None,
            None,
        ),
        Method::KMeans => {
            let texts: Vec<String> = records.iter().map(|r| plan.embed.text(r)).collect();
            let points = embed(&texts)?;
            if points.len() != texts.len() {
                return Err(DisperseError::EmbeddingCount {
                    got: points.len(),
                    want: texts.len(),
                });
            }
            let fit = KMeans {
                k: plan.k,
                restarts: plan.restarts,
                max_iter: plan.max_iter,
                seed: plan.seed,
            }
            .fit(&points)?;
            let summary = KMeansSummary {
                inertia: fit.inertia,
                iterations: fit.iterations,
                converged: fit.converged,
                restarts: plan.restarts,
                max_iter: plan.max_iter,
                best_restart: fit.best_restart,
                restart_inertias: fit.restart_inertias,
            };
            (fit.assignment, Some(summary), Some(plan.embed))
        }
    };
    let mut sizes = vec![0; plan.k];
    for &a in &assignment {
        sizes[a] += 1;
    }
    Ok(Assignments {
        method: plan.method,
        seed: plan.seed,
        k: plan.k,
        data: None,
        records: records.len(),
        sizes,
        embed: embed_field,
        encoder: None,
        kmeans,
        assignment,
    })
}

/// `portion-J.jsonl` (1-based J) inside `dir`.
pub fn portion_path(dir: &Path, portion: usize) -> PathBuf {
    dir.join(format!("portion-{}.jsonl", portion + 1))
}

/// Writes the portions (each record's original line, file order kept) and then
/// `assignments.json`. Each file is written atomically; `assignments.json` from an earlier run is
/// removed first and portion files beyond K from an earlier run afterwards.
pub fn write(dir: &Path, lines: &[String], assignments: &Assignments) -> Result<(), DisperseError> {
    if lines.len() != assignments.assignment.len() {
        return Err(DisperseError::Setting(format!(
            "{} lines but {} assignments",
            lines.len(),
            assignments.assignment.len()
        )));
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| DataError::file(dir, format!("cannot create: {e}")))?;
    let summary = dir.join("assignments.json");
    remove_if_present(&summary)?;
    let mut texts = vec![String::new(); assignments.k];
    for (line, &portion) in lines.iter().zip(&assignments.assignment) {
        texts[portion].push_str(line);
        texts[portion].push('\n');
    }
    for (portion, text) in texts.iter().enumerate() {
        data::write_atomic(&portion_path(dir, portion), text.as_bytes())?;
    }
    let mut stale = assignments.k;
    while portion_path(dir, stale).exists() {
        remove_if_present(&portion_path(dir, stale))?;
        stale += 1;
    }
    let mut json = serde_json::to_vec_pretty(assignments).expect("assignments serialise");
    json.push(b'\n');
    data::write_atomic(&summary, &json)?;
    Ok(())
}

fn remove_if_present(path: &Path) -> Result<(), DisperseError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(DataError::file(path, format!("cannot remove: {e}")).into()),
    }
}
