//! `vlmtune sft`: supervised fine-tuning from a TOML config (or the built-in defaults), with
//! flags overriding config fields.

use std::path::PathBuf;

use burn::tensor::backend::AutodiffBackend;
use vlmtune::backend::BackendJob;
use vlmtune::data::FormatKind;
use vlmtune::jobs::sft::{run_sft, LoraSection, SftJobConfig, SftReport};
use vlmtune::peft::LoraPreset;

/// Arguments of `vlmtune sft`.
#[derive(clap::Args, Debug, Default)]
pub struct SftArgs {
    /// A TOML config (`[model]`, `[dataset]`, `[lora]`, `[collator]`, `[training]`); without
    /// one, the built-in defaults: the tiny model on synthetic charts.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// `tiny`, a checkpoint folder, or a Hub id (e.g. HuggingFaceTB/SmolVLM-256M-Instruct).
    #[arg(long)]
    pub model: Option<String>,
    /// `synthetic`, a .jsonl / .parquet file or folder, or a Hub dataset (e.g. HuggingFaceM4/ChartQA).
    #[arg(long)]
    pub dataset: Option<String>,
    /// Dataset field mapping.
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Train a LoRA adapter with this preset instead of the config's choice.
    #[arg(long, value_enum)]
    pub lora: Option<Preset>,
    /// LoRA rank.
    #[arg(long)]
    pub lora_r: Option<usize>,
    /// LoRA alpha.
    #[arg(long)]
    pub lora_alpha: Option<f64>,
    /// Output folder.
    #[arg(long)]
    pub output_dir: Option<PathBuf>,
    /// Optimizer steps (overrides epochs).
    #[arg(long)]
    pub max_steps: Option<i64>,
    /// Epochs.
    #[arg(long)]
    pub num_train_epochs: Option<f64>,
    /// Peak learning rate.
    #[arg(long)]
    pub learning_rate: Option<f64>,
    /// Micro-batch size.
    #[arg(long)]
    pub per_device_train_batch_size: Option<usize>,
    /// Micro-batches per step.
    #[arg(long)]
    pub gradient_accumulation_steps: Option<usize>,
    /// Log every N steps.
    #[arg(long)]
    pub logging_steps: Option<usize>,
    /// Save every N steps.
    #[arg(long)]
    pub save_steps: Option<usize>,
    /// Evaluate every N steps.
    #[arg(long)]
    pub eval_steps: Option<usize>,
    /// Gradient checkpointing and batch-size planning.
    #[command(flatten)]
    pub memory: crate::cli::batch::MemoryArgs,
    /// Mixed precision as TRL's `bf16=True`: bf16 products, f32 weights and optimiser state.
    #[arg(long)]
    pub bf16: bool,
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
    /// Seed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Synthetic charts: training examples.
    #[arg(long)]
    pub num_train: Option<usize>,
    /// Hide the progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// Quantised frozen weights.
    #[command(flatten)]
    pub quant: crate::cli::quant::QuantArgs,
}

/// Dataset mappings.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Format {
    /// TRL's column names.
    Trl,
    /// ChartQA's image / query / label.
    Chartqa,
}

/// LoRA presets.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Preset {
    /// q/k/v/o of the text model.
    TextAttention,
    /// Attention + MLP of the text model.
    TextAllLinear,
    /// Text and vision attention + MLP.
    VisionAndText,
    /// Every Linear but lm_head.
    AllLinear,
}

impl Preset {
    /// The library's preset of the same name.
    pub fn lora_preset(self) -> LoraPreset {
        match self {
            Preset::TextAttention => LoraPreset::TextAttention,
            Preset::TextAllLinear => LoraPreset::TextAllLinear,
            Preset::VisionAndText => LoraPreset::VisionAndText,
            Preset::AllLinear => LoraPreset::AllLinear,
        }
    }
}

