//! `harness score --shard I/N` and `harness merge-shards`: N machines score one model together
//! and the joined folder is the run one machine writes, byte for byte (measurements aside).

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

fn ok(o: &Output) {
    assert!(o.status.success(), "harness failed:\n{}", stderr(o));
}

fn failed(o: &Output) -> String {
    assert!(!o.status.success(), "expected a failure");
    let err = stderr(o);
    assert!(!err.contains("panicked"), "no panic: {err}");
    err
}

fn merge(shards: &[&Path], output: &Path) -> Output {
    Command::new(harness_bin())
        .arg("merge-shards")
        .args(shards)
        .arg("--output")
        .arg(output)
        .output()
        .unwrap()
}

/// results.json without what is measured rather than computed (wall time, tokens, items
/// computed now): those are the shards' sums, not the unsharded run's.
fn computed_results(dir: &Path) -> serde_json::Value {
    let mut r = read_json(&dir.join("results.json"));
    r.as_object_mut().unwrap().remove("wall_seconds");
    for (_, t) in r["tasks"].as_object_mut().unwrap() {
        let t = t.as_object_mut().unwrap();
        for k in ["wall_seconds", "tokens", "items_computed"] {
            assert!(t.remove(k).is_some(), "{k} recorded");
        }
    }
    r
}

fn doc_ids(dir: &Path, task: &str) -> BTreeSet<u64> {
    read_samples(dir)
        .iter()
        .filter(|s| s["task"] == task)
        .map(|s| s["doc_id"].as_u64().unwrap())
        .collect()
}

/// The unsharded run and its three shards, joined, of `args` in `dir`.
fn full_and_joined(dir: &Path, args: &[&str]) -> (PathBuf, Vec<PathBuf>, PathBuf) {
    let model = tiny_model("llama");
    let full = dir.join("full");
    ok(&score(&model, &full, args));
    let shards: Vec<PathBuf> = (1..=3)
        .map(|i| {
            let out = dir.join(format!("shard-{i}"));
            let mut a = args.to_vec();
            let s = format!("{i}/3");
            a.extend(["--shard", &s]);
            ok(&score(&model, &out, &a));
            out
        })
        .collect();
    let joined = dir.join("joined");
    // Any order of the folders.
    ok(&merge(&[&shards[2], &shards[0], &shards[1]], &joined));
    (full, shards, joined)
}

const TASKS: [&str; 10] = [
    "--tasks",
    "mmlu,arc_challenge,gsm8k,truthfulqa_mc1",
    "--limit",
    "7",
    "--max-new-tokens",
    "6",
    "--chunk-size",
    "3",
    "--batch-size",
    "4",
];

