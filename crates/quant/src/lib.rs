//! # vlmtune-quant
//!
//! Storage of frozen base weights and the plumbing to read them:
//!
//! * [`store`]: safetensors files (single or sharded) read as f32 from F32/BF16/F16, and
//!   atomic safetensors writes.
//! * [`weights`]: [`Weights`], a cursor over a [`TensorSource`] (checkpoint or seeded random
//!   init) that modules use to build themselves by Hugging Face key.
//! * [`bnb`] / [`storage`]: bitsandbytes' int8, NF4/FP4 and double quantisation, bit for bit,
//!   and [`QuantizedWeight`], the compact device form dequantised for each matmul;
//!   [`QuantConfig`] (`BitsAndBytesConfig` names) decides per module path while loading;
//!   [`host_dequant`]: the CPU backend's dequantisation, on every core.
//!
//! ```
//! use vlmtune_quant::{Init, RandomInit, Weights};
//! type B = burn::backend::Flex;
//! let source = RandomInit::new(0);
//! let w = Weights::<B>::new(&source, &Default::default());
//! let t = w.pp("layer").tensor("weight", [2, 3], Init::Ones).unwrap();
//! assert_eq!(t.dims(), [2, 3]);
//! ```

pub mod autodiff;
pub mod bnb;
pub mod config;
pub mod error;
pub mod host_dequant;
pub mod storage;
pub mod store;
pub mod tables;
pub mod weights;

pub use autodiff::quantized_linear;
pub use bnb::FourBit;
pub use config::{QuantConfig, StorageFormat};
pub use error::{QuantError, Result};
pub use storage::QuantizedWeight;
pub use store::{write_atomic, write_safetensors, NamedTensor, SafetensorsFiles, SaveDtype};
pub use weights::{
    ensure_all_used, sample_init, stable_hash, Init, RandomInit, TensorSource, Weights,
};
