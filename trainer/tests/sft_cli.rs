//! `trainer sft` through the binary: outputs, kill -9 + resume, refusals, and the data rules.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use candle_core::Device;
use dtm_model::checkpoint;
use dtm_trainer::data::examples::{tokenize, TokenizeOptions, ALPACA_PROMPT};
use dtm_trainer::data::Record;

fn shared() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared")
}

fn tiny_llama() -> PathBuf {
    shared().join("models/tiny/llama")
}

fn trainer() -> Command {
    Command::new(env!("CARGO_BIN_EXE_trainer"))
}

/// 40 Alpaca records from the shared corpora, via `trainer data mix`.
fn data(dir: &Path) -> PathBuf {
    let out = dir.join("mix.jsonl");
    let status = trainer()
        .args([
            "data",
            "mix",
            "--counts",
            "lima=10,alpaca_gpt4=30",
            "--seed",
            "3",
        ])
        .arg("--data-dir")
        .arg(shared().join("data"))
        .arg("--output")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    out
}

fn sft_args(data: &Path, output: &Path) -> Vec<String> {
    [
        "sft",
        "--model",
        tiny_llama().to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "--batch-size",
        "4",
        "--micro-batch-size",
        "2",
        "--max-len",
        "96",
        "--epochs",
        "2",
        "--warmup-steps",
        "3",
        "--lr",
        "5e-3",
        "--lora-dropout",
        "0.1",
        "--lora-targets",
        "q_proj,v_proj,gate_proj,down_proj",
        "--checkpoint-every",
        "2",
        "--seed",
        "9",
    ]
    .map(String::from)
    .to_vec()
}

