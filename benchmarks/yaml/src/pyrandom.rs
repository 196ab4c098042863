//! Python's `random.Random(seed).sample`, reproduced so that lm-eval's default few-shot sampler
//! picks the same examples here: CPython seeds its Mersenne Twister with `init_by_array` over the
//! seed's 32-bit words, draws `randbelow(n)` by rejection from `getrandbits(n.bit_length())`, and
//! `sample` uses a shrinking pool for small populations and a set of picks for large ones
//! (`Lib/random.py`). The twister itself is `rand_mt` (the reference MT19937).

use rand_mt::Mt;

pub struct PyRandom {
    mt: Mt,
}

impl PyRandom {
    /// `random.Random(seed)` for a non-negative integer seed.
    pub fn new(seed: u64) -> Self {
        let mut key = vec![seed as u32];
        if seed >> 32 != 0 {
            key.push((seed >> 32) as u32);
        }
        PyRandom {
            mt: Mt::new_with_key(key),
        }
    }

    /// `getrandbits(k)` for 1 ≤ k ≤ 32.
    fn getrandbits(&mut self, k: u32) -> u32 {
        debug_assert!((1..=32).contains(&k));
        self.mt.next_u32() >> (32 - k)
    }

    /// `_randbelow_with_getrandbits(n)` for n ≥ 1.
    fn randbelow(&mut self, n: usize) -> usize {
        assert!(
            n >= 1 && n <= u32::MAX as usize,
            "population size out of range"
        );
        let k = usize::BITS - n.leading_zeros();
        loop {
            let r = self.getrandbits(k) as usize;
            if r < n {
                return r;
            }
        }
    }

    /// The positions `random.sample(range(n), k)` picks, in order. `k ≤ n`.
    pub fn sample(&mut self, n: usize, k: usize) -> Vec<usize> {
        assert!(k <= n, "sample larger than population");
        let mut setsize = 21usize;
        if k > 5 {
            let exp = ((k * 3) as f64).ln() / 4f64.ln();
            setsize += 4usize.pow(exp.ceil() as u32);
        }
        let mut result = Vec::with_capacity(k);
        if n <= setsize {
            let mut pool: Vec<usize> = (0..n).collect();
            for i in 0..k {
                let j = self.randbelow(n - i);
                result.push(pool[j]);
                pool[j] = pool[n - i - 1];
            }
        } else {
            let mut selected = std::collections::HashSet::new();
            for _ in 0..k {
                let mut j = self.randbelow(n);
                while selected.contains(&j) {
                    j = self.randbelow(n);
                }
                selected.insert(j);
                result.push(j);
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    const EXPECTED_1234: [&[usize]; 5] = [
        &[7, 1, 0],
        &[1, 0, 9],
        &[12, 98, 45, 30, 2, 3],
        &[0, 2, 3, 1, 4],
        &[152, 93],
    ];
    const EXPECTED_0: [usize; 4] = [24, 48, 26, 2];
    const EXPECTED_BIG: [usize; 3] = [4, 5, 6];

    /// Made once with CPython 3 (`/work/venv`):
    /// `r = random.Random(1234); [r.sample(range(n), k) for n, k in [(10, 3), (10, 3), (100, 6), (5, 5), (1000, 2)]]`
    /// and `random.Random(0).sample(range(50), 4)`, `random.Random(2**40 + 7).sample(range(7), 3)`.
    #[test]
    fn matches_cpython() {
        let mut r = PyRandom::new(1234);
        let got: Vec<Vec<usize>> = [(10, 3), (10, 3), (100, 6), (5, 5), (1000, 2)]
            .iter()
            .map(|&(n, k)| r.sample(n, k))
            .collect();
        assert_eq!(got, EXPECTED_1234.map(|s| s.to_vec()));
        assert_eq!(PyRandom::new(0).sample(50, 4), EXPECTED_0);
        assert_eq!(PyRandom::new((1 << 40) + 7).sample(7, 3), EXPECTED_BIG);
    }
}
