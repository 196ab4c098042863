//! LoRAMoE against independent references: a plain-PyTorch mixture of LoRA experts on the tiny
//! llama (fixtures/loramoe, made by its make.py), plain LoRA (one expert, no balance term, is the
//! same run), central finite differences in float64, and `harness logprobs --adapter` on the
//! saved adapter.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{DType, Device, Tensor};
use dtm_model::adapter::moe::MoeAdapter;
use dtm_model::adapter::AnyAdapter;
use dtm_model::checkpoint::{self, LoadedModel};
use dtm_model::model::Batch;
use dtm_trainer::data::examples::Example;
use dtm_trainer::loss::{weighted_nll_routed, WeightedSequence};
use dtm_trainer::moe::{self, Balance, ExpertGroup, MoeParams, MoeSettings};
use dtm_trainer::optim::{AdamW, AdamWConfig};
use dtm_trainer::sft::{self, batch_gradients, LossReduction, SftConfig};
use serde_json::Value;

fn shared() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared")
}

fn tiny_llama() -> PathBuf {
    shared().join("models/tiny/llama")
}

fn tiny(dtype: DType) -> LoadedModel {
    checkpoint::load(&tiny_llama(), dtype, &Device::Cpu).unwrap()
}

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/loramoe")
}

fn reference() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture().join("reference.json")).unwrap())
        .unwrap()
}

fn trainer() -> Command {
    Command::new(env!("CARGO_BIN_EXE_trainer"))
}

/// The `harness` binary next to this test's target folder (built by `cargo build --release -p
/// dtm-harness`, or by any workspace build).
fn harness() -> Command {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().and_then(Path::parent).unwrap().join("harness");
    assert!(
        bin.exists(),
        "{} is not built: run `cargo build --release -p dtm-harness` first",
        bin.display()
    );
    Command::new(bin)
}

/// The two sequences of the shared LoRA fixture's batch, as examples (record = row).
fn batch_examples() -> Vec<Example> {
    let batch: Value = serde_json::from_str(
        &std::fs::read_to_string(shared().join("fixtures/tiny-llama-lora-grad/batch.json"))
            .unwrap(),
    )
    .unwrap();
    let rows = |key: &str| -> Vec<Vec<u64>> {
        batch[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                r.as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_u64().unwrap())
                    .collect()
            })
            .collect()
    };
    let (ids, attention, labels) = (
        rows("input_ids"),
        rows("attention_mask"),
        rows("label_mask"),
    );
    (0..ids.len())
        .map(|b| {
            let n = attention[b].iter().filter(|&&v| v == 1).count();
            let target_start = labels[b].iter().position(|&v| v == 1).unwrap();
            Example {
                tokens: ids[b][..n].iter().map(|&v| v as u32).collect(),
                target_start,
                record: b,
            }
        })
        .collect()
}

fn settings(experts: usize, r: usize, alpha: f64) -> MoeSettings {
    MoeSettings {
        experts,
        r,
        alpha,
        dropout: 0.0,
        targets: ["gate_proj", "up_proj", "down_proj"]
            .map(String::from)
            .to_vec(),
    }
}

/// Trainable mixtures on `model` holding the PyTorch fixture's values.
fn fixture_params(model: &mut LoadedModel) -> Vec<MoeParams> {
    let adapter = MoeAdapter::load(&fixture().join("adapter"), &Device::Cpu).unwrap();
    assert_eq!(adapter.config.lora_nums, 4);
    let params = moe::attach(&mut model.decoder, &settings(4, 2, 4.0), 0).unwrap();
    assert_eq!(params.len(), 6);
    let dtype = model.decoder.dtype();
    for p in &params {
        let w = &adapter.weights[&p.module];
        p.router.set(&w.router.to_dtype(dtype).unwrap()).unwrap();
        for (v, t) in p.a.iter().zip(&w.a).chain(p.b.iter().zip(&w.b)) {
            v.set(&t.to_dtype(dtype).unwrap()).unwrap();
        }
    }
    params
}

/// The names `fixtures/loramoe/grads.safetensors` gives [`moe::vars`]' tensors.
fn var_names(params: &[MoeParams]) -> Vec<String> {
    params
        .iter()
        .flat_map(|p| {
            let m = format!("base_model.model.{}", p.module);
            std::iter::once(format!("{m}.lora_route.weight")).chain((0..p.a.len()).flat_map(
                move |i| {
                    [
                        format!("{m}.lora_A{i}.weight"),
                        format!("{m}.lora_B{i}.weight"),
                    ]
                },
            ))
        })
        .collect()
}

