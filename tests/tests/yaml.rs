//! lm-eval task YAML files through `harness score --include-path`: the same engine, reports and
//! resume as compiled plugins, and the worked examples of `benchmarks/examples`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn ok(o: &std::process::Output) {
    assert!(o.status.success(), "harness failed:\n{}", stderr(o));
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../benchmarks/examples")
}

fn lib(name: &str) -> PathBuf {
    target_dir().join(format!(
        "{}{name}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    ))
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

/// A generation task with shots drawn by lm-eval's default sampler, filters, and a tag.
fn arithmetic(dir: &Path) {
    let docs: String = (1..=6)
        .map(|i| format!("{{\"q\": \"{i} + {i}\", \"a\": \"{}\"}}\n", 2 * i))
        .collect();
    write(dir, "sums.jsonl", &docs);
    write(
        dir,
        "sums.yaml",
        r#"task: sums
tag: [arith]
dataset_path: json
dataset_kwargs:
  data_files:
    test: sums.jsonl
test_split: test
fewshot_split: test
num_fewshot: 2
output_type: generate_until
doc_to_text: "Q: {{q}} =\nA:"
doc_to_target: a
generation_kwargs:
  until: ["\n"]
  max_gen_toks: 4
filter_list:
  - name: first-number
    filter:
      - function: regex
        regex_pattern: "(\\d+)"
      - function: take_first
metric_list:
  - metric: exact_match
"#,
    );
}

#[test]
fn a_yaml_task_scores_through_the_engine_reports_and_resume() {
    let tasks = tempfile::tempdir().unwrap();
    arithmetic(tasks.path());
    let out = tempfile::tempdir().unwrap();
    let args = [
        "--include-path",
        tasks.path().to_str().unwrap(),
        "--tasks",
        "arith",
        "--chunk-size",
        "2",
    ];
    ok(&score(&tiny_model("llama"), out.path(), &args));
    let results = read_json(&out.path().join("results.json"));
    let t = &results["tasks"]["sums"];
    assert_eq!(t["n_items"], 6);
    assert_eq!(t["headline_metric"], "exact_match,first-number");
    assert!(t["metrics"]["exact_match,first-number"]["value"].is_number());
    assert_eq!(t["plugin"]["kind"], "YAML task");
    assert!(t["plugin"]["path"].as_str().unwrap().ends_with("sums.yaml"));
    assert_eq!(t["protocol"]["num_fewshot"], 2);
    assert_eq!(t["data_files"]["sums.jsonl"].as_str().unwrap().len(), 64);
    assert_eq!(results["errors"], serde_json::json!({}));

    let samples = read_samples(out.path());
    assert_eq!(samples.len(), 6);
    // Shots of document 0 with seed 1234 (CPython: random.Random(1234).sample(docs, 3) picks
    // documents 3, 0, 4; the document itself is dropped): "4 + 4" and "5 + 5".
    let r0 = &samples[0]["requests"][0];
    assert_eq!(
        r0["context"],
        "Q: 4 + 4 =\nA: 8\n\nQ: 5 + 5 =\nA: 10\n\nQ: 1 + 1 =\nA:"
    );
    assert_eq!(r0["until"], serde_json::json!(["\n"]));
    assert_eq!(r0["max_new_tokens"], 4);
    for s in &samples {
        // The filter's answer is recorded, and the metric agrees with it.
        let answer = s["extracted"]["first-number"].as_str().unwrap();
        let em = s["metrics"]["exact_match,first-number"].as_f64().unwrap();
        assert_eq!(em == 1.0, answer == s["gold"].as_str().unwrap(), "{s}");
    }

    // The same command again: everything comes from the saved progress.
    ok(&score(&tiny_model("llama"), out.path(), &args));
    let again = read_json(&out.path().join("results.json"));
    assert_eq!(again["tasks"]["sums"]["items_computed"], 0);
    assert_eq!(again["tasks"]["sums"]["metrics"], t["metrics"]);

    // A task reached through its tag and by its name is scored once (no duplicate rows).
    let mut both = args.to_vec();
    both[3] = "arith,sums";
    ok(&score(&tiny_model("llama"), out.path(), &both));
    assert_eq!(read_samples(out.path()).len(), 6);
}

#[test]
fn the_yaml_and_compiled_examples_send_the_same_requests_and_agree() {
    let out = tempfile::tempdir().unwrap();
    let plugin = lib("dtm_example_capitals");
    assert!(plugin.exists(), "{} not built", plugin.display());
    let data = format!("capitals_compiled={}", examples().join("data").display());
    let o = score(
        &tiny_model("llama"),
        out.path(),
        &[
            "--include-path",
            examples().join("yaml").to_str().unwrap(),
            "--plugin",
            plugin.to_str().unwrap(),
            "--data-dir",
            &data,
            "--tasks",
            "capitals,capitals_compiled",
        ],
    );
    ok(&o);
    let samples = read_samples(out.path());
    let of = |task: &str| -> Vec<&serde_json::Value> {
        samples.iter().filter(|s| s["task"] == task).collect()
    };
    let (yaml, compiled) = (of("capitals"), of("capitals_compiled"));
    assert_eq!((yaml.len(), compiled.len()), (5, 5));
    for (y, c) in yaml.iter().zip(&compiled) {
        assert_eq!(y["requests"], c["requests"]);
        assert_eq!(y["metrics"]["acc,none"], c["metrics"]["acc"]);
        assert_eq!(y["metrics"]["acc_norm,none"], c["metrics"]["acc_norm"]);
        assert_eq!(y["gold"], c["gold"]);
    }
    assert_eq!(
        yaml[0]["requests"][1]["context"],
        "Question: What is the capital of France?\nAnswer:"
    );
    assert_eq!(yaml[0]["requests"][1]["continuation"], " Paris");
}

#[test]
fn a_refused_field_stops_the_run_before_the_model_loads() {
    let tasks = tempfile::tempdir().unwrap();
    write(tasks.path(), "d.jsonl", "{\"q\": \"x\"}\n");
    write(
        tasks.path(),
        "bad.yaml",
        "task: bad\ndataset_path: json\ndataset_kwargs:\n  data_files: d.jsonl\ntest_split: train\nprocess_docs: !function utils.process_docs\n",
    );
    let out = tempfile::tempdir().unwrap();
    let o = score(
        Path::new("/nonexistent/model"),
        out.path(),
        &[
            "--include-path",
            tasks.path().to_str().unwrap(),
            "--tasks",
            "bad",
        ],
    );
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("bad.yaml:6") && err.contains("!function utils.process_docs"),
        "{err}"
    );
    assert!(!err.contains("loading /nonexistent"), "{err}");
}

#[test]
fn list_shows_yaml_tasks_and_works_without_data() {
    let o = Command::new(harness_bin())
        .args(["list", "--data-dir", "/nonexistent", "--include-path"])
        .arg(examples().join("yaml"))
        .output()
        .unwrap();
    ok(&o);
    let text = String::from_utf8_lossy(&o.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("capitals "))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        line.contains("YAML task") && line.contains(" 5 ") && line.contains("acc,none"),
        "{line}"
    );
    let gsm = text.lines().find(|l| l.starts_with("gsm8k ")).unwrap();
    assert!(gsm.contains("no data"), "{gsm}");
}

/// A YAML task's identity in the output folder covers its own file, every file it includes and
/// its data: after any of them changes, the same command is refused, naming what changed, and
/// nothing is recomputed from stale work.
#[test]
fn resume_refuses_a_changed_task_file_include_or_data() {
    let tasks = tempfile::tempdir().unwrap();
    let base = tasks.path().join("base");
    std::fs::create_dir(&base).unwrap();
    write(
        tasks.path(),
        "d.jsonl",
        "{\"q\": \"What is the capital of France?\", \"choices\": [\"Lyon\", \"Paris\"], \"a\": 1}\n\
         {\"q\": \"What is the capital of Japan?\", \"choices\": [\"Tokyo\", \"Osaka\"], \"a\": 0}\n",
    );
    // Data paths are relative to the file that names them: the fragment's `../d.jsonl` is
    // `tasks/d.jsonl`.
    let common = "dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: ../d.jsonl\n\
                  test_split: test\noutput_type: multiple_choice\ndoc_to_choice: choices\n\
                  doc_to_target: a\n";
    write(&base, "_common.yaml", common);
    let task = "include: base/_common.yaml\ntask: caps\ndoc_to_text: \"Q: {{q}}\\nA:\"\n";
    write(tasks.path(), "caps.yaml", task);
    let out = tempfile::tempdir().unwrap();
    let run = || {
        score(
            &tiny_model("llama"),
            out.path(),
            &[
                "--include-path",
                tasks.path().to_str().unwrap(),
                "--tasks",
                "caps",
            ],
        )
    };
    ok(&run());
    let results = read_json(&out.path().join("results.json"));
    let plugin = &results["tasks"]["caps"]["plugin"];
    assert_eq!(
        plugin["includes"]["base/_common.yaml"]
            .as_str()
            .unwrap()
            .len(),
        64
    );
    ok(&run());
    let refused = |what: &str| {
        let o = run();
        assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
        let err = stderr(&o);
        assert!(
            err.contains("holds work on caps done with other settings or inputs")
                && err.contains(what),
            "{what}: {err}"
        );
    };
    // An included file.
    write(
        &base,
        "_common.yaml",
        &common.replace(
            "doc_to_target: a\n",
            "doc_to_target: a\ntarget_delimiter: \"  \"\n",
        ),
    );
    refused("plugin.includes.base/_common.yaml (sha256 ");
    write(&base, "_common.yaml", common);
    ok(&run());
    // The task file itself.
    write(
        tasks.path(),
        "caps.yaml",
        &task.replace("Q: ", "Question: "),
    );
    refused("plugin.sha256 (sha256 ");
    write(tasks.path(), "caps.yaml", task);
    ok(&run());
    // Its data.
    let data = tasks.path().join("d.jsonl");
    let text = std::fs::read_to_string(&data)
        .unwrap()
        .replace("Osaka", "Kyoto");
    std::fs::write(&data, text).unwrap();
    refused("data_files.");
}
