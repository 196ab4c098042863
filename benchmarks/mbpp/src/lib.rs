//! MBPP (PROTOCOL.md §3): test split = task_id 11–510 in file order, 3-shot with task_id 2, 3, 4,
//! greedy completion until `[DONE]`, pass@1 of
//! `test_setup_code + "\n" + completion + "\n" + asserts (one per line)` run in the sandbox.

use dtm_bench_common::{code, data, doc, prompt, text_response};
use dtm_plugin_api::*;
use serde::Deserialize;
use std::path::Path;

pub const NAME: &str = "mbpp";
pub const UNTIL: [&str; 1] = ["[DONE]"];
pub const MAX_NEW_TOKENS: usize = 512;
pub const TIMEOUT_S: f64 = 3.0;
pub const TEST_IDS: std::ops::RangeInclusive<u64> = 11..=510;
pub const SHOT_IDS: [u64; 3] = [2, 3, 4];

#[derive(Clone, Deserialize)]
pub struct Problem {
    pub task_id: u64,
    pub text: String,
    pub code: String,
    pub test_setup_code: String,
    pub test_list: Vec<String>,
}

pub struct Mbpp {
    problems: Vec<Problem>,
    shots: Vec<Problem>,
    setup_after_completion: bool,
}

/// `You are an expert Python programmer, and here is your task: {text} Your code should pass
/// these tests:\n\n{t0}\n{t1}\n{t2}\n[BEGIN]\n`
pub fn doc_to_text(p: &Problem) -> String {
    format!(
        "You are an expert Python programmer, and here is your task: {} Your code should pass these tests:\n\n{}\n{}\n{}\n[BEGIN]\n",
        p.text, p.test_list[0], p.test_list[1], p.test_list[2]
    )
}

/// The program run in the sandbox (PROTOCOL order: setup code first).
pub fn program(p: &Problem, completion: &str, setup_after_completion: bool) -> String {
    let asserts = p.test_list.join("\n");
    if setup_after_completion {
        format!("{completion}\n{}\n{asserts}", p.test_setup_code)
    } else {
        format!("{}\n{completion}\n{asserts}", p.test_setup_code)
    }
}

impl Benchmark for Mbpp {
    fn describe() -> Description {
        Description {
            name: NAME.into(),
            version: "1".into(),
            summary: "MBPP test (task_id 11-510), 3-shot, greedy completion, pass@1 in the sandbox"
                .into(),
            output_type: OutputType::Code,
            metrics: vec![MetricSpec {
                name: "pass@1".into(),
                higher_is_better: true,
                help: "every assert passes (unavailable without a sandbox)".into(),
            }],
            headline_metric: "pass@1".into(),
            default_num_fewshot: 3,
            max_num_fewshot: 3,
            subtasks: vec![NAME.into()],
            groups: vec![],
            options: vec![OptionSpec {
                name: "setup_code".into(),
                help: "where test_setup_code goes: before the completion (PROTOCOL) or after it (tasks 367 and 927 build objects of a class the completion defines)".into(),
                values: vec!["before_completion".into(), "after_completion".into()],
            }],
            program_timeout_s: Some(TIMEOUT_S),
        }
    }

    fn load(data_dir: &Path, options: &LoadOptions) -> PluginResult<Self> {
        let path = data_dir.join("mbpp/mbpp.jsonl");
        let all: Vec<(usize, Problem)> = data::read_jsonl_numbered(&path)?;
        for (line, p) in &all {
            if p.test_list.len() < 3 {
                return Err(format!(
                    "{}:{line}: task {} has {} tests, 3 needed",
                    path.display(),
                    p.task_id,
                    p.test_list.len()
                ));
            }
        }
        let n = options.num_fewshot.unwrap_or(3);
        let shots = SHOT_IDS[..n]
            .iter()
            .map(|id| {
                all.iter()
                    .find(|(_, p)| p.task_id == *id)
                    .map(|(_, p)| p.clone())
                    .ok_or_else(|| format!("{}: no task_id {id}", path.display()))
            })
            .collect::<PluginResult<_>>()?;
        let problems: Vec<Problem> = all
            .into_iter()
            .map(|(_, p)| p)
            .filter(|p| TEST_IDS.contains(&p.task_id))
            .collect();
        data::expect_count(
            &path,
            "test-split problems (task_id 11-510)",
            problems.len(),
            (TEST_IDS.end() - TEST_IDS.start() + 1) as usize,
        )?;
        Ok(Mbpp {
            problems,
            shots,
            setup_after_completion: options.flags.get("setup_code").map(String::as_str)
                == Some("after_completion"),
        })
    }

    fn items(&self) -> Vec<Item> {
        let texts: Vec<String> = self.shots.iter().map(doc_to_text).collect();
        let targets: Vec<String> = self
            .shots
            .iter()
            .map(|s| format!("{}\n[DONE]", s.code))
            .collect();
        let shots: Vec<prompt::Shot> = texts
            .iter()
            .zip(&targets)
            .map(|(text, target)| prompt::Shot { text, target })
            .collect();
        self.problems
            .iter()
            .enumerate()
            .map(|(i, p)| Item {
                doc_id: i,
                subtask: NAME.into(),
                requests: vec![prompt::generate(
                    prompt::context("", &shots, "", &doc_to_text(p)),
                    &UNTIL,
                    MAX_NEW_TOKENS,
                )],
            })
            .collect()
    }

    fn programs(&self, doc_id: usize, responses: &[Response]) -> PluginResult<Vec<String>> {
        let p = doc(&self.problems, doc_id)?;
        (0..responses.len())
            .map(|i| {
                Ok(program(
                    p,
                    text_response(responses, i)?,
                    self.setup_after_completion,
                ))
            })
            .collect()
    }

    fn score(
        &self,
        doc_id: usize,
        responses: &[Response],
        outcomes: &[Outcome],
    ) -> PluginResult<ItemScore> {
        let p = doc(&self.problems, doc_id)?;
        code::score_item(
            doc_id,
            NAME,
            &format!("task {}", p.task_id),
            responses.len(),
            outcomes,
        )
    }
}

export_plugin!(Mbpp);
