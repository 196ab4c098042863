//! `harness score` and `harness list`: benchmark plugins run against a model.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

use dtm_harness::checkpoint;
use dtm_harness::data;
use dtm_harness::engine::Engine;
use dtm_harness::evaluate::error::EvalError;
use dtm_harness::evaluate::report::{self, format_value, TaskReport};
use dtm_harness::evaluate::store::RunStore;
use dtm_harness::evaluate::{plugins, run_task, ProgramRunner, Progress, SandboxRunner, TaskJob};
use dtm_plugin_api::host::{Plugin, Task};
use dtm_plugin_api::{Item, LoadOptions, OutputType};

use super::output::{print_line, CliError};
use super::{values, ModelArgs};

/// Where plugins and data come from; shared by `score` and `list`.
#[derive(Args, Debug, Clone)]
pub struct PluginArgs {
    /// A plugin library to load in addition to the built-in ones (repeatable).
    #[arg(long = "plugin")]
    plugins: Vec<PathBuf>,
    /// A folder whose plugin libraries are loaded too (repeatable).
    #[arg(long = "plugin-dir")]
    plugin_dirs: Vec<PathBuf>,
    /// Let a plugin from --plugin or --plugin-dir replace the built-in plugin of the same name
    /// (without it, two plugins of one name are refused).
    #[arg(long)]
    replace_builtin: bool,
    /// Benchmark data. Default: $DTM_DATA_DIR, else $XDG_DATA_HOME/dtm/data, else
    /// ~/.local/share/dtm/data, else the source checkout's ../shared/data (the first that
    /// exists); `harness data fetch` downloads the data.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

impl PluginArgs {
    fn open(&self) -> Result<Vec<Plugin>> {
        let exe_dir = plugins::exe_dir();
        let candidates = plugins::candidates(exe_dir.as_deref(), &self.plugin_dirs, &self.plugins)?;
        let found = plugins::open_all(&candidates, self.replace_builtin, &mut |w| {
            eprintln!("warning: {w}")
        })?;
        if found.is_empty() {
            return Err(CliError::BadInput(format!(
                "no benchmark plugins found next to the harness binary ({}) or in --plugin-dir; build them with `cargo build --workspace --release`",
                exe_dir.map_or("unknown".into(), |d| d.display().to_string())
            ))
            .into());
        }
        Ok(found)
    }

