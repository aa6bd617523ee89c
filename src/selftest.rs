//! `vlmtune selftest`: the fidelity checks of the test suite, run by the binary on any backend
//! against the committed fixtures (`tests/fixtures/`), so a machine with no Rust toolchain (the
//! GPU machine) can prove its device path: forward logits of both tiny checkpoints
//! (transformers), NF4 + double quantisation and FP4 logits (transformers + bitsandbytes), one
//! LoRA SFT step (TRL, batch 2 and batch 1 x accumulation 2) and one DPO step (TRL, sigmoid).
//! Each check is an error measured against its tolerance: the CPU test suite's in f32, looser
//! stated ones in bf16 ([`Tolerances`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;
use serde::Serialize;
use vlmtune_data::dataset::jsonl;
use vlmtune_data::{CollatorConfig, DatasetFormat, PreferenceCollator, Processor, SftCollator};
use vlmtune_model::{load_dir_with, LoadOptions, PixelBatch, TokenBatch};
use vlmtune_quant::{QuantConfig, SafetensorsFiles};
use vlmtune_train::{DpoConfig, DpoTrainer, SftTrainer, TrainingArgs};

use crate::error::{Error, Result};

/// How far a device may be from the references.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Tolerances {
    /// Max abs error of logits.
    pub logits: f64,
    /// Relative error of a loss or gradient norm.
    pub loss: f64,
    /// Max error of updated weights relative to their largest magnitude.
    pub weights: f64,
}

impl Tolerances {
    /// f32: the CPU test suite's tolerances. bf16 (8 bits of mantissa): logits 2e-2 abs, losses
    /// 1e-2 relative, updated weights 5e-2 of their scale (Adam's first step is +-lr wherever a
    /// gradient's sign survives the rounding).
    pub fn for_bf16(bf16: bool) -> Self {
        if bf16 {
            Self {
                logits: 2e-2,
                loss: 1e-2,
                weights: 5e-2,
            }
        } else {
            Self {
                logits: 1e-4,
                loss: 1e-5,
                weights: 1e-5,
            }
        }
    }
}

/// One measured check.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// What was compared, e.g. `forward/smolvlm logits`.
    pub name: String,
    /// The error measured.
    pub error: f64,
    /// The largest error allowed.
    pub tolerance: f64,
    /// `error <= tolerance` (and finite).
    pub passed: bool,
}

impl Check {
    fn new(name: impl Into<String>, error: f64, tolerance: f64) -> Self {
        Self {
            name: name.into(),
            error,
            tolerance,
            passed: error.is_finite() && error <= tolerance,
        }
    }
}

/// Everything [`run`] measured.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The backend and device, as burn names them.
    pub device: String,
    /// Whether the checks ran in bf16.
    pub bf16: bool,
    /// The tolerances applied.
    pub tolerances: Tolerances,
    /// The checks, in order.
    pub checks: Vec<Check>,
}

impl Report {
    /// Whether every check passed.
    pub fn passed(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(|c| c.passed)
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "selftest on {} ({})",
            self.device,
            if self.bf16 { "bf16" } else { "f32" }
        )?;
        for c in &self.checks {
            writeln!(
                f,
                "{} {}: error {:.3e} (tolerance {:.0e})",
                if c.passed { "ok  " } else { "FAIL" },
                c.name,
                c.error,
                c.tolerance
            )?;
        }
        let failed = self.checks.iter().filter(|c| !c.passed).count();
        write!(f, "{} checks, {failed} failed", self.checks.len())
    }
}

/// A fixture file of `fixtures`.
struct Fixture(SafetensorsFiles);

impl Fixture {
    fn open(fixtures: &Path, rel: &str) -> Result<Self> {
        Ok(Self(SafetensorsFiles::open(&[fixtures.join(rel)])?))
    }

    fn f32(&self, key: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        Ok(self.0.read_f32(key)?)
    }

    fn i64(&self, key: &str) -> Result<(Vec<i64>, Vec<usize>)> {
        Ok(self.0.read_i64(key)?)
    }
}

fn json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
}

fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Result<Vec<f32>> {
    t.into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .map_err(|e| Error::Config(format!("reading a tensor back: {e:?}")))
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    a.iter()
        .zip(b)
        .map(|(x, y)| f64::from((x - y).abs()))
        .fold(0.0, f64::max)
}

fn relative(got: f64, want: f64) -> f64 {
    (got - want).abs() / want.abs().max(1e-12)
}

/// The fixtures' padded multi-tile batch of `kind` (`model/<kind>.safetensors`).
fn model_batch(fx: &Fixture) -> Result<(TokenBatch, PixelBatch)> {
    let (ids, shape) = fx.i64("batch_input_ids")?;
    let (mask, _) = fx.i64("batch_attention_mask")?;
    let (pixels, pshape) = fx.f32("batch_pixel_values")?;
    let (pmask, _) = fx.i64("batch_pixel_attention_mask")?;
    let shape5: [usize; 5] = pshape
        .try_into()
        .map_err(|_| Error::Config("batch_pixel_values is not 5-d".into()))?;
    Ok((
        TokenBatch {
            input_ids: ids.iter().map(|i| *i as u32).collect(),
            attention_mask: mask.iter().map(|m| *m as u8).collect(),
            batch_size: shape[0],
            seq_len: shape[1],
        },
        PixelBatch {
            pixel_values: pixels,
            shape: shape5,
            pixel_attention_mask: Some(pmask.iter().map(|m| *m as u8).collect()),
        },
    ))
}

