//! MMLU (PROTOCOL.md §3): 57 subjects, 5-shot from each subject's dev rows in file order,
//! log-likelihood of ` A`..` D`; accuracy micro-averaged over all questions, with the four
//! categories of the MMLU paper as aggregation groups.

use dtm_bench_common::{data, doc, mc, prompt, py_strip};
use dtm_plugin_api::*;
use std::path::Path;

pub const NAME: &str = "mmlu";
pub const LETTERS: [&str; 4] = ["A", "B", "C", "D"];

/// Subject → category, as lm-eval groups MMLU (19 STEM, 13 humanities, 12 social sciences,
/// 13 other). Note: lm-eval counts `anatomy` as STEM; the original hendrycks `categories.py`
/// files it under health, i.e. "other". We follow lm-eval.
pub const CATEGORIES: [(&str, &str); 57] = [
    ("abstract_algebra", "stem"),
    ("anatomy", "stem"),
    ("astronomy", "stem"),
    ("business_ethics", "other"),
    ("clinical_knowledge", "other"),
    ("college_biology", "stem"),
    ("college_chemistry", "stem"),
    ("college_computer_science", "stem"),
    ("college_mathematics", "stem"),
    ("college_medicine", "other"),
    ("college_physics", "stem"),
    ("computer_security", "stem"),
    ("conceptual_physics", "stem"),
    ("econometrics", "social_sciences"),
    ("electrical_engineering", "stem"),
    ("elementary_mathematics", "stem"),
    ("formal_logic", "humanities"),
    ("global_facts", "other"),
    ("high_school_biology", "stem"),
    ("high_school_chemistry", "stem"),
    ("high_school_computer_science", "stem"),
    ("high_school_european_history", "humanities"),
    ("high_school_geography", "social_sciences"),
    ("high_school_government_and_politics", "social_sciences"),
    ("high_school_macroeconomics", "social_sciences"),
    ("high_school_mathematics", "stem"),
    ("high_school_microeconomics", "social_sciences"),
    ("high_school_physics", "stem"),
    ("high_school_psychology", "social_sciences"),
    ("high_school_statistics", "stem"),
    ("high_school_us_history", "humanities"),
    ("high_school_world_history", "humanities"),
    ("human_aging", "other"),
    ("human_sexuality", "social_sciences"),
    ("international_law", "humanities"),
    ("jurisprudence", "humanities"),
    ("logical_fallacies", "humanities"),
    ("machine_learning", "stem"),
    ("management", "other"),
    ("marketing", "other"),
    ("medical_genetics", "other"),
    ("miscellaneous", "other"),
    ("moral_disputes", "humanities"),
    ("moral_scenarios", "humanities"),
    ("nutrition", "other"),
    ("philosophy", "humanities"),
    ("prehistory", "humanities"),
    ("professional_accounting", "other"),
    ("professional_law", "humanities"),
    ("professional_medicine", "other"),
    ("professional_psychology", "social_sciences"),
    ("public_relations", "social_sciences"),
    ("security_studies", "social_sciences"),
    ("sociology", "social_sciences"),
    ("us_foreign_policy", "social_sciences"),
    ("virology", "other"),
    ("world_religions", "humanities"),
];

