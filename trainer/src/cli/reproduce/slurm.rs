//! `--emit-slurm DIR`: the stage graph as Slurm batch scripts. Every job runs
//! `trainer reproduce RECIPE --output OUT --stage NAME`, the very code path of a local run (the
//! same command lines, the same keyed folders, the same `done.json`), so a cluster run resumes
//! like a local one and the two cannot drift apart.
//!
//! Stages of one kind that wait for the same jobs become one array job (the K sub-models, the
//! Soup ingredients and the other SFT runs; scoring of models × shards); a job that reads another
//! job's output starts `--dependency=afterok` on it.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;

use super::cost::Cost;
use super::graph::Graph;
use super::recipe::{Loaded, SlurmSpec};

/// One `sbatch` submission: one stage, or an array of stages.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub name: String,
    pub group: String,
    pub stages: Vec<usize>,
    /// Jobs (indices) this one waits for.
    pub after: BTreeSet<usize>,
    pub gpu: bool,
}

/// The jobs of a graph, each after the jobs it depends on.
pub fn jobs(graph: &Graph) -> Vec<Job> {
    let mut jobs: Vec<Job> = Vec::new();
    let mut job_of = vec![0usize; graph.stages.len()];
    for (i, s) in graph.stages.iter().enumerate() {
        let after: BTreeSet<usize> = s.deps.iter().map(|&d| job_of[d]).collect();
        let same = jobs
            .iter()
            .position(|j| j.group == s.group && j.after == after && j.gpu == s.runs_model);
        job_of[i] = match same {
            Some(j) => {
                jobs[j].stages.push(i);
                j
            }
            None => {
                jobs.push(Job {
                    name: String::new(),
                    group: s.group.clone(),
                    stages: vec![i],
                    after,
                    gpu: s.runs_model,
                });
                jobs.len() - 1
            }
        };
    }
    for (n, j) in jobs.iter_mut().enumerate() {
        let what = if j.stages.len() == 1 {
            graph.stages[j.stages[0]].name.replace('/', "-")
        } else {
            j.group.clone()
        };
        j.name = format!("{:02}-{what}", n + 1);
    }
    jobs
}

/// Slurm's `D-HH:MM:SS`.
fn slurm_time(hours: f64) -> String {
    let minutes = (hours * 60.0).ceil().max(15.0) as u64;
    let (d, h, m) = (minutes / 1440, minutes / 60 % 24, minutes % 60);
    format!("{d}-{h:02}:{m:02}:00")
}

