//! The baselines' parts against references computed here: the L2 and EWC penalties against
//! ΔW = s·B·A formed entry by entry and their gradients against central finite differences (alone
//! and inside the SFT objective), the Fisher against per-example finite differences of each
//! sequence's mean log-likelihood, Fisher files' checks, and text chunking.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use dtm_model::checkpoint::{self, LoadedModel};
use dtm_trainer::baselines::{penalty_gradients, Ewc, Regulariser, L2};
use dtm_trainer::data::examples::Example;
use dtm_trainer::data::text;
use dtm_trainer::fisher::{self, Fisher};
use dtm_trainer::lora::{self, LoraParams, LoraSettings};
use dtm_trainer::loss::{weighted_nll, WeightedSequence};
use dtm_trainer::sft::{loss_weights, objective_gradients, LossReduction};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn shared() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared")
}

fn tiny_llama(dtype: DType) -> LoadedModel {
    checkpoint::load(&shared().join("models/tiny/llama"), dtype, &Device::Cpu).unwrap()
}

fn targets() -> Vec<String> {
    ["gate_proj", "up_proj", "down_proj"]
        .map(String::from)
        .to_vec()
}

fn settings() -> LoraSettings {
    LoraSettings {
        r: 2,
        alpha: 6.0,
        dropout: 0.0,
        targets: targets(),
    }
}

/// LoRA factors with random non-zero A and B on gate/up/down_proj.
fn random_adapter(model: &mut LoadedModel, seed: u64) -> Vec<LoraParams> {
    let params = lora::attach(&mut model.decoder, &settings(), seed, None).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for p in &params {
        let values: Vec<f64> = (0..p.b.elem_count())
            .map(|_| rng.random_range(-0.3..0.3))
            .collect();
        let b = Tensor::from_vec(values, p.b.dims(), &Device::Cpu)
            .unwrap()
            .to_dtype(p.b.dtype())
            .unwrap();
        p.b.set(&b).unwrap();
    }
    params
}

fn to_matrix(t: &Tensor) -> Vec<Vec<f64>> {
    t.to_dtype(DType::F64).unwrap().to_vec2().unwrap()
}

/// s·B·A by explicit sums.
fn delta(p: &LoraParams, scale: f64) -> Vec<Vec<f64>> {
    let (a, b) = (to_matrix(p.a.as_tensor()), to_matrix(p.b.as_tensor()));
    b.iter()
        .map(|row| {
            (0..a[0].len())
                .map(|j| scale * row.iter().zip(&a).map(|(x, a_k)| x * a_k[j]).sum::<f64>())
                .collect()
        })
        .collect()
}

/// Random sequences of the tiny vocabulary, targets from `target_start` on.
fn random_examples(n: usize, seed: u64) -> Vec<Example> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            let len = 9 + 3 * i;
            Example {
                tokens: (0..len).map(|_| rng.random_range(0..49152u32)).collect(),
                target_start: 1 + i % 4,
                record: i,
            }
        })
        .collect()
}

/// Central finite differences of `f` at a few entries (first, middle, last) of every factor,
/// against `grads` in `lora::vars` order.
fn check_against_finite_differences(
    params: &[LoraParams],
    grads: &[Tensor],
    f: &dyn Fn() -> f64,
    h: f64,
    tol: f64,
) {
    let vars = lora::vars(params);
    assert_eq!(vars.len(), grads.len());
    for (k, (v, g)) in vars.iter().zip(grads).enumerate() {
        let g: Vec<f64> = g.flatten_all().unwrap().to_vec1().unwrap();
        let n = v.elem_count();
        for idx in [0, n / 2, n - 1] {
            let original = v.as_tensor().copy().unwrap();
            let at = |d: f64| {
                let mut values: Vec<f64> = original.flatten_all().unwrap().to_vec1().unwrap();
                values[idx] += d;
                v.set(&Tensor::from_vec(values, v.dims(), &Device::Cpu).unwrap())
                    .unwrap();
                f()
            };
            let numeric = (at(h) - at(-h)) / (2.0 * h);
            v.set(&original).unwrap();
            assert!(
                (numeric - g[idx]).abs() <= tol * (1.0 + numeric.abs()),
                "tensor {k} entry {idx}: analytic {} vs numeric {numeric}",
                g[idx]
            );
        }
    }
}

