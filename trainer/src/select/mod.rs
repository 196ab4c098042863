//! Data selection by model-judged scores (Deita, Liu et al., 2024): every record is scored with
//! one of Deita's prompts by a scorer model, then records are kept by a rule (score above a
//! threshold, or the top k), optionally through Deita's diversity filter.
//!
//! The paper's Deita baseline keeps the records whose complexity exceeds a threshold. Deita's
//! official scorers are 13B models; here the scorer is any checkpoint `harness` loads.

pub mod complexity;
pub mod diversity;
pub mod quality;
pub mod registry;
pub mod scorer;
pub mod store;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use dtm_model::checkpoint;
use dtm_model::error::{LoadError, RuntimeError};
use serde_json::{json, Value};

use crate::data::{read_jsonl_lines, write_atomic, DataError};
use registry::Method;
use scorer::{BatchLimits, DigitScorer};
use store::ScoreStore;

#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("the scorer failed: {}", dtm_model::error::first_line(.0))]
    Model(#[from] candle_core::Error),
    #[error(
        "the scorer's vocabulary has no single token for {digit:?}: {problem}; Deita's score reads the probabilities of the tokens \"1\"…\"6\""
    )]
    NotOneToken {
        digit: &'static str,
        problem: String,
    },
    #[error("{}{}: {problem}", file.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
    Embeddings {
        file: PathBuf,
        line: Option<usize>,
        problem: String,
    },
    #[error("{}: {problem}", path.display())]
    Store { path: PathBuf, problem: String },
    #[error("{0}")]
    Settings(String),
}

/// Which records to keep, by score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rule {
    /// Records whose score is strictly above this value.
    Threshold(f64),
    /// The k highest scores (ties broken by file order).
    TopK(usize),
}

/// Deita's diversity filter over given embeddings.
#[derive(Debug, Clone, PartialEq)]
pub struct Diversity {
    pub embeddings: PathBuf,
    /// Largest cosine similarity a kept record may have to one kept before it.
    pub threshold: f64,
}

pub struct SelectConfig {
    pub method: &'static Method,
    pub scorer: PathBuf,
    pub data: PathBuf,
    pub dtype: DType,
    pub rule: Rule,
    pub diversity: Option<Diversity>,
    pub batch: BatchLimits,
    /// Records per saved chunk (what a kill can lose).
    pub chunk_size: usize,
}

/// Progress of the scoring, told to whoever displays it.
pub trait Progress {
    fn start(&self, total: usize, already_done: usize);
    fn advance(&self, n: usize);
}

pub struct Summary {
    pub records: usize,
    /// Records scored now (the rest came from an earlier, interrupted run).
    pub computed: usize,
    pub selected: usize,
    pub scores: PathBuf,
    pub output: PathBuf,
}

pub const SCORES: &str = "scores.jsonl";
pub const SELECTED: &str = "selected.jsonl";
pub const SELECTION: &str = "selection.json";

