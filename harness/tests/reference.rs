//! The runtime against Hugging Face transformers (float32 references in `shared/fixtures`), with
//! the tolerances its README sets.

mod common;

use std::path::Path;

use candle_core::{DType, Device};
use serde_json::Value;

use dtm_harness::checkpoint::{self, LoadedModel};
use dtm_harness::engine::tokenize::encode_pair;
use dtm_harness::engine::{Engine, EngineOptions, GenerateRequest, LoglikelihoodRequest};

struct Tolerance {
    logit: f64,
    loglik_sum: f64,
}

const TINY: Tolerance = Tolerance {
    logit: 1e-4,
    loglik_sum: 5e-4,
};
/// bf16 against transformers' bf16: per-token log-probabilities, worst and mean difference.
/// Measured 0.049 and 0.012 (rounding at different points of two bf16 implementations); a bug
/// that kept a norm or the softmax in bf16, or rounded the weights twice, moves them well past
/// these bounds (the old test's 0.25 against float32 let such a bug through).
const TOLERANCE_BF16_WORST: f64 = 0.06;
const TOLERANCE_BF16_MEAN: f64 = 0.015;
const SMOLLM2: Tolerance = Tolerance {
    logit: 1e-3,
    loglik_sum: 3e-3,
};

fn load(path: &Path) -> LoadedModel {
    checkpoint::load(path, DType::F32, &Device::Cpu).unwrap_or_else(|e| panic!("{e}"))
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// Per-position log-probabilities and top-5 of every prompt.
fn check_forward(model: &LoadedModel, reference: &Value, tol: &Tolerance) {
    let mut engine = Engine::new(model, EngineOptions::default());
    for prompt in reference["prompts"].as_array().unwrap() {
        let kind = prompt["kind"].as_str().unwrap();
        let report = engine.inspect(prompt["text"].as_str().unwrap(), 5).unwrap();
        assert_eq!(report.ids, ids(&prompt["input_ids"]), "{kind}: input ids");
        let lse = floats(&prompt["logsumexp"]);
        for (i, want) in floats(&prompt["target_logprobs"]).iter().enumerate() {
            let got = report.tokens[i + 1].logprob.unwrap();
            assert!(
                (got - want).abs() <= tol.logit,
                "{kind}: target logprob at {i}: {got} vs {want}"
            );
        }
        for (i, top) in prompt["top5"].as_array().unwrap().iter().enumerate() {
            let want: Vec<(u32, f64)> = top
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    (
                        p[0].as_u64().unwrap() as u32,
                        p[1].as_f64().unwrap() - lse[i],
                    )
                })
                .collect();
            let got = &report.tokens[i].top5;
            for (k, (&(gid, glp), &(wid, wlp))) in got.iter().zip(&want).enumerate() {
                assert!(
                    (glp - wlp).abs() <= tol.logit,
                    "{kind}: top5[{i}][{k}] logprob {glp} vs {wlp}"
                );
                if gid != wid {
                    // Two candidates closer than the tolerance may swap.
                    let swapped = want
                        .iter()
                        .any(|&(id, lp)| id == gid && (lp - wlp).abs() <= tol.logit);
                    assert!(swapped, "{kind}: top5[{i}][{k}] id {gid} vs {wid}");
                }
            }
        }
    }
}

/// Greedy ids equal step by step; at a step whose reference top-1/top-2 margin is below the
/// tolerance the tokens may differ, and comparison ends there if they do. A generator that stops
/// at EOS is compared up to the first EOS.
fn check_greedy(model: &LoadedModel, reference: &Value, tol: &Tolerance) {
    let prompts = reference["prompts"].as_array().unwrap();
    let requests: Vec<GenerateRequest> = prompts
        .iter()
        .map(|p| GenerateRequest {
            context: p["text"].as_str().unwrap().into(),
            until: Vec::new(),
            max_new_tokens: 24,
        })
        .collect();
    for batch_size in [1, 6] {
        let mut engine = Engine::new(
            model,
            EngineOptions {
                batch_size,
                ..EngineOptions::default()
            },
        );
        let generations = engine.generate_until(&requests).unwrap();
        for (p, g) in prompts.iter().zip(&generations) {
            let kind = p["kind"].as_str().unwrap();
            let want = ids(&p["greedy"]["ids"]);
            let margins = floats(&p["greedy"]["top1_minus_top2_logit"]);
            let stop = p["greedy"]["first_eos_index"]
                .as_u64()
                .map_or(want.len(), |i| i as usize + 1);
            for step in 0..stop {
                if margins[step] < tol.logit && g.ids.get(step) != Some(&want[step]) {
                    break; // a near-tie: float32 may pick the other token, and nothing after compares
                }
                assert_eq!(
                    g.ids.get(step),
                    Some(&want[step]),
                    "{kind}: greedy step {step} (batch {batch_size}): {:?} vs {:?}",
                    g.ids,
                    want
                );
            }
        }
    }
}

