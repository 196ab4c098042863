//! `trainer sft`: LoRA instruction tuning (the paper's Vanilla SFT) and the L2, EWC and Replay
//! baselines of Table 1.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use dtm_model::device::{device, DeviceKind};
use dtm_trainer::optim::ScheduleKind;
use dtm_trainer::sft::{self, LossReduction, Preset, Regularisation, SftConfig};
use indicatif::{ProgressBar, ProgressStyle};

/// Every flag is optional: unset ones take the preset's value (PROTOCOL.md §4); an explicit flag
/// wins over the preset.
#[derive(Args)]
pub struct SftArgs {
    /// Base checkpoint: a Hugging Face folder or a .gguf file.
    #[arg(long)]
    model: PathBuf,
    /// Training data: JSONL, Alpaca form (instruction, optional input, output) or chat form
    /// (messages; the first user/assistant turn is used, a system turn dropped).
    #[arg(long)]
    data: PathBuf,
    /// Output folder: adapter/ (PEFT format), train_log.jsonl, train_config.json, checkpoint/.
    #[arg(long)]
    output: PathBuf,
    /// paper: PROTOCOL.md §4 (r 16, alpha 16, dropout 0.05 on gate/up/down_proj, lr 3e-4, betas
    /// 0.9,0.95, 100 warm-up steps then cosine, batch 16, max length 1024, 3 epochs, EOS appended,
    /// token-mean loss). released: the released code (betas 0.9,0.98, eps 1e-6, clipping 0.3,
    /// 1 epoch, no EOS, per-sequence loss).
    #[arg(long, value_enum, default_value = "paper")]
    preset: Preset,
    /// LoRA rank.
    #[arg(long)]
    lora_r: Option<usize>,
    /// LoRA alpha (scale = alpha / r).
    #[arg(long)]
    lora_alpha: Option<f64>,
    /// Dropout on the LoRA input while training.
    #[arg(long)]
    lora_dropout: Option<f64>,
    /// Adapted layers, comma-separated: q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj.
    #[arg(long, value_delimiter = ',')]
    lora_targets: Option<Vec<String>>,
    /// Start from this PEFT adapter's A and B instead of PEFT's random init.
    #[arg(long)]
    init_adapter: Option<PathBuf>,
    /// Peak learning rate.
    #[arg(long)]
    lr: Option<f64>,
    /// AdamW betas, `B1,B2`.
    #[arg(long)]
    betas: Option<String>,
    /// AdamW epsilon.
    #[arg(long)]
    eps: Option<f64>,
    /// Decoupled weight decay (torch.optim.AdamW's).
    #[arg(long)]
    weight_decay: Option<f64>,
    /// Learning-rate schedule after warm-up.
    #[arg(long, value_enum)]
    schedule: Option<ScheduleKind>,
    /// Linear warm-up steps (the first step has learning rate 0, as in transformers).
    #[arg(long)]
    warmup_steps: Option<u64>,
    /// Floor of the decayed learning rate.
    #[arg(long)]
    min_lr: Option<f64>,
    /// Clip the global gradient norm to this value (0 = no clipping).
    #[arg(long)]
    max_grad_norm: Option<f64>,
    /// Sequences per optimiser step.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Sequences per forward/backward pass (gradient accumulation); never changes the result
    /// with the token-mean loss. Default: the batch size.
    #[arg(long)]
    micro_batch_size: Option<usize>,
    /// Longest sequence in tokens; longer ones are cut at the end.
    #[arg(long)]
    max_len: Option<usize>,
    #[arg(long)]
    epochs: Option<usize>,
    /// Stop after this many optimiser steps (the schedule spans the shorter run).
    #[arg(long)]
    max_steps: Option<u64>,
    /// Keep file order instead of a seeded shuffle per epoch.
    #[arg(long)]
    no_shuffle: bool,
    /// Seeds the LoRA init, the data order and the dropout masks.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Do not append EOS to responses (the released code's behaviour).
    #[arg(long)]
    no_eos: bool,
    /// token: mean over the step's response tokens; sequence: mean of per-sequence means.
    #[arg(long, value_enum)]
    loss_reduction: Option<LossReduction>,
    /// Write a resumable checkpoint every N optimiser steps (and at the end).
    #[arg(long, default_value_t = 50)]
    checkpoint_every: u64,
    /// Penalty added to the loss: l2 = λ/2·Σ‖ΔW‖²_F, ewc = λ/2·Σ F⊙ΔW² (needs --fisher), over the
    /// adapted matrices with ΔW = (alpha/r)·B·A. The log's `loss` stays the LM loss; `penalty` is
    /// logged beside it.
    #[arg(long, value_enum, default_value = "none")]
    reg: Regularisation,
    /// λ of --reg (required with it; 0 gives Vanilla's run).
    #[arg(long)]
    reg_lambda: Option<f64>,
    /// The base model's diagonal Fisher for --reg ewc, from `trainer fisher --model M --data
    /// ../shared/data/replay_text --output F.safetensors` with the same --lora-targets.
    #[arg(long)]
    fisher: Option<PathBuf>,
    /// Replay: plain text (a .txt file with one document per line, a .jsonl file with a `text`
    /// field, or a folder of them) cut into --max-len-token chunks that join every optimiser batch
    /// with the LM loss on all their tokens. --batch-size counts SFT sequences only.
    #[arg(long)]
    replay: Option<PathBuf>,
    /// Replay tokens per SFT token (prompts included) with --replay; 1 = the paper's 1:1 mix.
    #[arg(long)]
    replay_ratio: Option<f64>,
    /// Continue the run in --output from its last checkpoint (same settings required).
    #[arg(long)]
    resume: bool,
    /// cpu, or cuda (needs a build with --features cuda).
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceKind,
}

