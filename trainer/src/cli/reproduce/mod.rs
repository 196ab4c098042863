//! `trainer reproduce RECIPE.toml --output DIR`: a whole table of the paper from one recipe —
//! data, Fisher, SFT runs, dispersal, sub-models, merges, scoring of every model on the same
//! items, the report — as a graph of stages that resumes where it stopped, recomputes only
//! what a changed recipe affects, prints its cost before it starts, and runs the same way on a
//! Slurm cluster.

mod build;
mod cost;
mod graph;
mod recipe;
mod run;
mod slurm;
mod store;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;

use graph::Graph;
use run::{Binaries, Runner};

#[derive(Args)]
#[command(after_long_help = recipe::RECIPE_HELP)]
pub struct ReproduceArgs {
    /// The recipe (TOML; `--help` lists every field, recipes/README.md explains them).
    recipe: PathBuf,
    /// The run's folder: stages/<stage>-<key>/ (each stage's output, log.txt, command.sh and,
    /// once finished, done.json), stages.md and stages.json (state, wall time and command of
    /// every stage), report -> the report's folder.
    #[arg(long)]
    output: PathBuf,
    /// Print the stages, what each costs (tokens to train and score, hours at the recipe's
    /// measured speeds) and which are finished; run nothing.
    #[arg(long)]
    dry_run: bool,
    /// Write Slurm batch scripts for the same stages into this folder (submit.sh submits them
    /// with their dependencies); run nothing.
    #[arg(long, value_name = "DIR")]
    emit_slurm: Option<PathBuf>,
    /// Run this stage only (its upstream stages must be finished): what a Slurm job runs.
    #[arg(long, value_name = "NAME")]
    stage: Option<String>,
    /// Copy what a results folder keeps (the recipe, the report, every training log and
    /// config, every model's results.json/results.md, stages.md/json with commands and wall
    /// times; no checkpoints) into this folder, after the run.
    #[arg(long, value_name = "DIR")]
    collect: Option<PathBuf>,
    /// The `harness` binary (default: the one beside this `trainer`, else on PATH).
    #[arg(long)]
    harness: Option<PathBuf>,
}

