//! `trainer dtm` and `trainer soup` end to end on the tiny llama: the merged model is the base
//! plus the average of the sub-models' ΔW (computed by hand here from their adapters), stages
//! resume without retraining, `--only` trains one sub-model, and changed settings are refused.

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{Device, Tensor};

fn shared() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared")
}

fn trainer(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn data(dir: &Path) -> PathBuf {
    let out = dir.join("mix.jsonl");
    let data_dir = shared().join("data");
    let (ok, err) = trainer(&[
        "data",
        "mix",
        "--counts",
        "alpaca_gpt4=12",
        "--seed",
        "5",
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    out
}

const TRAIN: [&str; 12] = [
    "--batch-size",
    "4",
    "--max-len",
    "80",
    "--epochs",
    "1",
    "--warmup-steps",
    "1",
    "--lr",
    "1e-2",
    "--lora-dropout",
    "0",
];

fn tensors(path: &Path) -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

/// (alpha/r)·B·A of one module, from an adapter folder.
fn delta(adapter: &Path, module: &str) -> Tensor {
    let t = tensors(&adapter.join("adapter_model.safetensors"));
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(adapter.join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    let scale = config["lora_alpha"].as_f64().unwrap() / config["r"].as_f64().unwrap();
    let la = &t[&format!("base_model.model.{module}.lora_A.weight")];
    let lb = &t[&format!("base_model.model.{module}.lora_B.weight")];
    (lb.matmul(la).unwrap() * scale).unwrap()
}

/// W + mean over adapters of (alpha/r)·B·A for one module, from the adapter files.
fn expected_weight(base: &Tensor, adapters: &[PathBuf], module: &str) -> Tensor {
    let sum = adapters
        .iter()
        .map(|a| delta(a, module))
        .reduce(|s, d| (s + d).unwrap())
        .unwrap();
    (base + (sum / adapters.len() as f64).unwrap()).unwrap()
}

#[test]
fn dtm_merges_the_submodels_and_resumes_stage_by_stage() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path());
    let out = dir.path().join("dtm");
    let model = shared().join("models/tiny/llama");
    let mut args: Vec<&str> = vec![
        "dtm",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--k",
        "2",
        "--output",
        out.to_str().unwrap(),
    ];
    args.extend(TRAIN);

    // Sub-model 2 alone (an array-job task), then the whole pipeline: sub-model 2 is not retrained.
    let mut only: Vec<&str> = args.clone();
    only.extend(["--only", "2"]);
    let (ok, err) = trainer(&only);
    assert!(ok, "{err}");
    assert!(!out.join("submodels/portion-1").exists());
    assert!(!out.join("merged").exists());
    let log2 = out.join("submodels/portion-2/train_log.jsonl");
    let before = std::fs::metadata(&log2).unwrap().modified().unwrap();
    let (ok, err) = trainer(&args);
    assert!(ok, "{err}");
    assert!(err.contains("sub-model 2/2: finished earlier"), "{err}");
    assert_eq!(
        std::fs::metadata(&log2).unwrap().modified().unwrap(),
        before
    );

    // Portions: a partition of the input (6 + 6 records).
    let lines = |p: PathBuf| std::fs::read_to_string(p).unwrap().lines().count();
    assert_eq!(lines(out.join("disperse/portion-1.jsonl")), 6);
    assert_eq!(lines(out.join("disperse/portion-2.jsonl")), 6);

    // Same LoRA initialisation: both sub-models were trained from --seed's init, so their
    // train configs differ only in the data.
    let cfg = |j: usize| -> serde_json::Value {
        serde_json::from_str(
            &std::fs::read_to_string(out.join(format!("submodels/portion-{j}/train_config.json")))
                .unwrap(),
        )
        .unwrap()
    };
    let (mut c1, mut c2) = (cfg(1), cfg(2));
    assert_ne!(c1["data"], c2["data"]);
    c1["data"] = serde_json::Value::Null;
    c2["data"] = serde_json::Value::Null;
    assert_eq!(c1, c2);

    // The merged model: base + mean ΔW on adapted layers, the base elsewhere.
    let merged = tensors(&out.join("merged/model.safetensors"));
    let base = tensors(&model.join("model.safetensors"));
    let adapters: Vec<PathBuf> = (1..=2)
        .map(|j| out.join(format!("submodels/portion-{j}/adapter")))
        .collect();
    for module in [
        "model.layers.0.mlp.gate_proj",
        "model.layers.1.mlp.down_proj",
    ] {
        let name = format!("{module}.weight");
        let expected = expected_weight(&base[&name], &adapters, module);
        let d = max_diff(&merged[&name], &expected);
        assert!(d < 1e-6, "{module}: {d}");
        assert!(
            max_diff(&merged[&name], &base[&name]) > 1e-5,
            "{module} unchanged"
        );
    }
    let q = "model.layers.0.self_attn.q_proj.weight";
    assert_eq!(max_diff(&merged[q], &base[q]), 0.0);

    // The merged folder is a model harness/trainer can load.
    dtm_model::checkpoint::load(&out.join("merged"), candle_core::DType::F32, &Device::Cpu)
        .unwrap();

    // Changed training settings are refused, naming what changed.
    let mut changed = args.clone();
    let lr = changed.iter().position(|a| *a == "--lr").unwrap();
    changed[lr + 1] = "5e-3";
    let (ok, err) = trainer(&changed);
    assert!(!ok);
    assert!(
        err.contains("other settings") && err.contains("lr"),
        "{err}"
    );
}

#[test]
fn uniform_soup_averages_runs_that_differ_in_lr_and_seed() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path());
    let out = dir.path().join("soup");
    let model = shared().join("models/tiny/llama");
    let mut args: Vec<&str> = vec![
        "soup",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--runs",
        "lr=1e-2,seed=1;lr=5e-3,seed=2",
        "--output",
        out.to_str().unwrap(),
    ];
    args.extend(TRAIN);
    let (ok, err) = trainer(&args);
    assert!(ok, "{err}");
    let cfg = |i: usize| -> serde_json::Value {
        serde_json::from_str(
            &std::fs::read_to_string(out.join(format!("run-{i}/train_config.json"))).unwrap(),
        )
        .unwrap()
    };
    assert_eq!(
        (cfg(1)["lr"].as_f64(), cfg(1)["seed"].as_u64()),
        (Some(1e-2), Some(1))
    );
    assert_eq!(
        (cfg(2)["lr"].as_f64(), cfg(2)["seed"].as_u64()),
        (Some(5e-3), Some(2))
    );
    let merged = tensors(&out.join("merged/model.safetensors"));
    let base = tensors(&model.join("model.safetensors"));
    let adapters: Vec<PathBuf> = (1..=2)
        .map(|i| out.join(format!("run-{i}/adapter")))
        .collect();
    let module = "model.layers.1.mlp.up_proj";
    let name = format!("{module}.weight");
    let d = max_diff(
        &merged[&name],
        &expected_weight(&base[&name], &adapters, module),
    );
    assert!(d < 1e-6, "{d}");
    let (ok, err) = trainer(&[
        "soup", "--model", "m", "--data", "d", "--runs", "lr=1", "--output", "o",
    ]);
    assert!(!ok && err.contains("at least two"), "{err}");
}

