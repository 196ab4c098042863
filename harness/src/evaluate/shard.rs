//! `harness score --shard I/N`: the I-th of N disjoint slices of a task's items, so that N
//! machines score one model together and `harness merge-shards` joins their outputs into the
//! run one machine would have written.
//!
//! Items are dealt out by position in the task's item list after `--limit` (and after a subtask
//! filter), a whole scoring chunk at a time: chunk c (items c·S … c·S+S−1 for `--chunk-size` S)
//! goes to shard c mod N + 1. The slices depend only on the item list, so they are disjoint,
//! cover every item, and stay the same whatever else changes. Dealing whole chunks keeps every
//! engine call of a shard exactly one of the unsharded run's calls (the same items batched
//! together), which is what makes a joined run equal the unsharded one bit for bit.

use std::fmt;
use std::str::FromStr;

/// One slice: `index` of `count`, both counted from 1 as on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl FromStr for Shard {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?}: expected I/N with 1 <= I <= N (e.g. 2/8)");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let index: usize = i.trim().parse().map_err(|_| bad())?;
        let count: usize = n.trim().parse().map_err(|_| bad())?;
        if index == 0 || count == 0 || index > count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl Shard {
    /// Whether the item at `position` (0-based, after the limit) belongs to this shard.
    pub fn keeps(&self, position: usize, chunk_size: usize) -> bool {
        (position / chunk_size.max(1)) % self.count == self.index - 1
    }

    /// The items of this shard, in their order.
    pub fn select<T>(&self, items: Vec<T>, chunk_size: usize) -> Vec<T> {
        items
            .into_iter()
            .enumerate()
            .filter(|(i, _)| self.keeps(*i, chunk_size))
            .map(|(_, item)| item)
            .collect()
    }
}

/// `items` as they are without a shard, else the shard's slice of them.
pub fn select<T>(shard: Option<Shard>, items: Vec<T>, chunk_size: usize) -> Vec<T> {
    match shard {
        Some(s) => s.select(items, chunk_size),
        None => items,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses() {
        assert_eq!(
            "2/8".parse::<Shard>().unwrap(),
            Shard { index: 2, count: 8 }
        );
        for bad in ["0/3", "4/3", "1/0", "3", "a/b", "1/3/4"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
        assert_eq!(Shard { index: 1, count: 3 }.to_string(), "1/3");
    }

    #[test]
    fn shards_are_disjoint_cover_everything_and_deal_whole_chunks() {
        let items: Vec<usize> = (0..23).collect();
        let slices: Vec<Vec<usize>> = (1..=3)
            .map(|i| Shard { index: i, count: 3 }.select(items.clone(), 4))
            .collect();
        // chunks of 4: [0..4) → 1, [4..8) → 2, [8..12) → 3, [12..16) → 1, [16..20) → 2, [20..23) → 3
        assert_eq!(slices[0], vec![0, 1, 2, 3, 12, 13, 14, 15]);
        assert_eq!(slices[1], vec![4, 5, 6, 7, 16, 17, 18, 19]);
        assert_eq!(slices[2], vec![8, 9, 10, 11, 20, 21, 22]);
        let mut all: Vec<usize> = slices.concat();
        all.sort();
        assert_eq!(all, items);
        // More shards than chunks: the last shards are empty, nothing is lost.
        let few: Vec<usize> = (0..3).collect();
        assert_eq!(Shard { index: 1, count: 4 }.select(few.clone(), 64), few);
        assert!(Shard { index: 4, count: 4 }.select(few, 64).is_empty());
    }
}
