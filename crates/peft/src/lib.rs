//! # vlmtune-peft
//!
//! The adaptable [`Linear`] layer that every projection of the model is built from, and
//! path-aware parameter walks ([`named_params`], [`param_values`]).

pub mod error;
pub mod linear;
pub mod params;

pub use error::{PeftError, Result};
pub use linear::Linear;
pub use params::{named_params, param_values, NamedParam, PathTracker};