pub fn run(args: ReproduceArgs) -> anyhow::Result<()> {
    let loaded = recipe::load(&args.recipe)?;
    let graph = build::build(&loaded)?;
    let bins = Binaries::find(args.harness.clone())?;
    let out = build::resolve(&args.output);
    let mut hasher = store::Hasher::open(&out);
    let keys = store::keys(&graph, &mut hasher);

    if args.dry_run || args.emit_slurm.is_some() {
        // Costs need the tokenizer and `harness score --plan`; without the inputs (a
        // cluster recipe read elsewhere) the graph is still printed and emitted.
        let costs = match cost::Estimator::new(&loaded, &graph, &bins.harness) {
            Ok(e) => Some(e.costs(&graph)?),
            Err(e) => {
                eprintln!("no cost estimate: {e:#}");
                None
            }
        };
        if args.dry_run {
            print_plan(&loaded, &graph, &keys, costs.as_deref(), &out);
        }
        if let Some(dir) = &args.emit_slurm {
            let jobs = slurm::emit(
                &loaded,
                &graph,
                costs.as_deref(),
                &out,
                dir,
                &bins.trainer,
                &bins.harness,
            )?;
            eprintln!(
                "wrote {} Slurm jobs for {} stages into {} (submit with {}/submit.sh)",
                jobs.len(),
                graph.stages.len(),
                dir.display(),
                dir.display()
            );
        }
        return Ok(());
    }

    let keys = keys
        .into_iter()
        .enumerate()
        .map(|(i, k)| k.map_err(|e| anyhow::anyhow!("stage {}: {e}", graph.stages[i].name)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    std::fs::create_dir_all(&out).with_context(|| format!("{}: cannot create", out.display()))?;
    let runner = Runner {
        graph: &graph,
        keys,
        out: out.clone(),
        bins,
    };
    match &args.stage {
        Some(name) => {
            let i = graph.index(name).with_context(|| {
                format!("no stage {name:?} in this recipe (`--dry-run` lists them)")
            })?;
            runner.run_stage(i)?;
            runner.write_summary()?;
        }
        None => {
            eprintln!(
                "{}: {} stages into {}",
                loaded.recipe.name,
                graph.stages.len(),
                out.display()
            );
            runner.run_all()?;
        }
    }
    link_report(&runner)?;
    if let Some(dir) = &args.collect {
        collect(&runner, &loaded, dir)?;
    }
    Ok(())
}

/// `OUT/report` points at the report stage's folder once it finished.
fn link_report(runner: &Runner) -> anyhow::Result<()> {
    let Some(i) = runner.graph.index("report") else {
        return Ok(());
    };
    if runner.done(i).is_none() {
        return Ok(());
    }
    let link = runner.out.join("report");
    let target = runner.dir(i).join("report");
    let tmp = runner.out.join(".report-link");
    let _ = std::fs::remove_file(&tmp);
    #[cfg(unix)]
    std::os::unix::fs::symlink(&target, &tmp)?;
    std::fs::rename(&tmp, &link)?;
    eprintln!("report: {}/report.md", link.display());
    Ok(())
}

fn print_plan(
    loaded: &recipe::Loaded,
    graph: &Graph,
    keys: &[Result<String, String>],
    costs: Option<&[cost::Cost]>,
    out: &Path,
) {
    let speeds = loaded.recipe.speeds.as_ref();
    println!(
        "{} — {} stages ({})",
        loaded.recipe.name,
        graph.stages.len(),
        loaded.path.display()
    );
    if !loaded.recipe.description.is_empty() {
        println!("{}", loaded.recipe.description.trim());
    }
    let mut total = cost::Cost::default();
    let mut todo = cost::Cost::default();
    for (i, s) in graph.stages.iter().enumerate() {
        let state = match &keys[i] {
            Ok(k) if store::done(&store::stage_dir(out, &s.name, k)).is_some() => "finished",
            Ok(_) => "to do",
            Err(_) => "inputs missing",
        };
        let deps: Vec<&str> = s
            .deps
            .iter()
            .map(|&d| graph.stages[d].name.as_str())
            .collect();
        let mut line = format!("[{}] {}  ({state})", i + 1, s.name);
        if let Some(c) = costs.map(|c| c[i]) {
            total.add(&c);
            if state != "finished" {
                todo.add(&c);
            }
            let mut parts = Vec::new();
            if c.train_tokens > 0.0 {
                parts.push(format!("train {} tokens", cost::tokens(c.train_tokens)));
            }
            if c.forward_tokens > 0.0 {
                parts.push(format!(
                    "forward ≥{} tokens",
                    cost::tokens(c.forward_tokens)
                ));
            }
            if c.generate_tokens > 0.0 {
                parts.push(format!(
                    "generate ≤{} tokens",
                    cost::tokens(c.generate_tokens)
                ));
            }
            if let Some(sp) = speeds {
                if !parts.is_empty() {
                    parts.push(format!("≈ {:.2} h", c.hours(sp)));
                }
            }
            if !parts.is_empty() {
                line += &format!("  {}", parts.join(", "));
            }
        }
        println!("{line}");
        if !deps.is_empty() {
            println!("      after: {}", deps.join(", "));
        }
        println!("      {}", s.display(graph));
        if let Err(e) = &keys[i] {
            println!("      ! {e}");
        }
    }
    if costs.is_some() {
        println!(
            "total: train {} tokens, forward ≥{} tokens, generate ≤{} tokens",
            cost::tokens(total.train_tokens),
            cost::tokens(total.forward_tokens),
            cost::tokens(total.generate_tokens)
        );
        match speeds {
            Some(sp) => println!(
                "hours at the measured speeds ({}): {:.2} h in all, {:.2} h still to do \
                 (generation counted at its cap: an upper bound)",
                sp.measured,
                total.hours(sp),
                todo.hours(sp)
            ),
            None => println!(
                "no [speeds] in the recipe: measure them on the machine that runs it \
                 (`trainer bench`, `harness bench`) to get hours"
            ),
        }
    }
}

/// Copies a finished run's light results into `dir`.
fn collect(runner: &Runner, loaded: &recipe::Loaded, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("recipe.toml"), &loaded.text)?;
    for f in ["stages.md", "stages.json"] {
        std::fs::copy(runner.out.join(f), dir.join(f))?;
    }
    let mut copied = 0;
    for (i, s) in runner.graph.stages.iter().enumerate() {
        if runner.done(i).is_none() {
            continue;
        }
        let from = runner.dir(i);
        let to = dir.join("stages").join(&s.name);
        std::fs::create_dir_all(&to)?;
        for f in ["command.sh", "done.json", "log.txt"] {
            if from.join(f).is_file() {
                std::fs::copy(from.join(f), to.join(f))?;
            }
        }
        for rel in [
            "run/train_log.jsonl",
            "run/train_config.json",
            "scores/results.json",
            "scores/results.md",
            "scores/results.csv",
            "portions/assignments.json",
            "selection/selection.json",
        ] {
            if from.join(rel).is_file() {
                let target = to.join(rel);
                std::fs::create_dir_all(target.parent().expect("a file"))?;
                std::fs::copy(from.join(rel), target)?;
            }
        }
        if s.name == "report" {
            copy_dir(&from.join("report"), &dir.join("report"))?;
        }
        copied += 1;
    }
    eprintln!(
        "collected {copied} finished stages (no checkpoints) into {}",
        dir.display()
    );
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    if !from.is_dir() {
        bail!("{}: not a folder", from.display());
    }
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let path = entry?.path();
        let target = to.join(path.file_name().expect("an entry"));
        if path.is_dir() {
            copy_dir(&path, &target)?;
        } else {
            std::fs::copy(&path, &target)?;
        }
    }
    Ok(())
}