/// Scores every record of `config.data` (resuming from `output`), then writes
/// `output/scores.jsonl` (one object per record, file order), `output/selected.jsonl` (the kept
/// records' lines unchanged, in file order) and `output/selection.json` (what was done).
pub fn run(
    config: &SelectConfig,
    output: &Path,
    device: &Device,
    progress: &dyn Progress,
) -> Result<Summary, SelectError> {
    if config.rule == Rule::TopK(0) {
        return Err(SelectError::Settings("--top-k must be at least 1".into()));
    }
    if let Rule::Threshold(t) = config.rule {
        if !t.is_finite() {
            return Err(SelectError::Settings("--threshold must be a number".into()));
        }
    }
    let lines = read_jsonl_lines(&config.data)?;
    // Read before the long scoring: a bad embeddings file should fail now.
    let embeddings = config
        .diversity
        .as_ref()
        .map(|d| diversity::read_embeddings(&d.embeddings, lines.len()))
        .transpose()?;

    let method = config.method;
    let fingerprint = json!({
        "method": method.name,
        "scorer": config.scorer.display().to_string(),
        "scorer_sha256": checkpoint::fingerprint(&config.scorer)?,
        "data": config.data.display().to_string(),
        "data_sha256": checkpoint::sha256_file(&config.data)?,
        "dtype": format!("{:?}", config.dtype).to_lowercase(),
    });
    let store = ScoreStore::open(output, &fingerprint)?;
    let mut done = store.finished(lines.len(), method.parts.len())?;
    progress.start(lines.len(), done.len());
    let chunk_size = config.chunk_size.max(1);
    // A fixed grid of chunks, so that a resumed run batches the missing records exactly as an
    // uninterrupted one (only records saved under another --chunk-size make a chunk partial).
    let todo: Vec<Vec<usize>> = (0..lines.len())
        .step_by(chunk_size)
        .map(|first| {
            (first..(first + chunk_size).min(lines.len()))
                .filter(|i| !done.contains_key(i))
                .collect::<Vec<_>>()
        })
        .filter(|chunk| !chunk.is_empty())
        .collect();
    let mut computed = 0;
    if !todo.is_empty() {
        let model = checkpoint::load(&config.scorer, config.dtype, device)?;
        let scorer = DigitScorer::new(&model.decoder, &model.tokenizer)?;
        for chunk in todo {
            let mut prompts = Vec::with_capacity(chunk.len() * method.parts.len());
            for &i in &chunk {
                for part in method.parts {
                    prompts.push(scorer.encode(&(part.prompt)(&lines[i].0))?);
                }
            }
            let flat = scorer.score(&prompts, config.batch)?;
            let scores: Vec<(usize, Vec<f64>)> = chunk
                .iter()
                .zip(flat.chunks(method.parts.len()))
                .map(|(&i, parts)| (i, parts.to_vec()))
                .collect();
            store.save(&scores)?;
            computed += scores.len();
            progress.advance(scores.len());
            done.extend(scores);
        }
    }

    assert_eq!(done.len(), lines.len(), "every chunk is scored");
    let parts: Vec<&Vec<f64>> = done.values().collect();
    let scores: Vec<f64> = parts.iter().map(|p| method.combine(p)).collect();
    let mut text = String::new();
    for (score, parts) in scores.iter().zip(&parts) {
        let mut line = serde_json::Map::new();
        line.insert("score".into(), json!(score));
        if method.parts.len() > 1 {
            for (part, value) in method.parts.iter().zip(parts.iter()) {
                line.insert(part.name.into(), json!(value));
            }
        }
        text.push_str(&Value::Object(line).to_string());
        text.push('\n');
    }
    let scores_path = output.join(SCORES);
    write_atomic(&scores_path, text.as_bytes())?;

    let kept = choose(
        &scores,
        config.rule,
        embeddings
            .as_ref()
            .zip(config.diversity.as_ref())
            .map(|(e, d)| (e, d.threshold)),
    );
    let mut text = String::new();
    for &i in &kept {
        text.push_str(&lines[i].1);
        text.push('\n');
    }
    write_atomic(&output.join(SELECTED), text.as_bytes())?;
    let report = json!({
        "method": method.name,
        "scorer": config.scorer.display().to_string(),
        "data": config.data.display().to_string(),
        "rule": match config.rule {
            Rule::Threshold(t) => json!({"threshold": t}),
            Rule::TopK(k) => json!({"top_k": k}),
        },
        "diversity": config.diversity.as_ref().map(|d| json!({
            "embeddings": d.embeddings.display().to_string(),
            "threshold": d.threshold,
        })),
        "records": lines.len(),
        "selected": kept.len(),
        "score_min": scores.iter().copied().fold(f64::INFINITY, f64::min),
        "score_mean": scores.iter().sum::<f64>() / scores.len() as f64,
        "score_max": scores.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    });
    write_atomic(
        &output.join(SELECTION),
        serde_json::to_string_pretty(&report)
            .expect("JSON serialises")
            .as_bytes(),
    )?;
    Ok(Summary {
        records: lines.len(),
        computed,
        selected: kept.len(),
        scores: scores_path,
        output: output.join(SELECTED),
    })
}

/// The kept record indices, in file order. With the diversity filter, candidates (all records,
/// or those above the threshold) are walked from the highest score down (ties: file order).
pub fn choose(
    scores: &[f64],
    rule: Rule,
    diversity: Option<(&diversity::Embeddings, f64)>,
) -> Vec<usize> {
    let mut by_score: Vec<usize> = (0..scores.len()).collect();
    by_score.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let (candidates, limit): (Vec<usize>, Option<usize>) = match rule {
        Rule::Threshold(t) => (
            by_score.into_iter().filter(|&i| scores[i] > t).collect(),
            None,
        ),
        Rule::TopK(k) => (by_score, Some(k)),
    };
    let mut kept = match diversity {
        Some((embeddings, threshold)) => {
            diversity::repr_filter(embeddings, &candidates, threshold, limit)
        }
        None => candidates
            .into_iter()
            .take(limit.unwrap_or(usize::MAX))
            .collect(),
    };
    kept.sort_unstable();
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_is_strict_and_top_k_breaks_ties_by_file_order() {
        let s = [3.0, 4.5, 2.0, 4.5, 3.5];
        assert_eq!(choose(&s, Rule::Threshold(3.0), None), vec![1, 3, 4]);
        assert_eq!(choose(&s, Rule::TopK(2), None), vec![1, 3]);
        assert_eq!(choose(&s, Rule::TopK(3), None), vec![1, 3, 4]);
        assert_eq!(choose(&s, Rule::TopK(9), None), vec![0, 1, 2, 3, 4]);
        // Ties: of the two 4.5s only the first in the file fits in one slot.
        assert_eq!(choose(&s, Rule::TopK(1), None), vec![1]);
    }

    #[test]
    fn diversity_walks_from_the_best_score() {
        let unit = |deg: f64| vec![deg.to_radians().cos(), deg.to_radians().sin()];
        // Records 0 and 1 point the same way; 1 scores higher, so 1 is kept and 0 dropped.
        let e = diversity::Embeddings::from_vectors(&[unit(0.0), unit(5.0), unit(90.0)]).unwrap();
        let s = [5.0, 5.5, 2.0];
        assert_eq!(choose(&s, Rule::TopK(2), Some((&e, 0.9))), vec![1, 2]);
        assert_eq!(choose(&s, Rule::Threshold(3.0), Some((&e, 0.9))), vec![1]);
        assert_eq!(choose(&s, Rule::TopK(2), None), vec![0, 1]);
    }
}
