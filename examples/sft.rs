//! Supervised fine-tuning through the library API: the built-in tiny model with a LoRA
//! adapter on synthetic charts, a few steps, then a generated answer.
//!
//! `cargo run --release --example sft`

vlmtune::use_retaining_allocator!();

use vlmtune::backend::CpuBackend;
use vlmtune::jobs::sft::{run_sft, LoraSection, SftJobConfig};
use vlmtune::peft::LoraPreset;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = SftJobConfig::builtin();
    config.training.output_dir = "runs/example-sft".into();
    config.training.max_steps = 30;
    config.training.logging_steps = 10;
    config.training.eval_steps = None;
    config.dataset.num_train = 300;
    config.dataset.num_eval = 20;
    config.lora = Some(LoraSection {
        preset: Some(LoraPreset::AllLinear),
        config: LoraPreset::AllLinear.config(8, 16.0),
        ..LoraSection::default()
    });
    let report = run_sft::<CpuBackend>(&config, Default::default())?;
    println!("{}", report.trainable);
    println!(
        "loss {:.3} -> {:.3}",
        report.losses[0],
        report.losses.last().unwrap_or(&f64::NAN)
    );
    println!("adapter saved to {}", report.saved_to.display());
    Ok(())
}
