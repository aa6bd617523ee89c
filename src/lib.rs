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
pub mod heap;
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
/// jemalloc keeps freed pages for reuse, and with the options below never purges them and
/// backs its memory with transparent huge pages:
/// - by default it hands dirty pages back over ten seconds, and a step that frees and
///   allocates the same activations again page-faults part of them back in (measured: the
///   256M forward 1.31 -> 1.25 s, system time 3.6 -> 1.5 s; peak RSS unchanged, as it is the
///   high-water mark either way);
/// - 2 MiB pages (`thp:always`, Linux only; a no-op where THP is off) cut the page faults of a
///   forward from 746k to 2.6k and the TLB misses of the matmuls: the 256M LoRA SFT step
///   1.63 -> 1.41 s, its peak RSS +9% (memory is handed out in 2 MiB pages).
///
/// `_RJEM_MALLOC_CONF` in the environment still overrides them.
///
/// `use_retaining_allocator!(counting)` wraps it in [`heap::Counting`], which the benchmarks
/// use to report the live-heap peak beside peak RSS.
#[macro_export]
macro_rules! use_retaining_allocator {
    () => {
        #[global_allocator]
        static GLOBAL_ALLOCATOR: $crate::tikv_jemallocator::Jemalloc =
            $crate::tikv_jemallocator::Jemalloc;
        $crate::use_retaining_allocator!(@options);
    };
    (counting) => {
        #[global_allocator]
        static GLOBAL_ALLOCATOR: $crate::heap::Counting<$crate::tikv_jemallocator::Jemalloc> =
            $crate::heap::Counting($crate::tikv_jemallocator::Jemalloc);
        $crate::use_retaining_allocator!(@options);
    };
    (@options) => {
        /// jemalloc's compiled-in options (`je_malloc_conf`, a weak symbol in jemalloc that this
        /// definition overrides): freed pages stay with the process, in huge pages.
        #[cfg(target_os = "linux")]
        #[export_name = "_rjem_malloc_conf"]
        static JEMALLOC_OPTIONS: &u8 = &b"dirty_decay_ms:-1,muzzy_decay_ms:-1,thp:always\0"[0];
        #[cfg(not(target_os = "linux"))]
        #[export_name = "_rjem_malloc_conf"]
        static JEMALLOC_OPTIONS: &u8 = &b"dirty_decay_ms:-1,muzzy_decay_ms:-1\0"[0];
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
