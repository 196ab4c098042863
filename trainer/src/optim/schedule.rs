//! Learning-rate schedules, as pure functions of the optimiser step (0-based: the rate used by
//! the first update is `lr_at(0)`, which is 0 during warm-up, as with transformers' schedulers
//! stepped after each optimiser step).
//!
//! constant / linear / cosine follow transformers' `get_constant_schedule_with_warmup`,
//! `get_linear_schedule_with_warmup` and `get_cosine_schedule_with_warmup`; with a minimum rate
//! the decay factor f becomes `min_ratio + (1 − min_ratio)·f` as in
//! `get_cosine_with_min_lr_schedule_with_warmup` (applied to linear decay the same way).

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    Constant,
    Linear,
    Cosine,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    pub kind: ScheduleKind,
    pub lr: f64,
    pub min_lr: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
}

impl Schedule {
    pub fn lr_at(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.lr * step as f64 / self.warmup_steps.max(1) as f64;
        }
        let progress = (step - self.warmup_steps) as f64
            / (self.total_steps.saturating_sub(self.warmup_steps)).max(1) as f64;
        let decay = match self.kind {
            ScheduleKind::Constant => return self.lr,
            ScheduleKind::Linear => (1.0 - progress).max(0.0),
            ScheduleKind::Cosine => {
                (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
            }
        };
        let min_ratio = if self.lr > 0.0 {
            self.min_lr / self.lr
        } else {
            0.0
        };
        self.lr * (min_ratio + (1.0 - min_ratio) * decay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(kind: ScheduleKind, min_lr: f64) -> Schedule {
        Schedule {
            kind,
            lr: 1.0,
            min_lr,
            warmup_steps: 4,
            total_steps: 14,
        }
    }

    #[test]
    fn match_transformers_lambdas() {
        // Warm-up: step/4 (the first update uses 0).
        for k in [
            ScheduleKind::Constant,
            ScheduleKind::Linear,
            ScheduleKind::Cosine,
        ] {
            let s = sched(k, 0.0);
            assert_eq!(s.lr_at(0), 0.0);
            assert_eq!(s.lr_at(2), 0.5);
            assert_eq!(s.lr_at(4), 1.0);
        }
        // linear: (14 - step) / 10
        assert!((sched(ScheduleKind::Linear, 0.0).lr_at(9) - 0.5).abs() < 1e-12);
        assert_eq!(sched(ScheduleKind::Linear, 0.0).lr_at(20), 0.0);
        // cosine: 0.5 (1 + cos(pi * (step - 4) / 10))
        let c = sched(ScheduleKind::Cosine, 0.0);
        assert!((c.lr_at(9) - 0.5).abs() < 1e-12);
        assert!((c.lr_at(6) - 0.5 * (1.0 + (std::f64::consts::PI * 0.2).cos())).abs() < 1e-12);
        assert!(c.lr_at(14).abs() < 1e-12);
        // min lr 0.1: 0.1 + 0.9 · factor
        let m = sched(ScheduleKind::Cosine, 0.1);
        assert!((m.lr_at(9) - 0.55).abs() < 1e-12);
        assert!((m.lr_at(14) - 0.1).abs() < 1e-12);
        assert_eq!(sched(ScheduleKind::Constant, 0.0).lr_at(100), 1.0);
    }
}
