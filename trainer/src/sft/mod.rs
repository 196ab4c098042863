//! LoRA instruction tuning: the paper's Vanilla SFT, as one plain loop.
//!
//! data → examples → (per optimiser step) micro-batches → loss → gradients accumulated →
//! clipped → AdamW at the schedule's rate → log line → checkpoint. Everything a step does is a
//! function of the step number and the seed, which is what makes resuming exact.
//!
//! With `--moe-experts` the adapted layers carry mixtures of LoRA experts instead (LoRAMoE, see
//! [`crate::moe`]); the forward pass then also returns their routing weights, from which the
//! localized balancing constraint (`balance`) joins the loss.
//!
//! The Table 1 baselines plug into the same loop: a regulariser's penalty (L2, EWC) joins the
//! loss and its gradient the step's gradient before clipping, and replay chunks join each step's
//! batch (see [`crate::baselines`]).

pub mod checkpoint;
pub mod config;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor, Var};
use dtm_model::adapter::PeftAdapter;
use dtm_model::checkpoint::LoadedModel;
use dtm_model::model::projection::splitmix;
use dtm_model::model::DropoutKey;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::baselines::{self, Ewc, Regulariser, Replay, L2};
use crate::data::examples::{tokenize, Example, TokenizeOptions};
use crate::data::{read_jsonl, text};
use crate::fisher;
use crate::lora::{self, LoraParams, LoraSettings};
use crate::loss::{weighted_nll_routed, WeightedSequence};
use crate::moe::{self, Balance, MoeParams, MoeSettings};
use crate::optim::{clip_grad_norm, AdamW, AdamWConfig, Schedule};

pub use config::{LossReduction, Preset, Regularisation, SftConfig};

/// One line of `train_log.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepLog {
    /// 1-based optimiser step.
    pub step: u64,
    /// Fractional epoch reached after this step.
    pub epoch: f64,
    /// The step's language-modelling loss (with the chosen reduction), over its SFT targets and
    /// replay tokens; the objective is `loss + balance + penalty`.
    pub loss: f64,
    /// LoRAMoE's balance term, λ times the mean over the step's sequences of the summed
    /// layers' cv² (0 without it).
    #[serde(default)]
    pub balance: f64,
    /// The regulariser's penalty at the step's starting point (0 without one).
    #[serde(default)]
    pub penalty: f64,
    /// The learning rate this step used.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// SFT target tokens (responses and their EOS).
    pub target_tokens: usize,
    /// Tokens of the step's SFT sequences (prompts included).
    #[serde(default)]
    pub sft_tokens: usize,
    /// Tokens of the step's replay chunks.
    #[serde(default)]
    pub replay_tokens: usize,
    /// SFT and replay tokens per second.
    pub tokens_per_s: f64,
}

/// What a finished run reports.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub steps: u64,
    pub examples: usize,
    pub dropped_records: usize,
    pub wall_s: f64,
    /// Tokens processed, SFT and replay.
    pub tokens: usize,
    pub replay_tokens: usize,
    pub tokens_per_s: f64,
    pub peak_rss_mb: f64,
    pub adapter: PathBuf,
}

/// The fixed plan of a run: which examples each step sees.
pub struct Plan {
    pub examples: Vec<Example>,
    pub steps_per_epoch: u64,
    pub total_steps: u64,
    batch_size: usize,
    shuffle: bool,
    seed: u64,
}

impl Plan {
    pub fn new(examples: Vec<Example>, config: &SftConfig) -> Self {
        let steps_per_epoch = examples.len().div_ceil(config.batch_size) as u64;
        let mut total_steps = steps_per_epoch * config.epochs as u64;
        if let Some(max) = config.max_steps {
            total_steps = total_steps.min(max);
        }
        Self {
            examples,
            steps_per_epoch,
            total_steps,
            batch_size: config.batch_size,
            shuffle: config.shuffle,
            seed: config.seed,
        }
    }

    /// The examples of optimiser step `step` (0-based): a seeded permutation per epoch, cut into
    /// consecutive batches (the last one of an epoch may be short).
    pub fn batch(&self, step: u64) -> Vec<&Example> {
        let order = self.order(step / self.steps_per_epoch);
        self.slice(&order, step)
            .iter()
            .map(|&i| &self.examples[i])
            .collect()
    }

