//! Which items each of K sub-models got wrong, and how the merged model does on them: the data
//! of the paper's Figure 8 (overlap of the sub-models' error sets) and Figure 9 (the merged
//! model's accuracy by how many sub-models got the item wrong).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::error::ReportError;
use super::pairing::differences;
use super::runs::Run;

/// Items wrong for exactly the sub-models in `members` (and right for the others).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Intersection {
    pub members: Vec<String>,
    pub count: usize,
    /// `count` over the items at least one sub-model got wrong.
    pub share: f64,
}

/// The merged model on the items exactly `wrong` sub-models got wrong.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Bucket {
    pub wrong: usize,
    pub n: usize,
    pub correct: usize,
    pub accuracy: Option<f64>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct MergedByErrors {
    pub merged: String,
    pub buckets: Vec<Bucket>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ErrorSets {
    pub task: String,
    pub metric: String,
    pub submodels: Vec<String>,
    /// Items every sub-model (and merged run) scored.
    pub n_items: usize,
    /// Items each sub-model got wrong, in `submodels` order.
    pub wrong: Vec<usize>,
    /// Items at least one sub-model got wrong.
    pub any_wrong: usize,
    /// Every non-empty combination that occurs, most items first.
    pub intersections: Vec<Intersection>,
    pub merged: Vec<MergedByErrors>,
    /// Set when --allow-mismatch let differing runs in.
    pub note: Option<String>,
}

fn run<'a>(runs: &'a [Run], name: &str) -> Result<&'a Run, ReportError> {
    runs.iter()
        .find(|r| r.name == name)
        .ok_or_else(|| ReportError::Usage(format!("no run is named `{name}`")))
}

/// 0/1 correctness by doc_id, or an error naming why the run cannot serve.
fn correctness(run: &Run, task: &str) -> Result<BTreeMap<usize, bool>, ReportError> {
    let result = run
        .tasks
        .get(task)
        .ok_or_else(|| ReportError::Usage(format!("run `{}` has no task `{task}`", run.name)))?;
    result
        .headline(None)
        .into_iter()
        .map(|(id, v)| match v {
            Some(1.0) => Ok((id, true)),
            Some(0.0) => Ok((id, false)),
            other => Err(ReportError::Usage(format!(
                "error sets need a 0/1 headline metric: `{}` on `{task}` has {} = {} for doc_id {id}",
                run.name,
                result.headline_metric,
                other.map_or("unavailable".into(), |v| v.to_string())
            ))),
        })
        .collect()
}

/// The error sets of `submodels` on `task`, and each of `merged` by how many sub-models erred.
pub fn error_sets(
    runs: &[Run],
    task: &str,
    submodels: &[String],
    merged: &[String],
    allow_mismatch: bool,
) -> Result<ErrorSets, ReportError> {
    if submodels.len() < 2 {
        return Err(ReportError::Usage(
            "--submodels needs at least two runs".into(),
        ));
    }
    let subs: Vec<&Run> = submodels
        .iter()
        .map(|n| run(runs, n))
        .collect::<Result<_, _>>()?;
    let merged_runs: Vec<&Run> = merged
        .iter()
        .map(|n| run(runs, n))
        .collect::<Result<_, _>>()?;
    let first = subs[0];
    let reference = first
        .tasks
        .get(task)
        .ok_or_else(|| ReportError::Usage(format!("run `{}` has no task `{task}`", first.name)))?;
    let mut diffs = Vec::new();
    for other in subs.iter().skip(1).chain(&merged_runs) {
        if let Some(t) = other.tasks.get(task) {
            diffs.extend(differences(&first.name, reference, &other.name, t));
        }
    }
    if !diffs.is_empty() && !allow_mismatch {
        return Err(ReportError::Mismatch(
            diffs.into_iter().map(|d| format!("{task}: {d}")).collect(),
        ));
    }
    let sub_correct: Vec<BTreeMap<usize, bool>> = subs
        .iter()
        .map(|r| correctness(r, task))
        .collect::<Result<_, _>>()?;
    let merged_correct: Vec<BTreeMap<usize, bool>> = merged_runs
        .iter()
        .map(|r| correctness(r, task))
        .collect::<Result<_, _>>()?;
    let common: BTreeSet<usize> = sub_correct
        .iter()
        .chain(&merged_correct)
        .map(|m| m.keys().copied().collect::<BTreeSet<_>>())
        .reduce(|a, b| a.intersection(&b).copied().collect())
        .unwrap_or_default();

    let k = subs.len();
    // Bit j set: sub-model j got the item wrong.
    let pattern = |id: usize| -> usize {
        (0..k)
            .filter(|&j| !sub_correct[j][&id])
            .fold(0, |acc, j| acc | 1 << j)
    };
    let mut counts: BTreeMap<usize, usize> = BTreeMap::new();
    for &id in &common {
        let p = pattern(id);
        if p != 0 {
            *counts.entry(p).or_default() += 1;
        }
    }
    let any_wrong: usize = counts.values().sum();
    let mut intersections: Vec<(usize, usize)> = counts.into_iter().collect();
    // Most items first; ties by fewer members, then sub-model order.
    intersections.sort_by_key(|&(mask, count)| (std::cmp::Reverse(count), mask.count_ones(), mask));
    let intersections = intersections
        .into_iter()
        .map(|(mask, count)| Intersection {
            members: (0..k)
                .filter(|j| mask >> j & 1 == 1)
                .map(|j| submodels[j].clone())
                .collect(),
            count,
            share: count as f64 / any_wrong as f64,
        })
        .collect();
    let merged = merged
        .iter()
        .zip(&merged_correct)
        .map(|(name, correct)| {
            let buckets = (0..=k)
                .map(|wrong| {
                    let ids: Vec<usize> = common
                        .iter()
                        .copied()
                        .filter(|&id| pattern(id).count_ones() as usize == wrong)
                        .collect();
                    let right = ids.iter().filter(|id| correct[id]).count();
                    Bucket {
                        wrong,
                        n: ids.len(),
                        correct: right,
                        accuracy: (!ids.is_empty()).then(|| right as f64 / ids.len() as f64),
                    }
                })
                .collect();
            MergedByErrors {
                merged: name.clone(),
                buckets,
            }
        })
        .collect();
    Ok(ErrorSets {
        task: task.to_owned(),
        metric: reference.headline_metric.clone(),
        submodels: submodels.to_vec(),
        n_items: common.len(),
        wrong: (0..k)
            .map(|j| common.iter().filter(|id| !sub_correct[j][id]).count())
            .collect(),
        any_wrong,
        intersections,
        merged,
        note: (!diffs.is_empty()).then(|| {
            format!(
                "--allow-mismatch: {} common items; {}",
                common.len(),
                diffs.join("; ")
            )
        }),
    })
}