    /// The data folder, absolute.
    fn data_dir(&self) -> Result<PathBuf> {
        Ok(data::locate(self.data_dir.as_deref())?)
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
    print_line(&format!(
        "{:<16} {:<8} {:>7}  metrics",
        "task", "version", "items"
    ))?;
    for plugin in args.plugins.open()? {
        let d = plugin.describe();
        let missing =
            data::group_of_task(&d.name).and_then(|g| data::require_group(&data_dir, g).err());
        let items = match missing {
            Some(_) => format!(
                "no data (`harness data fetch --only {}`)",
                data::group_of_task(&d.name).unwrap_or(&d.name)
            ),
            None => match plugin.load(&data_dir, &LoadOptions::default()) {
                Ok(task) => task.info().num_items.to_string(),
                Err(e) => format!("no data ({e})"),
            },
        };
        let metrics: Vec<&str> = d.metrics.iter().map(|m| m.name.as_str()).collect();
        print_line(&format!(
            "{:<16} {:<8} {:>7}  {}",
            d.name,
            d.version,
            items,
            metrics.join(", ")
        ))?;
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
    /// Folder for results.json, samples.jsonl, results.csv and results.md. A killed run started
    /// again with the same command resumes from it; a run with other tasks adds to its reports.
    #[arg(long)]
    output: PathBuf,
    /// The first N (at least 1) test items of each (sub)task, in upstream file order (like lm-eval's --limit).
    #[arg(long, value_parser = values::at_least_one)]
    limit: Option<usize>,
    /// Few-shot examples instead of each benchmark's protocol default.
    #[arg(long)]
    num_fewshot: Option<usize>,
    /// Cap (at least 1) on generated tokens per request (printed with the results); default: the protocol's.
    #[arg(long, value_parser = values::at_least_one)]
    max_new_tokens: Option<usize>,
    /// A plugin option, `task.name=value` (repeatable; `harness list` and each plugin's docs name them).
    #[arg(long = "option")]
    options: Vec<String>,
    /// Recorded with the results. Decoding is greedy, so no number depends on it.
    #[arg(long, default_value_t = 1234)]
    seed: u64,
    /// Items answered per engine call (and saved per chunk); at least 1.
    #[arg(long, default_value_t = 64, value_parser = values::at_least_one)]
    chunk_size: usize,
    /// Programs run at once in the sandbox (code benchmarks); 0 = one per core. More than the
    /// available cores is capped at their number unless --force-jobs.
    #[arg(long, default_value_t = 0, value_parser = values::jobs)]
    jobs: usize,
    /// Use --jobs as given even when it exceeds the available cores.
    #[arg(long)]
    force_jobs: bool,
    /// Memory cap per program in the sandbox, MiB (1 to 4096).
    #[arg(long, default_value_t = 512, value_parser = values::memory_mb)]
    memory_mb: usize,
    /// Per-program time limit in seconds instead of the benchmark's (PROTOCOL: 3 s): a work
    /// budget of that many seconds on the reference machine (wasmtime fuel, the same on any
    /// machine), with 10x as much wall time as a safety net.
    #[arg(long, value_parser = values::seconds)]
    timeout: Option<f64>,
    /// Do not execute programs: code benchmarks then report pass@1 as unavailable.
    #[arg(long)]
    no_exec: bool,
}

/// The progress bar on a terminal.
struct Bar(ProgressBar);

impl Progress for Bar {
    fn start(&self, task: &str, total: usize, already_done: usize) {
        if already_done > 0 {
            self.0.println(format!(
                "{task}: resuming, {already_done}/{total} items already done"
            ));
        }
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

/// Progress as plain lines, for logs (stderr is not a terminal): a line when a task starts or
/// resumes, then one at most every `every`, and one at the end.
struct Lines {
    every: Duration,
    task: RefCell<String>,
    total: Cell<usize>,
    done: Cell<usize>,
    at_start: Cell<usize>,
    started: Cell<Instant>,
    printed: Cell<Instant>,
}

impl Lines {
    fn new(every: Duration) -> Self {
        Self {
            every,
            task: RefCell::new(String::new()),
            total: Cell::new(0),
            done: Cell::new(0),
            at_start: Cell::new(0),
            started: Cell::new(Instant::now()),
            printed: Cell::new(Instant::now()),
        }
    }
}

impl Progress for Lines {
    fn start(&self, task: &str, total: usize, already_done: usize) {
        *self.task.borrow_mut() = task.to_owned();
        self.total.set(total);
        self.done.set(already_done);
        self.at_start.set(already_done);
        self.started.set(Instant::now());
        self.printed.set(Instant::now());
        if already_done > 0 {
            eprintln!("{task}: resuming, {already_done}/{total} items already done");
        } else {
            eprintln!("{task}: {total} items");
        }
    }
    fn advance(&self, n: usize) {
        let done = self.done.get() + n;
        self.done.set(done);
        let total = self.total.get();
        if self.printed.get().elapsed() < self.every && done < total {
            return;
        }
        self.printed.set(Instant::now());
        let elapsed = self.started.get().elapsed().as_secs_f64();
        let now = done - self.at_start.get();
        let left = if now > 0 && done < total {
            format!(
                ", about {:.0} s left",
                elapsed / now as f64 * (total - done) as f64
            )
        } else {
            String::new()
        };
        eprintln!(
            "{}: {done}/{total} items ({:.0}%), {elapsed:.0} s{left}",
            self.task.borrow(),
            100.0 * done as f64 / total.max(1) as f64
        );
    }
    fn finish(&self) {}
}

/// `task.name=value` options grouped by task.
fn parse_options(options: &[String]) -> Result<BTreeMap<String, BTreeMap<String, String>>> {
    let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for o in options {
        let parsed = o
            .split_once('=')
            .and_then(|(key, value)| Some((key.split_once('.')?, value)));
        let Some(((task, name), value)) = parsed else {
            return Err(
                CliError::Usage(format!("--option {o:?}: expected task.name=value")).into(),
            );
        };
        out.entry(task.to_owned())
            .or_default()
            .insert(name.to_owned(), value.to_owned());
    }
    Ok(out)
}

/// The (task, subtask) pairs `--tasks` names, refusing unknown, repeated or overlapping ones.
fn task_specs(requested: &[String], plugins: &[Plugin]) -> Result<Vec<(String, Option<String>)>> {
    let by_name = |name: &str| plugins.iter().find(|p| p.describe().name == name);
    let mut specs: Vec<(String, Option<String>)> = Vec::new();
    let mut push = |spec: (String, Option<String>)| -> Result<(), CliError> {
        let label = |s: &(String, Option<String>)| s.1.clone().unwrap_or_else(|| s.0.clone());
        for earlier in &specs {
            let overlap = earlier.0 == spec.0
                && (earlier.1.is_none() || spec.1.is_none() || earlier.1 == spec.1);
            if overlap {
                let (a, b) = (label(earlier), label(&spec));
                return Err(CliError::Usage(if a == b {
                    format!("--tasks names `{a}` twice")
                } else {
                    format!("--tasks names both `{a}` and `{b}`, which overlap; name one of them")
                }));
            }
        }
        specs.push(spec);
        Ok(())
    };
    for t in requested {
        if t == "all" {
            for p in plugins {
                push((p.describe().name.clone(), None))?;
            }
            continue;
        }
        let (task, sub) = match t.split_once(':') {
            Some((task, _)) => (task, Some(t.clone())),
            None => (t.as_str(), None),
        };
        let Some(plugin) = by_name(task) else {
            let known: Vec<&str> = plugins.iter().map(|p| p.describe().name.as_str()).collect();
            return Err(CliError::Usage(format!(
                "unknown task `{task}` (plugins found: {})",
                known.join(", ")
            ))
            .into());
        };
        if let Some(sub) = &sub {
            if !plugin.describe().subtasks.contains(sub) {
                return Err(CliError::Usage(format!("`{task}` has no subtask `{sub}`; `harness list` names the tasks, the plugin's description its subtasks")).into());
            }
        }
        push((task.to_owned(), sub))?;
    }
    Ok(specs)
}

/// sha256 of each file a task read, relative to the data folder.
fn data_hashes(data_dir: &Path, files: &[String]) -> Result<BTreeMap<String, String>> {
    files
        .iter()
        .map(|f| Ok((f.clone(), checkpoint::sha256_file(&data_dir.join(f))?)))
        .collect()
}

/// A task ready to run: its plugin task, items, and what its results depend on.
struct Prepared<'p> {
    name: String,
    plugin: &'p Plugin,
    task: Task,
    items: Vec<Item>,
    plugin_identity: Value,
    data_files: BTreeMap<String, String>,
    timeout_s: Option<f64>,
}

/// Loads one task and records (or checks) its identity in the store.
fn prepare<'p>(
    plugin: &'p Plugin,
    name: &str,
    sub: Option<&String>,
    load: &LoadOptions,
    data_dir: &Path,
    timeout: Option<f64>,
    store: &RunStore,
) -> Result<Prepared<'p>> {
    let description = plugin.describe();
    if let Some(group) = data::group_of_task(&description.name) {
        data::require_group(data_dir, group)?;
    }
    let task = plugin.load(data_dir, load)?;
    let items: Vec<Item> = task
        .items()?
        .into_iter()
        .filter(|i| sub.is_none_or(|s| &i.subtask == s))
        .collect();
    let data_files = data_hashes(data_dir, &task.info().data_files)?;
    let plugin_identity = json!({
        "name": description.name,
        "version": description.version,
        "path": plugin.path().display().to_string(),
        "sha256": checkpoint::sha256_file(plugin.path())?,
    });
    let timeout_s = timeout.or(description.program_timeout_s);
    let identity = json!({
        "plugin": {"name": description.name, "version": description.version, "sha256": plugin_identity["sha256"]},
        "data_files": data_files,
        "protocol": task.info(),
        "program_time_limit_s": timeout_s,
    });
    store.begin_task(name, &identity)?;
    Ok(Prepared {
        name: name.to_owned(),
        plugin,
        task,
        items,
        plugin_identity,
        data_files,
        timeout_s,
    })
}

pub fn score(args: ScoreArgs) -> Result<()> {
    let data_dir = args.plugins.data_dir()?;
    let plugins = args.plugins.open()?;
    let specs = task_specs(&args.tasks, &plugins)?;
    let by_name = |name: &str| plugins.iter().find(|p| p.describe().name == name);
    let options = parse_options(&args.options)?;
    for task in options.keys() {
        if !specs.iter().any(|(t, _)| t == task) {
            return Err(CliError::Usage(format!(
                "--option for `{task}`, which is not among --tasks"
            ))
            .into());
        }
    }
    let execute = !args.no_exec;
    let needs_sandbox = execute
        && specs
            .iter()
            .any(|(t, _)| by_name(t).is_some_and(|p| p.describe().output_type == OutputType::Code));
    let (jobs, jobs_note) = values::effective_jobs(args.jobs, args.force_jobs);
    if let Some(note) = jobs_note.filter(|_| needs_sandbox) {
        eprintln!("note: {note}");
    }

    let model_path = std::fs::canonicalize(&args.model.model).unwrap_or(args.model.model.clone());
    eprintln!("loading {}", model_path.display());
    let model = args.model.load()?;
    let model_hash = checkpoint::fingerprint(&args.model.model)?;
    let dtype = format!("{:?}", args.model.dtype).to_lowercase();
    // What every task's results depend on. Paths are not part of it: the model and data are
    // identified by their hashes, wherever they are.
    let identity = json!({
        "model_sha256": model_hash,
        "dtype": dtype,
        "max_length": args.model.max_length,
        "limit": args.limit,
        "num_fewshot": args.num_fewshot,
        "max_new_tokens": args.max_new_tokens,
        "seed": args.seed,
        "execute_programs": execute,
        "program_memory_mb": args.memory_mb,
        "sandbox_fuel_per_second": dtm_sandbox::FUEL_PER_SECOND,
    });
    std::fs::create_dir_all(&args.output)
        .with_context(|| format!("{}: cannot create", args.output.display()))?;
    let store = RunStore::open(&args.output, &identity)?;

    // Every task is loaded and checked against the saved work before any is computed, so a
    // run refused for changed inputs changes nothing.
    let mut failed = 0;
    let mut prepared = Vec::new();
    for (task, sub) in &specs {
        let plugin = by_name(task).expect("checked in task_specs");
        let load = LoadOptions {
            num_fewshot: args.num_fewshot,
            limit: args.limit,
            max_new_tokens: args.max_new_tokens,
            flags: options.get(task).cloned().unwrap_or_default(),
        };
        let name = sub.clone().unwrap_or_else(|| task.clone());
        match prepare(
            plugin,
            &name,
            sub.as_ref(),
            &load,
            &data_dir,
            args.timeout,
            &store,
        ) {
            Ok(p) => prepared.push(p),
            Err(e)
                if e.downcast_ref::<EvalError>()
                    .is_some_and(|e| matches!(e, EvalError::Mismatch { .. })) =>
            {
                return Err(e)
            }
            Err(e) => {
                // One broken plugin or missing data file fails its task; the others go on.
                eprintln!("error: {name}: {}", super::message(&e));
                failed += 1;
            }
        }
    }

    let mut engine = Engine::new(&model, args.model.engine_options());
    let progress: Box<dyn Progress> = if std::io::stderr().is_terminal() {
        Box::new(Bar(ProgressBar::new(0).with_style(
            ProgressStyle::with_template(
                "{msg:>24} [{bar:30}] {pos}/{len} items, {elapsed} elapsed, ETA {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        )))
    } else {
        Box::new(Lines::new(Duration::from_secs(15)))
    };
    let runner = if needs_sandbox {
        let sandbox = dtm_sandbox::Sandbox::new(dtm_sandbox::SandboxConfig::default()).context(
            "code benchmarks need the sandbox (or pass --no-exec to report pass@1 as unavailable)",
        )?;
        Some(SandboxRunner {
            sandbox,
            limits: dtm_sandbox::Limits {
                memory_bytes: args.memory_mb << 20,
                ..dtm_sandbox::Limits::default()
            },
            jobs,
        })
    } else {
        None
    };

    for p in &prepared {
        let description = p.plugin.describe();
        let job = TaskJob {
            task: &p.task,
            name: &p.name,
            items: &p.items,
            code: description.output_type == OutputType::Code,
            timeout_s: p.timeout_s,
        };
        let runner = runner.as_ref().map(|r| r as &dyn ProgramRunner);
        let run = match run_task(
            &mut engine,
            &job,
            runner,
            &store,
            args.chunk_size,
            &*progress,
        ) {
            Ok(run) => run,
            Err(e) => {
                eprintln!("error: {}: {}", p.name, super::message(&e.into()));
                failed += 1;
                continue;
            }
        };
        let report = TaskReport::new(
            &p.name,
            description,
            p.plugin_identity.clone(),
            p.task.info().clone(),
            &run.samples,
            &run.cost,
            run.computed,
            p.data_files.clone(),
        );
        store.finish_task(&p.name, &serde_json::to_value(&report)?)?;
        let (value, _) = report.headline();
        eprintln!(
            "{}: {} = {} over {} items ({:.1} s; tokens requested {}, forwarded {}, generated {})",
            p.name,
            report.headline_metric,
            format_value(value),
            run.samples.len(),
            report.wall_seconds,
            report.tokens.requested,
            report.tokens.forwarded,
            report.tokens.generated
        );
    }

    // The reports hold every finished task of the folder, this run's and earlier runs'.
    let finished = store.finished_tasks()?;
    let mut in_report: Vec<String> = finished
        .iter()
        .filter_map(|t| t.report["task"].as_str().map(str::to_owned))
        .collect();
    in_report.sort();
    let header = json!({
        "harness_version": env!("CARGO_PKG_VERSION"),
        "model": {"path": model_path.display().to_string(), "sha256": model_hash, "architecture": model.config().architecture.name()},
        "options": {
            "tasks": in_report, "limit": args.limit, "num_fewshot": args.num_fewshot, "max_new_tokens": args.max_new_tokens,
            "batch_size": args.model.batch_size, "seed": args.seed, "dtype": dtype,
            "device": format!("{:?}", args.model.device).to_lowercase(), "data_dir": data_dir.display().to_string(),
            "execute_programs": execute, "program_memory_mb": args.memory_mb, "program_time_limit_s": args.timeout,
        },
    });
    report::write_all(&args.output, &header, &finished)?;
    eprintln!(
        "wrote {}/results.json, samples.jsonl, results.csv, results.md ({} tasks)",
        args.output.display(),
        finished.len()
    );
    if failed > 0 {
        return Err(CliError::TasksFailed {
            failed,
            total: specs.len(),
            dir: args.output.clone(),
        }
        .into());
    }
    Ok(())
}
