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

#[test]
fn killed_and_resumed_run_ends_with_the_uninterrupted_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path());
    let straight = dir.path().join("straight");
    let out = trainer().args(sft_args(&data, &straight)).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let total = log_lines(&straight).len();
    assert_eq!(total, 20, "40 records, batch 4, 2 epochs");

    // Kill -9 mid-run, after a checkpoint and before the end, then resume with the same command.
    let killed = dir.path().join("killed");
    let mut child = trainer()
        .args(sft_args(&data, &killed))
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
    let refused = trainer().args(sft_args(&data, &killed)).output().unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--resume"));
    let mut args = sft_args(&data, &killed);
    args.push("--resume".into());
    let out = trainer().args(&args).output().unwrap();
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
        assert_eq!(x["loss"], y["loss"]);
        assert_eq!(x["lr"], y["lr"]);
        assert_eq!(x["grad_norm"], y["grad_norm"]);
    }

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
