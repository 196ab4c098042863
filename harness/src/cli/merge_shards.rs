//! `harness merge-shards`: the N outputs of `harness score --shard I/N` joined into the run one
//! unsharded `harness score` writes.
//!
//! Samples are joined and put in the unsharded order; every aggregate (means, standard errors,
//! subtasks, groups, corpus-level metrics of YAML tasks) is computed again from all items by the
//! task's own code, so the joined results.json, results.csv, results.md and samples.jsonl are the
//! unsharded run's. Only measurements differ: wall time, tokens and items computed are the sums
//! over the shards.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::Value;

use dtm_harness::engine::Stats;
use dtm_harness::evaluate::report::{self, TaskReport};
use dtm_harness::evaluate::shard::Shard;
use dtm_harness::evaluate::store::Sample;
use dtm_harness::evaluate::subset::{Subset, CHUNK_KEY, ITEMS_KEY, SHARD_KEY};
use dtm_harness::evaluate::TaskRun;
use dtm_plugin_api::LoadOptions;

use super::score::{data_hashes, resolve_tasks, DataDirs, PluginArgs};

#[derive(Args)]
#[command(
    after_help = "Every shard folder must come from the same `harness score` command (same model, \
    tasks and options) with --shard 1/N … N/N, each finished; the items they hold must be every \
    item of every task exactly once. Benchmarks are found as `harness score` finds them (pass the \
    same --plugin, --plugin-dir and --include-path); their data is read from the folders the shards \
    recorded unless --data-dir is given, and must hash as it did when the shards were scored."
)]
pub struct MergeShardsArgs {
    /// The `harness score --shard I/N` output folders, all N of them, in any order.
    #[arg(required = true, value_name = "SHARD_DIR")]
    shards: Vec<PathBuf>,
    /// The folder to write the joined run into (results.json, samples.jsonl, results.csv,
    /// results.md).
    #[arg(long)]
    output: PathBuf,
    #[command(flatten)]
    plugins: PluginArgs,
}

/// One shard's output folder, read back.
struct ShardRun {
    dir: PathBuf,
    shard: Shard,
    /// results.json without tasks, errors and wall time: what the command was.
    header: Value,
    tasks: serde_json::Map<String, Value>,
    wall_seconds: f64,
    samples: Vec<Sample>,
}

fn read_shard(dir: &Path) -> Result<ShardRun> {
    let file = dir.join("results.json");
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("{}: cannot read (is the shard finished?)", file.display()))?;
    let mut results: Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", file.display()))?;
    let errors = results["errors"].as_object().cloned().unwrap_or_default();
    if let Some((task, why)) = errors.iter().next() {
        bail!(
            "{}: task {task} failed in this shard ({}); score the shard again before merging",
            dir.display(),
            why.as_str().unwrap_or("see results.json")
        );
    }
    let shard: Shard = results["options"][SHARD_KEY]
        .as_str()
        .with_context(|| {
            format!(
                "{}: not a shard (no options.{SHARD_KEY}; made without --shard)",
                file.display()
            )
        })?
        .parse()
        .map_err(|e: String| anyhow::anyhow!("{}: options.{SHARD_KEY} {e}", file.display()))?;
    let obj = results
        .as_object_mut()
        .context("results.json is not an object")?;
    let tasks = obj
        .remove("tasks")
        .and_then(|t| t.as_object().cloned())
        .with_context(|| format!("{}: no tasks", file.display()))?;
    obj.remove("errors");
    let wall_seconds = obj
        .remove("wall_seconds")
        .and_then(|w| w.as_f64())
        .unwrap_or(0.0);
    let samples_file = dir.join("samples.jsonl");
    let samples = std::fs::read_to_string(&samples_file)
        .with_context(|| format!("{}: cannot read", samples_file.display()))?
        .lines()
        .enumerate()
        .map(|(n, line)| {
            serde_json::from_str(line)
                .with_context(|| format!("{}:{}: not a sample", samples_file.display(), n + 1))
        })
        .collect::<Result<Vec<Sample>>>()?;
    Ok(ShardRun {
        dir: dir.to_owned(),
        shard,
        header: results,
        tasks,
        wall_seconds,
        samples,
    })
}

