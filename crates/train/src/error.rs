//! The error type of `vlmtune-train`.

use std::path::PathBuf;

/// Everything that can go wrong while training or evaluating.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A training setting is invalid.
    #[error("training setting `{field}`: {message}")]
    Config {
        /// The field.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// A config file could not be read or parsed.
    #[error("{path}: {message}")]
    ConfigFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A checkpoint is missing or unusable.
    #[error("checkpoint {path}: {message}")]
    Checkpoint {
        /// The checkpoint folder.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The model failed.
    #[error(transparent)]
    Model(#[from] vlmtune_model::ModelError),
    /// The data pipeline failed.
    #[error(transparent)]
    Data(#[from] vlmtune_data::DataError),
    /// Adapters failed.
    #[error(transparent)]
    Peft(#[from] vlmtune_peft::PeftError),
    /// Weight files failed.
    #[error(transparent)]
    Quant(#[from] vlmtune_quant::QuantError),
    /// A value could not be read back from the device.
    #[error("could not read a value back from the device: {0}")]
    Readback(String),
    /// Training diverged.
    #[error("the loss became {value} at step {step}")]
    NonFinite {
        /// The optimizer step.
        step: usize,
        /// The loss value.
        value: f64,
    },
}

/// The result type of `vlmtune-train`.
pub type Result<T, E = TrainError> = std::result::Result<T, E>;
