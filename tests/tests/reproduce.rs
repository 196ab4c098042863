//! `trainer reproduce`: recipes/table1-tiny.toml end to end (every Table 1 row, scored in
//! shards, the report), a run killed mid-way resuming without redoing finished stages, a removed
//! stage recomputed alone, a changed recipe recomputing exactly the stages it affects; recipe
//! errors naming their line; the Slurm scripts holding the same graph.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// The repository root: recipes name their files relative to it.
fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn reproduce(recipe: &Path, out: &Path, extra: &[&str]) -> Output {
    Command::new(trainer_bin())
        .current_dir(repo())
        .arg("reproduce")
        .arg(recipe)
        .arg("--output")
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "trainer reproduce failed:\n{}",
        stderr(o)
    );
    stderr(o)
}

fn failed(o: &Output) -> String {
    assert!(!o.status.success(), "expected a failure:\n{}", stderr(o));
    let err = stderr(o);
    assert!(!err.contains("panicked"), "no panic: {err}");
    err
}

/// The stages a run started (its `[i/n] NAME: started` lines).
fn started(log: &str) -> BTreeSet<String> {
    log.lines()
        .filter_map(|l| l.strip_suffix(": started"))
        .filter_map(|l| l.split_once("] ").map(|(_, name)| name.to_owned()))
        .collect()
}

/// Every stage of a recipe with the stages it reads, from `--dry-run`.
fn graph(recipe: &Path, out: &Path) -> Vec<(String, Vec<String>)> {
    let o = reproduce(recipe, out, &["--dry-run"]);
    ok(&o);
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let mut stages: Vec<(String, Vec<String>)> = Vec::new();
    for line in text.lines() {
        if line.starts_with('[') {
            let name = line
                .split_once("] ")
                .unwrap()
                .1
                .split("  (")
                .next()
                .unwrap();
            stages.push((name.to_owned(), Vec::new()));
        } else if let Some(after) = line.trim().strip_prefix("after: ") {
            stages.last_mut().unwrap().1 = after.split(", ").map(str::to_owned).collect();
        }
    }
    stages
}

/// Folders of finished stages under `out` (each holds done.json).
fn finished(out: &Path) -> usize {
    fn walk(dir: &Path, n: &mut usize) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                if p.join("done.json").is_file() {
                    *n += 1;
                }
                walk(&p, n);
            }
        }
    }
    let mut n = 0;
    walk(&out.join("stages"), &mut n);
    n
}

