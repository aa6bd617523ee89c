//! `vlmtune selftest`: the fidelity checks on the chosen device (see `vlmtune::selftest`).

use std::path::PathBuf;

use burn::tensor::backend::AutodiffBackend;
use vlmtune::backend::BackendJob;
use vlmtune::selftest::Report;

/// Arguments of `vlmtune selftest`.
#[derive(clap::Args, Debug)]
pub struct SelftestArgs {
    /// The repository's fixtures folder.
    #[arg(long, default_value = "tests/fixtures")]
    pub fixtures: PathBuf,
    /// Also write the report as JSON here.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// bf16 products with f32 weights (TRL's `bf16=True`), with bf16's looser tolerances.
    #[arg(long)]
    pub bf16: bool,
    /// Then run the SmolVLM-256M benchmarks on the device (forward, LoRA SFT step, DPO step
    /// of 8 pairs, 17-tile SFT step; f32 and NF4, or bf16).
    #[arg(long)]
    pub bench: bool,
    /// Only these benchmark cases (comma-separated).
    #[arg(long, value_delimiter = ',', value_parser = clap::builder::PossibleValuesParser::new(vlmtune::selftest::bench::CASES))]
    pub bench_cases: Vec<String>,
}

/// The checks on a backend.
pub struct SelftestJob {
    /// The fixtures folder.
    pub fixtures: PathBuf,
    /// Precision and benchmarks.
    pub options: vlmtune::selftest::Options,
}

impl BackendJob for SelftestJob {
    type Output = anyhow::Result<Report>;

    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        Ok(vlmtune::selftest::run::<B>(
            &self.fixtures,
            &self.options,
            device,
        )?)
    }
}

impl SelftestArgs {
    /// Prints the report, writes it as JSON when asked, and fails when a check failed.
    pub fn finish(&self, report: &Report) -> anyhow::Result<()> {
        println!("{report}");
        if let Some(path) = &self.report {
            let json = serde_json::to_string_pretty(report)?;
            std::fs::write(path, json).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        }
        anyhow::ensure!(report.passed(), "selftest failed");
        Ok(())
    }
}
