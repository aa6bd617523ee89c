//! DPO after the SFT main job, on synthetic chart pairs (chosen = the right answer,
//! rejected = a plausible wrong one): prints held-out reward accuracy and answer accuracy
//! before and after. Runs the SFT main job first if its output is missing.
//!
//! `cargo run --release --example dpo`

vlmtune::use_retaining_allocator!();

use vlmtune::backend::CpuBackend;
use vlmtune::jobs::dpo::{run_dpo, DpoJobConfig};
use vlmtune::jobs::sft::{run_sft, SftJobConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dpo = DpoJobConfig::builtin();
    if !std::path::Path::new(&dpo.model.name)
        .join("model.safetensors")
        .is_file()
    {
        println!("running the SFT main job first ({})", dpo.model.name);
        let sft = run_sft::<CpuBackend>(&SftJobConfig::builtin(), Default::default())?;
        println!(
            "SFT: held-out answer accuracy {:?} -> {:?}",
            sft.accuracy_before, sft.accuracy_after
        );
    }
    let report = run_dpo::<CpuBackend>(&dpo, Default::default())?;
    for key in ["rewards/accuracies", "accuracy"] {
        println!(
            "DPO held-out {key}: {:.3} -> {:.3}",
            report.before.get(key).copied().unwrap_or(f64::NAN),
            report.after.get(key).copied().unwrap_or(f64::NAN)
        );
    }
    println!("adapter saved to {}", report.saved_to.display());
    Ok(())
}
