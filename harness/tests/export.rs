//! Writing checkpoints as Hugging Face folders (`harness convert`, the library behind `trainer
//! export`): the config survives the round trip, the converted SmolLM2 scores exactly like its
//! GGUF file, merged weights are `W + s·B·A` computed by hand, shards and bf16 load, and a failed
//! or refused export leaves nothing behind.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{DType, Device, Tensor};
use serde_json::Value;

use dtm_harness::checkpoint::export::hf_config::config_json;
use dtm_harness::checkpoint::export::{self, ExportError, ExportOptions};
use dtm_harness::checkpoint::{self, gguf, LoadedModel};
use dtm_harness::engine::{Engine, EngineOptions};
use dtm_harness::model::ModelConfig;
use dtm_model::adapter::{AdapterConfig, PeftAdapter};

fn read_config(path: &Path) -> ModelConfig {
    let text = std::fs::read_to_string(path).unwrap();
    ModelConfig::from_hf_json(&text, &path.display().to_string()).unwrap()
}

/// ModelConfig → config.json → ModelConfig is the identity.
fn assert_round_trip(config: &ModelConfig, what: &str) {
    let json = config_json(config, DType::F32).unwrap_or_else(|e| panic!("{what}: {e}"));
    let back = ModelConfig::from_hf_json(&json.to_string(), "written config.json")
        .unwrap_or_else(|e| panic!("{what}: {e}\n{json:#}"));
    assert_eq!(&back, config, "{what}: {json:#}");
}

#[test]
fn config_round_trips_for_the_tiny_models_and_smollm2() {
    for name in ["llama", "qwen2", "gemma3"] {
        let config = read_config(&common::tiny_model(name).join("config.json"));
        assert_round_trip(&config, name);
    }
    let smol = gguf::open(&common::smollm2_gguf()).unwrap();
    assert_round_trip(&smol.config, "SmolLM2 GGUF");
    let json = config_json(&smol.config, DType::BF16).unwrap();
    assert_eq!(json["model_type"], "llama");
    assert_eq!(json["architectures"][0], "LlamaForCausalLM");
    assert_eq!(json["num_hidden_layers"], 30);
    assert_eq!(json["tie_word_embeddings"], true);
    assert_eq!(json["dtype"], "bfloat16");
}

/// Settings the tiny models do not have: rope scaling, sliding windows of Mistral and Qwen2,
/// Gemma's soft-capping and per-type rope.
#[test]
fn config_round_trips_for_every_architecture_setting() {
    let base = r#""hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
        "num_hidden_layers": 4, "intermediate_size": 128, "vocab_size": 100, "rms_norm_eps": 1e-6,
        "max_position_embeddings": 4096, "bos_token_id": 1, "eos_token_id": [2, 7]"#;
    let cases = [
        (
            "llama3 rope",
            r#""model_type": "llama", "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0,
               "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}"#,
        ),
        (
            "linear rope, attention bias",
            r#""model_type": "llama", "attention_bias": true, "rope_parameters": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.5}"#,
        ),
        (
            "mistral window",
            r#""model_type": "mistral", "sliding_window": 128, "rope_theta": 1000000.0"#,
        ),
        (
            "mistral no window",
            r#""model_type": "mistral", "sliding_window": null"#,
        ),
        (
            "qwen2 window on the last layers",
            r#""model_type": "qwen2", "use_sliding_window": true, "sliding_window": 32, "max_window_layers": 2"#,
        ),
        (
            "gemma3 pattern, softcaps",
            r#""model_type": "gemma3_text", "sliding_window": 16, "sliding_window_pattern": 2,
               "query_pre_attn_scalar": 24, "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0,
               "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0,
               "rope_scaling": {"rope_type": "linear", "factor": 8.0}"#,
        ),
    ];
    for (what, fields) in cases {
        let config = ModelConfig::from_hf_json(&format!("{{{base}, {fields}}}"), what).unwrap();
        assert_round_trip(&config, what);
    }
    // The cases exercise what they claim.
    let gemma = ModelConfig::from_hf_json(&format!("{{{base}, {}}}", cases[5].1), "g").unwrap();
    assert_eq!(gemma.layers[0].sliding_window, Some(16));
    assert_eq!(gemma.layers[1].sliding_window, None);
    assert_ne!(gemma.layers[0].rope, gemma.layers[1].rope);
    let qwen = ModelConfig::from_hf_json(&format!("{{{base}, {}}}", cases[4].1), "q").unwrap();
    assert_eq!(qwen.layers[1].sliding_window, None);
    assert_eq!(qwen.layers[2].sliding_window, Some(32));
}

