//! # vlmtune-peft
//!
//! PEFT's LoRA for vlmtune: every projection of the model is a [`Linear`] whose frozen base
//! weight can carry named LoRA / DoRA adapters and `modules_to_save` copies.
//!
//! * [`LoraConfig`]: PEFT's field names and defaults (`r`, `lora_alpha`, `target_modules`,
//!   `use_rslora`, `use_dora`, `init_lora_weights`, `layers_to_transform`, ...), matched with
//!   PEFT's rules ([`target`]).
//! * [`add_adapter`], [`set_adapter`], [`set_adapters_enabled`], [`delete_adapter`],
//!   [`merge_and_unload`] over any model implementing [`LinearModules`].
//! * [`save_adapter`] / [`load_adapter`]: `adapter_config.json` + `adapter_model.safetensors`
//!   that `PeftModel.from_pretrained` loads, and PEFT's files loaded back.
//! * [`presets`]: target choices for vision-language models.

pub mod adapters;
pub mod config;
pub mod dropout;
pub mod error;
pub mod io;
pub mod linear;
pub mod lora;
pub mod memory;
pub mod params;
pub mod presets;
pub mod target;

pub use adapters::{
    active_adapter, adapter_names, add_adapter, delete_adapter, merge_adapter, merge_and_unload,
    quantized_paths, set_adapter, set_adapters_enabled, trainable_report, unmerge_adapter,
    LinearModules, TrainableReport,
};
pub use config::{
    InitLoraWeights, LayerIndexes, LoraConfig, ModuleSelector, PEFT_FIELDS_NOT_MODELLED,
};
pub use error::{PeftError, Result};
pub use io::{load_adapter, save_adapter};
pub use linear::Linear;
pub use lora::LoraAdapter;
pub use memory::{memory_report, MemoryReport};
pub use params::{named_params, param_values, set_requires_grad, NamedParam, PathTracker};
pub use presets::LoraPreset;
