//! GSM8K (PROTOCOL.md §3): 8-shot chain of thought with the Wei et al. exemplars, greedy
//! generation, exact match of the number (strict and flexible extraction; strict is headline).

use dtm_bench_common::{data, doc, prompt, text_response};
use dtm_plugin_api::*;
use regex::Regex;
use serde::Deserialize;
use std::path::Path;
use std::sync::LazyLock;

pub const NAME: &str = "gsm8k";
/// Questions of the test split (PROTOCOL.md §3).
pub const TEST_QUESTIONS: usize = 1319;
pub const UNTIL: [&str; 3] = ["Q:", "</s>", "<|im_end|>"];
pub const MAX_NEW_TOKENS: usize = 256;
const INVALID: &str = "[invalid]";

#[derive(Deserialize)]
struct Doc {
    question: String,
    answer: String,
}

#[derive(Deserialize)]
struct Exemplar {
    question: String,
    target: String,
}

pub struct Gsm8k {
    docs: Vec<Doc>,
    shots: Vec<Exemplar>,
}

static STRICT: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"The answer is (-?[0-9.,]+)\.").expect("valid regex"));
static FLEXIBLE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(-?[$0-9.,]{2,})|(-?[0-9]+)").expect("valid regex"));

/// Strict extraction: the first `The answer is N.`; `[invalid]` when absent.
pub fn extract_strict(text: &str) -> String {
    STRICT
        .captures(text)
        .map(|c| c[1].trim().to_string())
        .unwrap_or_else(|| INVALID.to_string())
}

/// Flexible extraction: the last number-like match; `[invalid]` when absent.
pub fn extract_flexible(text: &str) -> String {
    FLEXIBLE
        .find_iter(text)
        .last()
        .map(|m| m.as_str().trim().to_string())
        .unwrap_or_else(|| INVALID.to_string())
}

/// The gold number: the text after the last `#### `.
pub fn gold(answer: &str) -> &str {
    answer.rsplit_once("#### ").map_or(answer, |(_, g)| g)
}

/// Normalise for comparison: drop every `,` and `$`, then one trailing `.`; lower-case.
pub fn normalise(s: &str) -> String {
    let s: String = s.chars().filter(|c| *c != ',' && *c != '$').collect();
    s.strip_suffix('.').unwrap_or(&s).to_lowercase()
}

impl Benchmark for Gsm8k {
    fn describe() -> Description {
        Description {
            name: NAME.into(),
            version: "1".into(),
            summary: "GSM8K test, 8-shot CoT (Wei et al.), exact match of the final number".into(),
            output_type: OutputType::GenerateUntil,
            metrics: vec![
                MetricSpec {
                    name: "exact_match_strict".into(),
                    higher_is_better: true,
                    help: "`The answer is N.` equals the gold number".into(),
                },
                MetricSpec {
                    name: "exact_match_flexible".into(),
                    higher_is_better: true,
                    help: "the last number in the output equals the gold number".into(),
                },
            ],
            headline_metric: "exact_match_strict".into(),
            default_num_fewshot: 8,
            max_num_fewshot: 8,
            subtasks: vec![NAME.into()],
            groups: vec![],
            options: vec![],
            program_timeout_s: None,
        }
    }

    fn load(data_dir: &Path, options: &LoadOptions) -> PluginResult<Self> {
        let test = data_dir.join("gsm8k/grade_school_math/data/test.jsonl");
        let docs: Vec<_> = data::read_jsonl(&test)?;
        data::expect_count(&test, "questions", docs.len(), TEST_QUESTIONS)?;
        let mut shots: Vec<Exemplar> =
            data::read_jsonl(&data_dir.join("gsm8k/cot_exemplars.jsonl"))?;
        let n = options.num_fewshot.unwrap_or(8);
        if shots.len() < n {
            return Err(format!(
                "{}: {} exemplars, {n} needed",
                data_dir.join("gsm8k/cot_exemplars.jsonl").display(),
                shots.len()
            ));
        }
        shots.truncate(n);
        Ok(Gsm8k { docs, shots })
    }

    fn items(&self) -> Vec<Item> {
        let shot_texts: Vec<String> = self
            .shots
            .iter()
            .map(|s| format!("Q: {}\nA:", s.question))
            .collect();
        let shots: Vec<prompt::Shot> = shot_texts
            .iter()
            .zip(&self.shots)
            .map(|(text, s)| prompt::Shot {
                text,
                target: &s.target,
            })
            .collect();
        self.docs
            .iter()
            .enumerate()
            .map(|(i, d)| Item {
                doc_id: i,
                subtask: NAME.into(),
                requests: vec![prompt::generate(
                    prompt::context(
                        "",
                        &shots,
                        prompt::TARGET_DELIMITER,
                        &format!("Q: {}\nA:", d.question),
                    ),
                    &UNTIL,
                    MAX_NEW_TOKENS,
                )],
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
        let text = text_response(responses, 0)?;
        let gold = gold(&d.answer);
        let (strict, flexible) = (extract_strict(text), extract_flexible(text));
        let hit = |x: &str| Some((normalise(x) == normalise(gold)) as u8 as f64);
        let mut s = ItemScore {
            doc_id,
            subtask: NAME.into(),
            gold: gold.to_string(),
            ..Default::default()
        };
        s.metrics.insert("exact_match_strict".into(), hit(&strict));
        s.metrics
            .insert("exact_match_flexible".into(), hit(&flexible));
        s.extracted.insert("strict".into(), strict);
        s.extracted.insert("flexible".into(), flexible);
        Ok(s)
    }
}

export_plugin!(Gsm8k);
