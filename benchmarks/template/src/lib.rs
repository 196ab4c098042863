//! tiny_qa: a complete, minimal benchmark plugin for the dtm harness.
//!
//! Each line of `questions.jsonl` is `{"question", "choices": [...], "answer": <index>}`.
//! Prompt: `Question: {question}\nAnswer:`; one log-likelihood request per choice
//! (continuation ` {choice}`); metrics `acc` and `acc_norm` (per-character, Unicode code points).
//!
//! Data: `<data_dir>/tiny_qa/questions.jsonl` (this folder's `data/` is such a data folder:
//! `harness score --data-dir tiny_qa=data …`). A missing file is an error, never a fallback: a
//! wrong `--data-dir` must not score other data.

use dtm_plugin_api::*;
use serde::Deserialize;
use std::path::Path;

pub const NAME: &str = "tiny_qa";

#[derive(Deserialize)]
pub struct Question {
    pub question: String,
    pub choices: Vec<String>,
    pub answer: usize,
}

pub struct TinyQa {
    questions: Vec<Question>,
}

/// Parse JSONL; errors name the source and the line.
pub fn parse(source: &str, text: &str) -> PluginResult<Vec<Question>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let q: Question = serde_json::from_str(line)
            .map_err(|e| format!("{source}:{}: malformed record: {e}", i + 1))?;
        if q.answer >= q.choices.len() {
            return Err(format!("{source}:{}: answer index out of range", i + 1));
        }
        out.push(q);
    }
    Ok(out)
}

fn argmax(xs: &[f64]) -> usize {
    (0..xs.len()).fold(0, |best, i| if xs[i] > xs[best] { i } else { best })
}

impl Benchmark for TinyQa {
    fn describe() -> Description {
        Description {
            name: NAME.into(),
            version: "1".into(),
            summary: "template: five general-knowledge questions, log-likelihood of each choice"
                .into(),
            output_type: OutputType::MultipleChoice,
            metrics: vec![
                MetricSpec {
                    name: "acc".into(),
                    higher_is_better: true,
                    help: "gold choice has the highest log-likelihood".into(),
                },
                MetricSpec {
                    name: "acc_norm".into(),
                    higher_is_better: true,
                    help: "same, per character".into(),
                },
            ],
            headline_metric: "acc".into(),
            default_num_fewshot: 0,
            max_num_fewshot: 0,
            subtasks: vec![NAME.into()],
            groups: vec![],
            options: vec![],
            program_timeout_s: None,
        }
    }

    fn load(data_dir: &Path, _options: &LoadOptions) -> PluginResult<Self> {
        let path = data_dir.join("tiny_qa/questions.jsonl");
        // Recorded so that the harness lists the file and its hash with the results.
        dtm_plugin_api::record_data_file(&path);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("{}: {e} (is --data-dir right?)", path.display()))?;
        let questions = parse(&path.display().to_string(), &text)?;
        Ok(TinyQa { questions })
    }

    fn items(&self) -> Vec<Item> {
        self.questions
            .iter()
            .enumerate()
            .map(|(i, q)| {
                let context = format!("Question: {}\nAnswer:", q.question);
                Item {
                    doc_id: i,
                    subtask: NAME.into(),
                    requests: q
                        .choices
                        .iter()
                        .map(|c| Request::Loglikelihood {
                            context: context.clone(),
                            continuation: format!(" {c}"),
                        })
                        .collect(),
                }
            })
            .collect()
    }

    fn score(
        &self,
        doc_id: usize,
        responses: &[Response],
        _outcomes: &[Outcome],
    ) -> PluginResult<ItemScore> {
        let q = self
            .questions
            .get(doc_id)
            .ok_or_else(|| format!("unknown doc_id {doc_id}"))?;
        let lls = responses
            .iter()
            .map(|r| match r {
                Response::Loglikelihood { logprob, .. } => Ok(*logprob),
                other => Err(format!("expected loglikelihood, got {other:?}")),
            })
            .collect::<PluginResult<Vec<f64>>>()?;
        if lls.len() != q.choices.len() {
            return Err(format!("expected {} responses", q.choices.len()));
        }
        let normed: Vec<f64> = lls
            .iter()
            .zip(&q.choices)
            .map(|(l, c)| l / c.chars().count() as f64)
            .collect();
        let (pred, pred_norm) = (argmax(&lls), argmax(&normed));
        let mut s = ItemScore {
            doc_id,
            subtask: NAME.into(),
            gold: q.choices[q.answer].clone(),
            ..Default::default()
        };
        s.metrics
            .insert("acc".into(), Some((pred == q.answer) as u8 as f64));
        s.metrics.insert(
            "acc_norm".into(),
            Some((pred_norm == q.answer) as u8 as f64),
        );
        s.extracted.insert("acc".into(), q.choices[pred].clone());
        Ok(s)
    }
}

export_plugin!(TinyQa);
