//! One LoRA SFT step (TRL, batch 2 and batch 1 x accumulation 2) and one DPO step (TRL,
//! sigmoid) from the fixtures' initial adapter: losses, gradient norms, metrics and the updated
//! adapter weights.

use std::path::Path;
use std::sync::Arc;

use burn::tensor::backend::AutodiffBackend;
use vlmtune_data::dataset::jsonl;
use vlmtune_data::{CollatorConfig, DatasetFormat, PreferenceCollator, Processor, SftCollator};
use vlmtune_model::{load_dir_with, LoadOptions};
use vlmtune_train::{DpoConfig, DpoTrainer, SftTrainer, TrainingArgs};

use super::fixtures::{json, relative, Fixture};
use super::{Check, Tolerances};
use crate::error::{Error, Result};

/// The training arguments of the one-step parity fixtures (`sft_fixtures.py`,
/// `dpo_fixtures.py`): one step at learning rate 1e-2, logging every step, no saving.
pub fn one_step_args(batch: usize, accumulation: usize, dir: &Path) -> TrainingArgs {
    TrainingArgs {
        output_dir: dir.to_path_buf(),
        per_device_train_batch_size: batch,
        gradient_accumulation_steps: accumulation,
        max_steps: 1,
        learning_rate: 1e-2,
        logging_steps: 1,
        save_steps: 0,
        progress_bar: false,
        seed: 0,
        ..TrainingArgs::default()
    }
}

/// Updated adapter weights against `reference` (prefix `name.`), relative to each tensor's
/// largest magnitude; elements whose reference step is below 0.99 lr (Adam's ill-conditioned
/// first step, where a gradient is about eps) are left out, as the test suite does.
pub fn weights_error(
    tensors: &[vlmtune_quant::NamedTensor],
    reference: &Fixture,
    initial: &Fixture,
    name: &str,
) -> Result<f64> {
    let mut worst = 0.0f64;
    for_full_steps(
        tensors,
        reference,
        initial,
        name,
        |ours, theirs, _, scale| {
            worst = worst.max(f64::from((ours - theirs).abs()) / scale);
        },
    )?;
    Ok(worst)
}

/// The share of the reference's full steps (at least 0.99 lr) that ours took in the other
/// direction: what bf16 rounding changes in Adam's first step (+-lr whatever the gradient).
pub fn flipped_steps(
    tensors: &[vlmtune_quant::NamedTensor],
    reference: &Fixture,
    initial: &Fixture,
    name: &str,
) -> Result<f64> {
    let (mut flipped, mut steps) = (0usize, 0usize);
    for_full_steps(
        tensors,
        reference,
        initial,
        name,
        |ours, theirs, before, _| {
            steps += 1;
            flipped += usize::from((ours - before).signum() != (theirs - before).signum());
        },
    )?;
    Ok(if steps == 0 {
        f64::INFINITY
    } else {
        flipped as f64 / steps as f64
    })
}

/// The updated-weights check of the tolerances: the largest error (f32) or the share of
/// flipped steps (bf16).
fn updated_weights_check(
    label: String,
    tensors: &[vlmtune_quant::NamedTensor],
    (reference, initial, name): (&Fixture, &Fixture, &str),
    tol: Tolerances,
) -> Result<Check> {
    Ok(match tol.flipped_steps {
        Some(share) => Check::new(
            format!("{label}: share of steps flipped"),
            flipped_steps(tensors, reference, initial, name)?,
            share,
        ),
        None => Check::new(
            label,
            weights_error(tensors, reference, initial, name)?,
            tol.weights,
        ),
    })
}

/// Calls `visit(ours, theirs, before, scale)` for every element the reference moved by a
/// full Adam step; a tensor of another length is an error.
fn for_full_steps(
    tensors: &[vlmtune_quant::NamedTensor],
    reference: &Fixture,
    initial: &Fixture,
    name: &str,
    mut visit: impl FnMut(f32, f32, f32, f64),
) -> Result<()> {
    for t in tensors {
        let (want, _) = reference.f32(&format!("{name}.{}", t.name))?;
        let (before, _) = initial.f32(&t.name)?;
        if want.len() != t.values.len() || before.len() != t.values.len() {
            return Err(Error::Config(format!(
                "{}: {} values, the reference has {}",
                t.name,
                t.values.len(),
                want.len()
            )));
        }
        let scale = f64::from(want.iter().fold(0.0f32, |m, v| m.max(v.abs()))).max(1e-12);
        for ((ours, theirs), w0) in t.values.iter().zip(&want).zip(&before) {
            if (theirs - w0).abs() >= 0.99e-2 {
                visit(*ours, *theirs, *w0, scale);
            }
        }
    }
    Ok(())
}

fn model_with_initial_adapter<AB: AutodiffBackend>(
    fixtures: &Path,
    device: &AB::Device,
) -> Result<(vlmtune_model::SmolVlm<AB>, vlmtune_peft::LoraConfig)> {
    let mut model = load_dir_with::<AB>(
        &fixtures.join("tiny-smolvlm"),
        &LoadOptions::default(),
        device,
    )?;
    let config =
        vlmtune_peft::load_adapter(&mut model, &fixtures.join("sft/initial-adapter"), "default")?;
    Ok((model, config))
}

