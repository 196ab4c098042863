//! Reading a split's local files into documents the way Hugging Face `datasets` hands them to
//! lm-eval: JSON Lines or a JSON array for `json`, a CSV file with a header for `csv` (column types
//! inferred as pandas does: integers, floats, booleans, else strings; pandas' missing-value markers
//! become None). Columns missing from a record are None; a column mixing integers and floats is
//! floats, as Arrow unifies it.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::{Map, Number, Value};

use crate::config::DataFormat;
use crate::template::Doc;

/// Read every file of one split, in order. Errors name the file and line.
pub fn read_split(format: DataFormat, files: &[std::path::PathBuf]) -> Result<Vec<Doc>, String> {
    let mut docs = Vec::new();
    for f in files {
        match format {
            DataFormat::Json => docs.extend(read_json(f)?),
            DataFormat::Csv => docs.extend(read_csv(f)?),
        }
    }
    normalise(&mut docs);
    Ok(docs)
}

/// The columns of a split (lm-eval's `features`).
pub fn columns(docs: &[Doc]) -> BTreeSet<String> {
    docs.iter().flat_map(|d| d.keys().cloned()).collect()
}

fn read_json(path: &Path) -> Result<Vec<Doc>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let object = |v: Value, line: usize| match v {
        Value::Object(m) => Ok(m),
        other => Err(format!(
            "{}:{line}: a record must be a JSON object, found {}",
            path.display(),
            match other {
                Value::Array(_) => "an array",
                Value::String(_) => "a string",
                Value::Number(_) => "a number",
                _ => "a scalar",
            }
        )),
    };
    if text.trim_start().starts_with('[') {
        let v: Vec<Value> = serde_json::from_str(&text).map_err(|e| {
            format!(
                "{}:{}:{}: malformed JSON: {e}",
                path.display(),
                e.line(),
                e.column()
            )
        })?;
        return v.into_iter().map(|r| object(r, 1)).collect();
    }
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line)
            .map_err(|e| format!("{}:{}: malformed record: {e}", path.display(), i + 1))?;
        out.push(object(v, i + 1)?);
    }
    Ok(out)
}

/// pandas' default missing-value markers (`read_csv(na_values=None)`).
const NA_VALUES: &[&str] = &[
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
    "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
];

fn read_csv(path: &Path) -> Result<Vec<Doc>, String> {
    let f =
        std::fs::File::open(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let mut r = csv::ReaderBuilder::new().has_headers(true).from_reader(f);
    let header: Vec<String> = r
        .headers()
        .map_err(|e| format!("{}:1: malformed CSV header: {e}", path.display()))?
        .iter()
        .map(str::to_string)
        .collect();
    let mut rows: Vec<Vec<String>> = Vec::new();
    for rec in r.records() {
        let rec = rec.map_err(|e| {
            let line = e.position().map(|p| p.line()).unwrap_or(0);
            format!("{}:{line}: malformed CSV: {e}", path.display())
        })?;
        rows.push(rec.iter().map(str::to_string).collect());
    }
    let columns: Vec<Vec<Value>> = (0..header.len())
        .map(|c| infer_column(rows.iter().map(|r| r[c].as_str())))
        .collect();
    Ok((0..rows.len())
        .map(|i| {
            header
                .iter()
                .zip(&columns)
                .map(|(h, col)| (h.clone(), col[i].clone()))
                .collect()
        })
        .collect())
}

/// One CSV column typed as pandas would type it.
fn infer_column<'a>(cells: impl Iterator<Item = &'a str> + Clone) -> Vec<Value> {
    let na = |s: &str| NA_VALUES.contains(&s);
    let any_na = cells.clone().any(na);
    let all = |f: &dyn Fn(&str) -> bool| cells.clone().all(|s| na(s) || f(s));
    let is_int = |s: &str| s.trim().parse::<i64>().is_ok();
    let is_float = |s: &str| s.trim().parse::<f64>().is_ok();
    let is_bool = |s: &str| matches!(s, "True" | "False" | "TRUE" | "FALSE" | "true" | "false");
    let float = |s: &str| {
        Number::from_f64(s.trim().parse::<f64>().unwrap_or(f64::NAN))
            .map_or(Value::Null, Value::Number)
    };
    if all(&is_int) && !any_na && cells.clone().next().is_some() {
        cells
            .map(|s| Value::from(s.trim().parse::<i64>().unwrap_or(0)))
            .collect()
    } else if all(&is_float) && cells.clone().any(|s| !na(s)) {
        cells
            .map(|s| if na(s) { Value::Null } else { float(s) })
            .collect()
    } else if all(&is_bool) && cells.clone().any(|s| !na(s)) {
        cells
            .map(|s| {
                if na(s) {
                    Value::Null
                } else {
                    Value::Bool(s.eq_ignore_ascii_case("true"))
                }
            })
            .collect()
    } else {
        cells
            .map(|s| {
                if na(s) {
                    Value::Null
                } else {
                    Value::String(s.to_string())
                }
            })
            .collect()
    }
}

