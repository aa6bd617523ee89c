//! The error type of `vlmtune-peft`.

/// Everything that can go wrong in adapter handling.
#[derive(Debug, thiserror::Error)]
pub enum PeftError {
    /// Reading or writing weights failed.
    #[error(transparent)]
    Weights(#[from] vlmtune_quant::QuantError),
}

/// The result type of `vlmtune-peft`.
pub type Result<T, E = PeftError> = std::result::Result<T, E>;
