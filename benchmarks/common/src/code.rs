//! Scoring of code benchmarks from sandbox outcomes.

use dtm_plugin_api::Outcome;

/// Unbiased pass@k: 1 − C(n−c, k) / C(n, k) (Chen et al. 2021), computed as a stable product.
pub fn pass_at_k(n: usize, c: usize, k: usize) -> f64 {
    if n < k || n - c < k {
        return 1.0;
    }
    let mut prod = 1.0;
    for i in (n - c + 1)..=n {
        prod *= 1.0 - k as f64 / i as f64;
    }
    1.0 - prod
}

/// pass@1 over the outcomes of one item's programs; `None` when any outcome is unavailable
/// (no sandbox) or there are none.
pub fn pass_at_1(outcomes: &[Outcome]) -> Option<f64> {
    if outcomes.is_empty() || outcomes.contains(&Outcome::Unavailable) {
        return None;
    }
    let c = outcomes.iter().filter(|o| **o == Outcome::Passed).count();
    Some(pass_at_k(outcomes.len(), c, 1))
}

/// A short name of an outcome for reports.
pub fn outcome_name(o: Outcome) -> &'static str {
    match o {
        Outcome::Passed => "passed",
        Outcome::Failed => "failed",
        Outcome::TimedOut => "timed_out",
        Outcome::MemoryExceeded => "memory_exceeded",
        Outcome::Crashed => "crashed",
        Outcome::Unavailable => "unavailable",
    }
}

/// The score of a code item: `pass@1` from the sandbox outcomes (one per response/program).
/// No outcomes at all, or any `Unavailable`, makes the metric unavailable (`None`), not 0.
pub fn score_item(
    doc_id: usize,
    subtask: &str,
    gold: &str,
    num_responses: usize,
    outcomes: &[Outcome],
) -> Result<dtm_plugin_api::ItemScore, String> {
    if !outcomes.is_empty() && outcomes.len() != num_responses {
        return Err(format!(
            "doc {doc_id}: {} outcomes for {num_responses} programs",
            outcomes.len()
        ));
    }
    let mut s = dtm_plugin_api::ItemScore {
        doc_id,
        subtask: subtask.to_string(),
        gold: gold.to_string(),
        ..Default::default()
    };
    s.metrics.insert("pass@1".into(), pass_at_1(outcomes));
    let status: Vec<&str> = if outcomes.is_empty() {
        vec!["unavailable"]
    } else {
        outcomes.iter().map(|o| outcome_name(*o)).collect()
    };
    s.extracted.insert("status".into(), status.join(","));
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pass_at_k_values() {
        assert_eq!(pass_at_k(1, 1, 1), 1.0);
        assert_eq!(pass_at_k(1, 0, 1), 0.0);
        assert!((pass_at_k(10, 3, 1) - 0.3).abs() < 1e-12);
        // 1 - C(2,2)/C(4,2) = 1 - 1/6
        assert!((pass_at_k(4, 2, 2) - 5.0 / 6.0).abs() < 1e-12);
    }

    #[test]
    fn unavailable_is_none() {
        assert_eq!(pass_at_1(&[Outcome::Unavailable]), None);
        assert_eq!(pass_at_1(&[Outcome::TimedOut]), Some(0.0));
        assert_eq!(pass_at_1(&[Outcome::Passed]), Some(1.0));
    }
}
