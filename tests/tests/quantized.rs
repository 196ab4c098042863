//! `harness score --quantized`: the run says how its weights were run, and a folder of quantized
//! results is never resumed with float compute (or the other way round).

mod common;

use common::*;

#[test]
fn quantized_runs_are_recorded_and_never_mixed_with_float_runs() {
    let model = smollm2();
    let dir = tempfile::tempdir().unwrap();
    let (quantized, float) = (dir.path().join("q"), dir.path().join("f"));
    let args = [
        "--tasks",
        "gsm8k",
        "--limit",
        "1",
        "--num-fewshot",
        "0",
        "--max-new-tokens",
        "4",
        "--batch-size",
        "1",
    ];
    let with = |extra: &'static str| -> Vec<&'static str> {
        let mut a = args.to_vec();
        a.push(extra);
        a
    };
    let o = score(&model, &quantized, &with("--quantized"));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        read_json(&quantized.join("results.json"))["model"]["compute"],
        "gguf-quantized"
    );
    // The same folder with float compute: refused, nothing mixed in.
    let o = score(&model, &quantized, &args);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("other settings"), "{}", stderr(&o));

    let o = score(&model, &float, &args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        read_json(&float.join("results.json"))["model"]["compute"],
        "float"
    );
    let o = score(&model, &float, &with("--quantized"));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("other settings"), "{}", stderr(&o));
}

#[test]
fn quantized_compute_of_a_folder_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let o = score(
        &tiny_model("llama"),
        &dir.path().join("out"),
        &["--tasks", "gsm8k", "--limit", "1", "--quantized"],
    );
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("tiny/llama") && e.contains("GGUF"), "{e}");
}
