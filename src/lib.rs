//! # vlmtune
//!
//! Fine-tune SmolVLM / Idefics3 vision-language models in Rust: LoRA/QLoRA, SFT and DPO, on
//! the CPU (burn-flex) or CUDA (burn-cuda, `cuda` feature). This facade re-exports the
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
pub mod bench_inputs;
pub mod builtin;
pub mod config_file;
pub mod error;
pub mod jobs;
pub mod pipeline;
pub mod selftest;
pub mod trl;

pub use error::{Error, Result};
pub use pipeline::{ChatOptions, ChatReply, Pipeline};

pub use vlmtune_data as data;
pub use vlmtune_model as model;
pub use vlmtune_peft as peft;
pub use vlmtune_quant as quant;
pub use vlmtune_train as train;

#[doc(hidden)]
pub use tikv_jemallocator;

/// Makes jemalloc the global allocator of the program that calls it (the CLI, benches, examples,
/// tests). glibc's malloc hands every large tensor back to the OS on free and page-faults it in
/// again on the next allocation (measured: a quarter of a forward's time in the kernel);
/// jemalloc keeps freed pages for reuse.
#[macro_export]
macro_rules! use_retaining_allocator {
    () => {
        #[global_allocator]
        static GLOBAL_ALLOCATOR: $crate::tikv_jemallocator::Jemalloc =
            $crate::tikv_jemallocator::Jemalloc;
    };
}

/// The names most programs need.
pub mod prelude {
    pub use crate::backend::{dispatch, BackendJob, CpuBackend, DeviceKind};
    pub use crate::pipeline::{ChatOptions, ChatReply, Pipeline};
    pub use vlmtune_model::{
        generate, load_pretrained, save_pretrained, GenerationConfig, PixelBatch, Preset, SmolVlm,
        TokenBatch, VlmConfig,
    };
}