#[test]
fn configs_transformers_cannot_state_are_refused() {
    let mut llama = read_config(&common::tiny_model("llama").join("config.json"));
    llama.layers[1].sliding_window = Some(8);
    let e = config_json(&llama, DType::F32).unwrap_err();
    assert!(e.to_string().contains("Llama has no sliding-window"), "{e}");
    let mut qwen = read_config(&common::tiny_model("qwen2").join("config.json"));
    qwen.qkv_bias = false;
    assert!(config_json(&qwen, DType::F32).is_err());
    let mut gemma = read_config(&common::tiny_model("gemma3").join("config.json"));
    gemma.norm_style = dtm_harness::model::config::NormStyle::Scale;
    assert!(config_json(&gemma, DType::F32).is_err());
}

fn harness(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_harness"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(o: &std::process::Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn logprobs(model: &Path, text: &str) -> Value {
    let out = ok(&harness(&[
        "logprobs",
        "--model",
        model.to_str().unwrap(),
        "--text",
        text,
    ]));
    serde_json::from_str(&out).unwrap()
}

const PROMPTS: [&str; 3] = [
    "The capital of France is Paris, and the capital of Italy is",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))",
    "Ünïcødé: 日本語のテキスト, Ελληνικά, 12345 + 678 = 13023 🙂",
];

#[test]
fn converted_smollm2_scores_exactly_like_its_gguf_file() {
    let gguf = common::smollm2_gguf();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("smollm2");
    let o = harness(&[
        "convert",
        "--model",
        gguf.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    ok(&o);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("writing model.safetensors (1/1)"),
        "{stderr}"
    );
    let mut files: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "config.json",
            "generation_config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json"
        ]
    );
    for text in PROMPTS {
        let (a, b) = (logprobs(&gguf, text), logprobs(&out, text));
        assert_eq!(a["ids"], b["ids"], "{text}");
        assert!(a["ids"].as_array().unwrap().len() > 10);
        for (x, y) in a["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .zip(b["tokens"].as_array().unwrap())
        {
            let (x, y) = (x["logprob"].as_f64(), y["logprob"].as_f64());
            match (x, y) {
                (Some(x), Some(y)) => assert!((x - y).abs() <= 1e-6, "{text}: {x} vs {y}"),
                (x, y) => assert_eq!(x, y),
            }
        }
    }
    // The special tokens the engine uses come back the same.
    let load = |p: &Path| checkpoint::load(p, DType::F32, &Device::Cpu).unwrap();
    let (a, b) = (load(&gguf), load(&out));
    assert_eq!(a.tokenizer.bos_token_id(), b.tokenizer.bos_token_id());
    assert_eq!(a.tokenizer.eos_token_ids(), b.tokenizer.eos_token_ids());
    assert_eq!(a.tokenizer.adds_bos(), b.tokenizer.adds_bos());
    assert_eq!(a.config(), b.config());
}

fn load(path: &Path) -> LoadedModel {
    checkpoint::load(path, DType::F32, &Device::Cpu).unwrap_or_else(|e| panic!("{e}"))
}

