//! Reading `train_log.jsonl`, the per-step log `trainer sft` writes (one JSON object per
//! optimiser step). Only the fields the report uses are read; others are ignored.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::ReportError;

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct Step {
    pub step: u64,
    pub loss: f64,
    #[serde(default)]
    pub epoch: Option<f64>,
    #[serde(default)]
    pub lr: Option<f64>,
    #[serde(default)]
    pub tokens_per_s: Option<f64>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TrainLog {
    pub name: String,
    pub path: PathBuf,
    pub steps: Vec<Step>,
}

/// What the report prints about a training run.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct TrainSummary {
    pub name: String,
    pub file: String,
    pub steps: usize,
    pub first_loss: f64,
    pub final_loss: f64,
    pub min_loss: f64,
    pub mean_tokens_per_s: Option<f64>,
}

/// Reads `path`; every line must be a step with at least `step` and a finite `loss`.
pub fn load(name: &str, path: &Path) -> Result<TrainLog, ReportError> {
    let text = std::fs::read_to_string(path).map_err(|source| ReportError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut steps = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let malformed = |problem: String| ReportError::Malformed {
            path: path.to_owned(),
            line: n + 1,
            problem,
        };
        let step: Step = serde_json::from_str(line)
            .map_err(|e| malformed(format!("not a train_log.jsonl step: {e}")))?;
        if !step.loss.is_finite() {
            return Err(malformed(format!("loss is {}", step.loss)));
        }
        steps.push(step);
    }
    if steps.is_empty() {
        return Err(ReportError::Inconsistent {
            path: path.to_owned(),
            problem: "no training steps".into(),
        });
    }
    Ok(TrainLog {
        name: name.to_owned(),
        path: path.to_owned(),
        steps,
    })
}

impl TrainLog {
    pub fn summary(&self) -> TrainSummary {
        let losses = self.steps.iter().map(|s| s.loss);
        let speeds: Vec<f64> = self.steps.iter().filter_map(|s| s.tokens_per_s).collect();
        TrainSummary {
            name: self.name.clone(),
            file: self.path.display().to_string(),
            steps: self.steps.len(),
            first_loss: self.steps[0].loss,
            final_loss: self.steps[self.steps.len() - 1].loss,
            min_loss: losses.fold(f64::INFINITY, f64::min),
            mean_tokens_per_s: (!speeds.is_empty())
                .then(|| speeds.iter().sum::<f64>() / speeds.len() as f64),
        }
    }
}
