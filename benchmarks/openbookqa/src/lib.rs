//! OpenBookQA Main (PROTOCOL.md §3): zero-shot, the stem as it is, log-likelihood of each choice; acc (headline) and acc_norm.

use dtm_bench_common::arc_format::{self, McDoc};
use dtm_bench_common::{doc, mc, prompt};
use dtm_plugin_api::*;
use std::path::Path;

pub const NAME: &str = "openbookqa";
pub const TEST_FILE: &str = "openbookqa/Main/test.jsonl";

pub struct OpenBookQa {
    docs: Vec<McDoc>,
}

pub fn doc_to_text(d: &McDoc) -> String {
    d.stem.clone()
}

impl Benchmark for OpenBookQa {
    fn describe() -> Description {
        Description {
            name: NAME.into(),
            version: "1".into(),
            summary: "OpenBookQA Main test, 0-shot, log-likelihood of each choice".into(),
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
                    help: "gold choice has the highest log-likelihood per character".into(),
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
        Ok(OpenBookQa {
            docs: arc_format::read(&data_dir.join(TEST_FILE))?,
        })
    }

    fn items(&self) -> Vec<Item> {
        self.docs
            .iter()
            .enumerate()
            .map(|(i, d)| Item {
                doc_id: i,
                subtask: NAME.into(),
                requests: mc::requests(&doc_to_text(d), &d.choices, prompt::TARGET_DELIMITER),
            })
            .collect()
    }

    fn score(
        &self,
        doc_id: usize,
        responses: &[Response],
        _outcomes: &[Outcome],
    ) -> PluginResult<ItemScore> {
        let d = doc(&self.docs, doc_id)?;
        mc::score_item(doc_id, NAME, responses, &d.choices, &d.labels, d.gold, true)
    }
}

export_plugin!(OpenBookQa);