fn check_loglikelihood(model: &LoadedModel, reference: &Value, tol: &Tolerance) {
    let pairs = reference["loglikelihood"].as_array().unwrap();
    let requests: Vec<LoglikelihoodRequest> = pairs
        .iter()
        .map(|p| LoglikelihoodRequest {
            context: p["context"].as_str().unwrap().into(),
            continuation: p["continuation"].as_str().unwrap().into(),
        })
        .collect();
    let mut baseline: Option<Vec<f64>> = None;
    for (batch_size, prefix_cache_entries) in [(1, 0), (13, 8), (4, 8)] {
        let mut engine = Engine::new(
            model,
            EngineOptions {
                batch_size,
                prefix_cache_entries,
                ..EngineOptions::default()
            },
        );
        let results = engine.loglikelihood(&requests).unwrap();
        for (p, r) in pairs.iter().zip(&results) {
            let name = p["name"].as_str().unwrap();
            let pair = encode_pair(
                &model.tokenizer,
                p["context"].as_str().unwrap(),
                p["continuation"].as_str().unwrap(),
            )
            .unwrap();
            assert_eq!(pair.context, ids(&p["context_ids"]), "{name}: context ids");
            assert_eq!(
                r.continuation_ids,
                ids(&p["continuation_ids"]),
                "{name}: continuation ids"
            );
            let want = p["logprob"].as_f64().unwrap();
            assert!(
                (r.logprob - want).abs() <= tol.loglik_sum,
                "{name}: logprob {} vs {want}",
                r.logprob
            );
            for (k, (g, w)) in r
                .token_logprobs
                .iter()
                .zip(floats(&p["token_logprobs"]))
                .enumerate()
            {
                assert!(
                    (g - w).abs() <= tol.logit,
                    "{name}: token {k} logprob {g} vs {w}"
                );
            }
            assert_eq!(
                r.is_greedy,
                p["is_greedy"].as_bool().unwrap(),
                "{name}: is_greedy"
            );
        }
        // Batch composition and prefix reuse change nothing beyond float noise.
        let sums: Vec<f64> = results.iter().map(|r| r.logprob).collect();
        match &baseline {
            None => baseline = Some(sums),
            Some(b) => {
                for (x, y) in b.iter().zip(&sums) {
                    assert!((x - y).abs() <= 1e-4, "batch {batch_size}: {x} vs {y}");
                }
            }
        }
    }
}

fn check_all(model_path: &Path, fixture: &str, tol: &Tolerance) {
    let model = load(model_path);
    let reference = common::reference(fixture);
    check_forward(&model, &reference, tol);
    check_greedy(&model, &reference, tol);
    check_loglikelihood(&model, &reference, tol);
}

#[test]
fn tiny_llama_matches_transformers() {
    check_all(&common::tiny_model("llama"), "tiny-llama", &TINY);
}

#[test]
fn tiny_qwen2_matches_transformers() {
    check_all(&common::tiny_model("qwen2"), "tiny-qwen2", &TINY);
}

#[test]
fn tiny_gemma3_matches_transformers() {
    check_all(&common::tiny_model("gemma3"), "tiny-gemma3", &TINY);
}

#[test]
fn smollm2_gguf_matches_transformers() {
    check_all(&common::smollm2_gguf(), "smollm2-135m", &SMOLLM2);
}

