//! `trainer select`: score every record with a Deita prompt and keep the best (the paper's Deita
//! baseline: complexity above a threshold).

use std::cell::Cell;
use std::io::IsTerminal;
use std::path::PathBuf;

use clap::builder::PossibleValuesParser;
use clap::Args;
use dtm_model::device::{device, DeviceKind, Precision};
use dtm_trainer::select::scorer::BatchLimits;
use dtm_trainer::select::{self, registry, Diversity, Progress, Rule, SelectConfig};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Args)]
#[command(group(clap::ArgGroup::new("rule").required(true).args(["threshold", "top_k"])))]
pub struct SelectArgs {
    /// deita-complexity: the instruction's complexity (the paper's Deita baseline).
    /// deita-quality: the response's quality. deita-evol: complexity × quality.
    #[arg(long, value_parser = PossibleValuesParser::new(registry::names()))]
    method: String,
    /// Scorer model, a Hugging Face folder or a .gguf file; its vocabulary must hold the tokens
    /// "1" to "6". The score is Σ k·p(k) over the softmax of those six logits after Deita's prompt.
    #[arg(long)]
    scorer: PathBuf,
    /// Records: JSONL, Alpaca form (instruction, optional input, output) or chat form (messages).
    #[arg(long)]
    data: PathBuf,
    /// Output folder: scores.jsonl (one {"score"} per record, file order), selected.jsonl (the kept
    /// records' lines, unchanged, in file order), selection.json. Running the same command again
    /// resumes: saved scores are not recomputed; other --method/--scorer/--data/--precision are
    /// refused. The rule and the diversity filter may change between runs (re-selection only).
    #[arg(long)]
    output: PathBuf,
    /// Keep the records whose score is strictly above T.
    #[arg(long, value_name = "T")]
    threshold: Option<f64>,
    /// Keep the N highest-scoring records (ties: file order).
    #[arg(long, value_name = "N")]
    top_k: Option<usize>,
    /// Deita's diversity filter: one embedding per record (JSONL, `[..]` or {"embedding": [..]},
    /// file order). Records are walked from the highest score down and one is kept only when its
    /// cosine similarity to every record kept before is at most --diversity-threshold.
    #[arg(long, value_name = "F")]
    embeddings: Option<PathBuf>,
    /// Largest cosine similarity allowed by the diversity filter (Deita's default).
    #[arg(long, default_value_t = 0.9, requires = "embeddings")]
    diversity_threshold: f64,
    /// Prompts per forward pass (prompts of similar length are batched together).
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// At most this many tokens (rows × the longest row, padding included) per forward pass; a
    /// longer prompt is scored alone.
    #[arg(long, default_value_t = 8192)]
    batch_tokens: usize,
    /// Records per saved chunk: a killed run loses at most one chunk.
    #[arg(long, default_value_t = 64)]
    chunk_size: usize,
    #[arg(long, value_enum, default_value = "f32")]
    precision: Precision,
    /// cpu, or cuda (needs a build with --features cuda).
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceKind,
}

/// A bar on a terminal, else one line per saved chunk (logs stay readable).
struct Bar {
    bar: Option<ProgressBar>,
    done: Cell<usize>,
    total: Cell<usize>,
}

impl Progress for Bar {
    fn start(&self, total: usize, already_done: usize) {
        self.done.set(already_done);
        self.total.set(total);
        match &self.bar {
            Some(bar) => {
                bar.set_length(total as u64);
                bar.set_position(already_done as u64);
                bar.reset_eta();
            }
            None => eprintln!("{already_done}/{total} records already scored"),
        }
    }

    fn advance(&self, n: usize) {
        self.done.set(self.done.get() + n);
        match &self.bar {
            Some(bar) => bar.inc(n as u64),
            None => eprintln!("scored {}/{} records", self.done.get(), self.total.get()),
        }
    }
}

pub fn run(args: SelectArgs) -> anyhow::Result<()> {
    let method = registry::find(&args.method).expect("clap checked the name");
    let rule = match (args.threshold, args.top_k) {
        (Some(t), None) => Rule::Threshold(t),
        (None, Some(k)) => Rule::TopK(k),
        _ => unreachable!("clap requires exactly one of --threshold and --top-k"),
    };
    let config = SelectConfig {
        method,
        scorer: args.scorer,
        data: args.data,
        dtype: args.precision.dtype(),
        rule,
        diversity: args.embeddings.map(|embeddings| Diversity {
            embeddings,
            threshold: args.diversity_threshold,
        }),
        batch: BatchLimits {
            rows: args.batch_size,
            tokens: args.batch_tokens,
        },
        chunk_size: args.chunk_size,
    };
    let device = device(args.device)?;
    let bar = Bar {
        done: Cell::new(0),
        total: Cell::new(0),
        bar: std::io::stderr().is_terminal().then(|| {
            ProgressBar::new(0).with_style(
                ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} records scored  [{elapsed_precise} < {eta_precise}]",
                )
                .expect("valid template"),
            )
        }),
    };
    let summary = select::run(&config, &args.output, &device, &bar)?;
    if let Some(bar) = bar.bar {
        bar.finish();
    }
    eprintln!(
        "{}: scored {} of {} records now ({} saved earlier); selected {} into {}; scores in {}",
        method.name,
        summary.computed,
        summary.records,
        summary.records - summary.computed,
        summary.selected,
        summary.output.display(),
        summary.scores.display()
    );
    Ok(())
}
