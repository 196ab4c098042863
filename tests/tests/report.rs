//! `harness report` end to end: run folders in the scorer's format (one made by `harness score`
//! itself, the others written here with per-item values chosen so that every number in
//! report.json can be worked out by hand), compared, tested, refused when they differ, and
//! drawn.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use serde_json::{json, Value};

const ARC_HASH: &str = "9fa8ffb3e3a1f88cb302d53dd95aae81e39209ad9bcf974376b319d8fd35717c";

/// One task of a hand-made run: per-item headline values by doc_id.
struct Task {
    name: &'static str,
    metric: &'static str,
    values: Vec<(usize, f64)>,
    num_fewshot: usize,
    data_hash: &'static str,
}

fn task(name: &'static str, metric: &'static str, values: &[f64]) -> Task {
    Task {
        name,
        metric,
        values: values.iter().copied().enumerate().collect(),
        num_fewshot: 0,
        data_hash: ARC_HASH,
    }
}

/// 0/1 values: 1 for the doc_ids in `right`, 0 for the others of `0..n`.
fn binary(n: usize, right: impl IntoIterator<Item = usize>) -> Vec<f64> {
    let right: BTreeSet<usize> = right.into_iter().collect();
    (0..n)
        .map(|i| if right.contains(&i) { 1.0 } else { 0.0 })
        .collect()
}

fn mean_stderr(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, (var / n).sqrt())
}

/// Writes results.json and samples.jsonl as `harness score` writes them (harness/src/evaluate/
/// report.rs and store.rs: the same keys, nesting and one JSON object per line).
fn write_run(dir: &Path, tasks: &[Task]) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let mut results_tasks = serde_json::Map::new();
    let mut lines = String::new();
    for t in tasks {
        let xs: Vec<f64> = t.values.iter().map(|v| v.1).collect();
        let (mean, stderr) = mean_stderr(&xs);
        let data_file = format!("{}/test.jsonl", t.name);
        results_tasks.insert(
            t.name.into(),
            json!({
                "task": t.name,
                "plugin": {"name": t.name, "version": "1", "path": "/nowhere/libdtm_bench.so"},
                "protocol": {
                    "name": t.name, "num_fewshot": t.num_fewshot, "limit": null,
                    "max_new_tokens": null, "flags": {}, "num_items": xs.len(),
                    "data_files": [data_file],
                },
                "headline_metric": t.metric,
                "n_items": xs.len(),
                "metrics": {t.metric: {"value": mean, "stderr": stderr, "n": xs.len(), "unavailable": 0}},
                "subtasks": {},
                "groups": {},
                "data_files": {data_file: t.data_hash},
                "wall_seconds": 1.0,
                "items_computed": xs.len(),
                "tokens": {"requested": 10, "forwarded": 10, "padding": 0, "generated": 0},
            }),
        );
        for &(doc_id, v) in &t.values {
            let sample = json!({
                "task": t.name, "doc_id": doc_id, "subtask": t.name,
                "requests": [{"context": "Question: ?\nAnswer:", "continuation": " yes"}],
                "responses": [{"logprob": -1.5, "is_greedy": false}],
                "extracted": {t.metric: "A"}, "gold": "A",
                "metrics": {t.metric: v}, "groups": [],
            });
            lines.push_str(&sample.to_string());
            lines.push('\n');
        }
    }
    let results = json!({
        "harness_version": "0.1.0",
        "model": {"path": "m", "sha256": "0".repeat(64), "architecture": "llama"},
        "options": {"tasks": [], "limit": null, "seed": 1234},
        "tasks": results_tasks,
        "wall_seconds": 1.0,
    });
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_string_pretty(&results).unwrap(),
    )
    .unwrap();
    std::fs::write(dir.join("samples.jsonl"), lines).unwrap();
    dir.to_owned()
}

fn report(args: &[String]) -> Output {
    Command::new(harness_bin())
        .arg("report")
        .args(args)
        .output()
        .expect("run harness")
}

fn ok(o: &Output) {
    assert!(o.status.success(), "harness report failed:\n{}", stderr(o));
}

fn named(name: &str, dir: &Path) -> String {
    format!("{name}={}", dir.display())
}

fn row<'a>(report: &'a Value, method: &str, task: &str) -> &'a Value {
    report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["method"] == method && r["task"] == task)
        .unwrap_or_else(|| panic!("no row {method}/{task} in {report:#}"))
}

