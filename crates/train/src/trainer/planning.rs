//! The trainer's memory planning: the plan of a step from the training set's largest
//! examples, and `auto_find_batch_size`.

use burn::tensor::backend::AutodiffBackend;
use vlmtune_data::loader::BatchEncoder;

use super::{Objective, Trainer};
use crate::error::{Result, TrainError};
use crate::memory_plan::{self, MemoryPlan, StepShape};

impl<AB: AutodiffBackend, O: Objective<AB>> Trainer<AB, O> {
    /// The memory plan of a step of `batch_size` rows like the largest of (up to) 32
    /// training examples spread over the set.
    pub fn memory_plan(&self, batch_size: usize) -> Result<MemoryPlan> {
        let worst = self.worst_example_shape()?;
        Ok(self.plan_for(worst, batch_size))
    }

    fn worst_example_shape(&self) -> Result<StepShape> {
        let n = self.train_set.len();
        let mut worst = StepShape {
            batch_size: 1,
            seq_len: 0,
            tiles: 0,
            labelled: 0,
        };
        for i in (0..n).step_by((n / 32).max(1)).take(32) {
            let batch = self.encoder.encode_batch(&[(i, &self.train_set[i])])?;
            let shape = self.objective.step_shape(&batch);
            worst.batch_size = worst.batch_size.max(shape.batch_size);
            worst.seq_len = worst.seq_len.max(shape.seq_len);
            worst.tiles = worst.tiles.max(shape.tiles);
            worst.labelled = worst.labelled.max(shape.labelled);
        }
        Ok(worst)
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
    /// batch kept by the accumulation; logged either way.
    pub(super) fn plan_batch_size(&mut self) -> Result<()> {
        let worst = self.worst_example_shape()?;
        let (batch, accumulation) = (
            self.args.per_device_train_batch_size,
            self.args.gradient_accumulation_steps,
        );
        if !self.args.auto_find_batch_size {
            let plan = self.plan_for(worst, batch);
            if self.is_main() {
                tracing::info!(%plan, per_device_train_batch_size = batch, "memory");
            }
            return Ok(());
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
        Ok(())
    }
}