fn max_abs(t: &Tensor) -> f64 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

fn fixture_balance(lambda: f64) -> Balance {
    Balance {
        lambda,
        delta: 0.1,
        groups: vec![ExpertGroup::Knowledge, ExpertGroup::Task],
    }
}

#[test]
fn loss_balance_and_gradients_match_a_pytorch_mixture() {
    let reference = reference();
    let mut model = tiny(DType::F64);
    let params = fixture_params(&mut model);
    let vars = moe::vars(&params);
    let examples = batch_examples();
    let batch: Vec<&Example> = examples.iter().collect();
    let expected =
        candle_core::safetensors::load(fixture().join("grads.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(expected.len(), vars.len());
    // One micro-batch, and one sequence per micro-batch: the balance term is per sequence.
    for micro in [2, 1] {
        let step = batch_gradients(
            &model,
            &vars,
            &batch,
            LossReduction::Token,
            micro,
            None,
            Some(&fixture_balance(0.5)),
        )
        .unwrap();
        let (loss, balance) = (
            reference["loss"].as_f64().unwrap(),
            reference["balance"].as_f64().unwrap(),
        );
        // transformers computes the RMSNorm and the rotary tables in float32 even for a float64
        // model, which bounds the agreement at about 1e-8 relative for the values and 1e-5 for
        // the gradients; a wrong gate, scale, variance or padding rule is off by 1e-2 or more.
        assert!(
            (step.loss - loss).abs() <= 1e-7 * loss,
            "{} vs {loss}",
            step.loss
        );
        assert!(
            (step.balance - balance).abs() <= 1e-7 * balance,
            "{} vs {balance}",
            step.balance
        );
        for (name, g) in var_names(&params).iter().zip(&step.grads) {
            let r = &expected[name];
            let diff = max_abs(&(g - r).unwrap());
            assert!(
                diff <= 1e-4 * max_abs(r),
                "micro-batch {micro}, {name}: |Δg| {diff} (max {})",
                max_abs(r)
            );
        }
    }
}

#[test]
fn router_weights_sum_to_one_per_token() {
    for (experts, seed) in [(4, 1), (3, 2)] {
        let mut model = tiny(DType::F32);
        moe::attach(&mut model.decoder, &settings(experts, 2, 4.0), seed).unwrap();
        let examples = batch_examples();
        let n = examples.iter().map(|e| e.tokens.len()).max().unwrap();
        let tokens: Vec<Vec<u32>> = examples
            .iter()
            .map(|e| {
                let mut t = e.tokens.clone();
                t.resize(n, 2);
                t
            })
            .collect();
        let positions: Vec<Vec<i64>> = vec![(0..n as i64).collect(); 2];
        let valid: Vec<Vec<bool>> = examples
            .iter()
            .map(|e| (0..n).map(|j| j < e.tokens.len()).collect())
            .collect();
        let batch = Batch {
            tokens: &tokens,
            positions: &positions,
            valid: &valid,
        };
        let (_, routes) = model.decoder.forward_train_routed(&batch, None).unwrap();
        assert_eq!(routes.len(), 6, "gate/up/down of 2 layers");
        for route in &routes {
            assert_eq!(route.dims(), [2, n, experts]);
            let sums: Vec<Vec<f32>> = route.sum(2).unwrap().to_vec2().unwrap();
            for row in &sums {
                for s in row {
                    assert!(
                        (s - 1.0).abs() <= 1e-6,
                        "a token's routing weights sum to {s}"
                    );
                }
            }
            let g: Vec<f32> = route.flatten_all().unwrap().to_vec1().unwrap();
            assert!(g.iter().all(|&v| v > 0.0 && v < 1.0));
            // The init routes unevenly (the test would pass for a constant 1/E otherwise).
            let spread = g
                .iter()
                .fold(0f32, |m, &v| m.max((v - 1.0 / experts as f32).abs()));
            assert!(spread > 1e-3, "routing is uniform: {spread}");
        }
    }
    // The PyTorch reference saw the same for its random routers.
    assert!(reference()["max_routing_sum_error"].as_f64().unwrap() < 1e-12);
}

#[test]
fn gradients_equal_central_finite_differences_in_float64() {
    let mut model = tiny(DType::F64);
    let params = fixture_params(&mut model);
    let vars = moe::vars(&params);
    let examples = batch_examples();
    let batch: Vec<&Example> = examples.iter().collect();
    let gradients = |balance: Option<&Balance>| {
        batch_gradients(
            &model,
            &vars,
            &batch,
            LossReduction::Token,
            1,
            None,
            balance,
        )
        .unwrap()
        .grads
    };
    // The objective alone (no backward pass), the whole batch in one forward pass.
    let weights = sft::loss_weights(&batch, LossReduction::Token);
    let seqs: Vec<WeightedSequence> = batch
        .iter()
        .zip(&weights)
        .map(|(e, w)| WeightedSequence {
            tokens: &e.tokens,
            weights: w,
        })
        .collect();
    let sequences: Vec<(usize, usize)> = batch.iter().map(|e| (e.tokens.len(), e.record)).collect();
    let objective = |balance: Option<&Balance>| -> f64 {
        let (loss, _, routes) = weighted_nll_routed(&model.decoder, &seqs, None).unwrap();
        let loss = loss.to_scalar::<f64>().unwrap();
        match balance {
            Some(b) => {
                let term = b
                    .term(&routes, &sequences, b.lambda / batch.len() as f64)
                    .unwrap();
                loss + term.to_scalar::<f64>().unwrap()
            }
            None => loss,
        }
    };
    let with = fixture_balance(0.5);
    let (plain, balanced) = (gradients(None), gradients(Some(&with)));
    // The balance term really moves the gradient of every router (and, through the routes of
    // later layers, of earlier layers' experts).
    for (name, (a, b)) in var_names(&params).iter().zip(plain.iter().zip(&balanced)) {
        if name.ends_with("lora_route.weight") {
            let d = max_abs(&(a - b).unwrap());
            assert!(
                d > 1e-4,
                "{name}: the balance term changes its gradient by {d}"
            );
        }
    }
    let h = 1e-5;
    for (balance, grads) in [(None, &plain), (Some(&with), &balanced)] {
        for ((v, g), name) in vars.iter().zip(grads).zip(var_names(&params)) {
            let n = v.elem_count();
            let g: Vec<f64> = g.flatten_all().unwrap().to_vec1().unwrap();
            for idx in [0, n / 2, n - 1] {
                let original = v.as_tensor().copy().unwrap();
                let shape = v.dims().to_vec();
                let at = |delta: f64| {
                    let mut values: Vec<f64> = original.flatten_all().unwrap().to_vec1().unwrap();
                    values[idx] += delta;
                    v.set(&Tensor::from_vec(values, shape.clone(), &Device::Cpu).unwrap())
                        .unwrap();
                    objective(balance)
                };
                let numeric = (at(h) - at(-h)) / (2.0 * h);
                v.set(&original).unwrap();
                assert!(
                    (numeric - g[idx]).abs() <= 1e-6 + 1e-5 * numeric.abs(),
                    "{name} entry {idx} (balance {}): analytic {} vs numeric {numeric}",
                    balance.is_some(),
                    g[idx]
                );
            }
        }
    }
}

/// Per-token log-probabilities (`harness logprobs`' `tokens[].logprob`) and the token ids.
fn harness_logprobs(adapter: &Path, text: &str) -> (Vec<u32>, Vec<f64>) {
    let out = harness()
        .args(["logprobs", "--model"])
        .arg(tiny_llama())
        .arg("--adapter")
        .arg(adapter)
        .args(["--text", text])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids = report["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let logprobs = report["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["logprob"].as_f64())
        .collect();
    (ids, logprobs)
}

fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

#[test]
fn harness_applies_the_pytorch_mixture() {
    let reference = reference();
    let (ids, logprobs) = harness_logprobs(
        &fixture().join("adapter"),
        reference["text"].as_str().unwrap(),
    );
    let want_ids: Vec<u32> = reference["text_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(ids, want_ids);
    let want: Vec<f64> = reference["text_logprobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let diff = max_diff(&logprobs, &want);
    assert!(
        diff <= 1e-4,
        "harness (float32) vs PyTorch (float64): {diff}"
    );
}

#[test]
fn saved_adapter_gives_harness_the_log_probs_of_the_trained_model() {
    let mut model = tiny(DType::F32);
    let s = settings(4, 2, 4.0);
    let params = moe::attach(&mut model.decoder, &s, 5).unwrap();
    let vars = moe::vars(&params);
    let examples = batch_examples();
    let batch: Vec<&Example> = examples.iter().collect();
    let mut opt = AdamW::new(
        vars.clone(),
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.0,
        },
    )
    .unwrap();
    let mut balances = Vec::new();
    for _ in 0..3 {
        let step = batch_gradients(
            &model,
            &vars,
            &batch,
            LossReduction::Token,
            1,
            None,
            Some(&fixture_balance(0.5)),
        )
        .unwrap();
        balances.push(step.balance);
        opt.step(&step.grads, 2e-2).unwrap();
    }
    assert!(balances.iter().all(|b| *b > 0.0 && b.is_finite()));
    let dir = tempfile::tempdir().unwrap();
    let adapter_dir = dir.path().join("adapter");
    moe::to_adapter(&params, s.adapter_config("tiny", 0.5, 0.1))
        .unwrap()
        .save(&adapter_dir)
        .unwrap();

    let text = "Below is an instruction.\n\n### Instruction:\nAdd 2 and 2.\n\n### Response: 4";
    let (ids, from_harness) = harness_logprobs(&adapter_dir, text);
    // The trained model in memory, through the training forward pass.
    let n = ids.len();
    let hidden = model
        .decoder
        .forward_train(
            &Batch {
                tokens: std::slice::from_ref(&ids),
                positions: &[(0..n as i64).collect()],
                valid: &[vec![true; n]],
            },
            None,
        )
        .unwrap();
    let at: Vec<(usize, usize)> = (0..n - 1).map(|p| (0, p)).collect();
    let logits = model.decoder.logits_at(&hidden, &at).unwrap();
    let logp = candle_nn::ops::log_softmax(&logits.to_dtype(DType::F64).unwrap(), 1).unwrap();
    let logp: Vec<Vec<f64>> = logp.to_vec2().unwrap();
    let in_memory: Vec<f64> = (1..n).map(|i| logp[i - 1][ids[i] as usize]).collect();
    let diff = max_diff(&from_harness, &in_memory);
    assert!(diff <= 1e-5, "harness vs the trained model: {diff}");
    // Training moved the routers and the experts, so this is not the base model's answer.
    let base = harness()
        .args(["logprobs", "--model"])
        .arg(tiny_llama())
        .args(["--text", text])
        .output()
        .unwrap();
    let base: Value = serde_json::from_slice(&base.stdout).unwrap();
    let base: Vec<f64> = base["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["logprob"].as_f64())
        .collect();
    assert!(max_diff(&base, &in_memory) > 1e-3);
}

/// 24 Alpaca records from the shared corpora (`trainer data mix`), each given a `kind` type:
/// alternately 1 (world knowledge) and "task".
fn typed_data(dir: &Path) -> PathBuf {
    let mixed = dir.join("mix.jsonl");
    let status = trainer()
        .args([
            "data",
            "mix",
            "--counts",
            "lima=8,alpaca_gpt4=16",
            "--seed",
            "3",
        ])
        .arg("--data-dir")
        .arg(shared().join("data"))
        .arg("--output")
        .arg(&mixed)
        .status()
        .unwrap();
    assert!(status.success());
    let typed: String = std::fs::read_to_string(&mixed)
        .unwrap()
        .lines()
        .enumerate()
        .map(|(i, line)| {
            let mut v: Value = serde_json::from_str(line).unwrap();
            v["kind"] = if i % 2 == 0 {
                serde_json::json!(1)
            } else {
                serde_json::json!("task")
            };
            format!("{v}\n")
        })
        .collect();
    let out = dir.join("typed.jsonl");
    std::fs::write(&out, typed).unwrap();
    out
}

fn sft_args(data: &Path, output: &Path) -> Vec<String> {
    let mut args: Vec<String> = ["sft", "--model"].map(String::from).to_vec();
    args.extend([
        tiny_llama().display().to_string(),
        "--data".into(),
        data.display().to_string(),
        "--output".into(),
        output.display().to_string(),
    ]);
    args.extend(
        [
            "--batch-size",
            "4",
            "--micro-batch-size",
            "2",
            "--max-len",
            "80",
            "--max-steps",
            "5",
            "--warmup-steps",
            "1",
            "--lr",
            "5e-3",
            "--lora-r",
            "4",
            "--lora-dropout",
            "0.1",
            "--lora-targets",
            "q_proj,v_proj,gate_proj,down_proj",
            "--checkpoint-every",
            "2",
            "--seed",
            "9",
        ]
        .map(String::from),
    );
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

fn log_lines(output: &Path) -> Vec<Value> {
    std::fs::read_to_string(output.join("train_log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn tensors(dir: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir.join("adapter/adapter_model.safetensors"), &Device::Cpu)
        .unwrap()
}

#[test]
fn one_expert_without_balance_is_the_plain_lora_run() {
    let dir = tempfile::tempdir().unwrap();
    let data = typed_data(dir.path());
    let plain = dir.path().join("plain");
    let mixture = dir.path().join("moe");
    run_ok(&sft_args(&data, &plain));
    let mut args = sft_args(&data, &mixture);
    args.extend(["--moe-experts", "1"].map(String::from));
    run_ok(&args);

    let (p, m) = (tensors(&plain), tensors(&mixture));
    assert_eq!(p.len(), 2 * 4 * 2, "2 layers × 4 targets × (A, B)");
    assert_eq!(m.len(), 2 * 4 * 3, "… × (router, A0, B0)");
    let mut compared = 0;
    for (name, t) in &p {
        let name_moe = name
            .replace(".lora_A.weight", ".lora_A0.weight")
            .replace(".lora_B.weight", ".lora_B0.weight");
        let a: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = m[&name_moe].flatten_all().unwrap().to_vec1().unwrap();
        let diff = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(
            diff <= 1e-7,
            "{name}: plain LoRA and one expert differ by {diff}"
        );
        compared += 1;
    }
    assert_eq!(compared, 16);
    // Training moved B away from its zero init, so the comparison is not between zeros.
    let b = &p["base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"];
    assert!(max_abs(b) > 1e-4);
    let (lp, lm) = (log_lines(&plain), log_lines(&mixture));
    assert_eq!(lp.len(), 5);
    for (x, y) in lp.iter().zip(&lm) {
        assert_eq!(x["loss"], y["loss"]);
        assert_eq!(x["grad_norm"], y["grad_norm"]);
        assert_eq!(y["balance"], 0.0);
    }
}

#[test]
fn trainer_sft_trains_loramoe_with_the_balance_term_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let data = typed_data(dir.path());
    let output = dir.path().join("run");
    let mut args = sft_args(&data, &output);
    args.extend(
        [
            "--moe-experts",
            "4",
            "--moe-rank",
            "2",
            "--moe-balance",
            "0.5",
            "--moe-balance-delta",
            "0.1",
            "--moe-type-field",
            "kind",
        ]
        .map(String::from),
    );
    run_ok(&args);
    let log = log_lines(&output);
    assert_eq!(log.len(), 5);
    for line in &log {
        let b = line["balance"].as_f64().unwrap();
        assert!(b > 0.0 && b.is_finite(), "balance {b}");
    }
    let config: Value = serde_json::from_str(
        &std::fs::read_to_string(output.join("adapter/adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["peft_type"], "LORAMOE");
    assert_eq!(config["lora_nums"], 4);
    assert_eq!(config["r"], 2);
    assert_eq!(config["blc_weight"], 0.5);
    assert_eq!(config["blc_alpha"], 0.1);
    let t = tensors(&output);
    assert_eq!(
        t.len(),
        2 * 4 * (1 + 2 * 4),
        "layers × targets × (router + 4 × (A, B))"
    );
    assert_eq!(
        t["base_model.model.model.layers.0.self_attn.q_proj.lora_route.weight"].dims(),
        [4, 32]
    );
    assert_eq!(
        t["base_model.model.model.layers.1.mlp.down_proj.lora_B3.weight"].dims(),
        [32, 2]
    );
    #[cfg(unix)]
    for file in ["adapter_config.json", "adapter_model.safetensors"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(output.join("adapter").join(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644, "{file}");
    }
    let AnyAdapter::Moe(loaded) = AnyAdapter::load(&output.join("adapter"), &Device::Cpu).unwrap()
    else {
        panic!("a LoRAMoE folder loads as LoRAMoE");
    };
    assert_eq!(loaded.weights.len(), 8);

    // The same run without the constraint trains differently.
    let unbalanced = dir.path().join("unbalanced");
    let mut plain_args = sft_args(&data, &unbalanced);
    plain_args.extend(["--moe-experts", "4", "--moe-rank", "2"].map(String::from));
    run_ok(&plain_args);
    let name = "base_model.model.model.layers.0.mlp.gate_proj.lora_route.weight";
    let d = max_abs(&(&t[name] - &tensors(&unbalanced)[name]).unwrap());
    assert!(d > 1e-6, "the balance term did not change the router: {d}");
    assert!(log_lines(&unbalanced).iter().all(|l| l["balance"] == 0.0));

    // Stopped after its step-2 checkpoint (a panic at step 3 leaves what a kill there leaves:
    // the step-2 checkpoint and three log lines) and resumed with the same settings, the run
    // ends with the same adapter and log: routers and experts are in the checkpoint.
    let config: SftConfig =
        serde_json::from_str(&std::fs::read_to_string(output.join("train_config.json")).unwrap())
            .unwrap();
    assert_eq!(config.moe.as_ref().unwrap().type_field, "kind");
    let stopped = dir.path().join("stopped");
    let crashed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        sft::run(&config, &stopped, false, &Device::Cpu, &mut |log, _| {
            if log.step == 3 {
                panic!("stopped at step 3");
            }
        })
    }));
    assert!(crashed.is_err());
    assert!(!stopped.join("adapter").exists());
    assert_eq!(log_lines(&stopped).len(), 3);
    sft::run(&config, &stopped, true, &Device::Cpu, &mut |_, _| {}).unwrap();
    assert_eq!(
        std::fs::read(output.join("adapter/adapter_model.safetensors")).unwrap(),
        std::fs::read(stopped.join("adapter/adapter_model.safetensors")).unwrap(),
        "the resumed adapter differs from the uninterrupted one"
    );
    for (x, y) in log.iter().zip(log_lines(&stopped)) {
        assert_eq!(x["loss"], y["loss"]);
        assert_eq!(x["balance"], y["balance"]);
    }
}

#[test]
fn bad_input_is_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let data = typed_data(dir.path());
    let run = |extra: &[&str]| {
        let mut args = sft_args(&data, &dir.path().join(format!("o{}", extra.join("_"))));
        args.extend(extra.iter().map(|s| s.to_string()));
        let out = trainer().args(&args).output().unwrap();
        assert!(!out.status.success(), "{extra:?} was accepted");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = run(&["--moe-experts", "0"]);
    assert!(e.contains("--moe-experts must be positive"), "{e}");
    // λ > 0 without types: the field the records lack, with the file and line.
    let e = run(&["--moe-experts", "4", "--moe-balance", "0.1"]);
    assert!(e.contains("typed.jsonl:1: no `task_type` field"), "{e}");
    let e = run(&[
        "--moe-experts",
        "3",
        "--moe-balance",
        "0.1",
        "--moe-type-field",
        "kind",
    ]);
    assert!(e.contains("needs an even --moe-experts"), "{e}");
    let e = run(&["--moe-experts", "4", "--moe-balance=-1"]);
    assert!(
        e.contains("--moe-balance must be a non-negative number"),
        "{e}"
    );
    let e = run(&["--moe-experts", "4", "--moe-rank", "0"]);
    assert!(e.contains("--moe-rank must be positive"), "{e}");
    let e = run(&["--moe-rank", "2"]);
    assert!(e.contains("--moe-experts"), "{e}");
    for e in [
        run(&["--moe-experts", "0"]),
        run(&["--moe-experts", "4", "--moe-balance", "0.1"]),
    ] {
        assert_eq!(e.trim().lines().count(), 1, "one line: {e}");
    }
    // A record with a type that is neither group.
    let bad = dir.path().join("bad.jsonl");
    let text = std::fs::read_to_string(&data).unwrap();
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    lines[2] = lines[2].replace("\"kind\":1", "\"kind\":\"both\"");
    std::fs::write(&bad, lines.join("\n") + "\n").unwrap();
    let mut args = sft_args(&bad, &dir.path().join("obad"));
    args.extend(
        [
            "--moe-experts",
            "2",
            "--moe-balance",
            "0.1",
            "--moe-type-field",
            "kind",
        ]
        .map(String::from),
    );
    let out = trainer().args(&args).output().unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("bad.jsonl:3: `kind` is \"both\""), "{e}");
    // A LoRAMoE folder is not a plain LoRA adapter to start from or merge.
    let e = run(&[
        "--moe-experts",
        "2",
        "--init-adapter",
        fixture().join("adapter").to_str().unwrap(),
    ]);
    assert!(e.contains("--init-adapter"), "{e}");
    let e = run(&[
        "--init-adapter",
        fixture().join("adapter").to_str().unwrap(),
    ]);
    assert!(
        e.contains("LoRAMoE") && e.contains("cannot be merged"),
        "{e}"
    );
}