/// Give every record every column (None where absent) and unify integer/float columns.
fn normalise(docs: &mut [Doc]) {
    let cols = columns(docs);
    for c in &cols {
        let mixed = docs
            .iter()
            .any(|d| matches!(d.get(c), Some(Value::Number(n)) if n.is_f64()))
            && docs
                .iter()
                .any(|d| matches!(d.get(c), Some(Value::Number(n)) if !n.is_f64()));
        for d in docs.iter_mut() {
            let v = d.entry(c.clone()).or_insert(Value::Null);
            if mixed {
                if let Value::Number(n) = v {
                    if let Some(x) = n.as_f64().and_then(Number::from_f64) {
                        *v = Value::Number(x);
                    }
                }
            }
        }
    }
}

/// Python's `==` between two documents (lm-eval drops the evaluated document from its shots by
/// equality): integers equal floats of the same value.
pub fn py_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Bool(x), Value::Number(y)) | (Value::Number(y), Value::Bool(x)) => {
            y.as_f64() == Some(*x as u8 as f64)
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| py_eq(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| py_eq(v, w)))
        }
        _ => a == b,
    }
}

pub fn doc_eq(a: &Map<String, Value>, b: &Map<String, Value>) -> bool {
    a.len() == b.len() && a.iter().all(|(k, v)| b.get(k).is_some_and(|w| py_eq(v, w)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn csv_columns_are_typed_as_pandas_types_them() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.csv");
        std::fs::write(
            &p,
            "q,label,score,ok,mixed,gap\n\"a, b\",1,0.5,True,x,\nc,2,,False,3,NA\n",
        )
        .unwrap();
        let docs = read_split(DataFormat::Csv, &[p]).unwrap();
        assert_eq!(
            Value::Object(docs[0].clone()),
            json!({"q": "a, b", "label": 1, "score": 0.5, "ok": true, "mixed": "x", "gap": null})
        );
        assert_eq!(docs[1]["score"], Value::Null);
        assert_eq!(docs[1]["mixed"], json!("3"));
    }

    #[test]
    fn json_lines_and_arrays_with_line_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.jsonl");
        std::fs::write(&p, "{\"a\": 1}\n\n{\"a\": 2.5, \"b\": \"x\"}\n").unwrap();
        let docs = read_split(DataFormat::Json, std::slice::from_ref(&p)).unwrap();
        assert_eq!(Value::Object(docs[0].clone()), json!({"a": 1.0, "b": null}));
        std::fs::write(&p, "{\"a\": 1}\n{\"a\": oops}\n").unwrap();
        let e = read_split(DataFormat::Json, std::slice::from_ref(&p)).unwrap_err();
        assert!(e.contains("d.jsonl:2: malformed record"), "{e}");
        std::fs::write(&p, "[{\"a\": 1}, {\"a\": 2}]").unwrap();
        assert_eq!(read_split(DataFormat::Json, &[p]).unwrap().len(), 2);
        assert!(py_eq(&json!({"a": 1}), &json!({"a": 1.0})));
    }
}
