//! `harness score` end to end: plugins loaded at run time, the model runtime, the sandbox, the
//! output files, resuming after kill -9, and third-party plugins.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn ok(o: &std::process::Output) {
    assert!(o.status.success(), "harness failed:\n{}", stderr(o));
}

/// Mean and sample standard error (sd / sqrt(n)) of one metric over a task's samples.
fn mean_and_stderr(samples: &[serde_json::Value], task: &str, metric: &str) -> (f64, f64) {
    let xs: Vec<f64> = samples
        .iter()
        .filter(|s| s["task"] == task)
        .map(|s| s["metrics"][metric].as_f64().unwrap())
        .collect();
    let n = xs.len() as f64;
    assert!(n >= 2.0, "{task}: {n} samples");
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, (var / n).sqrt())
}

#[test]
fn score_writes_the_documented_files_and_is_deterministic() {
    let model = tiny_model("llama");
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let args = [
        "--tasks",
        "arc_challenge,mmlu:anatomy,gsm8k,humaneval",
        "--limit",
        "2",
        "--max-new-tokens",
        "8",
    ];
    ok(&score(&model, &a, &args));

    let results = read_json(&a.join("results.json"));
    let arc = &results["tasks"]["arc_challenge"];
    assert_eq!(arc["n_items"], 2);
    // Each metric is the mean of the per-item values in samples.jsonl, with the sample
    // standard error: recomputed here, they must agree exactly.
    let samples = read_samples(&a);
    for (task, metric) in [
        ("arc_challenge", "acc"),
        ("arc_challenge", "acc_norm"),
        ("mmlu:anatomy", "acc"),
        ("gsm8k", "exact_match_strict"),
        ("humaneval", "pass@1"),
    ] {
        let (mean, stderr) = mean_and_stderr(&samples, task, metric);
        let m = &results["tasks"][task]["metrics"][metric];
        assert!(
            (m["value"].as_f64().unwrap() - mean).abs() < 1e-12,
            "{task} {metric}: {m} vs {mean}"
        );
        assert!(
            (m["stderr"].as_f64().unwrap() - stderr).abs() < 1e-12,
            "{task} {metric}: {m} vs {stderr}"
        );
    }
    assert_eq!(arc["protocol"]["num_fewshot"], 0);
    assert_eq!(arc["plugin"]["name"], "arc_challenge");
    assert!(arc["plugin"]["version"].is_string());
    // Data hashes are those of the upstream files (sha256 from shared/data/SOURCES.md).
    assert_eq!(
        arc["data_files"]["arc/ARC-Challenge/ARC-Challenge-Test.jsonl"]
            .as_str()
            .unwrap()[..8],
        *"9fa8ffb3"
    );
    assert!(arc["wall_seconds"].is_number());
    assert_eq!(results["tasks"]["mmlu:anatomy"]["n_items"], 2);
    assert_eq!(results["tasks"]["gsm8k"]["protocol"]["max_new_tokens"], 8);
    assert_eq!(results["model"]["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(results["options"]["limit"], 2);

    assert_eq!(samples.len(), 8);
    for s in &samples {
        for key in [
            "task",
            "doc_id",
            "requests",
            "responses",
            "extracted",
            "gold",
            "metrics",
        ] {
            assert!(!s[key].is_null(), "sample lacks {key}: {s}");
        }
    }
    let arc0 = samples
        .iter()
        .find(|s| s["task"] == "arc_challenge")
        .unwrap();
    assert!(arc0["requests"][0]["context"]
        .as_str()
        .unwrap()
        .starts_with("Question: "));
    assert!(arc0["requests"][0]["continuation"]
        .as_str()
        .unwrap()
        .starts_with(' '));
    assert!(arc0["responses"][0]["logprob"].as_f64().unwrap() < 0.0);
    assert!(arc0["responses"][0]["is_greedy"].is_boolean());
    let gsm = samples.iter().find(|s| s["task"] == "gsm8k").unwrap();
    assert_eq!(gsm["requests"][0]["max_new_tokens"], 8);
    assert!(gsm["requests"][0]["until"]
        .as_array()
        .unwrap()
        .contains(&"Q:".into()));
    assert!(gsm["responses"][0].is_string());
    assert!(samples
        .iter()
        .filter(|s| s["task"] == "mmlu:anatomy")
        .all(|s| s["subtask"] == "mmlu:anatomy"));
    // The sandbox ran the programs: an outcome per HumanEval item, and a number, not "unavailable".
    let he = samples.iter().find(|s| s["task"] == "humaneval").unwrap();
    assert_eq!(he["outcomes"].as_array().unwrap().len(), 1);
    assert!(results["tasks"]["humaneval"]["metrics"]["pass@1"]["value"].is_number());

    let csv = std::fs::read_to_string(a.join("results.csv")).unwrap();
    assert!(csv.starts_with("task,scope,metric,value,stderr,n\n"));
    assert!(csv.contains("arc_challenge,arc_challenge,acc,"));
    let md = std::fs::read_to_string(a.join("results.md")).unwrap();
    assert!(
        md.contains("| arc_challenge | acc |") && md.contains("| gsm8k | exact_match_strict |")
    );

    // Same model and options: the same numbers and the same samples.
    ok(&score(&model, &b, &args));
    assert_eq!(
        read_json(&b.join("results.json"))["tasks"]["arc_challenge"]["metrics"],
        arc["metrics"]
    );
    assert_eq!(read_samples(&b), samples);
}

#[test]
fn a_killed_run_resumes_without_losing_or_recomputing_items() {
    let model = tiny_model("llama");
    let dir = tempfile::tempdir().unwrap();
    let (killed, clean) = (dir.path().join("killed"), dir.path().join("clean"));
    let args = [
        "--tasks",
        "mmlu",
        "--limit",
        "4",
        "--chunk-size",
        "1",
        "--batch-size",
        "4",
    ];
    let total = 57 * 4;

    let mut child = Command::new(harness_bin())
        .args(["score", "--model"])
        .arg(&model)
        .arg("--output")
        .arg(&killed)
        .arg("--data-dir")
        .arg(data_dir())
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let chunks = killed.join(".progress/mmlu");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        // Chunk files only: a temporary file of a chunk being written is not a saved chunk.
        let saved = std::fs::read_dir(&chunks)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| e.path().extension().is_some_and(|x| x == "jsonl"))
                    .count()
            })
            .unwrap_or(0);
        if saved >= 20 {
            break;
        }
        assert!(Instant::now() < deadline, "no progress saved");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        !killed.join("results.json").exists(),
        "killed before the end"
    );

    ok(&score(&model, &killed, &args));
    let results = read_json(&killed.join("results.json"));
    let computed = results["tasks"]["mmlu"]["items_computed"].as_u64().unwrap() as usize;
    assert!(
        computed < total - 10,
        "finished items were recomputed: {computed} of {total}"
    );
    let samples = read_samples(&killed);
    let ids: BTreeSet<u64> = samples
        .iter()
        .map(|s| s["doc_id"].as_u64().unwrap())
        .collect();
    assert_eq!(
        (samples.len(), ids.len()),
        (total, total),
        "every item once"
    );

    // The resumed run agrees with an uninterrupted one.
    ok(&score(&model, &clean, &args));
    let reference = read_samples(&clean);
    for (x, y) in samples.iter().zip(&reference) {
        assert_eq!(x["doc_id"], y["doc_id"]);
        assert_eq!(x["metrics"], y["metrics"]);
        for (rx, ry) in x["responses"]
            .as_array()
            .unwrap()
            .iter()
            .zip(y["responses"].as_array().unwrap())
        {
            let (lx, ly) = (
                rx["logprob"].as_f64().unwrap(),
                ry["logprob"].as_f64().unwrap(),
            );
            assert!((lx - ly).abs() < 1e-4, "{lx} vs {ly}");
        }
    }
}

