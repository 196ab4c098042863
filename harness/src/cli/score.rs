//! `harness score` and `harness list`: benchmarks (compiled plugins and lm-eval task YAML files)
//! run against a model.

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
use dtm_harness::evaluate::shard::Shard;
use dtm_harness::evaluate::source::{LoadedTask, TaskSource};
use dtm_harness::evaluate::store::RunStore;
use dtm_harness::evaluate::subset::Subset;
use dtm_harness::evaluate::{plugins, run_task, ProgramRunner, Progress, SandboxRunner, TaskJob};
use dtm_plugin_api::{validate, LoadOptions, OutputType};
use dtm_yaml_tasks::DEFAULT_FEWSHOT_SEED;

use super::ModelArgs;

/// Where benchmarks come from and where their data is; shared by `score` and `list`.
#[derive(Args, Debug, Clone)]
pub struct PluginArgs {
    /// A plugin library to load in addition to the built-in ones (repeatable).
    #[arg(long = "plugin")]
    plugins: Vec<PathBuf>,
    /// A folder whose plugin libraries are loaded too (repeatable).
    #[arg(long = "plugin-dir")]
    plugin_dirs: Vec<PathBuf>,
    /// A folder of lm-eval task YAML files (`*.yaml`, searched recursively, lm-eval's
    /// --include_path): each `task:` becomes a benchmark, `tag:` names a set of them (repeatable).
    #[arg(long = "include-path")]
    include_paths: Vec<PathBuf>,
    /// Let a --plugin, --plugin-dir or --include-path benchmark replace the built-in plugin of
    /// the same name (with a warning); without it, that is an error.
    #[arg(long)]
    allow_shadowing: bool,
    /// Benchmark data: `DIR` for every task (default: $DTM_DATA_DIR, else ../shared/data), or
    /// `NAME=DIR` for task NAME only (repeatable). YAML tasks read the files they name.
    #[arg(long = "data-dir", value_name = "[NAME=]DIR")]
    pub(super) data_dirs: Vec<String>,
}

/// The data folders: one for every task, and per-task ones.
pub(super) struct DataDirs {
    pub(super) default: PathBuf,
    pub(super) per_task: BTreeMap<String, PathBuf>,
}

impl DataDirs {
    pub(super) fn of(&self, task: &str) -> &Path {
        self.per_task.get(task).unwrap_or(&self.default)
    }
}

impl PluginArgs {
    pub(super) fn open(&self) -> Result<Vec<Box<dyn TaskSource>>> {
        let exe_dir = plugins::exe_dir();
        let candidates = plugins::candidates(exe_dir.as_deref(), &self.plugin_dirs, &self.plugins)?;
        let mut warn = |w: String| eprintln!("warning: {w}");
        let found = plugins::open_all(&candidates, &self.plugins, &mut warn)?;
        let yaml = dtm_yaml_tasks::discover(&self.include_paths)?;
        let sources = plugins::sources(
            found,
            exe_dir.as_deref(),
            yaml,
            self.allow_shadowing,
            &mut warn,
        )?;
        if sources.is_empty() {
            bail!(
                "no benchmark plugins found next to the harness binary ({}) or in --plugin-dir, and no task files in --include-path; build the plugins with `cargo build --workspace --release`",
                exe_dir.map_or("unknown".into(), |d| d.display().to_string())
            );
        }
        Ok(sources)
    }

    /// `--data-dir` values: at most one `DIR`, any number of `NAME=DIR` (whose folders must exist).
    pub(super) fn data_dirs(&self) -> Result<DataDirs> {
        let mut default = None;
        let mut per_task = BTreeMap::new();
        for v in &self.data_dirs {
            match v.split_once('=') {
                Some((name, dir))
                    if !name.is_empty() && !name.contains(['/', '\\']) && !dir.is_empty() =>
                {
                    let dir = PathBuf::from(dir);
                    if !dir.is_dir() {
                        bail!("--data-dir {v}: {} is not a folder", dir.display());
                    }
                    if per_task.insert(name.to_owned(), dir).is_some() {
                        bail!("--data-dir: two folders for `{name}`");
                    }
                }
                _ => {
                    if default.replace(PathBuf::from(v)).is_some() {
                        bail!("--data-dir: more than one folder for every task; name the task of the others with NAME=DIR");
                    }
                }
            }
        }
        let default = default
            .or_else(|| std::env::var_os("DTM_DATA_DIR").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("../shared/data"));
        Ok(DataDirs { default, per_task })
    }
}

