//! The `vlmtune` subcommands, one file each.

pub mod inspect;
