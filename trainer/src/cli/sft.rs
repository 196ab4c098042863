//! `trainer sft`: LoRA instruction tuning (the paper's Vanilla SFT), the L2, EWC and Replay
//! baselines of Table 1, and LoRAMoE with `--moe-experts`.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use dtm_model::device::{device, DeviceKind};
use dtm_trainer::moe::MoeConfig;
use dtm_trainer::optim::ScheduleKind;
use dtm_trainer::sft::{self, LossReduction, Preset, Regularisation, SftConfig};
use indicatif::{ProgressBar, ProgressStyle};

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
    /// Continue the run in --output from its last checkpoint (same settings required).
    #[arg(long)]
    resume: bool,
    /// cpu, or cuda (needs a build with --features cuda).
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceKind,
    #[command(flatten)]
    options: SftOptions,
}

/// The training settings, shared by `trainer sft`, `trainer dtm` and `trainer soup`. Every flag
/// is optional: unset ones take the preset's value (PROTOCOL.md §4); an explicit flag wins over
/// the preset. A recipe's `[train]` table reads into it, keys spelt as the flags without `--`.
#[derive(Args, Clone, Debug, Default, serde::Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "kebab-case",
    default = "SftOptions::unset"
)]
pub struct SftOptions {
    /// Default paper. paper: PROTOCOL.md §4 (r 16, alpha 16, dropout 0.05 on gate/up/down_proj, lr 3e-4, betas
    /// 0.9,0.95, 100 warm-up steps then cosine, batch 16, max length 1024, 3 epochs, EOS appended,
    /// token-mean loss). released: the released code (betas 0.9,0.98, eps 1e-6, clipping 0.3,
    /// 1 epoch, no EOS, per-sequence loss).
    #[arg(long, value_enum)]
    pub preset: Option<Preset>,
    /// LoRA rank.
    #[arg(long)]
    pub lora_r: Option<usize>,
    /// LoRA alpha (scale = alpha / r).
    #[arg(long)]
    pub lora_alpha: Option<f64>,
    /// Dropout on the LoRA input while training.
    #[arg(long)]
    pub lora_dropout: Option<f64>,
    /// Adapted layers, comma-separated: q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj.
    #[arg(long, value_delimiter = ',')]
    pub lora_targets: Option<Vec<String>>,
    /// Start from this PEFT adapter's A and B instead of PEFT's random init.
    #[arg(long)]
    pub init_adapter: Option<PathBuf>,
    /// Peak learning rate.
    #[arg(long)]
    pub lr: Option<f64>,
    /// AdamW betas, `B1,B2`.
    #[arg(long)]
    pub betas: Option<String>,
    /// AdamW epsilon.
    #[arg(long)]
    pub eps: Option<f64>,
    /// Decoupled weight decay (torch.optim.AdamW's).
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Learning-rate schedule after warm-up.
    #[arg(long, value_enum)]
    pub schedule: Option<ScheduleKind>,
    /// Linear warm-up steps (the first step has learning rate 0, as in transformers).
    #[arg(long)]
    pub warmup_steps: Option<u64>,
    /// Floor of the decayed learning rate.
    #[arg(long)]
    pub min_lr: Option<f64>,
    /// Clip the global gradient norm to this value (0 = no clipping).
    #[arg(long)]
    pub max_grad_norm: Option<f64>,
    /// Sequences per optimiser step.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Sequences per forward/backward pass (gradient accumulation); never changes the result
    /// with the token-mean loss. Default: the batch size.
    #[arg(long)]
    pub micro_batch_size: Option<usize>,
    /// Longest sequence in tokens; longer ones are cut at the end.
    #[arg(long)]
    pub max_len: Option<usize>,
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Stop after this many optimiser steps (the schedule spans the shorter run).
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// Keep file order instead of a seeded shuffle per epoch.
    #[arg(long)]
    pub no_shuffle: bool,
    /// Seeds the LoRA init (default 0), the data order and the dropout masks.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Do not append EOS to responses (the released code's behaviour).
    #[arg(long)]
    pub no_eos: bool,
    /// token: mean over the step's response tokens; sequence: mean of per-sequence means.
    #[arg(long, value_enum)]
    pub loss_reduction: Option<LossReduction>,
    /// Write a resumable checkpoint every N optimiser steps (and at the end); default 50.
    #[arg(long)]
    pub checkpoint_every: Option<u64>,
    /// Penalty added to the loss: l2 = λ/2·Σ‖ΔW‖²_F, ewc = λ/2·Σ F⊙ΔW² (needs --fisher), over the
    /// adapted matrices with ΔW = (alpha/r)·B·A. The log's `loss` stays the LM loss; `penalty` is
    /// logged beside it.
    #[arg(long, value_enum, default_value = "none")]
    pub reg: Regularisation,
    /// λ of --reg (required with it; 0 gives Vanilla's run).
    #[arg(long)]
    pub reg_lambda: Option<f64>,
    /// The base model's diagonal Fisher for --reg ewc, from `trainer fisher --model M --data
    /// ../shared/data/replay_text --output F.safetensors` with the same --lora-targets.
    #[arg(long)]
    pub fisher: Option<PathBuf>,
    /// Replay: plain text (a .txt file with one document per line, a .jsonl file with a `text`
    /// field, or a folder of them) cut into --max-len-token chunks that join every optimiser batch
    /// with the LM loss on all their tokens. --batch-size counts SFT sequences only.
    #[arg(long)]
    pub replay: Option<PathBuf>,
    /// Replay tokens per SFT token (prompts included) with --replay; 1 = the paper's 1:1 mix.
    #[arg(long)]
    pub replay_ratio: Option<f64>,
    /// LoRAMoE (Dou et al., 2023): E LoRA experts and a token-level softmax router in every
    /// adapted layer instead of one LoRA; --lora-alpha, --lora-dropout and --lora-targets apply to
    /// every expert. The adapter folder is LoRAMoE's (peft_type LORAMOE), which `harness
    /// --adapter` applies.
    #[arg(long, value_name = "E")]
    pub moe_experts: Option<usize>,
    /// Rank of every expert (default: --lora-r).
    #[arg(long, value_name = "R", requires = "moe_experts")]
    pub moe_rank: Option<usize>,
    /// λ of the localized balancing constraint, added to the loss and logged as `balance`
    /// (0, the released script's value, trains without it). Needs an even E and every record's
    /// type (--moe-type-field).
    #[arg(
        long,
        value_name = "λ",
        default_value_t = 0.0,
        requires = "moe_experts"
    )]
    pub moe_balance: f64,
    /// δ of the constraint: each record's type favours half of the experts, weighted 1+δ, the
    /// other half 1−δ (0 is the released script's value).
    #[arg(
        long,
        value_name = "δ",
        default_value_t = 0.0,
        requires = "moe_experts"
    )]
    pub moe_balance_delta: f64,
    /// The record field holding its type, read with --moe-balance > 0 (every record needs it):
    /// 1 or "knowledge" for world knowledge (favours experts 0..E/2), 0 or "task" for a
    /// downstream task (favours E/2..E), as the released data's task_type.
    #[arg(
        long,
        value_name = "NAME",
        default_value = "task_type",
        requires = "moe_experts"
    )]
    pub moe_type_field: String,
}

