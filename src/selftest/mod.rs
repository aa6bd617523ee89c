//! `vlmtune selftest`: the fidelity checks of the test suite, run by the binary on any backend
//! against the committed fixtures (`tests/fixtures/`), so a machine with no Rust toolchain (the
//! GPU machine) can prove its device path:
//! * forward logits of both tiny checkpoints (transformers), NF4 + double quantisation and FP4
//!   logits (transformers + bitsandbytes) ([`forward`]);
//! * PEFT adapters (LoRA + modules_to_save, DoRA, rsLoRA, layers_to_transform) and QLoRA
//!   (LoRA / DoRA on NF4 + DQ): logits, loss and adapter gradients against PEFT; the device's
//!   NF4 / FP4 / int8 dequantisation against bitsandbytes ([`adapters`]);
//! * one LoRA SFT step (TRL, batch 2 and batch 1 x accumulation 2) and one DPO step (TRL,
//!   sigmoid) ([`steps`]);
//! * with `--bench`, the SmolVLM-256M benchmarks on the device ([`bench`]).
//!
//! Each check is an error measured against its tolerance: the CPU test suite's in f32, looser
//! stated ones in bf16 ([`Tolerances`]).

pub mod adapters;
pub mod bench;
pub mod fixtures;
pub mod forward;
pub mod steps;

use std::path::{Path, PathBuf};

use burn::tensor::backend::AutodiffBackend;
use serde::Serialize;

pub use bench::Benchmark;
pub use steps::one_step_args;

use crate::error::{Error, Result};

/// How far a device may be from the references.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Tolerances {
    /// Max abs error of logits.
    pub logits: f64,
    /// Relative error of a loss or gradient norm.
    pub loss: f64,
    /// Relative L2 error (`‖g - g_ref‖ / ‖g_ref‖`) of an adapter gradient tensor.
    pub grads: f64,
    /// Max error of dequantised weights relative to their largest magnitude.
    pub dequant: f64,
    /// Max error of updated weights relative to their largest magnitude (f32).
    pub weights: f64,
    /// bf16: instead of `weights`, the largest share of the reference's full Adam steps that
    /// may go the other way (a gradient near zero changes sign under bf16 rounding, and
    /// Adam's first step is +-lr whatever the gradient's size).
    pub flipped_steps: Option<f64>,
}

impl Tolerances {
    /// f32: the CPU test suite's tolerances. bf16 (8 bits of mantissa): logits 0.25 abs (2% of
    /// the largest logit of these checkpoints, 12.9; PyTorch's own bf16 autocast is 0.11-0.14
    /// from its f32 logits there, vlmtune's bf16 0.09-0.17 on the CPU), losses
    /// 1e-2 relative, gradients 5e-2 relative L2, dequantised weights 4e-3 of their scale (one
    /// bf16 rounding), updated weights: at most 2% of Adam's first steps in the other
    /// direction (TRL's own bf16 step has 0.4% against its f32 one, and a largest error of
    /// 8.5e-2 of the weights' scale, 2 lr where a step flips).
    pub fn for_bf16(bf16: bool) -> Self {
        if bf16 {
            Self {
                logits: 0.25,
                loss: 1e-2,
                grads: 5e-2,
                dequant: 4e-3,
                weights: f64::NAN,
                flipped_steps: Some(2e-2),
            }
        } else {
            Self {
                logits: 1e-4,
                loss: 1e-5,
                grads: 1e-5,
                dequant: 1e-6,
                weights: 1e-5,
                flipped_steps: None,
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

/// What [`run`] does besides the fidelity checks.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Whether the products compute in bf16 (autocast; the looser tolerances apply).
    pub bf16: bool,
    /// Also run the SmolVLM-256M benchmarks ([`bench`]).
    pub bench: bool,
    /// The benchmark cases to run (all of [`bench::CASES`] when empty).
    pub bench_cases: Vec<String>,
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
    /// The benchmarks, when asked for.
    pub benchmarks: Vec<Benchmark>,
}

impl Report {
    /// Whether every check passed and every benchmark ran.
    pub fn passed(&self) -> bool {
        !self.checks.is_empty()
            && self.checks.iter().all(|c| c.passed)
            && self.benchmarks.iter().all(|b| b.error.is_none())
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
        for b in &self.benchmarks {
            writeln!(f, "{b}")?;
        }
        let failed = self.checks.iter().filter(|c| !c.passed).count();
        let bench_failed = self.benchmarks.iter().filter(|b| b.error.is_some()).count();
        write!(f, "{} checks, {failed} failed", self.checks.len())?;
        if !self.benchmarks.is_empty() {
            write!(
                f,
                "; {} benchmarks, {bench_failed} failed",
                self.benchmarks.len()
            )?;
        }
        Ok(())
    }
}

/// Runs every check on backend `AB` and `device` against `fixtures` (the repository's
/// `tests/fixtures`), with the tolerances of bf16 or f32 compute, then the benchmarks when
/// `options` asks for them.
pub fn run<AB: AutodiffBackend>(
    fixtures: &Path,
    options: &Options,
    device: AB::Device,
) -> Result<Report> {
    if !fixtures.join("tiny-smolvlm").is_dir() {
        return Err(Error::Config(format!(
            "{}: not the fixtures folder (tests/fixtures of the repository)",
            fixtures.display()
        )));
    }
    let tol = Tolerances::for_bf16(options.bf16);
    // bf16 as TRL's `bf16=True`: f32 weights, the products in bf16.
    let _autocast = options.bf16.then(vlmtune_kernels::Autocast::bf16);
    let mut checks = forward::checks::<AB::InnerBackend>(fixtures, tol, &device)?;
    checks.extend(adapters::dequantisation_checks::<AB::InnerBackend>(
        fixtures, tol, &device,
    )?);
    checks.extend(adapters::checks::<AB>(fixtures, tol, &device)?);
    checks.extend(steps::sft_checks::<AB>(fixtures, tol, &device)?);
    checks.extend(steps::dpo_checks::<AB>(fixtures, tol, &device)?);
    let benchmarks = if options.bench {
        bench::run_all::<AB>(fixtures, options.bf16, &options.bench_cases, &device)
    } else {
        Vec::new()
    };
    Ok(Report {
        device: format!("{} {device:?}", AB::name(&device)),
        bf16: options.bf16,
        tolerances: tol,
        checks,
        benchmarks,
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
            run::<crate::backend::CpuBackend>(&fixtures, &Options::default(), Default::default())
                .unwrap();
        assert!(report.checks.len() >= 15 + 5 + 18, "{report}");
        assert!(report.passed(), "{report}");
        let failing = Check::new("x", 2e-4, Tolerances::for_bf16(false).logits);
        assert!(!failing.passed);
        assert!(!Check::new("nan", f64::NAN, 1.0).passed);
    }

    /// In bf16 (autocast on the CPU) the same checks pass bf16's stated tolerances, so the GPU
    /// run's `--bf16` checks are not the first to see them.
    #[test]
    fn every_check_passes_in_bf16_on_the_cpu() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let options = Options {
            bf16: true,
            ..Options::default()
        };
        let report =
            run::<crate::backend::CpuBackend>(&fixtures, &options, Default::default()).unwrap();
        assert!(report.bf16);
        assert!(report.passed(), "{report}");
    }
}
