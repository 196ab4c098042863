//! `trainer bench`: speed and memory of LoRA training steps (forward, backward, AdamW) on fixed
//! random token batches, for side-by-side comparison with PyTorch + PEFT
//! (`results/bench/train.sh`).

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use dtm_model::device::{device, DeviceKind, Precision};
use dtm_trainer::data::examples::Example;
use dtm_trainer::lora::{self, LoraSettings};
use dtm_trainer::optim::{AdamW, AdamWConfig};
use dtm_trainer::sft::{peak_rss_mb, step_gradients, LossReduction};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[derive(Args)]
pub struct BenchArgs {
    /// Checkpoint (HF folder or .gguf).
    #[arg(long)]
    model: PathBuf,
    /// Sequences per step.
    #[arg(long, default_value_t = 4)]
    batch_size: usize,
    /// Tokens per sequence (every token is a target).
    #[arg(long, default_value_t = 512)]
    seq_len: usize,
    /// Timed steps (after one warm-up step).
    #[arg(long, default_value_t = 5)]
    steps: usize,
    #[arg(long, default_value_t = 16)]
    lora_r: usize,
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "gate_proj,up_proj,down_proj"
    )]
    lora_targets: Vec<String>,
    #[arg(long, value_enum, default_value = "f32")]
    dtype: Precision,
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceKind,
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let device = device(args.device)?;
    let mut model = dtm_model::checkpoint::load(&args.model, args.dtype.dtype(), &device)?;
    let settings = LoraSettings {
        r: args.lora_r,
        alpha: args.lora_r as f64,
        dropout: 0.0,
        targets: args.lora_targets.clone(),
    };
    let params = lora::attach(&mut model.decoder, &settings, 0, None)?;
    let mut optimiser = AdamW::new(
        lora::vars(&params),
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.0,
        },
    )?;
    let vocab = model.config().vocab_size as u32;
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let examples: Vec<Example> = (0..args.batch_size)
        .map(|i| Example {
            tokens: (0..args.seq_len)
                .map(|_| rng.random_range(0..vocab))
                .collect(),
            target_start: 1,
            record: i,
        })
        .collect();
    let batch: Vec<&Example> = examples.iter().collect();
    let tokens = args.batch_size * args.seq_len;
    let mut times = Vec::new();
    for step in 0..=args.steps {
        let t0 = Instant::now();
        let (loss, grads) = step_gradients(
            &model,
            &params,
            &batch,
            LossReduction::Token,
            args.batch_size,
            None,
        )?;
        optimiser.step(&grads, 1e-4)?;
        let s = t0.elapsed().as_secs_f64();
        eprintln!(
            "step {step}{}: {s:.2} s, {:.0} tokens/s, loss {loss:.4}",
            if step == 0 { " (warm-up)" } else { "" },
            tokens as f64 / s
        );
        if step > 0 {
            times.push(s);
        }
    }
    times.sort_by(f64::total_cmp);
    let best = times[0];
    let median = times[times.len() / 2];
    println!(
        "{}",
        serde_json::json!({
            "tool": "dtm trainer bench",
            "model": args.model,
            "batch_size": args.batch_size,
            "seq_len": args.seq_len,
            "lora_r": args.lora_r,
            "lora_targets": args.lora_targets,
            "steps": args.steps,
            "best_step_s": best,
            "median_step_s": median,
            "tokens_per_s_best": tokens as f64 / best,
            "tokens_per_s_median": tokens as f64 / median,
            "peak_rss_mb": peak_rss_mb(),
            "matmul": dtm_model::blas::Blas::describe(),
        })
    );
    Ok(())
}
