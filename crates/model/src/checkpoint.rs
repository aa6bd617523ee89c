//! Loading a checkpoint folder into a [`SmolVlm`] and saving one back in the layout
//! transformers reads (`config.json` + `model.safetensors`).

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::backend::Backend;
use vlmtune_quant::{
    ensure_all_used, write_atomic, write_safetensors, QuantConfig, SafetensorsFiles, SaveDtype,
    Weights,
};

use crate::config::VlmConfig;
use crate::error::{ModelError, Result};
use crate::hub::resolve_model;
use crate::vlm::SmolVlm;

/// How a checkpoint is loaded.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Store (some) frozen Linear weights quantised, decided per module path while loading.
    pub quant: Option<QuantConfig>,
}

/// Loads a model from a local folder or a Hub id (see [`resolve_model`]).
pub fn load_pretrained<B: Backend>(spec: &str, device: &B::Device) -> Result<SmolVlm<B>> {
    load_dir(&resolve_model(spec)?, device)
}

/// [`load_pretrained`] with [`LoadOptions`].
pub fn load_pretrained_with<B: Backend>(
    spec: &str,
    options: &LoadOptions,
    device: &B::Device,
) -> Result<SmolVlm<B>> {
    load_dir_with(&resolve_model(spec)?, options, device)
}

/// Loads `config.json` and the safetensors weights of `dir`. Every checkpoint key must be
/// used and every model weight present with its shape.
pub fn load_dir<B: Backend>(dir: &Path, device: &B::Device) -> Result<SmolVlm<B>> {
    load_dir_with(dir, &LoadOptions::default(), device)
}

/// [`load_dir`] with [`LoadOptions`]: with a quantisation config, each selected Linear weight
/// is read, quantised and uploaded one at a time.
pub fn load_dir_with<B: Backend>(
    dir: &Path,
    options: &LoadOptions,
    device: &B::Device,
) -> Result<SmolVlm<B>> {
    let config = VlmConfig::from_file(&dir.join("config.json"))?;
    if let Some(quant) = &options.quant {
        quant.validate()?;
    }
    let files = SafetensorsFiles::open_dir(dir, "model")?;
    tracing::info!(dir = %dir.display(), tensors = files.keys().len(), quant = ?options.quant, "loading checkpoint");
    let weights = Weights::new(&files, device).with_quant(options.quant.as_ref());
    let model = SmolVlm::load(&weights, &config)?;
    ensure_all_used(&files)?;
    Ok(model)
}

/// Copies the tokenizer, processor and generation files of checkpoint `from` to `to`, so a
/// saved model folder is complete.
pub fn copy_side_files(from: &Path, to: &Path) -> Result<()> {
    for name in crate::hub::SIDE_FILES {
        let src = from.join(name);
        if src.is_file() {
            std::fs::copy(&src, to.join(name)).map_err(|source| ModelError::Io {
                path: src.clone(),
                source,
            })?;
        }
    }
    Ok(())
}

/// Whether a parameter path belongs to the base model (adapters are saved separately).
pub fn is_base_param(path: &str) -> bool {
    !path.contains(".lora_") && !path.contains(".lora.")
}

/// Writes `config.json` and `model.safetensors` (in `dtype`) to `dir`, atomically per file,
/// with the Hugging Face key names.
pub fn save_pretrained<B: Backend>(model: &SmolVlm<B>, dir: &Path, dtype: SaveDtype) -> Result<()> {
    if let Some(path) = vlmtune_peft::quantized_paths(model).into_iter().next() {
        return Err(ModelError::QuantizedSave(path));
    }
    let tensors = vlmtune_peft::param_values::<B, _>(model, is_base_param);
    let mut metadata = BTreeMap::new();
    metadata.insert("format".to_string(), "pt".to_string());
    std::fs::create_dir_all(dir).map_err(|source| ModelError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    write_safetensors(
        &dir.join("model.safetensors"),
        &tensors,
        dtype,
        Some(metadata),
    )?;
    let mut config = model.config().clone();
    config.architectures = None;
    write_atomic(&dir.join("config.json"), config.to_json_string().as_bytes())?;
    Ok(())
}
