//! `trainer select` through the binary: Deita's score against a hand computation and against
//! transformers, batching, kill -9 + resume, refusals, the selection rules and the diversity
//! filter.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use candle_core::{DType, Device};
use dtm_model::checkpoint;
use dtm_model::model::Batch;
use serde_json::Value;

fn shared() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared")
}

fn tiny(name: &str) -> PathBuf {
    shared().join("models/tiny").join(name)
}

fn trainer() -> Command {
    Command::new(env!("CARGO_BIN_EXE_trainer"))
}

fn select(args: &[&str]) -> Output {
    let out = trainer().arg("select").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "trainer select {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// `scores.jsonl` as one object per line.
fn scores(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("scores.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn score_values(dir: &Path) -> Vec<f64> {
    scores(dir)
        .iter()
        .map(|v| v["score"].as_f64().unwrap())
        .collect()
}

/// Records from the shared corpora, via `trainer data mix`.
fn mix(dir: &Path, counts: &str, seed: &str) -> PathBuf {
    let out = dir.join(format!("mix-{seed}.jsonl"));
    let status = trainer()
        .args(["data", "mix", "--counts", counts, "--seed", seed])
        .arg("--data-dir")
        .arg(shared().join("data"))
        .arg("--output")
        .arg(&out)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    out
}

#[test]
fn score_of_a_fixed_prompt_is_the_digit_expectation_computed_by_hand() {
    let dir = tempfile::tempdir().unwrap();
    let instruction = "Explain why the sky is blue, in two sentences.";
    // The record of interest sits between records of other lengths, so that it is scored in a
    // padded batch.
    let data = dir.path().join("d.jsonl");
    let lines = [
        serde_json::json!({"instruction": "Hi", "output": "Hello"}),
        serde_json::json!({"instruction": instruction, "output": "Rayleigh scattering."}),
        serde_json::json!({"instruction": "List the planets of the solar system in order from the sun, with one fact about each.", "output": "..."}),
    ];
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&data, text).unwrap();
    let out = dir.path().join("out");
    select(&[
        "--method",
        "deita-complexity",
        "--scorer",
        p(&tiny("llama")),
        "--data",
        p(&data),
        "--output",
        p(&out),
        "--threshold",
        "0",
        "--batch-size",
        "3",
    ]);
    let cli = score_values(&out)[1];

    // By hand: Deita's prompt written out here, the decoder run directly on it, the logits of
    // the six digit tokens (ids read from tokenizer.json), softmax, Σ k·p.
    let prompt = format!(
        "You are a helpful assistant. Please identify the complexity score of the following user query. \n##Query: {instruction}  \n##Complexity: "
    );
    let model = checkpoint::load(&tiny("llama"), DType::F32, &Device::Cpu).unwrap();
    let ids = model.tokenizer.encode_document(&prompt).unwrap();
    let n = ids.len();
    let hidden = model
        .decoder
        .forward(
            &Batch {
                tokens: &[ids],
                positions: &[(0..n as i64).collect()],
                valid: &[vec![true; n]],
            },
            &mut model.decoder.new_cache(1),
        )
        .unwrap();
    let logits: Vec<f32> = model
        .decoder
        .logits_at(&hidden, &[(0, n - 1)])
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec1()
        .unwrap();
    let tokenizer: Value = serde_json::from_str(
        &std::fs::read_to_string(tiny("llama").join("tokenizer.json")).unwrap(),
    )
    .unwrap();
    let digit: Vec<f64> = ["1", "2", "3", "4", "5", "6"]
        .iter()
        .map(|d| logits[tokenizer["model"]["vocab"][d].as_u64().unwrap() as usize] as f64)
        .collect();
    let max = digit.iter().cloned().fold(f64::MIN, f64::max);
    let z: f64 = digit.iter().map(|l| (l - max).exp()).sum();
    let by_hand: f64 = digit
        .iter()
        .enumerate()
        .map(|(k, l)| (k + 1) as f64 * (l - max).exp() / z)
        .sum();
    assert!(
        (cli - by_hand).abs() < 1e-6,
        "trainer select {cli} vs by hand {by_hand}"
    );
    // Not a degenerate case: the six probabilities are far from uniform.
    assert!((by_hand - 3.5).abs() > 0.05, "{by_hand}");
}

/// Deita's own procedure run with transformers (tests/fixtures/deita/make_reference.py): the
/// tokenisation (no chat template; BOS as the tokenizer adds it, here none), both prompts, Alpaca
/// input and chat records, on three architectures.
#[test]
fn complexity_and_quality_match_transformers_on_three_architectures() {
    let fixture: Value = serde_json::from_str(
        &std::fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/deita/reference.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d.jsonl");
    let text: String = fixture["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| format!("{r}\n"))
        .collect();
    std::fs::write(&data, text).unwrap();
    for (name, reference) in fixture["models"].as_object().unwrap() {
        let model = checkpoint::load(&tiny(name), DType::F32, &Device::Cpu).unwrap();
        let ids = dtm_trainer::select::scorer::digit_ids(&model.tokenizer).unwrap();
        let expected: Vec<u32> = serde_json::from_value(reference["digit_ids"].clone()).unwrap();
        assert_eq!(ids.to_vec(), expected, "{name}");
        for (i, r) in reference["scores"].as_array().unwrap().iter().enumerate() {
            let record = dtm_trainer::data::parse_record(&fixture["records"][i]).unwrap();
            let prompt = dtm_trainer::select::complexity::record_prompt(&record);
            let ours = model.tokenizer.encode_document(&prompt).unwrap();
            let theirs: Vec<u32> =
                serde_json::from_value(r["complexity_input_ids"].clone()).unwrap();
            assert_eq!(ours, theirs, "{name} record {i}: token ids");
        }
        let out = dir.path().join(name);
        select(&[
            "--method",
            "deita-evol",
            "--scorer",
            p(&tiny(name)),
            "--data",
            p(&data),
            "--output",
            p(&out),
            "--top-k",
            "1",
        ]);
        for (i, (got, want)) in scores(&out)
            .iter()
            .zip(reference["scores"].as_array().unwrap())
            .enumerate()
        {
            for part in ["complexity", "quality"] {
                let (g, w) = (got[part].as_f64().unwrap(), want[part].as_f64().unwrap());
                assert!((g - w).abs() < 1e-5, "{name} record {i} {part}: {g} vs {w}");
            }
            let product = got["complexity"].as_f64().unwrap() * got["quality"].as_f64().unwrap();
            assert!((got["score"].as_f64().unwrap() - product).abs() < 1e-12);
        }
    }
    // The single-prompt methods write one {"score"} per record, the same values.
    let out = dir.path().join("quality");
    select(&[
        "--method",
        "deita-quality",
        "--scorer",
        p(&tiny("llama")),
        "--data",
        p(&data),
        "--output",
        p(&out),
        "--top-k",
        "1",
    ]);
    for (got, want) in scores(&out)
        .iter()
        .zip(fixture["models"]["llama"]["scores"].as_array().unwrap())
    {
        assert_eq!(got.as_object().unwrap().len(), 1, "{got}");
        assert!((got["score"].as_f64().unwrap() - want["quality"].as_f64().unwrap()).abs() < 1e-5);
    }
}

#[test]
fn batched_scores_equal_batch_one_scores() {
    let dir = tempfile::tempdir().unwrap();
    // LIMA's long prompts next to Alpaca's short ones: batches with a lot of padding.
    let data = mix(dir.path(), "lima=8,alpaca_gpt4=24", "4");
    let run = |name: &str, batch: &str, chunk: &str| {
        let out = dir.path().join(name);
        select(&[
            "--method",
            "deita-complexity",
            "--scorer",
            p(&tiny("qwen2")),
            "--data",
            p(&data),
            "--output",
            p(&out),
            "--threshold",
            "3",
            "--batch-size",
            batch,
            "--chunk-size",
            chunk,
        ]);
        score_values(&out)
    };
    let one = run("one", "1", "5");
    let many = run("many", "8", "32");
    assert_eq!(one.len(), 32);
    for (i, (a, b)) in one.iter().zip(&many).enumerate() {
        // float32 rounding of differently shaped matrix products, nothing more.
        assert!((a - b).abs() < 1e-5, "record {i}: {a} vs {b}");
    }
    let spread =
        one.iter().cloned().fold(f64::MIN, f64::max) - one.iter().cloned().fold(f64::MAX, f64::min);
    assert!(spread > 0.1, "scores differ between records ({spread})");
}

fn chunk_files(out: &Path) -> BTreeMap<String, (Vec<u8>, std::time::SystemTime)> {
    let dir = out.join(".progress/scores");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return BTreeMap::new();
    };
    entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                (
                    std::fs::read(&p).unwrap(),
                    std::fs::metadata(&p).unwrap().modified().unwrap(),
                ),
            )
        })
        .collect()
}