    /// The tokens of every step's examples, step by step (one permutation per epoch).
    pub fn tokens_per_step(&self) -> Vec<usize> {
        let mut order: Option<(u64, Vec<usize>)> = None;
        (0..self.total_steps)
            .map(|step| {
                let epoch = step / self.steps_per_epoch;
                if order.as_ref().is_none_or(|(e, _)| *e != epoch) {
                    order = Some((epoch, self.order(epoch)));
                }
                let (_, o) = order.as_ref().expect("set above");
                self.slice(o, step)
                    .iter()
                    .map(|&i| self.examples[i].tokens.len())
                    .sum()
            })
            .collect()
    }

    /// Example indices of one epoch, in the order its steps take them.
    fn order(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.examples.len()).collect();
        if self.shuffle {
            let mut rng = ChaCha8Rng::seed_from_u64(splitmix(self.seed ^ splitmix(epoch)));
            order.shuffle(&mut rng);
        }
        order
    }

    fn slice<'a>(&self, order: &'a [usize], step: u64) -> &'a [usize] {
        let index = (step % self.steps_per_epoch) as usize;
        let start = index * self.batch_size;
        let end = (start + self.batch_size).min(order.len());
        &order[start..end]
    }
}

/// Per-token loss weights of a step's batch under `reduction`.
pub fn loss_weights(batch: &[&Example], reduction: LossReduction) -> Vec<Vec<f64>> {
    let total: usize = batch.iter().map(|e| e.target_tokens()).sum();
    batch
        .iter()
        .map(|e| {
            let w = match reduction {
                LossReduction::Token => 1.0 / total as f64,
                LossReduction::Sequence => 1.0 / (e.target_tokens() * batch.len()) as f64,
            };
            (0..e.tokens.len())
                .map(|j| if j >= e.target_start { w } else { 0.0 })
                .collect()
        })
        .collect()
}

/// Loss and summed gradients of one optimiser step's batch, split into micro-batches (plain
/// LoRA; [`batch_gradients`] is the general form).
pub fn step_gradients(
    model: &LoadedModel,
    params: &[LoraParams],
    batch: &[&Example],
    reduction: LossReduction,
    micro_batch_size: usize,
    dropout: Option<(u64, u64)>,
) -> anyhow::Result<(f64, Vec<Tensor>)> {
    let step = batch_gradients(
        model,
        &lora::vars(params),
        batch,
        reduction,
        micro_batch_size,
        dropout,
        None,
    )?;
    Ok((step.loss, step.grads))
}

/// What one optimiser step's batch gives.
pub struct StepGradients {
    /// The language-modelling loss.
    pub loss: f64,
    /// LoRAMoE's balance term (0 without one).
    pub balance: f64,
    /// The gradient of `loss + balance` for every var, in the vars' order.
    pub grads: Vec<Tensor>,
}

/// The loss, the balance term (when `balance` is given) and the summed gradients of their sum
/// with respect to `vars`, for one optimiser step's batch split into micro-batches.
pub fn batch_gradients(
    model: &LoadedModel,
    vars: &[Var],
    batch: &[&Example],
    reduction: LossReduction,
    micro_batch_size: usize,
    dropout: Option<(u64, u64)>,
    balance: Option<&Balance>,
) -> anyhow::Result<StepGradients> {
    let weights = loss_weights(batch, reduction);
    let mut grads: Vec<Option<Tensor>> = vec![None; vars.len()];
    let mut loss_total = 0.0;
    let mut balance_total = 0.0;
    for (m, (examples, weights)) in batch
        .chunks(micro_batch_size)
        .zip(weights.chunks(micro_batch_size))
        .enumerate()
    {
        let seqs: Vec<WeightedSequence> = examples
            .iter()
            .zip(weights)
            .map(|(e, w)| WeightedSequence {
                tokens: &e.tokens,
                weights: w,
            })
            .collect();
        let key = dropout
            .map(|(seed, step)| DropoutKey(splitmix(seed) ^ splitmix((step << 20) | m as u64)));
        let (loss, _, routes) = weighted_nll_routed(&model.decoder, &seqs, key)?;
        loss_total += loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let objective = match balance {
            Some(b) if b.lambda > 0.0 && !routes.is_empty() => {
                let sequences: Vec<(usize, usize)> = examples
                    .iter()
                    .map(|e| (e.tokens.len(), e.record))
                    .collect();
                let term = b.term(&routes, &sequences, b.lambda / batch.len() as f64)?;
                balance_total += term.to_dtype(DType::F64)?.to_scalar::<f64>()?;
                let term = term.to_dtype(loss.dtype())?;
                (loss + term)?
            }
            _ => loss,
        };
        let store = objective.backward()?;
        for (g, v) in grads.iter_mut().zip(vars) {
            let Some(grad) = store.get(v.as_tensor()) else {
                continue;
            };
            *g = Some(match g.take() {
                Some(acc) => (acc + grad)?,
                None => grad.clone(),
            });
        }
    }
    let grads = grads
        .into_iter()
        .zip(vars)
        .map(|(g, v)| g.map_or_else(|| v.as_tensor().zeros_like(), Ok))
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok(StepGradients {
        loss: loss_total,
        balance: balance_total,
        grads,
    })
}

