//! The `vlmtune` subcommands, one file each.

pub mod batch;
pub mod distributed;
pub mod dpo;
pub mod eval;
pub mod generate;
pub mod inspect;
pub mod merge;
pub mod plot;
pub mod quant;
pub mod run_control;
pub mod selftest;
pub mod sft;
pub mod trl_args;

/// The summary line of examples left out by `on_bad_example = "skip"` (empty when none were).
pub fn bad_examples_line(count: usize) -> String {
    if count == 0 {
        String::new()
    } else {
        format!("bad examples skipped: {count} (on_bad_example = \"skip\"; each was logged)\n")
    }
}

/// Where the trained model went: `saved to DIR`, or, on another rank of a data-parallel run,
/// that rank 0 (on node 0) saved it there.
pub fn saved_line(rank: usize, dir: &std::path::Path) -> String {
    if rank == 0 {
        format!("saved to {}", dir.display())
    } else {
        format!(
            "rank {rank} done; rank 0 (node 0) evaluated and saved to {}",
            dir.display()
        )
    }
}
