//! Uniform random dispersal: a seeded permutation of the records cut into K consecutive,
//! near-equal parts (the first `n mod K` parts hold one record more).

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::DisperseError;

/// The portion (0-based) of each of `n` records.
pub fn assign(n: usize, k: usize, seed: u64) -> Result<Vec<usize>, DisperseError> {
    super::check_k(n, k)?;
    let mut permutation: Vec<usize> = (0..n).collect();
    permutation.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let mut assignment = vec![0; n];
    let mut start = 0;
    for (portion, size) in part_sizes(n, k).into_iter().enumerate() {
        for &record in &permutation[start..start + size] {
            assignment[record] = portion;
        }
        start += size;
    }
    Ok(assignment)
}

/// `n` split into `k` sizes that differ by at most one, larger ones first.
pub fn part_sizes(n: usize, k: usize) -> Vec<usize> {
    (0..k).map(|j| n / k + usize::from(j < n % k)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_by_hand() {
        assert_eq!(part_sizes(10, 4), [3, 3, 2, 2]);
        assert_eq!(part_sizes(8, 4), [2, 2, 2, 2]);
        assert_eq!(part_sizes(3, 3), [1, 1, 1]);
    }
}