impl SftOptions {
    /// Every flag unset, as `trainer sft` reads an empty command line (clap's defaults).
    pub fn unset() -> Self {
        use clap::FromArgMatches;
        let cmd = Self::augment_args(clap::Command::new("sft"));
        Self::from_arg_matches(&cmd.get_matches_from(["sft"])).expect("the defaults parse")
    }

    /// The run's settings for `model` and `data`.
    pub fn config(&self, model: PathBuf, data: PathBuf) -> anyhow::Result<SftConfig> {
        let p = self.preset.unwrap_or(Preset::Paper).values();
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
            model,
            data,
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
            seed: self.seed.unwrap_or(0),
            append_eos: !self.no_eos && p.append_eos,
            loss_reduction: self.loss_reduction.unwrap_or(p.loss_reduction),
            checkpoint_every: self.checkpoint_every.unwrap_or(50),
            moe: self.moe_experts.map(|experts| MoeConfig {
                experts,
                rank: self.moe_rank.unwrap_or(self.lora_r.unwrap_or(p.lora_r)),
                balance: self.moe_balance,
                delta: self.moe_balance_delta,
                type_field: self.moe_type_field.clone(),
            }),
            reg: self.reg,
            reg_lambda,
            fisher: self.fisher.clone(),
            replay: self.replay.clone(),
            replay_ratio,
        })
    }
}

pub fn run(args: SftArgs) -> anyhow::Result<()> {
    let config = args.options.config(args.model.clone(), args.data.clone())?;
    let device = device(args.device)?;
    let summary = sft::run(
        &config,
        &args.output,
        args.resume,
        &device,
        &mut progress_printer(),
    )?;
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

/// Shows training progress: a bar with loss and ETA on a terminal, a line every 10 steps in logs.
pub fn progress_printer() -> impl FnMut(&sft::StepLog, &sft::Plan) {
    let terminal = std::io::stderr().is_terminal();
    // LoRAMoE's balancing term and a regulariser's penalty, shown when in use.
    let extra = move |log: &sft::StepLog| {
        let mut text = String::new();
        if log.balance != 0.0 {
            text += &format!("  balance {:.4e}", log.balance);
        }
        if log.penalty != 0.0 {
            text += &format!("  penalty {:.4e}", log.penalty);
        }
        text
    };
    let mut bar: Option<ProgressBar> = None;
    move |log: &sft::StepLog, plan: &sft::Plan| {
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
                extra(log),
                log.lr,
                log.tokens_per_s
            ));
            if log.step == plan.total_steps {
                bar.finish();
            }
        } else if log.step == 1 || log.step.is_multiple_of(10) || log.step == plan.total_steps {
            eprintln!(
                "step {}/{}  loss {:.4}{}  lr {:.3e}  grad_norm {:.3}  {:.0} tok/s",
                log.step,
                plan.total_steps,
                log.loss,
                extra(log),
                log.lr,
                log.grad_norm,
                log.tokens_per_s
            );
        }
    }
}
