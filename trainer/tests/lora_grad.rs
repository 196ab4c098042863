//! The training forward/backward against independent references: PEFT's loss, gradients and
//! AdamW steps on the tiny llama (shared/fixtures/tiny-llama-lora-grad, made with PyTorch 2.15 +
//! PEFT 0.21.2), central finite differences in float64, and the fused inference path.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use dtm_model::adapter::PeftAdapter;
use dtm_model::checkpoint::{self, LoadedModel};
use dtm_model::model::Batch;
use dtm_trainer::data::examples::Example;
use dtm_trainer::lora::{self, LoraSettings};
use dtm_trainer::optim::{AdamW, AdamWConfig};
use dtm_trainer::sft::{step_gradients, LossReduction};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn shared() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared")
}

fn tiny(name: &str, dtype: DType) -> LoadedModel {
    checkpoint::load(
        &shared().join("models/tiny").join(name),
        dtype,
        &Device::Cpu,
    )
    .unwrap()
}

fn fixture() -> PathBuf {
    shared().join("fixtures/tiny-llama-lora-grad")
}

/// The fixture's batch as examples: targets are where `label_mask` is 1 (response + EOS).
fn fixture_examples() -> Vec<Example> {
    let batch: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("batch.json")).unwrap())
            .unwrap();
    let ids = batch["input_ids"].as_array().unwrap();
    let attention = batch["attention_mask"].as_array().unwrap();
    let labels = batch["label_mask"].as_array().unwrap();
    (0..ids.len())
        .map(|b| {
            let n = attention[b]
                .as_array()
                .unwrap()
                .iter()
                .filter(|v| v.as_u64() == Some(1))
                .count();
            let tokens: Vec<u32> = ids[b].as_array().unwrap()[..n]
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            let mask = labels[b].as_array().unwrap();
            let target_start = (0..n).find(|&t| mask[t].as_u64() == Some(1)).unwrap();
            assert!((target_start..n).all(|t| mask[t].as_u64() == Some(1)));
            Example {
                tokens,
                target_start,
                record: b,
            }
        })
        .collect()
}

fn fixture_settings() -> LoraSettings {
    LoraSettings {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        targets: ["gate_proj", "up_proj", "down_proj"]
            .map(String::from)
            .to_vec(),
    }
}

fn load_tensors(file: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture().join(file), &Device::Cpu).unwrap()
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

fn peft_name(module: &str, factor: &str) -> String {
    format!("base_model.model.{module}.lora_{factor}.weight")
}

#[test]
fn loss_gradients_and_two_adamw_steps_match_peft() {
    let values: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("values.json")).unwrap())
            .unwrap();
    let mut model = tiny("llama", DType::F32);
    let init = PeftAdapter::load(&fixture().join("adapter_init"), &Device::Cpu).unwrap();
    let params = lora::attach(&mut model.decoder, &fixture_settings(), 0, Some(&init)).unwrap();
    assert_eq!(params.len(), 6);
    let examples = fixture_examples();
    let batch: Vec<&Example> = examples.iter().collect();
    assert_eq!(
        batch.iter().map(|e| e.target_tokens()).sum::<usize>(),
        36,
        "the fixture's 36 targets"
    );
    let mut opt = AdamW::new(
        lora::vars(&params),
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.0,
        },
    )
    .unwrap();
    for (step, loss_key, grads_file, after_file) in [
        (
            1,
            "loss_step1",
            "grads_step1.safetensors",
            "after_adamw_step1.safetensors",
        ),
        (
            2,
            "loss_step2_after_one_update",
            "grads_step2.safetensors",
            "after_adamw_step2.safetensors",
        ),
    ] {
        let (loss, grads) =
            step_gradients(&model, &params, &batch, LossReduction::Token, 2, None).unwrap();
        let expected = values[loss_key].as_f64().unwrap();
        assert!(
            (loss - expected).abs() <= 1e-4,
            "step {step}: loss {loss} vs PEFT {expected}"
        );
        let reference = load_tensors(grads_file);
        for (p, pair) in params.iter().zip(grads.chunks(2)) {
            for (factor, g) in ["A", "B"].iter().zip(pair) {
                let r = &reference[&peft_name(&p.module, factor)];
                let tol = 1e-4 * max_abs(r) + 1e-7;
                let diff = max_abs(&(g - r).unwrap());
                assert!(
                    diff <= tol,
                    "step {step} {} {factor}: |Δg| {diff} > {tol}",
                    p.module
                );
            }
        }
        opt.step(&grads, 1e-2).unwrap();
        let after = load_tensors(after_file);
        for p in &params {
            for (factor, v) in [("A", &p.a), ("B", &p.b)] {
                let r = &after[&peft_name(&p.module, factor)];
                let diff = max_abs(&(v.as_tensor() - r).unwrap());
                assert!(
                    diff <= 1e-5,
                    "after step {step} {} {factor}: {diff}",
                    p.module
                );
            }
        }
    }
}

