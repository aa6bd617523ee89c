//! `TrainingArgs`: the fields of transformers' `TrainingArguments` / TRL's `SFTConfig` that
//! vlmtune implements, with the same names and TRL's defaults.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// Learning-rate schedule (transformers' `lr_scheduler_type`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SchedulerType {
    /// Linear decay to 0 after warm-up.
    #[default]
    Linear,
    /// Half-cosine decay to 0 after warm-up.
    Cosine,
    /// Constant.
    Constant,
    /// Linear warm-up, then constant.
    ConstantWithWarmup,
}

fn d_output_dir() -> PathBuf {
    PathBuf::from("runs/sft")
}
fn d_batch() -> usize {
    8
}
fn d_one() -> usize {
    1
}
fn d_epochs() -> f64 {
    3.0
}
fn d_max_steps() -> i64 {
    -1
}
fn d_lr() -> f64 {
    2e-5
}
fn d_beta1() -> f64 {
    0.9
}
fn d_beta2() -> f64 {
    0.999
}
fn d_eps() -> f64 {
    1e-8
}
fn d_max_grad_norm() -> f64 {
    1.0
}
fn d_logging_steps() -> usize {
    10
}
fn d_save_steps() -> usize {
    500
}
fn d_seed() -> u64 {
    42
}
fn d_checkpoint_every() -> usize {
    1
}
fn d_optim() -> String {
    "adamw_torch".into()
}
fn d_max_nonfinite() -> usize {
    10
}
fn d_workers() -> usize {
    2
}
fn d_cache_mb() -> usize {
    1024
}

/// Training settings. Defaults are TRL's `SFTConfig` defaults (learning rate 2e-5,
/// logging every 10 steps, ...); `gradient_checkpointing` and `bf16` default off here since
/// they pay off only on GPUs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainingArgs {
    /// Where checkpoints, metrics and the final model go.
    #[serde(default = "d_output_dir")]
    pub output_dir: PathBuf,
    /// Examples per micro-batch.
    #[serde(default = "d_batch")]
    pub per_device_train_batch_size: usize,
    /// Examples per evaluation batch.
    #[serde(default = "d_batch")]
    pub per_device_eval_batch_size: usize,
    /// Micro-batches per optimizer step.
    #[serde(default = "d_one")]
    pub gradient_accumulation_steps: usize,
    /// Passes over the data (fractions allowed).
    #[serde(default = "d_epochs")]
    pub num_train_epochs: f64,
    /// Optimizer steps; overrides `num_train_epochs` when positive.
    #[serde(default = "d_max_steps")]
    pub max_steps: i64,
    /// Peak learning rate.
    #[serde(default = "d_lr")]
    pub learning_rate: f64,
    /// Schedule after warm-up.
    #[serde(default)]
    pub lr_scheduler_type: SchedulerType,
    /// Warm-up as a fraction of all steps (used when `warmup_steps` is 0).
    #[serde(default)]
    pub warmup_ratio: f64,
    /// Warm-up steps.
    #[serde(default)]
    pub warmup_steps: usize,
    /// The optimizer (transformers' names): `adamw_torch` (also `adamw_torch_fused`,
    /// `adamw_hf`): f32 moments; `adamw_8bit` (also `adamw_bnb_8bit`, and `paged_adamw_8bit`,
    /// whose paging is a CUDA-memory feature vlmtune does not need): bitsandbytes' blockwise
    /// 8-bit moments.
    #[serde(default = "d_optim")]
    pub optim: String,
    /// AdamW decoupled weight decay (not on biases and norms).
    #[serde(default)]
    pub weight_decay: f64,
    /// AdamW β₁.
    #[serde(default = "d_beta1")]
    pub adam_beta1: f64,
    /// AdamW β₂.
    #[serde(default = "d_beta2")]
    pub adam_beta2: f64,
    /// AdamW ε.
    #[serde(default = "d_eps")]
    pub adam_epsilon: f64,
    /// Clip the global gradient norm to this (0 disables).
    #[serde(default = "d_max_grad_norm")]
    pub max_grad_norm: f64,
    /// Log every this many optimizer steps.
    #[serde(default = "d_logging_steps")]
    pub logging_steps: usize,
    /// Save a checkpoint every this many steps (0 disables).
    #[serde(default = "d_save_steps")]
    pub save_steps: usize,
    /// Keep at most this many checkpoints (oldest deleted first).
    #[serde(default)]
    pub save_total_limit: Option<usize>,
    /// Evaluate every this many steps (none: only at the end, when an eval set exists).
    #[serde(default)]
    pub eval_steps: Option<usize>,
    /// Seed of initialisation, shuffling and dropout.
    #[serde(default = "d_seed")]
    pub seed: u64,
    /// Mixed precision as TRL's `bf16=True` (`torch.autocast`): every Linear product (the
    /// projections, LoRA, the dequantised QLoRA base, `lm_head`, the patch embedding) in bf16,
    /// with f32 weights, gradients and AdamW state; norms, attention, softmax and the loss in
    /// f32 ([`vlmtune_kernels::Autocast`]). Any backend; fast on CUDA.
    #[serde(default)]
    pub bf16: bool,
    /// Layer-wise activation checkpointing, as transformers does it: the forward keeps
    /// only each segment's input, the backward recomputes one segment at a time
    /// ([`vlmtune_model::recompute`]). Same results, less memory, more compute.
    #[serde(default)]
    pub gradient_checkpointing: bool,
    /// Layers per checkpointed segment (1: one input kept per layer, least memory; larger:
    /// fewer inputs kept, one bigger segment's activations alive at a time).
    #[serde(default = "d_checkpoint_every")]
    pub checkpoint_every: usize,
    /// Pick the largest `per_device_train_batch_size` whose estimated peak memory fits
    /// `max_memory`, raising `gradient_accumulation_steps` to keep the effective batch.
    #[serde(default)]
    pub auto_find_batch_size: bool,
    /// The memory budget of `auto_find_batch_size` for one rank (`"8GiB"`, `"512MiB"`;
    /// default: the machine's available memory, shared out among its data-parallel ranks).
    #[serde(default)]
    pub max_memory: Option<String>,
    /// A checkpoint folder to resume from, or `true`/`"latest"` for the newest in `output_dir`.
    #[serde(default)]
    pub resume_from_checkpoint: Option<String>,
    /// Stop (with a checkpoint of the last good weights) after this many optimizer steps in a
    /// row with a non-finite loss or gradient; such micro-batches are never applied (0: never
    /// stop).
    #[serde(default = "d_max_nonfinite")]
    pub max_nonfinite_steps: usize,
    /// Where metrics go besides `metrics.jsonl`: `["tensorboard"]` writes TensorBoard event
    /// files to `logging_dir` (TRL's name; `none` or empty: nowhere else).
    #[serde(default)]
    pub report_to: Vec<String>,
    /// TensorBoard's folder (default: `<output_dir>/runs`).
    #[serde(default)]
    pub logging_dir: Option<PathBuf>,
    /// Background data threads.
    #[serde(default = "d_workers")]
    pub dataloader_num_workers: usize,
    /// Reuse vision features across epochs when the vision tower is frozen.
    #[serde(default = "default_true")]
    pub cache_image_features: bool,
    /// Memory budget of that cache.
    #[serde(default = "d_cache_mb")]
    pub feature_cache_max_mb: usize,
    /// Show a progress bar.
    #[serde(default = "default_true")]
    pub progress_bar: bool,
}

