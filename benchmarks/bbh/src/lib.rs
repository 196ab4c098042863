//! BIG-Bench Hard (PROTOCOL.md §3): 27 tasks, 3-shot chain of thought from `cot-prompts/`,
//! greedy generation, exact match (case-sensitive) of the sentence after `the answer is `.

use dtm_bench_common::{data, doc, prompt, text_response};
use dtm_plugin_api::*;
use serde::Deserialize;
use std::path::Path;

pub const NAME: &str = "bbh";
pub const UNTIL: [&str; 2] = ["\n\nQ:", "</s>"];
pub const MAX_NEW_TOKENS: usize = 1024;
const INVALID: &str = "[invalid]";

#[derive(Deserialize)]
struct TaskFile {
    examples: Vec<Example>,
}

#[derive(Deserialize)]
struct Example {
    input: String,
    target: String,
}

struct Task {
    name: String,
    prompt: String,
    examples: Vec<Example>,
}

pub struct Bbh {
    tasks: Vec<Task>,
    /// doc_id → (task index, example index).
    index: Vec<(usize, usize)>,
}

/// Remove the canary line and the `-----` line; keep the description and the first `shots`
/// exemplars (each exemplar starts with `\n\nQ: `).
pub fn prompt_from_file(text: &str, shots: usize, path: &Path) -> PluginResult<String> {
    let mut lines = text.split_inclusive('\n');
    let canary = lines.next().unwrap_or("");
    let dashes = lines.next().unwrap_or("");
    if !canary.contains("canary") || dashes.trim_end() != "-----" {
        return Err(format!(
            "{}:1: expected the canary line and a `-----` line",
            path.display()
        ));
    }
    let body: String = lines.collect();
    let parts: Vec<&str> = body.split("\n\nQ: ").collect();
    if parts.len() != 4 {
        return Err(format!(
            "{}: expected a description and 3 exemplars, found {} exemplars",
            path.display(),
            parts.len() - 1
        ));
    }
    let mut s = parts[0].to_string();
    for p in &parts[1..=shots] {
        s.push_str("\n\nQ: ");
        s.push_str(p);
    }
    Ok(s)
}

/// The text after the first `the answer is ` up to the end of that sentence (a newline, a `.`
/// followed by whitespace, or the end), trailing `.` removed; `None` when the phrase is absent.
pub fn extract(text: &str) -> Option<String> {
    const KEY: &str = "the answer is ";
    let rest = &text[text.find(KEY)? + KEY.len()..];
    let mut end = rest.find('\n').unwrap_or(rest.len());
    let line = &rest[..end];
    let mut chars = line.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c == '.' && chars.peek().is_some_and(|(_, n)| n.is_whitespace()) {
            end = i + 1;
            break;
        }
    }
    let ans = rest[..end].trim();
    Some(ans.strip_suffix('.').unwrap_or(ans).trim_end().to_string())
}

impl Benchmark for Bbh {
    fn describe() -> Description {
        Description {
            name: NAME.into(),
            version: "1".into(),
            summary: "BIG-Bench Hard, 27 tasks, 3-shot CoT, exact match after `the answer is`"
                .into(),
            output_type: OutputType::GenerateUntil,
            metrics: vec![MetricSpec {
                name: "exact_match".into(),
                higher_is_better: true,
                help: "extracted answer equals the target (case-sensitive)".into(),
            }],
            headline_metric: "exact_match".into(),
            default_num_fewshot: 3,
            max_num_fewshot: 3,
            subtasks: TASKS.iter().map(|(t, _)| format!("{NAME}:{t}")).collect(),
            groups: vec![],
            options: vec![],
            program_timeout_s: None,
        }
    }

    fn load(data_dir: &Path, options: &LoadOptions) -> PluginResult<Self> {
        let root = data_dir.join("bbh");
        let shots = options.num_fewshot.unwrap_or(3);
        let mut tasks = Vec::new();
        for (name, count) in TASKS {
            let path = root.join(format!("bbh/{name}.json"));
            let file: TaskFile = data::read_json(&path)?;
            data::expect_count(&path, "examples", file.examples.len(), count)?;
            let name = name.to_string();
            let prompt_path = root.join(format!("cot-prompts/{name}.txt"));
            let prompt = prompt_from_file(&data::read_text(&prompt_path)?, shots, &prompt_path)?;
            tasks.push(Task {
                name,
                prompt,
                examples: file.examples,
            });
        }
        let index = tasks
            .iter()
            .enumerate()
            .flat_map(|(ti, t)| (0..t.examples.len()).map(move |ei| (ti, ei)))
            .collect();
        Ok(Bbh { tasks, index })
    }

    fn items(&self) -> Vec<Item> {
        self.index
            .iter()
            .enumerate()
            .map(|(doc_id, &(ti, ei))| {
                let t = &self.tasks[ti];
                Item {
                    doc_id,
                    subtask: format!("{NAME}:{}", t.name),
                    requests: vec![prompt::generate(
                        format!(
                            "{}\n\nQ: {}\nA: Let's think step by step.\n",
                            t.prompt, t.examples[ei].input
                        ),
                        &UNTIL,
                        MAX_NEW_TOKENS,
                    )],
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
        let (ti, ei) = *doc(&self.index, doc_id)?;
        let t = &self.tasks[ti];
        let gold = &t.examples[ei].target;
        let extracted = extract(text_response(responses, 0)?);
        let hit = extracted.as_deref() == Some(gold.as_str());
        let mut s = ItemScore {
            doc_id,
            subtask: format!("{NAME}:{}", t.name),
            gold: gold.clone(),
            ..Default::default()
        };
        s.metrics
            .insert("exact_match".into(), Some(hit as u8 as f64));
        s.extracted
            .insert("answer".into(), extracted.unwrap_or_else(|| INVALID.into()));
        Ok(s)
    }
}

/// The 27 tasks (file names), alphabetical.
/// The 27 tasks with the number of examples of each (6,511 in all; PROTOCOL.md §3).
pub const TASKS: [(&str, usize); 27] = [
    ("boolean_expressions", 250),
    ("causal_judgement", 187),
    ("date_understanding", 250),
    ("disambiguation_qa", 250),
    ("dyck_languages", 250),
    ("formal_fallacies", 250),
    ("geometric_shapes", 250),
    ("hyperbaton", 250),
    ("logical_deduction_five_objects", 250),
    ("logical_deduction_seven_objects", 250),
    ("logical_deduction_three_objects", 250),
    ("movie_recommendation", 250),
    ("multistep_arithmetic_two", 250),
    ("navigate", 250),
    ("object_counting", 250),
    ("penguins_in_a_table", 146),
    ("reasoning_about_colored_objects", 250),
    ("ruin_names", 250),
    ("salient_translation_error_detection", 250),
    ("snarks", 178),
    ("sports_understanding", 250),
    ("temporal_sequences", 250),
    ("tracking_shuffled_objects_five_objects", 250),
    ("tracking_shuffled_objects_seven_objects", 250),
    ("tracking_shuffled_objects_three_objects", 250),
    ("web_of_lies", 250),
    ("word_sorting", 250),
];

export_plugin!(Bbh);