/// Max abs logit error over the attended positions.
fn masked_logits_error(got: &[f32], want: &[f32], mask: &[u8]) -> f64 {
    if got.len() != want.len() || mask.is_empty() {
        return f64::INFINITY;
    }
    let vocab = want.len() / mask.len();
    mask.iter()
        .enumerate()
        .filter(|(_, m)| **m == 1)
        .map(|(p, _)| {
            let r = p * vocab..(p + 1) * vocab;
            max_abs_diff(&got[r.clone()], &want[r])
        })
        .fold(0.0, f64::max)
}

/// Logits of `tiny-<kind>` (stored as `quant`) on the fixture batch against `want_key` of
/// `want_file`.
fn logits_check<B: Backend>(
    fixtures: &Path,
    kind: &str,
    quant: Option<QuantConfig>,
    want: (&str, &str),
    name: &str,
    tolerance: f64,
    device: &B::Device,
) -> Result<Check> {
    let batch_fixture = Fixture::open(fixtures, &format!("model/{kind}.safetensors"))?;
    let (tokens, pixels) = model_batch(&batch_fixture)?;
    let options = LoadOptions { quant };
    let model = load_dir_with::<B>(&fixtures.join(format!("tiny-{kind}")), &options, device)?;
    let logits = host(model.forward(&tokens, Some(&pixels))?)?;
    let (reference, _) = Fixture::open(fixtures, want.0)?.f32(want.1)?;
    Ok(Check::new(
        name,
        masked_logits_error(&logits, &reference, &tokens.attention_mask),
        tolerance,
    ))
}

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
fn weights_error(
    tensors: &[vlmtune_quant::NamedTensor],
    reference: &Fixture,
    initial: &Fixture,
    name: &str,
) -> Result<f64> {
    let mut worst = 0.0f64;
    for t in tensors {
        let (want, _) = reference.f32(&format!("{name}.{}", t.name))?;
        let (before, _) = initial.f32(&t.name)?;
        if want.len() != t.values.len() {
            return Ok(f64::INFINITY);
        }
        let scale = f64::from(want.iter().fold(0.0f32, |m, v| m.max(v.abs()))).max(1e-12);
        for ((ours, theirs), w0) in t.values.iter().zip(&want).zip(&before) {
            if (theirs - w0).abs() >= 0.99e-2 {
                worst = worst.max(f64::from((ours - theirs).abs()) / scale);
            }
        }
    }
    Ok(worst)
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

fn sft_checks<AB: AutodiffBackend>(
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
        checks.push(Check::new(
            format!("sft_step/{name} updated LoRA weights (TRL)"),
            weights_error(&tensors, &reference, &initial, name)?,
            tol.weights,
        ));
    }
    Ok(checks)
}

fn dpo_checks<AB: AutodiffBackend>(
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
    checks.push(Check::new(
        format!("dpo_step/{name} updated LoRA weights (TRL)"),
        weights_error(&tensors, &reference, &initial, name)?,
        tol.weights,
    ));
    Ok(checks)
}

/// Runs every check on backend `AB` and `device` against `fixtures` (the repository's
/// `tests/fixtures`), with the tolerances of `bf16` or f32 compute.
pub fn run<AB: AutodiffBackend>(fixtures: &Path, bf16: bool, device: AB::Device) -> Result<Report> {
    if !fixtures.join("tiny-smolvlm").is_dir() {
        return Err(Error::Config(format!(
            "{}: not the fixtures folder (tests/fixtures of the repository)",
            fixtures.display()
        )));
    }
    let tol = Tolerances::for_bf16(bf16);
    let mut checks = Vec::new();
    for kind in ["smolvlm", "idefics3"] {
        checks.push(logits_check::<AB::InnerBackend>(
            fixtures,
            kind,
            None,
            (&format!("model/{kind}.safetensors"), "batch_logits"),
            &format!("forward/{kind} logits (transformers)"),
            tol.logits,
            &device,
        )?);
    }
    for (case, quant) in [
        ("nf4_dq", QuantConfig::nf4()),
        (
            "fp4",
            QuantConfig {
                load_in_4bit: true,
                ..QuantConfig::default()
            },
        ),
    ] {
        checks.push(logits_check::<AB::InnerBackend>(
            fixtures,
            "smolvlm",
            Some(quant),
            ("quant/model-4bit.safetensors", &format!("{case}.logits")),
            &format!("quant/{case} logits (transformers + bitsandbytes)"),
            tol.logits,
            &device,
        )?);
    }
    checks.extend(sft_checks::<AB>(fixtures, tol, &device)?);
    checks.extend(dpo_checks::<AB>(fixtures, tol, &device)?);
    Ok(Report {
        device: format!("{} {device:?}", AB::name(&device)),
        bf16,
        tolerances: tol,
        checks,
    })
}

/// The fixtures folder of this repository (`tests/fixtures` from the working directory).
pub fn default_fixtures() -> PathBuf {
    PathBuf::from("tests/fixtures")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checks pass on the CPU with the test suite's tolerances (what `vlmtune selftest`
    /// runs on the GPU machine), and a broken reference fails them.
    #[test]
    fn every_check_passes_on_the_cpu() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let report =
            run::<crate::backend::CpuBackend>(&fixtures, false, Default::default()).unwrap();
        assert!(report.checks.len() >= 15, "{report}");
        assert!(report.passed(), "{report}");
        let failing = Check::new("x", 2e-4, Tolerances::for_bf16(false).logits);
        assert!(!failing.passed);
        assert!(!Check::new("nan", f64::NAN, 1.0).passed);
    }
}