/// The trained parameters: plain LoRA factors, or mixtures of LoRA experts.
enum Trainable {
    Lora(Vec<LoraParams>, LoraSettings),
    Moe(Vec<MoeParams>, MoeSettings),
}

impl Trainable {
    fn vars(&self) -> Vec<Var> {
        match self {
            Trainable::Lora(p, _) => lora::vars(p),
            Trainable::Moe(p, _) => moe::vars(p),
        }
    }

    /// Writes the adapter folder (PEFT LoRA, or LoRAMoE).
    fn save(&self, dir: &Path, config: &SftConfig) -> anyhow::Result<()> {
        let base = config.model.canonicalize().unwrap_or(config.model.clone());
        let base = base.display().to_string();
        match self {
            Trainable::Lora(p, settings) => {
                lora::to_adapter(p, settings.adapter_config(&base))?.save(dir)?
            }
            Trainable::Moe(p, settings) => {
                let m = config.moe.as_ref().expect("a LoRAMoE run has its settings");
                moe::to_adapter(p, settings.adapter_config(&base, m.balance, m.delta))?.save(dir)?
            }
        }
        Ok(())
    }
}

/// The trainable adapters `config` asks for, attached to `model`, and LoRAMoE's balancing
/// constraint when λ > 0 (every record must then name its type).
fn trainable(
    config: &SftConfig,
    model: &mut LoadedModel,
    device: &Device,
) -> anyhow::Result<(Trainable, Option<Balance>)> {
    let Some(m) = &config.moe else {
        let settings = LoraSettings {
            r: config.lora_r,
            alpha: config.lora_alpha,
            dropout: config.lora_dropout,
            targets: config.lora_targets.clone(),
        };
        let init = config
            .init_adapter
            .as_deref()
            .map(|dir| PeftAdapter::load(dir, device))
            .transpose()?;
        let params = lora::attach(&mut model.decoder, &settings, config.seed, init.as_ref())?;
        return Ok((Trainable::Lora(params, settings), None));
    };
    let settings = MoeSettings {
        experts: m.experts,
        r: m.rank,
        alpha: config.lora_alpha,
        dropout: config.lora_dropout,
        targets: config.lora_targets.clone(),
    };
    let params = moe::attach(&mut model.decoder, &settings, config.seed)?;
    let balance = if m.balance > 0.0 {
        Some(Balance {
            lambda: m.balance,
            delta: m.delta,
            groups: moe::read_types(&config.data, &m.type_field)?,
        })
    } else {
        None
    };
    Ok((Trainable::Moe(params, settings), balance))
}

/// [`step_gradients`] plus the regulariser's penalty: the LM loss, the penalty, and the gradient
/// of their sum.
pub fn objective_gradients(
    model: &LoadedModel,
    params: &[LoraParams],
    batch: &[&Example],
    reduction: LossReduction,
    micro_batch_size: usize,
    dropout: Option<(u64, u64)>,
    regulariser: Option<&dyn Regulariser>,
) -> anyhow::Result<(f64, f64, Vec<Tensor>)> {
    let (loss, mut grads) =
        step_gradients(model, params, batch, reduction, micro_batch_size, dropout)?;
    let Some(regulariser) = regulariser else {
        return Ok((loss, 0.0, grads));
    };
    let (penalty, penalty_grads) = baselines::penalty_gradients(regulariser, params)?;
    for (g, p) in grads.iter_mut().zip(penalty_grads) {
        *g = (&*g + p)?;
    }
    Ok((loss, penalty, grads))
}