impl SftArgs {
    /// The job config: file (or built-in defaults) with flags applied.
    pub fn job_config(&self) -> anyhow::Result<SftJobConfig> {
        let mut c = crate::cli::trl_args::base_config(
            self.config.as_deref(),
            &self.trl,
            vlmtune::trl::TrlJob::Sft,
            SftJobConfig::from_file,
            SftJobConfig::builtin,
        )?;
        let t = &mut c.training;
        if let Some(v) = &self.model {
            c.model.name = v.clone();
        }
        if let Some(v) = &self.dataset {
            c.dataset.source = v.clone();
        }
        if let Some(f) = self.format {
            c.dataset.format = match f {
                Format::Trl => FormatKind::Trl,
                Format::Chartqa => FormatKind::ChartQa,
            };
        }
        if let Some(p) = self.lora {
            let preset = p.lora_preset();
            let mut section = c.lora.take().unwrap_or(LoraSection {
                preset: None,
                config: preset.config(8, 16.0),
                ..LoraSection::default()
            });
            section.preset = Some(preset);
            section.config.target_modules = None;
            c.lora = Some(section);
        }
        if let Some(dir) = &self.adapter {
            c.lora.get_or_insert_with(LoraSection::default).adapter = Some(dir.clone());
        }
        if c.lora.is_none() && (self.lora_r.is_some() || self.lora_alpha.is_some()) {
            anyhow::bail!(
                "--lora-r / --lora-alpha need an adapter: add --lora PRESET or a [lora] section (without one the model is fine-tuned in full)"
            );
        }
        if let Some(section) = &mut c.lora {
            if self.lora.is_some() {
                section.explicit.push("preset".into());
            }
            if let Some(r) = self.lora_r {
                section.config.r = r;
                section.explicit.push("r".into());
            }
            if let Some(a) = self.lora_alpha {
                section.config.lora_alpha = a;
                section.explicit.push("lora_alpha".into());
            }
        }
        macro_rules! set {
            ($($field:ident),*) => {$(if let Some(v) = self.$field.clone() { t.$field = v; })*};
        }
        set!(
            output_dir,
            max_steps,
            num_train_epochs,
            learning_rate,
            per_device_train_batch_size,
            gradient_accumulation_steps,
            logging_steps,
            save_steps,
            seed
        );
        if let Some(v) = self.eval_steps {
            t.eval_steps = Some(v);
        }
        self.memory.apply(t);
        self.run_control.apply(t, &mut c.dataset);
        self.distributed.apply(&mut c.distributed);
        t.bf16 |= self.bf16;
        t.progress_bar &= !self.no_progress;
        if let Some(n) = self.num_train {
            c.dataset.num_train = n;
        }
        c.quant = self.quant.or(c.quant.take());
        Ok(c)
    }
}

/// Runs a prepared job config on a backend.
pub struct SftJob(pub SftJobConfig);

impl BackendJob for SftJob {
    type Output = anyhow::Result<SftReport>;

    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        Ok(run_sft::<B>(&self.0, device)?)
    }
}

/// A human summary of a report.
pub fn summary(report: &SftReport) -> String {
    let pct = |a: Option<f64>| {
        a.map(|v| format!("{:.1}%", 100.0 * v))
            .unwrap_or_else(|| "n/a".into())
    };
    let first = report.losses.first().copied().unwrap_or(f64::NAN);
    let last =
        report.losses.iter().rev().take(10).sum::<f64>() / report.losses.len().clamp(1, 10) as f64;
    let chance = report
        .chance_accuracy
        .map(|c| format!(" (answering at random: {:.1}%)", 100.0 * c))
        .unwrap_or_default();
    format!(
        "{}\n{}\nsteps: {} in {:.0} s; loss {:.3} -> {:.3} (mean of the last 10)\nheld-out accuracy: {} before, {} after{chance} (eval loss {})\n{}{}{}",
        report.trainable,
        report.memory,
        report.losses.len(),
        report.train_seconds,
        first,
        last,
        pct(report.accuracy_before),
        pct(report.accuracy_after),
        report.eval_loss_after.map(|l| format!("{l:.3}")).unwrap_or_else(|| "n/a".into()),
        crate::cli::eval::by_question(&report.answers),
        crate::cli::bad_examples_line(report.bad_examples),
        crate::cli::saved_line(report.rank, &report.saved_to)
    )
}
