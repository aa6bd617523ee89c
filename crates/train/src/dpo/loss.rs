//! DPO's losses (TRL's loss types, weighted and summed) and TRL's metrics.

use burn::tensor::activation::{log_sigmoid, relu};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use super::logps::{host, SequenceLogps};
use super::{DpoConfig, DpoLossType, NamedMetrics};
use crate::error::Result;

/// The metrics [`dpo_loss`] returns (TRL's names).
pub const METRICS: &[&str] = &[
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
    "logits/chosen",
    "logits/rejected",
    "mean_token_accuracy",
];

/// DPO's losses and metrics from policy and reference sequence log-probabilities.
pub fn dpo_loss<B: Backend>(
    config: &DpoConfig,
    policy: &SequenceLogps<B>,
    ref_chosen: &[f64],
    ref_rejected: &[f64],
) -> Result<(Tensor<B, 1>, NamedMetrics)> {
    let n = ref_chosen.len();
    let device = policy.logps.device();
    let t = |v: &[f64]| {
        Tensor::<B, 1>::from_data(
            TensorData::new(v.iter().map(|x| *x as f32).collect::<Vec<_>>(), [v.len()]),
            &device,
        )
    };
    let pc = policy.logps.clone().narrow(0, 0, n);
    let pr = policy.logps.clone().narrow(0, n, n);
    let chosen_lr = pc.clone() - t(ref_chosen);
    let rejected_lr = pr.clone() - t(ref_rejected);
    let delta = chosen_lr.clone() - rejected_lr.clone();
    let len_c: Vec<f64> = policy.lengths[..n]
        .iter()
        .map(|l| (*l).max(1) as f64)
        .collect();
    let len_r: Vec<f64> = policy.lengths[n..]
        .iter()
        .map(|l| (*l).max(1) as f64)
        .collect();
    let beta = config.beta;
    let mut loss = Tensor::<B, 1>::zeros([1], &device);
    for (kind, weight) in config.loss_type.iter().zip(config.weights()) {
        let per_sequence = match kind {
            DpoLossType::Sigmoid => log_sigmoid(delta.clone() * beta).neg(),
            DpoLossType::Hinge => relu(delta.clone().mul_scalar(-beta).add_scalar(1.0)),
            DpoLossType::Ipo => (chosen_lr.clone() / t(&len_c)
                - rejected_lr.clone() / t(&len_r)
                - 1.0 / (2.0 * beta))
                .square(),
            DpoLossType::Robust => {
                let ls = config.label_smoothing;
                (log_sigmoid(delta.clone() * beta) * -(1.0 - ls)
                    + log_sigmoid(delta.clone() * -beta) * ls)
                    / (1.0 - 2.0 * ls)
            }
            DpoLossType::SigmoidNorm => log_sigmoid(
                (chosen_lr.clone() / t(&len_c) - rejected_lr.clone() / t(&len_r)) * beta,
            )
            .neg(),
            DpoLossType::Sft => {
                let chosen: Vec<Tensor<B, 1>> = policy.token_logps[..n].to_vec();
                Tensor::cat(chosen, 0).mean().neg()
            }
        };
        loss = loss + per_sequence.mean() * weight;
    }
    let values = |x: Tensor<B, 1>| -> Result<Vec<f64>> {
        Ok(host(x.detach())?.into_iter().map(f64::from).collect())
    };
    let (pcv, prv) = (values(pc)?, values(pr)?);
    let chosen_rewards: Vec<f64> = pcv
        .iter()
        .zip(ref_chosen)
        .map(|(p, r)| beta * (p - r))
        .collect();
    let rejected_rewards: Vec<f64> = prv
        .iter()
        .zip(ref_rejected)
        .map(|(p, r)| beta * (p - r))
        .collect();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let stats = &policy.stats;
    let logits_mean = |s: &[(f64, usize, usize)]| {
        s.iter().map(|x| x.0).sum::<f64>() / s.iter().map(|x| x.1).sum::<usize>().max(1) as f64
    };
    let metrics = vec![
        ("rewards/chosen", mean(&chosen_rewards)),
        ("rewards/rejected", mean(&rejected_rewards)),
        (
            "rewards/accuracies",
            chosen_rewards
                .iter()
                .zip(&rejected_rewards)
                .filter(|(c, r)| c > r)
                .count() as f64
                / n.max(1) as f64,
        ),
        (
            "rewards/margins",
            mean(
                &chosen_rewards
                    .iter()
                    .zip(&rejected_rewards)
                    .map(|(c, r)| c - r)
                    .collect::<Vec<_>>(),
            ),
        ),
        ("logps/chosen", mean(&pcv)),
        ("logps/rejected", mean(&prv)),
        ("logits/chosen", logits_mean(&stats[..n])),
        ("logits/rejected", logits_mean(&stats[n..])),
        (
            "mean_token_accuracy",
            stats[..n].iter().map(|x| x.2).sum::<usize>() as f64
                / stats[..n].iter().map(|x| x.1).sum::<usize>().max(1) as f64,
        ),
    ];
    Ok((loss, metrics))
}