fn close(v: &Value, want: f64) {
    let got = v
        .as_f64()
        .unwrap_or_else(|| panic!("{v} is not a number (want {want})"));
    assert!(
        (got - want).abs() <= 1e-12 * want.abs().max(1.0),
        "{got} vs {want}"
    );
}

/// Every SVG under `dir/plots`, parsed as XML: (file name, its <text> contents, the fill
/// colours of its filled circles with their counts).
fn svgs(dir: &Path) -> BTreeMap<String, (Vec<String>, BTreeMap<String, usize>)> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir.join("plots")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let doc = roxmltree::Document::parse(&text)
            .unwrap_or_else(|e| panic!("{}: not XML: {e}", path.display()));
        assert_eq!(doc.root_element().tag_name().name(), "svg");
        let texts = doc
            .descendants()
            .filter(|n| n.has_tag_name("text"))
            .map(|n| n.text().unwrap_or_default().trim().to_owned())
            .collect();
        let mut fills = BTreeMap::new();
        for c in doc.descendants().filter(|n| n.has_tag_name("circle")) {
            if let Some(fill) = c.attribute("fill").filter(|f| *f != "none") {
                *fills.entry(fill.to_owned()).or_default() += 1;
            }
        }
        out.insert(
            path.file_name().unwrap().to_string_lossy().into_owned(),
            (texts, fills),
        );
    }
    out
}

/// The three methods of the hand-worked table.
///
/// arc_challenge (acc, 12 items): vanilla right on 0..=5 (6/12); dtm right on 1..=10, so
/// b = 1 (item 0), c = 5 (items 6..=10); soup right on 0..=10, so b = 0, c = 5.
/// graded (score, 4 items): vanilla (0.2, 0.5, 0.4, 0.9), dtm (0.6, 0.5, 0.9, 0.6), soup =
/// vanilla.
fn hand_worked(root: &Path) -> [PathBuf; 3] {
    let vanilla = [0.2, 0.5, 0.4, 0.9];
    [
        write_run(
            &root.join("vanilla"),
            &[
                task("arc_challenge", "acc", &binary(12, 0..=5)),
                task("graded", "score", &vanilla),
            ],
        ),
        write_run(
            &root.join("dtm"),
            &[
                task("arc_challenge", "acc", &binary(12, 1..=10)),
                task("graded", "score", &[0.6, 0.5, 0.9, 0.6]),
            ],
        ),
        write_run(
            &root.join("soup"),
            &[
                task("arc_challenge", "acc", &binary(12, 0..=10)),
                task("graded", "score", &vanilla),
            ],
        ),
    ]
}

