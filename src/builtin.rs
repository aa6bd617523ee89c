//! The built-in tiny model: a random SmolVLM-architecture checkpoint with a small tokenizer,
//! written to disk so that everything downstream (processor, trainer, generation) reads a
//! normal checkpoint folder, offline.

use std::path::Path;

use burn::tensor::backend::Backend;
use vlmtune_model::{save_pretrained, tiny_config, SmolVlm};

use crate::error::Result;

const FILES: [(&str, &str); 4] = [
    (
        "tokenizer.json",
        include_str!("../assets/tiny/tokenizer.json"),
    ),
    (
        "tokenizer_config.json",
        include_str!("../assets/tiny/tokenizer_config.json"),
    ),
    (
        "chat_template.jinja",
        include_str!("../assets/tiny/chat_template.jinja"),
    ),
    (
        "processor_config.json",
        include_str!("../assets/tiny/processor_config.json"),
    ),
];

/// Vocabulary size of the built-in tokenizer.
pub const TINY_VOCAB: usize = 460;
/// `<image>`.
pub const TINY_IMAGE_TOKEN: u32 = 459;
/// `<end_of_utterance>`.
pub const TINY_EOS: u32 = 420;

/// Writes the tiny checkpoint (random weights from `seed`) to `dir`, unless one is there.
pub fn write_tiny_checkpoint<B: Backend>(dir: &Path, seed: u64, device: &B::Device) -> Result<()> {
    if dir.join("config.json").is_file() && dir.join("model.safetensors").is_file() {
        return Ok(());
    }
    let config = tiny_config(TINY_VOCAB, TINY_IMAGE_TOKEN, TINY_EOS, 2, 1);
    let model = SmolVlm::<B>::init(&config, seed, device)?;
    save_pretrained(&model, dir, vlmtune_quant::SaveDtype::F32)?;
    for (name, text) in FILES {
        vlmtune_quant::write_atomic(&dir.join(name), text.as_bytes())?;
    }
    vlmtune_quant::write_atomic(
        &dir.join("generation_config.json"),
        format!("{{\"bos_token_id\": 1, \"eos_token_id\": {TINY_EOS}, \"pad_token_id\": 2}}\n")
            .as_bytes(),
    )?;
    Ok(())
}
