//! TruthfulQA MC1 (PROTOCOL.md §3): the QA primer, then `\n\nQ: {question}\nA:`; log-likelihood of
//! ` {answer}` for every `mc1_targets` answer (acc = the single true answer is the likeliest),
//! and for every `mc2_targets` answer (mc2 = normalised probability mass on the true answers).

use dtm_bench_common::{data, doc, mc};
use dtm_plugin_api::*;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use std::path::Path;

pub const NAME: &str = "truthfulqa_mc1";

/// A JSON object of answer → label, kept in file order (as Python's `json` reads it: a repeated
/// key keeps its first position and its last value).
#[derive(Clone, Debug, Default)]
pub struct Targets(pub Vec<(String, i64)>);

impl<'de> Deserialize<'de> for Targets {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Targets;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of answer: 0/1")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Targets, A::Error> {
                let mut v: Vec<(String, i64)> = Vec::new();
                while let Some((k, x)) = m.next_entry::<String, i64>()? {
                    match v.iter_mut().find(|(a, _)| *a == k) {
                        Some(slot) => slot.1 = x,
                        None => v.push((k, x)),
                    }
                }
                Ok(Targets(v))
            }
        }
        d.deserialize_map(V)
    }
}

#[derive(Clone, Deserialize)]
pub struct Question {
    pub question: String,
    pub mc1_targets: Targets,
    pub mc2_targets: Targets,
}

#[derive(Deserialize)]
struct PrimerPair {
    q: String,
    a: String,
}

pub struct TruthfulQa {
    primer: String,
    questions: Vec<Question>,
}

fn answers(t: &Targets) -> Vec<String> {
    t.0.iter().map(|(a, _)| a.clone()).collect()
}

/// MC2: probability mass on the true answers, normalised over all answers (log-sum-exp).
pub fn mc2(lls: &[f64], labels: &[i64]) -> f64 {
    let max = lls.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let p: Vec<f64> = lls.iter().map(|l| (l - max).exp()).collect();
    let total: f64 = p.iter().sum();
    let truth: f64 = p
        .iter()
        .zip(labels)
        .filter(|(_, l)| **l == 1)
        .map(|(x, _)| x)
        .sum();
    truth / total
}

impl Benchmark for TruthfulQa {
    fn describe() -> Description {
        Description {
            name: NAME.into(),
            version: "1".into(),
            summary: "TruthfulQA multiple choice (817, v1 file), QA primer; MC1 acc and MC2".into(),
            output_type: OutputType::MultipleChoice,
            metrics: vec![
                MetricSpec {
                    name: "acc".into(),
                    higher_is_better: true,
                    help: "MC1: the single true answer has the highest log-likelihood".into(),
                },
                MetricSpec {
                    name: "mc2".into(),
                    higher_is_better: true,
                    help: "MC2: normalised probability mass on the true answers".into(),
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
        let primer: Vec<PrimerPair> =
            data::read_jsonl(&data_dir.join("truthfulqa/qa_primer.jsonl"))?;
        let primer = primer
            .iter()
            .map(|p| format!("Q: {}\nA: {}", p.q, p.a))
            .collect::<Vec<_>>()
            .join("\n\n");
        let path = data_dir.join("truthfulqa/data/v1/mc_task.json");
        let questions: Vec<Question> = data::read_json(&path)?;
        data::expect_count(&path, "questions", questions.len(), 817)?;
        for (i, q) in questions.iter().enumerate() {
            let n_true = q.mc1_targets.0.iter().filter(|(_, l)| *l == 1).count();
            if n_true != 1 || q.mc2_targets.0.is_empty() {
                return Err(format!(
                    "{}: question {i} has {n_true} true mc1 targets (need exactly 1) or no mc2 targets",
                    path.display()
                ));
            }
        }
        Ok(TruthfulQa { primer, questions })
    }

    fn items(&self) -> Vec<Item> {
        self.questions
            .iter()
            .enumerate()
            .map(|(i, q)| {
                let context = format!("{}\n\nQ: {}\nA:", self.primer, q.question);
                let mut requests = mc::requests(&context, &answers(&q.mc1_targets), " ");
                requests.extend(mc::requests(&context, &answers(&q.mc2_targets), " "));
                Item {
                    doc_id: i,
                    subtask: NAME.into(),
                    requests,
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
        let q = doc(&self.questions, doc_id)?;
        let (n1, n2) = (q.mc1_targets.0.len(), q.mc2_targets.0.len());
        if responses.len() != n1 + n2 {
            return Err(format!(
                "doc {doc_id}: expected {} responses, got {}",
                n1 + n2,
                responses.len()
            ));
        }
        let lls1 = mc::loglikelihoods(responses, 0..n1)?;
        let lls2 = mc::loglikelihoods(responses, n1..n1 + n2)?;
        let gold = q
            .mc1_targets
            .0
            .iter()
            .position(|(_, l)| *l == 1)
            .expect("checked at load");
        let pred = mc::argmax(&lls1);
        let labels2: Vec<i64> = q.mc2_targets.0.iter().map(|(_, l)| *l).collect();
        let mut s = ItemScore {
            doc_id,
            subtask: NAME.into(),
            gold: q.mc1_targets.0[gold].0.clone(),
            ..Default::default()
        };
        s.metrics
            .insert("acc".into(), Some((pred == gold) as u8 as f64));
        s.metrics.insert("mc2".into(), Some(mc2(&lls2, &labels2)));
        s.extracted
            .insert("acc".into(), q.mc1_targets.0[pred].0.clone());
        Ok(s)
    }
}

export_plugin!(TruthfulQa);