#[test]
fn table_values_tests_and_holm_match_hand_computation() {
    let dir = tempfile::tempdir().unwrap();
    let [vanilla, dtm, soup] = hand_worked(dir.path());
    let out = dir.path().join("report");
    ok(&report(&[
        named("vanilla", &vanilla),
        dtm.display().to_string(), // named by its folder
        named("soup", &soup),
        "--baseline".into(),
        "vanilla".into(),
        "--output".into(),
        out.display().to_string(),
    ]));
    let r = read_json(&out.join("report.json"));
    assert_eq!(r["baseline"], "vanilla");
    assert_eq!(r["rows"].as_array().unwrap().len(), 6);

    // Baseline rows: value, stderr and n, no comparison.
    let base = row(&r, "vanilla", "arc_challenge");
    assert_eq!(base["metric"], "acc");
    close(&base["value"], 0.5);
    close(&base["stderr"], (1.0f64 / 44.0).sqrt()); // var = 3/11, /12
    assert_eq!(base["n"], 12);
    assert!(base["delta"].is_null() && base["p_value"].is_null() && base["test"].is_null());

    // dtm on arc: 10/12, var = (10·(1/6)² + 2·(5/6)²)/11 = 5/33; Δ = 4/12;
    // McNemar b=1, c=5: p = 2·(C(6,0) + C(6,1))/2⁶ = 14/64.
    let d = row(&r, "dtm", "arc_challenge");
    close(&d["value"], 10.0 / 12.0);
    close(&d["stderr"], (5.0f64 / 33.0 / 12.0).sqrt());
    close(&d["delta"], 4.0 / 12.0);
    assert_eq!(d["test"], "mcnemar_exact");
    assert_eq!(d["discordant"], json!([1, 5]));
    close(&d["p_value"], 14.0 / 64.0);
    let ci = d["ci95"].as_array().unwrap();
    let (lo, hi) = (ci[0].as_f64().unwrap(), ci[1].as_f64().unwrap());
    // A bootstrap mean of differences in {−1, 0, 1} lies on the grid k/12 (up to rounding).
    assert!(lo < 4.0 / 12.0 && 4.0 / 12.0 < hi && lo >= -1.0 && hi <= 1.0);
    for x in [lo, hi] {
        assert!(((x * 12.0) - (x * 12.0).round()).abs() < 1e-9, "{x}");
    }

    // soup on arc: b=0, c=5: p = 2/2⁵.
    let s = row(&r, "soup", "arc_challenge");
    close(&s["delta"], 5.0 / 12.0);
    close(&s["p_value"], 2.0 / 32.0);
    assert_eq!(s["discordant"], json!([0, 5]));

    // dtm on graded: d = (0.4, 0, 0.5, −0.3), Δ = 0.15; sign flips of ±0.4 ±0.5 ±0.3 reach
    // |0.6| in 4 of 8 patterns.
    let g = row(&r, "dtm", "graded");
    close(&g["delta"], 0.15);
    assert_eq!(g["test"], "sign_flip_exact");
    close(&g["p_value"], 0.5);
    assert!(g["discordant"].is_null());
    // soup = vanilla on graded: Δ 0, CI [0, 0], p 1.
    let sg = row(&r, "soup", "graded");
    assert_eq!(
        (sg["delta"].as_f64(), sg["p_value"].as_f64()),
        (Some(0.0), Some(1.0))
    );
    assert_eq!(sg["ci95"], json!([0.0, 0.0]));

    // Holm over (14/64, 0.5, 2/32, 1): sorted 0.0625·4 = 0.25, 0.21875·3 = 0.65625,
    // 0.5·2 = 1, 1·1 = 1.
    close(&s["p_holm"], 0.25);
    close(&d["p_holm"], 0.65625);
    close(&g["p_holm"], 1.0);
    close(&sg["p_holm"], 1.0);

    let csv = std::fs::read_to_string(out.join("report.csv")).unwrap();
    assert!(csv.starts_with(
        "source,method,task,metric,value,stderr,n,delta,ci95_lo,ci95_hi,p_value,p_holm,test,n_paired,note\n"
    ));
    assert!(csv.contains("ours,dtm,arc_challenge,acc,"));
    assert!(!csv.contains("paper"), "no paper rows unless asked");
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        md.contains("| arc_challenge | dtm | acc | 83.33 ± 11.24 | 12 | +33.33 |"),
        "{md}"
    );
    assert!(
        // 14/64 = 0.21875 sits on a rounding tie; statrs's value may fall either side of it.
        md.contains("mcnemar_exact (b=1, c=5) | 0.218") && md.contains("| 0.6562 |"),
        "{md}"
    );
    assert!(
        md.contains("| vanilla (baseline) | 50.00 ± 15.08 |"),
        "{md}"
    );

    // The picture of Table 1: one series per method (one legend entry and one colour each,
    // with a point per task plus the legend marker).
    let plots = svgs(&out);
    let (texts, fills) = &plots["scores.svg"];
    for m in ["vanilla", "dtm", "soup"] {
        assert_eq!(
            texts.iter().filter(|t| *t == m).count(),
            1,
            "{m}: {texts:?}"
        );
    }
    assert_eq!(fills.len(), 3, "{fills:?}");
    assert!(fills.values().all(|&n| n == 2 + 1), "{fills:?}");
    assert!(md.contains("](plots/scores.svg)"));
}

