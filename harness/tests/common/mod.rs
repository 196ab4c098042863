//! Locating shared test inputs: the repository's sibling `shared/` folder and the model cache.

#![allow(dead_code)]

pub mod gguf;

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

/// A writable copy of a tiny checkpoint folder.
pub fn copy_tiny(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join(name);
    std::fs::create_dir(&dest).unwrap();
    for entry in std::fs::read_dir(tiny_model(name)).unwrap() {
        let entry = entry.unwrap();
        let to = dest.join(entry.file_name());
        std::fs::copy(entry.path(), &to).unwrap();
        let mut p = std::fs::metadata(&to).unwrap().permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        p.set_readonly(false);
        std::fs::set_permissions(&to, p).unwrap();
    }
    (dir, dest)
}

/// The tiny llama with every weight of its final norm set to NaN: a broken checkpoint whose
/// every logit is NaN.
pub fn nan_checkpoint() -> (tempfile::TempDir, PathBuf) {
    use candle_core::{Device, Tensor};
    let (dir, model) = copy_tiny("llama");
    let file = model.join("model.safetensors");
    let mut weights = candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
    let norm = weights.get("model.norm.weight").unwrap();
    let nan = Tensor::full(f32::NAN, norm.shape(), &Device::Cpu).unwrap();
    weights.insert("model.norm.weight".into(), nan);
    candle_core::safetensors::save(&weights, &file).unwrap();
    (dir, model)
}

/// The tiny llama with its BOS and EOS removed from the config: a tokenizer with neither.
pub fn no_special_tokens_checkpoint() -> (tempfile::TempDir, PathBuf) {
    let (dir, model) = copy_tiny("llama");
    for name in ["config.json", "generation_config.json"] {
        let path = model.join(name);
        if !path.exists() {
            continue;
        }
        let mut json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let o = json.as_object_mut().unwrap();
        o.remove("bos_token_id");
        o.remove("eos_token_id");
        std::fs::write(&path, json.to_string()).unwrap();
    }
    (dir, model)
}
