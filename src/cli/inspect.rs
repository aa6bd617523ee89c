//! `vlmtune inspect`: architecture summary, parameter counts and weight memory of a checkpoint
//! or preset, optionally with quantised frozen weights.

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
}

impl BackendJob for InspectArgs {
    type Output = anyhow::Result<String>;

    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        let options = LoadOptions {
            quant: self.quant.config(),
        };
        let model: SmolVlm<B::InnerBackend> = match (&self.model, &self.preset) {
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
        let memory = vlmtune::peft::memory_report::<B::InnerBackend, _>(&model);
        Ok(format!("{}\nweight memory: {memory}", describe(&model)))
    }
}
