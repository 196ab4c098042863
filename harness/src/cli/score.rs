//! `harness score` and `harness list`: benchmarks (compiled plugins and lm-eval task YAML files)
//! run against a model.

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
use dtm_harness::data::{self, DataError};
use dtm_harness::engine::Engine;
use dtm_harness::evaluate::error::EvalError;
use dtm_harness::evaluate::report::{self, format_value, TaskReport};
use dtm_harness::evaluate::shard::Shard;
use dtm_harness::evaluate::source::{LoadedTask, TaskSource};
use dtm_harness::evaluate::store::RunStore;
use dtm_harness::evaluate::subset::Subset;
use dtm_harness::evaluate::{plugins, run_task, ProgramRunner, Progress, SandboxRunner, TaskJob};
use dtm_plugin_api::{validate, Item, LoadOptions, OutputType};
use dtm_yaml_tasks::DEFAULT_FEWSHOT_SEED;

use super::output::{print_line, CliError};
use super::{values, ModelArgs};

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
    /// Benchmark data: `DIR` for every task, or `NAME=DIR` for task NAME only (repeatable).
    /// Default for every task: $DTM_DATA_DIR, else $XDG_DATA_HOME/dtm/data, else
    /// ~/.local/share/dtm/data, else the source checkout's ../shared/data (the first that
    /// exists); `harness data fetch` downloads the data. YAML tasks read the files they name.
    #[arg(long = "data-dir", value_name = "[NAME=]DIR")]
    pub(super) data_dirs: Vec<String>,
}

/// The data folders, absolute: one for every task, and per-task ones.
pub(super) struct DataDirs {
    /// The folder of every task not in `per_task`, or why there is none (an error only for a
    /// task that reads it).
    pub(super) default: std::result::Result<PathBuf, DataError>,
    pub(super) per_task: BTreeMap<String, PathBuf>,
}

impl DataDirs {
    pub(super) fn of(&self, task: &str) -> std::result::Result<&Path, DataError> {
        match self.per_task.get(task) {
            Some(dir) => Ok(dir),
            None => self.default.as_deref().map_err(Clone::clone),
        }
    }

    /// The default folder for reports (`none` when there is none).
    fn default_name(&self) -> String {
        self.default
            .as_ref()
            .map_or("none".into(), |d| d.display().to_string())
    }
}

impl PluginArgs {
    pub(super) fn open(&self) -> Result<Vec<Box<dyn TaskSource>>> {
        let exe_dir = plugins::exe_dir();
        let candidates = plugins::candidates(exe_dir.as_deref(), &self.plugin_dirs, &self.plugins)?;
        let mut warn = |w: String| eprintln!("warning: {w}");
        let found = plugins::open_all(&candidates, &mut warn)?;
        let yaml = dtm_yaml_tasks::discover(&self.include_paths)?;
        let sources = plugins::sources(
            found,
            exe_dir.as_deref(),
            yaml,
            self.allow_shadowing,
            &mut warn,
        )?;
        if sources.is_empty() {
            return Err(CliError::BadInput(format!(
                "no benchmark plugins found next to the harness binary ({}) or in --plugin-dir, and no task files in --include-path; build the plugins with `cargo build --workspace --release`",
                exe_dir.map_or("unknown".into(), |d| d.display().to_string())
            ))
            .into());
        }
        Ok(sources)
    }

