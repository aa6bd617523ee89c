//! The batch-size and activation-memory flags `sft` and `dpo` share.

use vlmtune::train::TrainingArgs;

/// Gradient checkpointing and batch-size planning (transformers' names).
#[derive(clap::Args, Debug, Default, Clone)]
pub struct MemoryArgs {
    /// Keep only each layer's input in the forward and recompute layers in the backward.
    #[arg(long)]
    pub gradient_checkpointing: bool,
    /// Layers per checkpointed segment (with --gradient-checkpointing).
    #[arg(long)]
    pub checkpoint_every: Option<usize>,
    /// Pick the largest per-device batch whose estimated peak memory fits --max-memory,
    /// raising the accumulation to keep the effective batch.
    #[arg(long)]
    pub auto_find_batch_size: bool,
    /// Memory budget of --auto-find-batch-size (`8GiB`, `512MiB`; default: available memory).
    #[arg(long)]
    pub max_memory: Option<String>,
}

impl MemoryArgs {
    /// Applies the flags given over `training`.
    pub fn apply(&self, training: &mut TrainingArgs) {
        training.gradient_checkpointing |= self.gradient_checkpointing;
        training.auto_find_batch_size |= self.auto_find_batch_size;
        if let Some(n) = self.checkpoint_every {
            training.checkpoint_every = n;
        }
        if let Some(m) = &self.max_memory {
            training.max_memory = Some(m.clone());
        }
    }
}
