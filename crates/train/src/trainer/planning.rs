//! The trainer's memory planning: the plan of a step from the training set's largest
//! examples, `auto_find_batch_size`, and its retry on an out-of-memory at the first step.

use burn::tensor::backend::AutodiffBackend;
use vlmtune_data::loader::BatchEncoder;

use super::{Accumulation, Objective, Trainer};
use crate::error::{Result, TrainError};
use crate::memory_plan::{self, MemoryPlan, StepShape};
use crate::oom_retry::find_executable_batch_size;
use crate::optim::loss_grads;

impl<AB: AutodiffBackend, O: Objective<AB>> Trainer<AB, O> {
    /// The memory plan of a step of `batch_size` rows like the largest of (up to) 32
    /// training examples spread over the set.
    pub fn memory_plan(&self, batch_size: usize) -> Result<MemoryPlan> {
        let worst = self.worst_example_shape()?;
        Ok(self.plan_for(worst, batch_size))
    }

    fn worst_example_shape(&self) -> Result<StepShape> {
        Ok(self.sampled_example_shapes()?.0)
    }

    /// The element-wise largest shape of (up to) 32 training examples spread over the set, and
    /// the index of the one whose own step plans the most memory.
    fn sampled_example_shapes(&self) -> Result<(StepShape, usize)> {
        let n = self.train_set.len();
        let mut worst = StepShape {
            batch_size: 1,
            seq_len: 0,
            tiles: 0,
            labelled: 0,
        };
        let mut largest = (0u64, 0usize);
        for i in (0..n).step_by((n / 32).max(1)).take(32) {
            let batch = self.encoder.encode_batch(&[(i, &self.train_set[i])])?;
            let shape = self.objective.step_shape(&batch);
            let planned = self.plan_for(shape, 1).total();
            if planned > largest.0 {
                largest = (planned, i);
            }
            worst.batch_size = worst.batch_size.max(shape.batch_size);
            worst.seq_len = worst.seq_len.max(shape.seq_len);
            worst.tiles = worst.tiles.max(shape.tiles);
            worst.labelled = worst.labelled.max(shape.labelled);
        }
        Ok((worst, largest.1))
    }

    fn plan_for(&self, example: StepShape, batch_size: usize) -> MemoryPlan {
        memory_plan::plan_model(
            &self.model,
            StepShape {
                batch_size: example.batch_size * batch_size,
                ..example
            },
            self.args.gradient_checkpointing,
            self.args.checkpoint_every,
            self.args.uses_8bit_optimizer(),
        )
    }

    /// `auto_find_batch_size`: the largest batch whose plan fits `max_memory`, the effective
    /// batch kept by the accumulation; logged either way. Returns the sampled example whose
    /// own step plans the most memory (what [`Self::fit_first_step`] tries).
    pub(super) fn plan_batch_size(&mut self) -> Result<usize> {
        let (worst, largest) = self.sampled_example_shapes()?;
        let (batch, accumulation) = (
            self.args.per_device_train_batch_size,
            self.args.gradient_accumulation_steps,
        );
        if !self.args.auto_find_batch_size {
            let plan = self.plan_for(worst, batch);
            if self.is_main() {
                tracing::info!(%plan, per_device_train_batch_size = batch, "memory");
            }
            return Ok(largest);
        }
        let budget = match &self.args.max_memory {
            // A rank's own budget, as transformers reads it (per device).
            Some(m) => memory_plan::parse_memory(m)?,
            // The machine's memory is shared by its ranks.
            None => {
                memory_plan::available_memory().ok_or_else(|| TrainError::Config {
                    field: "max_memory".into(),
                    message: "cannot read the available memory; set max_memory".into(),
                })? / self.collective.local_ranks().max(1) as u64
            }
        };
        let choice =
            memory_plan::pick_batch_size(batch, accumulation, budget, |b| self.plan_for(worst, b))?;
        tracing::info!(
            per_device_train_batch_size = choice.per_device_train_batch_size,
            gradient_accumulation_steps = choice.gradient_accumulation_steps,
            budget_mib = budget >> 20,
            plan = %choice.plan,
            "auto_find_batch_size"
        );
        self.args.per_device_train_batch_size = choice.per_device_train_batch_size;
        self.args.gradient_accumulation_steps = choice.gradient_accumulation_steps;
        Ok(largest)
    }

    /// `auto_find_batch_size` on a device backend: a trial forward + backward of the first
    /// step's size (rows like example `index`, the one that plans the most memory), and on an
    /// out-of-memory half the batch and twice the accumulation, as accelerate's
    /// `find_executable_batch_size` (the plan can be wrong; the device's allocator is not). The trial changes nothing:
    /// its gradients are dropped, and the real step seeds itself anew.
    pub(super) fn fit_first_step(&mut self, index: usize) -> Result<()> {
        if !self.args.auto_find_batch_size || !self.retry_out_of_memory {
            return Ok(());
        }
        let (batch, accumulation) = (
            self.args.per_device_train_batch_size,
            self.args.gradient_accumulation_steps,
        );
        let device = self.device.clone();
        let fitted = find_executable_batch_size(
            batch,
            |b| self.trial_step(index, b),
            || AB::memory_cleanup(&device),
        )?;
        if fitted != batch {
            self.args.per_device_train_batch_size = fitted;
            self.args.gradient_accumulation_steps = (batch * accumulation).div_ceil(fitted);
            tracing::info!(
                per_device_train_batch_size = fitted,
                gradient_accumulation_steps = self.args.gradient_accumulation_steps,
                "auto_find_batch_size after an out-of-memory"
            );
        }
        Ok(())
    }

    /// Forward and backward of `rows` copies of training example `index`, as a step computes
    /// them; nothing is kept.
    pub(super) fn trial_step(&mut self, index: usize, rows: usize) -> Result<()> {
        let train_set = self.train_set.clone();
        let examples: Vec<(usize, &O::Example)> =
            (0..rows).map(|_| (index, &train_set[index])).collect();
        let batch = self.encoder.encode_batch(&examples)?;
        let accumulation = Accumulation {
            items: self.objective.items(&batch),
            micro_batches: 1,
        };
        let tape = self.step_tape();
        let loss = {
            let _recording = tape.as_ref().map(|t| t.activate());
            self.objective.loss(&self.model, &batch, accumulation)?
        };
        if let Some(loss) = loss {
            drop(loss_grads(&self.model, loss.loss, tape.as_deref()));
        }
        AB::sync(&self.device).map_err(|e| TrainError::Config {
            field: "device".into(),
            message: format!("the device failed during the first step's trial: {e:?}"),
        })?;
        Ok(())
    }
}