fn report_rows(out: &Path) -> Vec<serde_json::Value> {
    read_json(&out.join("report/report.json"))["rows"]
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn table1_tiny_end_to_end_resumes_and_recomputes_only_what_changed() {
    let recipe = repo().join("recipes/table1-tiny.toml");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let stages = graph(&recipe, &out);
    let all: BTreeSet<String> = stages.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(all.len(), stages.len(), "stage names are unique");

    // Killed (the whole process group, as Ctrl-C or a Slurm time-out does) once a dozen stages
    // are finished.
    let mut child = Command::new(trainer_bin())
        .current_dir(repo())
        .args(["reproduce"])
        .arg(&recipe)
        .arg("--output")
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(600);
    while finished(&out) < 12 {
        assert!(Instant::now() < deadline, "no progress");
        assert!(child.try_wait().unwrap().is_none(), "ended before the kill");
        std::thread::sleep(Duration::from_millis(20));
    }
    let killed = Command::new("kill")
        .args(["-9", "--", &format!("-{}", child.id())])
        .status()
        .unwrap();
    assert!(killed.success());
    child.wait().unwrap();
    let done_before = finished(&out);
    assert!(done_before < stages.len(), "killed before the end");

    // Started again: the finished stages are not run again, the rest is.
    let log = ok(&reproduce(&recipe, &out, &[]));
    let rerun = started(&log);
    assert_eq!(
        rerun.len() + done_before,
        stages.len(),
        "only the unfinished stages ran:\n{log}"
    );
    assert_eq!(finished(&out), stages.len());
    assert!(log.contains("finished earlier"));

    // The report holds every method, compared with Vanilla.
    let rows = report_rows(&out);
    let methods: BTreeSet<&str> = rows.iter().map(|r| r["method"].as_str().unwrap()).collect();
    for m in [
        "base",
        "vanilla",
        "l2",
        "ewc",
        "replay",
        "moe",
        "deita",
        "soup",
        "dtm",
        "dtm-ties",
        "dtm-fisher",
        "dtm-kmeans",
        "ensemble",
        "dtm-sub-1",
        "dtm-sub-4",
    ] {
        assert!(methods.contains(m), "{m} in the report: {methods:?}");
    }
    assert_eq!(
        read_json(&out.join("report/report.json"))["baseline"],
        "vanilla"
    );
    assert!(out.join("report/plots/loss.svg").is_file());
    assert!(out
        .join("report/plots/errors-upset-arc_challenge.svg")
        .is_file());
    let summary = std::fs::read_to_string(out.join("stages.md")).unwrap();
    assert!(
        summary.contains("| train/dtm/sub-4 | finished |"),
        "{summary}"
    );
    assert!(summary.contains("`trainer sft --model "), "{summary}");

    // Nothing to do when nothing changed.
    let log = ok(&reproduce(&recipe, &out, &[]));
    assert!(started(&log).is_empty(), "{log}");

    // A removed stage is recomputed alone: its key is unchanged, so what reads it stays.
    let merge_dir = std::fs::read_dir(out.join("stages/merge"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            // `dtm-<key>`, not `dtm-ties-<key>`, `dtm-fisher-<key>`, ...
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.strip_prefix("dtm-")
                .is_some_and(|key| key.chars().all(|c| c.is_ascii_hexdigit()))
        })
        .unwrap();
    std::fs::remove_dir_all(&merge_dir).unwrap();
    let log = ok(&reproduce(&recipe, &out, &[]));
    assert_eq!(
        started(&log),
        BTreeSet::from(["merge/dtm".to_owned()]),
        "{log}"
    );
    let before = report_rows(&out);

    // A changed recipe recomputes exactly the stages it affects. L2's λ: its training, its
    // scoring and the report.
    let text = std::fs::read_to_string(&recipe).unwrap();
    let changed = dir.path().join("changed.toml");
    std::fs::write(
        &changed,
        text.replace(
            "reg = \"l2\", reg-lambda = 0.1",
            "reg = \"l2\", reg-lambda = 0.2",
        ),
    )
    .unwrap();
    let log = ok(&reproduce(&changed, &out, &[]));
    let expected: BTreeSet<String> = [
        "train/l2",
        "score/l2/shard-1",
        "score/l2/shard-2",
        "score/l2",
        "report",
    ]
    .map(str::to_owned)
    .into();
    assert_eq!(started(&log), expected, "{log}");
    let after = report_rows(&out);
    let value = |rows: &[serde_json::Value], m: &str| -> Vec<serde_json::Value> {
        rows.iter()
            .filter(|r| r["method"] == m)
            .map(|r| r["value"].clone())
            .collect()
    };
    assert_eq!(
        value(&before, "dtm"),
        value(&after, "dtm"),
        "untouched rows stay"
    );

    // The evaluation's item count: every scoring stage, no training.
    std::fs::write(&changed, text.replace("limit = 4", "limit = 3")).unwrap();
    let log = ok(&reproduce(&changed, &out, &[]));
    let rerun = started(&log);
    let scoring: BTreeSet<String> = all
        .iter()
        .filter(|s| s.starts_with("score/") || *s == "report")
        .cloned()
        .collect();
    assert_eq!(rerun, scoring, "{log}");
    let n = report_rows(&out)
        .iter()
        .find(|r| r["method"] == "vanilla" && r["task"] == "arc_challenge")
        .unwrap()["n"]
        .clone();
    assert_eq!(n, 3);

    // Going back to the first recipe finds every stage finished (old folders are kept).
    let log = ok(&reproduce(&recipe, &out, &[]));
    assert!(started(&log).is_empty(), "{log}");

    // What a results folder keeps: the report, train logs, commands and wall times, no weights.
    let results = dir.path().join("results");
    ok(&reproduce(
        &recipe,
        &out,
        &["--collect", results.to_str().unwrap()],
    ));
    for f in [
        "recipe.toml",
        "stages.md",
        "stages.json",
        "report/report.md",
        "stages/train/vanilla/run/train_log.jsonl",
        "stages/train/vanilla/command.sh",
        "stages/score/dtm/scores/results.json",
    ] {
        assert!(results.join(f).is_file(), "{f} collected");
    }
    let mut files = Vec::new();
    collect_files(&results, &mut files);
    assert!(
        !files
            .iter()
            .any(|f| f.extension().is_some_and(|e| e == "safetensors")),
        "no weights collected"
    );
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            collect_files(&p, out);
        } else {
            out.push(p);
        }
    }
}

