//! A Tulu-like instruction mixture from the corpora in the shared data folder.
//!
//! The paper tunes on Tulu-v2's mixture; its large parts are not obtainable here (see the data
//! folder's SOURCES.md), so a mixture is built from what is: FLAN-v2 chain-of-thought, Code Alpaca,
//! LIMA and the Alpaca-GPT4 demo set, with a record count per source and a seed. Every output
//! record carries `source` and `source_index` (its index in that corpus, in file order).

use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

use super::{parse_record, DataError, Record};

/// The corpora a mixture can draw from, by the name used on the command line.
pub const SOURCES: &[(&str, &str)] = &[
    (
        "flan_v2_cot",
        "FLAN-v2 CoT: flan_v2_cot/flan/v2/cot_data/*_train.tsv (question, answer, rationale)",
    ),
    (
        "codealpaca",
        "Code Alpaca: codealpaca/data/code_alpaca_2k.json then new_codealpaca.json",
    ),
    (
        "lima",
        "LIMA (LLaMA-Factory's conversion): lima/data/lima.json, first turn of each dialogue",
    ),
    (
        "alpaca_gpt4",
        "Alpaca-GPT4 demo subset: alpaca_gpt4_demo/data/alpaca_en_demo.json",
    ),
];

/// Every record of one corpus, in file order, with `source` and `source_index` set.
pub fn load_source(data_dir: &Path, name: &str) -> Result<Vec<Record>, DataError> {
    let mut records = match name {
        "flan_v2_cot" => flan_cot(&data_dir.join("flan_v2_cot/flan/v2/cot_data"))?,
        "codealpaca" => {
            let dir = data_dir.join("codealpaca/data");
            let mut r = json_list(&dir.join("code_alpaca_2k.json"))?;
            r.extend(json_list(&dir.join("new_codealpaca.json"))?);
            r
        }
        "lima" => json_list(&data_dir.join("lima/data/lima.json"))?,
        "alpaca_gpt4" => json_list(&data_dir.join("alpaca_gpt4_demo/data/alpaca_en_demo.json"))?,
        other => {
            let known: Vec<&str> = SOURCES.iter().map(|(n, _)| *n).collect();
            return Err(DataError::file(
                data_dir,
                format!("unknown source {other:?} (known: {})", known.join(", ")),
            ));
        }
    };
    for (i, r) in records.iter_mut().enumerate() {
        r.source = Some(name.to_owned());
        r.source_index = Some(i);
    }
    Ok(records)
}

/// Draws `count` records (without replacement) from each source, seeded; within a source the
/// drawn records keep file order, and sources follow the order given.
pub fn mix(
    data_dir: &Path,
    counts: &[(String, usize)],
    seed: u64,
) -> Result<Vec<Record>, DataError> {
    let mut out = Vec::new();
    for (k, (name, count)) in counts.iter().enumerate() {
        let all = load_source(data_dir, name)?;
        if *count > all.len() {
            return Err(DataError::file(
                data_dir,
                format!(
                    "source {name} has {} records, {count} were asked for",
                    all.len()
                ),
            ));
        }
        let mut idx: Vec<usize> = (0..all.len()).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_add(k as u64));
        idx.shuffle(&mut rng);
        let mut chosen = idx[..*count].to_vec();
        chosen.sort_unstable();
        out.extend(chosen.into_iter().map(|i| all[i].clone()));
    }
    Ok(out)
}

fn json_list(path: &Path) -> Result<Vec<Record>, DataError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| DataError::file(path, format!("cannot read: {e}")))?;
    let value: Value = serde_json::from_str(&text)
        .map_err(|e| DataError::file(path, format!("not valid JSON: {e}")))?;
    let items = value
        .as_array()
        .ok_or_else(|| DataError::file(path, "not a JSON list"))?;
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let mut item = item.clone();
            if let Some(obj) = item.as_object_mut() {
                // LLaMA-Factory keeps earlier turns of a dialogue in `history`: the first turn is
                // the record (PROTOCOL §4 keeps only the first turn).
                if let Some(first) = obj
                    .get("history")
                    .and_then(Value::as_array)
                    .and_then(|h| h.first())
                    .and_then(Value::as_array)
                    .cloned()
                {
                    if let [Value::String(q), Value::String(a)] = first.as_slice() {
                        obj.insert("instruction".into(), Value::String(q.clone()));
                        obj.insert("input".into(), Value::String(String::new()));
                        obj.insert("output".into(), Value::String(a.clone()));
                    }
                }
                obj.remove("history");
                // new_codealpaca.json duplicates `output` as `response`.
                obj.remove("response");
            }
            parse_record(&item)
                .map_err(|problem| DataError::file(path, format!("item {i}: {problem}")))
        })
        .collect()
}

/// FLAN-v2 CoT TSVs (question, answer, rationale), files in name order. The instruction is the
/// question (upstream's two-character `\n` escapes become newlines); the response is the rationale
/// followed by `So the answer is {answer}.`, the FLAN CoT answer form.
fn flan_cot(dir: &Path) -> Result<Vec<Record>, DataError> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| DataError::file(dir, format!("cannot list: {e}")))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "tsv"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(DataError::file(dir, "holds no .tsv files"));
    }
    let mut out = Vec::new();
    for file in files {
        let mut reader = csv::ReaderBuilder::new()
            .delimiter(b'\t')
            .has_headers(false)
            .quoting(false)
            .flexible(true)
            .from_path(&file)
            .map_err(|e| DataError::file(&file, format!("cannot open: {e}")))?;
        for (i, row) in reader.records().enumerate() {
            let row = row.map_err(|e| DataError::Line {
                file: file.clone(),
                line: i + 1,
                problem: e.to_string(),
            })?;
            if row.len() != 3 {
                return Err(DataError::Line {
                    file: file.clone(),
                    line: i + 1,
                    problem: format!("expected 3 tab-separated fields, found {}", row.len()),
                });
            }
            let unescape = |s: &str| s.replace("\\n", "\n").trim().to_owned();
            out.push(Record {
                instruction: unescape(&row[0]),
                input: String::new(),
                output: format!(
                    "{} So the answer is {}.",
                    unescape(&row[2]),
                    unescape(&row[1])
                ),
                source: None,
                source_index: None,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data")
    }

    #[test]
    fn every_source_loads_with_its_upstream_count() {
        // Counts from shared/data/SOURCES.md (counted there with Python's parsers).
        let expect = [
            ("flan_v2_cot", 33_443),
            ("codealpaca", 2_017 + 4_535),
            ("lima", 1_029),
            ("alpaca_gpt4", 999),
        ];
        for (name, n) in expect {
            let r = load_source(&data_dir(), name).unwrap();
            assert_eq!(r.len(), n, "{name}");
            assert!(r.iter().all(|r| !r.instruction.is_empty()), "{name}");
        }
    }

    #[test]
    fn mixture_is_seeded_sized_and_tagged() {
        let counts = vec![("lima".to_string(), 5), ("alpaca_gpt4".to_string(), 7)];
        let a = mix(&data_dir(), &counts, 1).unwrap();
        let b = mix(&data_dir(), &counts, 1).unwrap();
        let c = mix(&data_dir(), &counts, 2).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.len(), 12);
        assert!(a[..5].iter().all(|r| r.source.as_deref() == Some("lima")));
        let lima = load_source(&data_dir(), "lima").unwrap();
        for r in &a[..5] {
            assert_eq!(&lima[r.source_index.unwrap()], r);
        }
        let e = mix(&data_dir(), &[("lima".into(), 5000)], 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("1029 records"), "{e}");
    }
}
