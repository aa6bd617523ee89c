//! TRL's DPO quickstart through the library (no job layer): a model and processor from a folder
//! or Hub id, preference pairs, `DpoTrainer` with the LoRA config passed once (TRL's
//! `peft_config=`; the reference is the model with the adapter disabled), `train()`, save.
//!
//! `cargo run --release --example dpo_trainer [MODEL] [PAIRS] [OUTPUT_DIR]`
//! (defaults: the tiny test model and pairs, offline)

// (Under `cfg(test)` this file is a module of tests/library_examples.rs, which has its own.)
#[cfg(not(test))]
vlmtune::use_retaining_allocator!();

use std::sync::Arc;

use vlmtune::backend::CpuBackend;
use vlmtune::data::{dataset, DatasetFormat, DatasetSource, OnBadExample, PreferenceCollator};
use vlmtune::data::{Processor, SftCollator};
use vlmtune::peft::{LoraConfig, LoraPreset};
use vlmtune::train::{DpoConfig, DpoTrainer, TrainingArgs};

/// Trains and saves; returns the loss of every step.
pub fn dpo(model: &str, data: &str, output_dir: &str) -> Result<Vec<f64>, vlmtune::Error> {
    let dir = vlmtune::model::resolve_model(model)?;
    let model = vlmtune::model::load_dir::<CpuBackend>(&dir, &Default::default())?;
    let processor = Processor::from_dir(&dir)?;
    let source = DatasetSource::parse(data)?;
    let pairs = dataset::load_preference(
        &source,
        &DatasetFormat::default(),
        "train",
        OnBadExample::Error,
    )?;
    let args = TrainingArgs {
        output_dir: output_dir.into(),
        max_steps: 4,
        per_device_train_batch_size: 2,
        learning_rate: 5e-4,
        ..TrainingArgs::default()
    };
    let peft_config = LoraConfig::new(8, 16.0, LoraPreset::AllLinear.target_modules());
    let collator = Arc::new(PreferenceCollator {
        sft: SftCollator::new(processor, Default::default()),
    });
    let mut trainer = DpoTrainer::new_with_peft(
        model,
        args,
        DpoConfig::default(),
        collator,
        pairs.examples,
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
    let losses = dpo(
        &arg(1, &format!("{fixtures}/tiny-smolvlm")),
        &arg(2, &format!("{fixtures}/dpo/data.jsonl")),
        &arg(3, "runs/dpo-trainer"),
    )?;
    println!("loss {:.3} -> {:.3}", losses[0], losses[losses.len() - 1]);
    Ok(())
}
