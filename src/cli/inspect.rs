//! `vlmtune inspect`: architecture summary and parameter counts of a checkpoint or preset.

use burn::tensor::backend::AutodiffBackend;
use vlmtune::backend::BackendJob;
use vlmtune::model::{describe, load_pretrained, Preset, SmolVlm};

/// Arguments of `vlmtune inspect`.
#[derive(clap::Args, Debug)]
pub struct InspectArgs {
    /// A checkpoint folder or Hub id.
    #[arg(long, conflicts_with = "preset")]
    pub model: Option<String>,
    /// A preset architecture with random weights: 256m, 500m, 2.2b, tiny.
    #[arg(long)]
    pub preset: Option<String>,
}

impl BackendJob for InspectArgs {
    type Output = anyhow::Result<String>;

    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        let model: SmolVlm<B::InnerBackend> = match (&self.model, &self.preset) {
            (Some(spec), _) => load_pretrained(spec, &device)?,
            (None, Some(name)) => {
                let preset = Preset::parse(name).ok_or_else(|| {
                    anyhow::anyhow!("unknown preset `{name}` (256m, 500m, 2.2b, tiny)")
                })?;
                SmolVlm::init(&preset.config(), 0, &device)?
            }
            (None, None) => anyhow::bail!("give --model <dir or hub id> or --preset <name>"),
        };
        Ok(describe(&model))
    }
}