#[test]
fn a_third_party_plugin_builds_alone_and_scores() {
    let template = Path::new(env!("CARGO_MANIFEST_DIR")).join("../benchmarks/template");
    let build_dir = target_dir().join("template-build");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "--offline", "--manifest-path"])
        .arg(template.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", &build_dir)
        .status()
        .unwrap();
    assert!(status.success(), "the template builds on its own");
    let plugin = build_dir.join("release").join(format!(
        "{}dtm_bench_tiny_qa{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    ));
    let out = tempfile::tempdir().unwrap();
    // The template's own data folder for its task, the shared one for the rest.
    let data = format!("tiny_qa={}", template.join("data").display());
    let o = score(
        &tiny_model("qwen2"),
        out.path(),
        &[
            "--plugin",
            plugin.to_str().unwrap(),
            "--data-dir",
            &data,
            "--tasks",
            "tiny_qa",
        ],
    );
    ok(&o);
    let results = read_json(&out.path().join("results.json"));
    assert_eq!(results["tasks"]["tiny_qa"]["n_items"], 5);
    assert!(results["tasks"]["tiny_qa"]["data_files"]["tiny_qa/questions.jsonl"].is_string());
    assert!(results["tasks"]["tiny_qa"]["metrics"]["acc"]["value"].is_number());
}

#[test]
fn a_panicking_plugin_fails_its_task_and_the_others_go_on() {
    let toy = target_dir().join(format!(
        "{}dtm_test_plugin_toy{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    ));
    assert!(toy.exists(), "{} not built", toy.display());
    let out = tempfile::tempdir().unwrap();
    let o = score(
        &tiny_model("llama"),
        out.path(),
        &[
            "--plugin",
            toy.to_str().unwrap(),
            "--tasks",
            "toy,arc_challenge",
            "--limit",
            "2",
            "--max-new-tokens",
            "4",
        ],
    );
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("toy") && err.contains("panicked"), "{err}");
    assert!(err.contains("1 of 2 tasks failed"), "{err}");
    let results = read_json(&out.path().join("results.json"));
    assert_eq!(results["tasks"]["arc_challenge"]["n_items"], 2);
    assert!(results["tasks"].get("toy").is_none());
}

#[test]
fn a_plugin_of_another_abi_version_is_refused_naming_both() {
    let bad = target_dir().join(format!(
        "{}dtm_test_plugin_bad_abi{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    ));
    let out = tempfile::tempdir().unwrap();
    let o = score(
        &tiny_model("llama"),
        out.path(),
        &[
            "--plugin",
            bad.to_str().unwrap(),
            "--tasks",
            "arc_challenge",
            "--limit",
            "1",
        ],
    );
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("ABI version 9999") && err.contains("ABI version 1"),
        "{err}"
    );
}

#[test]
fn list_names_every_builtin_plugin_with_its_item_count() {
    let o = Command::new(harness_bin())
        .arg("list")
        .arg("--data-dir")
        .arg(data_dir())
        .output()
        .unwrap();
    ok(&o);
    let text = String::from_utf8_lossy(&o.stdout);
    for (task, n) in [
        ("gsm8k", 1319),
        ("mmlu", 14042),
        ("bbh", 6511),
        ("arc_challenge", 1172),
        ("openbookqa", 500),
        ("race", 1045),
        ("humaneval", 164),
        ("mbpp", 500),
        ("truthfulqa_mc1", 817),
    ] {
        let line = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(task))
            .unwrap_or_else(|| panic!("{task} missing:\n{text}"));
        assert!(
            line.split_whitespace().any(|w| w == n.to_string()),
            "{line}"
        );
    }
}

/// The real model through the whole system: a few items of every benchmark.
#[test]
fn smollm2_scores_every_benchmark() {
    let model = smollm2();
    let out = tempfile::tempdir().unwrap();
    let tasks = "arc_challenge,openbookqa,race,truthfulqa_mc1,mmlu:astronomy,gsm8k,bbh:boolean_expressions,humaneval,mbpp";
    let o = score(
        &model,
        out.path(),
        &["--tasks", tasks, "--limit", "2", "--max-new-tokens", "48"],
    );
    ok(&o);
    let results = read_json(&out.path().join("results.json"));
    let samples = read_samples(out.path());
    for task in tasks.split(',') {
        let t = &results["tasks"][task];
        assert_eq!(t["n_items"], 2, "{task}");
        let headline = t["headline_metric"].as_str().unwrap();
        let v = t["metrics"][headline]["value"]
            .as_f64()
            .unwrap_or_else(|| panic!("{task}: {headline} unavailable"));
        let (mean, _) = mean_and_stderr(&samples, task, headline);
        assert!((v - mean).abs() < 1e-12, "{task}: {v} vs {mean}");
    }
    let gsm: Vec<_> = samples.iter().filter(|s| s["task"] == "gsm8k").collect();
    for s in gsm {
        let text = s["responses"][0].as_str().unwrap();
        assert!(
            !text.trim().is_empty() && !text.contains("Q:"),
            "cut at the stop string: {text:?}"
        );
    }
    // Prefix reuse is visible: the shared few-shot preamble is forwarded once.
    let mmlu = &results["tasks"]["mmlu:astronomy"]["tokens"];
    assert!(
        mmlu["forwarded"].as_u64().unwrap() < mmlu["requested"].as_u64().unwrap() / 2,
        "{mmlu}"
    );
}
