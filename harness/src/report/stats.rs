//! Paired statistics over items: bootstrap confidence intervals, the exact McNemar test, the
//! sign-flip permutation test, and Holm's correction.
//!
//! Everything random is drawn from a ChaCha8 generator seeded by the caller, so a report is the
//! same every time it is made from the same runs.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use statrs::distribution::{Binomial, DiscreteCDF};

/// Above this many non-zero differences the sign-flip test samples sign patterns instead of
/// enumerating all 2^m of them.
pub const EXACT_SIGN_FLIP_MAX: usize = 20;

/// The test behind a p-value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Test {
    /// Exact (binomial) McNemar test on the discordant pairs of a 0/1 metric.
    McNemarExact,
    /// Sign-flip permutation test, all 2^m sign patterns.
    SignFlipExact,
    /// Sign-flip permutation test, random sign patterns.
    SignFlipSampled,
}

impl Test {
    pub fn name(self) -> &'static str {
        match self {
            Test::McNemarExact => "mcnemar_exact",
            Test::SignFlipExact => "sign_flip_exact",
            Test::SignFlipSampled => "sign_flip_sampled",
        }
    }
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}

/// Quantile `q` of sorted values, interpolating linearly between order statistics (the
/// definition numpy and R use by default, "type 7").
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    let h = (sorted.len() - 1) as f64 * q;
    let (lo, frac) = (h.floor() as usize, h - h.floor());
    match sorted.get(lo + 1) {
        Some(next) => sorted[lo] + frac * (next - sorted[lo]),
        None => sorted[lo],
    }
}

/// 95% percentile interval of the mean of `diffs` (per-item differences), resampling items
/// with replacement `resamples` times.
pub fn paired_bootstrap_ci(diffs: &[f64], resamples: usize, seed: u64) -> [f64; 2] {
    let n = diffs.len();
    assert!(n > 0 && resamples > 0, "bootstrap of nothing");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut means: Vec<f64> = (0..resamples)
        .map(|_| (0..n).map(|_| diffs[rng.random_range(0..n)]).sum::<f64>() / n as f64)
        .collect();
    means.sort_by(f64::total_cmp);
    [quantile(&means, 0.025), quantile(&means, 0.975)]
}

/// Two-sided exact McNemar p-value: `b` and `c` are the discordant pairs (baseline right and
/// method wrong, and the reverse). Under the null each discordant pair goes either way with
/// probability ½, so p = min(1, 2·P(X ≤ min(b, c))) with X ~ Binomial(b + c, ½).
pub fn mcnemar_exact(b: usize, c: usize) -> f64 {
    let n = (b + c) as u64;
    if n == 0 {
        return 1.0;
    }
    let binomial = Binomial::new(0.5, n).expect("p = 0.5 is a valid probability");
    (2.0 * binomial.cdf(b.min(c) as u64)).min(1.0)
}

/// Two-sided sign-flip permutation test of "the mean difference is zero": under the null each
/// item's difference is as likely to have the other sign, so p is the share of sign patterns
/// whose |Σ d| is at least the observed one. Exact (all patterns) for up to
/// [`EXACT_SIGN_FLIP_MAX`] non-zero differences; otherwise `resamples` random patterns, with
/// p = (1 + hits) / (1 + resamples) so that p is never 0.
pub fn sign_flip_test(diffs: &[f64], resamples: usize, seed: u64) -> (f64, Test) {
    let nonzero: Vec<f64> = diffs.iter().copied().filter(|d| *d != 0.0).collect();
    let m = nonzero.len();
    if m == 0 {
        return (1.0, Test::SignFlipExact);
    }
    let observed = nonzero.iter().sum::<f64>().abs();
    // Sums that equal the observed one mathematically may differ in the last bits.
    let tolerance = 1e-9 * nonzero.iter().map(|d| d.abs()).sum::<f64>();
    let at_least = |s: f64| s.abs() >= observed - tolerance;
    if m <= EXACT_SIGN_FLIP_MAX {
        let hits = (0u64..1 << m)
            .filter(|mask| {
                let s: f64 = nonzero
                    .iter()
                    .enumerate()
                    .map(|(i, d)| if mask >> i & 1 == 1 { -d } else { *d })
                    .sum();
                at_least(s)
            })
            .count();
        (hits as f64 / (1u64 << m) as f64, Test::SignFlipExact)
    } else {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let hits = (0..resamples)
            .filter(|_| {
                let s: f64 = nonzero
                    .iter()
                    .map(|d| if rng.random::<bool>() { -d } else { *d })
                    .sum();
                at_least(s)
            })
            .count();
        (
            (1 + hits) as f64 / (1 + resamples) as f64,
            Test::SignFlipSampled,
        )
    }
}

