//! The error type of `vlmtune-peft`.

use std::path::PathBuf;

/// Everything that can go wrong in adapter handling.
#[derive(Debug, thiserror::Error)]
pub enum PeftError {
    /// Reading or writing weights failed.
    #[error(transparent)]
    Weights(#[from] vlmtune_quant::QuantError),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A LoRA setting is invalid or unsupported.
    #[error("LoRA config field `{field}`: {message}")]
    Config {
        /// The field.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// `adapter_config.json` has an invalid or unsupported field.
    #[error("{path}: field `{field}`: {message}")]
    ConfigFile {
        /// The file.
        path: PathBuf,
        /// The field.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The targets select no module of the model.
    #[error("target_modules {selector} match no Linear module of the model")]
    NoTargets {
        /// The selector, as JSON.
        selector: String,
    },
    /// A `modules_to_save` entry names no Linear module.
    #[error("modules_to_save entry `{name}` matches no Linear module (only Linear layers such as lm_head can be saved)")]
    ModuleToSave {
        /// The entry.
        name: String,
    },
    /// An adapter name is unknown or already taken.
    #[error("adapter `{name}`: {message}")]
    Adapter {
        /// The adapter.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// A saved adapter does not fit the model or its own config.
    #[error("{path}: {message}")]
    AdapterFile {
        /// The adapter file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// An operation does not fit the layer's state (merge twice, ...).
    #[error("{0}")]
    State(String),
}

/// The result type of `vlmtune-peft`.
pub type Result<T, E = PeftError> = std::result::Result<T, E>;
