//! # vlmtune-data
//!
//! Everything between raw data and model inputs:
//!
//! * [`processor`]: the SmolVLM processor (tokenizer, chat template, PIL-exact image
//!   processing, `<image>` expansion), configured from a checkpoint's files.
//! * [`dataset`]: TRL-format examples from JSONL + images, Hugging Face parquet (local or
//!   Hub), and seeded synthetic charts.
//! * [`collate`]: prompt/completion split, labels, truncation and padding ([`SftCollator`]).
//! * [`loader`]: seeded per-epoch batches encoded on background threads.

pub mod collate;
pub mod dataset;
pub mod error;
pub mod loader;
pub mod preference;
pub mod processor;
pub mod shard;

pub use collate::{CollatorConfig, EncodedExample, SftCollator, TooLong, TrainBatch, IGNORE_INDEX};
pub use dataset::{
    Conversation, DatasetFormat, DatasetSource, FormatKind, ImageSource, Loaded, OnBadExample,
    PreferenceExample, SftExample,
};
pub use error::{DataError, Result};
pub use loader::{epoch_batches, BatchEncoder, LoaderConfig};
pub use preference::{EncodedPair, PreferenceBatch, PreferenceCollator};
pub use processor::{BatchEncoding, Message, PixelValues, ProcessOptions, Processor};
pub use shard::Shard;
