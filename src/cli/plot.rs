//! `vlmtune plot`: draws a run's `curves.png` from its `metrics.jsonl`, during or after
//! training.

use std::path::PathBuf;

/// Arguments of `vlmtune plot`.
#[derive(clap::Args, Debug)]
pub struct PlotArgs {
    /// The run's output folder (with `metrics.jsonl`).
    pub run_dir: PathBuf,
    /// The PNG to write (default: `RUN_DIR/curves.png`).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

impl PlotArgs {
    /// Draws the curves; returns where.
    pub fn run(&self) -> anyhow::Result<PathBuf> {
        let out = self
            .out
            .clone()
            .unwrap_or_else(|| self.run_dir.join("curves.png"));
        vlmtune::train::curves::draw(&self.run_dir.join("metrics.jsonl"), &out)?;
        Ok(out)
    }
}
