//! Readers for the upstream data files. Every error names the file (and line when there is one).

use serde::de::DeserializeOwned;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

fn io_err(path: &Path, e: impl std::fmt::Display) -> String {
    format!("{}: {e}", path.display())
}

/// The whole file as UTF-8 text.
pub fn read_text(path: &Path) -> Result<String, String> {
    crate::api::record_data_file(path);
    std::fs::read_to_string(path).map_err(|e| io_err(path, e))
}

/// One JSON document (error: file, line, column).
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T, String> {
    let text = read_text(path)?;
    serde_json::from_str(&text).map_err(|e| {
        format!(
            "{}:{}:{}: malformed JSON: {e}",
            path.display(),
            e.line(),
            e.column()
        )
    })
}

fn parse_jsonl<T: DeserializeOwned>(
    path: &Path,
    reader: impl BufRead,
) -> Result<Vec<(usize, T)>, String> {
    let mut out = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line.map_err(|e| format!("{}:{}: {e}", path.display(), i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let v = serde_json::from_str(&line)
            .map_err(|e| format!("{}:{}: malformed record: {e}", path.display(), i + 1))?;
        out.push((i + 1, v));
    }
    Ok(out)
}

/// JSON Lines, one record per non-empty line (error: file and line).
pub fn read_jsonl<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>, String> {
    Ok(read_jsonl_numbered(path)?
        .into_iter()
        .map(|(_, v)| v)
        .collect())
}

/// JSON Lines with each record's 1-based line number (for later validation errors).
pub fn read_jsonl_numbered<T: DeserializeOwned>(path: &Path) -> Result<Vec<(usize, T)>, String> {
    crate::api::record_data_file(path);
    let f = std::fs::File::open(path).map_err(|e| io_err(path, e))?;
    parse_jsonl(path, BufReader::new(f))
}

/// Gzip-compressed JSON Lines.
pub fn read_jsonl_gz<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>, String> {
    crate::api::record_data_file(path);
    let f = std::fs::File::open(path).map_err(|e| io_err(path, e))?;
    let mut text = String::new();
    flate2::read::GzDecoder::new(f)
        .read_to_string(&mut text)
        .map_err(|e| io_err(path, format!("gzip: {e}")))?;
    Ok(parse_jsonl(path, text.as_bytes())?
        .into_iter()
        .map(|(_, v)| v)
        .collect())
}

/// A headerless CSV file as (1-based line, fields) rows of exactly `columns` fields
/// (error: file and line).
pub fn read_csv(path: &Path, columns: usize) -> Result<Vec<(u64, Vec<String>)>, String> {
    crate::api::record_data_file(path);
    let f = std::fs::File::open(path).map_err(|e| io_err(path, e))?;
    let mut r = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(f);
    let mut rows = Vec::new();
    for rec in r.records() {
        let rec = rec.map_err(|e| {
            let line = e.position().map(|p| p.line()).unwrap_or(0);
            format!("{}:{line}: malformed CSV: {e}", path.display())
        })?;
        let line = rec.position().map(|p| p.line()).unwrap_or(0);
        if rec.len() != columns {
            return Err(format!(
                "{}:{line}: expected {columns} fields, found {}",
                path.display(),
                rec.len()
            ));
        }
        rows.push((line, rec.iter().map(str::to_string).collect()));
    }
    Ok(rows)
}

/// Refuses a file whose item count differs from the protocol's: an empty, truncated or
/// different copy would otherwise change the benchmark silently. `what` names the items.
pub fn expect_count(path: &Path, what: &str, found: usize, expected: usize) -> Result<(), String> {
    if found == expected {
        return Ok(());
    }
    let how = if found == 0 {
        "no".to_string()
    } else {
        found.to_string()
    };
    Err(format!(
        "{}: {how} {what}, the protocol's set has {expected} (an incomplete or different copy; `harness data verify` checks the files against their upstream hashes)",
        path.display()
    ))
}

/// Files in `dir` whose names end with `suffix`, sorted by name (byte order).
pub fn list_files(dir: &Path, suffix: &str) -> Result<Vec<PathBuf>, String> {
    let rd = std::fs::read_dir(dir).map_err(|e| io_err(dir, e))?;
    let mut out = Vec::new();
    for entry in rd {
        let p = entry.map_err(|e| io_err(dir, e))?.path();
        if p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(suffix))
        {
            out.push(p);
        }
    }
    out.sort();
    if out.is_empty() {
        return Err(format!("{}: no *{suffix} files", dir.display()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_file_and_line() {
        let dir = std::env::temp_dir().join(format!("dtm-common-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("x.jsonl");
        std::fs::write(&p, "{\"a\":1}\n\n{\"a\":oops}\n").unwrap();
        let e = read_jsonl::<serde_json::Value>(&p).unwrap_err();
        assert!(e.contains("x.jsonl:3: malformed record"), "{e}");
        let c = dir.join("y.csv");
        std::fs::write(&c, "a,b,c\n\"d,e\",f,g\nh,i\n").unwrap();
        let e = read_csv(&c, 3).unwrap_err();
        assert!(e.contains("y.csv:3: expected 3 fields"), "{e}");
        let e = read_text(&dir.join("missing.txt")).unwrap_err();
        assert!(e.contains("missing.txt"), "{e}");
        let e = expect_count(&p, "questions", 0, 1319).unwrap_err();
        assert!(
            e.contains("x.jsonl: no questions, the protocol's set has 1319"),
            "{e}"
        );
        let e = expect_count(&p, "questions", 12, 1319).unwrap_err();
        assert!(e.contains("12 questions") && e.contains("1319"), "{e}");
        assert!(expect_count(&p, "questions", 1319, 1319).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