fn load_with(path: &Path, adapter: &Path) -> LoadedModel {
    checkpoint::load_with_adapter(path, Some(adapter), DType::F32, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Per-token log-probabilities of every prompt, concatenated.
fn token_logprobs(model: &LoadedModel) -> Vec<f64> {
    let mut engine = Engine::new(model, EngineOptions::default());
    PROMPTS
        .iter()
        .flat_map(|p| {
            engine
                .inspect(p, 1)
                .unwrap()
                .tokens
                .into_iter()
                .filter_map(|t| t.logprob)
        })
        .collect()
}

fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

fn tensors(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

fn matrix(t: &Tensor) -> Vec<Vec<f32>> {
    t.to_dtype(DType::F32).unwrap().to_vec2().unwrap()
}

/// A deterministic, non-trivial `[rows, cols]` matrix.
fn pattern(rows: usize, cols: usize, seed: f32) -> Tensor {
    let v: Vec<f32> = (0..rows * cols)
        .map(|i| ((i as f32 * 0.37 + seed).sin()) * 0.05)
        .collect();
    Tensor::from_vec(v, (rows, cols), &Device::Cpu).unwrap()
}

/// An adapter on the tiny llama's layer-0 q_proj and layer-1 down_proj, r = 2, alpha = 3.
fn write_adapter(dir: &Path) -> PeftAdapter {
    let targets = ["q_proj".to_owned(), "down_proj".to_owned()];
    let mut adapter = PeftAdapter {
        config: AdapterConfig::lora(2, 3.0, 0.0, &targets, "tiny-llama"),
        weights: Default::default(),
    };
    adapter.weights.insert(
        "model.layers.0.self_attn.q_proj".into(),
        (pattern(2, 32, 0.1), pattern(32, 2, 0.7)),
    );
    adapter.weights.insert(
        "model.layers.1.mlp.down_proj".into(),
        (pattern(2, 64, 1.3), pattern(32, 2, 2.1)),
    );
    adapter.save(dir).unwrap();
    adapter
}

#[test]
fn merged_weights_are_w_plus_scale_b_a_computed_by_hand() {
    let dir = tempfile::tempdir().unwrap();
    let adapter_dir = dir.path().join("adapter");
    let adapter = write_adapter(&adapter_dir);
    let base = common::tiny_model("llama");
    let out = dir.path().join("merged");
    let summary = export::export(
        &base,
        Some(&adapter_dir),
        &out,
        &ExportOptions::default(),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(summary.merged, 2);
    let before = tensors(&base.join("model.safetensors"));
    let after = tensors(&out.join("model.safetensors"));
    assert_eq!(before.len(), after.len());
    let scale = 3.0 / 2.0;
    for (module, (a, b)) in &adapter.weights {
        let name = format!("{module}.weight");
        let (w, a, b) = (matrix(&before[&name]), matrix(a), matrix(b));
        let merged = matrix(&after[&name]);
        let mut worst = 0.0f64;
        for (i, row) in w.iter().enumerate() {
            for (j, &wij) in row.iter().enumerate() {
                let ba: f64 = (0..2).map(|k| b[i][k] as f64 * a[k][j] as f64).sum();
                let want = wij as f64 + scale * ba;
                worst = worst.max((merged[i][j] as f64 - want).abs());
            }
        }
        assert!(worst < 1e-6, "{name}: off by {worst}");
        assert!(
            w.iter()
                .flatten()
                .zip(merged.iter().flatten())
                .any(|(x, y)| (x - y).abs() > 1e-3),
            "{name} changed"
        );
    }
    for (name, t) in &before {
        if !adapter
            .weights
            .keys()
            .any(|m| name == &format!("{m}.weight"))
        {
            let (x, y) = (t.flatten_all().unwrap(), after[name].flatten_all().unwrap());
            assert_eq!(
                x.to_vec1::<f32>().unwrap(),
                y.to_vec1::<f32>().unwrap(),
                "{name} untouched"
            );
        }
    }
    // HF source: config and tokenizer files are carried over.
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["model_type"], "llama");
    assert_eq!(
        std::fs::read(out.join("tokenizer.json")).unwrap(),
        std::fs::read(base.join("tokenizer.json")).unwrap()
    );
    // The merged folder runs like the base with the adapter attached.
    let attached = token_logprobs(&load_with(&base, &adapter_dir));
    let merged = token_logprobs(&load(&out));
    assert!(max_diff(&attached, &merged) < 1e-4);
    assert!(max_diff(&attached, &token_logprobs(&load(&base))) > 1e-3);
}

#[test]
fn big_exports_are_sharded_with_an_index_and_load_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let base = common::tiny_model("qwen2");
    let out = dir.path().join("sharded");
    let options = ExportOptions {
        max_shard_bytes: export::parse_size("3MB").unwrap(),
        ..ExportOptions::default()
    };
    let mut written = Vec::new();
    let summary = export::export(&base, None, &out, &options, &mut |p| {
        if let export::ExportProgress::Writing { file, .. } = p {
            written.push(file.to_owned());
        }
    })
    .unwrap();
    // 12.6 MB of weights: the two 6.3 MB embedding matrices each get a shard of their own.
    assert!(written.len() >= 3, "{written:?}");
    assert!(!out.join("model.safetensors").exists());
    let index: Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    let map = index["weight_map"].as_object().unwrap();
    assert_eq!(map.len(), summary.tensors);
    let mut total = 0;
    for file in &written {
        assert!(file.ends_with(&format!("-of-{:05}.safetensors", written.len())));
        let shard = tensors(&out.join(file));
        for (name, t) in &shard {
            assert_eq!(map[name], file.as_str());
            total += t.elem_count() * 4;
        }
    }
    assert_eq!(index["metadata"]["total_size"], total);
    assert_eq!(
        token_logprobs(&load(&base)),
        token_logprobs(&load(&out)),
        "same weights, same numbers"
    );
}

#[test]
fn bf16_exports_store_bf16_weights_and_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let base = common::tiny_model("gemma3");
    let out = dir.path().join("bf16");
    let options = ExportOptions {
        dtype: DType::BF16,
        ..ExportOptions::default()
    };
    export::export(&base, None, &out, &options, &mut |_| {}).unwrap();
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["dtype"], "bfloat16");
    assert_eq!(config["torch_dtype"], "bfloat16");
    assert_eq!(config["query_pre_attn_scalar"], 16, "the rest is kept");
    let before = tensors(&base.join("model.safetensors"));
    let after = tensors(&out.join("model.safetensors"));
    for (name, t) in &before {
        assert_eq!(after[name].dtype(), DType::BF16, "{name}");
        let want = t
            .to_dtype(DType::BF16)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let got = after[name].to_dtype(DType::F32).unwrap();
        assert_eq!(
            want.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            "{name}"
        );
    }
    let a = token_logprobs(&load(&base));
    let b = token_logprobs(&load(&out));
    assert!(max_diff(&a, &b) < 0.1, "bf16 weights, f32 compute");
}