/// Gemma 3 as a GGUF file: the settings llama.cpp's metadata carries for it (sliding window,
/// both rope bases, the attention scale and the local/global pattern), read into the same model
/// as the HF folder, so it matches the same transformers reference.
#[test]
fn tiny_gemma3_as_gguf_matches_transformers() {
    use candle_core::quantized::gguf_file::Value as V;
    let dir = tempfile::tempdir().unwrap();
    let path = common::gguf::write_tiny(
        &common::tiny_model("gemma3"),
        "gemma3",
        &[
            ("gemma3.attention.key_length", Some(V::U32(8))),
            ("gemma3.rope.freq_base", Some(V::F32(1e6))),
            ("gemma3.rope.freq_base_swa", Some(V::F32(1e4))),
            ("gemma3.attention.sliding_window", Some(V::U32(4))),
            ("gemma3.attention.sliding_window_pattern", Some(V::U32(2))),
            // query_pre_attn_scalar 16 (not head_dim 8).
            ("gemma3.attention.scale", Some(V::F32(0.25))),
        ],
        dir.path(),
    );
    check_all(&path, "tiny-gemma3", &TINY);
}

/// A Gemma 3 GGUF whose metadata leaves a setting open is refused, naming it, instead of run
/// with a guess: here the attention scale (2 layers is no published Gemma 3 size) and the rope
/// base (llama.cpp and transformers default it differently).
#[test]
fn gemma3_gguf_missing_settings_is_refused_by_name() {
    use candle_core::quantized::gguf_file::Value as V;
    let dir = tempfile::tempdir().unwrap();
    let base = [
        ("gemma3.attention.key_length", Some(V::U32(8))),
        ("gemma3.rope.freq_base", Some(V::F32(1e6))),
        ("gemma3.attention.sliding_window", Some(V::U32(4))),
        ("gemma3.attention.sliding_window_pattern", Some(V::U32(2))),
    ];
    let refused = |extra: &[(&str, Option<V>)]| {
        let mut all = base.to_vec();
        all.extend_from_slice(extra);
        let path =
            common::gguf::write_tiny(&common::tiny_model("gemma3"), "gemma3", &all, dir.path());
        match checkpoint::load(&path, DType::F32, &Device::Cpu) {
            Ok(_) => panic!("loaded a GGUF that does not determine its settings"),
            Err(e) => e.to_string(),
        }
    };
    let e = refused(&[]);
    assert!(
        e.contains("gemma3.gguf")
            && e.contains("attention scale")
            && e.contains("query_pre_attn_scalar"),
        "{e}"
    );
    let e = refused(&[
        ("gemma3.attention.scale", Some(V::F32(0.25))),
        ("gemma3.rope.freq_base", None),
    ]);
    assert!(e.contains("`gemma3.rope.freq_base`"), "{e}");
    let e = refused(&[
        ("gemma3.attention.scale", Some(V::F32(0.25))),
        ("gemma3.attention.sliding_window", None),
    ]);
    assert!(e.contains("`gemma3.attention.sliding_window`"), "{e}");
}

/// Qwen2 as a GGUF file (q/k/v biases, untied output head).
#[test]
fn tiny_qwen2_as_gguf_matches_transformers() {
    use candle_core::quantized::gguf_file::Value as V;
    let dir = tempfile::tempdir().unwrap();
    let path = common::gguf::write_tiny(
        &common::tiny_model("qwen2"),
        "qwen2",
        &[("qwen2.rope.freq_base", Some(V::F32(1e6)))],
        dir.path(),
    );
    check_all(&path, "tiny-qwen2", &TINY);
}

