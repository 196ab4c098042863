//! A plugin that breaks its own description, to test that the harness notices. `DTM_LIAR` in the
//! environment spoils the description (`headline`: a headline metric that is not a metric;
//! `empty_option`: an option without values); the option `mode` spoils the scores (`nan`,
//! `missing` metric, `extra` metric, `subtask` not declared); `mode=honest` behaves.

use dtm_plugin_api::*;
use std::path::Path;

pub struct Liar {
    mode: String,
}

impl Benchmark for Liar {
    fn describe() -> Description {
        let spoil = std::env::var("DTM_LIAR").unwrap_or_default();
        Description {
            name: "liar".into(),
            version: "1".into(),
            summary: "test plugin that contradicts its description".into(),
            output_type: OutputType::GenerateUntil,
            metrics: vec![MetricSpec {
                name: "acc".into(),
                higher_is_better: true,
                help: "accuracy".into(),
            }],
            headline_metric: if spoil == "headline" {
                "accuracy"
            } else {
                "acc"
            }
            .into(),
            default_num_fewshot: 0,
            max_num_fewshot: 0,
            subtasks: vec!["liar".into()],
            groups: vec![],
            options: vec![
                OptionSpec {
                    name: "mode".into(),
                    help: "how to misbehave".into(),
                    values: ["honest", "nan", "missing", "extra", "subtask"]
                        .map(String::from)
                        .to_vec(),
                },
                OptionSpec {
                    name: "empty".into(),
                    help: "an option without values when DTM_LIAR=empty_option".into(),
                    values: if spoil == "empty_option" {
                        vec![]
                    } else {
                        vec!["x".into()]
                    },
                },
            ],
            program_timeout_s: None,
        }
    }

    fn load(_data_dir: &Path, options: &LoadOptions) -> PluginResult<Self> {
        Ok(Liar {
            mode: options.flags["mode"].clone(),
        })
    }

    fn items(&self) -> Vec<Item> {
        (0..2)
            .map(|i| Item {
                doc_id: i,
                subtask: "liar".into(),
                requests: vec![Request::GenerateUntil {
                    context: format!("Say {i}:"),
                    until: vec!["\n".into()],
                    max_new_tokens: 2,
                }],
            })
            .collect()
    }

    fn score(&self, doc_id: usize, _: &[Response], _: &[Outcome]) -> PluginResult<ItemScore> {
        let mut s = ItemScore {
            doc_id,
            subtask: "liar".into(),
            gold: "0".into(),
            ..Default::default()
        };
        match self.mode.as_str() {
            "nan" => {
                s.metrics.insert("acc".into(), Some(f64::NAN));
            }
            "missing" => {}
            "extra" => {
                s.metrics.insert("acc".into(), Some(1.0));
                s.metrics.insert("bonus".into(), Some(1.0));
            }
            "subtask" => {
                s.metrics.insert("acc".into(), Some(1.0));
                s.subtask = "liar:hidden".into();
            }
            _ => {
                s.metrics.insert("acc".into(), Some(0.0));
            }
        }
        Ok(s)
    }
}

export_plugin!(Liar);
