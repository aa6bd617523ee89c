//! The `vlmtune` subcommands, one file each.

pub mod generate;
pub mod inspect;
pub mod merge;