#[test]
fn joined_shards_are_the_unsharded_run() {
    let dir = tempfile::tempdir().unwrap();
    let items = dir.path().join("items.json");
    // An explicit item list for one task (after --limit); the other tasks are scored whole.
    std::fs::write(&items, r#"{"arc_challenge": [0, 2, 3, 5, 6]}"#).unwrap();
    let mut args = TASKS.to_vec();
    // Prefix reuse within a chunk only: every engine call of a shard is then exactly one call
    // of the unsharded run, and the joined files are its files byte for byte.
    args.extend(["--items", items.to_str().unwrap(), "--prefix-cache", "0"]);
    let (full, shards, joined) = full_and_joined(dir.path(), &args);
    let model = tiny_model("llama");

    for f in ["samples.jsonl", "results.csv", "results.md"] {
        let (a, b) = (
            std::fs::read(full.join(f)).unwrap(),
            std::fs::read(joined.join(f)).unwrap(),
        );
        assert!(
            a == b,
            "{f} differs between the unsharded and the joined run"
        );
    }
    assert_eq!(computed_results(&full), computed_results(&joined));
    // The joined folder is the unsharded run's folder: the same run and task identities, and
    // the unsharded command finds every item done there.
    let identity = |dir: &Path, file: &str| read_json(&dir.join(".progress").join(file));
    assert_eq!(identity(&full, "run.json"), identity(&joined, "run.json"));
    assert!(identity(&shards[0], "run.json")["shard"] == "1/3");
    for task in ["mmlu", "arc_challenge", "gsm8k", "truthfulqa_mc1"] {
        let file = format!("{task}/task.json");
        assert_eq!(identity(&full, &file), identity(&joined, &file), "{task}");
    }
    let before = std::fs::read(joined.join("samples.jsonl")).unwrap();
    ok(&score(&model, &joined, &args));
    assert_eq!(std::fs::read(joined.join("samples.jsonl")).unwrap(), before);
    for (task, t) in read_json(&joined.join("results.json"))["tasks"]
        .as_object()
        .unwrap()
    {
        assert_eq!(t["items_computed"], 0, "{task}: nothing left to compute");
    }
    // Merging again into the same folder rewrites the joined tasks: the same files.
    ok(&merge(&[&shards[0], &shards[1], &shards[2]], &joined));
    assert_eq!(std::fs::read(joined.join("samples.jsonl")).unwrap(), before);
    let arc: Vec<u64> = doc_ids(&full, "arc_challenge").into_iter().collect();
    assert_eq!(arc, vec![0, 2, 3, 5, 6], "the item list is what is scored");

    // The shards are disjoint slices, each of whole chunks of 3 items dealt round-robin.
    for task in ["mmlu", "arc_challenge", "gsm8k", "truthfulqa_mc1"] {
        let slices: Vec<BTreeSet<u64>> = shards.iter().map(|s| doc_ids(s, task)).collect();
        let total: usize = slices.iter().map(BTreeSet::len).sum();
        let union: BTreeSet<u64> = slices.iter().flatten().copied().collect();
        assert_eq!(total, union.len(), "{task}: disjoint");
        assert_eq!(union, doc_ids(&full, task), "{task}: complete");
    }
    // arc_challenge's five listed items in chunks of 3: [0, 2, 3] → shard 1, [5, 6] → shard 2.
    assert_eq!(
        doc_ids(&shards[0], "arc_challenge"),
        BTreeSet::from([0, 2, 3])
    );
    assert_eq!(doc_ids(&shards[1], "arc_challenge"), BTreeSet::from([5, 6]));
    assert!(doc_ids(&shards[2], "arc_challenge").is_empty());

    // Stable under --limit: a larger limit deals the first items to the same shards.
    let wider = dir.path().join("wider");
    ok(&score(
        &model,
        &wider,
        &[
            "--tasks",
            "gsm8k",
            "--limit",
            "12",
            "--max-new-tokens",
            "6",
            "--chunk-size",
            "3",
            "--shard",
            "2/3",
        ],
    ));
    let first7: BTreeSet<u64> = doc_ids(&wider, "gsm8k")
        .into_iter()
        .filter(|&d| d < 7)
        .collect();
    assert_eq!(first7, doc_ids(&shards[1], "gsm8k"));

    // A shard is recorded as such; a restart with another shard is refused.
    assert_eq!(
        read_json(&shards[0].join("results.json"))["options"]["shard"],
        "1/3"
    );
    let mut a = args.to_vec();
    a.extend(["--shard", "2/3"]);
    let err = failed(&score(&model, &shards[0], &a));
    assert!(err.contains("shard"), "{err}");
}

/// With the prefix cache kept across chunks (the default), a shard computes afresh a prefix the
/// unsharded run had cached from an earlier chunk, and the log-probabilities differ in the last
/// bits of float32 (as when a killed run resumes): everything else is equal.
#[test]
fn with_the_prefix_cache_joined_shards_differ_only_in_float_rounding() {
    let dir = tempfile::tempdir().unwrap();
    let (full, _, joined) = full_and_joined(dir.path(), &TASKS);
    let (a, b) = (read_samples(&full), read_samples(&joined));
    assert_eq!(a.len(), b.len());
    let close = |x: &serde_json::Value, y: &serde_json::Value| {
        let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
        (x - y).abs() <= 1e-5 * x.abs().max(1.0)
    };
    for (x, y) in a.iter().zip(&b) {
        for key in ["task", "doc_id", "requests", "extracted", "gold"] {
            assert_eq!(x[key], y[key], "{key}");
        }
        assert_eq!(x["metrics"]["acc"], y["metrics"]["acc"]);
        for (rx, ry) in x["responses"]
            .as_array()
            .unwrap()
            .iter()
            .zip(y["responses"].as_array().unwrap())
        {
            match (rx.get("logprob"), ry.get("logprob")) {
                (Some(lx), Some(ly)) => assert!(close(lx, ly), "{lx} vs {ly}"),
                _ => assert_eq!(rx, ry, "generated text"),
            }
        }
    }
    assert_eq!(
        std::fs::read_to_string(full.join("results.md")).unwrap(),
        std::fs::read_to_string(joined.join("results.md")).unwrap()
    );
}

#[test]
fn merge_shards_refuses_what_is_not_one_whole_run() {
    let model = tiny_model("llama");
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str, extra: &[&str]| {
        let out = dir.path().join(name);
        let mut a = vec![
            "--tasks",
            "arc_challenge",
            "--limit",
            "4",
            "--chunk-size",
            "1",
            // Reuse within a chunk only, so that the joined samples equal `whole`'s exactly.
            "--prefix-cache",
            "0",
        ];
        a.extend(extra);
        ok(&score(&model, &out, &a));
        out
    };
    let s1 = run("s1", &["--shard", "1/2"]);
    let s2 = run("s2", &["--shard", "2/2"]);
    let other = run("other", &["--shard", "2/2", "--max-new-tokens", "5"]);
    let whole = run("whole", &[]);
    let out = dir.path().join("out");

    let err = failed(&merge(&[&s1], &out));
    assert!(err.contains("shards 2/2 are missing"), "{err}");
    let err = failed(&merge(&[&s1, &s2, &s2], &out));
    assert!(err.contains("named twice"), "{err}");
    let copy = dir.path().join("s2-copy");
    copy_dir(&s2, &copy);
    let err = failed(&merge(&[&s1, &s2, &copy], &out));
    assert!(err.contains("are both shard 2/2"), "{err}");
    // Run identities that differ are refused, naming the folder and the field.
    let err = failed(&merge(&[&s1, &other], &out));
    assert!(
        err.contains("different settings")
            && err.contains(other.to_str().unwrap())
            && err.contains("max_new_tokens (none, now 5)"),
        "{err}"
    );
    let err = failed(&merge(&[&s1, &whole], &out));
    assert!(err.contains("not a shard"), "{err}");
    // A task scored from other data in one shard (its recorded identity differs): refused,
    // naming the shard and the data file.
    let task_json = copy.join(".progress/arc_challenge/task.json");
    let mut identity = read_json(&task_json);
    let data = identity["data_files"].as_object_mut().unwrap();
    let file = data.keys().next().unwrap().clone();
    data.insert(file.clone(), "0".repeat(64).into());
    std::fs::write(&task_json, identity.to_string()).unwrap();
    let err = failed(&merge(&[&s1, &copy], &out));
    assert!(
        err.contains(copy.to_str().unwrap()) && err.contains(&format!("data_files.{file}")),
        "{err}"
    );
    // A shard another harness is still writing (its lock held) is refused.
    let lock = std::fs::File::open(s2.join(".progress/lock")).unwrap();
    lock.try_lock().unwrap();
    let err = failed(&merge(&[&s1, &s2], &out));
    assert!(err.contains("in use by another harness run"), "{err}");
    drop(lock);
    assert!(!out.exists(), "nothing written on refusal");
    ok(&merge(&[&s2, &s1], &out));
    assert_eq!(read_samples(&out), read_samples(&whole));
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// `--plan` counts, without the model's weights, the tokens `harness score` then requests, and a
/// lower bound of what it forwards.
#[test]
fn plan_counts_the_tokens_scoring_reads() {
    let model = tiny_model("llama");
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--tasks",
        "arc_challenge,mmlu:astronomy,gsm8k",
        "--limit",
        "3",
        "--max-new-tokens",
        "5",
    ];
    let mut with_plan = args.to_vec();
    with_plan.push("--plan");
    let o = score(&model, &dir.path().join("unused"), &with_plan);
    ok(&o);
    assert!(!dir.path().join("unused").exists(), "--plan writes nothing");
    let plan: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let out = dir.path().join("run");
    ok(&score(&model, &out, &args));
    let results = read_json(&out.join("results.json"));
    for task in ["arc_challenge", "mmlu:astronomy"] {
        let (p, r) = (&plan["tasks"][task], &results["tasks"][task]);
        assert_eq!(p["items"], 3);
        assert_eq!(
            p["requested"], r["tokens"]["requested"],
            "{task}: the same count"
        );
        assert!(p["forwarded_min"].as_u64().unwrap() <= r["tokens"]["forwarded"].as_u64().unwrap());
        assert!(p["forwarded_min"].as_u64().unwrap() < p["requested"].as_u64().unwrap());
        assert_eq!(p["generated_max"], 0);
    }
    let g = &plan["tasks"]["gsm8k"];
    assert_eq!(
        g["requested"],
        results["tasks"]["gsm8k"]["tokens"]["requested"]
    );
    assert_eq!(
        (g["generate_requests"].as_u64(), g["generated_max"].as_u64()),
        (Some(3), Some(15))
    );
    let sum = |k: &str| -> u64 {
        ["arc_challenge", "mmlu:astronomy", "gsm8k"]
            .iter()
            .map(|t| plan["tasks"][t][k].as_u64().unwrap())
            .sum()
    };
    assert_eq!(
        plan["total"]["requested"].as_u64().unwrap(),
        sum("requested")
    );
}
