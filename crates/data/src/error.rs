//! The error type of `vlmtune-data`.

use std::path::PathBuf;

/// Everything that can go wrong while reading data or processing inputs.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A config file has a bad field.
    #[error("{file}: field `{field}`: {message}")]
    Config {
        /// The file.
        file: PathBuf,
        /// The JSON path of the field.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The tokenizer could not be loaded or used.
    #[error("tokenizer {file}: {message}")]
    Tokenizer {
        /// The tokenizer file.
        file: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A special token the processor needs is not in the vocabulary.
    #[error("the tokenizer has no token `{token}` ({why})")]
    UnknownToken {
        /// The token text.
        token: String,
        /// Why it is needed.
        why: String,
    },
    /// The chat template could not be compiled or rendered.
    #[error("chat template: {0}")]
    Template(String),
    /// An image could not be decoded or is unusable.
    #[error("image {source_name}: {message}")]
    Image {
        /// Where the image came from (file, dataset row...).
        source_name: String,
        /// What is wrong.
        message: String,
    },
    /// A dataset is unusable (empty, malformed row...).
    #[error("dataset {source_name}: {message}")]
    Dataset {
        /// File (and row) or Hub id.
        source_name: String,
        /// What is wrong.
        message: String,
    },
    /// A sample does not fit the collator's limits.
    #[error("sample {origin}: {message}")]
    Sample {
        /// Where the sample came from.
        origin: String,
        /// What is wrong.
        message: String,
    },
    /// An example that cannot be encoded (an image that does not decode, a conversation the
    /// template cannot render), with the dataset file and row it came from.
    #[error("example {origin}: {source}")]
    BadExample {
        /// Dataset file and row.
        origin: String,
        /// What is wrong.
        source: Box<DataError>,
    },
    /// Text and images do not agree (number of `<image>` markers vs images, ...).
    #[error("{0}")]
    Mismatch(String),
}

/// The result type of `vlmtune-data`.
pub type Result<T, E = DataError> = std::result::Result<T, E>;
