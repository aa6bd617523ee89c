//! Training logs: `metrics.jsonl` (one JSON record per log step, TRL's metric names) and a
//! progress bar on stderr.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

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

/// Metrics gathered between two log lines.
#[derive(Default)]
pub(crate) struct Window {
    /// Sum of the step losses.
    pub loss: f64,
    /// Steps summed.
    pub steps: usize,
    /// Non-padding tokens seen.
    pub tokens: usize,
    metrics: BTreeMap<&'static str, (f64, usize)>,
    start: Option<Instant>,
}

impl Window {
    pub fn add(&mut self, metrics: &[(&'static str, f64)]) {
        self.start.get_or_insert_with(Instant::now);
        for (k, v) in metrics {
            let e = self.metrics.entry(k).or_default();
            e.0 += v;
            e.1 += 1;
        }
    }

    pub fn record(
        &self,
        step: usize,
        epoch: f64,
        grad_norm: f64,
        lr: f64,
        num_tokens: u64,
    ) -> serde_json::Value {
        let secs = self
            .start
            .map(|s| s.elapsed().as_secs_f64())
            .unwrap_or(0.0)
            .max(1e-9);
        let mut map = serde_json::Map::new();
        map.insert("step".into(), json!(step));
        map.insert("epoch".into(), json!(epoch));
        // No step applied (every micro-batch non-finite): no loss to report.
        let loss = (self.steps > 0).then(|| self.loss / self.steps as f64);
        map.insert("loss".into(), json!(loss));
        map.insert("grad_norm".into(), json!(grad_norm));
        map.insert("learning_rate".into(), json!(lr));
        for (k, (sum, n)) in &self.metrics {
            map.insert((*k).into(), json!(sum / (*n).max(1) as f64));
        }
        map.insert("num_tokens".into(), json!(num_tokens));
        map.insert("tokens_per_second".into(), json!(self.tokens as f64 / secs));
        serde_json::Value::Object(map)
    }
}
