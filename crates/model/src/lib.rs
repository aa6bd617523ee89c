//! # vlmtune-model
//!
//! SmolVLM / Idefics3 in burn, numerically faithful to transformers:
//!
//! * [`VlmConfig`] parses `config.json` (v4 and v5 layouts) with transformers' defaults;
//!   [`Preset`] gives the published architectures.
//! * [`SmolVlm`]: SigLIP vision tower ([`vision`]), pixel-shuffle [`connector`], Llama
//!   [`text`] model and LM head; every projection is a [`vlmtune_peft::Linear`].
//! * [`load_pretrained`] / [`save_pretrained`]: Hugging Face safetensors checkpoints from a
//!   folder or the Hub, by HF key; [`generate()`] decodes with a KV cache.
//! * [`causal_lm_loss`]: transformers' `ForCausalLMLoss`.
//!
//! ```
//! use vlmtune_model::{Preset, SmolVlm, TokenBatch};
//! type B = burn::backend::Flex;
//! let config = Preset::Tiny.config();
//! let model = SmolVlm::<B>::init(&config, 0, &Default::default()).unwrap();
//! let tokens = TokenBatch::from_rows(&[vec![1, 5, 9]]).unwrap();
//! let logits = model.forward(&tokens, None).unwrap();
//! assert_eq!(logits.dims(), [1, 3, config.text_config.vocab_size]);
//! ```

pub mod attention;
pub mod checkpoint;
pub mod config;
pub mod connector;
pub mod error;
pub mod generate;
pub mod hub;
pub mod layers;
pub mod linears;
pub mod loss;
pub mod presets;
pub mod recompute;
pub mod summary;
pub mod text;
pub mod vision;
pub mod vlm;

pub use checkpoint::{
    load_dir, load_dir_with, load_pretrained, load_pretrained_with, save_pretrained, LoadOptions,
};
pub use config::{TextConfig, VisionConfig, VlmConfig};
pub use error::{ModelError, Result};
pub use generate::{generate, GenerationConfig, GenerationOutput};
pub use hub::resolve_model;
pub use linears::Trainable;
pub use loss::{causal_lm_loss, ShiftedTargets, IGNORE_INDEX};
pub use presets::{tiny_config, Preset};
pub use recompute::LayerTape;
pub use summary::{describe, param_counts, ParamCounts};
pub use text::KvCache;
pub use vlm::{ImageFeatures, PixelBatch, SmolVlm, TokenBatch};
