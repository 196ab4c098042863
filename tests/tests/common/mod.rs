//! Helpers for the end-to-end tests: the built `harness` binary, the shared data and models.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// `target/<profile>/`, where cargo put the harness binary and the plugin libraries.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>")
        .to_owned()
}

pub fn harness_bin() -> PathBuf {
    let bin = target_dir().join("harness");
    assert!(
        bin.exists(),
        "{} not built: run the tests with `cargo test --workspace --release`",
        bin.display()
    );
    bin
}

pub fn shared() -> PathBuf {
    std::env::var_os("DTM_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared"))
}

pub fn data_dir() -> PathBuf {
    shared().join("data")
}

pub fn tiny_model(name: &str) -> PathBuf {
    shared().join("models/tiny").join(name)
}

/// The real SmolLM2 fetched by `scripts/fetch-models.sh`; absent, the test fails and says so.
pub fn smollm2() -> PathBuf {
    let cache = std::env::var_os("DTM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/dtm")
        });
    let p = cache.join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.exists(),
        "\n\n*** {} is missing: run `scripts/fetch-models.sh` first. ***\n",
        p.display()
    );
    p
}

/// `harness score` with the shared data; returns the process output.
pub fn score(model: &Path, output: &Path, extra: &[&str]) -> Output {
    let mut cmd = Command::new(harness_bin());
    cmd.arg("score")
        .arg("--model")
        .arg(model)
        .arg("--output")
        .arg(output)
        .arg("--data-dir")
        .arg(data_dir())
        .args(extra);
    cmd.output().expect("run harness")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(
        &std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap()
}

pub fn read_samples(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("samples.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The `trainer` binary beside `harness`.
pub fn trainer_bin() -> PathBuf {
    let bin = target_dir().join("trainer");
    assert!(
        bin.exists(),
        "{} not built: run the tests with `cargo test --workspace --release`",
        bin.display()
    );
    bin
}
