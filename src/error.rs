//! The error type of the facade: any workspace crate's error.

/// An error from any part of vlmtune.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Model loading or running.
    #[error(transparent)]
    Model(#[from] vlmtune_model::ModelError),
    /// Processor or data.
    #[error(transparent)]
    Data(#[from] vlmtune_data::DataError),
    /// Adapters.
    #[error(transparent)]
    Peft(#[from] vlmtune_peft::PeftError),
    /// Weight storage.
    #[error(transparent)]
    Quant(#[from] vlmtune_quant::QuantError),
    /// Training.
    #[error(transparent)]
    Train(#[from] vlmtune_train::TrainError),
    /// A job config file is invalid.
    #[error("{0}")]
    Config(String),
}

/// The result type of the facade.
pub type Result<T, E = Error> = std::result::Result<T, E>;
