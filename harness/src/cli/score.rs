//! `harness score` and `harness list`: benchmark plugins run against a model.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use dtm_harness::checkpoint;
use dtm_harness::engine::Engine;
use dtm_harness::evaluate::report::{self, TaskReport};
use dtm_harness::evaluate::store::RunStore;
use dtm_harness::evaluate::{plugins, run_task, ProgramRunner, Progress, SandboxRunner, TaskJob};
use dtm_plugin_api::host::Plugin;
use dtm_plugin_api::{LoadOptions, OutputType};

use super::ModelArgs;

/// Where plugins come from; shared by `score` and `list`.
#[derive(Args, Debug, Clone)]
pub struct PluginArgs {
    /// A plugin library to load in addition to the built-in ones (repeatable).
    #[arg(long = "plugin")]
    plugins: Vec<PathBuf>,
    /// A folder whose plugin libraries are loaded too (repeatable).
    #[arg(long = "plugin-dir")]
    plugin_dirs: Vec<PathBuf>,
    /// Benchmark data (default: $DTM_DATA_DIR, else ../shared/data).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

impl PluginArgs {
    fn open(&self) -> Result<Vec<Plugin>> {
        let exe_dir = plugins::exe_dir();
        let candidates = plugins::candidates(exe_dir.as_deref(), &self.plugin_dirs, &self.plugins)?;
        let found = plugins::open_all(&candidates, &self.plugins, &mut |w| {
            eprintln!("warning: {w}")
        })?;
        if found.is_empty() {
            bail!(
                "no benchmark plugins found next to the harness binary ({}) or in --plugin-dir; build them with `cargo build --workspace --release`",
                exe_dir.map_or("unknown".into(), |d| d.display().to_string())
            );
        }
        Ok(found)
    }

    fn data_dir(&self) -> Result<PathBuf> {
        let dir = self
            .data_dir
            .clone()
            .or_else(|| std::env::var_os("DTM_DATA_DIR").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("../shared/data"));
        if !dir.is_dir() {
            bail!(
                "{}: benchmark data folder not found; pass --data-dir or set DTM_DATA_DIR",
                dir.display()
            );
        }
        Ok(dir)
    }
}

#[derive(Args)]
pub struct ListArgs {
    #[command(flatten)]
    plugins: PluginArgs,
}

/// `harness list`: each plugin's name, version, item count on the data present, and metrics.
pub fn list(args: ListArgs) -> Result<()> {
    let data_dir = args.plugins.data_dir()?;
    println!("{:<16} {:<8} {:>7}  metrics", "task", "version", "items");
    for plugin in args.plugins.open()? {
        let d = plugin.describe();
        let items = match plugin.load(&data_dir, &LoadOptions::default()) {
            Ok(task) => task.info().num_items.to_string(),
            Err(e) => format!("no data ({e})"),
        };
        let metrics: Vec<&str> = d.metrics.iter().map(|m| m.name.as_str()).collect();
        println!(
            "{:<16} {:<8} {:>7}  {}",
            d.name,
            d.version,
            items,
            metrics.join(", ")
        );
    }
    Ok(())
}

#[derive(Args)]
pub struct ScoreArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    plugins: PluginArgs,
    /// Comma-separated benchmarks (`gsm8k,mmlu`), subtasks (`mmlu:anatomy`, `bbh:date_understanding`), or `all`.
    #[arg(long, value_delimiter = ',', required = true)]
    tasks: Vec<String>,
    /// Folder for results.json, samples.jsonl, results.csv and results.md; a killed run started
    /// again with the same command resumes from it.
    #[arg(long)]
    output: PathBuf,
    /// The first N test items of each (sub)task, in upstream file order (like lm-eval's --limit).
    #[arg(long)]
    limit: Option<usize>,
    /// Few-shot examples instead of each benchmark's protocol default.
    #[arg(long)]
    num_fewshot: Option<usize>,
    /// Cap on generated tokens per request (printed with the results); default: the protocol's.
    #[arg(long)]
    max_new_tokens: Option<usize>,
    /// A plugin option, `task.name=value` (repeatable; `harness list` and each plugin's docs name them).
    #[arg(long = "option")]
    options: Vec<String>,
    /// Recorded with the results. Decoding is greedy, so no number depends on it.
    #[arg(long, default_value_t = 1234)]
    seed: u64,
    /// Items answered per engine call (and saved per chunk).
    #[arg(long, default_value_t = 64)]
    chunk_size: usize,
    /// Programs run at once in the sandbox (code benchmarks); 0 = one per CPU.
    #[arg(long, default_value_t = 0)]
    jobs: usize,
    /// Memory cap per program in the sandbox, MiB.
    #[arg(long, default_value_t = 512)]
    memory_mb: usize,
    /// Per-program time limit in seconds, instead of the benchmark's (PROTOCOL: 3 s).
    #[arg(long)]
    timeout: Option<f64>,
    /// Do not execute programs: code benchmarks then report pass@1 as unavailable.
    #[arg(long)]
    no_exec: bool,
}