#[test]
fn killed_run_resumes_without_recomputing_and_ends_identical() {
    let dir = tempfile::tempdir().unwrap();
    let data = mix(dir.path(), "lima=60,alpaca_gpt4=240", "7");
    let args = |out: &Path| -> Vec<String> {
        [
            "select",
            "--method",
            "deita-complexity",
            "--scorer",
            p(&tiny("llama")),
            "--data",
            p(&data),
            "--output",
            p(out),
            "--threshold",
            "3.2",
            "--batch-size",
            "1",
            "--chunk-size",
            "3",
        ]
        .map(String::from)
        .to_vec()
    };
    let straight = dir.path().join("straight");
    let done = trainer().args(args(&straight)).output().unwrap();
    assert!(done.status.success());

    let killed = dir.path().join("killed");
    let mut child = trainer()
        .args(args(&killed))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while chunk_files(&killed).len() < 4 {
        assert!(start.elapsed() < Duration::from_secs(120), "no progress");
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "finished before it could be killed"
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(!killed.join("scores.jsonl").exists());
    let saved = chunk_files(&killed);
    let saved_records: usize = saved.keys().map(|n| chunk_len(n)).sum();
    assert!(saved_records > 0 && saved_records < 300);

    let again = trainer().args(args(&killed)).output().unwrap();
    assert!(again.status.success());
    let said = String::from_utf8_lossy(&again.stderr);
    assert!(
        said.contains(&format!(
            "scored {} of 300 records now ({saved_records} saved earlier)",
            300 - saved_records
        )),
        "{said}"
    );
    // The chunks saved before the kill were read, not rewritten.
    let after = chunk_files(&killed);
    for (name, before) in &saved {
        assert_eq!(&after[name], before, "{name} was rewritten");
    }
    for file in ["scores.jsonl", "selected.jsonl", "selection.json"] {
        let (a, b) = (
            std::fs::read(straight.join(file)).unwrap(),
            std::fs::read(killed.join(file)).unwrap(),
        );
        assert!(a == b, "{file} differs after resuming");
    }

    // Other scoring settings are refused, naming what differs.
    let mut other = args(&killed);
    other[2] = "deita-quality".into();
    let refused = trainer().args(&other).output().unwrap();
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("other settings (method)"), "{err}");
    // Another rule (and another chunk grid) only re-selects from the saved scores.
    let mut rule = args(&killed);
    let t = rule.iter().position(|a| a == "--threshold").unwrap();
    rule[t] = "--top-k".into();
    rule[t + 1] = "25".into();
    let c = rule.iter().position(|a| a == "--chunk-size").unwrap();
    rule[c + 1] = "7".into();
    let reselect = trainer().args(&rule).output().unwrap();
    assert!(reselect.status.success());
    assert!(String::from_utf8_lossy(&reselect.stderr).contains("scored 0 of 300 records now"));
    assert_eq!(
        std::fs::read_to_string(killed.join("selected.jsonl"))
            .unwrap()
            .lines()
            .count(),
        25
    );
}

