//! Multiple choice by log-likelihood: one `loglikelihood` request per choice, `acc` = argmax of
//! the summed log-likelihood, `acc_norm` = argmax of log-likelihood / choice length in Unicode
//! code points (without the leading delimiter), as lm-eval defines it.

use dtm_plugin_api::{ItemScore, Request, Response};

/// One request per choice: (context, delimiter + choice).
pub fn requests(context: &str, choices: &[String], delimiter: &str) -> Vec<Request> {
    choices
        .iter()
        .map(|c| Request::Loglikelihood {
            context: context.to_string(),
            continuation: format!("{delimiter}{c}"),
        })
        .collect()
}

/// The log-likelihoods of responses `range` (all must be loglikelihood responses).
pub fn loglikelihoods(
    responses: &[Response],
    range: std::ops::Range<usize>,
) -> Result<Vec<f64>, String> {
    if responses.len() < range.end {
        return Err(format!(
            "expected at least {} responses, got {}",
            range.end,
            responses.len()
        ));
    }
    range
        .map(|i| match &responses[i] {
            Response::Loglikelihood { logprob, .. } => Ok(*logprob),
            other => Err(format!(
                "response {i}: expected loglikelihood, got {other:?}"
            )),
        })
        .collect()
}

/// Index of the largest value; the first one on ties (numpy's argmax).
pub fn argmax(xs: &[f64]) -> usize {
    let mut best = 0;
    for (i, x) in xs.iter().enumerate() {
        if *x > xs[best] {
            best = i;
        }
    }
    best
}

/// Number of Unicode code points (Python's `len`).
pub fn char_len(s: &str) -> usize {
    s.chars().count()
}

/// (prediction by `acc`, prediction by `acc_norm`).
pub fn predictions(lls: &[f64], choices: &[String]) -> (usize, usize) {
    let normed: Vec<f64> = lls
        .iter()
        .zip(choices)
        .map(|(ll, c)| ll / char_len(c) as f64)
        .collect();
    (argmax(lls), argmax(&normed))
}

/// Score a multiple-choice item whose responses are exactly one per choice.
/// `labels` names the choices in reports (letters or upstream labels).
pub fn score_item(
    doc_id: usize,
    subtask: &str,
    responses: &[Response],
    choices: &[String],
    labels: &[String],
    gold: usize,
    with_norm: bool,
) -> Result<ItemScore, String> {
    let lls = loglikelihoods(responses, 0..choices.len())?;
    if responses.len() != choices.len() {
        return Err(format!(
            "expected {} responses, got {}",
            choices.len(),
            responses.len()
        ));
    }
    let (pred, pred_norm) = predictions(&lls, choices);
    let mut s = ItemScore {
        doc_id,
        subtask: subtask.to_string(),
        gold: labels[gold].clone(),
        ..Default::default()
    };
    s.metrics
        .insert("acc".into(), Some((pred == gold) as u8 as f64));
    s.extracted.insert("acc".into(), labels[pred].clone());
    if with_norm {
        s.metrics
            .insert("acc_norm".into(), Some((pred_norm == gold) as u8 as f64));
        s.extracted
            .insert("acc_norm".into(), labels[pred_norm].clone());
    }
    Ok(s)
}

/// The two multiple-choice metrics of PROTOCOL.md §2, as plugins describe them.
pub fn acc_metrics() -> Vec<dtm_plugin_api::MetricSpec> {
    vec![
        dtm_plugin_api::MetricSpec {
            name: "acc".into(),
            higher_is_better: true,
            help: "gold choice has the highest log-likelihood".into(),
        },
        dtm_plugin_api::MetricSpec {
            name: "acc_norm".into(),
            higher_is_better: true,
            help: "gold choice has the highest log-likelihood per character".into(),
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ll(x: f64) -> Response {
        Response::Loglikelihood {
            logprob: x,
            is_greedy: false,
        }
    }

    #[test]
    fn acc_and_acc_norm_can_disagree() {
        // "a" is likelier in total; "ééééé" (5 code points, 10 bytes) per character.
        let choices = vec!["a".to_string(), "ééééé".to_string()];
        let labels = vec!["A".to_string(), "B".to_string()];
        let s = score_item(0, "t", &[ll(-2.0), ll(-5.0)], &choices, &labels, 1, true).unwrap();
        assert_eq!(s.metrics["acc"], Some(0.0));
        assert_eq!(s.metrics["acc_norm"], Some(1.0)); // -5/5 = -1 > -2/1
        assert_eq!(s.extracted["acc"], "A");
        // Bytes would give -5/10 too, but code points matter when they differ:
        let (_, n) = predictions(&[-1.9, -9.0], &["ab".into(), "éééé".into()]);
        assert_eq!(n, 0); // -0.95 vs -2.25 (bytes would say -1.125)
    }

    #[test]
    fn ties_pick_the_first() {
        assert_eq!(argmax(&[-1.0, -1.0, -2.0]), 0);
    }
}