#[test]
fn a_scored_run_compared_with_itself_gives_zero_delta_and_p_one() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let scored = score(
        &tiny_model("llama"),
        &run,
        &["--tasks", "arc_challenge,mmlu", "--limit", "2"],
    );
    assert!(scored.status.success(), "{}", stderr(&scored));
    let out = dir.path().join("report");
    ok(&report(&[
        named("a", &run),
        named("b", &run),
        "--baseline".into(),
        "a".into(),
        "--output".into(),
        out.display().to_string(),
        "--subtasks".into(),
    ]));
    let r = read_json(&out.join("report.json"));
    let results = read_json(&run.join("results.json"));
    // 2 tasks + 57 MMLU subjects, for each of the two names.
    assert_eq!(r["rows"].as_array().unwrap().len(), 2 * (2 + 57));
    for task in ["arc_challenge", "mmlu"] {
        let a = row(&r, "a", task);
        let m = &results["tasks"][task]["metrics"]["acc"];
        assert_eq!(a["value"], m["value"]);
        assert_eq!(a["stderr"], m["stderr"]);
        assert_eq!(a["n"], m["n"]);
    }
    for b in r["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["method"] == "b")
    {
        assert_eq!(b["delta"], 0.0, "{b}");
        assert_eq!(b["ci95"], json!([0.0, 0.0]), "{b}");
        assert_eq!(b["p_value"], 1.0, "{b}");
        assert_eq!(b["p_holm"], 1.0, "{b}");
        assert_eq!(b["test"], "mcnemar_exact", "{b}");
        assert_eq!(b["discordant"], json!([0, 0]), "{b}");
    }
    assert_eq!(row(&r, "b", "mmlu:anatomy")["n"], 2);
    assert_eq!(row(&r, "b", "mmlu")["n_paired"], 2 * 57);
}

#[test]
fn mismatched_item_sets_are_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let base = write_run(
        &dir.path().join("base"),
        &[task("arc_challenge", "acc", &binary(12, 0..=5))],
    );
    // Items 0..=10 only (11 is missing); right on 1..=7.
    let mut short = task("arc_challenge", "acc", &binary(12, 1..=7));
    short.values.pop();
    let other = write_run(&dir.path().join("other"), &[short]);
    let out = dir.path().join("report");
    let args = |extra: &[&str]| {
        let mut a = vec![
            named("base", &base),
            named("other", &other),
            "--baseline".into(),
            "base".into(),
            "--output".into(),
            out.display().to_string(),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let refused = report(&args(&[]));
    assert!(!refused.status.success());
    let err = stderr(&refused);
    assert!(
        err.contains("arc_challenge: `other` vs baseline `base`")
            && err.contains("item sets differ (12 vs 11 items): 1 only in `base` (doc_id 11)"),
        "{err}"
    );
    assert!(
        !out.join("report.json").exists(),
        "nothing written when refused"
    );

    ok(&report(&args(&["--allow-mismatch"])));
    let r = read_json(&out.join("report.json"));
    let o = row(&r, "other", "arc_challenge");
    // Own items: 7/11. Common items 0..=10: base right on 0..=5, other on 1..=7:
    // Δ = (7 − 6)/11, b = 1 (item 0), c = 2 (items 6, 7), p = 2·(1 + 3)/8 = 1.
    close(&o["value"], 7.0 / 11.0);
    assert_eq!(o["n"], 11);
    assert_eq!(o["n_paired"], 11);
    close(&o["delta"], 1.0 / 11.0);
    assert_eq!(o["discordant"], json!([1, 2]));
    close(&o["p_value"], 1.0);
    let note = o["note"].as_str().unwrap();
    assert!(
        note.contains("--allow-mismatch: compared on 11 common items"),
        "{note}"
    );
    assert_eq!(r["allow_mismatch"], true);
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("**--allow-mismatch**"));
}

#[test]
fn differing_protocol_settings_and_data_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let base = write_run(
        &dir.path().join("base"),
        &[task("arc_challenge", "acc", &binary(6, 0..3))],
    );
    let mut shots = task("arc_challenge", "acc", &binary(6, 0..4));
    shots.num_fewshot = 5;
    shots.data_hash = "1234567890abcdef1234567890abcdef1234567890abcdef1234567890abcdef";
    let other = write_run(&dir.path().join("other"), &[shots]);
    let o = report(&[
        named("base", &base),
        named("other", &other),
        "--baseline".into(),
        "base".into(),
        "--output".into(),
        dir.path().join("r").display().to_string(),
    ]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("protocol setting num_fewshot = 0 in `base`, 5 in `other`"),
        "{err}"
    );
    assert!(
        err.contains("data file arc_challenge/test.jsonl: sha256 9fa8ffb3e3a1… in `base`, 1234567890ab… in `other`"),
        "{err}"
    );
}

