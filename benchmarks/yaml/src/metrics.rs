//! lm-eval's metrics of the subset: `exact_match` with its options (`exact_match_hf_evaluate`),
//! and the corpus-level aggregations of the perplexity family, computed from per-item parts kept
//! in each item's `extracted` values (so a resumed run aggregates the same way).

use std::collections::BTreeMap;

use dtm_plugin_api::host::{aggregate, Aggregate, MetricSummary};
use dtm_plugin_api::ItemScore;

use crate::config::{ExactMatchOptions, MetricKind};

/// Python's `string.punctuation`.
const PUNCTUATION: &str = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";

fn normalise(s: &str, o: &ExactMatchOptions) -> String {
    let mut s = s.to_string();
    for re in &o.regexes_to_ignore {
        s = re.replace_all(&s, "").into_owned();
    }
    if o.ignore_case {
        s = s.to_lowercase();
    }
    if o.ignore_punctuation {
        s.retain(|c| !PUNCTUATION.contains(c));
    }
    if o.ignore_numbers {
        s.retain(|c| !c.is_ascii_digit());
    }
    s
}

/// 1 when `prediction` equals any of `golds` after the options' normalisation.
pub fn exact_match(prediction: &str, golds: &[String], o: &ExactMatchOptions) -> f64 {
    let p = normalise(prediction, o);
    golds.iter().any(|g| normalise(g, o) == p) as u8 as f64
}

/// Keys of the per-item parts of corpus metrics in `ItemScore::extracted`.
pub const LOGLIKELIHOOD: &str = "loglikelihood";
pub const WORDS: &str = "words";
pub const BYTES: &str = "bytes";

fn part(s: &ItemScore, key: &str) -> Option<f64> {
    s.extracted.get(key)?.parse().ok()
}

/// The corpus value of `kind` over `scores` (`None` when an item lacks its parts).
fn corpus_value(kind: MetricKind, scores: &[&ItemScore]) -> Option<f64> {
    let mut ll = 0.0;
    let mut weight = 0.0;
    for s in scores {
        ll += part(s, LOGLIKELIHOOD)?;
        weight += match kind {
            MetricKind::Perplexity => 1.0,
            MetricKind::WordPerplexity => part(s, WORDS)?,
            _ => part(s, BYTES)?,
        };
    }
    if scores.is_empty() || weight == 0.0 {
        return None;
    }
    Some(match kind {
        MetricKind::BitsPerByte => -ll / weight / std::f64::consts::LN_2,
        _ => (-ll / weight).exp(),
    })
}

/// Aggregate per-item scores: means (with standard errors) for the mean metrics, lm-eval's
/// corpus formulas (no standard error) for `corpus` metrics, named as reported.
pub fn aggregate_with(scores: &[ItemScore], corpus: &[(String, MetricKind)]) -> Aggregate {
    let mut agg = aggregate(scores);
    let summary = |kind: MetricKind, items: &[&ItemScore]| MetricSummary {
        mean: corpus_value(kind, items),
        stderr: None,
        n: items.len(),
        unavailable: 0,
    };
    let all: Vec<&ItemScore> = scores.iter().collect();
    let mut by_subtask: BTreeMap<&str, Vec<&ItemScore>> = BTreeMap::new();
    for s in scores {
        by_subtask.entry(s.subtask.as_str()).or_default().push(s);
    }
    for (name, kind) in corpus {
        agg.overall.insert(name.clone(), summary(*kind, &all));
        for (sub, items) in &by_subtask {
            if let Some(t) = agg.subtasks.get_mut(*sub) {
                t.insert(name.clone(), summary(*kind, items));
            }
        }
    }
    agg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_match_options() {
        let g = |s: &str| vec![s.to_string()];
        let none = ExactMatchOptions::default();
        assert_eq!(exact_match("Paris", &g("paris"), &none), 0.0);
        let o = ExactMatchOptions {
            ignore_case: true,
            ignore_punctuation: true,
            regexes_to_ignore: vec![regex::Regex::new(r"^the ").unwrap()],
            ..Default::default()
        };
        assert_eq!(exact_match("the Paris!", &g("paris"), &o), 1.0);
        // Punctuation is ASCII's; a non-ASCII mark stays.
        assert_eq!(exact_match("Paris¡", &g("paris"), &o), 0.0);
        let n = ExactMatchOptions {
            ignore_numbers: true,
            ..Default::default()
        };
        assert_eq!(exact_match("a1b2", &g("ab"), &n), 1.0);
        assert_eq!(exact_match("x", &["y".into(), "x".into()], &none), 1.0);
    }

    #[test]
    fn corpus_perplexities_weight_by_length() {
        let item = |ll: f64, words: usize, bytes: usize| {
            let mut s = ItemScore {
                subtask: "t".into(),
                ..Default::default()
            };
            s.metrics.insert("acc".into(), Some(1.0));
            s.extracted.insert(LOGLIKELIHOOD.into(), ll.to_string());
            s.extracted.insert(WORDS.into(), words.to_string());
            s.extracted.insert(BYTES.into(), bytes.to_string());
            s
        };
        let scores = [item(-6.0, 2, 10), item(-2.0, 2, 6)];
        let corpus = [
            (
                "word_perplexity,none".to_string(),
                MetricKind::WordPerplexity,
            ),
            ("bits_per_byte,none".to_string(), MetricKind::BitsPerByte),
            ("perplexity,none".to_string(), MetricKind::Perplexity),
        ];
        let a = aggregate_with(&scores, &corpus);
        // exp(8/4) = e², not the mean of exp(3) and exp(1).
        assert!((a.overall["word_perplexity,none"].mean.unwrap() - 2f64.exp()).abs() < 1e-12);
        assert!((a.overall["bits_per_byte,none"].mean.unwrap() - 0.5 / 2f64.ln()).abs() < 1e-12);
        assert!((a.overall["perplexity,none"].mean.unwrap() - 4f64.exp()).abs() < 1e-9);
        assert_eq!(a.overall["word_perplexity,none"].stderr, None);
        assert_eq!(a.subtasks["t"]["word_perplexity,none"].n, 2);
        assert_eq!(a.overall["acc"].mean, Some(1.0));
    }
}
