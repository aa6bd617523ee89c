//! End-to-end jobs (what the CLI subcommands run), usable from Rust too.

pub mod dpo;
pub mod sft;
