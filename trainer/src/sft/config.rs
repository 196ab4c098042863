//! The settings of one SFT run, with PROTOCOL.md §4's two presets.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::moe::MoeConfig;
use crate::optim::ScheduleKind;

/// How the loss of an optimiser step averages over its target tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LossReduction {
    /// Mean over every response token of the step's batch: micro-batching never changes it.
    Token,
    /// Mean over sequences of each sequence's token mean (what the released code effectively did).
    Sequence,
}

/// The penalty added to the loss (PROTOCOL.md §4's regularised baselines).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Regularisation {
    /// No penalty (Vanilla).
    #[default]
    None,
    /// λ/2 · Σ ‖ΔW‖²_F over the adapted matrices.
    L2,
    /// λ/2 · Σ F ⊙ ΔW², F the base model's diagonal Fisher (`--fisher`).
    Ewc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// The paper (Table 10, A.3): betas (0.9, 0.95), no clipping, 3 epochs, EOS appended.
    Paper,
    /// The released code: betas (0.9, 0.98), eps 1e-6, clipping 0.3, 1 epoch, no EOS,
    /// per-sequence loss.
    Released,
}

/// Everything that determines a run's result (saved as `train_config.json`; a resumed run must
/// have the same).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SftConfig {
    pub model: PathBuf,
    pub data: PathBuf,
    pub lora_r: usize,
    pub lora_alpha: f64,
    pub lora_dropout: f64,
    pub lora_targets: Vec<String>,
    pub init_adapter: Option<PathBuf>,
    pub lr: f64,
    pub betas: (f64, f64),
    pub eps: f64,
    pub weight_decay: f64,
    pub schedule: ScheduleKind,
    pub warmup_steps: u64,
    pub min_lr: f64,
    pub max_grad_norm: Option<f64>,
    pub batch_size: usize,
    pub micro_batch_size: usize,
    pub max_len: usize,
    pub epochs: usize,
    pub max_steps: Option<u64>,
    pub shuffle: bool,
    pub seed: u64,
    pub append_eos: bool,
    pub loss_reduction: LossReduction,
    pub checkpoint_every: u64,
    /// LoRAMoE: a mixture of LoRA experts in every adapted layer instead of one LoRA (absent:
    /// plain LoRA; absent too from configs written before LoRAMoE existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moe: Option<MoeConfig>,
    /// The baselines' settings (absent from checkpoints written before they existed).
    #[serde(default)]
    pub reg: Regularisation,
    /// λ of the penalty.
    #[serde(default)]
    pub reg_lambda: f64,
    /// The diagonal Fisher EWC uses (`trainer fisher`'s output).
    #[serde(default)]
    pub fisher: Option<PathBuf>,
    /// Plain text replayed into the batches.
    #[serde(default)]
    pub replay: Option<PathBuf>,
    /// Replay tokens per SFT token.
    #[serde(default)]
    pub replay_ratio: f64,
}

/// Values a preset fills; explicit flags override them.
pub struct PresetValues {
    pub lora_r: usize,
    pub lora_alpha: f64,
    pub lora_dropout: f64,
    pub lora_targets: Vec<String>,
    pub lr: f64,
    pub betas: (f64, f64),
    pub eps: f64,
    pub weight_decay: f64,
    pub schedule: ScheduleKind,
    pub warmup_steps: u64,
    pub min_lr: f64,
    pub max_grad_norm: Option<f64>,
    pub batch_size: usize,
    pub max_len: usize,
    pub epochs: usize,
    pub append_eos: bool,
    pub loss_reduction: LossReduction,
}

impl Preset {
    pub fn values(self) -> PresetValues {
        let paper = PresetValues {
            lora_r: 16,
            lora_alpha: 16.0,
            lora_dropout: 0.05,
            lora_targets: ["gate_proj", "up_proj", "down_proj"]
                .map(String::from)
                .to_vec(),
            lr: 3e-4,
            betas: (0.9, 0.95),
            eps: 1e-8,
            weight_decay: 0.0,
            schedule: ScheduleKind::Cosine,
            warmup_steps: 100,
            min_lr: 0.0,
            max_grad_norm: None,
            batch_size: 16,
            max_len: 1024,
            epochs: 3,
            append_eos: true,
            loss_reduction: LossReduction::Token,
        };
        match self {
            Preset::Paper => paper,
            Preset::Released => PresetValues {
                betas: (0.9, 0.98),
                eps: 1e-6,
                max_grad_norm: Some(0.3),
                epochs: 1,
                append_eos: false,
                loss_reduction: LossReduction::Sequence,
                ..paper
            },
        }
    }
}