/// Holm's step-down adjustment: the i-th smallest of m p-values is multiplied by (m − i + 1),
/// then made monotone (never below an earlier adjusted one) and capped at 1. Returned in the
/// order given.
pub fn holm(p: &[f64]) -> Vec<f64> {
    let m = p.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&a, &b| p[a].total_cmp(&p[b]));
    let mut adjusted = vec![0.0; m];
    let mut running = 0.0f64;
    for (rank, &i) in order.iter().enumerate() {
        running = running.max(((m - rank) as f64 * p[i]).min(1.0));
        adjusted[i] = running;
    }
    adjusted
}

/// What comparing a method with the baseline on paired items gives.
#[derive(Clone, Debug, PartialEq)]
pub struct Comparison {
    /// Mean of method − baseline over the paired items.
    pub delta: f64,
    pub ci95: [f64; 2],
    pub p_value: f64,
    pub test: Test,
    /// (baseline right & method wrong, baseline wrong & method right), for 0/1 metrics.
    pub discordant: Option<[usize; 2]>,
}

fn is_binary(xs: &[f64]) -> bool {
    xs.iter().all(|&x| x == 0.0 || x == 1.0)
}

/// Compares paired per-item values (same items, same order). A metric whose values are all 0
/// or 1 (accuracy, exact match, greedy pass@1) gets the exact McNemar test; any other the
/// sign-flip test. `baseline` and `method` must be non-empty and of equal length.
pub fn compare(baseline: &[f64], method: &[f64], resamples: usize, seed: u64) -> Comparison {
    assert_eq!(baseline.len(), method.len(), "paired values");
    let diffs: Vec<f64> = method.iter().zip(baseline).map(|(m, b)| m - b).collect();
    let delta = mean(&diffs);
    let ci95 = paired_bootstrap_ci(&diffs, resamples, seed);
    if is_binary(baseline) && is_binary(method) {
        let b = diffs.iter().filter(|&&d| d < 0.0).count();
        let c = diffs.iter().filter(|&&d| d > 0.0).count();
        Comparison {
            delta,
            ci95,
            p_value: mcnemar_exact(b, c),
            test: Test::McNemarExact,
            discordant: Some([b, c]),
        }
    } else {
        // A stream of its own, so the sign flips are not the bootstrap's draws reused.
        let (p_value, test) = sign_flip_test(&diffs, resamples, seed ^ 0x9e37_79b9_7f4a_7c15);
        Comparison {
            delta,
            ci95,
            p_value,
            test,
            discordant: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// C(n, k) in exact integer arithmetic, independent of statrs.
    fn choose(n: u64, k: u64) -> u128 {
        (0..k).fold(1u128, |acc, i| acc * (n - i) as u128 / (i + 1) as u128)
    }

    /// 2·Σ_{i ≤ min(b,c)} C(b+c, i) / 2^(b+c), capped at 1, summed exactly.
    fn exact_two_sided(b: u64, c: u64) -> f64 {
        let n = b + c;
        let tail: u128 = (0..=b.min(c)).map(|i| choose(n, i)).sum();
        (2.0 * tail as f64 / 2f64.powi(n as i32)).min(1.0)
    }

    #[test]
    fn mcnemar_matches_binomial_tails_worked_by_hand() {
        // statrs computes the binomial CDF through the regularised incomplete beta function,
        // accurate to a few units in the 14th digit.
        let close = |got: f64, want: f64| (got - want).abs() <= 1e-12 * want;
        // b=1, c=9: 2·(1 + 10)/1024.
        assert!(close(mcnemar_exact(1, 9), 22.0 / 1024.0));
        // b=0, c=5: 2·1/32.
        assert!(close(mcnemar_exact(0, 5), 2.0 / 32.0));
        // b=2, c=8: 2·(1 + 10 + 45)/1024; symmetric in b and c.
        assert!(close(mcnemar_exact(8, 2), 112.0 / 1024.0));
        assert_eq!(mcnemar_exact(8, 2), mcnemar_exact(2, 8));
        // b=1, c=5: 2·(1 + 6)/64.
        assert!(close(mcnemar_exact(1, 5), 14.0 / 64.0));
        // Balanced tables: 2·P(X ≤ 3 | n = 6) = 2·42/64 > 1, so 1.
        assert_eq!(mcnemar_exact(3, 3), 1.0);
        assert_eq!(mcnemar_exact(0, 0), 1.0);
        let mut worst = 0.0f64;
        for b in 0..=40 {
            for c in 0..=40 {
                let (got, want) = (mcnemar_exact(b, c), exact_two_sided(b as u64, c as u64));
                worst = worst.max((got - want).abs() / want);
                assert!(close(got, want), "b={b} c={c}: {got} vs {want}");
            }
        }
        eprintln!("largest relative error against exact sums: {worst:e}");
    }

    #[test]
    fn sign_flip_enumerates_every_pattern() {
        // ±1 ±2 ±3: sums 6, 4, 2, 0, 0, −2, −4, −6; |sum| ≥ 6 for 2 of 8.
        assert_eq!(
            sign_flip_test(&[1.0, 2.0, 3.0], 10, 1),
            (0.25, Test::SignFlipExact)
        );
        // d = (0.4, 0, 0.5, −0.3): the zero is dropped; observed |0.6|; the patterns of
        // ±0.4 ±0.5 ±0.3 give 1.2, 0.6, 0.2, −0.4, 0.4, −0.2, −0.6, −1.2: 4 of 8 reach 0.6.
        assert_eq!(
            sign_flip_test(&[0.4, 0.0, 0.5, -0.3], 10, 1),
            (0.5, Test::SignFlipExact)
        );
        assert_eq!(
            sign_flip_test(&[0.0, 0.0], 10, 1),
            (1.0, Test::SignFlipExact)
        );
    }

    #[test]
    fn sampled_sign_flip_is_seeded_and_close_to_exact() {
        // 24 differences of +1 and one of −1: exact p = 2·P(Bin(25, ½) ≥ 24) = 2·26/2^25.
        let mut d = vec![1.0; 24];
        d.push(-1.0);
        let (p, test) = sign_flip_test(&d, 10_000, 7);
        assert_eq!(test, Test::SignFlipSampled);
        assert_eq!(p, sign_flip_test(&d, 10_000, 7).0);
        // Too rare to be hit in 10,000 draws: the sampled p is its floor 1/10,001.
        assert_eq!(p, 1.0 / 10_001.0);
        // 15 differences of +1 and 7 of −1 (22 > EXACT_SIGN_FLIP_MAX): flipping signs makes
        // Σ = 2X − 22 with X ~ Bin(22, ½), so the exact p is McNemar's for b = 7, c = 15.
        let mut d = vec![1.0; 15];
        d.extend([-1.0; 7]);
        let (p, test) = sign_flip_test(&d, 10_000, 5);
        assert_eq!(test, Test::SignFlipSampled);
        let exact = mcnemar_exact(7, 15);
        let sd = (exact * (1.0 - exact) / 10_000.0).sqrt();
        assert!((p - exact).abs() < 4.0 * sd, "{p} vs {exact}");
        // Observed Σ = 0: every pattern reaches it.
        let balanced: Vec<f64> = (0..30)
            .map(|i| if i % 2 == 0 { 1.0 } else { -1.0 })
            .collect();
        assert_eq!(sign_flip_test(&balanced, 1000, 7).0, 1.0);
    }

    #[test]
    fn holm_worked_by_hand() {
        // Sorted 0.005, 0.01, 0.03, 0.04 → ×4, ×3, ×2, ×1 = 0.02, 0.03, 0.06, 0.04 → monotone
        // 0.02, 0.03, 0.06, 0.06.
        let adj = holm(&[0.01, 0.04, 0.03, 0.005]);
        let want = [0.03, 0.06, 0.06, 0.02];
        for (a, w) in adj.iter().zip(want) {
            assert!((a - w).abs() < 1e-15, "{adj:?}");
        }
        // 0.5·2 = 1, then 0.9·1 = 0.9 is lifted to the running maximum 1.
        assert_eq!(holm(&[0.5, 0.9]), vec![1.0, 1.0]);
        assert_eq!(holm(&[0.2, 0.01]), vec![0.2, 0.02]);
        assert!(holm(&[]).is_empty());
    }

    #[test]
    fn bootstrap_of_constant_differences_is_that_constant() {
        assert_eq!(paired_bootstrap_ci(&[0.0; 7], 100, 3), [0.0, 0.0]);
        assert_eq!(paired_bootstrap_ci(&[0.25; 7], 100, 3), [0.25, 0.25]);
        let d = [1.0, 0.0, 0.0, -1.0, 1.0, 1.0, 0.0, 0.0];
        let [lo, hi] = paired_bootstrap_ci(&d, 10_000, 3);
        assert!(
            lo < 0.25 && 0.25 < hi && lo >= -1.0 && hi <= 1.0,
            "{lo} {hi}"
        );
        assert_eq!([lo, hi], paired_bootstrap_ci(&d, 10_000, 3));
    }

    #[test]
    fn bootstrap_interval_matches_the_normal_approximation() {
        // 150 differences of +1, 50 of −1, 800 of 0: the mean of n resampled differences has
        // sd √((p₊ + p₋ − (p₊ − p₋)²)/n) = √(0.19/1000); with n = 1000 the percentile interval
        // is close to 0.1 ± 1.96·sd = [0.0730, 0.1270] (the grid of means is 0.001 wide).
        let mut d = vec![1.0; 150];
        d.extend([-1.0; 50]);
        d.extend([0.0; 800]);
        let half = 1.96 * (0.19f64 / 1000.0).sqrt();
        let [lo, hi] = paired_bootstrap_ci(&d, 10_000, 11);
        assert!((lo - (0.1 - half)).abs() < 0.003, "{lo}");
        assert!((hi - (0.1 + half)).abs() < 0.003, "{hi}");
    }

    #[test]
    fn quantile_interpolates() {
        let xs = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(quantile(&xs, 0.5), 3.0);
        assert!((quantile(&xs, 0.025) - 1.1).abs() < 1e-15);
        assert_eq!(quantile(&xs, 1.0), 5.0);
    }

    #[test]
    fn binary_metrics_get_mcnemar_graded_get_sign_flip() {
        let base = [1.0, 1.0, 0.0, 0.0, 1.0];
        let meth = [1.0, 0.0, 1.0, 1.0, 1.0];
        let c = compare(&base, &meth, 1000, 1);
        assert_eq!(c.test, Test::McNemarExact);
        assert_eq!(c.discordant, Some([1, 2]));
        assert!((c.delta - 0.2).abs() < 1e-15);
        let c = compare(&[0.2, 0.5], &[0.6, 0.5], 1000, 1);
        assert_eq!(c.test, Test::SignFlipExact);
        assert_eq!(c.p_value, 1.0); // one non-zero difference: both signs reach it
    }
}