impl SftArgs {
    fn config(&self) -> anyhow::Result<SftConfig> {
        let p = self.preset.values();
        let betas = match &self.betas {
            Some(text) => {
                let parts: Vec<f64> = text
                    .split(',')
                    .map(|s| s.trim().parse::<f64>())
                    .collect::<Result<_, _>>()
                    .with_context(|| format!("--betas {text:?}: expected two numbers B1,B2"))?;
                let [b1, b2] = parts[..] else {
                    bail!("--betas {text:?}: expected two numbers B1,B2");
                };
                (b1, b2)
            }
            None => p.betas,
        };
        let batch_size = self.batch_size.unwrap_or(p.batch_size);
        let reg_lambda = match (self.reg, self.reg_lambda) {
            (_, Some(lambda)) => lambda,
            (Regularisation::None, None) => 0.0,
            (reg, None) => bail!(
                "--reg {} needs --reg-lambda λ",
                clap::ValueEnum::to_possible_value(&reg)
                    .map_or(String::new(), |v| v.get_name().to_owned())
            ),
        };
        let replay_ratio = match (&self.replay, self.replay_ratio) {
            (_, Some(ratio)) => ratio,
            (Some(_), None) => 1.0,
            (None, None) => 0.0,
        };
        Ok(SftConfig {
            model: self.model.clone(),
            data: self.data.clone(),
            lora_r: self.lora_r.unwrap_or(p.lora_r),
            lora_alpha: self.lora_alpha.unwrap_or(p.lora_alpha),
            lora_dropout: self.lora_dropout.unwrap_or(p.lora_dropout),
            lora_targets: self.lora_targets.clone().unwrap_or(p.lora_targets),
            init_adapter: self.init_adapter.clone(),
            lr: self.lr.unwrap_or(p.lr),
            betas,
            eps: self.eps.unwrap_or(p.eps),
            weight_decay: self.weight_decay.unwrap_or(p.weight_decay),
            schedule: self.schedule.unwrap_or(p.schedule),
            warmup_steps: self.warmup_steps.unwrap_or(p.warmup_steps),
            min_lr: self.min_lr.unwrap_or(p.min_lr),
            max_grad_norm: match self.max_grad_norm {
                Some(0.0) => None,
                Some(n) => Some(n),
                None => p.max_grad_norm,
            },
            batch_size,
            micro_batch_size: self.micro_batch_size.unwrap_or(batch_size),
            max_len: self.max_len.unwrap_or(p.max_len),
            epochs: self.epochs.unwrap_or(p.epochs),
            max_steps: self.max_steps,
            shuffle: !self.no_shuffle,
            seed: self.seed,
            append_eos: !self.no_eos && p.append_eos,
            loss_reduction: self.loss_reduction.unwrap_or(p.loss_reduction),
            checkpoint_every: self.checkpoint_every,
            reg: self.reg,
            reg_lambda,
            fisher: self.fisher.clone(),
            replay: self.replay.clone(),
            replay_ratio,
        })
    }
}

pub fn run(args: SftArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    let device = device(args.device)?;
    let terminal = std::io::stderr().is_terminal();
    let penalised = config.reg != Regularisation::None;
    let penalty = move |log: &sft::StepLog| {
        if penalised {
            format!("  penalty {:.4e}", log.penalty)
        } else {
            String::new()
        }
    };
    let mut bar: Option<ProgressBar> = None;
    let mut on_step = |log: &sft::StepLog, plan: &sft::Plan| {
        if terminal {
            let bar = bar.get_or_insert_with(|| {
                let b = ProgressBar::new(plan.total_steps);
                b.set_style(
                    ProgressStyle::with_template(
                        "{bar:30} {pos}/{len} steps  {msg}  [{elapsed_precise} < {eta_precise}]",
                    )
                    .expect("valid template"),
                );
                b
            });
            bar.set_position(log.step);
            bar.set_message(format!(
                "loss {:.4}{}  lr {:.2e}  {:.0} tok/s",
                log.loss,
                penalty(log),
                log.lr,
                log.tokens_per_s
            ));
        } else if log.step == 1 || log.step.is_multiple_of(10) || log.step == plan.total_steps {
            eprintln!(
                "step {}/{}  loss {:.4}{}  lr {:.3e}  grad_norm {:.3}  {:.0} tok/s",
                log.step,
                plan.total_steps,
                log.loss,
                penalty(log),
                log.lr,
                log.grad_norm,
                log.tokens_per_s
            );
        }
    };
    let summary = sft::run(&config, &args.output, args.resume, &device, &mut on_step)?;
    if let Some(bar) = bar {
        bar.finish();
    }
    eprintln!(
        "trained {} steps on {} examples ({} records dropped: no response token left after truncation) in {:.1} s: {:.0} tokens/s ({} of {} tokens replayed), peak memory {:.0} MB; adapter in {}",
        summary.steps,
        summary.examples,
        summary.dropped_records,
        summary.wall_s,
        summary.tokens_per_s,
        summary.replay_tokens,
        summary.tokens,
        summary.peak_rss_mb,
        summary.adapter.display()
    );
    Ok(())
}
