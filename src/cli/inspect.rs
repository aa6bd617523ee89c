//! `vlmtune inspect`: architecture summary, parameter counts and weight memory of a checkpoint
//! or preset, optionally with quantised frozen weights; with `--batch-size`, the estimated
//! peak memory of a training step (`vlmtune_train::memory_plan`).

use burn::tensor::backend::AutodiffBackend;
use vlmtune::backend::BackendJob;
use vlmtune::model::{describe, load_pretrained_with, LoadOptions, Preset, SmolVlm};
use vlmtune::quant::{RandomInit, Weights};

/// Arguments of `vlmtune inspect`.
#[derive(clap::Args, Debug)]
pub struct InspectArgs {
    /// A checkpoint folder or Hub id.
    #[arg(long, conflicts_with = "preset")]
    pub model: Option<String>,
    /// A preset architecture with random weights: 256m, 500m, 2.2b, tiny.
    #[arg(long)]
    pub preset: Option<String>,
    /// Quantised frozen weights.
    #[command(flatten)]
    pub quant: crate::cli::quant::QuantArgs,
    /// Estimate the peak memory of a training step with this many rows per micro-batch.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Image tiles per row (the default 2048-px longest edge splits into 16 + 1).
    #[arg(long, default_value_t = 1)]
    pub tiles: usize,
    /// Tokens per row (default: the tiles' image tokens plus 128 text tokens).
    #[arg(long)]
    pub seq_len: Option<usize>,
    /// Labelled (completion) tokens per row.
    #[arg(long, default_value_t = 32)]
    pub labelled: usize,
    /// Train a LoRA adapter with this preset (default: a full fine-tune of every weight).
    #[arg(long, value_enum)]
    pub lora: Option<crate::cli::sft::Preset>,
    /// LoRA rank.
    #[arg(long, default_value_t = 8)]
    pub lora_r: usize,
    /// With layer-wise gradient checkpointing.
    #[arg(long)]
    pub gradient_checkpointing: bool,
    /// Layers per checkpointed segment.
    #[arg(long, default_value_t = 1)]
    pub checkpoint_every: usize,
    /// The optimizer of the planned step (`adamw_torch`, `adamw_8bit`).
    #[arg(long, default_value = "adamw_torch")]
    pub optim: String,
}

impl BackendJob for InspectArgs {
    type Output = anyhow::Result<String>;

    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        let options = LoadOptions {
            quant: self.quant.config(),
        };
        // On the autodiff backend, so that trainable parameters count as such in the plan.
        let model: SmolVlm<B> = match (&self.model, &self.preset) {
            (Some(spec), _) => load_pretrained_with(spec, &options, &device)?,
            (None, Some(name)) => {
                let preset = Preset::parse(name).ok_or_else(|| {
                    anyhow::anyhow!("unknown preset `{name}` (256m, 500m, 2.2b, tiny)")
                })?;
                let source = RandomInit::new(0);
                let weights = Weights::new(&source, &device).with_quant(options.quant.as_ref());
                SmolVlm::load(&weights, &preset.config())?
            }
            (None, None) => anyhow::bail!("give --model <dir or hub id> or --preset <name>"),
        };
        let memory = vlmtune::peft::memory_report::<B, _>(&model);
        let mut out = format!("{}\nweight memory: {memory}\n", describe(&model));
        if let Some(batch_size) = self.batch_size {
            out.push_str(&self.plan(model)?.to_string());
            out.push_str(&format!(
                " (batch {batch_size}, {} tiles/row)\n",
                self.tiles
            ));
        }
        Ok(out)
    }
}

impl InspectArgs {
    fn plan<B: AutodiffBackend>(
        &self,
        mut model: SmolVlm<B>,
    ) -> anyhow::Result<vlmtune::train::memory_plan::MemoryPlan> {
        use vlmtune::train::memory_plan::{plan_model, StepShape};
        match self.lora {
            Some(preset) => {
                let config = preset
                    .lora_preset()
                    .config(self.lora_r, 2.0 * self.lora_r as f64);
                vlmtune::peft::add_adapter(&mut model, "default", &config, 0)?;
            }
            None => model = model.with_trainable(vlmtune::model::Trainable::all()),
        }
        let seq_len = self
            .seq_len
            .unwrap_or(self.tiles * (model.config().image_seq_len() + 2) + 128);
        Ok(plan_model(
            &model,
            StepShape {
                batch_size: self.batch_size.unwrap_or(1),
                seq_len,
                tiles: self.tiles,
                labelled: self.labelled,
            },
            self.gradient_checkpointing,
            self.checkpoint_every,
            vlmtune::train::TrainingArgs {
                optim: self.optim.clone(),
                ..Default::default()
            }
            .uses_8bit_optimizer(),
        ))
    }
}