#[test]
fn a_stage_waits_for_the_stages_it_reads() {
    let recipe = repo().join("recipes/table1-tiny.toml");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let err = failed(&reproduce(&recipe, &out, &["--stage", "merge/dtm"]));
    assert!(err.contains("needs train/dtm/sub-1"), "{err}");
    let err = failed(&reproduce(&recipe, &out, &["--stage", "no/such"]));
    assert!(err.contains("no stage \"no/such\""), "{err}");
    ok(&reproduce(&recipe, &out, &["--stage", "data/mix"]));
    let log = ok(&reproduce(&recipe, &out, &["--stage", "data/mix"]));
    assert!(log.contains("finished earlier"), "{log}");
}

/// A recipe with `edit` applied to the tiny one, read from a temporary file.
fn recipe_error(edit: impl Fn(&str) -> String) -> String {
    let text = std::fs::read_to_string(repo().join("recipes/table1-tiny.toml")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, edit(&text)).unwrap();
    let err = failed(&reproduce(&file, &dir.path().join("run"), &["--dry-run"]));
    assert!(err.contains("bad.toml"), "names the file: {err}");
    err
}

/// The 1-based line of the first line of `text` containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).unwrap() + 1
}

#[test]
fn recipe_errors_name_the_file_and_line() {
    let text = std::fs::read_to_string(repo().join("recipes/table1-tiny.toml")).unwrap();

    // An unknown flag in [train]: the line of the key.
    let err = recipe_error(|t| t.replace("lora-r = 4", "lora-rank = 4"));
    let line = line_of(&text, "lora-r = 4");
    assert!(err.contains(&format!("bad.toml:{line}:")), "{err}");
    assert!(err.contains("unknown field `lora-rank`"), "{err}");

    // A wrong type.
    let err = recipe_error(|t| t.replace("\nlr = 1e-2\n", "\nlr = \"fast\"\n"));
    let line = text.lines().position(|l| l == "lr = 1e-2").unwrap() + 1;
    assert!(
        err.contains(&format!("bad.toml:{line}:6: invalid type")),
        "{err}"
    );

    // A field of another kind of method: the line where the method starts.
    let err = recipe_error(|t| {
        t.replace(
            "name = \"vanilla\"\nkind = \"sft\"",
            "name = \"vanilla\"\nkind = \"sft\"\nk = 4",
        )
    });
    let start = line_of(&text, "name = \"vanilla\"") - 1;
    assert!(err.contains(&format!("bad.toml:{start}:")), "{err}");
    assert!(err.contains("takes no `k`"), "{err}");

    // References and settings that cannot work.
    let err = recipe_error(|t| t.replace("baseline = \"vanilla\"", "baseline = \"vanila\""));
    assert!(err.contains("baseline \"vanila\" is not a method"), "{err}");
    let err = recipe_error(|t| t.replace("of = \"dtm\"", "of = \"soup\""));
    assert!(err.contains("must name a dtm method"), "{err}");
    let err = recipe_error(|t| t.replace("reg = \"l2\", reg-lambda = 0.1", "reg = \"l2\""));
    assert!(
        err.contains("\"l2\"") && err.contains("--reg-lambda"),
        "{err}"
    );
    let err = recipe_error(|t| t.replace("name = \"l2\"", "name = \"vanilla\""));
    assert!(err.contains("a second method named \"vanilla\""), "{err}");
    let err = recipe_error(|t| {
        t.replace(
            "mix = \"alpaca_gpt4=24,codealpaca=8\"",
            "mix = \"alpaca_gpt4\"",
        )
    });
    assert!(err.contains("[data] mix"), "{err}");
}

