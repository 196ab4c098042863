//! What a third-party plugin author meets: plugins checked against their own descriptions (task
//! errors recorded in results.json), name clashes refused, per-task data folders, options checked
//! before the model loads, and the API crates packaged on their own.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

fn lib(name: &str) -> PathBuf {
    let p = target_dir().join(format!(
        "{}{name}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    ));
    assert!(p.exists(), "{} not built", p.display());
    p
}

fn liar(out: &Path, mode: &str, spoil: &str) -> Output {
    let liar = lib("dtm_test_plugin_liar");
    let option = format!("liar.mode={mode}");
    let mut cmd = Command::new(harness_bin());
    cmd.arg("score")
        .arg("--model")
        .arg(tiny_model("llama"))
        .arg("--output")
        .arg(out)
        .arg("--data-dir")
        .arg(data_dir())
        .arg("--plugin")
        .arg(liar)
        .args([
            "--tasks",
            "liar,arc_challenge",
            "--limit",
            "1",
            "--option",
            &option,
        ])
        .env("DTM_LIAR", spoil);
    cmd.output().unwrap()
}

#[test]
fn output_that_contradicts_the_description_fails_the_task_and_is_recorded() {
    for (mode, spoil, words) in [
        (
            "honest",
            "headline",
            "headline metric \"accuracy\" is not among the metrics",
        ),
        ("nan", "", "acc = NaN, not a finite number"),
        ("missing", "", "lacks metric \"acc\""),
        ("extra", "", "undeclared metric \"bonus\""),
        ("subtask", "", "subtask \"liar:hidden\""),
    ] {
        let out = tempfile::tempdir().unwrap();
        let o = liar(out.path(), mode, spoil);
        assert!(!o.status.success(), "{mode}: exit 0");
        let err = stderr(&o);
        assert!(err.contains(words), "{mode}: {err}");
        assert!(err.contains("1 of 2 tasks failed"), "{mode}: {err}");
        let results = read_json(&out.path().join("results.json"));
        let recorded = results["errors"]["liar"].as_str().unwrap_or_default();
        assert!(recorded.contains(words), "{mode}: {results}");
        assert!(results["tasks"].get("liar").is_none());
        assert_eq!(results["tasks"]["arc_challenge"]["n_items"], 1, "{mode}");
    }
    // An option without values is refused before anything runs, not a panic.
    let out = tempfile::tempdir().unwrap();
    let o = liar(out.path(), "honest", "empty_option");
    let err = stderr(&o);
    assert!(
        !o.status.success() && err.contains("option \"empty\" has no values"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    // The honest run passes.
    let out = tempfile::tempdir().unwrap();
    let o = liar(out.path(), "honest", "");
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn two_benchmarks_of_one_name_are_refused_and_a_builtin_is_shadowed_only_on_request() {
    let tasks = tempfile::tempdir().unwrap();
    std::fs::write(
        tasks.path().join("d.jsonl"),
        "{\"q\": \"1+1\", \"a\": \"2\"}\n",
    )
    .unwrap();
    let yaml = |name: &str| {
        format!("task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files: d.jsonl\ntest_split: train\ndoc_to_text: q\ndoc_to_target: a\n")
    };
    std::fs::write(tasks.path().join("t.yaml"), yaml("gsm8k")).unwrap();
    let list = |extra: &[&str]| {
        Command::new(harness_bin())
            .arg("list")
            .arg("--include-path")
            .arg(tasks.path())
            .args(extra)
            .output()
            .unwrap()
    };
    let o = list(&[]);
    let err = stderr(&o);
    assert!(!o.status.success(), "a built-in was shadowed silently");
    assert!(
        err.contains("built-in plugin") && err.contains("--allow-shadowing"),
        "{err}"
    );
    let o = list(&["--allow-shadowing"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("replaces the built-in plugin"));
    let text = String::from_utf8_lossy(&o.stdout);
    let gsm = text.lines().find(|l| l.starts_with("gsm8k ")).unwrap();
    assert!(gsm.contains("YAML task"), "{gsm}");
    // A YAML task and a plugin of one name: refused, both named.
    std::fs::write(tasks.path().join("t.yaml"), yaml("toy")).unwrap();
    let toy = lib("dtm_test_plugin_toy");
    let o = list(&["--plugin", toy.to_str().unwrap()]);
    let err = stderr(&o);
    assert!(
        !o.status.success()
            && err.contains("two benchmarks are named `toy`")
            && err.contains("t.yaml"),
        "{err}"
    );
}

#[test]
fn options_and_data_folders_are_checked_before_the_model_loads() {
    let out = tempfile::tempdir().unwrap();
    let model = Path::new("/nonexistent/model");
    for (args, words) in [
        (
            vec![
                "--tasks",
                "arc_challenge",
                "--option",
                "arc_challenge.nope=1",
            ],
            "unknown option \"nope\"",
        ),
        (
            vec!["--tasks", "arc_challenge", "--data-dir", "gsm8k=/tmp"],
            "--data-dir for `gsm8k`, which is not among --tasks",
        ),
        (
            vec![
                "--tasks",
                "arc_challenge",
                "--data-dir",
                "arc_challenge=/nonexistent",
            ],
            "/nonexistent is not a folder",
        ),
    ] {
        let o = score(model, out.path(), &args);
        let err = stderr(&o);
        assert!(
            !o.status.success() && err.contains(words),
            "{args:?}: {err}"
        );
        assert!(!err.contains("loading /nonexistent"), "{err}");
    }
}

#[test]
fn list_needs_no_data_and_shows_options() {
    let toy = lib("dtm_test_plugin_toy");
    let o = Command::new(harness_bin())
        .args(["list", "--data-dir", "/nonexistent", "--plugin"])
        .arg(&toy)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    let line = text.lines().find(|l| l.starts_with("toy ")).unwrap();
    assert!(line.contains("options: mode=x|y"), "{line}");
    let arc = text
        .lines()
        .find(|l| l.starts_with("arc_challenge "))
        .unwrap();
    assert!(arc.contains("no data"), "{arc}");
}

/// `dtm-plugin-api` and `dtm-bench-common` package on their own (no workspace inheritance, every
/// dependency versioned), at one version whose major is the ABI version.
#[test]
fn the_api_crates_package_on_their_own() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = tempfile::tempdir().unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let o = Command::new(cargo)
        .current_dir(&root)
        .args([
            "package",
            "--no-verify",
            "--offline",
            "--allow-dirty",
            "-p",
            "dtm-plugin-api",
            "-p",
            "dtm-bench-common",
        ])
        .env("CARGO_TARGET_DIR", target.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    for name in ["dtm-plugin-api", "dtm-bench-common"] {
        let krate = target.path().join(format!("package/{name}-1.0.0.crate"));
        assert!(krate.exists(), "{} missing", krate.display());
        let manifest = std::fs::read_to_string(root.join(match name {
            "dtm-plugin-api" => "benchmarks/api/Cargo.toml",
            _ => "benchmarks/common/Cargo.toml",
        }))
        .unwrap();
        assert!(
            !manifest.contains(".workspace"),
            "{name} inherits from the workspace"
        );
    }
}
