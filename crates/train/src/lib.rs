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
pub mod error;
pub mod eval;
pub mod feature_cache;
pub mod metrics;
pub mod optim;
pub mod schedule;
pub mod sft;

pub use args::{SchedulerType, TrainingArgs};
pub use error::{Result, TrainError};
pub use eval::relaxed_correct;
pub use sft::{evaluate, Answer, EvalResult, SftTrainer};
