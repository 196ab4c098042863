//! `harness merge-shards`: the N outputs of `harness score --shard I/N` joined into the run one
//! unsharded `harness score` writes.
//!
//! The joined folder is a run folder like any other: its `.progress/run.json` is the shards' run
//! identity without the shard, each task's `task.json` is the identity every shard recorded, and
//! the shards' saved chunks are copied as they are (a shard deals whole chunks, so they are the
//! unsharded run's chunks). Every aggregate (means, standard errors, subtasks, groups,
//! corpus-level metrics of YAML tasks) is computed again from all items by the task's own code,
//! so results.json, results.csv, results.md and samples.jsonl are the unsharded run's, and the
//! unsharded `harness score` command finds every item done there. Only measurements differ: wall
//! time, tokens and items computed are the sums over the shards.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use serde_json::Value;

use dtm_harness::data;
use dtm_harness::evaluate::report::{self, TaskReport};
use dtm_harness::evaluate::shard::Shard;
use dtm_harness::evaluate::store::{differences, ChunkCost, RunStore, Sample};
use dtm_harness::evaluate::subset::{Subset, CHUNK_KEY, ITEMS_KEY, SHARD_KEY};
use dtm_plugin_api::LoadOptions;

use super::output::CliError;
use super::score::{prepare, task_specs, DataDirs, PluginArgs};

#[derive(Args)]
#[command(
    after_help = "Every shard folder must come from the same `harness score` command (same model, \
    adapter, tasks and options, with the same benchmark definitions and data, as recorded in each \
    folder's .progress) with --shard 1/N … N/N, each finished; the items they hold must be every \
    item of every task exactly once. Benchmarks are found as `harness score` finds them (pass the \
    same --plugin, --plugin-dir and --include-path); their data is read from the folders the shards \
    recorded unless --data-dir is given, and must hash as it did when the shards were scored. \
    Merging again into the same --output rewrites the joined tasks from the shards."
)]
pub struct MergeShardsArgs {
    /// The `harness score --shard I/N` output folders, all N of them, in any order.
    #[arg(required = true, value_name = "SHARD_DIR")]
    shards: Vec<PathBuf>,
    /// The folder to write the joined run into (results.json, samples.jsonl, results.csv,
    /// results.md, and the run's .progress).
    #[arg(long)]
    output: PathBuf,
    #[command(flatten)]
    plugins: PluginArgs,
}

fn refuse(message: String) -> anyhow::Error {
    CliError::BadInput(message).into()
}

/// One shard's output folder, opened (and locked) for reading.
struct ShardRun {
    dir: PathBuf,
    store: RunStore,
    shard: Shard,
    /// `.progress/run.json` without the shard: what every shard of one command shares.
    identity: Value,
    /// results.json without tasks, errors, wall time and the shard's marks.
    header: Value,
    /// The finished tasks' saved reports, by task name.
    reports: BTreeMap<String, Value>,
}

fn read_shard(dir: &Path) -> Result<ShardRun> {
    let (store, mut identity) = RunStore::open_existing(dir)?;
    let shard: Shard = identity[SHARD_KEY]
        .as_str()
        .ok_or_else(|| {
            refuse(format!(
                "{}: not a shard (its run has no `{SHARD_KEY}`: scored without --shard)",
                dir.display()
            ))
        })?
        .parse()
        .map_err(|e: String| refuse(format!("{}: {SHARD_KEY} {e}", dir.display())))?;
    identity
        .as_object_mut()
        .expect("run.json is an object")
        .remove(SHARD_KEY);

    let file = dir.join("results.json");
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("{}: cannot read (is the shard finished?)", file.display()))?;
    let mut header: Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", file.display()))?;
    if let Some((task, why)) = header["errors"].as_object().and_then(|e| e.iter().next()) {
        return Err(refuse(format!(
            "{}: task {task} failed in this shard ({}); score the shard again before merging",
            dir.display(),
            why.as_str().unwrap_or("see results.json")
        )));
    }
    let h = header
        .as_object_mut()
        .with_context(|| format!("{}: not a JSON object", file.display()))?;
    for key in ["tasks", "errors", "wall_seconds"] {
        h.remove(key);
    }
    if let Some(options) = header["options"].as_object_mut() {
        for key in ["tasks", SHARD_KEY, CHUNK_KEY] {
            options.remove(key);
        }
    }

    let reports = store
        .finished_tasks()?
        .into_iter()
        .map(|t| {
            let name = t.report["task"].as_str().unwrap_or_default().to_owned();
            (name, t.report)
        })
        .collect();
    Ok(ShardRun {
        dir: dir.to_owned(),
        store,
        shard,
        identity,
        header,
        reports,
    })
}

