//! `--dry-run`'s estimates: the tokens each stage trains on or scores, and the hours they take
//! at the recipe's measured speeds.
//!
//! Training tokens are counted exactly for the SFT data as the trainer tokenizes it (the mixture
//! is drawn in memory), through the trainer's own step plan (epochs, batch, max steps);
//! a DTM portion is its fraction of the data, a Deita selection its top-k. Scoring tokens come
//! from `harness score --plan` (the base tokenizer, the recipe's items): the fewest tokens the
//! engine forwards with prefix reuse, and the most it may generate (each request's cap).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use dtm_model::tokenizer::TextTokenizer;
use dtm_trainer::data::examples::{tokenize, Example, TokenizeOptions};
use dtm_trainer::data::{self, Record};
use dtm_trainer::sft::Plan;

use super::build::resolve;
use super::graph::{Graph, Part, Work};
use super::recipe::{Loaded, Speeds};

/// What one stage costs.
#[derive(Debug, Default, Clone, Copy)]
pub struct Cost {
    /// Tokens through a training step (forward and backward): SFT, replay, Fisher.
    pub train_tokens: f64,
    /// Tokens forwarded for scoring (prefix reuse counted), or by a Deita scorer.
    pub forward_tokens: f64,
    /// Tokens generated, at most.
    pub generate_tokens: f64,
}

impl Cost {
    pub fn hours(&self, s: &Speeds) -> f64 {
        (self.train_tokens / s.train_tokens_per_s
            + self.forward_tokens / s.score_tokens_per_s
            + self.generate_tokens / s.generate_tokens_per_s)
            / 3600.0
    }

    pub fn add(&mut self, o: &Cost) {
        self.train_tokens += o.train_tokens;
        self.forward_tokens += o.forward_tokens;
        self.generate_tokens += o.generate_tokens;
    }
}

/// Token counts of the things a recipe trains and scores on.
pub struct Estimator {
    tokenizer: TextTokenizer,
    records: Vec<Record>,
    /// `harness score --plan`'s totals for one model: (forwarded at least, generated at most).
    scoring: (f64, f64),
}

impl Estimator {
    pub fn new(loaded: &Loaded, graph: &Graph, harness: &Path) -> anyhow::Result<Estimator> {
        let r = &loaded.recipe;
        let model = resolve(&r.model);
        let (tokenizer, _) = dtm_model::checkpoint::open_tokenizer(&model)
            .with_context(|| format!("{}: reading the tokenizer", model.display()))?;
        let records = match (&r.data.file, &r.data.mix) {
            (Some(f), _) => data::read_jsonl(&resolve(f))?,
            (None, Some(counts)) => {
                let dir = resolve(
                    r.data
                        .data_dir
                        .as_deref()
                        .unwrap_or(Path::new("../shared/data")),
                );
                data::mix::mix(&dir, &crate::cli::data::parse_counts(counts)?, r.data.seed)?
            }
            (None, None) => unreachable!("checked"),
        };
        let scoring = plan_scoring(graph, &model, harness)?;
        Ok(Estimator {
            tokenizer,
            records,
            scoring,
        })
    }

    fn examples(&self, max_len: usize, append_eos: bool) -> anyhow::Result<Vec<Example>> {
        Ok(tokenize(
            &self.records,
            &self.tokenizer,
            TokenizeOptions {
                max_len,
                append_eos,
            },
        )?
        .0)
    }

    /// The cost of each stage, in graph order.
    pub fn costs(&self, graph: &Graph) -> anyhow::Result<Vec<Cost>> {
        graph.stages.iter().map(|s| self.cost(&s.work)).collect()
    }

