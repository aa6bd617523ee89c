//! # vlmtune-data
//!
//! Everything between raw data and model inputs:
//!
//! * [`processor`]: the SmolVLM processor (tokenizer, chat template, PIL-exact image
//!   processing, `<image>` expansion), configured from a checkpoint's files.

pub mod error;
pub mod processor;

pub use error::{DataError, Result};
pub use processor::{BatchEncoding, Message, PixelValues, ProcessOptions, Processor};