#[test]
fn bad_input_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let base = write_run(
        &dir.path().join("base"),
        &[task("arc_challenge", "acc", &binary(4, 0..2))],
    );
    let out = dir.path().join("r").display().to_string();
    let o = report(&[
        named("base", &base),
        "--baseline".into(),
        "vanilla".into(),
        "--output".into(),
        out.clone(),
    ]);
    assert!(stderr(&o).contains("--baseline `vanilla` is not among the runs (base)"));

    let broken = dir.path().join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::copy(base.join("results.json"), broken.join("results.json")).unwrap();
    let samples = std::fs::read_to_string(base.join("samples.jsonl")).unwrap();
    let mut lines: Vec<&str> = samples.lines().collect();
    lines[2] = "{\"task\": \"arc_challenge\", \"doc_id\": \"two\"}";
    std::fs::write(broken.join("samples.jsonl"), lines.join("\n")).unwrap();
    let o = report(&[
        named("base", &base),
        named("broken", &broken),
        "--baseline".into(),
        "base".into(),
        "--output".into(),
        out,
    ]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains(&format!(
            "{}:3: not a `harness score` sample",
            broken.join("samples.jsonl").display()
        )),
        "{err}"
    );
}

#[test]
fn paper_reference_is_printed_beside_ours_and_labelled() {
    let dir = tempfile::tempdir().unwrap();
    let [vanilla, dtm, _] = hand_worked(dir.path());
    let out = dir.path().join("report");
    ok(&report(&[
        named("vanilla", &vanilla),
        named("dtm", &dtm),
        "--baseline".into(),
        "vanilla".into(),
        "--output".into(),
        out.display().to_string(),
        "--paper-reference".into(),
    ]));
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("**The paper's numbers, not ours**"), "{md}");
    // Only the columns of our tasks that the paper has: ARC-c.
    assert!(md.contains("| method (paper) | arc_challenge |"), "{md}");
    assert!(md.contains("| paper: DTM | 48.72 |"), "{md}");
    assert!(md.contains("| paper: Vanilla SFT | 46.93 |"), "{md}");
    let r = read_json(&out.join("report.json"));
    let paper = &r["paper_reference"];
    assert!(paper["source"].as_str().unwrap().contains("Table 1"));
    assert_eq!(paper["columns"], json!(["arc_challenge"]));
    assert_eq!(paper["rows"][8]["method"], "DTM");
    assert_eq!(paper["rows"][8]["values"]["arc_challenge"], 48.72);
    let csv = std::fs::read_to_string(out.join("report.csv")).unwrap();
    assert!(
        csv.contains("paper,DTM,arc_challenge,headline,0.4872,"),
        "{csv}"
    );
}

