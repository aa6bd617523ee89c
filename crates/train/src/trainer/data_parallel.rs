//! The trainer's side of data parallelism: its shard of the data, the accumulated batch's size
//! over all ranks, and a step's gradients and numbers summed over the ranks (see
//! [`crate::distributed`]). With one rank each is the local value, untouched.

use std::sync::Arc;

use burn::tensor::backend::AutodiffBackend;
use vlmtune_data::Shard;

use super::{Accumulation, BatchOf, Objective, StepGradients, Trainer};
use crate::distributed::step::{sum_gradients, sum_values, GradLayout};
use crate::distributed::Collective;
use crate::error::{Result, TrainError};
use crate::optim::TensorMap;

/// A step over all ranks.
pub(super) struct SharedStep<AB: AutodiffBackend> {
    /// Sum of the ranks' losses (each normalised by the global accumulated batch): the loss
    /// one process accumulating every rank's micro-batches would have.
    pub loss: f64,
    /// The summed gradients.
    pub grads: TensorMap<AB::InnerBackend>,
    /// `(name, sum, count)` of each metric over the micro-batches of every rank.
    pub metrics: Vec<(&'static str, f64, usize)>,
    /// Non-padding tokens of every rank.
    pub tokens: usize,
    /// This rank's micro-batches left out (their losses).
    pub nonfinite: Vec<f64>,
    /// Whether any rank left a micro-batch out.
    pub nonfinite_anywhere: bool,
    /// Micro-batches applied over all ranks.
    pub applied: usize,
    /// Whether any rank was asked to stop (SIGINT / SIGTERM).
    pub interrupted: bool,
}

impl<AB: AutodiffBackend, O: Objective<AB>> Trainer<AB, O> {
    /// Trains as one rank of a data-parallel group (made by
    /// [`crate::distributed::launch`]); every rank must get the same model, arguments and
    /// data. Only rank 0 logs, evaluates and writes files.
    pub fn with_collective(mut self, collective: Arc<dyn Collective<AB::InnerBackend>>) -> Self {
        self.collective = collective;
        self
    }

    /// This rank (0 without data parallelism).
    pub fn rank(&self) -> usize {
        self.collective.rank()
    }

    /// Whether this is the rank that logs, evaluates and writes (rank 0, or the only one).
    pub fn is_main(&self) -> bool {
        self.collective.rank() == 0
    }

    pub(super) fn shard(&self) -> Shard {
        Shard {
            rank: self.collective.rank(),
            world: self.collective.world(),
        }
    }

    /// The accumulated batch `micro` belongs to, over all ranks (transformers gathers
    /// `num_items_in_batch` the same way).
    pub(super) fn accumulation(&self, micro: &[BatchOf<AB, O>]) -> Result<Accumulation> {
        let items: usize = micro.iter().map(|b| self.objective.items(b)).sum();
        if self.collective.world() == 1 {
            return Ok(Accumulation {
                items,
                micro_batches: micro.len(),
            });
        }
        let totals = sum_values(
            &*self.collective,
            &[items as f64, micro.len() as f64],
            &self.device,
        )?;
        Ok(Accumulation {
            items: totals[0].round() as usize,
            micro_batches: totals[1].round() as usize,
        })
    }

    /// `step` summed over the ranks, with whether any rank was `interrupted`.
    pub(super) fn share_step(
        &self,
        step: StepGradients<AB>,
        interrupted: bool,
    ) -> Result<SharedStep<AB>> {
        let mut totals: Vec<(&'static str, f64, usize)> = Vec::new();
        for (name, value) in step.metrics.iter().flatten() {
            match totals.iter_mut().find(|t| t.0 == *name) {
                Some(t) => {
                    t.1 += value;
                    t.2 += 1;
                }
                None => totals.push((name, *value, 1)),
            }
        }
        if self.collective.world() == 1 {
            return Ok(SharedStep {
                loss: step.loss,
                grads: step.grads,
                metrics: totals,
                tokens: step.tokens,
                nonfinite_anywhere: !step.nonfinite.is_empty(),
                nonfinite: step.nonfinite,
                applied: step.applied,
                interrupted,
            });
        }
        let names = self.objective.metric_names();
        if let Some((name, ..)) = totals.iter().find(|t| !names.contains(&t.0)) {
            return Err(TrainError::Distributed(format!(
                "the objective's metric `{name}` is not in its metric_names()"
            )));
        }
        let mut values = vec![
            step.loss,
            step.tokens as f64,
            step.applied as f64,
            step.nonfinite.len() as f64,
            f64::from(u8::from(interrupted)),
        ];
        for name in names {
            let (sum, count) = totals
                .iter()
                .find(|t| t.0 == *name)
                .map_or((0.0, 0), |t| (t.1, t.2));
            values.extend([sum, count as f64]);
        }
        let layout = self
            .grad_layout
            .get_or_init(|| GradLayout::of::<AB, _>(&self.model));
        let (grads, values) =
            sum_gradients(&*self.collective, layout, step.grads, &values, &self.device)?;
        let count = |v: f64| v.round() as usize;
        let metrics = names
            .iter()
            .enumerate()
            .map(|(i, name)| (*name, values[5 + 2 * i], count(values[6 + 2 * i])))
            .filter(|t| t.2 > 0)
            .collect();
        Ok(SharedStep {
            loss: values[0],
            grads,
            metrics,
            tokens: count(values[1]),
            nonfinite: step.nonfinite,
            nonfinite_anywhere: values[3] > 0.5,
            applied: count(values[2]),
            interrupted: values[4] > 0.5,
        })
    }
}
