//! The library quickstarts, built against vlmtune as a path dependency.

vlmtune::use_retaining_allocator!();

#[path = "../../sft_trainer.rs"]
mod sft_trainer;

#[path = "../../dpo_trainer.rs"]
mod dpo_trainer;

#[test]
fn the_quickstarts_run_from_outside_the_workspace() {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures");
    let out = tempfile::tempdir().unwrap();
    let sft = sft_trainer::sft(
        &format!("{fixtures}/tiny-smolvlm"),
        &format!("{fixtures}/sft/data.jsonl"),
        &out.path().join("sft").display().to_string(),
    )
    .unwrap();
    assert!(sft.iter().all(|l| l.is_finite()));
    assert!(out.path().join("sft/final/adapter_model.safetensors").is_file());
    let dpo = dpo_trainer::dpo(
        &format!("{fixtures}/tiny-smolvlm"),
        &format!("{fixtures}/dpo/data.jsonl"),
        &out.path().join("dpo").display().to_string(),
    )
    .unwrap();
    assert!(dpo.iter().all(|l| l.is_finite()));
    assert!(out.path().join("dpo/final/adapter_model.safetensors").is_file());
}