/// The GGUF's own tokenizer metadata encodes exactly as the tokenizer.json converted from it.
#[test]
fn gguf_tokenizer_encodes_like_tokenizer_json() {
    let model = load(&common::smollm2_gguf());
    let json = common::tiny_model("llama").join("tokenizer.json");
    let reference: tokenizers::Tokenizer = std::fs::read_to_string(json).unwrap().parse().unwrap();
    let mut texts: Vec<String> = common::reference("smollm2-135m")["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["text"].as_str().unwrap().to_owned())
        .collect();
    texts.extend(
        [
            "<|im_start|>user\nHi<|im_end|>",
            "  leading spaces\t\ttabs\n\n\nnewlines",
            "1234567.89 $1,000",
            "naïve café — 東京 🚀",
            "def f(x):\n    return x**2",
        ]
        .map(String::from),
    );
    for t in texts {
        let want = reference
            .encode(t.as_str(), false)
            .unwrap()
            .get_ids()
            .to_vec();
        assert_eq!(model.tokenizer.encode(&t).unwrap(), want, "{t:?}");
    }
}

/// bf16 against an independent bf16 reference: transformers' bfloat16 log-probabilities of the
/// same prompts (`tests/fixtures/tiny-llama-bf16.json`, made once with the venv: torch 2.x,
/// transformers 5.x, `dtype=torch.bfloat16` on CPU; see `tests/fixtures/README.md`). Two bf16
/// implementations agree to within bf16's rounding (8 bits of mantissa, ~0.4% per value), far
/// closer than either is to float32; and bf16 does differ from float32.
#[test]
fn tiny_llama_in_bf16_matches_transformers_in_bf16() {
    let model = checkpoint::load(&common::tiny_model("llama"), DType::BF16, &Device::Cpu).unwrap();
    let f32_reference = common::reference("tiny-llama");
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-llama-bf16.json");
    let bf16_reference: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut engine = Engine::new(&model, EngineOptions::default());
    let (mut worst_bf16, mut worst_f32, mut sum, mut n) = (0f64, 0f64, 0f64, 0usize);
    for (p16, p32) in bf16_reference["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .zip(f32_reference["prompts"].as_array().unwrap())
    {
        let report = engine.inspect(p32["text"].as_str().unwrap(), 5).unwrap();
        assert_eq!(report.ids, ids(&p16["input_ids"]));
        let want16 = floats(&p16["target_logprobs"]);
        let want32 = floats(&p32["target_logprobs"]);
        for (i, (w16, w32)) in want16.iter().zip(&want32).enumerate() {
            let got = report.tokens[i + 1].logprob.unwrap();
            worst_bf16 = worst_bf16.max((got - w16).abs());
            worst_f32 = worst_f32.max((got - w32).abs());
            sum += (got - w16).abs();
            n += 1;
        }
    }
    let mean = sum / n as f64;
    eprintln!("bf16 vs transformers bf16: worst {worst_bf16:.4}, mean {mean:.5}; vs float32: worst {worst_f32:.4}");
    assert!(
        worst_f32 > 1e-3,
        "bf16 must differ from float32 (worst {worst_f32})"
    );
    assert!(worst_bf16 < TOLERANCE_BF16_WORST, "worst {worst_bf16}");
    assert!(mean < TOLERANCE_BF16_MEAN, "mean {mean}");
}

/// A rolling log-likelihood scores every token given BOS (EOS when there is none) and all before
/// it, as a loglikelihood with an empty context does; short windows still cover every token once.
#[test]
fn rolling_loglikelihood_covers_every_token() {
    let model = load(&common::tiny_model("llama"));
    let reference = common::reference("tiny-llama");
    let prompt = &reference["prompts"].as_array().unwrap()[5];
    let text = prompt["text"].as_str().unwrap().to_owned();
    let mut engine = Engine::new(&model, EngineOptions::default());
    let r = engine
        .loglikelihood_rolling(std::slice::from_ref(&text))
        .unwrap()
        .remove(0);
    assert_eq!(r.ids, ids(&prompt["input_ids"]));
    assert_eq!(r.token_logprobs.len(), r.ids.len());
    let total: f64 = r.token_logprobs.iter().sum();
    assert!((r.logprob - total).abs() < 1e-9);
    let same = engine
        .loglikelihood(&[LoglikelihoodRequest {
            context: String::new(),
            continuation: text.clone(),
        }])
        .unwrap()
        .remove(0);
    for (k, (g, w)) in r
        .token_logprobs
        .iter()
        .zip(&same.token_logprobs)
        .enumerate()
    {
        assert!((g - w).abs() <= TINY.logit, "token {k}: {g} vs {w}");
    }

    let mut short = Engine::new(
        &model,
        EngineOptions {
            max_length: Some(16),
            ..EngineOptions::default()
        },
    );
    let windows = short.loglikelihood_rolling(&[text]).unwrap().remove(0);
    assert_eq!(windows.token_logprobs.len(), r.ids.len());
    // The first 16 tokens see the same context either way; later ones see less.
    for k in 0..16 {
        assert!((windows.token_logprobs[k] - r.token_logprobs[k]).abs() < 1e-4);
    }
    let later = (16..r.ids.len())
        .filter(|&k| (windows.token_logprobs[k] - r.token_logprobs[k]).abs() > 1e-3)
        .count();
    assert!(
        later > 0,
        "windows of 16 tokens must change later log-probs"
    );
}
