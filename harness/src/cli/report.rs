//! `harness report`: many `harness score` runs side by side, with paired significance and the
//! paper's figures as SVG.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use dtm_harness::report::{self, Options, RunSpec};

const AFTER_HELP: &str = "\
RUNS
  Each RUN is a `harness score` output folder (results.json + samples.jsonl), named by its
  folder name (runs/dtm → dtm) or as NAME=DIR. A run may carry labels, DIR@key=value,…
  (e.g. dtm-k4=runs/dtm-k4@k=4,series=dtm): every numeric label other than `series` is a
  setting, and the report plots each task's score against it (one line per `series`;
  Figures 10 and 11 of the paper).

STATISTICS
  Items are paired by (task, doc_id). For every method but the baseline: Δ = method − baseline,
  a 95% paired-bootstrap interval (--resamples, --seed), and a two-sided paired test: exact
  McNemar when every per-item value is 0 or 1 (acc, exact match, greedy pass@1), else a
  sign-flip permutation test. p-values are Holm-corrected over the whole table; both are shown.
  Runs that scored different items, with different protocol settings or from data files with
  different hashes are refused for that task, saying what differs (--allow-mismatch compares
  the common items and says so in the table).

FIGURES (plots/*.svg, all linked from report.md)
  scores.svg                  each benchmark's score per method with 95% intervals
  setting-KEY-TASK.svg        score against a labelled setting (see RUNS)
  loss.svg                    training loss per step, one line per --train-log
  errors-upset-TASK.svg       overlap of the --submodels' error sets (Figure 8)
  errors-merged-TASK.svg      --merged accuracy by how many sub-models got the item wrong
                              (Figure 9)

EXAMPLE
  harness report base=runs/base vanilla=runs/vanilla dtm=runs/dtm \\
      sub1=runs/sub1 sub2=runs/sub2 sub3=runs/sub3 sub4=runs/sub4 \\
      --baseline vanilla --output report --paper-reference \\
      --submodels sub1,sub2,sub3,sub4 --merged dtm \\
      --train-log vanilla=train/vanilla/train_log.jsonl --train-log sub1=train/sub1/train_log.jsonl";

#[derive(Args)]
#[command(after_long_help = AFTER_HELP)]
pub struct ReportArgs {
    /// `harness score` output folders: DIR, NAME=DIR, optionally with labels DIR@key=value,…
    #[arg(required = true, value_parser = parse_run)]
    runs: Vec<RunSpec>,
    /// The run every other run is compared with.
    #[arg(long)]
    baseline: String,
    /// Folder for report.md, report.csv, report.json and plots/.
    #[arg(long)]
    output: PathBuf,
    /// Only these tasks (comma-separated; default: every task any run holds).
    #[arg(long, value_delimiter = ',')]
    tasks: Option<Vec<String>>,
    /// Also a row per subtask (MMLU subjects, BBH tasks); Holm then covers those rows too.
    #[arg(long)]
    subtasks: bool,
    /// Compare runs that differ (items, protocol settings, data hashes) on their common items,
    /// noting what differs, instead of refusing them.
    #[arg(long)]
    allow_mismatch: bool,
    /// Print the paper's Table 1 (Fu et al., ACL 2024, Llama-2-7b) beside ours, labelled as
    /// the paper's.
    #[arg(long)]
    paper_reference: bool,
    /// Seed of the bootstrap and of sampled sign flips.
    #[arg(long, default_value_t = 1234)]
    seed: u64,
    /// Bootstrap resamples (and random sign patterns when there are too many to enumerate).
    #[arg(long, default_value_t = 10_000)]
    resamples: usize,
    /// A training run's train_log.jsonl, NAME=FILE (repeatable): loss curves.
    #[arg(long = "train-log", value_parser = parse_named_file)]
    train_logs: Vec<(String, PathBuf)>,
    /// Runs of the K sub-models (comma-separated names): overlap of their error sets (Figure 8).
    #[arg(long, value_delimiter = ',')]
    submodels: Vec<String>,
    /// Merged run(s) (comma-separated names): accuracy by how many sub-models got the item
    /// wrong (Figure 9). Needs --submodels.
    #[arg(long, value_delimiter = ',')]
    merged: Vec<String>,
    /// Task(s) for the sub-model figures (comma-separated; default: every task all of
    /// --submodels and --merged hold). The headline metric must be 0/1.
    #[arg(long, value_delimiter = ',')]
    error_task: Vec<String>,
}

fn parse_run(s: &str) -> Result<RunSpec, String> {
    s.parse()
}

fn parse_named_file(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((name, file)) if !name.is_empty() && !file.is_empty() => {
            Ok((name.to_owned(), PathBuf::from(file)))
        }
        _ => Err(format!("{s:?}: expected NAME=FILE")),
    }
}

pub fn run(args: ReportArgs) -> Result<()> {
    let options = Options {
        baseline: args.baseline,
        tasks: args.tasks,
        subtasks: args.subtasks,
        allow_mismatch: args.allow_mismatch,
        paper_reference: args.paper_reference,
        seed: args.seed,
        resamples: args.resamples,
        train_logs: args.train_logs,
        submodels: args.submodels,
        merged: args.merged,
        error_tasks: args.error_task,
    };
    eprintln!(
        "comparing {} runs with `{}` ({} bootstrap resamples per comparison)",
        args.runs.len(),
        options.baseline,
        options.resamples
    );
    let report = report::build(&args.runs, &options)?;
    report::write(&report, &args.output)
        .with_context(|| format!("{}: writing the report", args.output.display()))?;
    let tested = report.rows.iter().filter(|r| r.p_value.is_some()).count();
    eprintln!(
        "wrote {}/report.md, report.csv, report.json and {} plots ({} rows, {} comparisons)",
        args.output.display(),
        report.plots.len(),
        report.rows.len(),
        tested
    );
    Ok(())
}
