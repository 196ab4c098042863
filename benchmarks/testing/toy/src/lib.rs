//! A toy benchmark for the ABI tests. Loading from the data dir `"panic"` panics; scoring
//! doc 1 panics; otherwise it behaves (two multiple-choice items, one per subtask).

use dtm_plugin_api::*;
use std::path::Path;

pub struct Toy;

impl Benchmark for Toy {
    fn describe() -> Description {
        Description {
            name: "toy".into(),
            version: "1".into(),
            summary: "test plugin".into(),
            output_type: OutputType::MultipleChoice,
            metrics: vec![MetricSpec {
                name: "acc".into(),
                higher_is_better: true,
                help: "accuracy".into(),
            }],
            headline_metric: "acc".into(),
            default_num_fewshot: 0,
            max_num_fewshot: 0,
            subtasks: vec!["toy:a".into(), "toy:b".into()],
            groups: vec![],
            options: vec![OptionSpec {
                name: "mode".into(),
                help: "test option".into(),
                values: vec!["x".into(), "y".into()],
            }],
            program_timeout_s: None,
        }
    }

    fn load(data_dir: &Path, _options: &LoadOptions) -> PluginResult<Self> {
        if data_dir == Path::new("panic") {
            panic!("toy load panics on purpose");
        }
        if data_dir == Path::new("fail") {
            return Err("toy: cannot read fail/data.jsonl line 3".into());
        }
        Ok(Toy)
    }

    fn items(&self) -> Vec<Item> {
        ["toy:a", "toy:a", "toy:b"]
            .iter()
            .enumerate()
            .map(|(i, s)| Item {
                doc_id: i,
                subtask: s.to_string(),
                requests: vec![Request::GenerateUntil {
                    context: format!("Q{i}"),
                    until: vec!["\n".into()],
                    max_new_tokens: 100,
                }],
            })
            .collect()
    }

    fn score(
        &self,
        doc_id: usize,
        responses: &[Response],
        _: &[Outcome],
    ) -> PluginResult<ItemScore> {
        if doc_id == 1 {
            panic!("toy score panics on purpose");
        }
        let ok = matches!(responses.first(), Some(Response::Text(t)) if t == "yes");
        Ok(ItemScore {
            doc_id,
            subtask: if doc_id < 2 { "toy:a" } else { "toy:b" }.into(),
            metrics: [("acc".to_string(), Some(ok as u8 as f64))]
                .into_iter()
                .collect(),
            gold: "yes".into(),
            ..Default::default()
        })
    }
}

export_plugin!(Toy);
