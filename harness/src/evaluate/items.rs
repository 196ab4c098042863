//! `harness score --items FILE`: score named items only, e.g. the same random sample of every
//! benchmark for every model of a study, instead of the first N (`--limit`).
//!
//! The file is JSON: `{"TASK": [doc_id, …], …}`, TASK spelt as `--tasks` and `samples.jsonl`
//! spell it (`arc_challenge`, `mmlu:anatomy`). A task the file does not name is scored whole;
//! a listed doc_id the task does not have is an error. Items keep the task's order.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::error::{EvalError, Result};

/// Item lists by task name.
pub type ItemLists = BTreeMap<String, Vec<usize>>;

/// Reads an item-list file.
pub fn read(path: &Path) -> Result<ItemLists> {
    let text = std::fs::read_to_string(path).map_err(|e| EvalError::io(path, "cannot read", e))?;
    serde_json::from_str(&text).map_err(|e| {
        EvalError::Items(format!(
            "{}:{}:{}: {e}; expected {{\"TASK\": [doc_id, …], …}}",
            path.display(),
            e.line(),
            e.column()
        ))
    })
}

/// Keeps the items of `task` the lists name (all of them when the lists do not name `task`).
pub fn select<T>(
    lists: Option<&ItemLists>,
    task: &str,
    items: Vec<T>,
    doc_id: impl Fn(&T) -> usize,
) -> Result<Vec<T>> {
    let Some(wanted) = lists.and_then(|l| l.get(task)) else {
        return Ok(items);
    };
    let wanted: BTreeSet<usize> = wanted.iter().copied().collect();
    let have: BTreeSet<usize> = items.iter().map(&doc_id).collect();
    let unknown: Vec<String> = wanted.difference(&have).map(|id| id.to_string()).collect();
    if !unknown.is_empty() {
        return Err(EvalError::Items(format!(
            "--items: {task} has no item with doc_id {} (after --limit)",
            unknown.join(", ")
        )));
    }
    Ok(items
        .into_iter()
        .filter(|i| wanted.contains(&doc_id(i)))
        .collect())
}

/// Tasks the lists name that are not among the tasks being scored (a typo, most likely).
pub fn unused<'a>(lists: &'a ItemLists, scored: &[String]) -> Vec<&'a str> {
    lists
        .keys()
        .filter(|t| !scored.contains(t))
        .map(String::as_str)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_listed_items_in_task_order_and_refuses_unknown_ids() {
        let lists = ItemLists::from([("t".to_string(), vec![7, 2])]);
        let items = vec![1usize, 2, 5, 7];
        assert_eq!(
            select(Some(&lists), "t", items.clone(), |i| *i).unwrap(),
            vec![2, 7]
        );
        assert_eq!(
            select(Some(&lists), "other", items.clone(), |i| *i).unwrap(),
            items
        );
        let err = select(Some(&lists), "t", vec![1usize, 2], |i| *i)
            .unwrap_err()
            .to_string();
        assert!(err.contains("doc_id 7"), "{err}");
        assert_eq!(unused(&lists, &["x".into()]), vec!["t"]);
    }

    #[test]
    fn a_malformed_file_names_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("items.json");
        std::fs::write(&f, "{\n  \"t\": [1, \"x\"]\n}").unwrap();
        let err = read(&f).unwrap_err().to_string();
        assert!(err.contains("items.json:2:"), "{err}");
    }
}
