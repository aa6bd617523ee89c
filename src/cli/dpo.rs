//! `vlmtune dpo`: preference optimisation from a TOML config (or the built-in defaults, which
//! continue the SFT main job), with flags overriding config fields.

use std::path::PathBuf;

use burn::tensor::backend::AutodiffBackend;
use vlmtune::backend::BackendJob;
use vlmtune::jobs::dpo::{run_dpo, DpoJobConfig, DpoReport};
use vlmtune::train::{DpoLossType, ReferenceSource};

/// Arguments of `vlmtune dpo`.
#[derive(clap::Args, Debug, Default)]
pub struct DpoArgs {
    /// A TOML config (`[model]`, `[dataset]`, `[lora]`, `[dpo]`, `[collator]`, `[training]`);
    /// without one, the defaults continue `vlmtune sft` on synthetic chart pairs.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The starting model: a folder or Hub id.
    #[arg(long)]
    pub model: Option<String>,
    /// `synthetic`, a .jsonl / .parquet file or folder, or a Hub dataset with prompt/chosen/rejected.
    #[arg(long)]
    pub dataset: Option<String>,
    /// Output folder.
    #[arg(long)]
    pub output_dir: Option<PathBuf>,
    /// Optimizer steps.
    #[arg(long)]
    pub max_steps: Option<i64>,
    /// Peak learning rate.
    #[arg(long)]
    pub learning_rate: Option<f64>,
    /// Implicit-reward temperature.
    #[arg(long)]
    pub beta: Option<f64>,
    /// Loss types (repeat to combine): sigmoid, ipo, hinge, robust, sft, sigmoid_norm.
    #[arg(long = "loss-type")]
    pub loss_type: Vec<String>,
    /// A reference checkpoint instead of the model with adapters disabled.
    #[arg(long)]
    pub ref_model: Option<PathBuf>,
    /// Compute reference log-probabilities once, cached in the output folder.
    #[arg(long)]
    pub precompute_ref_log_probs: bool,
    /// Encode image + prompt twice per pair, as TRL does.
    #[arg(long)]
    pub no_shared_prefix: bool,
    /// Hide the progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// Quantised frozen weights.
    #[command(flatten)]
    pub quant: crate::cli::quant::QuantArgs,
    /// Gradient checkpointing and batch-size planning.
    #[command(flatten)]
    pub memory: crate::cli::batch::MemoryArgs,
    /// Train this PEFT adapter folder further (its config decides rank and targets; LoRA
    /// flags may only repeat it).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Resuming, bad examples, non-finite steps.
    #[command(flatten)]
    pub run_control: crate::cli::run_control::RunControlArgs,
    /// Data parallelism (torchrun's flags).
    #[command(flatten)]
    pub distributed: crate::cli::distributed::DistributedArgs,
    /// TRL keys from the command line that have no vlmtune flag (`--model_name_or_path`,
    /// `--use_peft`, ...), split off by [`crate::cli::trl_args::split`].
    #[arg(skip)]
    pub trl: crate::cli::trl_args::TrlOverrides,
}

impl DpoArgs {
    /// The job config: file (or built-in defaults) with flags applied.
    pub fn job_config(&self) -> anyhow::Result<DpoJobConfig> {
        let mut c = crate::cli::trl_args::base_config(
            self.config.as_deref(),
            &self.trl,
            vlmtune::trl::TrlJob::Dpo,
            DpoJobConfig::from_file,
            DpoJobConfig::builtin,
        )?;
        if let Some(v) = &self.model {
            c.model.name = v.clone();
        }
        c.quant = self.quant.or(c.quant.take());
        if let Some(v) = &self.dataset {
            c.dataset.source = v.clone();
        }
        if let Some(v) = &self.output_dir {
            c.training.output_dir = v.clone();
        }
        if let Some(v) = self.max_steps {
            c.training.max_steps = v;
        }
        if let Some(v) = self.learning_rate {
            c.training.learning_rate = v;
        }
        if let Some(v) = self.beta {
            c.dpo.beta = v;
        }
        if !self.loss_type.is_empty() {
            c.dpo.loss_type = self
                .loss_type
                .iter()
                .map(|t| {
                    serde_json::from_value::<DpoLossType>(serde_json::Value::String(t.clone()))
                })
                .collect::<Result<_, _>>()
                .map_err(|e| anyhow::anyhow!("--loss-type: {e}"))?;
        }
        if let Some(p) = &self.ref_model {
            c.dpo.reference = ReferenceSource::Checkpoint(p.clone());
        }
        c.dpo.precompute_ref_log_probs |= self.precompute_ref_log_probs;
        c.dpo.shared_prefix &= !self.no_shared_prefix;
        c.training.progress_bar &= !self.no_progress;
        if let Some(dir) = &self.adapter {
            if self.config.is_none() {
                // The built-in defaults' new adapter gives way to the one continued.
                c.lora = None;
            }
            c.lora.get_or_insert_with(Default::default).adapter = Some(dir.clone());
        }
        self.run_control.apply(&mut c.training, &mut c.dataset);
        self.distributed.apply(&mut c.distributed);
        self.memory.apply(&mut c.training);
        Ok(c)
    }
}

/// Runs a prepared job config on a backend.
pub struct DpoJob(pub DpoJobConfig);

impl BackendJob for DpoJob {
    type Output = anyhow::Result<DpoReport>;

    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        Ok(run_dpo::<B>(&self.0, device)?)
    }
}

/// A human summary of a report.
pub fn summary(report: &DpoReport) -> String {
    let get = |m: &std::collections::BTreeMap<String, f64>, k: &str| {
        m.get(k)
            .map(|v| format!("{v:.3}"))
            .unwrap_or_else(|| "n/a".into())
    };
    let mut out = format!(
        "steps: {} in {:.0} s; loss {:.4} -> {:.4}\n",
        report.losses.len(),
        report.train_seconds,
        report.losses.first().copied().unwrap_or(f64::NAN),
        report.losses.last().copied().unwrap_or(f64::NAN)
    );
    for k in ["loss", "rewards/accuracies", "rewards/margins", "accuracy"] {
        out.push_str(&format!(
            "held-out {k}: {} before, {} after\n",
            get(&report.before, k),
            get(&report.after, k)
        ));
    }
    out.push_str(&crate::cli::bad_examples_line(report.bad_examples));
    out.push_str("adapter ");
    out.push_str(&crate::cli::saved_line(report.rank, &report.saved_to));
    out
}