/// The header with the shard's own marks taken out: equal for every shard of one command, and
/// equal to the header of the unsharded run.
fn unsharded_header(header: &Value) -> Value {
    let mut h = header.clone();
    if let Some(options) = h["options"].as_object_mut() {
        options.remove(SHARD_KEY);
        options.remove(CHUNK_KEY);
    }
    h
}

/// Checks that the shards are 1/N … N/N of one command; returns the unsharded header.
fn check_shards(runs: &[ShardRun]) -> Result<Value> {
    let count = runs[0].shard.count;
    let mut seen: BTreeMap<usize, &Path> = BTreeMap::new();
    for r in runs {
        if r.shard.count != count {
            bail!(
                "{} is shard {} but {} is shard {}: not the same split",
                r.dir.display(),
                r.shard,
                runs[0].dir.display(),
                runs[0].shard
            );
        }
        if let Some(other) = seen.insert(r.shard.index, &r.dir) {
            bail!(
                "{} and {} are both shard {}",
                other.display(),
                r.dir.display(),
                r.shard
            );
        }
    }
    let missing: Vec<String> = (1..=count)
        .filter(|i| !seen.contains_key(i))
        .map(|i| format!("{i}/{count}"))
        .collect();
    if !missing.is_empty() {
        bail!("shards {} are missing", missing.join(", "));
    }
    let header = unsharded_header(&runs[0].header);
    for r in &runs[1..] {
        let other = unsharded_header(&r.header);
        if other != header {
            bail!(
                "{} and {} were scored with different settings ({}); they are not shards of one run",
                runs[0].dir.display(),
                r.dir.display(),
                differing(&header, &other).join(", ")
            );
        }
    }
    Ok(header)
}

