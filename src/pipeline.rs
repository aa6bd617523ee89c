//! Chat with images in, text out: the processor and the model glued together, as
//! `vlmtune generate` and `examples/generate.rs` use them.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use image::DynamicImage;
use vlmtune_data::processor::Message;
use vlmtune_data::{BatchEncoding, ProcessOptions, Processor};
use vlmtune_model::{generate, GenerationConfig, PixelBatch, SmolVlm, TokenBatch};

use crate::error::Result;

/// The model inputs of a processor batch.
pub fn model_inputs(enc: &BatchEncoding) -> Result<(TokenBatch, Option<PixelBatch>)> {
    let batch_size = enc.input_ids.len();
    let seq_len = enc.input_ids.first().map(Vec::len).unwrap_or(0);
    let tokens = TokenBatch {
        input_ids: enc.input_ids.concat(),
        attention_mask: enc.attention_mask.concat(),
        batch_size,
        seq_len,
    };
    let pixels = enc.pixel_values.as_ref().map(|p| PixelBatch {
        pixel_values: p.values.clone(),
        shape: p.shape,
        pixel_attention_mask: Some(p.pixel_attention_mask.clone()),
    });
    Ok((tokens, pixels))
}

/// Decoding options of [`Pipeline::chat`].
#[derive(Clone, Debug, PartialEq)]
pub struct ChatOptions {
    /// Most new tokens.
    pub max_new_tokens: usize,
    /// Sample at this temperature; greedy when `None`.
    pub temperature: Option<f32>,
    /// Nucleus sampling.
    pub top_p: Option<f32>,
    /// Top-k sampling.
    pub top_k: Option<usize>,
    /// Sampling seed.
    pub seed: u64,
    /// Override the checkpoint's `do_image_splitting`.
    pub do_image_splitting: Option<bool>,
}

impl Default for ChatOptions {
    fn default() -> Self {
        Self {
            max_new_tokens: 64,
            temperature: None,
            top_p: None,
            top_k: None,
            seed: 0,
            do_image_splitting: None,
        }
    }
}

/// What [`Pipeline::chat`] returns.
#[derive(Clone, Debug, PartialEq)]
pub struct ChatReply {
    /// The generated text, special tokens skipped.
    pub text: String,
    /// The generated ids (including the end-of-utterance token when reached).
    pub token_ids: Vec<u32>,
}

/// A model with its processor and generation defaults.
pub struct Pipeline<B: Backend> {
    /// The model.
    pub model: SmolVlm<B>,
    /// Its processor.
    pub processor: Processor,
    /// End-of-sequence and padding ids (from `generation_config.json`).
    pub generation: GenerationConfig,
    /// The checkpoint folder.
    pub dir: PathBuf,
}

impl<B: Backend> Pipeline<B> {
    /// Loads model and processor from a folder or Hub id.
    pub fn load(spec: &str, device: &B::Device) -> Result<Self> {
        Self::load_with(spec, &vlmtune_model::LoadOptions::default(), device)
    }

    /// [`Pipeline::load`] with load options (quantised frozen weights).
    pub fn load_with(
        spec: &str,
        options: &vlmtune_model::LoadOptions,
        device: &B::Device,
    ) -> Result<Self> {
        let dir = vlmtune_model::resolve_model(spec)?;
        let model = vlmtune_model::load_dir_with(&dir, options, device)?;
        Self::from_parts(model, &dir)
    }

    /// Wraps an already loaded model with the processor of `dir`.
    pub fn from_parts(model: SmolVlm<B>, dir: &Path) -> Result<Self> {
        let processor = Processor::from_dir(dir)?;
        let generation = GenerationConfig::for_checkpoint(Some(dir), model.config())?;
        Ok(Self {
            model,
            processor,
            generation,
            dir: dir.to_path_buf(),
        })
    }

    /// One user turn (the images, then `prompt`) with the generation prompt, answered.
    pub fn chat(
        &self,
        images: &[DynamicImage],
        prompt: &str,
        options: &ChatOptions,
    ) -> Result<ChatReply> {
        let messages = [Message::user_with_images(images.len(), prompt)];
        let text = self.processor.apply_chat_template(&messages, true)?;
        let process = ProcessOptions {
            do_image_splitting: options.do_image_splitting,
            ..Default::default()
        };
        let enc = self.processor.call(&[&text], &[images.to_vec()], process)?;
        let (tokens, pixels) = model_inputs(&enc)?;
        let config = GenerationConfig {
            max_new_tokens: options.max_new_tokens,
            temperature: options.temperature,
            top_p: options.top_p,
            top_k: options.top_k,
            seed: options.seed,
            ..self.generation.clone()
        };
        let out = generate(&self.model, &tokens, pixels.as_ref(), &config)?;
        let token_ids = out.tokens.into_iter().next().unwrap_or_default();
        let text = self.processor.decode(&token_ids, true)?;
        Ok(ChatReply { text, token_ids })
    }
}