/// Checks that the shards are 1/N … N/N of one command: the same split, the same run identity
/// and the same finished tasks. Other differences in results.json (paths, device, batch size:
/// not part of what the results depend on) are reported; the first shard's are kept.
fn check_shards(runs: &[ShardRun]) -> Result<()> {
    let first = &runs[0];
    let count = first.shard.count;
    let mut seen: BTreeMap<usize, &Path> = BTreeMap::new();
    for r in runs {
        if r.shard.count != count {
            return Err(refuse(format!(
                "{} is shard {} but {} is shard {}: not the same split",
                r.dir.display(),
                r.shard,
                first.dir.display(),
                first.shard
            )));
        }
        if let Some(other) = seen.insert(r.shard.index, &r.dir) {
            return Err(refuse(format!(
                "{} and {} are both shard {}",
                other.display(),
                r.dir.display(),
                r.shard
            )));
        }
    }
    let missing: Vec<String> = (1..=count)
        .filter(|i| !seen.contains_key(i))
        .map(|i| format!("{i}/{count}"))
        .collect();
    if !missing.is_empty() {
        return Err(refuse(format!("shards {} are missing", missing.join(", "))));
    }
    for r in &runs[1..] {
        let changes = differences(&first.identity, &r.identity, "");
        if !changes.is_empty() {
            return Err(refuse(format!(
                "{} was scored with different settings than {} ({}, in .progress/run.json): not a shard of the same run",
                r.dir.display(),
                first.dir.display(),
                changes.join(", ")
            )));
        }
        let (a, b): (BTreeSet<&String>, BTreeSet<&String>) =
            (first.reports.keys().collect(), r.reports.keys().collect());
        if let Some(task) = a.symmetric_difference(&b).next() {
            let lacking = if a.contains(task) { r } else { first };
            return Err(refuse(format!(
                "{}: task {task} is not finished there (it is in another shard); score the shard again before merging",
                lacking.dir.display()
            )));
        }
        let noted = differences(&first.header, &r.header, "");
        if !noted.is_empty() {
            eprintln!(
                "note: {} differs from {} in results.json ({}); the joined run records {}'s",
                r.dir.display(),
                first.dir.display(),
                noted.join(", "),
                first.dir.display()
            );
        }
    }
    Ok(())
}

