//! The error type of `vlmtune-quant`.

use std::path::PathBuf;

/// Everything that can go wrong while reading, writing or quantising weights.
#[derive(Debug, thiserror::Error)]
pub enum QuantError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file is not a valid safetensors file.
    #[error("{path}: not a valid safetensors file: {message}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// The model expects a weight that the checkpoint does not have.
    #[error("missing weight `{key}` (the model expects shape {expected:?})")]
    MissingKey {
        /// The checkpoint key.
        key: String,
        /// The shape the model expects.
        expected: Vec<usize>,
    },
    /// A weight has another shape than the model expects.
    #[error(
        "weight `{key}` has shape {found:?} in the checkpoint but the model expects {expected:?}"
    )]
    ShapeMismatch {
        /// The checkpoint key.
        key: String,
        /// The shape the model expects.
        expected: Vec<usize>,
        /// The shape in the checkpoint.
        found: Vec<usize>,
    },
    /// A weight is stored in a dtype vlmtune cannot read.
    #[error("weight `{key}` has dtype {dtype}, but only F32, BF16 and F16 are supported")]
    UnsupportedDtype {
        /// The checkpoint key.
        key: String,
        /// The dtype in the file.
        dtype: String,
    },
    /// The checkpoint holds weights that the model does not use.
    #[error("the checkpoint has {} weight(s) the model does not use: {}", keys.len(), keys.join(", "))]
    UnexpectedKeys {
        /// The unused keys.
        keys: Vec<String>,
    },
    /// A sharded checkpoint index is malformed.
    #[error("{path}: {message}")]
    Index {
        /// The index file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A quantisation setting is invalid.
    #[error("invalid quantisation setting `{field}`: {message}")]
    Config {
        /// The setting.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// A tensor could not be read back from the device.
    #[error("could not read tensor `{key}` back from the device: {message}")]
    Readback {
        /// Which tensor.
        key: String,
        /// What the backend said.
        message: String,
    },
}

/// The result type of `vlmtune-quant`.
pub type Result<T, E = QuantError> = std::result::Result<T, E>;
