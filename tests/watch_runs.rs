//! Runs you can watch: `report_to = ["tensorboard"]` writes TensorBoard events with
//! transformers' tags and `metrics.jsonl`'s values; `curves.png` is drawn at every save and at
//! the end; `vlmtune plot` draws it from `metrics.jsonl` at any time.

mod common;

use std::process::Command;

use common::{fixture_path, AB};
use vlmtune::jobs::sft::{run_sft, SftJobConfig};
use vlmtune_train::tensorboard::read_scalars;

fn png_size(path: &std::path::Path) -> (u32, u32) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[1..4], b"PNG", "{}", path.display());
    let be = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
    (be(16), be(20))
}

#[test]
fn tensorboard_events_and_curves_of_a_run() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = SftJobConfig::default();
    c.model.name = fixture_path("tiny-smolvlm").display().to_string();
    c.dataset.source = fixture_path("sft/data.jsonl").display().to_string();
    c.training.output_dir = dir.path().join("run");
    c.training.max_steps = 6;
    c.training.per_device_train_batch_size = 1;
    c.training.logging_steps = 2;
    c.training.save_steps = 3;
    c.training.progress_bar = false;
    c.training.report_to = vec!["tensorboard".into()];
    run_sft::<AB>(&c, Default::default()).unwrap();

    let run = dir.path().join("run");
    let events: Vec<_> = std::fs::read_dir(run.join("runs"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(events[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with("events.out.tfevents."));
    let scalars = read_scalars(&events[0]).unwrap();
    let metrics = vlmtune_train::curves::read_metrics(&run.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.len(), 3);
    for record in &metrics {
        let step = record["step"].as_u64().unwrap();
        for (key, tag) in [
            ("loss", "train/loss"),
            ("learning_rate", "train/learning_rate"),
            ("grad_norm", "train/grad_norm"),
            ("mean_token_accuracy", "train/mean_token_accuracy"),
            ("epoch", "train/epoch"),
        ] {
            let logged = record[key].as_f64().unwrap() as f32;
            let found = scalars
                .iter()
                .find(|s| s.tag == tag && s.step == step)
                .unwrap_or_else(|| panic!("no {tag} at step {step}: {scalars:?}"));
            assert_eq!(found.value, logged, "{tag} at step {step}");
        }
    }
    assert_eq!(png_size(&run.join("curves.png")), (1400, 840));

    let out = dir.path().join("again.png");
    let status = Command::new(env!("CARGO_BIN_EXE_vlmtune"))
        .arg("plot")
        .arg(&run)
        .arg("--out")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(png_size(&out), (1400, 840));
    let err = Command::new(env!("CARGO_BIN_EXE_vlmtune"))
        .args(["plot", "/nonexistent-run"])
        .output()
        .unwrap();
    assert!(!err.status.success());
    assert!(String::from_utf8_lossy(&err.stderr).contains("/nonexistent-run/metrics.jsonl"));
}