/// One parsed `sbatch` script.
struct Script {
    stages: Vec<String>,
    array: Option<usize>,
    text: String,
}

/// One `sbatch` call of submit.sh: its job variable, script and the variables it waits for.
type Submission = (String, String, Vec<String>);

fn read_slurm(dir: &Path) -> (BTreeMap<String, Script>, Vec<Submission>) {
    let mut scripts = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "sbatch") {
            let text = std::fs::read_to_string(&p).unwrap();
            let body = text
                .split("STAGES=(\n")
                .nth(1)
                .unwrap()
                .split("\n)")
                .next()
                .unwrap();
            let stages = body
                .lines()
                .map(|l| {
                    l.trim()
                        .split("  # ")
                        .next()
                        .unwrap()
                        .trim_matches('\'')
                        .to_owned()
                })
                .collect();
            let array = text
                .lines()
                .find_map(|l| l.strip_prefix("#SBATCH --array=1-"))
                .map(|n| n.parse().unwrap());
            scripts.insert(
                p.file_name().unwrap().to_string_lossy().into_owned(),
                Script {
                    stages,
                    array,
                    text,
                },
            );
        }
    }
    // submit.sh: `jN=$(sbatch --parsable [--dependency=afterok:${jA}:${jB}] FILE)`, in order.
    let submit = std::fs::read_to_string(dir.join("submit.sh")).unwrap();
    let mut order = Vec::new();
    for line in submit.lines().filter(|l| l.contains("sbatch --parsable")) {
        let var = line.split('=').next().unwrap().to_owned();
        let file = line
            .trim_end_matches(')')
            .rsplit(' ')
            .next()
            .unwrap()
            .to_owned();
        let after = line
            .split("--dependency=afterok:")
            .nth(1)
            .map(|d| {
                d.split(' ')
                    .next()
                    .unwrap()
                    .split(':')
                    .map(|j| j.trim_start_matches("${").trim_end_matches('}').to_owned())
                    .collect()
            })
            .unwrap_or_default();
        order.push((var, file, after));
    }
    (scripts, order)
}

/// Checks that the scripts run every stage once, each after the jobs holding what it reads.
fn check_scripts(recipe: &Path, out: &Path, slurm: &Path) -> BTreeMap<String, Script> {
    let stages = graph(recipe, out);
    ok(&reproduce(
        recipe,
        out,
        &["--emit-slurm", slurm.to_str().unwrap()],
    ));
    let (scripts, order) = read_slurm(slurm);
    assert_eq!(scripts.len(), order.len(), "submit.sh submits every script");
    let mut job_of: BTreeMap<&str, (usize, &str)> = BTreeMap::new();
    for (n, (var, file, _)) in order.iter().enumerate() {
        let s = &scripts[file];
        assert_eq!(
            s.array,
            (s.stages.len() > 1).then_some(s.stages.len()),
            "{file}: array size"
        );
        assert!(
            s.text.contains("exec \"$TRAINER\" reproduce \"$RECIPE\" --output \"$OUT\" --harness \"$HARNESS\" --stage \"$STAGE\""),
            "{file} runs the local code path"
        );
        assert!(s.text.contains("${SLURM_ARRAY_TASK_ID:-1}"));
        for st in &s.stages {
            assert!(
                job_of.insert(st, (n, var)).is_none(),
                "{st} in one job only"
            );
        }
    }
    for (name, deps) in &stages {
        let (n, _) = job_of[name.as_str()];
        let after = &order[n].2;
        for d in deps {
            let (m, var) = job_of[d.as_str()];
            assert!(m < n, "{d} is submitted before {name}");
            assert!(
                after.contains(&var.to_string()),
                "{name} waits for {d}'s job"
            );
        }
    }
    assert_eq!(job_of.len(), stages.len(), "every stage has a job");
    scripts
}

