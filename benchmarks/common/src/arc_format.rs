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

/// What distinguishes one zero-shot benchmark over an ARC-format file from another (ARC-Challenge,
/// OpenBookQA): everything else is [`ArcFormatTask`].
pub trait ArcFormatSpec: Send + Sync + 'static {
    const NAME: &'static str;
    /// Relative to the data folder.
    const TEST_FILE: &'static str;
    /// Questions in the test file (PROTOCOL.md §3).
    const TEST_QUESTIONS: usize;
    const SUMMARY: &'static str;
    /// The prompt of one question; each choice is scored as `" " + text` after it.
    fn doc_to_text(d: &McDoc) -> String;
}

/// A zero-shot multiple-choice benchmark over an ARC-format file: acc (headline) and acc_norm.
pub struct ArcFormatTask<S> {
    pub docs: Vec<McDoc>,
    spec: std::marker::PhantomData<S>,
}

impl<S: ArcFormatSpec> crate::api::Benchmark for ArcFormatTask<S> {
    fn describe() -> crate::api::Description {
        crate::api::Description {
            name: S::NAME.into(),
            version: "1".into(),
            summary: S::SUMMARY.into(),
            output_type: crate::api::OutputType::MultipleChoice,
            metrics: crate::mc::acc_metrics(),
            headline_metric: "acc".into(),
            default_num_fewshot: 0,
            max_num_fewshot: 0,
            subtasks: vec![S::NAME.into()],
            groups: vec![],
            options: vec![],
            program_timeout_s: None,
        }
    }

    fn load(data_dir: &Path, _options: &crate::api::LoadOptions) -> crate::api::PluginResult<Self> {
        let path = data_dir.join(S::TEST_FILE);
        let docs = read(&path)?;
        crate::data::expect_count(&path, "questions", docs.len(), S::TEST_QUESTIONS)?;
        Ok(ArcFormatTask {
            docs,
            spec: std::marker::PhantomData,
        })
    }

    fn items(&self) -> Vec<crate::api::Item> {
        self.docs
            .iter()
            .enumerate()
            .map(|(i, d)| crate::api::Item {
                doc_id: i,
                subtask: S::NAME.into(),
                requests: crate::mc::requests(
                    &S::doc_to_text(d),
                    &d.choices,
                    crate::prompt::TARGET_DELIMITER,
                ),
            })
            .collect()
    }

    fn score(
        &self,
        doc_id: usize,
        responses: &[crate::api::Response],
        _outcomes: &[crate::api::Outcome],
    ) -> crate::api::PluginResult<crate::api::ItemScore> {
        let d = crate::doc(&self.docs, doc_id)?;
        crate::mc::score_item(
            doc_id,
            S::NAME,
            responses,
            &d.choices,
            &d.labels,
            d.gold,
            true,
        )
    }
}
