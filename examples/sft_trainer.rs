//! TRL's SFT quickstart through the library (no job layer): a model and processor from a folder
//! or Hub id, a dataset, `SftTrainer` with the LoRA config passed once (TRL's `peft_config=`),
//! `train()`, save (a PEFT adapter).
//!
//! `cargo run --release --example sft_trainer [MODEL] [DATASET] [OUTPUT_DIR]`
//! (defaults: the tiny test model and data, offline)

// (Under `cfg(test)` this file is a module of tests/library_examples.rs, which has its own.)
#[cfg(not(test))]
vlmtune::use_retaining_allocator!();

use std::sync::Arc;

use vlmtune::backend::CpuBackend;
use vlmtune::data::{dataset, DatasetFormat, DatasetSource, OnBadExample, Processor, SftCollator};
use vlmtune::peft::{LoraConfig, LoraPreset};
use vlmtune::train::{SftTrainer, TrainingArgs};

/// Trains and saves; returns the loss of every step.
pub fn sft(model: &str, data: &str, output_dir: &str) -> Result<Vec<f64>, vlmtune::Error> {
    let dir = vlmtune::model::resolve_model(model)?;
    let model = vlmtune::model::load_dir::<CpuBackend>(&dir, &Default::default())?;
    let processor = Processor::from_dir(&dir)?;
    let source = DatasetSource::parse(data)?;
    let train = dataset::load_sft(
        &source,
        &DatasetFormat::default(),
        "train",
        OnBadExample::Error,
    )?;
    let args = TrainingArgs {
        output_dir: output_dir.into(),
        max_steps: 6,
        per_device_train_batch_size: 1,
        learning_rate: 2e-4,
        ..TrainingArgs::default()
    };
    let peft_config = LoraConfig::new(8, 16.0, LoraPreset::TextAttention.target_modules());
    let collator = Arc::new(SftCollator::new(processor, Default::default()));
    let mut trainer = SftTrainer::new_with_peft(
        model,
        args,
        collator,
        train.examples,
        peft_config,
        Default::default(),
    )?;
    let losses = trainer.train()?;
    trainer.save_model(&std::path::Path::new(output_dir).join("final"))?;
    Ok(losses)
}

#[allow(dead_code)]
fn main() -> Result<(), vlmtune::Error> {
    let arg = |i: usize, default: &str| std::env::args().nth(i).unwrap_or(default.into());
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let losses = sft(
        &arg(1, &format!("{fixtures}/tiny-smolvlm")),
        &arg(2, &format!("{fixtures}/sft/data.jsonl")),
        &arg(3, "runs/sft-trainer"),
    )?;
    println!("loss {:.3} -> {:.3}", losses[0], losses[losses.len() - 1]);
    Ok(())
}