    /// `--data-dir` values: at most one `DIR`, any number of `NAME=DIR` (whose folders must
    /// exist); all made absolute, so that a folder spelt two ways is one folder.
    pub(super) fn data_dirs(&self) -> Result<DataDirs> {
        let mut default = None;
        let mut per_task = BTreeMap::new();
        for v in &self.data_dirs {
            match v.split_once('=') {
                Some((name, dir))
                    if !name.is_empty() && !name.contains(['/', '\\']) && !dir.is_empty() =>
                {
                    let dir = std::fs::canonicalize(dir)
                        .ok()
                        .filter(|d| d.is_dir())
                        .ok_or_else(|| {
                            CliError::BadInput(format!("--data-dir {v}: {dir} is not a folder"))
                        })?;
                    if per_task.insert(name.to_owned(), dir).is_some() {
                        return Err(CliError::Usage(format!(
                            "--data-dir: two folders for `{name}`"
                        ))
                        .into());
                    }
                }
                _ => {
                    if default.replace(PathBuf::from(v)).is_some() {
                        return Err(CliError::Usage("--data-dir: more than one folder for every task; name the task of the others with NAME=DIR".into()).into());
                    }
                }
            }
        }
        Ok(DataDirs {
            default: data::locate(default.as_deref()),
            per_task,
        })
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
    print_line(&format!(
        "{:<16} {:<8} {:<16} {:>7}  metrics; options (first value = default)",
        "task", "version", "kind", "items"
    ))?;
    for source in args.plugins.open()? {
        let d = source.describe();
        let items = if source.uses_data_dir() {
            match dirs.of(&d.name) {
                Err(_) => "no data".to_string(),
                Ok(data_dir) => match data::group_of_task(&d.name)
                    .filter(|g| data::require_group(data_dir, g).is_err())
                {
                    Some(group) => format!("no data (`harness data fetch --only {group}`)"),
                    None => count_items(source.as_ref(), data_dir),
                },
            }
        } else {
            count_items(source.as_ref(), Path::new(""))
        };
        let metrics: Vec<&str> = d.metrics.iter().map(|m| m.name.as_str()).collect();
        let options: Vec<String> = d
            .options
            .iter()
            .map(|o| format!("{}={}", o.name, o.values.join("|")))
            .collect();
        print_line(&format!(
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
        ))?;
    }
    Ok(())
}

/// The item count of a benchmark with its default options, or why it cannot load.
fn count_items(source: &dyn TaskSource, data_dir: &Path) -> String {
    match source.load(data_dir, &LoadOptions::default(), DEFAULT_FEWSHOT_SEED) {
        Ok(task) => task.info().num_items.to_string(),
        Err(e) => format!("no data ({e})"),
    }
}

#[derive(Args)]
pub struct ScoreArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    plugins: PluginArgs,
    /// Comma-separated benchmarks (`gsm8k,mmlu`), subtasks (`mmlu:anatomy`, `bbh:date_understanding`),
    /// YAML `tag:` names, or `all`.
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
    /// Seeds the default few-shot sampler of YAML tasks (lm-eval's `random.Random(seed)`, 1234 by
    /// default as in lm-eval); recorded with the results. Decoding is greedy.
    #[arg(long, default_value_t = DEFAULT_FEWSHOT_SEED)]
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
    /// budget of that many seconds of native CPython's work on the reference machine (wasmtime
    /// fuel, the same on any machine), with 30x as much wall time as a safety net.
    #[arg(long, value_parser = values::seconds)]
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

/// One (task, subtask) pair of `--tasks`, with the entry that named it.
struct Spec {
    task: String,
    sub: Option<String>,
    /// The `--tasks` entry (`mmlu:anatomy`, a tag, `all`).
    named: String,
    /// Named through `all` or a YAML tag rather than by itself.
    grouped: bool,
}

/// The (task, subtask) pairs `--tasks` names, refusing unknown, repeated or overlapping ones. A
/// whole task reached again through `all` or a tag is taken once.
pub(super) fn task_specs(
    requested: &[String],
    sources: &[Box<dyn TaskSource>],
) -> Result<Vec<(String, Option<String>)>> {
    let by_name = |name: &str| sources.iter().find(|p| p.describe().name == name);
    let mut specs: Vec<Spec> = Vec::new();
    let mut push = |spec: Spec| -> Result<(), CliError> {
        for earlier in &specs {
            let overlap = earlier.task == spec.task
                && (earlier.sub.is_none() || spec.sub.is_none() || earlier.sub == spec.sub);
            if !overlap {
                continue;
            }
            if (earlier.grouped || spec.grouped) && earlier.sub.is_none() && spec.sub.is_none() {
                return Ok(());
            }
            return Err(CliError::Usage(if earlier.named == spec.named {
                format!("--tasks names `{}` twice", spec.named)
            } else {
                format!(
                    "--tasks names both `{}` and `{}`, which overlap; name one of them",
                    earlier.named, spec.named
                )
            }));
        }
        specs.push(spec);
        Ok(())
    };
    for t in requested {
        if t == "all" {
            for p in sources {
                push(Spec {
                    task: p.describe().name.clone(),
                    sub: None,
                    named: t.clone(),
                    grouped: true,
                })?;
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
                return Err(CliError::Usage(format!(
                    "unknown task `{task}` (benchmarks found: {})",
                    known.join(", ")
                ))
                .into());
            }
            for s in tagged {
                push(Spec {
                    task: s.describe().name.clone(),
                    sub: None,
                    named: t.clone(),
                    grouped: true,
                })?;
            }
            continue;
        };
        if let Some(sub) = &sub {
            if !source.describe().subtasks.contains(sub) {
                return Err(CliError::Usage(format!("`{task}` has no subtask `{sub}`; `harness list` names the tasks, the plugin's description its subtasks")).into());
            }
        }
        push(Spec {
            task: task.to_owned(),
            sub,
            named: t.clone(),
            grouped: false,
        })?;
    }
    Ok(specs.into_iter().map(|s| (s.task, s.sub)).collect())
}

/// sha256 of each file a task read, by the name the task reports.
fn data_hashes(files: &[(String, PathBuf)]) -> Result<BTreeMap<String, String>> {
    files
        .iter()
        .map(|(name, path)| Ok((name.clone(), checkpoint::sha256_file(path)?)))
        .collect()
}

/// The benchmark's definition as results.json records it and as a resumed run must find it
/// again: name, version and sha256 of the plugin library or task file (and of every file a YAML
/// task includes, by its path relative to the task file's folder).
fn source_identity(source: &dyn TaskSource) -> Result<Value> {
    let d = source.describe();
    let mut identity = json!({
        "name": d.name,
        "version": d.version,
        "path": source.path().display().to_string(),
        "sha256": checkpoint::sha256_file(source.path())?,
        "kind": source.kind().name(),
    });
    let includes = source.definition_files();
    if !includes.is_empty() {
        let base = source.path().parent().unwrap_or(Path::new(""));
        let mut hashes = BTreeMap::new();
        for f in includes {
            let name = f.strip_prefix(base).unwrap_or(&f).display().to_string();
            hashes.insert(name, checkpoint::sha256_file(&f)?);
        }
        identity["includes"] = json!(hashes);
    }
    Ok(identity)
}

/// A task ready to run: its source, loaded task, items, and what its results depend on.
pub(super) struct Prepared<'a> {
    pub(super) name: String,
    pub(super) source: &'a dyn TaskSource,
    pub(super) task: Box<dyn LoadedTask>,
    pub(super) items: Vec<Item>,
    /// What results.json records of the benchmark (see [`source_identity`]).
    pub(super) plugin_identity: Value,
    pub(super) data_files: BTreeMap<String, String>,
    timeout_s: Option<f64>,
}