fn chunk_len(name: &str) -> usize {
    name.trim_end_matches(".jsonl")
        .split('-')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn selected_records_are_the_input_lines_kept_by_the_rule() {
    let dir = tempfile::tempdir().unwrap();
    let data = mix(dir.path(), "lima=5,alpaca_gpt4=25", "2");
    let input: Vec<String> = std::fs::read_to_string(&data)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let out = dir.path().join("out");
    let scorer = tiny("llama");
    let base = [
        "--method",
        "deita-complexity",
        "--scorer",
        p(&scorer),
        "--data",
        p(&data),
        "--output",
        p(&out),
    ];
    let selected = || -> Vec<String> {
        std::fs::read_to_string(out.join("selected.jsonl"))
            .unwrap()
            .lines()
            .map(String::from)
            .collect()
    };
    let mut args = base.to_vec();
    args.extend(["--top-k", "7"]);
    select(&args);
    let s = score_values(&out);
    assert_eq!(s.len(), input.len());
    let mut ranked: Vec<usize> = (0..s.len()).collect();
    ranked.sort_by(|&a, &b| s[b].partial_cmp(&s[a]).unwrap());
    let mut top: Vec<usize> = ranked[..7].to_vec();
    top.sort();
    let want: Vec<String> = top.iter().map(|&i| input[i].clone()).collect();
    assert_eq!(selected(), want);

    // A threshold between two scores keeps exactly those above it.
    let mut sorted = s.clone();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let t = (sorted[12] + sorted[13]) / 2.0;
    let mut args = base.to_vec();
    let t_text = t.to_string();
    args.extend(["--threshold", &t_text]);
    select(&args);
    let want: Vec<String> = (0..s.len())
        .filter(|&i| s[i] > t)
        .map(|i| input[i].clone())
        .collect();
    assert_eq!(want.len(), s.len() - 13);
    assert_eq!(selected(), want);
}

#[test]
fn diversity_filter_keeps_one_of_each_group_of_near_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let data = mix(dir.path(), "alpaca_gpt4=12", "3");
    let out = dir.path().join("out");
    let args = |embeddings: &Path| -> Vec<String> {
        [
            "--method",
            "deita-complexity",
            "--scorer",
            p(&tiny("llama")),
            "--data",
            p(&data),
            "--output",
            p(&out),
            "--top-k",
            "5",
            "--embeddings",
            p(embeddings),
        ]
        .map(String::from)
        .to_vec()
    };
    // Records 0..6 point one way (small jitter, cosine > 0.99), 6..12 another, orthogonal to it:
    // of each group only its best-scoring record survives, so 2 are kept although 5 were asked.
    let emb = dir.path().join("e.jsonl");
    let text: String = (0..12)
        .map(|i| {
            let j = (i % 6) as f64 * 0.01;
            if i < 6 {
                format!("[1, {j}, 0]\n")
            } else {
                format!("{{\"embedding\": [0, {j}, 1]}}\n")
            }
        })
        .collect();
    std::fs::write(&emb, text).unwrap();
    let a: Vec<String> = args(&emb);
    let out_run = trainer().arg("select").args(&a).output().unwrap();
    assert!(
        out_run.status.success(),
        "{}",
        String::from_utf8_lossy(&out_run.stderr)
    );
    let s = score_values(&out);
    let best = |r: std::ops::Range<usize>| {
        r.max_by(|&a, &b| s[a].partial_cmp(&s[b]).unwrap().then(b.cmp(&a)))
            .unwrap()
    };
    let input: Vec<String> = std::fs::read_to_string(&data)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let kept: Vec<String> = std::fs::read_to_string(out.join("selected.jsonl"))
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(
        kept,
        vec![input[best(0..6)].clone(), input[best(6..12)].clone()]
    );
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("selection.json")).unwrap())
            .unwrap();
    assert_eq!(report["diversity"]["threshold"], 0.9);
    assert_eq!(report["selected"], 2);

    // One embedding short: refused before anything is scored.
    let short = dir.path().join("short.jsonl");
    std::fs::write(&short, "[1, 0]\n".repeat(11)).unwrap();
    let fresh = dir.path().join("fresh");
    let mut a = args(&short);
    let o = a.iter().position(|x| x == "--output").unwrap();
    a[o + 1] = p(&fresh).into();
    let refused = trainer().arg("select").args(&a).output().unwrap();
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("holds 11 embeddings but the data has 12 records"),
        "{err}"
    );
    assert!(!fresh.join(".progress/run.json").exists());
}

