//! LoRA adapters end to end: `harness … --adapter DIR` runs the adapter unmerged, `trainer
//! export` merges it into a Hugging Face folder, and both give the same log-probabilities;
//! `harness score --adapter` records what it ran; a wrong or incomplete adapter is one error line.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{Device, Tensor};
use dtm_model::adapter::{AdapterConfig, PeftAdapter};
use serde_json::Value;

use common::*;

fn trainer_bin() -> PathBuf {
    let bin = target_dir().join("trainer");
    assert!(
        bin.exists(),
        "{} not built: run the tests with `cargo test --workspace --release`",
        bin.display()
    );
    bin
}

fn run(bin: &Path, args: &[&str]) -> Output {
    Command::new(bin).args(args).output().expect("run binary")
}

fn ok(o: &Output) -> String {
    assert!(o.status.success(), "failed:\n{}", stderr(o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

const TEXTS: [&str; 3] = [
    "Below is an instruction that describes a task.\n\n### Instruction:\nName a colour.\n\n### Response: Blue.",
    "def add(a, b):\n    return a + b",
    "Ünïcødé, 日本語, 12345 + 678 = 13023",
];

/// `harness logprobs` per-token log-probabilities of every text, concatenated.
fn logprobs(model: &Path, adapter: Option<&Path>) -> Vec<f64> {
    let mut out = Vec::new();
    for text in TEXTS {
        let mut args = vec!["logprobs", "--model", path(model), "--text", text];
        if let Some(a) = adapter {
            args.extend(["--adapter", path(a)]);
        }
        let report: Value = serde_json::from_str(&ok(&run(&harness_bin(), &args))).unwrap();
        out.extend(
            report["tokens"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|t| t["logprob"].as_f64()),
        );
    }
    assert!(out.len() > 40);
    out
}

fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// xorshift64*: reproducible uniform numbers in [-0.2, 0.2) without a dependency.
struct Rng(u64);

impl Rng {
    fn matrix(&mut self, rows: usize, cols: usize) -> Tensor {
        let v: Vec<f32> = (0..rows * cols)
            .map(|_| {
                self.0 ^= self.0 >> 12;
                self.0 ^= self.0 << 25;
                self.0 ^= self.0 >> 27;
                let x = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40;
                (x as f32 / (1u64 << 24) as f32 - 0.5) * 0.4
            })
            .collect();
        Tensor::from_vec(v, (rows, cols), &Device::Cpu).unwrap()
    }
}

/// A rank-8 adapter (alpha 16) on every linear layer of the tiny llama (hidden 32, kv 16,
/// intermediate 64), random non-zero A and B, written by `PeftAdapter::save`.
fn random_adapter(dir: &Path) {
    let r = 8;
    let shapes = [
        ("self_attn.q_proj", 32, 32),
        ("self_attn.k_proj", 32, 16),
        ("self_attn.v_proj", 32, 16),
        ("self_attn.o_proj", 32, 32),
        ("mlp.gate_proj", 32, 64),
        ("mlp.up_proj", 32, 64),
        ("mlp.down_proj", 64, 32),
    ];
    let targets: Vec<String> = shapes
        .iter()
        .map(|(m, _, _)| m.rsplit('.').next().unwrap().to_owned())
        .collect();
    let mut adapter = PeftAdapter {
        config: AdapterConfig::lora(r, 16.0, 0.05, &targets, "../../models/tiny/llama"),
        weights: Default::default(),
    };
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for layer in 0..2 {
        for (module, inp, out) in shapes {
            adapter.weights.insert(
                format!("model.layers.{layer}.{module}"),
                (rng.matrix(r, inp), rng.matrix(out, r)),
            );
        }
    }
    adapter.save(dir).unwrap();
}

fn fixture_adapter() -> PathBuf {
    shared().join("fixtures/tiny-llama-lora-grad/adapter_init")
}

#[test]
fn an_adapter_applied_at_load_equals_the_exported_merged_folder() {
    let base = tiny_model("llama");
    let dir = tempfile::tempdir().unwrap();
    let random = dir.path().join("random-adapter");
    random_adapter(&random);
    let plain = logprobs(&base, None);
    for (name, adapter) in [("PEFT fixture", fixture_adapter()), ("random", random)] {
        let merged = dir.path().join(format!("merged-{name}"));
        let o = run(
            &trainer_bin(),
            &[
                "export",
                "--model",
                path(&base),
                "--adapter",
                path(&adapter),
                "--output",
                path(&merged),
            ],
        );
        ok(&o);
        assert!(
            stderr(&o).contains("adapter merged into"),
            "progress: {}",
            stderr(&o)
        );
        let attached = logprobs(&base, Some(&adapter));
        let exported = logprobs(&merged, None);
        let d = max_diff(&attached, &exported);
        assert!(
            d <= 1e-4,
            "{name}: --adapter vs exported folder differ by {d}"
        );
        let changed = max_diff(&attached, &plain);
        eprintln!(
            "{name}: max |Δ logprob| --adapter vs exported {d:.2e}, vs no adapter {changed:.3}"
        );
        assert!(
            changed > 1e-2,
            "{name}: the adapter changes the model ({changed})"
        );
    }
}

/// `loglikelihood` and `generate` output of a model, as text to compare.
fn loglikelihoods(model: &Path, adapter: Option<&Path>, requests: &Path) -> Vec<f64> {
    let mut args = vec![
        "loglikelihood",
        "--model",
        path(model),
        "--requests",
        path(requests),
    ];
    if let Some(a) = adapter {
        args.extend(["--adapter", path(a)]);
    }
    ok(&run(&harness_bin(), &args))
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["logprob"]
                .as_f64()
                .unwrap()
        })
        .collect()
}

fn greedy_ids(model: &Path, adapter: Option<&Path>) -> Value {
    let mut args = vec![
        "generate",
        "--model",
        path(model),
        "--text",
        TEXTS[0],
        "--max-new-tokens",
        "12",
    ];
    if let Some(a) = adapter {
        args.extend(["--adapter", path(a)]);
    }
    serde_json::from_str::<Value>(&ok(&run(&harness_bin(), &args))).unwrap()["ids"].clone()
}

#[test]
fn loglikelihood_and_generate_apply_the_adapter_too() {
    let base = tiny_model("llama");
    let adapter = fixture_adapter();
    let dir = tempfile::tempdir().unwrap();
    let merged = dir.path().join("merged");
    ok(&run(
        &trainer_bin(),
        &[
            "export",
            "--model",
            path(&base),
            "--adapter",
            path(&adapter),
            "--output",
            path(&merged),
        ],
    ));
    let requests = dir.path().join("requests.jsonl");
    std::fs::write(
        &requests,
        concat!(
            r#"{"context": "The capital of France is", "continuation": " Paris"}"#,
            "\n",
            r#"{"context": "def add(a, b):", "continuation": "\n    return a + b"}"#,
            "\n",
            r#"{"context": "12 + 7 =", "continuation": " 19"}"#,
            "\n",
        ),
    )
    .unwrap();
    let attached = loglikelihoods(&base, Some(&adapter), &requests);
    assert_eq!(attached.len(), 3);
    assert!(max_diff(&attached, &loglikelihoods(&merged, None, &requests)) <= 1e-4);
    assert!(max_diff(&attached, &loglikelihoods(&base, None, &requests)) > 1e-2);
    let ids = greedy_ids(&base, Some(&adapter));
    assert_eq!(ids.as_array().unwrap().len(), 12);
    assert_eq!(ids, greedy_ids(&merged, None));
    assert_ne!(
        ids,
        greedy_ids(&base, None),
        "the adapter changes what is generated"
    );
}

#[test]
fn bf16_export_is_close_to_the_adapter_in_f32() {
    let base = tiny_model("llama");
    let dir = tempfile::tempdir().unwrap();
    let merged = dir.path().join("merged-bf16");
    ok(&run(
        &trainer_bin(),
        &[
            "export",
            "--model",
            path(&base),
            "--adapter",
            path(&fixture_adapter()),
            "--output",
            path(&merged),
            "--dtype",
            "bf16",
        ],
    ));
    let config = read_json(&merged.join("config.json"));
    assert_eq!(config["dtype"], "bfloat16");
    let d = max_diff(
        &logprobs(&base, Some(&fixture_adapter())),
        &logprobs(&merged, None),
    );
    eprintln!("bf16 export: max |Δ logprob| against the f32 adapter {d:.2e}");
    // bf16 keeps 8 bits of mantissa: weights move by ~0.4 %, log-probs by a few hundredths.
    assert!(d > 0.0 && d < 0.2, "{d}");
}

#[test]
fn score_records_the_adapter_and_its_hash_next_to_the_model() {
    let base = tiny_model("llama");
    let adapter = fixture_adapter();
    let dir = tempfile::tempdir().unwrap();
    let (with, without) = (dir.path().join("with"), dir.path().join("without"));
    let args = ["--tasks", "arc_challenge", "--limit", "2"];
    let extra: Vec<&str> = args
        .iter()
        .copied()
        .chain(["--adapter", path(&adapter)])
        .collect();
    ok(&score(&base, &with, &extra));
    ok(&score(&base, &without, &args));
    let a = read_json(&with.join("results.json"));
    let b = read_json(&without.join("results.json"));
    assert_eq!(a["model"]["sha256"], b["model"]["sha256"]);
    assert_eq!(a["model"]["adapter"]["path"], path(&adapter));
    let hash = dtm_model::checkpoint::fingerprint(&adapter).unwrap();
    assert_eq!(a["model"]["adapter"]["sha256"], hash.as_str());
    assert_ne!(a["model"]["adapter"]["sha256"], a["model"]["sha256"]);
    assert!(b["model"]["adapter"].is_null());
    // The adapter is really used: the log-likelihoods differ.
    let samples = |d: &Path| std::fs::read_to_string(d.join("samples.jsonl")).unwrap();
    assert_ne!(samples(&with), samples(&without));

    // Resuming a run with another adapter is refused: the results would mix two models.
    let other = dir.path().join("other-adapter");
    random_adapter(&other);
    let extra: Vec<&str> = args
        .iter()
        .copied()
        .chain(["--adapter", path(&other)])
        .collect();
    let o = score(&base, &with, &extra);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("adapter"), "{}", stderr(&o));
}