#[test]
fn l2_penalty_is_half_lambda_times_the_squared_norm_of_delta_w_and_its_gradient_is_exact() {
    let mut model = tiny_llama(DType::F64);
    let params = random_adapter(&mut model, 1);
    let scale = settings().alpha / settings().r as f64;
    let l2 = L2 { lambda: 0.7, scale };
    let (value, grads) = penalty_gradients(&l2, &params).unwrap();
    let expected: f64 = params
        .iter()
        .map(|p| delta(p, scale).iter().flatten().map(|d| d * d).sum::<f64>())
        .sum::<f64>()
        * 0.35;
    assert!(value > 1e-3, "{value}");
    assert!(
        (value - expected).abs() <= 1e-12 * expected,
        "{value} vs {expected}"
    );
    // Plain values: a gradient that kept its graph would chain every step's graph (and, for
    // EWC, ΔW-sized intermediates) into AdamW's moments.
    assert!(grads.iter().all(|g| !g.track_op()));
    let f = || penalty_gradients(&l2, &params).unwrap().0;
    check_against_finite_differences(&params, &grads, &f, 1e-6, 1e-7);
}

/// A random non-negative "Fisher" for every adapted matrix of the tiny llama.
fn random_fisher(model: &LoadedModel, seed: u64) -> Fisher {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let tensors = fisher::target_modules(&model.decoder, &targets())
        .unwrap()
        .into_iter()
        .map(|m| {
            let dims = model
                .decoder
                .projections()
                .into_iter()
                .find(|(n, _)| *n == m)
                .unwrap()
                .1
                .weight()
                .dims()
                .to_vec();
            let n: usize = dims.iter().product();
            let values: Vec<f64> = (0..n).map(|_| rng.random_range(0.0..2.0)).collect();
            (
                fisher::weight_name(&m),
                Tensor::from_vec(values, dims, &Device::Cpu).unwrap(),
            )
        })
        .collect();
    Fisher {
        tensors,
        metadata: BTreeMap::new(),
    }
}

#[test]
fn ewc_penalty_is_half_lambda_times_fisher_weighted_delta_w_squared_and_its_gradient_is_exact() {
    let mut model = tiny_llama(DType::F64);
    let params = random_adapter(&mut model, 2);
    let scale = settings().alpha / settings().r as f64;
    let f = random_fisher(&model, 3);
    let ewc = Ewc::new(2.5, scale, &f, Path::new("F.safetensors"), &params).unwrap();
    let (value, grads) = penalty_gradients(&ewc, &params).unwrap();
    let mut expected = 0.0;
    for p in &params {
        let fm = to_matrix(&f.tensors[&fisher::weight_name(&p.module)]);
        for (d_row, f_row) in delta(p, scale).iter().zip(&fm) {
            expected += d_row.iter().zip(f_row).map(|(d, f)| f * d * d).sum::<f64>();
        }
    }
    expected *= 1.25;
    assert!(value > 1e-3, "{value}");
    assert!(
        (value - expected).abs() <= 1e-12 * expected,
        "{value} vs {expected}"
    );
    // Plain values: a gradient that kept its graph would chain every step's graph (and, for
    // EWC, ΔW-sized intermediates) into AdamW's moments.
    assert!(grads.iter().all(|g| !g.track_op()));
    let penalty = || penalty_gradients(&ewc, &params).unwrap().0;
    check_against_finite_differences(&params, &grads, &penalty, 1e-6, 1e-7);

    // A Fisher without one of the adapted matrices is refused by name.
    let mut missing = f.clone();
    missing
        .tensors
        .remove("model.layers.1.mlp.up_proj.weight")
        .unwrap();
    let e = Ewc::new(1.0, scale, &missing, Path::new("F.safetensors"), &params)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("F.safetensors: has no tensor model.layers.1.mlp.up_proj.weight"),
        "{e}"
    );
}

#[test]
fn the_sft_objective_with_a_penalty_has_the_gradient_of_loss_plus_penalty() {
    let mut model = tiny_llama(DType::F64);
    let params = random_adapter(&mut model, 4);
    let scale = settings().alpha / settings().r as f64;
    let f = random_fisher(&model, 5);
    let ewc = Ewc::new(40.0, scale, &f, Path::new("F"), &params).unwrap();
    let l2 = L2 {
        lambda: 30.0,
        scale,
    };
    let examples = random_examples(3, 6);
    let batch: Vec<&Example> = examples.iter().collect();
    let regs: [&dyn Regulariser; 2] = [&l2, &ewc];
    for reg in regs {
        let run = || {
            objective_gradients(
                &model,
                &params,
                &batch,
                LossReduction::Token,
                2,
                None,
                Some(reg),
            )
            .unwrap()
        };
        let (loss, penalty, grads) = run();
        let (plain, _) = penalty_gradients(reg, &params).unwrap();
        assert_eq!(penalty, plain);
        assert!(
            penalty > 0.01 * loss,
            "the penalty must matter: {penalty} vs {loss}"
        );
        let objective = || {
            let (l, p, _) = run();
            l + p
        };
        check_against_finite_differences(&params, &grads, &objective, 1e-5, 1e-6);
    }
    // Without a regulariser the objective is the loss alone.
    let (_, penalty, _) =
        objective_gradients(&model, &params, &batch, LossReduction::Token, 2, None, None).unwrap();
    assert_eq!(penalty, 0.0);
}