fn default_true() -> bool {
    true
}

impl Default for TrainingArgs {
    fn default() -> Self {
        toml::from_str("").expect("defaults deserialize")
    }
}

impl TrainingArgs {
    /// Checks the settings; errors name the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, message: &str| {
            Err(TrainError::Config {
                field: field.into(),
                message: message.into(),
            })
        };
        if self.per_device_train_batch_size == 0 {
            return bad("per_device_train_batch_size", "must be positive");
        }
        if self.gradient_accumulation_steps == 0 {
            return bad("gradient_accumulation_steps", "must be positive");
        }
        if self.max_steps <= 0 && self.num_train_epochs <= 0.0 {
            return bad(
                "num_train_epochs",
                "must be positive when max_steps is not set",
            );
        }
        if !(self.learning_rate >= 0.0 && self.learning_rate.is_finite()) {
            return bad("learning_rate", "must be a non-negative number");
        }
        if !(0.0..=1.0).contains(&self.warmup_ratio) {
            return bad("warmup_ratio", "must be in [0, 1]");
        }
        if !(0.0..1.0).contains(&self.adam_beta1) || !(0.0..1.0).contains(&self.adam_beta2) {
            return bad("adam_beta1", "betas must be in [0, 1)");
        }
        if self.logging_steps == 0 {
            return bad("logging_steps", "must be positive");
        }
        if let Some(m) = &self.max_memory {
            crate::memory_plan::parse_memory(m)?;
        }
        if let Some(r) = self
            .report_to
            .iter()
            .find(|r| !matches!(r.as_str(), "none" | "tensorboard"))
        {
            return bad(
                "report_to",
                &format!("`{r}` is not supported (`tensorboard` or `none`)"),
            );
        }
        if !matches!(
            self.optim.as_str(),
            "adamw_torch"
                | "adamw_torch_fused"
                | "adamw_hf"
                | "adamw_8bit"
                | "adamw_bnb_8bit"
                | "paged_adamw_8bit"
        ) {
            return bad(
                "optim",
                &format!(
                    "`{}` is not supported (adamw_torch, adamw_8bit, paged_adamw_8bit)",
                    self.optim
                ),
            );
        }
        if self.checkpoint_every == 0 {
            return bad("checkpoint_every", "must be at least 1 layer");
        }
        Ok(())
    }

    /// The guard under which the products compute in bf16 (TRL's `bf16=True`), when `bf16`
    /// is set; hold it around every forward of training and evaluation.
    pub fn autocast(&self) -> Option<vlmtune_kernels::Autocast> {
        self.bf16.then(vlmtune_kernels::Autocast::bf16)
    }

    /// Settings that have no effect with the others as they are (logged as warnings at the
    /// start of training, so that nothing set is silently ignored).
    pub fn ineffective_settings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.max_memory.is_some() && !self.auto_find_batch_size {
            out.push("max_memory is only used by auto_find_batch_size = true".into());
        }
        if self.checkpoint_every != 1 && !self.gradient_checkpointing {
            out.push("checkpoint_every is only used by gradient_checkpointing = true".into());
        }
        if self.warmup_steps > 0 && self.warmup_ratio > 0.0 {
            out.push("warmup_ratio is ignored because warmup_steps is set".into());
        }
        if self.max_steps > 0 && self.num_train_epochs != 3.0 {
            out.push("num_train_epochs is ignored because max_steps is set".into());
        }
        out
    }

    /// Whether `optim` keeps 8-bit moments.
    pub fn uses_8bit_optimizer(&self) -> bool {
        matches!(
            self.optim.as_str(),
            "adamw_8bit" | "adamw_bnb_8bit" | "paged_adamw_8bit"
        )
    }

    /// Optimizer steps per epoch for `batches` micro-batches per epoch.
    pub fn steps_per_epoch(&self, batches: usize) -> usize {
        batches.div_ceil(self.gradient_accumulation_steps).max(1)
    }

    /// Total optimizer steps.
    pub fn total_steps(&self, batches_per_epoch: usize) -> usize {
        if self.max_steps > 0 {
            self.max_steps as usize
        } else {
            (self.num_train_epochs * self.steps_per_epoch(batches_per_epoch) as f64).ceil() as usize
        }
    }

    /// Warm-up steps: `warmup_steps`, else `ceil(warmup_ratio · total)`.
    pub fn warmup(&self, total_steps: usize) -> usize {
        if self.warmup_steps > 0 {
            self.warmup_steps
        } else {
            (self.warmup_ratio * total_steps as f64).ceil() as usize
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_step_counts() {
        let a = TrainingArgs::default();
        assert_eq!(a.learning_rate, 2e-5);
        assert_eq!(a.per_device_train_batch_size, 8);
        assert_eq!(a.lr_scheduler_type, SchedulerType::Linear);
        assert_eq!(a.max_grad_norm, 1.0);
        let a = TrainingArgs {
            gradient_accumulation_steps: 4,
            num_train_epochs: 1.5,
            warmup_ratio: 0.1,
            ..a
        };
        assert_eq!(a.steps_per_epoch(10), 3);
        assert_eq!(a.total_steps(10), 5);
        assert_eq!(a.warmup(5), 1);
        let a: TrainingArgs =
            toml::from_str("learning_rate = 0.001\nlr_scheduler_type = \"cosine\"").unwrap();
        assert_eq!(a.lr_scheduler_type, SchedulerType::Cosine);
        assert!(toml::from_str::<TrainingArgs>("lr_scheduler_type = \"weird\"").is_err());
    }

    #[test]
    fn settings_without_effect_are_reported() {
        assert!(TrainingArgs::default().ineffective_settings().is_empty());
        let a: TrainingArgs = toml::from_str(
            "max_memory = \"1GiB\"\ncheckpoint_every = 2\nmax_steps = 5\nnum_train_epochs = 1",
        )
        .unwrap();
        assert!(TrainingArgs {
            optim: "lion".into(),
            ..TrainingArgs::default()
        }
        .validate()
        .is_err());
        let warnings = a.ineffective_settings().join("\n");
        for field in ["max_memory", "checkpoint_every", "num_train_epochs"] {
            assert!(warnings.contains(field), "{warnings}");
        }
    }
}
