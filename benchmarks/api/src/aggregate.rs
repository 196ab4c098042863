//! Aggregation of per-item scores: mean ± standard error, overall (micro-average), per subtask
//! and per group.

use crate::ItemScore;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One metric over a set of items.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricSummary {
    /// Mean of the per-item values; `None` when any item's value is unavailable (or no items).
    pub mean: Option<f64>,
    /// Sample standard deviation / √n; `None` when `mean` is, or n < 2.
    pub stderr: Option<f64>,
    /// Items counted.
    pub n: usize,
    /// Items whose value was unavailable.
    pub unavailable: usize,
}

/// Metric name → summary.
pub type MetricTable = BTreeMap<String, MetricSummary>;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Aggregate {
    /// Micro-average over all items.
    pub overall: MetricTable,
    /// Per subtask (`mmlu:anatomy`).
    pub subtasks: BTreeMap<String, MetricTable>,
    /// Per group (`mmlu` categories); empty when no item names a group.
    pub groups: BTreeMap<String, MetricTable>,
}

/// Summarise one list of per-item values (`None` = unavailable).
pub fn summarise(values: &[Option<f64>]) -> MetricSummary {
    let n = values.len();
    let unavailable = values.iter().filter(|v| v.is_none()).count();
    if n == 0 || unavailable > 0 {
        return MetricSummary {
            mean: None,
            stderr: None,
            n,
            unavailable,
        };
    }
    let xs: Vec<f64> = values.iter().map(|v| v.expect("checked")).collect();
    let mean = xs.iter().sum::<f64>() / n as f64;
    let stderr = (n >= 2).then(|| {
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        (var / n as f64).sqrt()
    });
    MetricSummary {
        mean: Some(mean),
        stderr,
        n,
        unavailable,
    }
}

fn table<'a>(scores: impl Iterator<Item = &'a ItemScore> + Clone) -> MetricTable {
    let mut names: Vec<&String> = scores.clone().flat_map(|s| s.metrics.keys()).collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .map(|m| {
            let vals: Vec<Option<f64>> = scores
                .clone()
                .map(|s| s.metrics.get(m).copied().flatten())
                .collect();
            (m.clone(), summarise(&vals))
        })
        .collect()
}

/// Aggregate per-item scores: overall micro-average, per subtask and per group.
pub fn aggregate(scores: &[ItemScore]) -> Aggregate {
    let mut subtasks: BTreeMap<String, Vec<&ItemScore>> = BTreeMap::new();
    let mut groups: BTreeMap<String, Vec<&ItemScore>> = BTreeMap::new();
    for s in scores {
        subtasks.entry(s.subtask.clone()).or_default().push(s);
        for g in &s.groups {
            groups.entry(g.clone()).or_default().push(s);
        }
    }
    Aggregate {
        overall: table(scores.iter()),
        subtasks: subtasks
            .into_iter()
            .map(|(k, v)| (k, table(v.into_iter())))
            .collect(),
        groups: groups
            .into_iter()
            .map(|(k, v)| (k, table(v.into_iter())))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(sub: &str, group: &str, acc: Option<f64>) -> ItemScore {
        ItemScore {
            subtask: sub.into(),
            groups: vec![group.into()],
            metrics: [("acc".to_string(), acc)].into_iter().collect(),
            ..Default::default()
        }
    }

    #[test]
    fn mean_and_stderr() {
        let s = summarise(&[Some(1.0), Some(0.0), Some(1.0), Some(0.0)]);
        assert_eq!(s.mean, Some(0.5));
        // sample std = sqrt(1/3); / sqrt(4)
        assert!((s.stderr.unwrap() - (1.0f64 / 3.0).sqrt() / 2.0).abs() < 1e-12);
    }

    #[test]
    fn micro_average_and_breakdowns() {
        let scores = vec![
            item("t:a", "g1", Some(1.0)),
            item("t:a", "g1", Some(1.0)),
            item("t:a", "g2", Some(1.0)),
            item("t:b", "g2", Some(0.0)),
        ];
        let a = aggregate(&scores);
        assert_eq!(a.overall["acc"].mean, Some(0.75)); // micro, not (1 + 0) / 2
        assert_eq!(a.subtasks["t:a"]["acc"].mean, Some(1.0));
        assert_eq!(a.subtasks["t:b"]["acc"].n, 1);
        assert_eq!(a.subtasks["t:b"]["acc"].stderr, None);
        assert_eq!(a.groups["g2"]["acc"].mean, Some(0.5));
    }

    #[test]
    fn unavailable_is_not_zero() {
        let a = aggregate(&[item("t", "g", Some(1.0)), item("t", "g", None)]);
        assert_eq!(a.overall["acc"].mean, None);
        assert_eq!(a.overall["acc"].unavailable, 1);
        assert_eq!(a.overall["acc"].n, 2);
    }
}