/// One sequence's mean target-token NLL under the decoder as it is.
fn mean_nll(model: &LoadedModel, e: &Example) -> f64 {
    let w = loss_weights(&[e], LossReduction::Token);
    let (loss, _) = weighted_nll(
        &model.decoder,
        &[WeightedSequence {
            tokens: &e.tokens,
            weights: &w[0],
        }],
        None,
    )
    .unwrap();
    loss.to_scalar::<f64>().unwrap()
}

/// The slow reference: for entry `idx` of `module`'s weight, the mean over sequences of the
/// squared central difference of each sequence's mean log-likelihood.
fn fisher_by_perturbation(
    model: &mut LoadedModel,
    module: &str,
    idx: usize,
    sequences: &[Example],
) -> (f64, f64) {
    let h = 1e-5;
    let original = model
        .decoder
        .projections()
        .into_iter()
        .find(|(n, _)| n == module)
        .unwrap()
        .1
        .weight()
        .clone();
    let values: Vec<f64> = original.flatten_all().unwrap().to_vec1().unwrap();
    let set = |model: &mut LoadedModel, d: f64| {
        let mut v = values.clone();
        v[idx] += d;
        let t = Tensor::from_vec(v, original.dims(), &Device::Cpu).unwrap();
        for (n, p) in model.decoder.projections_mut() {
            if n == module {
                p.set_weight(t.clone());
            }
        }
    };
    let mut squares = 0.0;
    let mut grad_sum = 0.0;
    for e in sequences {
        set(model, h);
        let up = mean_nll(model, e);
        set(model, -h);
        let down = mean_nll(model, e);
        let g = (up - down) / (2.0 * h);
        squares += g * g;
        grad_sum += g;
    }
    set(model, 0.0);
    let n = sequences.len() as f64;
    (squares / n, (grad_sum / n).powi(2))
}

fn check_fisher_against_perturbation(model: &mut LoadedModel, sequences: &[Example]) {
    let modules = fisher::target_modules(&model.decoder, &targets()).unwrap();
    assert_eq!(modules.len(), 6);
    let refs: Vec<&Example> = sequences.iter().collect();
    let mut calls = 0;
    let f = fisher::compute(&mut model.decoder, &modules, &refs, &mut |_| calls += 1).unwrap();
    assert_eq!(calls, sequences.len());
    let mut names: Vec<String> = modules.iter().map(|m| fisher::weight_name(m)).collect();
    names.sort();
    assert_eq!(f.keys().cloned().collect::<Vec<_>>(), names);
    // The weights are frozen again afterwards.
    assert!(model
        .decoder
        .projections()
        .iter()
        .all(|(_, p)| !p.weight().is_variable()));
    let mut batch_differs = 0;
    for m in &modules {
        let t = &f[&fisher::weight_name(m)];
        let values: Vec<f64> = t.flatten_all().unwrap().to_vec1().unwrap();
        let n = values.len();
        for idx in [0, 7, n / 2 + 3, n - 1] {
            let (reference, batch_square) = fisher_by_perturbation(model, m, idx, sequences);
            assert!(
                (values[idx] - reference).abs() <= 1e-6 * reference + 1e-12,
                "{m}[{idx}]: {} vs per-example reference {reference}",
                values[idx]
            );
            if (batch_square - reference).abs() > 0.1 * reference {
                batch_differs += 1;
            }
        }
    }
    // The squared batch gradient is another quantity: most entries tell them apart.
    assert!(batch_differs >= 20, "{batch_differs} of 24 entries");
}

#[test]
fn fisher_equals_per_example_finite_differences_of_the_base_model() {
    let mut model = tiny_llama(DType::F64);
    check_fisher_against_perturbation(&mut model, &random_examples(4, 8));
}