#[test]
fn bad_input_is_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d.jsonl");
    std::fs::write(
        &data,
        "{\"instruction\":\"a\",\"output\":\"b\"}\n{\"instruction\":\"a\"}\n",
    )
    .unwrap();
    let run = |scorer: &Path, data: &Path, rule: &[&str]| -> String {
        let out = trainer()
            .arg("select")
            .args([
                "--method",
                "deita-complexity",
                "--scorer",
                p(scorer),
                "--data",
                p(data),
            ])
            .args(["--output", p(&dir.path().join("out"))])
            .args(rule)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run(&tiny("llama"), &data, &["--top-k", "1"]);
    assert!(err.contains("d.jsonl:2: no `output`"), "{err}");
    let err = run(&tiny("llama"), &data, &[]);
    assert!(
        err.contains("--threshold") && err.contains("--top-k"),
        "{err}"
    );
    let err = run(&tiny("llama"), &data, &["--top-k", "1", "--threshold", "3"]);
    assert!(err.contains("cannot be used with"), "{err}");

    // A scorer whose vocabulary has no token "6".
    std::fs::write(&data, "{\"instruction\":\"a\",\"output\":\"b\"}\n").unwrap();
    let scorer = dir.path().join("no-six");
    std::fs::create_dir(&scorer).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(tiny("llama").join(f), scorer.join(f)).unwrap();
    }
    let mut tok: Value = serde_json::from_str(
        &std::fs::read_to_string(tiny("llama").join("tokenizer.json")).unwrap(),
    )
    .unwrap();
    let vocab = tok["model"]["vocab"].as_object_mut().unwrap();
    let six = vocab.remove("6").unwrap();
    vocab.insert("<six>".into(), six);
    std::fs::write(scorer.join("tokenizer.json"), tok.to_string()).unwrap();
    let err = run(&scorer, &data, &["--top-k", "1"]);
    assert!(err.contains("no single token for \"6\""), "{err}");
    let err = run(&tiny("llama"), &data, &["--top-k", "0"]);
    assert!(err.contains("--top-k must be at least 1"), "{err}");
}