/// Writes DIR/env.sh, DIR/recipe.toml (the recipe as emitted), DIR/NN-*.sbatch, DIR/submit.sh
/// and DIR/jobs.txt.
pub fn emit(
    loaded: &Loaded,
    graph: &Graph,
    costs: Option<&[Cost]>,
    out: &Path,
    dir: &Path,
    trainer: &Path,
    harness: &Path,
) -> anyhow::Result<Vec<Job>> {
    let spec: &SlurmSpec = &loaded.recipe.slurm;
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let dir = dir.canonicalize()?;
    let cwd = std::env::current_dir()?;
    let abs = |p: &Path| {
        if p.is_absolute() {
            p.to_owned()
        } else {
            cwd.join(p)
        }
    };
    let recipe = dir.join("recipe.toml");
    std::fs::write(&recipe, &loaded.text)?;
    let q = super::graph::shell_quote;

    let mut env = String::from(
        "# Sourced by every job of this run. Edit for your cluster: the binaries (built with\n\
         # `--features cuda` for GPU jobs, see README.md), modules and library paths.\n",
    );
    writeln!(env, "TRAINER=\"${{TRAINER:-{}}}\"", abs(trainer).display())?;
    writeln!(env, "HARNESS=\"${{HARNESS:-{}}}\"", abs(harness).display())?;
    writeln!(env, "RECIPE={}", q(&recipe.display().to_string()))?;
    writeln!(env, "OUT={}", q(&abs(out).display().to_string()))?;
    for line in &spec.setup {
        writeln!(env, "{line}")?;
    }
    std::fs::write(dir.join("env.sh"), env)?;

    let jobs = jobs(graph);
    let mut submit = String::from(
        "#!/bin/bash\n# Submits every job of the run, each after the jobs whose output it reads.\n\
         # Finished stages are skipped by the jobs themselves: submitting again resumes.\nset -euo pipefail\n",
    );
    writeln!(submit, "cd {}", q(&dir.display().to_string()))?;
    let mut listing = String::new();
    for (n, job) in jobs.iter().enumerate() {
        let mut s = String::from("#!/bin/bash\n");
        writeln!(s, "#SBATCH --job-name={}:{}", loaded.recipe.name, job.name)?;
        writeln!(s, "#SBATCH --chdir={}", cwd.display())?;
        let log = dir.join("logs").join(if job.stages.len() > 1 {
            format!("{}-%A_%a.log", job.name)
        } else {
            format!("{}-%j.log", job.name)
        });
        writeln!(s, "#SBATCH --output={}", log.display())?;
        if job.stages.len() > 1 {
            writeln!(s, "#SBATCH --array=1-{}", job.stages.len())?;
        }
        let partition = if job.gpu {
            spec.partition.as_ref()
        } else {
            spec.cpu_partition.as_ref().or(spec.partition.as_ref())
        };
        if let Some(p) = partition {
            writeln!(s, "#SBATCH --partition={p}")?;
        }
        if let (true, Some(g)) = (job.gpu, &spec.gres) {
            writeln!(s, "#SBATCH --gres={g}")?;
        }
        if let Some(a) = &spec.account {
            writeln!(s, "#SBATCH --account={a}")?;
        }
        if let Some(c) = spec.cpus_per_task {
            writeln!(s, "#SBATCH --cpus-per-task={c}")?;
        }
        if let Some(m) = &spec.mem {
            writeln!(s, "#SBATCH --mem={m}")?;
        }
        let time = match (costs, &loaded.recipe.speeds) {
            (Some(costs), Some(speeds)) => {
                let hours = job
                    .stages
                    .iter()
                    .map(|&i| costs[i].hours(speeds))
                    .fold(0.0, f64::max);
                Some(slurm_time(hours * spec.time_factor.unwrap_or(2.0)))
            }
            _ => spec.time.clone(),
        };
        if let Some(t) = time {
            writeln!(s, "#SBATCH --time={t}")?;
        }
        for extra in &spec.sbatch {
            writeln!(s, "#SBATCH {extra}")?;
        }
        s.push_str("set -euo pipefail\n");
        writeln!(s, "source {}", q(&dir.join("env.sh").display().to_string()))?;
        s.push_str("STAGES=(\n");
        for &i in &job.stages {
            let st = &graph.stages[i];
            writeln!(s, "  {}  # {}", q(&st.name), st.display(graph))?;
        }
        s.push_str(")\n");
        s.push_str("STAGE=\"${STAGES[$(( ${SLURM_ARRAY_TASK_ID:-1} - 1 ))]}\"\n");
        s.push_str(
            "exec \"$TRAINER\" reproduce \"$RECIPE\" --output \"$OUT\" --harness \"$HARNESS\" --stage \"$STAGE\"\n",
        );
        let file = format!("{}.sbatch", job.name);
        std::fs::write(dir.join(&file), s)?;

        let after: Vec<String> = job
            .after
            .iter()
            .map(|j| format!("${{j{}}}", j + 1))
            .collect();
        if after.is_empty() {
            writeln!(submit, "j{}=$(sbatch --parsable {file})", n + 1)?;
        } else {
            writeln!(
                submit,
                "j{}=$(sbatch --parsable --dependency=afterok:{} {file})",
                n + 1,
                after.join(":")
            )?;
        }
        writeln!(submit, "echo \"{}: ${{j{}}}\"", job.name, n + 1)?;
        let names: Vec<&str> = job
            .stages
            .iter()
            .map(|&i| graph.stages[i].name.as_str())
            .collect();
        let waits: Vec<&str> = job.after.iter().map(|&j| jobs[j].name.as_str()).collect();
        writeln!(
            listing,
            "{}  [{}]  after: {}\n    {}",
            job.name,
            if job.gpu { "model" } else { "files" },
            if waits.is_empty() {
                "-".to_owned()
            } else {
                waits.join(", ")
            },
            names.join("\n    ")
        )?;
    }
    std::fs::create_dir_all(dir.join("logs"))?;
    let submit_path = dir.join("submit.sh");
    std::fs::write(&submit_path, submit)?;
    std::fs::write(dir.join("jobs.txt"), listing)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&submit_path, std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(jobs)
}

#[cfg(test)]
mod tests {
    use super::super::graph::{Arg, Program, Stage, Work};
    use super::*;

    #[test]
    fn siblings_waiting_for_the_same_jobs_share_an_array() {
        let mut g = Graph::default();
        let st = |name: &str, group: &str, args: Vec<Arg>, model: bool| {
            let s = Stage::new(name.into(), group, Program::Trainer, args);
            if model {
                s.with_model(Work::Select)
            } else {
                s
            }
        };
        let data = g
            .add(st("data", "data", vec![Arg::own("d")], false))
            .unwrap();
        let split = g
            .add(st(
                "split",
                "disperse",
                vec![Arg::out(data, "d"), Arg::own("p")],
                false,
            ))
            .unwrap();
        let v = g
            .add(st(
                "train/v",
                "train",
                vec![Arg::out(data, "d"), Arg::lit("v")],
                true,
            ))
            .unwrap();
        let l2 = g
            .add(st(
                "train/l2",
                "train",
                vec![Arg::out(data, "d"), Arg::lit("l2")],
                true,
            ))
            .unwrap();
        let s1 = g
            .add(st("train/s1", "train", vec![Arg::out(split, "1")], true))
            .unwrap();
        let s2 = g
            .add(st("train/s2", "train", vec![Arg::out(split, "2")], true))
            .unwrap();
        let j = jobs(&g);
        let names: Vec<&str> = j.iter().map(|j| j.name.as_str()).collect();
        // A one-stage job is named after its stage, an array after its group.
        assert_eq!(names, ["01-data", "02-split", "03-train", "04-train"]);
        assert_eq!(j[2].stages, vec![v, l2]);
        assert_eq!(j[3].stages, vec![s1, s2]);
        assert_eq!(j[3].after, BTreeSet::from([1]));
        assert_eq!(slurm_time(0.01), "0-00:15:00");
        assert_eq!(slurm_time(25.5), "1-01:30:00");
    }
}
