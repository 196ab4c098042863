//! Instruction data: reading SFT records (Alpaca or chat JSONL) with errors that name the file
//! and line, building mixtures from the shared corpora, and turning records into token sequences.

pub mod examples;
pub mod mix;
pub mod text;

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{file}:{line}: {problem}")]
    Line {
        file: PathBuf,
        line: usize,
        problem: String,
    },
    #[error("{file}: {problem}")]
    File { file: PathBuf, problem: String },
}

impl DataError {
    pub fn file(file: &Path, problem: impl Into<String>) -> Self {
        Self::File {
            file: file.to_owned(),
            problem: problem.into(),
        }
    }
}

/// One instruction-response pair, as the SFT template consumes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub instruction: String,
    /// Alpaca's optional input, appended to the instruction on its own paragraph.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub input: String,
    pub output: String,
    /// Which corpus the record came from (mixtures set it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The record's index inside its source corpus.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_index: Option<usize>,
}

impl Record {
    /// The instruction as the template shows it: Alpaca's `input` follows on its own paragraph.
    pub fn full_instruction(&self) -> String {
        if self.input.trim().is_empty() {
            self.instruction.clone()
        } else {
            format!("{}\n\n{}", self.instruction, self.input)
        }
    }
}

/// Parses one JSON object as an SFT record: Alpaca form (`instruction`, optional `input`,
/// `output`) or chat form (`messages` with `role`/`content`; the first user turn and the
/// assistant turn after it; a system turn is dropped, later turns are ignored).
pub fn parse_record(value: &Value) -> Result<Record, String> {
    let obj = value.as_object().ok_or("not a JSON object")?;
    let text = |key: &str| -> Result<Option<String>, String> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(format!("`{key}` is not a string")),
        }
    };
    let source = text("source")?;
    let source_index = match obj.get("source_index") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .ok_or("`source_index` is not a non-negative integer")? as usize,
        ),
    };
    if let Some(messages) = obj.get("messages") {
        let messages = messages.as_array().ok_or("`messages` is not a list")?;
        let mut user = None;
        for m in messages {
            let role = m
                .get("role")
                .and_then(Value::as_str)
                .ok_or("a message has no string `role`")?;
            let content = m
                .get("content")
                .and_then(Value::as_str)
                .ok_or("a message has no string `content`")?;
            match (role, &user) {
                ("system", _) => {}
                ("user", None) => user = Some(content.to_owned()),
                ("assistant", Some(u)) => {
                    return Ok(Record {
                        instruction: u.clone(),
                        input: String::new(),
                        output: content.to_owned(),
                        source,
                        source_index,
                    })
                }
                ("assistant", None) => {
                    return Err("an assistant turn comes before any user turn".into())
                }
                ("user", Some(_)) => {
                    return Err("two user turns without an assistant turn between them".into())
                }
                (other, _) => return Err(format!("unknown role {other:?}")),
            }
        }
        return Err("`messages` has no user turn followed by an assistant turn".into());
    }
    let instruction = text("instruction")?.ok_or("no `instruction` (nor `messages`)")?;
    let output = text("output")?.ok_or("no `output`")?;
    Ok(Record {
        instruction,
        input: text("input")?.unwrap_or_default(),
        output,
        source,
        source_index,
    })
}

/// Reads a JSONL file of records; a malformed line is an error naming the file and line.
pub fn read_jsonl(path: &Path) -> Result<Vec<Record>, DataError> {
    Ok(read_jsonl_lines(path)?
        .into_iter()
        .map(|(record, _)| record)
        .collect())
}

/// Like [`read_jsonl`], keeping each record's line as it is in the file (without its line
/// ending), so that records can be passed on unchanged, byte for byte.
pub fn read_jsonl_lines(path: &Path) -> Result<Vec<(Record, String)>, DataError> {
    let mut out = Vec::new();
    for_each_json_line(path, |value, line| {
        out.push((parse_record(&value)?, line));
        Ok(())
    })?;
    if out.is_empty() {
        return Err(DataError::file(path, "holds no records"));
    }
    Ok(out)
}

/// Calls `f` with every non-blank line of a JSONL file, parsed and as written; a line that
/// cannot be read or parsed, or that `f` rejects, is an error naming the file and line.
pub fn for_each_json_line(
    path: &Path,
    mut f: impl FnMut(Value, String) -> Result<(), String>,
) -> Result<(), DataError> {
    let file = std::fs::File::open(path)
        .map_err(|e| DataError::file(path, format!("cannot open: {e}")))?;
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let at = |problem: String| DataError::Line {
            file: path.to_owned(),
            line: i + 1,
            problem,
        };
        let line = line.map_err(|e| at(format!("cannot read: {e}")))?;
        if line.trim().is_empty() {
            continue;
        }
        let value: Value =
            serde_json::from_str(&line).map_err(|e| at(format!("not valid JSON: {e}")))?;
        f(value, line).map_err(at)?;
    }
    Ok(())
}

/// Writes records as JSONL, atomically (a temporary file renamed into place).
pub fn write_jsonl(path: &Path, records: &[Record]) -> Result<(), DataError> {
    let mut text = Vec::new();
    for r in records {
        serde_json::to_writer(&mut text, r).expect("records serialise");
        text.push(b'\n');
    }
    write_atomic(path, &text)
}

/// Writes a whole file through a temporary sibling, so that a crash never leaves half a file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), DataError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)
        .map_err(|e| DataError::file(dir, format!("cannot create: {e}")))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .map_err(|e| DataError::file(dir, format!("cannot write: {e}")))?;
    // tempfile creates files readable by the owner only; outputs are ordinary files.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))
            .map_err(|e| DataError::file(path, format!("cannot write: {e}")))?;
    }
    tmp.write_all(bytes)
        .and_then(|_| tmp.as_file().sync_all())
        .map_err(|e| DataError::file(path, format!("cannot write: {e}")))?;
    tmp.persist(path)
        .map_err(|e| DataError::file(path, format!("cannot write: {}", e.error)))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn alpaca_and_chat_forms() {
        let a =
            parse_record(&json!({"instruction": "Add", "input": "1 2", "output": "3"})).unwrap();
        assert_eq!(a.full_instruction(), "Add\n\n1 2");
        let c = parse_record(&json!({"messages": [
            {"role": "system", "content": "be nice"},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "again"},
            {"role": "assistant", "content": "ignored"}
        ]}))
        .unwrap();
        assert_eq!((c.instruction.as_str(), c.output.as_str()), ("hi", "hello"));
        assert!(parse_record(&json!({"instruction": "x"}))
            .unwrap_err()
            .contains("output"));
        assert!(
            parse_record(&json!({"messages": [{"role": "assistant", "content": "x"}]})).is_err()
        );
    }

    #[test]
    fn malformed_line_names_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.jsonl");
        std::fs::write(&p, "{\"instruction\":\"a\",\"output\":\"b\"}\n\n{oops\n").unwrap();
        let e = read_jsonl(&p).unwrap_err().to_string();
        assert!(e.contains("d.jsonl:3: not valid JSON"), "{e}");
    }
}