/// Test questions per subject (14,042 in all; PROTOCOL.md §3), in the order of [`CATEGORIES`].
pub const TEST_QUESTIONS: [(&str, usize); 57] = [
    ("abstract_algebra", 100),
    ("anatomy", 135),
    ("astronomy", 152),
    ("business_ethics", 100),
    ("clinical_knowledge", 265),
    ("college_biology", 144),
    ("college_chemistry", 100),
    ("college_computer_science", 100),
    ("college_mathematics", 100),
    ("college_medicine", 173),
    ("college_physics", 102),
    ("computer_security", 100),
    ("conceptual_physics", 235),
    ("econometrics", 114),
    ("electrical_engineering", 145),
    ("elementary_mathematics", 378),
    ("formal_logic", 126),
    ("global_facts", 100),
    ("high_school_biology", 310),
    ("high_school_chemistry", 203),
    ("high_school_computer_science", 100),
    ("high_school_european_history", 165),
    ("high_school_geography", 198),
    ("high_school_government_and_politics", 193),
    ("high_school_macroeconomics", 390),
    ("high_school_mathematics", 270),
    ("high_school_microeconomics", 238),
    ("high_school_physics", 151),
    ("high_school_psychology", 545),
    ("high_school_statistics", 216),
    ("high_school_us_history", 204),
    ("high_school_world_history", 237),
    ("human_aging", 223),
    ("human_sexuality", 131),
    ("international_law", 121),
    ("jurisprudence", 108),
    ("logical_fallacies", 163),
    ("machine_learning", 112),
    ("management", 103),
    ("marketing", 234),
    ("medical_genetics", 100),
    ("miscellaneous", 783),
    ("moral_disputes", 346),
    ("moral_scenarios", 895),
    ("nutrition", 306),
    ("philosophy", 311),
    ("prehistory", 324),
    ("professional_accounting", 282),
    ("professional_law", 1534),
    ("professional_medicine", 272),
    ("professional_psychology", 612),
    ("public_relations", 110),
    ("security_studies", 245),
    ("sociology", 201),
    ("us_foreign_policy", 100),
    ("virology", 166),
    ("world_religions", 171),
];

/// Dev rows per subject: the five few-shot examples.
pub const DEV_ROWS: usize = 5;

pub fn category(subject: &str) -> Option<&'static str> {
    CATEGORIES
        .iter()
        .find(|(s, _)| *s == subject)
        .map(|(_, c)| *c)
}

/// One question: text, four options, gold index.
#[derive(Clone, Debug)]
pub struct Question {
    pub question: String,
    pub options: [String; 4],
    pub gold: usize,
}

struct Subject {
    name: String,
    category: &'static str,
    dev: Vec<Question>,
    test: Vec<Question>,
}

pub struct Mmlu {
    subjects: Vec<Subject>,
    /// doc_id → (subject index, row index).
    index: Vec<(usize, usize)>,
    num_fewshot: usize,
}

fn read_questions(path: &Path) -> PluginResult<Vec<Question>> {
    data::read_csv(path, 6)?
        .into_iter()
        .map(|(line, mut f)| {
            let gold = LETTERS.iter().position(|l| *l == f[5]).ok_or_else(|| {
                format!(
                    "{}:{line}: answer {:?} is not one of A, B, C, D",
                    path.display(),
                    f[5]
                )
            })?;
            let options = [
                std::mem::take(&mut f[1]),
                std::mem::take(&mut f[2]),
                std::mem::take(&mut f[3]),
                std::mem::take(&mut f[4]),
            ];
            Ok(Question {
                question: std::mem::take(&mut f[0]),
                options,
                gold,
            })
        })
        .collect()
}

/// `{question.strip()}\nA. {A}\nB. {B}\nC. {C}\nD. {D}\nAnswer:`
pub fn doc_to_text(q: &Question) -> String {
    format!(
        "{}\nA. {}\nB. {}\nC. {}\nD. {}\nAnswer:",
        py_strip(&q.question),
        q.options[0],
        q.options[1],
        q.options[2],
        q.options[3]
    )
}

/// `The following are multiple choice questions (with answers) about {subject}.\n\n`
pub fn description(subject: &str) -> String {
    format!(
        "The following are multiple choice questions (with answers) about {}.\n\n",
        subject.replace('_', " ")
    )
}

