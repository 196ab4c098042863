//! `harness bench`: throughput of the request engine on a fixed, MMLU-shaped workload.
//!
//! The workload is built in, so numbers from different machines compare: `questions` four-choice
//! questions after one shared five-shot preamble (each question's four continuations are
//! ` A`..` D`), and `generations` greedy continuations of `new_tokens` tokens — or, with
//! `--prompts`, greedy generation from a JSONL file of requests (results/bench/generate.sh uses
//! GSM8K prompts).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Args;
use serde_json::json;

use dtm_harness::engine::{Engine, EngineOptions, GenerateRequest, LoglikelihoodRequest, Stats};

use super::output::print_line;
use super::{models, values, ModelArgs};

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Four-choice questions scored per loglikelihood run (at least 1).
    #[arg(long, default_value_t = 24, value_parser = values::at_least_one)]
    questions: usize,
    /// Prompts generated from (at least 1).
    #[arg(long, default_value_t = 4, value_parser = values::at_least_one)]
    generations: usize,
    /// Tokens generated per prompt (at least 1).
    #[arg(long, default_value_t = 32, value_parser = values::at_least_one)]
    new_tokens: usize,
    /// Generate from these requests instead of the built-in prompts (--generations and
    /// --new-tokens then do not apply): JSONL, one `{"context": …, "until": […],
    /// "max_new_tokens": N}` per line. The report lists every generation's token ids.
    #[arg(long, value_name = "JSONL")]
    prompts: Option<PathBuf>,
    /// Measure generation only (skip both loglikelihood runs).
    #[arg(long)]
    no_loglikelihood: bool,
}

const FACTS: [(&str, [&str; 4], usize); 8] = [
    (
        "Which planet is known as the Red Planet?",
        ["Venus", "Mars", "Jupiter", "Saturn"],
        1,
    ),
    (
        "What is the boiling point of water at sea level in degrees Celsius?",
        ["90", "100", "110", "120"],
        1,
    ),
    (
        "Which gas do plants absorb from the atmosphere for photosynthesis?",
        ["Oxygen", "Nitrogen", "Carbon dioxide", "Helium"],
        2,
    ),
    (
        "Who wrote the play Romeo and Juliet?",
        [
            "Charles Dickens",
            "Jane Austen",
            "Mark Twain",
            "William Shakespeare",
        ],
        3,
    ),
    (
        "What is the largest ocean on Earth?",
        [
            "Pacific Ocean",
            "Atlantic Ocean",
            "Indian Ocean",
            "Arctic Ocean",
        ],
        0,
    ),
    (
        "How many sides does a hexagon have?",
        ["Five", "Six", "Seven", "Eight"],
        1,
    ),
    (
        "Which organ pumps blood through the human body?",
        ["Liver", "Lungs", "Heart", "Kidney"],
        2,
    ),
    (
        "What is the chemical symbol for gold?",
        ["Ag", "Au", "Gd", "Go"],
        1,
    ),
];

fn question(i: usize) -> String {
    let (q, options, _) = FACTS[i % FACTS.len()];
    let letters = ["A", "B", "C", "D"];
    let body: String = options
        .iter()
        .zip(letters)
        .map(|(o, l)| format!("\n{l}. {o}"))
        .collect();
    format!("{q} (variant {i}){body}\nAnswer:")
}

fn workload(questions: usize) -> Vec<LoglikelihoodRequest> {
    let letters = ["A", "B", "C", "D"];
    let mut preamble = String::from(
        "The following are multiple choice questions (with answers) about general knowledge.\n\n",
    );
    for (i, fact) in FACTS.iter().take(5).enumerate() {
        preamble.push_str(&format!("{} {}\n\n", question(i), letters[fact.2]));
    }
    (0..questions)
        .flat_map(|i| {
            let context = format!("{preamble}{}", question(i + 5));
            letters.iter().map(move |l| LoglikelihoodRequest {
                context: context.clone(),
                continuation: format!(" {l}"),
            })
        })
        .collect()
}

fn timed<T>(f: impl FnOnce() -> Result<T>) -> Result<(T, f64)> {
    let start = Instant::now();
    let out = f()?;
    Ok((out, start.elapsed().as_secs_f64()))
}

fn report(name: &str, stats: &Stats, seconds: f64) -> serde_json::Value {
    json!({
        "run": name,
        "seconds": seconds,
        "tokens_requested": stats.requested,
        "tokens_forwarded": stats.forwarded,
        "padding": stats.padding,
        "requested_tokens_per_second": stats.requested as f64 / seconds,
        "forwarded_tokens_per_second": stats.forwarded as f64 / seconds,
    })
}

