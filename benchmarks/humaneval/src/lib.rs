//! HumanEval (PROTOCOL.md §3): the prompt as it is, greedy completion, pass@1 of
//! `prompt + completion + "\n" + test + "\n" + "check({entry_point})"` run in the sandbox.

use dtm_bench_common::{code, data, doc, prompt, text_response};
use dtm_plugin_api::*;
use serde::Deserialize;
use std::path::Path;

pub const NAME: &str = "humaneval";
pub const UNTIL: [&str; 5] = ["\nclass", "\ndef", "\n#", "\nif", "\nprint"];
pub const MAX_NEW_TOKENS: usize = 512;
pub const TIMEOUT_S: f64 = 3.0;

#[derive(Deserialize)]
pub struct Problem {
    pub task_id: String,
    pub prompt: String,
    pub entry_point: String,
    pub test: String,
}

pub struct HumanEval {
    problems: Vec<Problem>,
}

/// The program run in the sandbox for one completion.
pub fn program(p: &Problem, completion: &str) -> String {
    format!(
        "{}{completion}\n{}\ncheck({})",
        p.prompt, p.test, p.entry_point
    )
}

impl Benchmark for HumanEval {
    fn describe() -> Description {
        Description {
            name: NAME.into(),
            version: "1".into(),
            summary: "HumanEval, 0-shot greedy completion, pass@1 in the sandbox".into(),
            output_type: OutputType::Code,
            metrics: vec![MetricSpec {
                name: "pass@1".into(),
                higher_is_better: true,
                help: "the program exits without exception (unavailable without a sandbox)".into(),
            }],
            headline_metric: "pass@1".into(),
            default_num_fewshot: 0,
            max_num_fewshot: 0,
            subtasks: vec![NAME.into()],
            groups: vec![],
            options: vec![],
            program_timeout_s: Some(TIMEOUT_S),
        }
    }

    fn load(data_dir: &Path, _options: &LoadOptions) -> PluginResult<Self> {
        let path = data_dir.join("humaneval/data/HumanEval.jsonl.gz");
        let problems: Vec<_> = data::read_jsonl_gz(&path)?;
        data::expect_count(&path, "problems", problems.len(), 164)?;
        Ok(HumanEval { problems })
    }

    fn items(&self) -> Vec<Item> {
        self.problems
            .iter()
            .enumerate()
            .map(|(i, p)| Item {
                doc_id: i,
                subtask: NAME.into(),
                requests: vec![prompt::generate(p.prompt.clone(), &UNTIL, MAX_NEW_TOKENS)],
            })
            .collect()
    }

    fn programs(&self, doc_id: usize, responses: &[Response]) -> PluginResult<Vec<String>> {
        let p = doc(&self.problems, doc_id)?;
        (0..responses.len())
            .map(|i| Ok(program(p, text_response(responses, i)?)))
            .collect()
    }

    fn score(
        &self,
        doc_id: usize,
        responses: &[Response],
        outcomes: &[Outcome],
    ) -> PluginResult<ItemScore> {
        let p = doc(&self.problems, doc_id)?;
        code::score_item(doc_id, NAME, &p.task_id, responses.len(), outcomes)
    }
}

export_plugin!(HumanEval);
