//! The error type of `vlmtune-model`.

use std::path::PathBuf;

/// Everything that can go wrong while loading, running or saving a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A config file has a bad or unsupported field.
    #[error("{file}: field `{field}`: {message}")]
    Config {
        /// The file (or origin) of the config.
        file: String,
        /// The JSON path of the field.
        field: String,
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
    /// Weights could not be read or written (missing, unexpected or mis-shaped keys...).
    #[error(transparent)]
    Weights(#[from] vlmtune_quant::QuantError),
    /// The adapter layer failed.
    #[error(transparent)]
    Peft(#[from] vlmtune_peft::PeftError),
    /// A model could not be fetched from the Hugging Face Hub.
    #[error("could not fetch `{file}` of `{repo}` from the Hugging Face Hub: {message}")]
    Hub {
        /// The repo id.
        repo: String,
        /// The file.
        file: String,
        /// What went wrong.
        message: String,
    },
    /// The inputs of a forward pass are inconsistent.
    #[error("invalid model input: {0}")]
    Input(String),
    /// A tensor could not be read back from the device.
    #[error("could not read a tensor back from the device: {0}")]
    Readback(String),
    /// A model with quantised weights cannot be saved as a transformers checkpoint.
    #[error("`{0}` is stored quantised: save the model loaded without quantisation (adapters are saved on their own)")]
    QuantizedSave(String),
}

/// The result type of `vlmtune-model`.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;
