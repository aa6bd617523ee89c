//! Learning-rate schedules as transformers' `get_scheduler` defines them.

use crate::args::SchedulerType;

/// The multiplier of the peak learning rate for optimizer step `step` (0-based, the value
/// `LambdaLR` uses for that update), with `warmup` warm-up steps out of `total`.
pub fn lr_lambda(kind: SchedulerType, step: usize, warmup: usize, total: usize) -> f64 {
    let (s, w, t) = (step as f64, warmup as f64, total as f64);
    if step < warmup {
        return match kind {
            SchedulerType::Constant => 1.0,
            _ => s / w.max(1.0),
        };
    }
    match kind {
        SchedulerType::Linear => ((t - s) / (t - w).max(1.0)).max(0.0),
        SchedulerType::Cosine => {
            let progress = (s - w) / (t - w).max(1.0);
            (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
        }
        SchedulerType::Constant | SchedulerType::ConstantWithWarmup => 1.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_transformers_formulas() {
        // get_linear_schedule_with_warmup(opt, 2, 10): lambdas 0, .5, 1, .875, ..., 0.125
        let lin: Vec<f64> = (0..10)
            .map(|s| lr_lambda(SchedulerType::Linear, s, 2, 10))
            .collect();
        assert_eq!(&lin[..4], &[0.0, 0.5, 1.0, 0.875]);
        assert!((lin[9] - 0.125).abs() < 1e-12);
        assert_eq!(lr_lambda(SchedulerType::Linear, 0, 0, 10), 1.0);
        let cos = lr_lambda(SchedulerType::Cosine, 6, 2, 10);
        assert!((cos - 0.5).abs() < 1e-12);
        assert_eq!(lr_lambda(SchedulerType::ConstantWithWarmup, 1, 4, 10), 0.25);
        assert_eq!(lr_lambda(SchedulerType::Constant, 1, 4, 10), 1.0);
    }
}
