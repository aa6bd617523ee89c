//! # vlmtune
//!
//! Fine-tune SmolVLM / Idefics3 vision-language models in Rust: LoRA/QLoRA, SFT and DPO, on
//! the CPU (burn-ndarray) or CUDA (burn-cuda, `cuda` feature). This facade re-exports the
//! workspace crates and holds the `vlmtune` command line.
//!
//! | crate | what |
//! | --- | --- |
//! | [`quant`] | frozen weight storage, safetensors I/O |
//! | [`peft`] | the adaptable Linear layer, parameter walks |
//! | [`model`] | SmolVLM / Idefics3, checkpoints, generation |
//! | [`data`] | processor, datasets, collators |
//! | [`train`] | trainers |

pub mod backend;
pub mod builtin;
pub mod error;
pub mod jobs;
pub mod pipeline;

pub use error::{Error, Result};
pub use pipeline::{ChatOptions, ChatReply, Pipeline};

pub use vlmtune_data as data;
pub use vlmtune_model as model;
pub use vlmtune_peft as peft;
pub use vlmtune_quant as quant;
pub use vlmtune_train as train;

/// The names most programs need.
pub mod prelude {
    pub use crate::backend::{dispatch, BackendJob, CpuBackend, DeviceKind};
    pub use crate::pipeline::{ChatOptions, ChatReply, Pipeline};
    pub use vlmtune_model::{
        generate, load_pretrained, save_pretrained, GenerationConfig, PixelBatch, Preset, SmolVlm,
        TokenBatch, VlmConfig,
    };
}