impl Prepared<'_> {
    /// What the task's items depend on beyond the run's settings: the benchmark's definition,
    /// its data and its protocol settings (options included). Paths are not part of it: the
    /// files are identified by their hashes, wherever they are.
    pub(super) fn identity(&self) -> Value {
        let p = &self.plugin_identity;
        let mut plugin = json!({"name": p["name"], "version": p["version"], "sha256": p["sha256"]});
        if let Some(includes) = p.get("includes") {
            plugin["includes"] = includes.clone();
        }
        json!({
            "plugin": plugin,
            "data_files": self.data_files,
            "protocol": self.task.info(),
            "program_time_limit_s": self.timeout_s,
        })
    }
}

/// Reads one task's data and builds its items, checked against its description.
pub(super) fn prepare<'a>(
    source: &'a dyn TaskSource,
    name: &str,
    sub: Option<&String>,
    load: &LoadOptions,
    data_dir: &Path,
    seed: u64,
    timeout: Option<f64>,
) -> Result<Prepared<'a>> {
    let description = source.describe();
    if source.uses_data_dir() {
        if let Some(group) = data::group_of_task(&description.name) {
            data::require_group(data_dir, group)?;
        }
    }
    let task = source.load(data_dir, load, seed)?;
    let items = task.items()?;
    validate::items(description, &items).map_err(EvalError::Contract)?;
    let items: Vec<Item> = items
        .into_iter()
        .filter(|i| sub.is_none_or(|s| &i.subtask == s))
        .collect();
    let data_files = data_hashes(&task.data_files())?;
    Ok(Prepared {
        name: name.to_owned(),
        source,
        plugin_identity: source_identity(source)?,
        task,
        items,
        data_files,
        timeout_s: timeout.or(description.program_timeout_s),
    })
}

