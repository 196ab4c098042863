//! RACE (PROTOCOL.md §3), lm-eval's form: one item per article; the context is the article,
//! every earlier question with its answer, then the last question as it is; log-likelihood of
//! ` {option}` for the last question's four options; acc.
//!
//! Options: `split` = `high` (default, the paper's) | `middle`; `mode` = `article` (default) |
//! `every_question` (each question alone after the article; 3,498 items for high).
//! Article files are read in byte order of their names.

use dtm_bench_common::{data, doc, mc, prompt};
use dtm_plugin_api::*;
use serde::Deserialize;
use std::path::Path;

pub const NAME: &str = "race";
const LETTERS: [&str; 4] = ["A", "B", "C", "D"];

#[derive(Deserialize)]
struct RawArticle {
    article: String,
    questions: Vec<String>,
    options: Vec<Vec<String>>,
    answers: Vec<String>,
}

/// One question with its four options and the gold index.
#[derive(Clone, Debug)]
pub struct Question {
    pub question: String,
    pub options: Vec<String>,
    pub gold: usize,
}

#[derive(Clone, Debug)]
pub struct Article {
    pub file: String,
    pub article: String,
    pub questions: Vec<Question>,
}

/// A scored unit: an article and the index of the question asked.
struct Unit {
    article: usize,
    question: usize,
    context: String,
}

pub struct Race {
    articles: Vec<Article>,
    units: Vec<Unit>,
    subtask: String,
}

fn read_article(path: &Path) -> PluginResult<Article> {
    let raw: RawArticle = data::read_json(path)?;
    let n = raw.questions.len();
    if raw.options.len() != n || raw.answers.len() != n || n == 0 {
        return Err(format!(
            "{}: {} questions, {} option lists, {} answers",
            path.display(),
            n,
            raw.options.len(),
            raw.answers.len()
        ));
    }
    let mut questions = Vec::with_capacity(n);
    for ((q, opts), a) in raw.questions.into_iter().zip(raw.options).zip(raw.answers) {
        let gold = LETTERS
            .iter()
            .position(|l| *l == a)
            .filter(|g| *g < opts.len())
            .ok_or_else(|| format!("{}: answer {a:?} out of range", path.display()))?;
        questions.push(Question {
            question: q,
            options: opts,
            gold,
        });
    }
    Ok(Article {
        file: path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default(),
        article: raw.article,
        questions,
    })
}

/// An earlier question with its answer: a cloze question (containing `_`) with its first blank
/// (a run of `_`) filled by the answer, then `\n`; otherwise `Question: {q}\nAnswer: {a}\n`.
pub fn answered(q: &Question) -> String {
    let answer = &q.options[q.gold];
    match q.question.find('_') {
        Some(start) => {
            let end = q.question[start..]
                .find(|c| c != '_')
                .map_or(q.question.len(), |e| start + e);
            format!("{}{answer}{}\n", &q.question[..start], &q.question[end..])
        }
        None => format!("Question: {}\nAnswer: {answer}\n", q.question),
    }
}

/// lm-eval's context for the article's last question.
pub fn article_context(a: &Article) -> String {
    let mut s = format!("Article: {}\n\n", a.article);
    let (last, earlier) = a.questions.split_last().expect("non-empty");
    for q in earlier {
        s.push_str(&answered(q));
    }
    s.push_str(&last.question);
    s
}

/// "every question" mode: the article, then the question as it is.
pub fn single_question_context(a: &Article, q: &Question) -> String {
    format!("Article: {}\n\n{}", a.article, q.question)
}

impl Benchmark for Race {
    fn describe() -> Description {
        Description {
            name: NAME.into(),
            version: "1".into(),
            summary: "RACE test (high), one item per article in lm-eval's form, acc".into(),
            output_type: OutputType::MultipleChoice,
            metrics: vec![MetricSpec {
                name: "acc".into(),
                higher_is_better: true,
                help: "gold option has the highest log-likelihood".into(),
            }],
            headline_metric: "acc".into(),
            default_num_fewshot: 0,
            max_num_fewshot: 0,
            subtasks: vec![
                "race".into(),
                "race:middle".into(),
                "race:every_question".into(),
                "race:middle:every_question".into(),
            ],
            groups: vec![],
            options: vec![
                OptionSpec {
                    name: "split".into(),
                    help: "which test split: high school (the paper's) or middle school".into(),
                    values: vec!["high".into(), "middle".into()],
                },
                OptionSpec {
                    name: "mode".into(),
                    help: "article = one item per article (lm-eval); every_question = one item per question, alone after the article".into(),
                    values: vec!["article".into(), "every_question".into()],
                },
            ],
            program_timeout_s: None,
        }
    }

    fn load(data_dir: &Path, options: &LoadOptions) -> PluginResult<Self> {
        let split = options.flags.get("split").map_or("high", String::as_str);
        let mode = options.flags.get("mode").map_or("article", String::as_str);
        let dir = data_dir.join("race/RACE/test").join(split);
        let articles: Vec<Article> = data::list_files(&dir, ".txt")?
            .iter()
            .map(|p| read_article(p))
            .collect::<PluginResult<_>>()?;
        // Articles and questions of the test split (PROTOCOL.md §3).
        let (n_articles, n_questions) = if split == "middle" {
            (362, 1436)
        } else {
            (1045, 3498)
        };
        data::expect_count(&dir, "article files", articles.len(), n_articles)?;
        let questions = articles.iter().map(|a| a.questions.len()).sum();
        data::expect_count(&dir, "questions", questions, n_questions)?;
        let mut units = Vec::new();
        for (ai, a) in articles.iter().enumerate() {
            if mode == "every_question" {
                for (qi, q) in a.questions.iter().enumerate() {
                    units.push(Unit {
                        article: ai,
                        question: qi,
                        context: single_question_context(a, q),
                    });
                }
            } else {
                units.push(Unit {
                    article: ai,
                    question: a.questions.len() - 1,
                    context: article_context(a),
                });
            }
        }
        let mut subtask = NAME.to_string();
        if split == "middle" {
            subtask.push_str(":middle");
        }
        if mode == "every_question" {
            subtask.push_str(":every_question");
        }
        Ok(Race {
            articles,
            units,
            subtask,
        })
    }

    fn items(&self) -> Vec<Item> {
        self.units
            .iter()
            .enumerate()
            .map(|(i, u)| Item {
                doc_id: i,
                subtask: self.subtask.clone(),
                requests: mc::requests(
                    &u.context,
                    &self.articles[u.article].questions[u.question].options,
                    prompt::TARGET_DELIMITER,
                ),
            })
            .collect()
    }

    fn score(
        &self,
        doc_id: usize,
        responses: &[Response],
        _outcomes: &[Outcome],
    ) -> PluginResult<ItemScore> {
        let u = doc(&self.units, doc_id)?;
        let q = &self.articles[u.article].questions[u.question];
        let labels: Vec<String> = LETTERS[..q.options.len()]
            .iter()
            .map(|l| l.to_string())
            .collect();
        mc::score_item(
            doc_id,
            &self.subtask,
            responses,
            &q.options,
            &labels,
            q.gold,
            false,
        )
    }
}

export_plugin!(Race);
