//! Causal language-model loss as transformers' `ForCausalLMLoss` computes it (SPEC §4):
//! labels shifted left by one, `-100` ignored, mean over the counted targets or a sum divided
//! by `num_items_in_batch`.

use burn::tensor::activation::log_softmax;
use burn::tensor::{backend::Backend, Int, Tensor, TensorData};

use crate::error::{ModelError, Result};

/// The label value that is never trained on.
pub const IGNORE_INDEX: i64 = -100;

/// The positions that predict a label after the shift: `rows[i]` (a flat `batch·seq` index
/// of the logits) predicts `targets[i]`.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct ShiftedTargets {
    /// Flat indices into `[batch·seq]` whose logits are scored.
    pub rows: Vec<i64>,
    /// The token each of those positions must predict.
    pub targets: Vec<i64>,
}

impl ShiftedTargets {
    /// Shifts `labels` (`[batch, seq]`, row-major) left by one and drops ignored targets.
    pub fn from_labels(labels: &[i64], batch: usize, seq: usize) -> Result<Self> {
        if labels.len() != batch * seq {
            return Err(ModelError::Input(format!(
                "labels have {} values, expected {batch}x{seq}",
                labels.len()
            )));
        }
        let mut out = Self::default();
        for b in 0..batch {
            for t in 0..seq.saturating_sub(1) {
                let target = labels[b * seq + t + 1];
                if target != IGNORE_INDEX {
                    out.rows.push((b * seq + t) as i64);
                    out.targets.push(target);
                }
            }
        }
        Ok(out)
    }

    /// Number of counted targets.
    pub fn len(&self) -> usize {
        self.targets.len()
    }

    /// Whether no target is counted.
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// Gathers the scored rows of `[batch, seq, D]` into `[n, D]`.
    pub fn select_rows<B: Backend>(&self, x: Tensor<B, 3>) -> Tensor<B, 2> {
        let [b, l, d] = x.dims();
        let device = x.device();
        let idx = Tensor::<B, 1, Int>::from_data(
            TensorData::new(self.rows.clone(), [self.rows.len()]),
            &device,
        );
        x.reshape([b * l, d]).select(0, idx)
    }
}

/// `Σ -log softmax(logits)[target]` over rows of `[n, V]` logits, in f32.
pub fn cross_entropy_sum<B: Backend>(logits: Tensor<B, 2>, targets: &[i64]) -> Tensor<B, 1> {
    let [n, _] = logits.dims();
    let device = logits.device();
    let idx = Tensor::<B, 2, Int>::from_data(TensorData::new(targets.to_vec(), [n, 1]), &device);
    log_softmax(logits, 1).gather(1, idx).sum().neg()
}

/// Per-row log-probabilities of `targets` under `[n, V]` logits: `[n]`.
pub fn target_log_probs<B: Backend>(logits: Tensor<B, 2>, targets: &[i64]) -> Tensor<B, 1> {
    let [n, _] = logits.dims();
    let device = logits.device();
    let idx = Tensor::<B, 2, Int>::from_data(TensorData::new(targets.to_vec(), [n, 1]), &device);
    log_softmax(logits, 1).gather(1, idx).reshape([n])
}

/// The loss of full logits `[batch, seq, V]` against unshifted `labels`:
/// `sum / num_items_in_batch` when given, else the mean over counted targets.
/// A batch with no counted target has loss 0.
pub fn causal_lm_loss<B: Backend>(
    logits: Tensor<B, 3>,
    labels: &[i64],
    num_items_in_batch: Option<usize>,
) -> Result<Tensor<B, 1>> {
    let [b, l, _] = logits.dims();
    let shifted = ShiftedTargets::from_labels(labels, b, l)?;
    if shifted.is_empty() {
        return Ok(Tensor::zeros([1], &logits.device()));
    }
    let rows = shifted.select_rows(logits);
    let denom = num_items_in_batch.unwrap_or(shifted.len()).max(1);
    Ok(cross_entropy_sum(rows, &shifted.targets) / denom as f64)
}

/// Number of rows of `[n, V]` logits whose arg-max equals the target.
pub fn count_correct<B: Backend>(logits: Tensor<B, 2>, targets: &[i64]) -> Result<usize> {
    let predicted = logits
        .argmax(1)
        .into_data()
        .convert::<i64>()
        .to_vec::<i64>()
        .map_err(|e| ModelError::Readback(format!("{e:?}")))?;
    Ok(predicted
        .iter()
        .zip(targets)
        .filter(|(p, t)| p == t)
        .count())
}

#[cfg(test)]
mod tests {
    use super::*;

    type B = burn::backend::Flex;

    #[test]
    fn shifted_targets_skip_ignored() {
        let s = ShiftedTargets::from_labels(&[-100, 5, 6, -100, -100, 7], 2, 3).unwrap();
        assert_eq!(s.rows, vec![0, 1, 4]);
        assert_eq!(s.targets, vec![5, 6, 7]);
    }

    #[test]
    fn loss_is_mean_negative_log_likelihood() {
        let dev = Default::default();
        // One row of logits [0, ln 3] -> p(1) = 3/4, p(0) = 1/4.
        let logits = Tensor::<B, 3>::from_data(
            TensorData::new(vec![0.0f32, 3f32.ln(), 0.0, 3f32.ln(), 9.0, 9.0], [1, 3, 2]),
            &dev,
        );
        let loss = causal_lm_loss(logits.clone(), &[-100, 1, 0], None)
            .unwrap()
            .into_scalar();
        let want = (-(0.75f32).ln() - (0.25f32).ln()) / 2.0;
        assert!((loss - want).abs() < 1e-6);
        let summed = causal_lm_loss(logits, &[-100, 1, 0], Some(4))
            .unwrap()
            .into_scalar();
        assert!((summed - want / 2.0).abs() < 1e-6);
    }
}