/// The single `error:` line of a failed command (warnings aside).
fn error_line(o: &Output) -> String {
    assert!(!o.status.success(), "expected failure");
    let err = stderr(o);
    assert!(!err.contains("panicked"), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    lines[0].to_owned()
}

#[test]
fn a_wrong_or_incomplete_adapter_is_one_error_naming_the_file() {
    let base = tiny_model("llama");
    let dir = tempfile::tempdir().unwrap();
    // An adapter trained on a wider model (hidden 48): shapes do not fit.
    let wide = dir.path().join("wide");
    let mut adapter = PeftAdapter {
        config: AdapterConfig::lora(4, 8.0, 0.0, &["q_proj".to_owned()], "other"),
        weights: Default::default(),
    };
    let mut rng = Rng(7);
    adapter.weights.insert(
        "model.layers.0.self_attn.q_proj".into(),
        (rng.matrix(4, 48), rng.matrix(48, 4)),
    );
    adapter.save(&wide).unwrap();
    // A folder whose weights file is missing.
    let incomplete = dir.path().join("incomplete");
    std::fs::create_dir(&incomplete).unwrap();
    std::fs::copy(
        fixture_adapter().join("adapter_config.json"),
        incomplete.join("adapter_config.json"),
    )
    .unwrap();
    let cases = [
        (&wide, "model.layers.0.self_attn.q_proj"),
        (&incomplete, "cannot read"),
    ];
    for (adapter, problem) in cases {
        let file = adapter.join("adapter_model.safetensors");
        let out = dir.path().join("never-written");
        let runs = [
            run(
                &harness_bin(),
                &[
                    "logprobs",
                    "--model",
                    path(&base),
                    "--adapter",
                    path(adapter),
                    "--text",
                    "hi",
                ],
            ),
            run(
                &trainer_bin(),
                &[
                    "export",
                    "--model",
                    path(&base),
                    "--adapter",
                    path(adapter),
                    "--output",
                    path(&out),
                ],
            ),
        ];
        for o in &runs {
            let line = error_line(o);
            assert!(
                line.starts_with(&format!("error: {}: ", file.display())),
                "{line}"
            );
            assert!(line.contains(problem), "{line}");
        }
        assert!(!out.exists());
    }
}