fn leftovers(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(".export-")
        })
        .collect()
}

#[test]
fn refused_or_failed_exports_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let base = common::tiny_model("llama");
    // An adapter for a wider model: the failure names the adapter's file and the layer.
    let adapter_dir = dir.path().join("wide-adapter");
    let targets = ["gate_proj".to_owned()];
    let mut wide = PeftAdapter {
        config: AdapterConfig::lora(4, 8.0, 0.0, &targets, "other"),
        weights: Default::default(),
    };
    wide.weights.insert(
        "model.layers.0.mlp.gate_proj".into(),
        (pattern(4, 48, 0.0), pattern(96, 4, 1.0)),
    );
    wide.save(&adapter_dir).unwrap();
    let out = dir.path().join("out");
    let e = export::export(
        &base,
        Some(&adapter_dir),
        &out,
        &ExportOptions::default(),
        &mut |_| {},
    )
    .unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, ExportError::Read(_)), "{e:?}");
    assert!(
        text.starts_with(
            &adapter_dir
                .join("adapter_model.safetensors")
                .display()
                .to_string()
        ),
        "{text}"
    );
    assert!(text.contains("model.layers.0.mlp.gate_proj"), "{text}");
    assert!(!out.exists());
    assert!(leftovers(dir.path()).is_empty());

    // A folder with something in it is not overwritten unless asked.
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    let e = export::export(&base, None, &out, &ExportOptions::default(), &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("--overwrite"), "{e}");
    assert_eq!(
        std::fs::read_to_string(out.join("notes.txt")).unwrap(),
        "mine"
    );
    let options = ExportOptions {
        overwrite: true,
        ..ExportOptions::default()
    };
    export::export(&base, None, &out, &options, &mut |_| {}).unwrap();
    assert!(!out.join("notes.txt").exists());
    assert!(out.join("model.safetensors").exists());
    assert!(leftovers(dir.path()).is_empty());

    // Never over the source itself.
    let e = export::export(&out, None, &out, &options, &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("choose another output"), "{e}");
    assert!(out.join("model.safetensors").exists());
}

#[test]
fn shard_sizes_parse_like_transformers() {
    assert_eq!(export::parse_size("5GB").unwrap(), 5_000_000_000);
    assert_eq!(export::parse_size("500MB").unwrap(), 500_000_000);
    assert_eq!(export::parse_size("2GiB").unwrap(), 2 << 30);
    assert_eq!(export::parse_size("1234").unwrap(), 1234);
    assert!(export::parse_size("5 parsecs").is_err());
    assert!(export::parse_size("0").is_err());
}
