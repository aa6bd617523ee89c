//! Training logs: `metrics.jsonl` (one JSON record per log step, TRL's metric names) and a
//! progress bar on stderr.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use crate::error::{Result, TrainError};
use crate::tensorboard::EventWriter;

/// Writes metric records (`metrics.jsonl`, TensorBoard events with `report_to =
/// ["tensorboard"]`) and shows progress: a bar (step/total, loss, learning rate, tokens/s,
/// ETA) on a terminal, else a plain line every log step.
pub struct MetricsLog {
    file: Option<std::fs::File>,
    bar: Option<ProgressBar>,
    tensorboard: Option<EventWriter>,
    total: usize,
    start: (Instant, usize),
}

impl MetricsLog {
    /// Appends to `dir/metrics.jsonl`; shows a bar of `total` steps when `progress` and stderr
    /// is a terminal; writes TensorBoard events to `tensorboard` when given.
    pub fn open(
        dir: &Path,
        total: usize,
        start: usize,
        progress: bool,
        tensorboard: Option<&Path>,
    ) -> Result<Self> {
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
        let bar = (progress && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new(total as u64).with_position(start as u64);
            bar.set_style(
                ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar
        });
        let tensorboard = tensorboard.map(EventWriter::create).transpose()?;
        if let Some(tb) = &tensorboard {
            tracing::info!(events = %tb.path().display(), "TensorBoard");
        }
        Ok(Self {
            file: Some(file),
            bar,
            tensorboard,
            total,
            start: (Instant::now(), start),
        })
    }

    /// A log that writes nothing (tests).
    pub fn silent() -> Self {
        Self {
            file: None,
            bar: None,
            tensorboard: None,
            total: 0,
            start: (Instant::now(), 0),
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
        if let Some(tb) = &mut self.tensorboard {
            tb.record(record)?;
        }
        let short = |k: &str| record.get(k).and_then(serde_json::Value::as_f64);
        let mut msg = String::new();
        for (k, label, precision) in [
            ("loss", "loss", 4),
            ("learning_rate", "lr", 2),
            ("tokens_per_second", "tok/s", 0),
            ("eval_loss", "eval_loss", 4),
            ("eval_accuracy", "eval_acc", 4),
            ("rewards/margins", "margins", 4),
        ] {
            match short(k) {
                Some(v) if label == "lr" => msg.push_str(&format!("{label} {v:.precision$e} ")),
                Some(v) => msg.push_str(&format!("{label} {v:.precision$} ")),
                None => {}
            }
        }
        if msg.is_empty() {
            return Ok(());
        }
        match &self.bar {
            Some(bar) => bar.set_message(msg),
            None => {
                let step = short("step").unwrap_or(0.0) as usize;
                tracing::info!("step {step}/{} {msg}eta {}", self.total, self.eta(step));
            }
        }
        Ok(())
    }

    /// Time left at this step's pace since the log opened.
    fn eta(&self, step: usize) -> String {
        let (since, first) = self.start;
        let done = step.saturating_sub(first);
        if done == 0 {
            return "?".into();
        }
        let left =
            since.elapsed().as_secs_f64() / done as f64 * self.total.saturating_sub(step) as f64;
        let s = left.round() as u64;
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
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
    /// Adds metric totals: `(name, sum, count)` over micro-batches (and ranks).
    pub fn add_totals(&mut self, totals: &[(&'static str, f64, usize)]) {
        self.start.get_or_insert_with(Instant::now);
        for (k, sum, n) in totals {
            let e = self.metrics.entry(k).or_default();
            e.0 += sum;
            e.1 += n;
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
