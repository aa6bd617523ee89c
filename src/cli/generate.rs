//! `vlmtune generate`: one user turn (image(s), then text) answered by a model.

use burn::tensor::backend::AutodiffBackend;
use vlmtune::backend::BackendJob;
use vlmtune::data::processor::open_image;
use vlmtune::{ChatOptions, Pipeline};

/// Arguments of `vlmtune generate`.
#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    /// A checkpoint folder or Hub id.
    #[arg(long)]
    pub model: String,
    /// A LoRA adapter folder to apply (PEFT format).
    #[arg(long)]
    pub adapter: Option<std::path::PathBuf>,
    /// An image file (PNG, JPEG, WebP); repeat for several images.
    #[arg(long = "image")]
    pub images: Vec<std::path::PathBuf>,
    /// The user's text.
    #[arg(long)]
    pub prompt: String,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// Sample at this temperature (greedy when absent).
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Nucleus sampling threshold.
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Keep only the k most likely tokens when sampling.
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Resize each image to one tile instead of splitting it.
    #[arg(long)]
    pub no_image_splitting: bool,
    /// Quantised frozen weights.
    #[command(flatten)]
    pub quant: crate::cli::quant::QuantArgs,
}

impl BackendJob for GenerateArgs {
    type Output = anyhow::Result<String>;

    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        let options = vlmtune::model::LoadOptions {
            quant: self.quant.config(),
        };
        let mut pipeline = Pipeline::<B::InnerBackend>::load_with(&self.model, &options, &device)?;
        if let Some(adapter) = &self.adapter {
            vlmtune::peft::load_adapter(&mut pipeline.model, adapter, "default")?;
        }
        let images = self
            .images
            .iter()
            .map(|p| open_image(p))
            .collect::<Result<Vec<_>, _>>()?;
        let options = ChatOptions {
            max_new_tokens: self.max_new_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            seed: self.seed,
            do_image_splitting: self.no_image_splitting.then_some(false),
        };
        Ok(pipeline.chat(&images, &self.prompt, &options)?.text)
    }
}