fn log_lines(output: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(output.join("train_log.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Runs `args(output)` straight, then again killed with SIGKILL mid-run (after a checkpoint,
/// before the end) and resumed with the same command; the adapters and logs must be identical.
/// Returns the two output folders.
fn kill_and_resume(dir: &Path, args: &dyn Fn(&Path) -> Vec<String>) -> (PathBuf, PathBuf) {
    let straight = dir.join("straight");
    let out = trainer().args(args(&straight)).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let total = log_lines(&straight).len();
    assert_eq!(total, 20, "40 records, batch 4, 2 epochs");

    // Kill -9 mid-run, after a checkpoint and before the end, then resume with the same command.
    let killed = dir.join("killed");
    let mut child = trainer()
        .args(args(&killed))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while log_lines(&killed).len() < 7 {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "run did not progress"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(!killed.join("adapter").exists());
    let refused = trainer().args(args(&killed)).output().unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--resume"));
    let mut resumed = args(&killed);
    resumed.push("--resume".into());
    let out = trainer().args(&resumed).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let a = std::fs::read(straight.join("adapter/adapter_model.safetensors")).unwrap();
    let b = std::fs::read(killed.join("adapter/adapter_model.safetensors")).unwrap();
    assert_eq!(a, b, "resumed adapter differs from the uninterrupted one");
    assert_eq!(log_lines(&straight).len(), log_lines(&killed).len());
    for (x, y) in log_lines(&straight).iter().zip(log_lines(&killed)) {
        for key in [
            "loss",
            "penalty",
            "lr",
            "grad_norm",
            "sft_tokens",
            "replay_tokens",
        ] {
            assert_eq!(x[key], y[key], "{key}");
        }
    }
    (straight, killed)
}

#[test]
fn killed_and_resumed_run_ends_with_the_uninterrupted_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path());
    let (_, killed) = kill_and_resume(dir.path(), &|out| sft_args(&data, out));

    // A resume with other settings is refused.
    let mut other = sft_args(&data, &killed);
    let lr = other.iter().position(|a| a == "--lr").unwrap();
    other[lr + 1] = "1e-3".into();
    other.push("--resume".into());
    let out = trainer().args(&other).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("other settings (lr: 0.005 then, 0.001 now)"),
        "{err}"
    );
}

#[test]
fn outputs_follow_peft_and_the_log_format() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path());
    let output = dir.path().join("run");
    let mut args = sft_args(&data, &output);
    args.extend(["--max-steps".into(), "3".into()]);
    let out = trainer().args(&args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(output.join("adapter/adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["task_type"], "CAUSAL_LM");
    assert_eq!(config["r"], 16);
    assert_eq!(config["lora_alpha"], 16.0);
    assert_eq!(config["lora_dropout"], 0.1);
    assert_eq!(
        config["target_modules"],
        serde_json::json!(["q_proj", "v_proj", "gate_proj", "down_proj"])
    );
    let tensors = candle_core::safetensors::load(
        output.join("adapter/adapter_model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(tensors.len(), 2 * 2 * 4, "2 layers × 4 targets × (A, B)");
    let a = &tensors["base_model.model.model.layers.0.mlp.gate_proj.lora_A.weight"];
    let b = &tensors["base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"];
    assert_eq!(a.dims(), [16, 32]);
    assert_eq!(b.dims(), [16, 16]);
    let log = log_lines(&output);
    assert_eq!(log.len(), 3);
    for (i, line) in log.iter().enumerate() {
        for key in [
            "step",
            "epoch",
            "loss",
            "lr",
            "grad_norm",
            "target_tokens",
            "tokens_per_s",
        ] {
            assert!(line.get(key).is_some(), "{key} missing");
        }
        assert_eq!(line["step"], i as u64 + 1);
    }
    // Warm-up over 3 steps: the first step uses learning rate 0.
    assert_eq!(log[0]["lr"], 0.0);
    assert!((log[1]["lr"].as_f64().unwrap() - 5e-3 / 3.0).abs() < 1e-12);
}

#[test]
fn bad_input_is_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"instruction\": \"a\", \"output\": \"b\"}\n{\"instruction\": \"a\"}\n",
    )
    .unwrap();
    let run = |data: &Path, extra: &[&str]| {
        let mut args = sft_args(data, &dir.path().join(format!("o{}", extra.len())));
        for pair in extra.chunks(2) {
            match args.iter().position(|a| a == pair[0]) {
                Some(i) if pair.len() == 2 => args[i + 1] = pair[1].to_string(),
                _ => args.extend(pair.iter().map(|s| s.to_string())),
            }
        }
        let out = trainer().args(&args).output().unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(run(&bad, &[]).contains("bad.jsonl:2: no `output`"));
    let good = data(dir.path());
    assert!(run(&good, &["--lora-targets", "nope_proj"]).contains("no layer named nope_proj"));
    assert!(run(&good, &["--betas", "0.9"]).contains("--betas"));
    assert!(run(&good, &["--lr=-1"]).contains("--lr"));
    assert!(run(&good, &["--max-len", "10"]).contains("no record has a response token"));
}

#[test]
fn tokens_are_prompt_then_output_then_eos_with_loss_on_the_response() {
    let model = checkpoint::load(&tiny_llama(), candle_core::DType::F32, &Device::Cpu).unwrap();
    let tok = &model.tokenizer;
    let record = Record {
        instruction: "Add 2 and 2.".into(),
        input: String::new(),
        output: " 4".into(),
        source: None,
        source_index: None,
    };
    let long = Record {
        output: " word".repeat(200),
        ..record.clone()
    };
    let prompt = ALPACA_PROMPT.replace("{instruction}", "Add 2 and 2.");
    assert!(prompt.ends_with("### Response:"));
    let p = tok.encode(&prompt).unwrap();
    let o = tok.encode(" 4").unwrap();
    let eos = tok.eos_token_ids()[0];
    let opts = TokenizeOptions {
        max_len: 1000,
        append_eos: true,
    };
    let (ex, dropped) = tokenize(&[record.clone(), long.clone()], tok, opts).unwrap();
    assert_eq!(dropped, 0);
    let expected: Vec<u32> = p.iter().chain(&o).copied().chain([eos]).collect();
    assert_eq!(ex[0].tokens, expected);
    assert_eq!(ex[0].target_start, p.len());
    assert_eq!(ex[0].target_tokens(), o.len() + 1);
    // --no-eos, and truncation at --max-len cutting the response.
    let (ex, _) = tokenize(
        &[record.clone(), long],
        tok,
        TokenizeOptions {
            max_len: p.len() + 5,
            append_eos: false,
        },
    )
    .unwrap();
    assert_eq!(
        ex[0].tokens,
        p.iter().chain(&o).copied().collect::<Vec<_>>()
    );
    assert_eq!(ex[1].tokens.len(), p.len() + 5);
    // A record whose response is cut away entirely is dropped and counted.
    let (ex, dropped) = tokenize(
        &[record],
        tok,
        TokenizeOptions {
            max_len: p.len(),
            append_eos: true,
        },
    )
    .unwrap();
    assert!(ex.is_empty());
    assert_eq!(dropped, 1);
}

fn wiki_demo() -> PathBuf {
    shared().join("data/replay_text/llamafactory/data/wiki_demo.txt")
}

/// `trainer fisher` of `model` over a few 64-token chunks of Wikipedia text, on the layers
/// `sft_args` adapts unless `extra` names others.
fn fisher_file(model: &Path, output: &Path, extra: &[&str]) -> PathBuf {
    let targets = match extra.contains(&"--lora-targets") {
        true => &[][..],
        false => &["--lora-targets", "q_proj,v_proj,gate_proj,down_proj"][..],
    };
    let out = trainer()
        .args(["fisher", "--model"])
        .arg(model)
        .arg("--data")
        .arg(wiki_demo())
        .arg("--output")
        .arg(output)
        .args(["--samples", "6", "--max-len", "64"])
        .args(targets)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    output.to_owned()
}

fn with(mut args: Vec<String>, extra: &[&str]) -> Vec<String> {
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn run_ok(args: &[String]) {
    let out = trainer().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn ewc_and_replay_runs_resume_exactly_after_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path());
    let fisher = fisher_file(&tiny_llama(), &dir.path().join("F.safetensors"), &[]);
    let args = |out: &Path| {
        with(
            sft_args(&data, out),
            &[
                "--reg",
                "ewc",
                "--fisher",
                fisher.to_str().unwrap(),
                "--reg-lambda",
                "1000",
                "--replay",
                wiki_demo().to_str().unwrap(),
                "--replay-ratio",
                "0.5",
            ],
        )
    };
    let (straight, _) = kill_and_resume(dir.path(), &args);
    let log = log_lines(&straight);
    assert!(log
        .iter()
        .skip(3)
        .all(|l| l["penalty"].as_f64().unwrap() > 0.0));
    assert!(
        log.iter()
            .map(|l| l["replay_tokens"].as_u64().unwrap())
            .sum::<u64>()
            > 0
    );
}

#[test]
fn zero_lambda_and_zero_replay_ratio_give_the_vanilla_run() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path());
    let fisher = fisher_file(&tiny_llama(), &dir.path().join("F.safetensors"), &[]);
    let short = |name: &str| {
        with(
            sft_args(&data, &dir.path().join(name)),
            &["--max-steps", "6"],
        )
    };
    run_ok(&short("vanilla"));
    run_ok(&with(short("l2_0"), &["--reg", "l2", "--reg-lambda", "0"]));
    run_ok(&with(
        short("ewc_0"),
        &[
            "--reg",
            "ewc",
            "--reg-lambda",
            "0",
            "--fisher",
            fisher.to_str().unwrap(),
        ],
    ));
    run_ok(&with(
        short("replay_0"),
        &[
            "--replay",
            wiki_demo().to_str().unwrap(),
            "--replay-ratio",
            "0",
        ],
    ));
    run_ok(&with(short("l2"), &["--reg", "l2", "--reg-lambda", "50"]));
    run_ok(&with(
        short("ewc"),
        &[
            "--reg",
            "ewc",
            "--reg-lambda",
            "1e4",
            "--fisher",
            fisher.to_str().unwrap(),
        ],
    ));
    run_ok(&with(
        short("replay"),
        &["--replay", wiki_demo().to_str().unwrap()],
    ));

    let adapter = |name: &str| {
        std::fs::read(
            dir.path()
                .join(name)
                .join("adapter/adapter_model.safetensors"),
        )
        .unwrap()
    };
    let vanilla_log = log_lines(&dir.path().join("vanilla"));
    for name in ["l2_0", "ewc_0", "replay_0"] {
        assert!(
            adapter(name) == adapter("vanilla"),
            "{name} differs from Vanilla"
        );
        let log = log_lines(&dir.path().join(name));
        assert_eq!(log.len(), vanilla_log.len());
        for (x, y) in vanilla_log.iter().zip(&log) {
            for key in ["loss", "grad_norm", "target_tokens", "sft_tokens"] {
                assert_eq!(x[key], y[key], "{name} {key}");
            }
            assert_eq!(y["penalty"], 0.0);
            assert_eq!(y["replay_tokens"], 0);
        }
    }
    for name in ["l2", "ewc", "replay"] {
        assert!(adapter(name) != adapter("vanilla"), "{name} is Vanilla");
    }
    // ΔW = 0 until the first update (B = 0, and the first warm-up step has learning rate 0).
    for name in ["l2", "ewc"] {
        let log = log_lines(&dir.path().join(name));
        assert_eq!(log[0]["penalty"], 0.0);
        assert_eq!(log[1]["penalty"], 0.0);
        assert!(
            log[2..]
                .iter()
                .all(|l| l["penalty"].as_f64().unwrap() > 0.0),
            "{name}"
        );
        assert_eq!(log[0]["loss"], vanilla_log[0]["loss"]);
    }
    // Replay at 1:1: the replayed tokens trail the SFT tokens by less than one 96-token chunk.
    let log = log_lines(&dir.path().join("replay"));
    let (mut sft, mut replayed) = (0u64, 0u64);
    for (x, y) in vanilla_log.iter().zip(&log) {
        assert_eq!(x["sft_tokens"], y["sft_tokens"]);
        sft += y["sft_tokens"].as_u64().unwrap();
        replayed += y["replay_tokens"].as_u64().unwrap();
        assert!(
            replayed <= sft && sft - replayed < 96,
            "{replayed} replayed for {sft}"
        );
        assert_ne!(x["loss"], y["loss"]);
    }
    assert!(replayed > 0);
}

#[test]
fn baseline_misuse_is_one_clear_error_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path());
    let fisher = fisher_file(&tiny_llama(), &dir.path().join("F.safetensors"), &[]);
    let mut n = 0;
    let mut refused = |extra: &[&str]| {
        n += 1;
        let output = dir.path().join(format!("refused{n}"));
        let out = trainer()
            .args(with(sft_args(&data, &output), extra))
            .output()
            .unwrap();
        assert!(!out.status.success(), "{extra:?} was accepted");
        assert!(
            !output.join("train_log.jsonl").exists(),
            "{extra:?}: training started"
        );
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(err.lines().count(), 1, "{err}");
        err
    };
    let f = fisher.to_str().unwrap();
    let e = refused(&["--reg", "ewc", "--reg-lambda", "1"]);
    assert!(e.contains("--reg ewc needs --fisher"), "{e}");
    let e = refused(&["--reg", "l2"]);
    assert!(e.contains("--reg l2 needs --reg-lambda"), "{e}");
    let e = refused(&["--reg", "l2", "--reg-lambda=-0.5"]);
    assert!(
        e.contains("--reg-lambda must be a non-negative number"),
        "{e}"
    );
    let e = refused(&["--reg-lambda", "1"]);
    assert!(
        e.contains("--reg-lambda needs --reg l2 or --reg ewc"),
        "{e}"
    );
    let e = refused(&["--reg", "l2", "--reg-lambda", "1", "--fisher", f]);
    assert!(e.contains("--fisher is used by --reg ewc only"), "{e}");
    let e = refused(&[
        "--replay",
        wiki_demo().to_str().unwrap(),
        "--replay-ratio=-1",
    ]);
    assert!(
        e.contains("--replay-ratio must be a non-negative number"),
        "{e}"
    );
    let e = refused(&["--replay-ratio", "1"]);
    assert!(e.contains("--replay-ratio needs --replay"), "{e}");
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "\n\n").unwrap();
    let e = refused(&["--replay", empty.to_str().unwrap()]);
    assert!(e.contains("empty.txt: holds no text"), "{e}");
    let short = dir.path().join("short.txt");
    std::fs::write(&short, "only a few words\n").unwrap();
    let e = refused(&["--replay", short.to_str().unwrap()]);
    assert!(
        e.contains("short.txt: holds 4 tokens, fewer than one chunk"),
        "{e}"
    );

    // Fisher files that do not fit: another model of the same shapes, other layers, other
    // shapes, an adapted model's.
    let ewc = |f: &Path| {
        vec!["--reg", "ewc", "--reg-lambda", "1", "--fisher"]
            .into_iter()
            .map(String::from)
            .chain([f.to_str().unwrap().to_owned()])
            .collect::<Vec<_>>()
    };
    let qwen = fisher_file(
        &shared().join("models/tiny/qwen2"),
        &dir.path().join("qwen.safetensors"),
        &[],
    );
    let e = refused(&ewc(&qwen).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        e.contains("qwen.safetensors: the Fisher of") && e.contains("qwen2 (sha256"),
        "{e}"
    );
    assert!(e.contains("not of --model"), "{e}");
    let mlp = fisher_file(
        &tiny_llama(),
        &dir.path().join("mlp.safetensors"),
        &["--lora-targets", "gate_proj,up_proj,down_proj"],
    );
    let e = refused(&ewc(&mlp).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        e.contains("mlp.safetensors: has no tensor model.layers.0.self_attn.q_proj.weight"),
        "{e}"
    );
    let shaped = dir.path().join("shaped.safetensors");
    let mut tensors = candle_core::safetensors::load(&fisher, &Device::Cpu).unwrap();
    tensors.insert(
        "model.layers.1.mlp.gate_proj.weight".into(),
        candle_core::Tensor::ones((32, 64), candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&tensors, &shaped).unwrap();
    let e = refused(&ewc(&shaped).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        e.contains("shaped.safetensors: tensor model.layers.1.mlp.gate_proj.weight has shape [32, 64], but this model's model.layers.1.mlp.gate_proj.weight is [64, 32]"),
        "{e}"
    );
    let adapted = fisher_file(
        &tiny_llama(),
        &dir.path().join("adapted.safetensors"),
        &[
            "--adapter",
            shared()
                .join("fixtures/tiny-llama-lora-grad/adapter_init")
                .to_str()
                .unwrap(),
        ],
    );
    let e = refused(&ewc(&adapted).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(e.contains("EWC needs the base model's"), "{e}");
}

#[test]
fn fisher_cli_writes_one_tensor_per_adapted_matrix_with_its_provenance() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path());
    let read = |path: &Path| {
        let bytes = std::fs::read(path).unwrap();
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let meta = header.metadata().clone().unwrap();
        (
            candle_core::safetensors::load(path, &Device::Cpu).unwrap(),
            meta,
        )
    };
    // Text: six chunks drawn from Wikipedia; SFT records: all 40, targets as in `trainer sft`.
    let text = fisher_file(&tiny_llama(), &dir.path().join("text.safetensors"), &[]);
    let sft = dir.path().join("sft.safetensors");
    let out = trainer()
        .args(["fisher", "--model"])
        .arg(tiny_llama())
        .arg("--data")
        .arg(&data)
        .arg("--output")
        .arg(&sft)
        .args(["--max-len", "96"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let model = checkpoint::load(&tiny_llama(), candle_core::DType::F32, &Device::Cpu).unwrap();
    let records = dtm_trainer::data::read_jsonl(&data).unwrap();
    let options = TokenizeOptions {
        max_len: 96,
        append_eos: true,
    };
    let n = tokenize(&records, &model.tokenizer, options)
        .unwrap()
        .0
        .len();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("over {n} of {n} SFT records")),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (t, meta) = read(&text);
    assert_eq!(meta["sequences"], "6");
    assert_eq!(meta["tokens"], "384");
    assert_eq!(
        meta["model_sha256"],
        checkpoint::fingerprint(&tiny_llama()).unwrap()
    );
    assert_eq!(meta["format"], dtm_trainer::fisher::FORMAT);
    let mut names: Vec<&String> = t.keys().collect();
    names.sort();
    assert_eq!(names.len(), 8, "2 layers × 4 matrices");
    assert_eq!(names[0], "model.layers.0.mlp.down_proj.weight");
    assert_eq!(t["model.layers.0.mlp.down_proj.weight"].dims(), [32, 64]);
    assert_eq!(t["model.layers.1.self_attn.v_proj.weight"].dims(), [16, 32]);
    let (s, meta) = read(&sft);
    assert_eq!(meta["sequences"], n.to_string());
    assert_eq!(
        s.len(),
        6,
        "the default targets: gate/up/down_proj × 2 layers"
    );
    for f in t.values().chain(s.values()) {
        assert_eq!(f.dtype(), candle_core::DType::F32);
        let min: f32 = f
            .flatten_all()
            .unwrap()
            .min(0)
            .unwrap()
            .to_scalar()
            .unwrap();
        let max: f32 = f
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(min >= 0.0 && max > 0.0 && max.is_finite());
    }

    let refused = |extra: &[&str]| {
        let out = trainer()
            .args(["fisher", "--model"])
            .arg(tiny_llama())
            .arg("--output")
            .arg(dir.path().join("never.safetensors"))
            .args(extra)
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(!dir.path().join("never.safetensors").exists());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let d = data.to_str().unwrap();
    let e = refused(&["--data", d, "--lora-targets", "nope_proj"]);
    assert!(e.contains("no layer named nope_proj"), "{e}");
    let e = refused(&["--data", d, "--samples", "0"]);
    assert!(e.contains("--samples must be positive"), "{e}");
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"text\": \"fine\"}\n{\"body\": 3}\n").unwrap();
    let e = refused(&["--data", bad.to_str().unwrap()]);
    assert!(e.contains("bad.jsonl:2: no `text` field"), "{e}");
}