struct Bar(ProgressBar);

impl Progress for Bar {
    fn start(&self, task: &str, total: usize, already_done: usize) {
        self.0.set_length(total as u64);
        self.0.set_position(already_done as u64);
        self.0.reset_eta();
        self.0.set_message(task.to_owned());
    }
    fn advance(&self, n: usize) {
        self.0.inc(n as u64);
    }
    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

/// `task.name=value` options grouped by task.
fn parse_options(options: &[String]) -> Result<BTreeMap<String, BTreeMap<String, String>>> {
    let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for o in options {
        let Some((key, value)) = o.split_once('=') else {
            bail!("--option {o:?}: expected task.name=value")
        };
        let Some((task, name)) = key.split_once('.') else {
            bail!("--option {o:?}: expected task.name=value")
        };
        out.entry(task.to_owned())
            .or_default()
            .insert(name.to_owned(), value.to_owned());
    }
    Ok(out)
}

/// sha256 of each file a task read, relative to the data folder.
fn data_hashes(data_dir: &Path, files: &[String]) -> Result<BTreeMap<String, String>> {
    files
        .iter()
        .map(|f| Ok((f.clone(), checkpoint::sha256_file(&data_dir.join(f))?)))
        .collect()
}

pub fn score(args: ScoreArgs) -> Result<()> {
    let started = Instant::now();
    let data_dir = args.plugins.data_dir()?;
    let plugins = args.plugins.open()?;
    let by_name = |name: &str| plugins.iter().find(|p| p.describe().name == name);
    let mut specs: Vec<(String, Option<String>)> = Vec::new();
    for t in &args.tasks {
        if t == "all" {
            specs.extend(plugins.iter().map(|p| (p.describe().name.clone(), None)));
            continue;
        }
        let (task, sub) = match t.split_once(':') {
            Some((task, _)) => (task, Some(t.clone())),
            None => (t.as_str(), None),
        };
        let Some(plugin) = by_name(task) else {
            let known: Vec<&str> = plugins.iter().map(|p| p.describe().name.as_str()).collect();
            bail!(
                "unknown task `{task}` (plugins found: {})",
                known.join(", ")
            );
        };
        if let Some(sub) = &sub {
            if !plugin.describe().subtasks.contains(sub) {
                bail!("`{task}` has no subtask `{sub}`; `harness list` names the tasks, the plugin's description its subtasks");
            }
        }
        specs.push((task.to_owned(), sub));
    }
    let options = parse_options(&args.options)?;
    for task in options.keys() {
        if !specs.iter().any(|(t, _)| t == task) {
            bail!("--option for `{task}`, which is not among --tasks");
        }
    }

    eprintln!("loading {}", args.model.model.display());
    let model = args.model.load()?;
    let model_hash = checkpoint::fingerprint(&args.model.model)?;
    let adapter = match &args.model.adapter {
        Some(dir) => {
            json!({"path": dir.display().to_string(), "sha256": checkpoint::fingerprint(dir)?})
        }
        None => serde_json::Value::Null,
    };
    let mut fingerprint = json!({
        "model": args.model.model.display().to_string(),
        "model_sha256": model_hash,
        "dtype": format!("{:?}", args.model.dtype).to_lowercase(),
        "max_length": args.model.max_length,
        "data_dir": data_dir.display().to_string(),
        "limit": args.limit,
        "num_fewshot": args.num_fewshot,
        "max_new_tokens": args.max_new_tokens,
        "options": options,
        "seed": args.seed,
        "execute_programs": !args.no_exec,
        "program_timeout": args.timeout,
        "program_memory_mb": args.memory_mb,
    });
    if !adapter.is_null() {
        // Only then, so that runs without an adapter resume from folders written before.
        fingerprint["adapter"] = adapter.clone();
    }
    std::fs::create_dir_all(&args.output)
        .with_context(|| format!("{}: cannot create", args.output.display()))?;
    let store = RunStore::open(&args.output, &fingerprint)?;
    let mut engine = Engine::new(&model, args.model.engine_options());
    let bar = Bar(ProgressBar::new(0).with_style(
        ProgressStyle::with_template(
            "{msg:>24} [{bar:30}] {pos}/{len} items, {elapsed} elapsed, ETA {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    ));

    let needs_sandbox = !args.no_exec
        && specs
            .iter()
            .any(|(t, _)| by_name(t).is_some_and(|p| p.describe().output_type == OutputType::Code));
    let runner = if needs_sandbox {
        let sandbox = dtm_sandbox::Sandbox::new(dtm_sandbox::SandboxConfig::default()).context(
            "code benchmarks need the sandbox (or pass --no-exec to report pass@1 as unavailable)",
        )?;
        let limits = dtm_sandbox::Limits {
            memory_bytes: args.memory_mb << 20,
            ..dtm_sandbox::Limits::default()
        };
        Some(SandboxRunner {
            sandbox,
            limits,
            jobs: args.jobs,
        })
    } else {
        None
    };

    let mut reports = Vec::new();
    let mut all_samples = Vec::new();
    for (task, sub) in &specs {
        let plugin = by_name(task).expect("checked above");
        let description = plugin.describe();
        let load = LoadOptions {
            num_fewshot: args.num_fewshot,
            limit: args.limit,
            max_new_tokens: args.max_new_tokens,
            flags: options.get(task).cloned().unwrap_or_default(),
        };
        let name = sub.clone().unwrap_or_else(|| task.clone());
        let loaded = plugin
            .load(&data_dir, &load)
            .and_then(|t| Ok((t.items()?, t)));
        let (items, loaded) = match loaded {
            Ok(x) => x,
            Err(e) => {
                // One broken plugin fails its task; the others go on.
                eprintln!("error: {name}: {e}");
                continue;
            }
        };
        let items: Vec<_> = items
            .into_iter()
            .filter(|i| sub.as_ref().is_none_or(|s| &i.subtask == s))
            .collect();
        let job = TaskJob {
            task: &loaded,
            name: &name,
            items: &items,
            code: description.output_type == OutputType::Code,
            timeout_s: args.timeout.or(description.program_timeout_s),
        };
        let runner = runner.as_ref().map(|r| r as &dyn ProgramRunner);
        let run = match run_task(&mut engine, &job, runner, &store, args.chunk_size, &bar) {
            Ok(run) => run,
            Err(e) => {
                eprintln!("error: {name}: {e:#}");
                continue;
            }
        };
        let hashes = data_hashes(&data_dir, &loaded.info().data_files)?;
        let report = TaskReport::new(
            &name,
            description,
            plugin.path(),
            loaded.info().clone(),
            &run,
            hashes,
        );
        let headline = report
            .metrics
            .get(&report.headline_metric)
            .and_then(|m| m["value"].as_f64());
        eprintln!(
            "{name}: {} = {} over {} items ({:.1} s; tokens requested {}, forwarded {})",
            report.headline_metric,
            headline.map_or("unavailable".into(), |v| format!("{:.4}", v)),
            run.samples.len(),
            run.wall_seconds,
            run.stats.requested,
            run.stats.forwarded
        );
        reports.push(report);
        all_samples.push(run.samples);
    }
    let header = json!({
        "harness_version": env!("CARGO_PKG_VERSION"),
        "model": {"path": args.model.model.display().to_string(), "sha256": model_hash, "architecture": model.config().architecture.name(), "adapter": adapter},
        "options": {
            "tasks": args.tasks, "limit": args.limit, "num_fewshot": args.num_fewshot, "max_new_tokens": args.max_new_tokens,
            "options": options, "batch_size": args.model.batch_size, "seed": args.seed, "dtype": fingerprint["dtype"],
            "device": format!("{:?}", args.model.device).to_lowercase(), "data_dir": data_dir.display().to_string(),
        },
    });
    let samples: Vec<&[_]> = all_samples.iter().map(Vec::as_slice).collect();
    report::write_all(
        &args.output,
        header,
        &reports,
        &samples,
        started.elapsed().as_secs_f64(),
    )?;
    eprintln!(
        "wrote {}/results.json, samples.jsonl, results.csv, results.md",
        args.output.display()
    );
    if reports.len() < specs.len() {
        bail!(
            "{} of {} tasks failed (see the errors above)",
            specs.len() - reports.len(),
            specs.len()
        );
    }
    Ok(())
}