#[derive(Args)]
pub struct ListArgs {
    #[command(flatten)]
    plugins: PluginArgs,
}

/// `harness list`: every benchmark with its version, kind, item count on the data present (when
/// there is data), options and metrics. Needs no data folder.
pub fn list(args: ListArgs) -> Result<()> {
    let dirs = args.plugins.data_dirs()?;
    println!(
        "{:<16} {:<8} {:<16} {:>7}  metrics; options (first value = default)",
        "task", "version", "kind", "items"
    );
    for source in args.plugins.open()? {
        let d = source.describe();
        let data_dir = dirs.of(&d.name);
        let items = if source.uses_data_dir() && !data_dir.is_dir() {
            "no data".to_string()
        } else {
            match source.load(data_dir, &LoadOptions::default(), DEFAULT_FEWSHOT_SEED) {
                Ok(task) => task.info().num_items.to_string(),
                Err(e) => format!("no data ({e:#})"),
            }
        };
        let metrics: Vec<&str> = d.metrics.iter().map(|m| m.name.as_str()).collect();
        let options: Vec<String> = d
            .options
            .iter()
            .map(|o| format!("{}={}", o.name, o.values.join("|")))
            .collect();
        println!(
            "{:<16} {:<8} {:<16} {:>7}  {}{}",
            d.name,
            d.version,
            source.kind().name(),
            items,
            metrics.join(", "),
            if options.is_empty() {
                String::new()
            } else {
                format!("; options: {}", options.join(" "))
            }
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
    /// Seeds the default few-shot sampler of YAML tasks (lm-eval's `random.Random(seed)`, 1234 by
    /// default as in lm-eval); recorded with the results. Decoding is greedy.
    #[arg(long, default_value_t = DEFAULT_FEWSHOT_SEED)]
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
    /// Score only the I-th of N disjoint slices of every task's items (whole chunks of
    /// --chunk-size dealt round-robin after --limit); `harness merge-shards` joins the N outputs.
    #[arg(long, value_name = "I/N")]
    shard: Option<Shard>,
    /// Score only the items this JSON file lists, `{"TASK": [doc_id, …]}` (TASK as in --tasks,
    /// e.g. `mmlu:anatomy`); tasks it does not name are scored whole. Applied after --limit.
    #[arg(long, value_name = "FILE")]
    items: Option<PathBuf>,
    /// Print what scoring would cost, in tokens per task (JSON: requests, tokens requested, the
    /// fewest forwarded with prefix reuse, the most generated), and exit: loads only the first
    /// --model's tokenizer and writes nothing.
    #[arg(long)]
    plan: bool,
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

/// sha256 of each file a task read, by the name the task reports.
pub(super) fn data_hashes(files: &[(String, PathBuf)]) -> Result<BTreeMap<String, String>> {
    files
        .iter()
        .map(|(name, path)| Ok((name.clone(), checkpoint::sha256_file(path)?)))
        .collect()
}

/// `--tasks` resolved: (benchmark, subtask) pairs; a YAML `tag:` names every task carrying it.
pub(super) fn resolve_tasks(
    tasks: &[String],
    sources: &[Box<dyn TaskSource>],
) -> Result<Vec<(String, Option<String>)>> {
    let by_name = |name: &str| sources.iter().find(|p| p.describe().name == name);
    let mut specs: Vec<(String, Option<String>)> = Vec::new();
    let mut push = |spec: (String, Option<String>)| {
        if !specs.contains(&spec) {
            specs.push(spec);
        }
    };
    for t in tasks {
        if t == "all" {
            for p in sources {
                push((p.describe().name.clone(), None));
            }
            continue;
        }
        let (task, sub) = match t.split_once(':') {
            Some((task, _)) => (task, Some(t.clone())),
            None => (t.as_str(), None),
        };
        let Some(source) = by_name(task) else {
            let tagged: Vec<&Box<dyn TaskSource>> = sources
                .iter()
                .filter(|s| sub.is_none() && s.tags().iter().any(|g| g == task))
                .collect();
            if tagged.is_empty() {
                let known: Vec<&str> = sources.iter().map(|p| p.describe().name.as_str()).collect();
                bail!(
                    "unknown task `{task}` (benchmarks found: {})",
                    known.join(", ")
                );
            }
            for s in tagged {
                push((s.describe().name.clone(), None));
            }
            continue;
        };
        if let Some(sub) = &sub {
            if !source.describe().subtasks.contains(sub) {
                bail!("`{task}` has no subtask `{sub}`; `harness list` names the tasks, the plugin's description its subtasks");
            }
        }
        push((task.to_owned(), sub));
    }
    Ok(specs)
}

/// A task ready to run: its source, loaded task and selected items.
struct Prepared<'a> {
    name: String,
    source: &'a dyn TaskSource,
    task: Box<dyn LoadedTask>,
    items: Vec<dtm_plugin_api::Item>,
}

pub fn score(args: ScoreArgs) -> Result<()> {
    let started = Instant::now();
    let sources = args.plugins.open()?;
    let by_name = |name: &str| {
        sources
            .iter()
            .find(|p| p.describe().name == name)
            .map(|b| b.as_ref())
    };
    // --model/--adapter/--ensemble are checked before anything loads.
    args.model.members()?;
    let specs = resolve_tasks(&args.tasks, &sources)?;
    let options = parse_options(&args.options)?;
    for task in options.keys() {
        if !specs.iter().any(|(t, _)| t == task) {
            bail!("--option for `{task}`, which is not among --tasks");
        }
    }
    let dirs = args.plugins.data_dirs()?;
    for task in dirs.per_task.keys() {
        if !specs.iter().any(|(t, _)| t == task) {
            bail!("--data-dir for `{task}`, which is not among --tasks");
        }
    }
    let load_options = |task: &str| LoadOptions {
        num_fewshot: args.num_fewshot,
        limit: args.limit,
        max_new_tokens: args.max_new_tokens,
        flags: options.get(task).cloned().unwrap_or_default(),
    };
    // A plugin whose description contradicts itself fails its task (recorded, the others go
    // on); options and data folders are checked before the model loads: a typo costs no model
    // load.
    let mut errors: BTreeMap<String, String> = BTreeMap::new();
    for (task, sub) in &specs {
        let source = by_name(task).expect("resolved");
        if let Err(e) = validate::description(source.describe()) {
            let e = format!("{e} ({})", source.path().display());
            eprintln!("error: {e}");
            errors.insert(sub.clone().unwrap_or_else(|| task.clone()), e);
            continue;
        }
        source.check_options(&load_options(task))?;
        let dir = dirs.of(task);
        if source.uses_data_dir() && !dir.is_dir() {
            bail!(
                "{}: benchmark data folder of `{task}` not found; pass --data-dir [{task}=]DIR or set DTM_DATA_DIR",
                dir.display()
            );
        }
    }

    let subset = Subset::from_args(args.items.as_deref(), args.shard, args.chunk_size, &specs)?;
    // Every task's data is read and its items built before the model loads; a task that fails
    // here is reported and the others go on.
    let mut prepared: Vec<Prepared> = Vec::new();
    for (task, sub) in &specs {
        let source = by_name(task).expect("resolved");
        let name = sub.clone().unwrap_or_else(|| task.clone());
        if errors.contains_key(&name) {
            continue;
        }
        let loaded = source
            .load(dirs.of(task), &load_options(task), args.seed)
            .and_then(|t| {
                let items = t.items()?;
                validate::items(source.describe(), &items).map_err(anyhow::Error::msg)?;
                Ok((items, t))
            });
        match loaded {
            Ok((items, task)) => prepared.push(Prepared {
                items: subset.of(&name, sub.as_deref(), items)?,
                name,
                source,
                task,
            }),
            Err(e) => {
                eprintln!("error: {name}: {e:#}");
                errors.insert(name, format!("{e:#}"));
            }
        }
    }
    if prepared.is_empty() {
        bail!("every task failed before scoring (see the errors above)");
    }
    if args.plan {
        let tasks: Vec<_> = prepared
            .iter()
            .map(|p| (p.name.as_str(), p.items.as_slice()))
            .collect();
        let plan = dtm_harness::evaluate::plan::report(
            &args.model.models[0],
            args.model.max_length,
            &tasks,
        )?;
        println!("{}", serde_json::to_string_pretty(&plan)?);
        return Ok(());
    }

    eprintln!("loading {}", args.model.describe());
    let models = args.model.load()?;
    let identity = models.identity()?;
    let mut fingerprint = json!({
        "dtype": format!("{:?}", args.model.dtype).to_lowercase(),
        "max_length": args.model.max_length,
        "data_dir": dirs.default.display().to_string(),
        "task_data_dirs": dirs.per_task,
        "limit": args.limit,
        "num_fewshot": args.num_fewshot,
        "max_new_tokens": args.max_new_tokens,
        "options": options,
        "seed": args.seed,
        "execute_programs": !args.no_exec,
        "program_timeout": args.timeout,
        "program_memory_mb": args.memory_mb,
    });
    identity.add_to_fingerprint(&mut fingerprint);
    subset.record(&mut fingerprint);
    std::fs::create_dir_all(&args.output)
        .with_context(|| format!("{}: cannot create", args.output.display()))?;
    let store = RunStore::open(&args.output, &fingerprint)?;
    let mut engine = Engine::new(models.ensemble()?, args.model.engine_options());
    let bar = Bar(ProgressBar::new(0).with_style(
        ProgressStyle::with_template(
            "{msg:>24} [{bar:30}] {pos}/{len} items, {elapsed} elapsed, ETA {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    ));

    let needs_sandbox = !args.no_exec
        && prepared
            .iter()
            .any(|p| p.source.describe().output_type == OutputType::Code);
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
    for p in &prepared {
        let description = p.source.describe();
        let name = &p.name;
        let job = TaskJob {
            task: p.task.as_ref(),
            description,
            name,
            items: &p.items,
            code: description.output_type == OutputType::Code,
            timeout_s: args.timeout.or(description.program_timeout_s),
        };
        let runner = runner.as_ref().map(|r| r as &dyn ProgramRunner);
        let run = match run_task(&mut engine, &job, runner, &store, args.chunk_size, &bar) {
            Ok(run) => run,
            Err(e) => {
                eprintln!("error: {name}: {e:#}");
                errors.insert(name.clone(), format!("{e:#}"));
                continue;
            }
        };
        let hashes = data_hashes(&p.task.data_files())?;
        let report = TaskReport::new(
            name,
            p.source,
            p.task.info().clone(),
            &run,
            &|scores| p.task.aggregate(scores),
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
    let mut header = json!({
        "harness_version": env!("CARGO_PKG_VERSION"),
        "model": identity.header(),
        "options": {
            "tasks": args.tasks, "limit": args.limit, "num_fewshot": args.num_fewshot, "max_new_tokens": args.max_new_tokens,
            "options": options, "batch_size": args.model.batch_size, "seed": args.seed, "dtype": fingerprint["dtype"],
            "device": format!("{:?}", args.model.device).to_lowercase(), "data_dir": dirs.default.display().to_string(),
            "task_data_dirs": dirs.per_task,
        },
    });
    subset.record(&mut header["options"]);
    let samples: Vec<&[_]> = all_samples.iter().map(Vec::as_slice).collect();
    report::write_all(
        &args.output,
        header,
        &reports,
        &errors,
        &samples,
        started.elapsed().as_secs_f64(),
    )?;
    eprintln!(
        "wrote {}/results.json, samples.jsonl, results.csv, results.md",
        args.output.display()
    );
    if !errors.is_empty() {
        bail!(
            "{} of {} tasks failed (see the errors above; results.json lists them under \"errors\")",
            errors.len(),
            specs.len()
        );
    }
    Ok(())
}