impl Benchmark for Mmlu {
    fn describe() -> Description {
        Description {
            name: NAME.into(),
            version: "1".into(),
            summary: "MMLU test (57 subjects), 5-shot from dev, log-likelihood of the letter"
                .into(),
            output_type: OutputType::MultipleChoice,
            metrics: vec![MetricSpec {
                name: "acc".into(),
                higher_is_better: true,
                help: "the gold letter has the highest log-likelihood".into(),
            }],
            headline_metric: "acc".into(),
            default_num_fewshot: 5,
            max_num_fewshot: 5,
            subtasks: CATEGORIES
                .iter()
                .map(|(s, _)| format!("{NAME}:{s}"))
                .collect(),
            groups: ["stem", "humanities", "social_sciences", "other"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            options: vec![],
            program_timeout_s: None,
        }
    }

    fn load(data_dir: &Path, options: &LoadOptions) -> PluginResult<Self> {
        let root = data_dir.join("mmlu/data");
        let mut subjects = Vec::new();
        for path in data::list_files(&root.join("test"), "_test.csv")? {
            let file = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let name = file.trim_end_matches("_test.csv").to_string();
            let category = category(&name)
                .ok_or_else(|| format!("{}: unknown MMLU subject {name:?}", path.display()))?;
            let dev_path = root.join(format!("dev/{name}_dev.csv"));
            let dev = read_questions(&dev_path)?;
            data::expect_count(&dev_path, "rows", dev.len(), DEV_ROWS)?;
            let test = read_questions(&path)?;
            let expected = TEST_QUESTIONS
                .iter()
                .find(|(s, _)| *s == name)
                .map(|(_, n)| *n)
                .expect("every subject of CATEGORIES has a count");
            data::expect_count(&path, "questions", test.len(), expected)?;
            subjects.push(Subject {
                name,
                category,
                dev,
                test,
            });
        }
        if subjects.len() != CATEGORIES.len() {
            let missing: Vec<&str> = CATEGORIES
                .iter()
                .map(|(s, _)| *s)
                .filter(|s| !subjects.iter().any(|x: &Subject| x.name == *s))
                .collect();
            return Err(format!(
                "{}: {} subjects, expected {} (missing: {})",
                root.join("test").display(),
                subjects.len(),
                CATEGORIES.len(),
                missing.join(", ")
            ));
        }
        let num_fewshot = options.num_fewshot.unwrap_or(5);
        for s in &subjects {
            if s.dev.len() < num_fewshot {
                return Err(format!(
                    "{}: {} dev rows, {num_fewshot} needed",
                    root.join(format!("dev/{}_dev.csv", s.name)).display(),
                    s.dev.len()
                ));
            }
        }
        let index = subjects
            .iter()
            .enumerate()
            .flat_map(|(si, s)| (0..s.test.len()).map(move |qi| (si, qi)))
            .collect();
        Ok(Mmlu {
            subjects,
            index,
            num_fewshot,
        })
    }

    fn items(&self) -> Vec<Item> {
        let mut items = Vec::with_capacity(self.index.len());
        for s in &self.subjects {
            let shot_texts: Vec<String> =
                s.dev[..self.num_fewshot].iter().map(doc_to_text).collect();
            let shots: Vec<prompt::Shot> = shot_texts
                .iter()
                .zip(&s.dev)
                .map(|(text, q)| prompt::Shot {
                    text,
                    target: LETTERS[q.gold],
                })
                .collect();
            let description = description(&s.name);
            let letters: Vec<String> = LETTERS.iter().map(|l| l.to_string()).collect();
            for q in &s.test {
                let context = prompt::context(
                    &description,
                    &shots,
                    prompt::TARGET_DELIMITER,
                    &doc_to_text(q),
                );
                items.push(Item {
                    doc_id: items.len(),
                    subtask: format!("{NAME}:{}", s.name),
                    requests: mc::requests(&context, &letters, prompt::TARGET_DELIMITER),
                });
            }
        }
        items
    }

    fn score(
        &self,
        doc_id: usize,
        responses: &[Response],
        _outcomes: &[Outcome],
    ) -> PluginResult<ItemScore> {
        let (si, qi) = *doc(&self.index, doc_id)?;
        let s = &self.subjects[si];
        let letters: Vec<String> = LETTERS.iter().map(|l| l.to_string()).collect();
        let mut score = mc::score_item(
            doc_id,
            &format!("{NAME}:{}", s.name),
            responses,
            &letters,
            &letters,
            s.test[qi].gold,
            false,
        )?;
        score.groups = vec![s.category.to_string()];
        Ok(score)
    }
}

export_plugin!(Mmlu);