#[test]
fn slurm_scripts_hold_the_same_graph() {
    let dir = tempfile::tempdir().unwrap();

    let tiny = check_scripts(
        &repo().join("recipes/table1-tiny.toml"),
        &dir.path().join("tiny"),
        &dir.path().join("slurm-tiny"),
    );
    // The four DTM sub-models are one array job; the Soup ingredients share the array of the
    // SFT runs that read the same data.
    let array_of = |stage: &str| {
        tiny.values()
            .find(|s| s.stages.iter().any(|x| x == stage))
            .unwrap()
    };
    assert_eq!(array_of("train/dtm/sub-1").stages.len(), 4);
    let sft = &array_of("train/vanilla").stages;
    for s in ["train/l2", "train/soup/run-1", "train/soup/run-3"] {
        assert!(sft.iter().any(|x| x == s), "{s} with vanilla: {sft:?}");
    }
    // Scoring: models × shards in one array when they wait for the same job (the sub-models'
    // and their ensemble's all wait for the sub-models' array).
    let scoring = &array_of("score/dtm-sub-1/shard-1").stages;
    for j in 1..=4 {
        for s in 1..=2 {
            let st = format!("score/dtm-sub-{j}/shard-{s}");
            assert!(scoring.contains(&st), "{st} in {scoring:?}");
        }
    }
    // No [slurm] in the tiny recipe: no partition, no GPU.
    assert!(tiny.values().all(|s| !s.text.contains("--gres")));

    let full = check_scripts(
        &repo().join("recipes/table1-full.toml"),
        &dir.path().join("full"),
        &dir.path().join("slurm-full"),
    );
    let job = |stage: &str| {
        &full
            .values()
            .find(|s| s.stages.iter().any(|x| x == stage))
            .unwrap()
            .text
    };
    // Jobs that run a model get the GPU; jobs that move files go to the CPU partition.
    for stage in [
        "train/vanilla",
        "score/base/shard-1",
        "fisher/ewc",
        "select/deita",
    ] {
        assert!(job(stage).contains("#SBATCH --gres=gpu:1\n"), "{stage}");
        assert!(job(stage).contains("#SBATCH --partition=gpu\n"), "{stage}");
    }
    for stage in ["merge/dtm", "score/base", "report", "disperse/dtm"] {
        assert!(!job(stage).contains("--gres"), "{stage}");
        assert!(job(stage).contains("#SBATCH --partition=cpu\n"), "{stage}");
    }
    assert!(full
        .values()
        .all(|s| s.text.contains("#SBATCH --time=2-00:00:00\n")));
    let subs = full
        .values()
        .find(|s| s.stages.iter().any(|x| x == "train/dtm/sub-1"))
        .unwrap();
    assert_eq!(subs.stages.len(), 4);
    assert!(subs.text.contains("--device cuda"));
    let env = std::fs::read_to_string(dir.path().join("slurm-full/env.sh")).unwrap();
    assert!(env.contains("TRAINER=") && env.contains("HARNESS=") && env.contains("OUT="));
}
