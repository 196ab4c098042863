//! Which of a task's items a run scores: of the task's (or subtask's) items, an explicit item
//! list (`--items`), then a shard's slice (`--shard`), in that order, so that shards of an item
//! list split exactly the listed items.

use serde_json::{json, Value};

use dtm_plugin_api::Item;

use super::error::{EvalError, Result};
use super::items::{self, ItemLists};
use super::shard::{self, Shard};

/// Keys of a run's settings that record the subset.
pub const ITEMS_KEY: &str = "items";
pub const SHARD_KEY: &str = "shard";
pub const CHUNK_KEY: &str = "chunk_size";

#[derive(Default)]
pub struct Subset {
    pub lists: Option<ItemLists>,
    pub shard: Option<Shard>,
    /// Items per scoring chunk: shards deal whole chunks.
    pub chunk_size: usize,
}

impl Subset {
    /// `harness score`'s subset: the item-list file (read and checked against the task names
    /// being scored), the shard and the chunk size.
    pub fn from_args(
        items_file: Option<&std::path::Path>,
        shard: Option<Shard>,
        chunk_size: usize,
        specs: &[(String, Option<String>)],
    ) -> Result<Self> {
        let lists = items_file.map(items::read).transpose()?;
        if let Some(lists) = &lists {
            let names: Vec<String> = specs
                .iter()
                .map(|(t, sub)| sub.clone().unwrap_or_else(|| t.clone()))
                .collect();
            let unused = items::unused(lists, &names);
            if !unused.is_empty() {
                return Err(EvalError::Items(format!(
                    "--items names {}, which --tasks does not score",
                    unused.join(", ")
                )));
            }
        }
        Ok(Subset {
            lists,
            shard,
            chunk_size,
        })
    }

    /// The items of task `name` (`mmlu`, or `mmlu:anatomy` with the subtask's items only) that
    /// this run scores.
    pub fn of(&self, name: &str, all: Vec<Item>) -> Result<Vec<Item>> {
        let listed = items::select(self.lists.as_ref(), name, all, |i| i.doc_id)?;
        Ok(shard::select(self.shard, listed, self.chunk_size))
    }

    /// Notes the item lists and the shard in a run's settings: a restart must score the same
    /// items, and `harness merge-shards` must know which slice a folder holds.
    pub fn record(&self, settings: &mut Value) {
        if let Some(lists) = &self.lists {
            settings[ITEMS_KEY] = json!(lists);
        }
        if let Some(s) = self.shard {
            settings[SHARD_KEY] = json!(s.to_string());
            settings[CHUNK_KEY] = json!(self.chunk_size);
        }
    }
}
