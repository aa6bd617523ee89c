//! # vlmtune-train
//!
//! Training loops with TRL's vocabulary:
//!
//! * [`TrainingArgs`]: `SFTConfig` / `TrainingArguments` field names and defaults.
//! * [`SftTrainer`]: supervised fine-tuning with gradient accumulation normalised over all
//!   completion tokens, AdamW ([`optim`]), schedules ([`schedule`]), clipping, metrics,
//!   atomic checkpoints with exact resume ([`checkpoint`]), and evaluation by loss and
//!   ChartQA-style relaxed accuracy ([`eval`]).

pub mod args;
pub mod checkpoint;
pub mod curves;
pub mod distributed;
pub mod dpo;
pub mod error;
pub mod eval;
pub mod feature_cache;
pub mod interrupt;
pub mod memory_plan;
pub mod metrics;
pub mod oom_retry;
pub mod optim;
pub mod optim8bit;
pub mod schedule;
pub mod sft;
pub mod tensorboard;
pub mod trainer;

pub use args::{SchedulerType, TrainingArgs};
pub use distributed::{Collective, DistributedConfig, SingleProcess};
pub use dpo::{DpoConfig, DpoLossType, DpoObjective, DpoTrainer, ReferenceSource};
pub use error::{Result, TrainError};
pub use eval::relaxed_correct;
pub use sft::{evaluate, Answer, EvalResult, SftObjective, SftTrainer};
pub use trainer::{Accumulation, Objective, ObjectiveOutput, Trainer};
