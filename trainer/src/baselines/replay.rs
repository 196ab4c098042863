//! Replay: chunks of pre-training-like text (see [`crate::data::text`]) interleaved into the SFT
//! optimiser batches at R replay tokens per SFT token (R = 1 is the paper's 1:1 mix), with the LM
//! loss on every token of a chunk (every token after the first; with a BOS-adding tokenizer the
//! chunk starts with BOS, so that is every text token).
//!
//! Replay chunks are sequences of the step like the SFT ones: under the token-mean loss every
//! replay token weighs as much as a response token; under the per-sequence loss each chunk is one
//! sequence. `--batch-size` counts the SFT sequences; the chunks come on top.
//!
//! SFT tokens count whole sequences (prompt, response, BOS/EOS), the data the model is fed. After
//! step k the run has taken ⌊R·S_k / L⌋ chunks of L tokens, S_k the SFT tokens of steps 0..k, so
//! the replayed tokens never trail R·S_k by a chunk or more. The chunks are used in a seeded
//! random order, a fresh permutation each pass over the corpus: which chunks a step gets is a
//! function of the step and the seed, like the rest of the run (exact resume).

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::data::examples::Example;
use dtm_model::model::projection::splitmix;

/// Keeps the replay order apart from the SFT order drawn from the same seed.
const SALT: u64 = 0x7265_706c_6179; // "replay"

#[derive(Debug, Clone)]
pub struct Replay {
    chunks: Vec<Example>,
    ratio: f64,
    seed: u64,
    chunk_len: usize,
    /// SFT tokens of the steps before step k, for k = 0..=steps.
    sft_before: Vec<u64>,
}

impl Replay {
    /// `chunks` all have the same length; `sft_tokens_per_step[k]` is the SFT tokens of step k.
    pub fn new(
        chunks: Vec<Vec<u32>>,
        ratio: f64,
        seed: u64,
        sft_tokens_per_step: &[usize],
    ) -> Self {
        let chunk_len = chunks.first().map_or(1, Vec::len);
        debug_assert!(chunks.iter().all(|c| c.len() == chunk_len));
        let chunks = chunks
            .into_iter()
            .enumerate()
            .map(|(i, tokens)| Example {
                tokens,
                target_start: 1,
                record: i,
            })
            .collect();
        let mut sft_before = Vec::with_capacity(sft_tokens_per_step.len() + 1);
        let mut total = 0u64;
        sft_before.push(0);
        for &t in sft_tokens_per_step {
            total += t as u64;
            sft_before.push(total);
        }
        Self {
            chunks,
            ratio,
            seed,
            chunk_len,
            sft_before,
        }
    }

    pub fn chunk_len(&self) -> usize {
        self.chunk_len
    }

    pub fn chunk_count(&self) -> usize {
        self.chunks.len()
    }

    /// Chunks taken by the steps before `step`: ⌊R · S_step / L⌋.
    pub fn chunks_before(&self, step: u64) -> u64 {
        let sft = self.sft_before[step as usize] as f64;
        (self.ratio * sft / self.chunk_len as f64).floor() as u64
    }

    /// The replay chunks of optimiser step `step` (0-based).
    pub fn batch(&self, step: u64) -> Vec<&Example> {
        let (from, to) = (self.chunks_before(step), self.chunks_before(step + 1));
        let n = self.chunks.len() as u64;
        let mut order: Option<(u64, Vec<usize>)> = None;
        (from..to)
            .map(|c| {
                let pass = c / n;
                if order.as_ref().is_none_or(|(p, _)| *p != pass) {
                    order = Some((pass, self.order(pass)));
                }
                let (_, perm) = order.as_ref().expect("set above");
                &self.chunks[perm[(c % n) as usize]]
            })
            .collect()
    }

    /// The chunk order of one pass over the corpus.
    fn order(&self, pass: u64) -> Vec<usize> {
        let mut perm: Vec<usize> = (0..self.chunks.len()).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(splitmix(self.seed ^ SALT) ^ splitmix(pass));
        perm.shuffle(&mut rng);
        perm
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(n: usize, len: usize) -> Vec<Vec<u32>> {
        (0..n).map(|i| vec![i as u32; len]).collect()
    }

    #[test]
    fn replayed_tokens_stay_within_one_chunk_of_the_ratio() {
        let steps: Vec<usize> = (0..200).map(|k| 37 + (k * 53) % 211).collect();
        for (ratio, len) in [(1.0, 64), (0.37, 50), (2.5, 128), (1.0, 1000)] {
            let replay = Replay::new(chunks(7, len), ratio, 3, &steps);
            let (mut sft, mut replayed) = (0u64, 0u64);
            for (k, &t) in steps.iter().enumerate() {
                let batch = replay.batch(k as u64);
                sft += t as u64;
                replayed += batch.iter().map(|e| e.tokens.len() as u64).sum::<u64>();
                let wanted = ratio * sft as f64;
                assert!(
                    replayed as f64 <= wanted && wanted - (replayed as f64) < len as f64,
                    "ratio {ratio}, step {k}: {replayed} replayed for {sft} SFT tokens"
                );
                assert!(batch.iter().all(|e| e.target_start == 1));
            }
        }
    }

    #[test]
    fn every_chunk_once_per_pass_in_a_seeded_order() {
        let steps = vec![100usize; 30];
        let replay = Replay::new(chunks(10, 20), 1.0, 5, &steps);
        let taken: Vec<usize> = (0..30)
            .flat_map(|k| replay.batch(k).into_iter().map(|e| e.record))
            .collect();
        assert_eq!(taken.len(), 150, "3000 SFT tokens / 20 per chunk");
        for pass in taken.chunks(10).take(15) {
            let mut seen = pass.to_vec();
            seen.sort();
            assert_eq!(seen, (0..10).collect::<Vec<_>>());
        }
        assert_ne!(taken[..10], taken[10..20], "a fresh order each pass");
        assert_ne!(taken[..10], (0..10).collect::<Vec<_>>(), "shuffled");
        let again = Replay::new(chunks(10, 20), 1.0, 5, &steps);
        assert_eq!(
            (0..30)
                .flat_map(|k| again.batch(k).into_iter().map(|e| e.record))
                .collect::<Vec<_>>(),
            taken
        );
        let other = Replay::new(chunks(10, 20), 1.0, 6, &steps);
        assert_ne!(
            other.batch(0).iter().map(|e| e.record).collect::<Vec<_>>(),
            taken[..5]
        );
    }
}
