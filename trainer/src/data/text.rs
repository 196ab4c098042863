//! Pre-training-like plain text (Replay's data, EWC's Fisher data): documents from files, cut into
//! fixed-length token chunks.
//!
//! A source is a file or a folder (every `.txt` and `.jsonl` file under it, recursively, in path
//! order; other files such as a README are skipped). In a `.txt` file every non-blank line is one
//! document (LLaMA-Factory's rule for pre-training text: `wiki_demo.txt` holds one article per
//! line, WikiText one paragraph or heading per line); in a `.jsonl` file every non-blank line is an
//! object whose string `text` is one document (C4's form). The documents, in order, are tokenized
//! and joined with EOS between them into one stream (packing, as pre-training does), and the
//! stream is cut into chunks of exactly `len` tokens: BOS (when the tokenizer adds one) and then
//! `len − 1` stream tokens, or `len` stream tokens without BOS. The last, partial chunk is dropped.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use dtm_model::tokenizer::TextTokenizer;
use serde_json::Value;

use super::DataError;

/// Every document of `source`, in order.
pub fn read_documents(source: &Path) -> Result<Vec<String>, DataError> {
    let files = text_files(source)?;
    let mut documents = Vec::new();
    for file in &files {
        let jsonl = file.extension().is_some_and(|e| e == "jsonl");
        let handle = std::fs::File::open(file)
            .map_err(|e| DataError::file(file, format!("cannot open: {e}")))?;
        for (i, line) in std::io::BufReader::new(handle).lines().enumerate() {
            let at = |problem: String| DataError::Line {
                file: file.clone(),
                line: i + 1,
                problem,
            };
            let line = line.map_err(|e| at(format!("cannot read: {e}")))?;
            if line.trim().is_empty() {
                continue;
            }
            if jsonl {
                let value: Value =
                    serde_json::from_str(&line).map_err(|e| at(format!("not valid JSON: {e}")))?;
                match value.get("text") {
                    Some(Value::String(text)) if !text.trim().is_empty() => {
                        documents.push(text.clone())
                    }
                    Some(Value::String(_)) => {}
                    Some(_) => return Err(at("`text` is not a string".into())),
                    None => return Err(at("no `text` field (plain-text JSONL needs one)".into())),
                }
            } else {
                documents.push(line);
            }
        }
    }
    if documents.is_empty() {
        return Err(DataError::file(source, "holds no text"));
    }
    Ok(documents)
}

/// The files a source stands for: itself, or the `.txt`/`.jsonl` files under a folder.
fn text_files(source: &Path) -> Result<Vec<PathBuf>, DataError> {
    let meta = std::fs::metadata(source)
        .map_err(|e| DataError::file(source, format!("cannot open: {e}")))?;
    if meta.is_file() {
        if !is_text_file(source) {
            return Err(DataError::file(
                source,
                "not a .txt or .jsonl file (plain text: one document per line; JSONL: a `text` field)",
            ));
        }
        return Ok(vec![source.to_owned()]);
    }
    let mut files = Vec::new();
    let mut pending = vec![source.to_owned()];
    while let Some(dir) = pending.pop() {
        let entries = std::fs::read_dir(&dir)
            .map_err(|e| DataError::file(&dir, format!("cannot list: {e}")))?;
        for entry in entries {
            let path = entry
                .map_err(|e| DataError::file(&dir, format!("cannot list: {e}")))?
                .path();
            if path.is_dir() {
                pending.push(path);
            } else if is_text_file(&path) {
                files.push(path);
            }
        }
    }
    if files.is_empty() {
        return Err(DataError::file(source, "holds no .txt or .jsonl file"));
    }
    files.sort();
    Ok(files)
}

fn is_text_file(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "txt" || e == "jsonl")
}

/// Cuts the documents into chunks of exactly `len` tokens (see the module comment); `source`
/// names the data in errors.
pub fn chunk(
    documents: &[String],
    tokenizer: &TextTokenizer,
    len: usize,
    source: &Path,
) -> Result<Vec<Vec<u32>>, DataError> {
    let bos = tokenizer.bos_prefix();
    if len <= bos.len() {
        return Err(DataError::file(
            source,
            format!("chunks of {len} tokens leave no room for text"),
        ));
    }
    let body = len - bos.len();
    let eos = tokenizer.eos_token_ids().first().copied();
    let mut chunks = Vec::new();
    let mut current = bos.clone();
    let mut stream_tokens = 0usize;
    for (d, document) in documents.iter().enumerate() {
        let mut ids = tokenizer
            .encode(document)
            .map_err(|e| DataError::file(source, format!("cannot tokenize: {e}")))?;
        if d + 1 < documents.len() {
            ids.extend(eos);
        }
        stream_tokens += ids.len();
        let mut rest = &ids[..];
        while !rest.is_empty() {
            let take = (len - current.len()).min(rest.len());
            current.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if current.len() == len {
                chunks.push(std::mem::replace(&mut current, bos.clone()));
            }
        }
    }
    if chunks.is_empty() {
        return Err(DataError::file(
            source,
            format!("holds {stream_tokens} tokens, fewer than one chunk of {body} text tokens (--max-len {len})"),
        ));
    }
    Ok(chunks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_lines_and_jsonl() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("b.txt"), "first doc\n\n  \nsecond doc\n").unwrap();
        std::fs::write(
            dir.path().join("sub/a.jsonl"),
            "{\"text\": \"json doc\"}\n\n{\"text\": \"other\", \"meta\": 1}\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("README"), "skipped").unwrap();
        let docs = read_documents(dir.path()).unwrap();
        assert_eq!(docs, ["first doc", "second doc", "json doc", "other"]);

        std::fs::write(dir.path().join("sub/c.jsonl"), "{\"body\": 1}\n").unwrap();
        let e = read_documents(dir.path()).unwrap_err().to_string();
        assert!(
            e.ends_with("c.jsonl:1: no `text` field (plain-text JSONL needs one)"),
            "{e}"
        );

        let empty = dir.path().join("empty.txt");
        std::fs::write(&empty, "\n \n").unwrap();
        let e = read_documents(&empty).unwrap_err().to_string();
        assert!(e.contains("empty.txt: holds no text"), "{e}");
        let e = read_documents(&dir.path().join("README"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a .txt or .jsonl file"), "{e}");
    }
}