/// Dotted paths of the leaves where two JSON values differ.
fn differing(a: &Value, b: &Value) -> Vec<String> {
    fn walk(a: &Value, b: &Value, path: String, out: &mut Vec<String>) {
        match (a, b) {
            (Value::Object(x), Value::Object(y)) => {
                let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
                for k in keys {
                    let sub = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    walk(
                        x.get(k).unwrap_or(&Value::Null),
                        y.get(k).unwrap_or(&Value::Null),
                        sub,
                        out,
                    );
                }
            }
            _ if a != b => out.push(path),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(a, b, String::new(), &mut out);
    out
}

/// The data folders the shards read, from their header.
fn recorded_data_dirs(options: &Value) -> DataDirs {
    DataDirs {
        default: PathBuf::from(options["data_dir"].as_str().unwrap_or("../shared/data")),
        per_task: options["task_data_dirs"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), PathBuf::from(v.as_str()?))))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

pub fn run(args: MergeShardsArgs) -> Result<()> {
    let mut runs = args
        .shards
        .iter()
        .map(|d| read_shard(d))
        .collect::<Result<Vec<_>>>()?;
    runs.sort_by_key(|r| r.shard.index);
    let header = check_shards(&runs)?;
    let options = &header["options"];

    let sources = args.plugins.open()?;
    let tasks: Vec<String> = serde_json::from_value(options["tasks"].clone())
        .context("the shards' results.json names no options.tasks")?;
    let specs = resolve_tasks(&tasks, &sources)?;
    let dirs = if args.plugins.data_dirs.is_empty() {
        recorded_data_dirs(options)
    } else {
        args.plugins.data_dirs()?
    };
    let flags: BTreeMap<String, BTreeMap<String, String>> =
        serde_json::from_value(options["options"].clone()).unwrap_or_default();
    let seed = options["seed"]
        .as_u64()
        .context("the shards' results.json has no options.seed")?;
    let number = |key: &str| options[key].as_u64().map(|n| n as usize);
    // Every item the shards were dealt from: the listed ones, or all.
    let whole = Subset {
        lists: serde_json::from_value(options[ITEMS_KEY].clone()).ok(),
        ..Subset::default()
    };

    let mut by_task: BTreeMap<String, Vec<Sample>> = BTreeMap::new();
    for r in &mut runs {
        for s in r.samples.drain(..) {
            by_task.entry(s.task.clone()).or_default().push(s);
        }
    }

    let mut reports = Vec::new();
    let mut all_samples = Vec::new();
    for (task, sub) in &specs {
        let name = sub.clone().unwrap_or_else(|| task.clone());
        let source = sources
            .iter()
            .find(|s| &s.describe().name == task)
            .expect("resolved")
            .as_ref();
        let load = LoadOptions {
            num_fewshot: number("num_fewshot"),
            limit: number("limit"),
            max_new_tokens: number("max_new_tokens"),
            flags: flags.get(task).cloned().unwrap_or_default(),
        };
        let loaded = source
            .load(dirs.of(task), &load, seed)
            .with_context(|| format!("{name}: loading the task again"))?;
        let expected: Vec<usize> = whole
            .of(&name, sub.as_deref(), loaded.items()?)?
            .into_iter()
            .map(|i| i.doc_id)
            .collect();

        let mut samples: BTreeMap<usize, Sample> = BTreeMap::new();
        for s in by_task.remove(&name).unwrap_or_default() {
            let id = s.doc_id;
            if samples.insert(id, s).is_some() {
                bail!("{name}: item {id} is in more than one shard");
            }
        }
        let got: BTreeSet<usize> = samples.keys().copied().collect();
        let want: BTreeSet<usize> = expected.iter().copied().collect();
        if got != want {
            let missing: Vec<String> = want.difference(&got).map(|i| i.to_string()).collect();
            let extra: Vec<String> = got.difference(&want).map(|i| i.to_string()).collect();
            bail!(
                "{name}: the shards do not hold exactly the task's items (missing: [{}]; not the task's: [{}])",
                missing.join(", "),
                extra.join(", ")
            );
        }

        let hashes = data_hashes(&loaded.data_files())?;
        let (mut wall_seconds, mut stats, mut computed) = (0.0, Stats::default(), 0);
        for r in &runs {
            let Some(t) = r.tasks.get(&name) else {
                bail!("{}: holds no results for {name}", r.dir.display());
            };
            let recorded: BTreeMap<String, String> =
                serde_json::from_value(t["data_files"].clone()).unwrap_or_default();
            if recorded != hashes {
                bail!(
                    "{name}: the data files hash differently now than when {} was scored; merge with the data the shards read (--data-dir)",
                    r.dir.display()
                );
            }
            wall_seconds += t["wall_seconds"].as_f64().unwrap_or(0.0);
            computed += t["items_computed"].as_u64().unwrap_or(0) as usize;
            if let Ok(s) = serde_json::from_value::<Stats>(t["tokens"].clone()) {
                stats.add(&s);
            }
        }
        let run = TaskRun {
            samples: samples.into_values().collect(),
            wall_seconds,
            stats,
            computed,
        };
        reports.push(TaskReport::new(
            &name,
            source,
            loaded.info().clone(),
            &run,
            &|scores| loaded.aggregate(scores),
            hashes,
        ));
        all_samples.push(run.samples);
    }
    if let Some(task) = by_task.keys().next() {
        bail!("the shards hold samples of {task}, which their tasks do not name");
    }

    std::fs::create_dir_all(&args.output)
        .with_context(|| format!("{}: cannot create", args.output.display()))?;
    let samples: Vec<&[Sample]> = all_samples.iter().map(Vec::as_slice).collect();
    let wall: f64 = runs.iter().map(|r| r.wall_seconds).sum();
    report::write_all(
        &args.output,
        header,
        &reports,
        &BTreeMap::new(),
        &samples,
        wall,
    )?;
    eprintln!(
        "joined {} shards into {}/results.json, samples.jsonl, results.csv, results.md",
        runs.len(),
        args.output.display()
    );
    Ok(())
}
