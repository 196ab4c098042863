//! The ARC / OpenBookQA JSONL format:
//! `{"id", "question": {"stem", "choices": [{"text", "label"}]}, "answerKey"}`.

use crate::data::read_jsonl_numbered;
use serde::Deserialize;
use std::path::Path;

#[derive(Deserialize)]
struct Raw {
    id: String,
    question: RawQuestion,
    #[serde(rename = "answerKey")]
    answer_key: String,
}

#[derive(Deserialize)]
struct RawQuestion {
    stem: String,
    choices: Vec<RawChoice>,
}

#[derive(Deserialize)]
struct RawChoice {
    text: String,
    label: String,
}

/// One question with its choices in file order.
#[derive(Clone, Debug)]
pub struct McDoc {
    pub id: String,
    pub stem: String,
    pub choices: Vec<String>,
    pub labels: Vec<String>,
    /// Index of `answerKey` among the labels.
    pub gold: usize,
}

/// Read the file; an `answerKey` that is not one of the labels is an error naming file and line.
pub fn read(path: &Path) -> Result<Vec<McDoc>, String> {
    read_jsonl_numbered::<Raw>(path)?
        .into_iter()
        .map(|(line, r)| {
            let labels: Vec<String> = r.question.choices.iter().map(|c| c.label.clone()).collect();
            let gold = labels
                .iter()
                .position(|l| *l == r.answer_key)
                .ok_or_else(|| {
                    format!(
                        "{}:{line}: answerKey {:?} is not one of the labels {labels:?}",
                        path.display(),
                        r.answer_key
                    )
                })?;
            Ok(McDoc {
                id: r.id,
                stem: r.question.stem,
                choices: r.question.choices.into_iter().map(|c| c.text).collect(),
                labels,
                gold,
            })
        })
        .collect()
}
