//! lm-eval's answer filters (`lm_eval/filters/`): a pipeline turns one generated text into the
//! answer a metric compares. dtm asks for one generation per document, so each pipeline works on a
//! list of one response; `take_first` keeps the first, and the answer is the first left.

use dtm_bench_common::py_strip;

use crate::config::{FilterPipeline, FilterStep};

/// Run `pipeline` on one response.
pub fn apply(pipeline: &FilterPipeline, response: &str) -> Result<String, String> {
    let mut values = vec![response.to_string()];
    for step in &pipeline.steps {
        values = match step {
            FilterStep::TakeFirst => values.into_iter().take(1).collect(),
            FilterStep::Lowercase => values.iter().map(|v| v.to_lowercase()).collect(),
            FilterStep::Uppercase => values.iter().map(|v| v.to_uppercase()).collect(),
            FilterStep::Map { mapping, default } => values
                .iter()
                .map(|v| match mapping.get(v).or(default.as_ref()) {
                    Some(m) => Ok(m.clone()),
                    None => Err(format!(
                        "filter {:?}: map has no entry for {v:?} and no default_value",
                        pipeline.name
                    )),
                })
                .collect::<Result<_, _>>()?,
            FilterStep::Regex {
                pattern,
                group_select,
                fallback,
            } => values
                .iter()
                .map(|v| regex_select(pattern, *group_select, fallback, v))
                .collect::<Result<_, _>>()
                .map_err(|e| format!("filter {:?}: {e}", pipeline.name))?,
        };
    }
    values
        .into_iter()
        .next()
        .ok_or_else(|| format!("filter {:?} left no answer", pipeline.name))
}

/// Python's `re.findall(pattern, text)[group_select]`: whole matches without groups, the group
/// with one, and the first non-empty group of the tuple with several; stripped; `fallback` when
/// nothing matches.
fn regex_select(
    pattern: &regex::Regex,
    group_select: i64,
    fallback: &str,
    text: &str,
) -> Result<String, String> {
    let groups = pattern.captures_len() - 1;
    let matches: Vec<String> = pattern
        .captures_iter(text)
        .map(|c| match groups {
            0 => c.get(0).map_or("", |m| m.as_str()).to_string(),
            1 => c.get(1).map_or("", |m| m.as_str()).to_string(),
            _ => (1..=groups)
                .filter_map(|g| c.get(g).map(|m| m.as_str()))
                .find(|s| !s.is_empty())
                .unwrap_or(fallback)
                .to_string(),
        })
        .collect();
    if matches.is_empty() {
        return Ok(fallback.to_string());
    }
    let n = matches.len() as i64;
    let i = if group_select < 0 {
        n + group_select
    } else {
        group_select
    };
    if !(0..n).contains(&i) {
        return Err(format!(
            "group_select {group_select} is out of range: {n} match(es) in {text:?}"
        ));
    }
    Ok(py_strip(&matches[i as usize]).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn pipe(steps: Vec<FilterStep>) -> FilterPipeline {
        FilterPipeline {
            name: "p".into(),
            steps,
        }
    }

    fn re(p: &str, g: i64) -> FilterStep {
        FilterStep::Regex {
            pattern: regex::Regex::new(p).unwrap(),
            group_select: g,
            fallback: "[invalid]".into(),
        }
    }

    #[test]
    fn regex_follows_findall() {
        let text = "so 12 then #### 34 , and #### 5 ";
        // One group: the group; group_select indexes the matches, negative from the end.
        assert_eq!(
            apply(&pipe(vec![re(r"#### (\d+)", 0)]), text).unwrap(),
            "34"
        );
        assert_eq!(
            apply(&pipe(vec![re(r"#### (\d+)", -1)]), text).unwrap(),
            "5"
        );
        // No group: the whole match, stripped.
        assert_eq!(
            apply(&pipe(vec![re(r"#### \d+ ", 1)]), text).unwrap(),
            "#### 5"
        );
        // Two groups: the first non-empty one of the tuple.
        assert_eq!(apply(&pipe(vec![re(r"(x)|(\d+)", 0)]), text).unwrap(), "12");
        assert_eq!(
            apply(&pipe(vec![re(r"nothing", 0)]), text).unwrap(),
            "[invalid]"
        );
        assert!(apply(&pipe(vec![re(r"#### (\d+)", 2)]), text)
            .unwrap_err()
            .contains("out of range"));
        let map = FilterStep::Map {
            mapping: BTreeMap::from([("YES".to_string(), "yes".to_string())]),
            default: None,
        };
        let p = pipe(vec![FilterStep::Uppercase, map, FilterStep::TakeFirst]);
        assert_eq!(apply(&p, "Yes").unwrap(), "yes");
        assert!(apply(&p, "no").unwrap_err().contains("no default_value"));
        assert_eq!(
            apply(&pipe(vec![FilterStep::Lowercase]), "ÀB").unwrap(),
            "àb"
        );
    }
}
