//! `vlmtune merge`: fold a LoRA/DoRA adapter into its base model and write a plain Hugging
//! Face checkpoint (config, weights, tokenizer and processor files).

use std::path::PathBuf;

use burn::tensor::backend::AutodiffBackend;
use vlmtune::backend::BackendJob;
use vlmtune::model::checkpoint::copy_side_files;
use vlmtune::model::{load_dir, resolve_model, save_pretrained};
use vlmtune::peft::{load_adapter, merge_and_unload};
use vlmtune::quant::SaveDtype;

/// Arguments of `vlmtune merge`.
#[derive(clap::Args, Debug)]
pub struct MergeArgs {
    /// The base checkpoint folder or Hub id.
    #[arg(long)]
    pub model: String,
    /// The adapter folder (`adapter_config.json` + `adapter_model.safetensors`).
    #[arg(long)]
    pub adapter: PathBuf,
    /// Where to write the merged checkpoint.
    #[arg(long)]
    pub out: PathBuf,
    /// Storage type of the written weights.
    #[arg(long, value_enum, default_value_t = Dtype::F32)]
    pub dtype: Dtype,
}

/// Weight storage types.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Dtype {
    /// float32.
    F32,
    /// bfloat16.
    Bf16,
    /// float16.
    F16,
}

impl BackendJob for MergeArgs {
    type Output = anyhow::Result<String>;

    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        let dir = resolve_model(&self.model)?;
        let mut model = load_dir::<B::InnerBackend>(&dir, &device)?;
        load_adapter(&mut model, &self.adapter, "default")?;
        merge_and_unload(&mut model)?;
        let dtype = match self.dtype {
            Dtype::F32 => SaveDtype::F32,
            Dtype::Bf16 => SaveDtype::Bf16,
            Dtype::F16 => SaveDtype::F16,
        };
        save_pretrained(&model, &self.out, dtype)?;
        copy_side_files(&dir, &self.out)?;
        Ok(format!(
            "merged {} into {} -> {}",
            self.adapter.display(),
            dir.display(),
            self.out.display()
        ))
    }
}
