//! Training logs: `metrics.jsonl` (one JSON record per log step, TRL's metric names) and a
//! progress bar on stderr.

use std::io::Write;
use std::path::Path;

use indicatif::{ProgressBar, ProgressStyle};

use crate::error::{Result, TrainError};

/// Writes metric records and drives the progress bar.
pub struct MetricsLog {
    file: Option<std::fs::File>,
    bar: Option<ProgressBar>,
}

impl MetricsLog {
    /// Appends to `dir/metrics.jsonl`; shows a bar of `total` steps when `progress`.
    pub fn open(dir: &Path, total: usize, start: usize, progress: bool) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|source| TrainError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join("metrics.jsonl");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|source| TrainError::Io { path, source })?;
        let bar = progress.then(|| {
            let bar = ProgressBar::new(total as u64).with_position(start as u64);
            bar.set_style(
                ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar
        });
        Ok(Self {
            file: Some(file),
            bar,
        })
    }

    /// A log that writes nothing (tests).
    pub fn silent() -> Self {
        Self {
            file: None,
            bar: None,
        }
    }

    /// Records one log line.
    pub fn record(&mut self, record: &serde_json::Value) -> Result<()> {
        if let Some(f) = &mut self.file {
            writeln!(f, "{record}").map_err(|source| TrainError::Io {
                path: "metrics.jsonl".into(),
                source,
            })?;
        }
        if let Some(bar) = &self.bar {
            let short = |k: &str| record.get(k).and_then(serde_json::Value::as_f64);
            let mut msg = String::new();
            for (k, label) in [
                ("loss", "loss"),
                ("eval_loss", "eval_loss"),
                ("eval_accuracy", "eval_acc"),
                ("mean_token_accuracy", "tok_acc"),
            ] {
                if let Some(v) = short(k) {
                    msg.push_str(&format!("{label} {v:.4} "));
                }
            }
            if !msg.is_empty() {
                bar.set_message(msg);
            }
        } else if record.get("loss").is_some() || record.get("eval_loss").is_some() {
            tracing::info!(%record, "metrics");
        }
        Ok(())
    }

    /// Advances the bar to `step`.
    pub fn step(&self, step: usize) {
        if let Some(bar) = &self.bar {
            bar.set_position(step as u64);
        }
    }

    /// Closes the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}
