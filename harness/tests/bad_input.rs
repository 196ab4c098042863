//! Bad checkpoints end with one clear error line that names the file and the problem.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn harness(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_harness"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A writable copy of a tiny checkpoint.
fn copy_tiny(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join(name);
    std::fs::create_dir(&dest).unwrap();
    for entry in std::fs::read_dir(common::tiny_model(name)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dest.join(entry.file_name())).unwrap();
    }
    (dir, dest)
}

fn set_permissions_writable(path: &Path) {
    let mut p = std::fs::metadata(path).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    p.set_readonly(false);
    std::fs::set_permissions(path, p).unwrap();
}

/// Runs `harness logprobs` on `model` and returns its single error line.
fn error_line(model: &Path) -> String {
    let (ok, _, stderr) = harness(&[
        "logprobs",
        "--model",
        model.to_str().unwrap(),
        "--text",
        "hello",
    ]);
    assert!(!ok, "expected failure, stderr: {stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "no panic: {stderr}"
    );
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.starts_with("warning:"))
        .collect();
    assert_eq!(lines.len(), 1, "one error line: {stderr}");
    lines[0].to_owned()
}

#[test]
fn missing_checkpoint_is_named() {
    let line = error_line(Path::new("/nonexistent/model"));
    assert!(
        line.contains("/nonexistent/model") && line.contains("no such file"),
        "{line}"
    );
}

#[test]
fn truncated_safetensors_is_named() {
    let (_dir, model) = copy_tiny("llama");
    let weights = model.join("model.safetensors");
    set_permissions_writable(&weights);
    let len = std::fs::metadata(&weights).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&weights)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let line = error_line(&model);
    assert!(
        line.contains("model.safetensors") && line.contains("truncated"),
        "{line}"
    );
}

#[test]
fn config_missing_a_field_is_named() {
    let (_dir, model) = copy_tiny("qwen2");
    let config = model.join("config.json");
    set_permissions_writable(&config);
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    json.as_object_mut().unwrap().remove("intermediate_size");
    std::fs::write(&config, json.to_string()).unwrap();
    let line = error_line(&model);
    assert!(
        line.contains("config.json") && line.contains("missing field `intermediate_size`"),
        "{line}"
    );
}

#[test]
fn unsupported_architecture_is_named() {
    let (_dir, model) = copy_tiny("llama");
    let config = model.join("config.json");
    set_permissions_writable(&config);
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("\"llama\"", "\"gpt_neox\"");
    std::fs::write(&config, text).unwrap();
    let line = error_line(&model);
    assert!(
        line.contains("unsupported architecture `gpt_neox`"),
        "{line}"
    );
}

#[test]
fn tokenizer_that_does_not_fit_the_vocabulary_is_named() {
    let (_dir, model) = copy_tiny("llama");
    let config = model.join("config.json");
    set_permissions_writable(&config);
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("\"vocab_size\": 49152", "\"vocab_size\": 32000");
    std::fs::write(&config, text).unwrap();
    let line = error_line(&model);
    assert!(
        line.contains("tokenizer.json") && line.contains("49152") && line.contains("32000"),
        "{line}"
    );
}

#[test]
fn truncated_gguf_is_named() {
    let real = common::smollm2_gguf();
    let dir = tempfile::tempdir().unwrap();
    let cut = dir.path().join("cut.gguf");
    let bytes = std::fs::read(&real).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() / 3]).unwrap();
    let line = error_line(&cut);
    assert!(
        line.contains("cut.gguf") && line.contains("truncated GGUF file"),
        "{line}"
    );
    std::fs::write(&cut, &bytes[..1000]).unwrap();
    let line = error_line(&cut);
    assert!(
        line.contains("cut.gguf") && line.contains("not a readable GGUF file"),
        "{line}"
    );
}

#[test]
fn logprobs_cli_prints_the_documented_json() {
    let model = common::tiny_model("llama");
    let (ok, stdout, stderr) = harness(&[
        "logprobs",
        "--model",
        model.to_str().unwrap(),
        "--text",
        "The capital of France is",
    ]);
    assert!(ok, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let ids = v["ids"].as_array().unwrap();
    let tokens = v["tokens"].as_array().unwrap();
    assert_eq!(ids.len(), tokens.len());
    assert!(tokens[0]["logprob"].is_null());
    assert!(tokens[1]["logprob"].as_f64().unwrap() < 0.0);
    assert_eq!(tokens[0]["top5"].as_array().unwrap().len(), 5);
}

#[test]
fn loglikelihood_and_generate_clis_print_json_lines() {
    let model = common::tiny_model("llama");
    let dir = tempfile::tempdir().unwrap();
    let requests = dir.path().join("requests.jsonl");
    std::fs::write(
        &requests,
        "{\"context\": \"Question: What is the capital of France?\\nAnswer:\", \"continuation\": \" Paris\"}\n\n{\"context\": \"I can't believe it's un\", \"continuation\": \"believable!\"}\n",
    )
    .unwrap();
    let (ok, stdout, stderr) = harness(&[
        "loglikelihood",
        "--model",
        model.to_str().unwrap(),
        "--requests",
        requests.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["continuation_ids"], serde_json::json!([7042]));
    assert!(lines[0]["logprob"].as_f64().unwrap() < 0.0 && lines[0]["is_greedy"].is_boolean());

    std::fs::write(&requests, "{\"context\": \"x\"}\n").unwrap();
    let (ok, _, stderr) = harness(&[
        "loglikelihood",
        "--model",
        model.to_str().unwrap(),
        "--requests",
        requests.to_str().unwrap(),
    ]);
    assert!(!ok && stderr.contains("requests.jsonl:1:"), "{stderr}");

    let (ok, stdout, stderr) = harness(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--text",
        "The capital of France is",
        "--max-new-tokens",
        "5",
    ]);
    assert!(ok, "{stderr}");
    let g: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert!(g["ids"].as_array().unwrap().len() <= 5 && g["text"].is_string());
}
