//! capitals_compiled: `../yaml/capitals.yaml` as a compiled plugin on `dtm-bench-common`.
//! Reads `<data dir>/capitals/test.jsonl` (`{"question", "choices", "answer"}` per line).

use dtm_bench_common::api::*;
use dtm_bench_common::{data::read_jsonl_numbered, doc, mc};
use std::path::Path;

const NAME: &str = "capitals_compiled";

#[derive(serde::Deserialize)]
struct Question {
    question: String,
    choices: Vec<String>,
    answer: usize,
}

pub struct Capitals(Vec<Question>);

impl Benchmark for Capitals {
    fn describe() -> Description {
        Description {
            name: NAME.into(),
            version: "1".into(),
            summary: "worked example: capitals, one log-likelihood request per choice".into(),
            output_type: OutputType::MultipleChoice,
            metrics: mc::acc_metrics(),
            headline_metric: "acc".into(),
            default_num_fewshot: 0,
            max_num_fewshot: 0,
            subtasks: vec![NAME.into()],
            groups: vec![],
            options: vec![],
            program_timeout_s: None,
        }
    }

    fn load(data_dir: &Path, _: &LoadOptions) -> PluginResult<Self> {
        let path = data_dir.join("capitals/test.jsonl");
        let mut questions = Vec::new();
        for (line, q) in read_jsonl_numbered::<Question>(&path)? {
            if q.answer >= q.choices.len() {
                return Err(format!("{}:{line}: answer out of range", path.display()));
            }
            questions.push(q);
        }
        Ok(Capitals(questions))
    }

    fn items(&self) -> Vec<Item> {
        let prompt = |q: &Question| format!("Question: {}\nAnswer:", q.question);
        let item = |(i, q): (usize, &Question)| Item {
            doc_id: i,
            subtask: NAME.into(),
            requests: mc::requests(&prompt(q), &q.choices, " "),
        };
        self.0.iter().enumerate().map(item).collect()
    }

    fn score(
        &self,
        doc_id: usize,
        responses: &[Response],
        _: &[Outcome],
    ) -> PluginResult<ItemScore> {
        let q = doc(&self.0, doc_id)?;
        mc::score_item(
            doc_id, NAME, responses, &q.choices, &q.choices, q.answer, true,
        )
    }
}

export_plugin!(Capitals);
