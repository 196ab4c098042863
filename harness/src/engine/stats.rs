//! Token accounting, so that prefix reuse is visible.

use serde::Serialize;

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Stats {
    /// Tokens the requests need the model to read (each request counted on its own).
    pub requested: usize,
    /// Tokens actually run through the model (real tokens; padding not counted).
    pub forwarded: usize,
    /// Padding slots run alongside them.
    pub padding: usize,
}

impl Stats {
    pub fn add(&mut self, other: &Stats) {
        self.requested += other.requested;
        self.forwarded += other.forwarded;
        self.padding += other.padding;
    }
}
