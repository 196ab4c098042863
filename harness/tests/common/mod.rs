//! Locating shared test inputs: the repository's sibling `shared/` folder and the model cache.

#![allow(dead_code)]

use std::path::PathBuf;

/// `../shared` beside the checkout (override with `DTM_SHARED`).
pub fn shared() -> PathBuf {
    std::env::var_os("DTM_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared"))
}

pub fn tiny_model(name: &str) -> PathBuf {
    shared().join("models/tiny").join(name)
}

pub fn reference(name: &str) -> serde_json::Value {
    let path = shared().join("fixtures").join(name).join("reference.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// The real SmolLM2 checkpoint fetched by `scripts/fetch-models.sh`. Its absence fails the test
/// loudly: CI runs the set-up, so a missing model is a broken set-up, not a reason to skip.
pub fn smollm2_gguf() -> PathBuf {
    let cache = std::env::var_os("DTM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/dtm")
        });
    let path = cache.join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        path.exists(),
        "\n\n*** The real-model test needs {} — run `scripts/fetch-models.sh` first (set DTM_CACHE to use another cache). ***\n",
        path.display()
    );
    path
}
