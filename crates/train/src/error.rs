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
    /// Too many optimizer steps in a row had non-finite losses or gradients.
    #[error("{steps} steps in a row up to step {step} had a non-finite loss or gradient (max_nonfinite_steps); the last good weights are saved in {}", checkpoint.display())]
    NonFinite {
        /// How many steps in a row.
        steps: usize,
        /// The last of them.
        step: usize,
        /// The checkpoint written.
        checkpoint: PathBuf,
    },
    /// A data-parallel rank failed, or the others did not answer.
    #[error("data-parallel training: {0}")]
    Distributed(String),
    /// Training was interrupted (SIGINT / SIGTERM) and checkpointed.
    #[error("interrupted after step {step}; checkpoint saved to {}; resume with `--resume-from-checkpoint true` (the same command and output_dir)", checkpoint.display())]
    Interrupted {
        /// The last completed optimizer step.
        step: usize,
        /// The checkpoint written.
        checkpoint: PathBuf,
    },
}

/// The result type of `vlmtune-train`.
pub type Result<T, E = TrainError> = std::result::Result<T, E>;
