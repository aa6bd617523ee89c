//! The `vlmtune` subcommands, one file each.

pub mod batch;
pub mod dpo;
pub mod eval;
pub mod generate;
pub mod inspect;
pub mod merge;
pub mod quant;
pub mod sft;
