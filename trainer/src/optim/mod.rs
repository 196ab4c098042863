//! Optimisation: AdamW as `torch.optim.AdamW`, learning-rate schedules as transformers'
//! `get_*_schedule_with_warmup`, and global-norm gradient clipping as
//! `torch.nn.utils.clip_grad_norm_`.

pub mod adamw;
pub mod clip;
pub mod schedule;

pub use adamw::{AdamW, AdamWConfig};
pub use clip::clip_grad_norm;
pub use schedule::{Schedule, ScheduleKind};