#[test]
fn fisher_with_an_adapter_is_that_of_the_effective_weights() {
    let mut model = tiny_llama(DType::F64);
    let params = random_adapter(&mut model, 9);
    let sequences = random_examples(3, 10);
    check_fisher_against_perturbation(&mut model, &sequences);

    // The same as the Fisher of a model whose weights are W + s·B·A, without an adapter.
    let scale = settings().alpha / settings().r as f64;
    let modules = fisher::target_modules(&model.decoder, &targets()).unwrap();
    let refs: Vec<&Example> = sequences.iter().collect();
    let with_adapter = fisher::compute(&mut model.decoder, &modules, &refs, &mut |_| {}).unwrap();
    let mut merged = tiny_llama(DType::F64);
    for (name, proj) in merged.decoder.projections_mut() {
        if let Some(p) = params.iter().find(|p| p.module == name) {
            let d = delta(p, scale);
            let (out, inp) = (d.len(), d[0].len());
            let d = Tensor::from_vec(d.concat(), (out, inp), &Device::Cpu).unwrap();
            let w = (proj.weight() + d).unwrap();
            proj.set_weight(w);
        }
    }
    let plain = fisher::compute(&mut merged.decoder, &modules, &refs, &mut |_| {}).unwrap();
    for (name, a) in &with_adapter {
        let b = &plain[name];
        let diff: f64 = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        let size: f64 = b.max_all().unwrap().to_scalar().unwrap();
        assert!(diff <= 1e-9 * size, "{name}: {diff} of {size}");
    }
}

#[test]
fn fisher_files_round_trip_and_misfits_are_refused_by_tensor_name() {
    let model = tiny_llama(DType::F32);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("F.safetensors");
    let mut f = random_fisher(&model, 11);
    for t in f.tensors.values_mut() {
        *t = t.to_dtype(DType::F32).unwrap();
    }
    f.metadata.insert("model".into(), "tiny".into());
    fisher::save(&path, &f).unwrap();
    let back = fisher::load(&path, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(back.metadata["model"], "tiny");
    assert_eq!(back.metadata["format"], fisher::FORMAT);
    assert_eq!(back.tensors.len(), 6);
    for (name, t) in &f.tensors {
        let diff: f32 = (t - &back.tensors[name])
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert_eq!(diff, 0.0);
    }
    back.check_against(&path, &model.decoder).unwrap();

    let refuse = |f: &Fisher| {
        f.check_against(Path::new("F.safetensors"), &model.decoder)
            .unwrap_err()
            .to_string()
    };
    let name = "model.layers.0.mlp.down_proj.weight";
    let mut wrong_shape = f.clone();
    wrong_shape.tensors.insert(
        name.into(),
        Tensor::zeros((32, 32), DType::F32, &Device::Cpu).unwrap(),
    );
    let e = refuse(&wrong_shape);
    assert!(
        e.contains(&format!(
            "tensor {name} has shape [32, 32], but this model's {name} is [32, 64]"
        )),
        "{e}"
    );
    let mut unknown = f.clone();
    unknown.tensors.insert(
        "model.layers.7.mlp.gate_proj.weight".into(),
        Tensor::zeros((64, 32), DType::F32, &Device::Cpu).unwrap(),
    );
    let e = refuse(&unknown);
    assert!(
        e.contains("tensor model.layers.7.mlp.gate_proj.weight is not the weight of a linear layer of this model"),
        "{e}"
    );
    let mut negative = f.clone();
    let t = &negative.tensors[name];
    let t = t.affine(1.0, -1.5).unwrap();
    negative.tensors.insert(name.into(), t);
    assert!(refuse(&negative).contains(&format!(
        "tensor {name} holds negative or non-finite values"
    )));
}

#[test]
fn text_chunks_are_the_document_stream_with_eos_between_documents() {
    let model = tiny_llama(DType::F32);
    let tok = &model.tokenizer;
    let docs: Vec<String> = [
        "The first document, a short one.",
        "Second: 12345 and more words here.",
        "Third.",
    ]
    .map(String::from)
    .to_vec();
    let eos = tok.eos_token_ids()[0];
    let mut stream = tok.encode_document("").unwrap();
    assert!(stream.is_empty(), "the tiny tokenizer adds no BOS");
    for (i, d) in docs.iter().enumerate() {
        stream.extend(tok.encode(d).unwrap());
        if i + 1 < docs.len() {
            stream.push(eos);
        }
    }
    let chunks = text::chunk(&docs, tok, 5, Path::new("t.txt")).unwrap();
    assert_eq!(chunks.len(), stream.len() / 5);
    assert!(chunks.iter().all(|c| c.len() == 5));
    assert_eq!(chunks.concat(), stream[..5 * chunks.len()]);
    let e = text::chunk(&docs, tok, stream.len() + 1, Path::new("t.txt"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!(
            "t.txt: holds {} tokens, fewer than one chunk",
            stream.len()
        )),
        "{e}"
    );

    // The shared replay text: the folder holds four files of three formats.
    let replay = shared().join("data/replay_text");
    let documents = text::read_documents(&replay).unwrap();
    assert!(documents.len() > 300 + 30, "{}", documents.len());
    assert!(documents
        .iter()
        .any(|d| d.starts_with("Anarchism is a political philosophy")));
}