    fn cost(&self, work: &Work) -> anyhow::Result<Cost> {
        Ok(match work {
            Work::Light => Cost::default(),
            Work::Train {
                fraction,
                selected,
                options,
            } => {
                let config = options.config(PathBuf::from("model"), PathBuf::from("data"))?;
                let examples = self.examples(config.max_len, config.append_eos)?;
                let keep = match selected {
                    Some(n) => (*n).min(examples.len()),
                    None => ((examples.len() as f64) * fraction).round() as usize,
                }
                .max(1);
                // Evenly spread records stand for a portion (the data is ordered by source).
                let n = examples.len();
                let examples: Vec<Example> =
                    (0..keep).map(|i| examples[i * n / keep].clone()).collect();
                let tokens: usize = Plan::new(examples, &config).tokens_per_step().iter().sum();
                Cost {
                    train_tokens: tokens as f64 * (1.0 + config.replay_ratio),
                    ..Cost::default()
                }
            }
            Work::Fisher {
                text,
                samples,
                max_len,
                fraction,
            } => {
                let tokens = match (samples, text) {
                    (Some(n), _) => (n * max_len) as f64,
                    (None, Some(text)) => {
                        let docs = data::text::read_documents(text)?;
                        data::text::chunk(&docs, &self.tokenizer, *max_len, text)?.len() as f64
                            * *max_len as f64
                    }
                    // A sub-model's portion: its share of the records' tokens.
                    (None, None) => {
                        let e = self.examples(*max_len, true)?;
                        e.iter().map(|e| e.tokens.len()).sum::<usize>() as f64 * fraction
                    }
                };
                Cost {
                    train_tokens: tokens,
                    ..Cost::default()
                }
            }
            Work::Select => {
                // The scorer reads each instruction once inside Deita's prompt.
                let e = self.examples(usize::MAX, false)?;
                Cost {
                    forward_tokens: e.iter().map(|e| e.target_start).sum::<usize>() as f64,
                    ..Cost::default()
                }
            }
            Work::Score { models, shards } => {
                let share = *models as f64 / *shards as f64;
                Cost {
                    forward_tokens: self.scoring.0 * share,
                    generate_tokens: self.scoring.1 * share,
                    ..Cost::default()
                }
            }
        })
    }
}

/// Runs `harness score --plan` once, with the evaluation of the graph's first scoring stage
/// and the base checkpoint (every model shares its tokenizer).
fn plan_scoring(graph: &Graph, base: &Path, harness: &Path) -> anyhow::Result<(f64, f64)> {
    let Some(stage) = graph
        .stages
        .iter()
        .find(|s| matches!(s.work, Work::Score { .. }))
    else {
        return Ok((0.0, 0.0));
    };
    // Everything but the model, its adapters, the shard and the output: the same items.
    let skip = [
        "--model",
        "--adapter",
        "--ensemble",
        "--shard",
        "--output",
        "--device",
    ];
    let mut args: Vec<String> = Vec::new();
    let mut it = stage.args.iter();
    while let Some(a) = it.next() {
        let word: String =
            a.0.iter()
                .map(|p| match p {
                    Part::Lit(s) => s.clone(),
                    Part::Input(p) => p.display().to_string(),
                    _ => String::new(),
                })
                .collect();
        if skip.contains(&word.as_str()) {
            it.next();
            continue;
        }
        args.push(word);
    }
    let unused = std::env::temp_dir().join("dtm-reproduce-plan-unused");
    let out = Command::new(harness)
        .args(&args)
        .arg("--model")
        .arg(base)
        .arg("--output")
        .arg(&unused)
        .arg("--plan")
        .output()
        .with_context(|| format!("cannot run {} (pass --harness PATH)", harness.display()))?;
    if !out.status.success() {
        bail!(
            "harness score --plan failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let plan: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("harness score --plan printed no JSON")?;
    let total = &plan["total"];
    Ok((
        total["forwarded_min"].as_f64().unwrap_or(0.0),
        total["generated_max"].as_f64().unwrap_or(0.0),
    ))
}

/// `12345` as `12.3k`.
pub fn tokens(n: f64) -> String {
    match n {
        n if n >= 1e9 => format!("{:.2}G", n / 1e9),
        n if n >= 1e6 => format!("{:.2}M", n / 1e6),
        n if n >= 1e3 => format!("{:.1}k", n / 1e3),
        n => format!("{n:.0}"),
    }
}
