//! `harness … --model A --model B [--ensemble logprobs|logits]` end to end: results.json records
//! every member and the mode, a resumed run must name the same members in the same order and
//! mode, adapters pair with models by order, a self-ensemble scores as the model, and models with
//! different tokenizers are refused before anything is written.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use common::*;

fn harness(args: &[&str]) -> Output {
    Command::new(harness_bin())
        .args(args)
        .output()
        .expect("run harness")
}

fn ok(o: &Output) -> String {
    assert!(o.status.success(), "harness failed:\n{}", stderr(o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn failed(o: &Output) -> String {
    assert!(!o.status.success(), "expected a failure");
    let err = stderr(o);
    assert!(!err.contains("panicked"), "no panic: {err}");
    err
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `harness score` with several `--model` (and any other flags).
fn score_with<P: AsRef<Path>>(models: &[P], output: &Path, extra: &[&str]) -> Output {
    let mut cmd = Command::new(harness_bin());
    cmd.arg("score");
    for m in models {
        cmd.arg("--model").arg(m.as_ref());
    }
    cmd.arg("--output")
        .arg(output)
        .arg("--data-dir")
        .arg(data_dir())
        .args(["--tasks", "arc_challenge", "--limit", "3"])
        .args(extra);
    cmd.output().expect("run harness")
}

fn logprobs_of(samples: &[Value]) -> Vec<f64> {
    samples
        .iter()
        .flat_map(|s| s["responses"].as_array().unwrap().clone())
        .map(|r| r["logprob"].as_f64().unwrap())
        .collect()
}

#[test]
fn score_records_every_member_and_resumes_only_with_the_same_ensemble() {
    let (llama, qwen) = (tiny_model("llama"), tiny_model("qwen2"));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ensemble");
    ok(&score_with(
        &[&llama, &qwen],
        &out,
        &["--ensemble", "logits"],
    ));
    let results = read_json(&out.join("results.json"));
    let model = &results["model"];
    assert_eq!(model["ensemble"], "logits");
    let members = model["members"].as_array().unwrap();
    assert_eq!(members.len(), 2);
    for (m, (p, arch)) in members.iter().zip([(&llama, "llama"), (&qwen, "qwen2")]) {
        assert_eq!(m["path"], path(p));
        assert_eq!(m["sha256"].as_str().unwrap().len(), 64);
        assert_eq!(m["architecture"], arch);
        assert!(m["adapter"].is_null());
    }
    assert_ne!(members[0]["sha256"], members[1]["sha256"]);
    let run = read_json(&out.join(".progress/run.json"));
    assert_eq!(run["ensemble"]["mode"], "logits");
    assert_eq!(run["ensemble"]["members"].as_array().unwrap().len(), 2);

    // The same command resumes (nothing recomputed); another mode or order is refused.
    ok(&score_with(
        &[&llama, &qwen],
        &out,
        &["--ensemble", "logits"],
    ));
    let again = read_json(&out.join("results.json"));
    assert_eq!(again["tasks"]["arc_challenge"]["items_computed"], 0);
    for (models, extra) in [
        (vec![&llama, &qwen], vec!["--ensemble", "logprobs"]),
        (vec![&qwen, &llama], vec!["--ensemble", "logits"]),
        (vec![&llama, &qwen, &qwen], vec!["--ensemble", "logits"]),
        (vec![&llama], vec![]),
    ] {
        let err = failed(&score_with(&models, &out, &extra));
        assert!(
            err.contains("holds a run done with other settings or inputs: ensemble"),
            "{err}"
        );
    }

    // The members' own scores differ from the ensemble's.
    let alone = dir.path().join("llama");
    ok(&score_with(&[&llama], &alone, &[]));
    let (e, l) = (
        logprobs_of(&read_samples(&out)),
        logprobs_of(&read_samples(&alone)),
    );
    assert!(e.iter().zip(&l).any(|(x, y)| (x - y).abs() > 1e-3));
}

#[test]
fn a_self_ensemble_scores_as_the_model() {
    let llama = tiny_model("llama");
    let dir = tempfile::tempdir().unwrap();
    let alone = dir.path().join("alone");
    ok(&score_with(
        &[&llama],
        &alone,
        &["--tasks", "gsm8k", "--max-new-tokens", "6"],
    ));
    let single = read_samples(&alone);
    for mode in ["logprobs", "logits"] {
        let out = dir.path().join(mode);
        ok(&score_with(
            &[&llama, &llama],
            &out,
            &[
                "--ensemble",
                mode,
                "--tasks",
                "gsm8k",
                "--max-new-tokens",
                "6",
            ],
        ));
        let twice = read_samples(&out);
        assert_eq!(twice.len(), single.len());
        for (a, b) in single.iter().zip(&twice) {
            assert_eq!(a["metrics"], b["metrics"], "{mode}");
            // arc_challenge answers are log-probabilities; gsm8k's are generated text.
            for (x, y) in a["responses"]
                .as_array()
                .unwrap()
                .iter()
                .zip(b["responses"].as_array().unwrap())
            {
                match (x["logprob"].as_f64(), y["logprob"].as_f64()) {
                    (Some(p), Some(q)) => assert!((p - q).abs() <= 1e-6, "{mode}: {p} vs {q}"),
                    _ => assert_eq!(x, y, "{mode}: the same generation"),
                }
            }
        }
    }
}

/// A PEFT adapter for the tiny llama (from the shared fixtures).
fn fixture_adapter() -> PathBuf {
    shared().join("fixtures/tiny-llama-lora-grad/adapter_init")
}

fn loglikelihoods(args: &[&str]) -> Vec<f64> {
    ok(&harness(args))
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["logprob"]
                .as_f64()
                .unwrap()
        })
        .collect()
}

#[test]
fn adapters_pair_with_models_by_order_and_a_shared_base_stays_unchanged() {
    let llama = tiny_model("llama");
    let adapter = fixture_adapter();
    let dir = tempfile::tempdir().unwrap();
    let requests = dir.path().join("requests.jsonl");
    std::fs::write(
        &requests,
        "{\"context\": \"Question: What colour is the sky?\\nAnswer:\", \"continuation\": \" blue\"}\n\
         {\"context\": \"The quick brown fox\", \"continuation\": \" jumps over the lazy dog.\"}\n",
    )
    .unwrap();
    let (l, a, r) = (path(&llama), path(&adapter), path(&requests));
    let base = loglikelihoods(&["loglikelihood", "--model", l, "--requests", r]);
    let tuned = loglikelihoods(&[
        "loglikelihood",
        "--model",
        l,
        "--adapter",
        a,
        "--requests",
        r,
    ]);
    assert!(base.iter().zip(&tuned).all(|(x, y)| (x - y).abs() > 1e-3));
    // Mean of log-softmax: a sequence's log-probability is the mean of the members' own. The
    // base is loaded once and shared; the adapter must reach the second member only.
    for adapters in [["none", a], [a, "none"]] {
        let both = loglikelihoods(&[
            "loglikelihood",
            "--model",
            l,
            "--model",
            l,
            "--adapter",
            adapters[0],
            "--adapter",
            adapters[1],
            "--requests",
            r,
        ]);
        for ((x, y), e) in base.iter().zip(&tuned).zip(&both) {
            assert!((e - (x + y) / 2.0).abs() < 1e-4, "{e} vs mean of {x}, {y}");
        }
    }

    // results.json names the adapter of the member that has one.
    let out = dir.path().join("score");
    ok(&score_with(
        &[&llama, &llama],
        &out,
        &["--adapter", "none", "--adapter", a],
    ));
    let results = read_json(&out.join("results.json"));
    let members = results["model"]["members"].as_array().unwrap();
    assert_eq!(results["model"]["ensemble"], "logprobs");
    assert!(members[0]["adapter"].is_null());
    assert_eq!(members[1]["adapter"]["path"], a);
    assert_eq!(members[1]["adapter"]["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(members[0]["sha256"], members[1]["sha256"]);

    // Counts that do not pair are refused before anything loads.
    let err = failed(&score_with(
        &[&llama, &llama],
        &dir.path().join("x"),
        &["--adapter", a],
    ));
    assert!(
        err.contains("--adapter given 1 times for 2 --model"),
        "{err}"
    );
    let err = failed(&score_with(
        &[&llama],
        &dir.path().join("y"),
        &["--ensemble", "logits"],
    ));
    assert!(err.contains("give --model at least twice"), "{err}");
    assert!(!dir.path().join("x").exists() && !dir.path().join("y").exists());
}

#[test]
fn models_with_different_tokenizers_are_refused_and_nothing_is_written() {
    let llama = tiny_model("llama");
    let dir = tempfile::tempdir().unwrap();
    // A copy of the tiny llama whose tokenizer marks one more token as special.
    let other = dir.path().join("llama-other-tokenizer");
    std::fs::create_dir(&other).unwrap();
    for entry in std::fs::read_dir(&llama).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), other.join(entry.file_name())).unwrap();
    }
    let json_path = other.join("tokenizer.json");
    let mut json: Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    let added = json["added_tokens"].as_array_mut().unwrap();
    let flipped = added
        .iter_mut()
        .find(|t| t["special"] == true)
        .expect("a special token");
    flipped["special"] = false.into();
    let id = flipped["id"].as_u64().unwrap();
    std::fs::write(&json_path, serde_json::to_string(&json).unwrap()).unwrap();

    let out = dir.path().join("out");
    let err = failed(&score_with(&[&llama, &other], &out, &[]));
    assert!(
        err.contains(path(&llama)) && err.contains(path(&other)),
        "names both models: {err}"
    );
    assert!(
        err.contains(&format!("token id {id}: special vs not special")),
        "{err}"
    );
    assert!(!out.join("results.json").exists() && !out.join(".progress").exists());
    // The debug commands refuse them too.
    let err = failed(&harness(&[
        "logprobs",
        "--model",
        path(&llama),
        "--model",
        path(&other),
        "--text",
        "hello",
    ]));
    assert!(err.contains("different tokenizers"), "{err}");
}