/// The adapter both step fixtures start from.
fn initial_adapter(fixtures: &Path) -> Result<Fixture> {
    Fixture::open(fixtures, "sft/initial-adapter/adapter_model.safetensors")
}

/// The tiny checkpoint's collator with the default settings (what the fixtures used).
fn sft_collator(fixtures: &Path) -> Result<SftCollator> {
    let processor = Processor::from_dir(&fixtures.join("tiny-smolvlm"))?;
    Ok(SftCollator::new(processor, CollatorConfig::default()))
}

pub fn sft_checks<AB: AutodiffBackend>(
    fixtures: &Path,
    tol: Tolerances,
    device: &AB::Device,
) -> Result<Vec<Check>> {
    let want = json(&fixtures.join("sft/trl_step.json"))?;
    let reference = Fixture::open(fixtures, "sft/trl_step.safetensors")?;
    let initial = initial_adapter(fixtures)?;
    let collator = Arc::new(sft_collator(fixtures)?);
    let examples = jsonl::load_sft(&fixtures.join("sft/data.jsonl"), &DatasetFormat::default())?;
    let mut checks = Vec::new();
    for (name, batch, accumulation) in [("batch2", 2, 1), ("accum2", 1, 2)] {
        let dir = tempfile::tempdir().map_err(|e| Error::Config(format!("temp folder: {e}")))?;
        let (model, lora) = model_with_initial_adapter::<AB>(fixtures, device)?;
        let mut trainer = SftTrainer::new(
            model,
            one_step_args(batch, accumulation, dir.path()),
            collator.clone(),
            examples[..2].to_vec(),
            device.clone(),
        )?
        .with_adapter(lora);
        let losses = trainer.train()?;
        let log = &trainer.state.log_history[0];
        let trl = &want[name];
        let value = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::NAN);
        checks.push(Check::new(
            format!("sft_step/{name} loss (TRL)"),
            relative(losses[0], value(&trl["loss"])),
            tol.loss,
        ));
        checks.push(Check::new(
            format!("sft_step/{name} grad_norm (TRL)"),
            relative(value(&log["grad_norm"]), value(&trl["grad_norm"])),
            tol.loss,
        ));
        let tensors = vlmtune_peft::io::adapter_tensors(&trainer.model, "default");
        checks.push(updated_weights_check(
            format!("sft_step/{name} updated LoRA weights (TRL)"),
            &tensors,
            (&reference, &initial, name),
            tol,
        )?);
    }
    Ok(checks)
}

pub fn dpo_checks<AB: AutodiffBackend>(
    fixtures: &Path,
    tol: Tolerances,
    device: &AB::Device,
) -> Result<Vec<Check>> {
    let name = "sigmoid";
    let trl = json(&fixtures.join("dpo/trl.json"))?;
    let entry = &trl[name];
    let reference = Fixture::open(fixtures, "dpo/trl_step.safetensors")?;
    let initial = initial_adapter(fixtures)?;
    let collator = Arc::new(PreferenceCollator {
        sft: sft_collator(fixtures)?,
    });
    let pairs =
        jsonl::load_preference(&fixtures.join("dpo/data.jsonl"), &DatasetFormat::default())?;
    let dir = tempfile::tempdir().map_err(|e| Error::Config(format!("temp folder: {e}")))?;
    let (model, lora) = model_with_initial_adapter::<AB>(fixtures, device)?;
    let config = DpoConfig {
        beta: entry["beta"].as_f64().unwrap_or(0.1),
        loss_type: serde_json::from_value(entry["loss_type"].clone())
            .map_err(|e| Error::Config(format!("dpo/trl.json: {e}")))?,
        ..DpoConfig::default()
    };
    let mut trainer = DpoTrainer::new(
        model,
        one_step_args(2, 1, dir.path()),
        config,
        collator,
        pairs,
        device.clone(),
    )?
    .with_adapter(lora);
    trainer.train()?;
    let log = &trainer.state.log_history[0];
    let mut checks = Vec::new();
    for metric in ["loss", "grad_norm", "rewards/margins", "logps/chosen"] {
        let (got, want) = (
            log[metric].as_f64().unwrap_or(f64::NAN),
            entry[metric].as_f64().unwrap_or(f64::NAN),
        );
        checks.push(Check::new(
            format!("dpo_step/{name} {metric} (TRL)"),
            (got - want).abs() / want.abs().max(1.0),
            tol.loss,
        ));
    }
    let tensors = vlmtune_peft::io::adapter_tensors(&trainer.model, "default");
    checks.push(updated_weights_check(
        format!("dpo_step/{name} updated LoRA weights (TRL)"),
        &tensors,
        (&reference, &initial, name),
        tol,
    )?);
    Ok(checks)
}
