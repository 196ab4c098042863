//! Token accounting, so that prefix reuse is visible.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Stats {
    /// Tokens the requests need the model to read (each request counted on its own).
    pub requested: usize,
    /// Tokens actually run through the model (real tokens; padding not counted).
    pub forwarded: usize,
    /// Padding slots run alongside them.
    pub padding: usize,
    /// Tokens produced by generation, each run through the model once more to extend the cache.
    pub generated: usize,
    /// Forward passes of generation's decoding loop, each extending every running row by one
    /// token: `generated / decode_steps` is how full the generation batches were. (Absent from
    /// results written before it was counted.)
    #[serde(default)]
    pub decode_steps: usize,
}

impl Stats {
    /// What was done since `earlier` (counters only grow).
    pub fn since(&self, earlier: &Stats) -> Stats {
        Stats {
            requested: self.requested - earlier.requested,
            forwarded: self.forwarded - earlier.forwarded,
            padding: self.padding - earlier.padding,
            generated: self.generated - earlier.generated,
            decode_steps: self.decode_steps - earlier.decode_steps,
        }
    }

    pub fn add(&mut self, other: &Stats) {
        self.requested += other.requested;
        self.forwarded += other.forwarded;
        self.padding += other.padding;
        self.generated += other.generated;
        self.decode_steps += other.decode_steps;
    }
}