pub fn score(args: ScoreArgs) -> Result<()> {
    let sources = args.plugins.open()?;
    let by_name = |name: &str| {
        sources
            .iter()
            .find(|p| p.describe().name == name)
            .map(|b| b.as_ref())
    };
    // --model/--adapter/--ensemble are checked before anything loads.
    args.model.members()?;
    let specs = task_specs(&args.tasks, &sources)?;
    let options = parse_options(&args.options)?;
    for task in options.keys() {
        if !specs.iter().any(|(t, _)| t == task) {
            return Err(CliError::Usage(format!(
                "--option for `{task}`, which is not among --tasks"
            ))
            .into());
        }
    }
    let dirs = args.plugins.data_dirs()?;
    for task in dirs.per_task.keys() {
        if !specs.iter().any(|(t, _)| t == task) {
            return Err(CliError::Usage(format!(
                "--data-dir for `{task}`, which is not among --tasks"
            ))
            .into());
        }
    }
    let load_options = |task: &str| LoadOptions {
        num_fewshot: args.num_fewshot,
        limit: args.limit,
        max_new_tokens: args.max_new_tokens,
        flags: options.get(task).cloned().unwrap_or_default(),
    };
    // A benchmark whose description contradicts itself fails its task (recorded, the others go
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
        if source.uses_data_dir() {
            dirs.of(task)?;
        }
    }

    let subset = Subset::from_args(args.items.as_deref(), args.shard, args.chunk_size, &specs)?;
    // Every task's data is read and its items built before the model loads; a task that fails
    // here (a broken plugin, a missing or short data file) is reported and the others go on.
    let mut prepared: Vec<Prepared> = Vec::new();
    for (task, sub) in &specs {
        let source = by_name(task).expect("resolved");
        let name = sub.clone().unwrap_or_else(|| task.clone());
        if errors.contains_key(&name) {
            continue;
        }
        let data_dir = if source.uses_data_dir() {
            dirs.of(task)?.to_owned()
        } else {
            PathBuf::new()
        };
        match prepare(
            source,
            &name,
            sub.as_ref(),
            &load_options(task),
            &data_dir,
            args.seed,
            args.timeout,
        ) {
            Ok(mut p) => {
                p.items = subset.of(&p.name, std::mem::take(&mut p.items))?;
                prepared.push(p);
            }
            Err(e) => {
                let e = super::message(&e);
                eprintln!("error: {name}: {e}");
                errors.insert(name, e);
            }
        }
    }
    if prepared.is_empty() {
        return Err(CliError::BadInput(
            "every task failed before scoring (see the errors above)".into(),
        )
        .into());
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
        print_line(&serde_json::to_string_pretty(&plan)?)?;
        return Ok(());
    }
    let execute = !args.no_exec;
    let needs_sandbox = execute
        && prepared
            .iter()
            .any(|p| p.source.describe().output_type == OutputType::Code);
    let (jobs, jobs_note) = values::effective_jobs(args.jobs, args.force_jobs);
    if let Some(note) = jobs_note.filter(|_| needs_sandbox) {
        eprintln!("note: {note}");
    }

    eprintln!("loading {}", args.model.describe());
    let models = args.model.load()?;
    let model_identity = models.identity()?;
    let dtype = format!("{:?}", args.model.dtype).to_lowercase();
    // What every task's results depend on besides the task itself. Paths are not part of it:
    // models, adapters and data are identified by their hashes, wherever they are.
    let mut identity = json!({
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
    model_identity.add_to_fingerprint(&mut identity);
    subset.record(&mut identity);
    std::fs::create_dir_all(&args.output)
        .with_context(|| format!("{}: cannot create", args.output.display()))?;
    let store = RunStore::open(&args.output, &identity)?;
    // Every task is checked against the saved work before any is computed, so a run refused for
    // changed inputs changes nothing.
    for p in &prepared {
        store.begin_task(&p.name, &p.identity())?;
    }

    let mut engine = Engine::new(models.ensemble()?, args.model.engine_options());
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
        let description = p.source.describe();
        let job = TaskJob {
            task: p.task.as_ref(),
            description,
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
                let e = super::message(&e.into());
                eprintln!("error: {}: {e}", p.name);
                errors.insert(p.name.clone(), e);
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
            &|scores| p.task.aggregate(scores),
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
    let mut header = json!({
        "harness_version": env!("CARGO_PKG_VERSION"),
        "model": model_identity.header(),
        "options": {
            "tasks": in_report, "limit": args.limit, "num_fewshot": args.num_fewshot, "max_new_tokens": args.max_new_tokens,
            "batch_size": args.model.batch_size, "seed": args.seed, "dtype": dtype,
            "device": format!("{:?}", args.model.device).to_lowercase(), "data_dir": dirs.default_name(),
            "task_data_dirs": dirs.per_task,
            "execute_programs": execute, "program_memory_mb": args.memory_mb, "program_time_limit_s": args.timeout,
        },
    });
    subset.record(&mut header["options"]);
    report::write_all(&args.output, &header, &finished, &errors)?;
    eprintln!(
        "wrote {}/results.json, samples.jsonl, results.csv, results.md ({} tasks)",
        args.output.display(),
        finished.len()
    );
    if !errors.is_empty() {
        return Err(CliError::TasksFailed {
            failed: errors.len(),
            total: specs.len(),
            dir: args.output.clone(),
        }
        .into());
    }
    Ok(())
}