#[test]
fn dtm_fisher_merge_weighs_each_submodel_by_its_fisher_on_its_own_portion() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path());
    let out = dir.path().join("dtm");
    let model = shared().join("models/tiny/llama");
    let mut args: Vec<&str> = vec![
        "dtm",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--k",
        "2",
        "--merge",
        "fisher",
        "--fisher-samples",
        "4",
        "--output",
        out.to_str().unwrap(),
    ];
    args.extend(TRAIN);
    let (ok, err) = trainer(&args);
    assert!(ok, "{err}");

    // Σ FᵢWᵢ / Σ Fᵢ (F floored at 1e-6) per entry of each adapted matrix, by hand from the
    // sub-models' adapters and Fisher files; the Fisher files name the adapter and 4 sequences.
    let merged = tensors(&out.join("merged/model.safetensors"));
    let base = tensors(&model.join("model.safetensors"));
    let sub = |j: usize| out.join(format!("submodels/portion-{j}"));
    for j in 1..=2 {
        let file = sub(j).join("fisher.safetensors");
        let buffer = std::fs::read(&file).unwrap();
        let (_, meta) = safetensors::SafeTensors::read_metadata(&buffer).unwrap();
        let meta = meta.metadata().clone().unwrap();
        assert_eq!(meta["sequences"], "4");
        assert!(
            meta["adapter"].ends_with(&format!("portion-{j}/adapter")),
            "{meta:?}"
        );
    }
    for module in [
        "model.layers.0.mlp.gate_proj",
        "model.layers.1.mlp.down_proj",
    ] {
        let name = format!("{module}.weight");
        let (mut num, mut den): (Option<Tensor>, Option<Tensor>) = (None, None);
        for j in 1..=2 {
            let f = tensors(&sub(j).join("fisher.safetensors"))[&name]
                .clamp(1e-6f32, f32::MAX)
                .unwrap();
            let w = (&base[&name] + delta(&sub(j).join("adapter"), module)).unwrap();
            let fw = (&f * &w).unwrap();
            num = Some(num.map_or(fw.clone(), |n| (n + &fw).unwrap()));
            den = Some(den.map_or(f.clone(), |d| (d + &f).unwrap()));
        }
        let expected = (num.unwrap() / den.unwrap()).unwrap();
        let d = max_diff(&merged[&name], &expected);
        assert!(d < 1e-5, "{module}: {d}");
        // Not the plain average: the Fisher weights matter.
        let sub_adapters: Vec<PathBuf> = (1..=2).map(|j| sub(j).join("adapter")).collect();
        let mean = expected_weight(&base[&name], &sub_adapters, module);
        assert!(
            max_diff(&merged[&name], &mean) > 1e-6,
            "{module}: equals the plain mean"
        );
    }
    let q = "model.layers.0.self_attn.q_proj.weight";
    assert_eq!(max_diff(&merged[q], &base[q]), 0.0);

    // Run again: nothing is recomputed; a changed Fisher setting is refused by name.
    let stamp = std::fs::metadata(sub(1).join("fisher.safetensors"))
        .unwrap()
        .modified()
        .unwrap();
    let (ok, err) = trainer(&args);
    assert!(ok, "{err}");
    assert!(err.contains("finished earlier"), "{err}");
    assert_eq!(
        std::fs::metadata(sub(1).join("fisher.safetensors"))
            .unwrap()
            .modified()
            .unwrap(),
        stamp
    );
    let mut changed = args.clone();
    let n = changed
        .iter()
        .position(|a| *a == "--fisher-samples")
        .unwrap();
    changed[n + 1] = "5";
    let (ok, err) = trainer(&changed);
    assert!(!ok && err.contains("samples"), "{err}");
    let (ok, err) = trainer(&[
        "dtm",
        "--model",
        "m",
        "--data",
        "d",
        "--fisher-samples",
        "2",
        "--output",
        "o",
    ]);
    assert!(
        !ok && err.contains("only applies to --merge fisher"),
        "{err}"
    );
}
