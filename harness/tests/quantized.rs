//! The optional quantized compute path (`--quantized`): where it applies (decoding a few rows),
//! how far its log-probabilities move from float32's, and that it leaves everything else exact.

mod common;

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device};

use dtm_harness::checkpoint::{self, LoadedModel};
use dtm_harness::engine::{Engine, EngineOptions, GenerateRequest};

const TEXT: &str =
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many \
clips in May. How many clips did Natalia sell altogether in April and May? Natalia sold 48/2 = 24 \
clips in May. Natalia sold 48+24 = 72 clips altogether in April and May. The answer is 72.";

fn engine(model: &LoadedModel) -> Engine<'_> {
    Engine::new(model, EngineOptions::default())
}

/// `(max, mean)` of |a − b|.
fn error(a: &[f64], b: &[f64]) -> (f64, f64) {
    assert_eq!(a.len(), b.len());
    let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| (x - y).abs()).collect();
    let max = d.iter().copied().fold(0.0, f64::max);
    (max, d.iter().sum::<f64>() / d.len() as f64)
}

/// The tiny model with its weights quantized to Q8_0: decoding log-probabilities stay within a
/// bound of float32's but are not equal to them (the path is taken), while a prompt run in one
/// pass (more rows than the quantized path takes) gives exactly the float32 values.
#[test]
fn tiny_model_quantized_decoding_is_close_and_prompts_stay_exact() {
    let float = checkpoint::load(&common::tiny_model("llama"), DType::F32, &Device::Cpu).unwrap();
    let mut quantized =
        checkpoint::load(&common::tiny_model("llama"), DType::F32, &Device::Cpu).unwrap();
    // 2 layers × 7 linear layers + the output head.
    assert_eq!(quantized.decoder.quantize(GgmlDType::Q8_0).unwrap(), 15);
    assert!(quantized.decoder.is_quantized() && !float.decoder.is_quantized());

    let ids = float.tokenizer.encode_document(TEXT).unwrap();
    let start = 5;
    let f = engine(&float).decode_logprobs(&ids, start).unwrap();
    let q = engine(&quantized).decode_logprobs(&ids, start).unwrap();
    assert_eq!(f.len(), ids.len() - start - 1);
    let (max, mean) = error(&q, &f);
    assert!(max > 0.0, "the quantized weights were used");
    // Measured: max 0.127, mean 0.030 (a 32-wide model: each activation block is a whole row).
    assert!(max < 0.25 && mean < 0.06, "max {max}, mean {mean}");

    // One pass over the whole text: float weights, float results, bit for bit.
    let one_pass = |m: &LoadedModel| -> Vec<Option<f64>> {
        let report = engine(m).inspect(TEXT, 1).unwrap();
        report.tokens.iter().map(|t| t.logprob).collect()
    };
    assert_eq!(one_pass(&quantized), one_pass(&float));
}

/// SmolLM2-135M's own Q4_1 GGUF weights against the float32 values of the same weights, on a
/// GSM8K-style text decoded token by token. Measured on this text: max |Δ log p| 0.427, mean
/// 0.049 over 64 tokens (candle's scalar Q4_1 code: 0.532, 0.039; the weights re-encoded as Q8_0:
/// 0.743, 0.072). The bounds leave room for other CPUs' summation orders.
#[test]
fn smollm2_gguf_quantized_decoding_stays_within_the_measured_error() {
    let path = common::smollm2_gguf();
    let float = checkpoint::load(&path, DType::F32, &Device::Cpu).unwrap();
    let quantized = checkpoint::load_quantized(&path, DType::F32, &Device::Cpu).unwrap();
    assert!(quantized.decoder.is_quantized());
    let used = quantized
        .decoder
        .projections()
        .iter()
        .filter(|(_, p)| p.is_quantized())
        .count();
    assert_eq!(used, 30 * 7, "every linear layer of the 30 blocks");

    let ids = float.tokenizer.encode_document(TEXT).unwrap();
    let start = ids.len() - 65;
    let f = engine(&float).decode_logprobs(&ids, start).unwrap();
    let q = engine(&quantized).decode_logprobs(&ids, start).unwrap();
    let (max, mean) = error(&q, &f);
    eprintln!(
        "SmolLM2 Q4_1 vs float32: max |Δ log p| {max:.4}, mean {mean:.4} over {} tokens",
        q.len()
    );
    assert!(max > 0.0, "the quantized weights were used");
    assert!(max < 0.8 && mean < 0.1, "max {max}, mean {mean}");

    // Greedy generation on the quantized weights still continues the text sensibly: its first
    // tokens are float32's.
    let request = GenerateRequest {
        context: "Q: What is 12 plus 30?\nA:".into(),
        until: vec!["\n".into()],
        max_new_tokens: 8,
    };
    let gen = |m: &LoadedModel| {
        engine(m)
            .generate_until(std::slice::from_ref(&request))
            .unwrap()
            .remove(0)
    };
    assert_eq!(gen(&quantized).ids[..3], gen(&float).ids[..3]);
}

#[test]
fn quantized_compute_needs_a_gguf_file() {
    let Err(e) = checkpoint::load_quantized(&common::tiny_model("llama"), DType::F32, &Device::Cpu)
    else {
        panic!("a folder cannot run quantized");
    };
    let e = e.to_string();
    assert!(e.contains("tiny/llama") && e.contains("GGUF"), "{e}");
}
