//! Checks of a plugin's output against its own description, shared by the plugin side (which
//! refuses to load with an inconsistent description) and the harness (which checks every item
//! and score it receives, so that a faulty plugin fails its task instead of reporting nonsense).

use std::collections::{BTreeMap, HashSet};

use crate::{Description, Item, ItemScore, LoadOptions};

/// The description is consistent: named metrics, a headline among them, options with values,
/// subtasks, and a default number of shots it can honour.
pub fn description(d: &Description) -> Result<(), String> {
    let err = |m: String| Err(format!("{}: invalid description: {m}", d.name));
    if d.name.trim().is_empty() {
        return Err("invalid description: empty task name".into());
    }
    let mut names = HashSet::new();
    for m in &d.metrics {
        if m.name.is_empty() || !names.insert(m.name.as_str()) {
            return err(format!("metric name {:?} is empty or repeated", m.name));
        }
    }
    if d.metrics.is_empty() {
        return err("no metrics".into());
    }
    if !names.contains(d.headline_metric.as_str()) {
        return err(format!(
            "headline metric {:?} is not among the metrics ({})",
            d.headline_metric,
            d.metrics
                .iter()
                .map(|m| m.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if d.subtasks.is_empty() {
        return err("no subtasks (a task without subtasks lists its own name)".into());
    }
    let mut options = HashSet::new();
    for o in &d.options {
        if !options.insert(o.name.as_str()) {
            return err(format!("option {:?} is declared twice", o.name));
        }
        if o.values.is_empty() {
            return err(format!(
                "option {:?} has no values (the first is the default)",
                o.name
            ));
        }
    }
    if d.default_num_fewshot > d.max_num_fewshot {
        return err(format!(
            "default_num_fewshot {} is more than max_num_fewshot {}",
            d.default_num_fewshot, d.max_num_fewshot
        ));
    }
    Ok(())
}

/// Items: unique ids, declared subtasks, at least one request each.
pub fn items(d: &Description, items: &[Item]) -> Result<(), String> {
    let mut ids = HashSet::new();
    for it in items {
        if !ids.insert(it.doc_id) {
            return Err(format!("{}: duplicate doc_id {}", d.name, it.doc_id));
        }
        if !d.subtasks.contains(&it.subtask) {
            return Err(format!(
                "{}: doc {}: subtask {:?} is not among the declared subtasks",
                d.name, it.doc_id, it.subtask
            ));
        }
        if it.requests.is_empty() {
            return Err(format!("{}: doc {}: no requests", d.name, it.doc_id));
        }
    }
    Ok(())
}

/// Every metric value is a finite number or null. (Checked on the plugin side: JSON cannot carry
/// NaN or infinity, which would reach the harness as null, "unavailable".)
pub fn finite_metrics(task: &str, s: &ItemScore) -> Result<(), String> {
    match s
        .metrics
        .iter()
        .find(|(_, v)| v.is_some_and(|v| !v.is_finite()))
    {
        Some((name, v)) => Err(format!(
            "{task}: doc {}: score has {name} = {}, not a finite number",
            s.doc_id,
            v.unwrap_or_default()
        )),
        None => Ok(()),
    }
}

/// One item's score: its own doc_id and subtask, every declared metric present, no other
/// metric, every value a finite number or null (unavailable).
pub fn item_score(d: &Description, item: &Item, s: &ItemScore) -> Result<(), String> {
    let err = |m: String| Err(format!("{}: doc {}: score {m}", d.name, item.doc_id));
    if s.doc_id != item.doc_id {
        return err(format!("is for doc {}", s.doc_id));
    }
    if s.subtask != item.subtask {
        return err(format!(
            "names subtask {:?}, the item {:?}",
            s.subtask, item.subtask
        ));
    }
    for m in &d.metrics {
        match s.metrics.get(&m.name) {
            None => return err(format!("lacks metric {:?}", m.name)),
            Some(Some(v)) if !v.is_finite() => {
                return err(format!("has {} = {v}, not a finite number", m.name))
            }
            _ => {}
        }
    }
    if let Some(extra) = s
        .metrics
        .keys()
        .find(|k| !d.metrics.iter().any(|m| &m.name == *k))
    {
        return err(format!("has undeclared metric {extra:?}"));
    }
    if let Some(g) = s.groups.iter().find(|g| !d.groups.contains(g)) {
        return err(format!("names undeclared group {g:?}"));
    }
    Ok(())
}

/// Check load options against a (consistent) description; return every option's value, defaults
/// filled in.
pub fn options(d: &Description, o: &LoadOptions) -> Result<BTreeMap<String, String>, String> {
    description(d)?;
    if let Some(n) = o.num_fewshot {
        if n > d.max_num_fewshot {
            return Err(format!(
                "{}: num_fewshot {n} is more than the {} available shots",
                d.name, d.max_num_fewshot
            ));
        }
    }
    let mut flags: BTreeMap<String, String> = d
        .options
        .iter()
        .map(|spec| (spec.name.clone(), spec.values[0].clone()))
        .collect();
    for (k, v) in &o.flags {
        let Some(spec) = d.options.iter().find(|s| &s.name == k) else {
            let known: Vec<&str> = d.options.iter().map(|s| s.name.as_str()).collect();
            return Err(format!(
                "{}: unknown option {k:?} (known: {})",
                d.name,
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ));
        };
        if !spec.values.contains(v) {
            return Err(format!(
                "{}: option {k}={v:?} not one of {}",
                d.name,
                spec.values.join(", ")
            ));
        }
        flags.insert(k.clone(), v.clone());
    }
    Ok(flags)
}
