//! Whether two runs' results on a task may be compared item by item, and on which items.
//!
//! Items are paired by (task, doc_id). Two runs are comparable on a task when they scored the
//! same items with the same protocol settings (plugin version, headline metric, few-shot count,
//! generation cap, plugin options, …) from byte-identical data files.

use std::collections::{BTreeMap, BTreeSet};

use super::runs::TaskResult;

/// The first few doc_ids of a set, for messages.
fn some_ids(ids: &BTreeSet<usize>) -> String {
    let shown: Vec<String> = ids.iter().take(5).map(usize::to_string).collect();
    let more = if ids.len() > 5 { ", …" } else { "" };
    format!("doc_id {}{more}", shown.join(", "))
}

fn short(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}

/// What differs between `a` (run `a_name`) and `b` (run `b_name`) on one task, one sentence per
/// difference; empty when they may be compared as they are.
pub fn differences(a_name: &str, a: &TaskResult, b_name: &str, b: &TaskResult) -> Vec<String> {
    let mut out = Vec::new();
    if a.plugin_version != b.plugin_version {
        out.push(format!(
            "plugin version {} in `{a_name}`, {} in `{b_name}`",
            a.plugin_version, b.plugin_version
        ));
    }
    if a.headline_metric != b.headline_metric {
        out.push(format!(
            "headline metric `{}` in `{a_name}`, `{}` in `{b_name}`",
            a.headline_metric, b.headline_metric
        ));
    }
    let keys: BTreeSet<&String> = a.settings.keys().chain(b.settings.keys()).collect();
    for k in keys {
        let (x, y) = (a.settings.get(k), b.settings.get(k));
        if x != y {
            let show = |v: Option<&serde_json::Value>| v.map_or("absent".into(), |v| v.to_string());
            out.push(format!(
                "protocol setting {k} = {} in `{a_name}`, {} in `{b_name}`",
                show(x),
                show(y)
            ));
        }
    }
    let files: BTreeSet<&String> = a.data_files.keys().chain(b.data_files.keys()).collect();
    for f in files {
        match (a.data_files.get(f), b.data_files.get(f)) {
            (Some(x), Some(y)) if x != y => out.push(format!(
                "data file {f}: sha256 {}… in `{a_name}`, {}… in `{b_name}`",
                short(x),
                short(y)
            )),
            (Some(_), None) => out.push(format!("data file {f} read only by `{a_name}`")),
            (None, Some(_)) => out.push(format!("data file {f} read only by `{b_name}`")),
            _ => {}
        }
    }
    let ids = |t: &TaskResult| t.items.keys().copied().collect::<BTreeSet<usize>>();
    let (ia, ib) = (ids(a), ids(b));
    if ia != ib {
        let only_a: BTreeSet<usize> = ia.difference(&ib).copied().collect();
        let only_b: BTreeSet<usize> = ib.difference(&ia).copied().collect();
        let mut parts = Vec::new();
        if !only_a.is_empty() {
            parts.push(format!(
                "{} only in `{a_name}` ({})",
                only_a.len(),
                some_ids(&only_a)
            ));
        }
        if !only_b.is_empty() {
            parts.push(format!(
                "{} only in `{b_name}` ({})",
                only_b.len(),
                some_ids(&only_b)
            ));
        }
        out.push(format!(
            "item sets differ ({} vs {} items): {}",
            ia.len(),
            ib.len(),
            parts.join("; ")
        ));
    }
    out
}

/// Paired values of the items both maps hold, in doc_id order: `(doc_ids, a, b)`. `None` when
/// any paired value is unavailable.
#[allow(clippy::type_complexity)]
pub fn pair(
    a: &BTreeMap<usize, Option<f64>>,
    b: &BTreeMap<usize, Option<f64>>,
) -> Option<(Vec<usize>, Vec<f64>, Vec<f64>)> {
    let mut ids = Vec::new();
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    for (id, x) in a {
        if let Some(y) = b.get(id) {
            ids.push(*id);
            xs.push((*x)?);
            ys.push((*y)?);
        }
    }
    Some((ids, xs, ys))
}