/// Runs (or resumes) SFT into `output`; `on_step` sees every step's log line as it is written.
pub fn run(
    config: &SftConfig,
    output: &Path,
    resume: bool,
    device: &Device,
    on_step: &mut dyn FnMut(&StepLog, &Plan),
) -> anyhow::Result<Summary> {
    validate(config)?;
    let started = Instant::now();
    std::fs::create_dir_all(output)
        .with_context(|| format!("{}: cannot create", output.display()))?;
    let resuming = checkpoint::exists(output);
    if resuming && !resume {
        bail!(
            "{} already holds a training run; add --resume to continue it, or choose another --output",
            output.display()
        );
    }
    let mut model = dtm_model::checkpoint::load(&config.model, DType::F32, device)?;
    let records = read_jsonl(&config.data)?;
    let (examples, dropped) = tokenize(
        &records,
        &model.tokenizer,
        TokenizeOptions {
            max_len: config.max_len,
            append_eos: config.append_eos,
        },
    )?;
    if examples.is_empty() {
        bail!(
            "{}: no record has a response token left after truncation to --max-len {}",
            config.data.display(),
            config.max_len
        );
    }
    let (trainable, constraint) = trainable(config, &mut model, device)?;
    let mut optimiser = AdamW::new(
        trainable.vars(),
        AdamWConfig {
            beta1: config.betas.0,
            beta2: config.betas.1,
            eps: config.eps,
            weight_decay: config.weight_decay,
        },
    )?;
    let plan = Plan::new(examples, config);
    let regulariser = match &trainable {
        Trainable::Lora(params, settings) => regulariser(config, &model, params, settings.scale())?,
        Trainable::Moe(..) => None,
    };
    let replay = replay(config, &model, &plan)?;
    let schedule = Schedule {
        kind: config.schedule,
        lr: config.lr,
        min_lr: config.min_lr,
        warmup_steps: config.warmup_steps,
        total_steps: plan.total_steps,
    };
    let log_path = output.join("train_log.jsonl");
    let mut start_step = 0;
    if resuming {
        let ckpt = checkpoint::load(output, device)?;
        if &ckpt.config != config {
            bail!(
                "{}: the checkpoint was made with other settings ({}); resume with the same command, or choose another --output",
                output.display(),
                differences(&ckpt.config, config)?
            );
        }
        for (var, value) in optimiser.params().iter().zip(&ckpt.params) {
            var.set(value)?;
        }
        optimiser.restore(ckpt.step, ckpt.moments)?;
        start_step = ckpt.step;
        truncate_log(&log_path, start_step)?;
    } else {
        std::fs::write(&log_path, "")?;
    }
    let config_text = serde_json::to_string_pretty(config)? + "\n";
    crate::data::write_atomic(&output.join("train_config.json"), config_text.as_bytes())?;

    let mut log = std::fs::OpenOptions::new().append(true).open(&log_path)?;
    let mut tokens_seen = 0usize;
    let mut replay_seen = 0usize;
    let dropout_seed = (config.lora_dropout > 0.0).then_some(config.seed);
    for step in start_step..plan.total_steps {
        let t0 = Instant::now();
        let mut batch = plan.batch(step);
        let sft_count = batch.len();
        if let Some(replay) = &replay {
            batch.extend(replay.batch(step));
        }
        let StepGradients {
            loss,
            balance,
            mut grads,
        } = batch_gradients(
            &model,
            optimiser.params(),
            &batch,
            config.loss_reduction,
            config.micro_batch_size,
            dropout_seed.map(|s| (s, step)),
            constraint.as_ref(),
        )?;
        // L2 / EWC: the penalty's gradient joins the step's before clipping (plain LoRA only).
        let penalty = match (&regulariser, &trainable) {
            (Some(r), Trainable::Lora(params, _)) => {
                let (penalty, penalty_grads) = baselines::penalty_gradients(r.as_ref(), params)?;
                for (g, p) in grads.iter_mut().zip(penalty_grads) {
                    *g = (&*g + p)?;
                }
                penalty
            }
            _ => 0.0,
        };
        let (grad_norm, grads) = clip_grad_norm(grads, config.max_grad_norm)?;
        let lr = schedule.lr_at(step);
        optimiser.step(&grads, lr)?;
        let (sft, replayed) = batch.split_at(sft_count);
        let sft_tokens: usize = sft.iter().map(|e| e.tokens.len()).sum();
        let replay_tokens: usize = replayed.iter().map(|e| e.tokens.len()).sum();
        tokens_seen += sft_tokens + replay_tokens;
        replay_seen += replay_tokens;
        let entry = StepLog {
            step: step + 1,
            epoch: (step + 1) as f64 / plan.steps_per_epoch as f64,
            loss,
            balance,
            penalty,
            lr,
            grad_norm,
            target_tokens: sft.iter().map(|e| e.target_tokens()).sum(),
            sft_tokens,
            replay_tokens,
            tokens_per_s: (sft_tokens + replay_tokens) as f64 / t0.elapsed().as_secs_f64(),
        };
        if !loss.is_finite() || !balance.is_finite() || !penalty.is_finite() {
            bail!(
                "step {}: the loss is {loss}, the balance term {balance} and the penalty {penalty}; stopping (lower --lr?)",
                step + 1
            );
        }
        writeln!(log, "{}", serde_json::to_string(&entry)?)?;
        log.flush()?;
        let done = step + 1;
        if done.is_multiple_of(config.checkpoint_every) || done == plan.total_steps {
            let values: Vec<Tensor> = optimiser
                .params()
                .iter()
                .map(|v| v.as_tensor().clone())
                .collect();
            checkpoint::save(output, done, config, &values, optimiser.moments())?;
        }
        on_step(&entry, &plan);
    }
    let adapter_dir = output.join("adapter");
    trainable.save(&adapter_dir, config)?;
    let wall_s = started.elapsed().as_secs_f64();
    Ok(Summary {
        steps: plan.total_steps,
        examples: plan.examples.len(),
        dropped_records: dropped,
        wall_s,
        tokens: tokens_seen,
        replay_tokens: replay_seen,
        tokens_per_s: tokens_seen as f64 / wall_s,
        peak_rss_mb: peak_rss_mb(),
        adapter: adapter_dir,
    })
}

