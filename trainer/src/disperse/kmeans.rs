//! Cosine (spherical) k-means: points and centroids live on the unit sphere, a point joins the
//! centroid it has the largest cosine with, a centroid is its members' mean scaled back to unit
//! length, and the objective (inertia) is Σ (1 − cos(x, c)) — half the squared Euclidean distance
//! between unit vectors, so seeding by it is k-means++ on the sphere.
//!
//! Seeding is k-means++ (Arthur & Vassilvitskii 2007: each next seed drawn with probability
//! proportional to its distance to the nearest seed so far); Lloyd iterations run until no point
//! changes cluster; several restarts draw from one seeded stream and the lowest inertia wins (the
//! earliest on ties). A cluster left empty takes the point farthest from its own centroid, so every
//! cluster keeps at least one point.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::DisperseError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KMeans {
    pub k: usize,
    /// Independent k-means++ seedings; the lowest inertia is kept.
    pub restarts: usize,
    /// Lloyd iterations at most per restart (each stops earlier once no point moves).
    pub max_iter: usize,
    pub seed: u64,
}

impl KMeans {
    /// Ten restarts; up to 1,500 iterations, what the paper's released code allows.
    pub fn new(k: usize, seed: u64) -> Self {
        Self {
            k,
            restarts: 10,
            max_iter: 1500,
            seed,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct KMeansFit {
    /// The cluster (0-based) of every point.
    pub assignment: Vec<usize>,
    /// Unit-length centroids.
    pub centroids: Vec<Vec<f32>>,
    /// Σ (1 − cos(x, centroid of x)).
    pub inertia: f64,
    /// Lloyd iterations of the kept restart.
    pub iterations: usize,
    /// Whether the kept restart stopped because no point moved (not at `max_iter`).
    pub converged: bool,
    /// Which restart (0-based) was kept.
    pub best_restart: usize,
    /// Every restart's inertia, in order.
    pub restart_inertias: Vec<f64>,
}

impl KMeans {
    /// Clusters `points` (any non-zero length; each is scaled to unit length first).
    pub fn fit(&self, points: &[Vec<f32>]) -> Result<KMeansFit, DisperseError> {
        super::check_k(points.len(), self.k)?;
        if self.restarts == 0 || self.max_iter == 0 {
            return Err(DisperseError::Setting(
                "k-means needs at least one restart and one iteration".into(),
            ));
        }
        let points = unit_rows(points)?;
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        let mut best: Option<KMeansFit> = None;
        let mut inertias = Vec::with_capacity(self.restarts);
        for restart in 0..self.restarts {
            let seeds = seed_indices(&points, self.k, &mut rng);
            let centroids = seeds.iter().map(|&i| points[i].clone()).collect();
            let run = lloyd(&points, centroids, self.max_iter);
            inertias.push(run.inertia);
            if best.as_ref().is_none_or(|b| run.inertia < b.inertia) {
                best = Some(KMeansFit {
                    best_restart: restart,
                    ..run
                });
            }
        }
        let mut best = best.expect("at least one restart ran");
        best.restart_inertias = inertias;
        Ok(best)
    }
}

/// k-means++ seeding on unit vectors: the first seed uniformly, each next one with probability
/// proportional to 1 − (largest cosine with a seed so far). Returns the seeds' indices.
pub fn seed_indices(points: &[Vec<f32>], k: usize, rng: &mut impl Rng) -> Vec<usize> {
    let n = points.len();
    let first = rng.random_range(0..n);
    let mut chosen = vec![first];
    let mut dist: Vec<f64> = points
        .iter()
        .map(|x| cosine_distance(x, &points[first]))
        .collect();
    dist[first] = 0.0;
    while chosen.len() < k {
        let total: f64 = dist.iter().sum();
        let next = if total > 0.0 {
            let target = rng.random::<f64>() * total;
            let mut cumulative = 0.0;
            let mut pick = None;
            for (i, &d) in dist.iter().enumerate() {
                if d > 0.0 {
                    cumulative += d;
                    pick = Some(i);
                    if cumulative > target {
                        break;
                    }
                }
            }
            pick.expect("a positive total has a positive term")
        } else {
            // Every point coincides with a seed: any unchosen point will do.
            let rest: Vec<usize> = (0..n).filter(|i| !chosen.contains(i)).collect();
            rest[rng.random_range(0..rest.len())]
        };
        chosen.push(next);
        for (i, d) in dist.iter_mut().enumerate() {
            *d = d.min(cosine_distance(&points[i], &points[next]));
        }
        dist[next] = 0.0;
    }
    chosen
}

/// Lloyd iterations from the given unit centroids.
fn lloyd(points: &[Vec<f32>], mut centroids: Vec<Vec<f32>>, max_iter: usize) -> KMeansFit {
    let k = centroids.len();
    let mut previous: Option<Vec<usize>> = None;
    let mut iterations = 0;
    let mut converged = false;
    for iteration in 1..=max_iter {
        let mut assignment = assign(points, &centroids);
        relocate_into_empty(points, &centroids, &mut assignment, k);
        centroids = update(points, &assignment, centroids);
        iterations = iteration;
        let settled = previous.as_ref() == Some(&assignment);
        previous = Some(assignment);
        if settled {
            converged = true;
            break;
        }
    }
    let assignment = previous.expect("max_iter is at least one");
    let inertia = inertia(points, &centroids, &assignment);
    KMeansFit {
        assignment,
        centroids,
        inertia,
        iterations,
        converged,
        best_restart: 0,
        restart_inertias: Vec::new(),
    }
}

/// Each point's nearest centroid by cosine (the lowest index on ties).
fn assign(points: &[Vec<f32>], centroids: &[Vec<f32>]) -> Vec<usize> {
    points
        .iter()
        .map(|x| {
            let mut best = (0, f32::NEG_INFINITY);
            for (j, c) in centroids.iter().enumerate() {
                let s = dot(x, c);
                if s > best.1 {
                    best = (j, s);
                }
            }
            best.0
        })
        .collect()
}

/// Gives every empty cluster the point farthest from its own centroid, taken from a cluster
/// that keeps at least one point.
fn relocate_into_empty(
    points: &[Vec<f32>],
    centroids: &[Vec<f32>],
    assignment: &mut [usize],
    k: usize,
) {
    let mut counts = vec![0usize; k];
    for &a in assignment.iter() {
        counts[a] += 1;
    }
    for empty in 0..k {
        if counts[empty] > 0 {
            continue;
        }
        let mut farthest: Option<(usize, f64)> = None;
        for (i, x) in points.iter().enumerate() {
            let own = assignment[i];
            if counts[own] < 2 {
                continue;
            }
            let d = cosine_distance(x, &centroids[own]);
            if farthest.is_none_or(|(_, best)| d > best) {
                farthest = Some((i, d));
            }
        }
        let (i, _) = farthest.expect("n >= k leaves a cluster with two points");
        counts[assignment[i]] -= 1;
        assignment[i] = empty;
        counts[empty] = 1;
    }
}

/// Each cluster's mean direction; a cluster whose members cancel out keeps its old centroid.
fn update(points: &[Vec<f32>], assignment: &[usize], old: Vec<Vec<f32>>) -> Vec<Vec<f32>> {
    let dim = points[0].len();
    let mut sums = vec![vec![0f64; dim]; old.len()];
    for (x, &a) in points.iter().zip(assignment) {
        for (s, &v) in sums[a].iter_mut().zip(x) {
            *s += f64::from(v);
        }
    }
    sums.into_iter()
        .zip(old)
        .map(|(sum, previous)| {
            let norm = sum.iter().map(|v| v * v).sum::<f64>().sqrt();
            if norm > 1e-12 {
                sum.iter().map(|v| (v / norm) as f32).collect()
            } else {
                previous
            }
        })
        .collect()
}

/// Σ (1 − cos(x, centroid of x)).
pub fn inertia(points: &[Vec<f32>], centroids: &[Vec<f32>], assignment: &[usize]) -> f64 {
    points
        .iter()
        .zip(assignment)
        .map(|(x, &a)| cosine_distance(x, &centroids[a]))
        .sum()
}

/// 1 − x·y for unit vectors, never below zero.
fn cosine_distance(x: &[f32], y: &[f32]) -> f64 {
    (1.0 - f64::from(dot(x, y))).max(0.0)
}

/// A dot product in eight lanes, so that it vectorises.
fn dot(x: &[f32], y: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (xc, yc) = (x.chunks_exact(8), y.chunks_exact(8));
    let tail: f32 = xc
        .remainder()
        .iter()
        .zip(yc.remainder())
        .map(|(a, b)| a * b)
        .sum();
    for (a, b) in xc.zip(yc) {
        for l in 0..8 {
            lanes[l] += a[l] * b[l];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// The points scaled to unit length; all must share one non-zero dimension and be finite.
fn unit_rows(points: &[Vec<f32>]) -> Result<Vec<Vec<f32>>, DisperseError> {
    let dim = points[0].len();
    points
        .iter()
        .enumerate()
        .map(|(index, x)| {
            let bad = |problem: String| DisperseError::Embedding { index, problem };
            if x.len() != dim || dim == 0 {
                return Err(bad(format!(
                    "has {} dimensions, the first has {dim}",
                    x.len()
                )));
            }
            if x.iter().any(|v| !v.is_finite()) {
                return Err(bad("is not finite".into()));
            }
            let norm = x.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>().sqrt();
            if norm == 0.0 {
                return Err(bad("is zero, so it has no direction".into()));
            }
            Ok(x.iter().map(|&v| (f64::from(v) / norm) as f32).collect())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_the_plain_sum() {
        let x: Vec<f32> = (0..19).map(|i| i as f32 * 0.5).collect();
        let y: Vec<f32> = (0..19).map(|i| 1.0 - i as f32 * 0.1).collect();
        let plain: f32 = x.iter().zip(&y).map(|(a, b)| a * b).sum();
        assert!((dot(&x, &y) - plain).abs() < 1e-4);
    }

    #[test]
    fn empty_clusters_take_the_farthest_point() {
        // Both centroids are the same direction, so every point goes to cluster 0 first.
        let points = vec![vec![1.0, 0.0], vec![0.6, 0.8], vec![0.0, 1.0]];
        let centroids = vec![vec![1.0, 0.0], vec![1.0, 0.0]];
        let mut a = assign(&points, &centroids);
        assert_eq!(a, [0, 0, 0]);
        relocate_into_empty(&points, &centroids, &mut a, 2);
        assert_eq!(a, [0, 0, 1]);
    }
}