#[test]
fn figures_from_train_logs_submodels_and_labelled_settings() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // Three sub-models on 10 items; wrong sets: s1 {0,1,2,3}, s2 {0,1,4}, s3 {0,5}.
    // Exact combinations: {s1,s2,s3}: item 0; {s1,s2}: 1; {s1}: 2, 3; {s2}: 4; {s3}: 5;
    // 6 items wrong for some sub-model. Items 6..=9 are right for all.
    let wrong = |w: &[usize]| binary(10, (0..10).filter(|i| !w.contains(i)));
    let s1 = write_run(
        &root.join("s1"),
        &[task("arc_challenge", "acc", &wrong(&[0, 1, 2, 3]))],
    );
    let s2 = write_run(
        &root.join("s2"),
        &[task("arc_challenge", "acc", &wrong(&[0, 1, 4]))],
    );
    let s3 = write_run(
        &root.join("s3"),
        &[task("arc_challenge", "acc", &wrong(&[0, 5]))],
    );
    // Merged wrong on 0 (all 3 wrong), 2 (1 wrong) and 9 (none wrong).
    let merged = write_run(
        &root.join("merged"),
        &[task("arc_challenge", "acc", &wrong(&[0, 2, 9]))],
    );
    // Uniform soup wrong on 1 (2 wrong) only.
    let soup = write_run(
        &root.join("soup"),
        &[task("arc_challenge", "acc", &wrong(&[1]))],
    );
    let log = |name: &str, losses: &[f64]| {
        let path = root.join(format!("{name}.jsonl"));
        let lines: Vec<String> = losses
            .iter()
            .enumerate()
            .map(|(i, l)| {
                json!({"step": i + 1, "epoch": 0.1 * i as f64, "loss": l, "lr": 3e-4, "grad_norm": 1.0,
                       "target_tokens": 100, "tokens_per_s": 50.0 + i as f64})
                .to_string()
            })
            .collect();
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        format!("{name}={}", path.display())
    };
    let out = root.join("report");
    let args: Vec<String> = [
        format!("s1={}@k=1,series=sub", s1.display()),
        format!("s2={}@k=2,series=sub", s2.display()),
        format!("s3={}@k=3,series=sub", s3.display()),
        format!("merged={}@k=3,series=dtm", merged.display()),
        format!("soup={}@k=3,series=dtm", soup.display()),
        "--baseline".into(),
        "soup".into(),
        "--output".into(),
        out.display().to_string(),
        "--train-log".into(),
        log("s1", &[2.0, 1.5, 1.2]),
        "--train-log".into(),
        log("s2", &[2.1, 1.6, 1.1, 0.9]),
        "--submodels".into(),
        "s1,s2,s3".into(),
        "--merged".into(),
        "merged,soup".into(),
    ]
    .into();
    ok(&report(&args));
    let r = read_json(&out.join("report.json"));
    let e = &r["error_sets"][0];
    assert_eq!(e["task"], "arc_challenge");
    assert_eq!(e["n_items"], 10);
    assert_eq!(e["wrong"], json!([4, 3, 2]));
    assert_eq!(e["any_wrong"], 6);
    let combos: Vec<(Vec<String>, u64)> = e["intersections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                serde_json::from_value(i["members"].clone()).unwrap(),
                i["count"].as_u64().unwrap(),
            )
        })
        .collect();
    let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert_eq!(
        combos,
        vec![
            (v(&["s1"]), 2),
            (v(&["s2"]), 1),
            (v(&["s3"]), 1),
            (v(&["s1", "s2"]), 1),
            (v(&["s1", "s2", "s3"]), 1),
        ]
    );
    close(&e["intersections"][0]["share"], 2.0 / 6.0);
    // Items by sub-models wrong: 0 → 6..=9 (4), 1 → 2, 3, 4, 5 (4), 2 → 1, 3 → 0.
    // merged right: 6, 7, 8 of the first (3/4); 3, 4, 5 (3/4); 1 (1/1); none of 0 (0/1).
    let buckets = |m: usize| -> Vec<(u64, u64)> {
        e["merged"][m]["buckets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| (b["n"].as_u64().unwrap(), b["correct"].as_u64().unwrap()))
            .collect()
    };
    assert_eq!(e["merged"][0]["merged"], "merged");
    assert_eq!(buckets(0), vec![(4, 3), (4, 3), (1, 1), (1, 0)]);
    assert_eq!(buckets(1), vec![(4, 4), (4, 4), (1, 0), (1, 1)]);

    let t = &r["train_logs"];
    assert_eq!(t[1]["name"], "s2");
    assert_eq!(t[1]["steps"], 4);
    close(&t[1]["final_loss"], 0.9);
    close(&t[1]["mean_tokens_per_s"], 51.5);

    let plots = svgs(&out);
    let names: BTreeSet<&str> = plots.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        BTreeSet::from([
            "scores.svg",
            "loss.svg",
            "errors-upset-arc_challenge.svg",
            "errors-merged-arc_challenge.svg",
            "setting-k-arc_challenge.svg",
        ])
    );
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    for name in &names {
        assert!(
            md.contains(&format!("](plots/{name})")),
            "{name} not linked"
        );
    }
    // One series per training run, per merged run, per `series` label.
    let legend = |file: &str, series: &[&str]| {
        let texts = &plots[file].0;
        for s in series {
            assert_eq!(
                texts.iter().filter(|t| t == s).count(),
                1,
                "{file}: {s} in {texts:?}"
            );
        }
    };
    legend("loss.svg", &["s1", "s2"]);
    legend("errors-merged-arc_challenge.svg", &["merged", "soup"]);
    legend("setting-k-arc_challenge.svg", &["sub", "dtm"]);
    assert_eq!(plots["scores.svg"].1.len(), 5);
    // The UpSet chart names each sub-model with its error count and labels every bar.
    let upset = &plots["errors-upset-arc_challenge.svg"].0;
    for s in ["s1 (4 wrong)", "s2 (3 wrong)", "s3 (2 wrong)", "33%", "17%"] {
        assert!(upset.iter().any(|t| t == s), "{s} not in {upset:?}");
    }
    assert_eq!(upset.iter().filter(|t| t.ends_with('%')).count(), 5);
}