/// The penalty `config` asks for, checked against the model before any training.
fn regulariser(
    config: &SftConfig,
    model: &LoadedModel,
    params: &[LoraParams],
    scale: f64,
) -> anyhow::Result<Option<Box<dyn Regulariser>>> {
    Ok(match config.reg {
        Regularisation::None => None,
        Regularisation::L2 => Some(Box::new(L2 {
            lambda: config.reg_lambda,
            scale,
        })),
        Regularisation::Ewc => {
            let path = config
                .fisher
                .as_deref()
                .context("--reg ewc needs --fisher F.safetensors")?;
            let decoder = &model.decoder;
            let f = fisher::load(path, decoder.dtype(), decoder.device())?;
            f.check_against(path, decoder)?;
            if let Some(theirs) = f.metadata.get("model_sha256") {
                let ours = dtm_model::checkpoint::fingerprint(&config.model)?;
                if *theirs != ours {
                    bail!(
                        "{}: the Fisher of {} (sha256 {theirs}), not of --model {} (sha256 {ours}); compute it with `trainer fisher --model {}`",
                        path.display(),
                        f.metadata.get("model").map_or("another model", String::as_str),
                        config.model.display(),
                        config.model.display()
                    );
                }
            }
            if let Some(adapter) = f.metadata.get("adapter").filter(|a| !a.is_empty()) {
                bail!(
                    "{}: the Fisher of the model with the adapter {adapter}; EWC needs the base model's (compute it without --adapter)",
                    path.display()
                );
            }
            Some(Box::new(Ewc::new(
                config.reg_lambda,
                scale,
                &f,
                path,
                params,
            )?))
        }
    })
}

/// The replay chunks `config` asks for (`--max-len` tokens each), checked before any training.
fn replay(config: &SftConfig, model: &LoadedModel, plan: &Plan) -> anyhow::Result<Option<Replay>> {
    let Some(path) = &config.replay else {
        return Ok(None);
    };
    let documents = text::read_documents(path)?;
    let chunks = text::chunk(&documents, &model.tokenizer, config.max_len, path)?;
    Ok(Some(Replay::new(
        chunks,
        config.replay_ratio,
        config.seed,
        &plan.tokens_per_step(),
    )))
}