#[test]
fn micro_batching_does_not_change_the_token_mean_loss() {
    // In float64, so that what is compared is the reduction, not float32 rounding (which
    // differs between matrix shapes, e.g. OpenBLAS's small-matrix kernels).
    let mut model = tiny("llama", DType::F64);
    let init = PeftAdapter::load(&fixture().join("adapter_init"), &Device::Cpu).unwrap();
    let params = lora::attach(&mut model.decoder, &fixture_settings(), 0, Some(&init)).unwrap();
    let examples = fixture_examples();
    let batch: Vec<&Example> = examples.iter().collect();
    let (l1, g1) = step_gradients(&model, &params, &batch, LossReduction::Token, 1, None).unwrap();
    let (l2, g2) = step_gradients(&model, &params, &batch, LossReduction::Token, 2, None).unwrap();
    assert!((l1 - l2).abs() < 1e-12, "{l1} vs {l2}");
    for (a, b) in g1.iter().zip(&g2) {
        assert!(max_abs(&(a - b).unwrap()) <= 1e-12 * max_abs(b) + 1e-15);
    }
    // The per-sequence mean differs (8 and 28 targets): it is really another reduction.
    let (ls, _) =
        step_gradients(&model, &params, &batch, LossReduction::Sequence, 2, None).unwrap();
    assert!((ls - l2).abs() > 1e-3, "{ls} vs {l2}");
}

/// Random non-zero A and B on every linear layer, so that every factor has a gradient.
fn random_adapter(model: &mut LoadedModel, r: usize, seed: u64) -> Vec<lora::LoraParams> {
    let settings = LoraSettings {
        r,
        alpha: 2.0 * r as f64,
        dropout: 0.0,
        targets: [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ]
        .map(String::from)
        .to_vec(),
    };
    let params = lora::attach(&mut model.decoder, &settings, seed, None).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for p in &params {
        let values: Vec<f32> = (0..p.b.elem_count())
            .map(|_| rng.random_range(-0.2f32..0.2))
            .collect();
        let b = Tensor::from_vec(values, p.b.dims(), &Device::Cpu)
            .unwrap()
            .to_dtype(p.b.dtype())
            .unwrap();
        p.b.set(&b).unwrap();
    }
    params
}

#[test]
fn every_lora_tensor_gets_a_nonzero_gradient_on_every_architecture() {
    for name in ["llama", "qwen2", "gemma3"] {
        let mut model = tiny(name, DType::F32);
        let params = random_adapter(&mut model, 2, 7);
        assert_eq!(params.len(), 14, "{name}: 7 layers × 2 blocks");
        let examples = fixture_examples();
        let batch: Vec<&Example> = examples.iter().collect();
        let (_, grads) =
            step_gradients(&model, &params, &batch, LossReduction::Token, 2, None).unwrap();
        for (p, pair) in params.iter().zip(grads.chunks(2)) {
            for (factor, g) in ["A", "B"].iter().zip(pair) {
                assert!(
                    max_abs(g) > 1e-6,
                    "{name} {} {factor}: zero gradient",
                    p.module
                );
            }
        }
    }
}

#[test]
fn gradients_equal_central_finite_differences_in_float64() {
    let mut model = tiny("llama", DType::F64);
    let params = random_adapter(&mut model, 2, 3);
    let examples = fixture_examples();
    let batch: Vec<&Example> = examples.iter().collect();
    let (_, grads) =
        step_gradients(&model, &params, &batch, LossReduction::Token, 2, None).unwrap();
    let vars = lora::vars(&params);
    let h = 1e-5;
    // A few entries of every tensor: the first, the middle and the last.
    for (v, g) in vars.iter().zip(&grads) {
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
                let (loss, _) =
                    step_gradients(&model, &params, &batch, LossReduction::Token, 2, None).unwrap();
                loss
            };
            let numeric = (at(h) - at(-h)) / (2.0 * h);
            v.set(&original).unwrap();
            assert!(
                (numeric - g[idx]).abs() <= 1e-6 + 1e-5 * numeric.abs(),
                "entry {idx}: analytic {} vs numeric {numeric}",
                g[idx]
            );
        }
    }
}

#[test]
fn fused_and_differentiable_forward_passes_agree() {
    for name in ["llama", "qwen2", "gemma3"] {
        let mut model = tiny(name, DType::F32);
        random_adapter(&mut model, 2, 11);
        let tokens = fixture_examples()[1].tokens.clone();
        let n = tokens.len();
        let batch = Batch {
            tokens: &[tokens],
            positions: &[(0..n as i64).collect()],
            valid: &[vec![true; n]],
        };
        let mut cache = model.decoder.new_cache(1);
        let fused = model.decoder.forward(&batch, &mut cache).unwrap();
        let train = model.decoder.forward_train(&batch, None).unwrap();
        let diff = max_abs(&(fused - train).unwrap());
        assert!(diff <= 1e-5, "{name}: {diff}");
    }
}

#[test]
fn dropout_masks_are_reproducible_and_change_the_loss() {
    let mut model = tiny("llama", DType::F32);
    let mut settings = fixture_settings();
    settings.dropout = 0.3;
    let init = PeftAdapter::load(&fixture().join("adapter_init"), &Device::Cpu).unwrap();
    let params = lora::attach(&mut model.decoder, &settings, 0, Some(&init)).unwrap();
    let examples = fixture_examples();
    let batch: Vec<&Example> = examples.iter().collect();
    let run = |key: Option<(u64, u64)>| {
        step_gradients(&model, &params, &batch, LossReduction::Token, 2, key)
            .unwrap()
            .0
    };
    let (plain, a, b, c) = (
        run(None),
        run(Some((1, 5))),
        run(Some((1, 5))),
        run(Some((1, 6))),
    );
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert!((a - plain).abs() > 1e-6);
}
