//! The TRL-quickstart examples (`examples/sft_trainer.rs`, `examples/dpo_trainer.rs`) run on the
//! tiny model: the same code `cargo run --example` and the out-of-workspace crate in
//! `examples/external` run.

vlmtune::use_retaining_allocator!();

#[path = "../examples/sft_trainer.rs"]
mod sft_trainer;

#[path = "../examples/dpo_trainer.rs"]
mod dpo_trainer;

fn fixture(rel: &str) -> String {
    format!("{}/tests/fixtures/{rel}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn sft_trainer_example_trains_and_saves_an_adapter() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().display().to_string();
    let losses =
        sft_trainer::sft(&fixture("tiny-smolvlm"), &fixture("sft/data.jsonl"), &dir).unwrap();
    assert_eq!(losses.len(), 6);
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
    assert_trained(&out.path().join("final"));
}

/// The saved adapter's `lora_B` matrices (zero at initialisation) moved.
fn assert_trained(adapter: &std::path::Path) {
    let files = vlmtune_quant::SafetensorsFiles::open(&[adapter.join("adapter_model.safetensors")])
        .unwrap();
    let b: Vec<String> = files
        .keys()
        .into_iter()
        .filter(|k| k.contains("lora_B"))
        .collect();
    assert!(!b.is_empty());
    for key in b {
        let (values, _) = files.read_f32(&key).unwrap();
        assert!(values.iter().any(|v| *v != 0.0), "{key} did not train");
    }
}

#[test]
fn dpo_trainer_example_trains_and_saves_an_adapter() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().display().to_string();
    let losses =
        dpo_trainer::dpo(&fixture("tiny-smolvlm"), &fixture("dpo/data.jsonl"), &dir).unwrap();
    assert_eq!(losses.len(), 4);
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
    assert_trained(&out.path().join("final"));
}