/// The data folders the shards read, from their results.json.
fn recorded_data_dirs(options: &Value) -> DataDirs {
    let default = match options["data_dir"].as_str() {
        Some(d) if d != "none" => Ok(PathBuf::from(d)),
        _ => data::locate(None),
    };
    DataDirs {
        default,
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

/// One task joined: its items in the shards' chunks, checked against what the task has now.
struct Joined {
    name: String,
    identity: Value,
    chunks: Vec<(ChunkCost, Vec<Sample>)>,
    report: TaskReport,
}

pub fn run(args: MergeShardsArgs) -> Result<()> {
    let output = std::path::absolute(&args.output)
        .with_context(|| format!("{}: not a usable path", args.output.display()))?;
    let mut runs = Vec::new();
    let mut named = BTreeSet::new();
    for dir in &args.shards {
        let path = std::path::absolute(dir)
            .with_context(|| format!("{}: not a usable path", dir.display()))?;
        if path == output {
            return Err(CliError::Usage(format!(
                "--output {} is one of the shards",
                dir.display()
            ))
            .into());
        }
        if !named.insert(path) {
            return Err(CliError::Usage(format!("{} is named twice", dir.display())).into());
        }
        runs.push(read_shard(dir)?);
    }
    runs.sort_by_key(|r| r.shard.index);
    check_shards(&runs)?;
    let (identity, header) = (&runs[0].identity, &runs[0].header);
    let options = &header["options"];

    let sources = args.plugins.open()?;
    let names: Vec<String> = runs[0].reports.keys().cloned().collect();
    let specs = task_specs(&names, &sources)?;
    let dirs = if args.plugins.data_dirs.is_empty() {
        recorded_data_dirs(options)
    } else {
        args.plugins.data_dirs()?
    };
    let number = |key: &str| identity[key].as_u64().map(|n| n as usize);
    let seed = identity["seed"]
        .as_u64()
        .context("the shards' .progress/run.json has no seed")?;
    // Every item the shards were dealt from: the listed ones, or all.
    let whole = Subset {
        lists: serde_json::from_value(identity[ITEMS_KEY].clone()).ok(),
        ..Subset::default()
    };

    let mut joined = Vec::new();
    for (task, sub) in &specs {
        let name = sub.clone().unwrap_or_else(|| task.clone());
        let source = sources
            .iter()
            .find(|s| &s.describe().name == task)
            .expect("resolved")
            .as_ref();
        let recorded = |r: &ShardRun| -> Result<Value> {
            r.store.task_identity(&name)?.ok_or_else(|| {
                refuse(format!(
                    "{}: no .progress task.json for {name}",
                    r.dir.display()
                ))
            })
        };
        let first = recorded(&runs[0])?;
        let load = LoadOptions {
            num_fewshot: number("num_fewshot"),
            limit: number("limit"),
            max_new_tokens: number("max_new_tokens"),
            flags: serde_json::from_value(first["protocol"]["flags"].clone()).unwrap_or_default(),
        };
        let data_dir = if source.uses_data_dir() {
            dirs.of(task)?.to_owned()
        } else {
            PathBuf::new()
        };
        let timeout = options["program_time_limit_s"].as_f64();
        let p = prepare(source, &name, sub.as_ref(), &load, &data_dir, seed, timeout)
            .with_context(|| format!("{name}: loading the task again"))?;
        let now = p.identity();
        for r in &runs {
            let changes = differences(&recorded(r)?, &now, "");
            if !changes.is_empty() {
                return Err(refuse(format!(
                    "{}: {name} was scored from other inputs than the task has now ({}, in its .progress task.json); merge with the benchmarks and data the shards read (--include-path, --plugin, --data-dir)",
                    r.dir.display(),
                    changes.join(", ")
                )));
            }
        }

        let mut chunks = Vec::new();
        let mut owner: BTreeMap<usize, &Path> = BTreeMap::new();
        let mut computed = 0;
        for r in &runs {
            for (cost, samples) in r.store.chunks(&name)? {
                for s in &samples {
                    if let Some(other) = owner.insert(s.doc_id, &r.dir) {
                        return Err(refuse(format!(
                            "{name}: item {} is in both {} and {}",
                            s.doc_id,
                            other.display(),
                            r.dir.display()
                        )));
                    }
                }
                chunks.push((cost, samples));
            }
            computed += r.reports[&name]["items_computed"].as_u64().unwrap_or(0) as usize;
        }
        let want: BTreeSet<usize> = whole.of(&name, p.items)?.iter().map(|i| i.doc_id).collect();
        let got: BTreeSet<usize> = owner.keys().copied().collect();
        if got != want {
            let list = |s: BTreeSet<&usize>| {
                s.into_iter()
                    .map(|i| i.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return Err(refuse(format!(
                "{name}: the shards do not hold exactly the task's items (missing: [{}]; not the task's: [{}])",
                list(want.difference(&got).collect()),
                list(got.difference(&want).collect())
            )));
        }

        let mut samples: Vec<Sample> = chunks.iter().flat_map(|(_, s)| s.clone()).collect();
        samples.sort_by_key(|s| s.doc_id);
        let mut cost = ChunkCost::default();
        for (c, _) in &chunks {
            cost.tokens.add(&c.tokens);
            cost.wall_seconds += c.wall_seconds;
        }
        let report = TaskReport::new(
            &name,
            source.describe(),
            // As the shards recorded it (the library's path included).
            runs[0].reports[&name]["plugin"].clone(),
            p.task.info().clone(),
            &samples,
            &cost,
            computed,
            &|scores| p.task.aggregate(scores),
            p.data_files.clone(),
        );
        joined.push(Joined {
            name,
            identity: now,
            chunks,
            report,
        });
    }

    // Written only once everything is checked: a refused merge leaves no output.
    std::fs::create_dir_all(&output)
        .with_context(|| format!("{}: cannot create", output.display()))?;
    let mut unsharded = identity.clone();
    unsharded
        .as_object_mut()
        .expect("run.json is an object")
        .remove(CHUNK_KEY);
    let store = RunStore::open(&output, &unsharded)?;
    for j in &joined {
        store.begin_task(&j.name, &j.identity)?;
        store.forget_items(&j.name)?;
        for (cost, samples) in &j.chunks {
            store.save(&j.name, samples, cost)?;
        }
        store.finish_task(&j.name, &serde_json::to_value(&j.report)?)?;
    }
    let finished = store.finished_tasks()?;
    let mut header = header.clone();
    let mut in_report: Vec<&str> = finished
        .iter()
        .filter_map(|t| t.report["task"].as_str())
        .collect();
    in_report.sort();
    header["options"]["tasks"] = serde_json::json!(in_report);
    report::write_all(&output, &header, &finished, &BTreeMap::new())?;
    eprintln!(
        "joined {} shards into {}/results.json, samples.jsonl, results.csv, results.md ({} tasks)",
        runs.len(),
        output.display(),
        joined.len()
    );
    Ok(())
}