pub fn run(args: BenchArgs) -> Result<()> {
    let models = args.model.load()?;
    let model = models.ensemble()?;
    let base = args.model.engine_options();
    let requests = workload(args.questions);
    let mut runs = Vec::new();
    let loglikelihood_runs = if args.no_loglikelihood {
        Vec::new()
    } else {
        vec![
            (
                "loglikelihood, prefix reuse",
                base.prefix_cache_entries.max(1),
            ),
            ("loglikelihood, no reuse", 0),
        ]
    };

    for (name, entries) in loglikelihood_runs {
        let mut engine = Engine::new(
            model.clone(),
            EngineOptions {
                prefix_cache_entries: entries,
                ..base.clone()
            },
        );
        let (_, seconds) = timed(|| Ok(engine.loglikelihood(&requests)?))?;
        let r = report(name, engine.stats(), seconds);
        eprintln!(
            "{name:32} {:>8.1} requested tok/s {:>8.1} forwarded tok/s  ({} of {} tokens forwarded, {seconds:.2} s)",
            r["requested_tokens_per_second"].as_f64().unwrap_or(0.0),
            r["forwarded_tokens_per_second"].as_f64().unwrap_or(0.0),
            engine.stats().forwarded,
            engine.stats().requested,
        );
        runs.push(r);
    }

    let prompts: Vec<GenerateRequest> = match &args.prompts {
        Some(path) => super::debug::read_requests(
            path,
            "{\"context\": …, \"until\": […], \"max_new_tokens\": N}",
        )?,
        None => (0..args.generations)
            .map(|i| GenerateRequest {
                context: format!("Q: {}\nA:", FACTS[i % FACTS.len()].0),
                until: Vec::new(),
                max_new_tokens: args.new_tokens,
            })
            .collect(),
    };
    let mut engine = Engine::new(model.clone(), base.clone());
    let (generations, seconds) = timed(|| Ok(engine.generate_until(&prompts)?))?;
    let generated: usize = generations.iter().map(|g| g.ids.len()).sum();
    eprintln!(
        "{:32} {:>8.1} generated tok/s ({generated} tokens, {seconds:.2} s)",
        "greedy generation",
        generated as f64 / seconds
    );
    let mut r = report("greedy generation", engine.stats(), seconds);
    r["tokens_generated"] = json!(generated);
    r["generated_tokens_per_second"] = json!(generated as f64 / seconds);
    r["decode_steps"] = json!(engine.stats().decode_steps);
    if args.prompts.is_some() {
        r["generations"] = json!(generations.iter().map(|g| &g.ids).collect::<Vec<_>>());
    }
    runs.push(r);

    let quantized_error = if args.model.quantized {
        Some(quantized_error(&args, &model, &prompts)?)
    } else {
        None
    };

    print_line(&serde_json::to_string_pretty(&json!({
        "model": models.describe(),
        "compute": if args.model.quantized { models::QUANTIZED_COMPUTE } else { "float" },
        "quantized_logprob_error": quantized_error,
        "dtype": format!("{:?}", args.model.dtype),
        "batch_size": base.batch_size,
        "threads": rayon::current_num_threads(),
        "matmul": dtm_model::blas::Blas::describe(),
        "runs": runs,
    }))?)
}

/// How far quantized compute moves the log-probabilities where it applies, in decoding: every
/// generation prompt run as a prompt up to its last `QUANTIZED_ERROR_TOKENS` tokens, which are
/// then fed one at a time (as greedy decoding feeds its tokens) to the quantized model and to
/// the float one; each next token's log-probability is compared.
fn quantized_error(
    args: &BenchArgs,
    quantized: &dtm_harness::engine::Ensemble,
    prompts: &[GenerateRequest],
) -> Result<serde_json::Value> {
    let float_models = args.model.load_as(false)?;
    let float = float_models.ensemble()?;
    let options = args.model.engine_options();
    let mut q_engine = Engine::new(quantized.clone(), options.clone());
    let mut f_engine = Engine::new(float, options);
    let tokenizer = quantized.tokenizer();
    let mut diffs = Vec::new();
    for p in prompts {
        let ids = tokenizer.encode_document(&p.context)?;
        let start = ids.len().saturating_sub(QUANTIZED_ERROR_TOKENS + 1);
        let q = q_engine.decode_logprobs(&ids, start)?;
        let f = f_engine.decode_logprobs(&ids, start)?;
        diffs.extend(q.iter().zip(&f).map(|(a, b)| (a - b).abs()));
    }
    let n = diffs.len().max(1) as f64;
    let max = diffs.iter().copied().fold(0.0, f64::max);
    let mean = diffs.iter().sum::<f64>() / n;
    let mut sorted = diffs.clone();
    sorted.sort_by(f64::total_cmp);
    let p99 = sorted
        .get(((sorted.len() as f64 * 0.99) as usize).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0.0);
    eprintln!(
        "{:32} max |Δ log p| {max:.4}, p99 {p99:.4}, mean {mean:.4} over {} decoding steps",
        "quantized vs float log-probs",
        diffs.len(),
    );
    Ok(json!({
        "what": "next-token log-probabilities of each prompt's last tokens fed one per forward pass (as decoding runs), quantized minus float",
        "tokens": diffs.len(),
        "max_abs": max,
        "p99_abs": p99,
        "mean_abs": mean,
    }))
}

/// Tokens per prompt fed one at a time for [`quantized_error`].
const QUANTIZED_ERROR_TOKENS: usize = 96;