fn validate(c: &SftConfig) -> anyhow::Result<()> {
    let checks: [(bool, &str); 12] = [
        (c.lora_r > 0, "--lora-r must be positive"),
        (c.lora_alpha > 0.0, "--lora-alpha must be positive"),
        (
            (0.0..1.0).contains(&c.lora_dropout),
            "--lora-dropout must be in [0, 1)",
        ),
        (
            c.lr.is_finite() && c.lr >= 0.0,
            "--lr must be a non-negative number",
        ),
        (
            c.min_lr >= 0.0 && c.min_lr <= c.lr,
            "--min-lr must be between 0 and --lr",
        ),
        (
            (0.0..1.0).contains(&c.betas.0) && (0.0..1.0).contains(&c.betas.1),
            "--betas must be two numbers in [0, 1)",
        ),
        (c.eps > 0.0, "--eps must be positive"),
        (
            c.batch_size > 0 && c.micro_batch_size > 0,
            "--batch-size and --micro-batch-size must be positive",
        ),
        (c.max_len >= 2, "--max-len must be at least 2"),
        (c.epochs > 0, "--epochs must be positive"),
        (c.max_steps != Some(0), "--max-steps must be positive"),
        (
            c.checkpoint_every > 0,
            "--checkpoint-every must be positive",
        ),
    ];
    for (ok, message) in checks {
        if !ok {
            bail!("{message}");
        }
    }
    if c.max_grad_norm.is_some_and(|n| n.is_nan() || n <= 0.0) {
        bail!("--max-grad-norm must be positive");
    }
    if c.lora_targets.is_empty() {
        bail!("--lora-targets names no layer");
    }
    if let Some(m) = &c.moe {
        m.validate()?;
        if c.init_adapter.is_some() {
            bail!("--init-adapter starts plain LoRA factors; it cannot start a LoRAMoE run (--moe-experts)");
        }
    }
    if c.moe.as_ref().is_some_and(|m| m.balance > 0.0) && c.replay.is_some() {
        bail!("--moe-balance needs every record's type, and --replay chunks have none: use one or the other");
    }
    if c.moe.is_some() && c.reg != Regularisation::None {
        bail!("--reg (L2, EWC) regularises plain LoRA factors; it cannot be combined with --moe-experts");
    }
    if !(c.reg_lambda.is_finite() && c.reg_lambda >= 0.0) {
        bail!("--reg-lambda must be a non-negative number");
    }
    match (c.reg, &c.fisher) {
        (Regularisation::None, _) if c.reg_lambda != 0.0 => {
            bail!("--reg-lambda needs --reg l2 or --reg ewc")
        }
        (Regularisation::Ewc, None) => {
            bail!("--reg ewc needs --fisher F.safetensors (made by `trainer fisher` on pre-training-like text)")
        }
        (Regularisation::None | Regularisation::L2, Some(_)) => {
            bail!("--fisher is used by --reg ewc only")
        }
        _ => {}
    }
    if !(c.replay_ratio.is_finite() && c.replay_ratio >= 0.0) {
        bail!("--replay-ratio must be a non-negative number");
    }
    if c.replay.is_none() && c.replay_ratio != 0.0 {
        bail!("--replay-ratio needs --replay PATH");
    }
    Ok(())
}

/// `field: old then, new now` for every setting that differs.
fn differences(then: &SftConfig, now: &SftConfig) -> anyhow::Result<String> {
    Ok(changed_fields(
        &serde_json::to_value(then)?,
        &serde_json::to_value(now)?,
    ))
}

/// `field: old then, new now` for every top-level field of two JSON objects that differs.
pub fn changed_fields(then: &serde_json::Value, now: &serde_json::Value) -> String {
    let (Some(a), Some(b)) = (then.as_object(), now.as_object()) else {
        return format!("{then} then, {now} now");
    };
    let null = serde_json::Value::Null;
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| {
            format!(
                "{k}: {} then, {} now",
                a.get(k).unwrap_or(&null),
                b.get(k).unwrap_or(&null)
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Keeps the first `steps` lines of the log: lines after the checkpoint are redone.
fn truncate_log(path: &Path, steps: u64) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let kept: String = text
        .lines()
        .take(steps as usize)
        .map(|l| format!("{l}\n"))
        .collect();
    crate::data::write_atomic(path, kept.as_bytes())?;
    Ok(())
}

/// Peak resident memory of this process (VmHWM), in MB; 0 where /proc is unavailable.
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}
