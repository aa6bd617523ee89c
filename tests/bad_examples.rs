//! Bad dataset rows: an error naming the dataset file and row (`on_bad_example = "error"`, the
//! default), or left out and counted (`"skip"`), for SFT and DPO data, at load time (rows that
//! do not parse, images that are no image) and at encoding time (pixel data that does not
//! decode).

mod common;

use std::path::{Path, PathBuf};

use common::fixture_path;
use vlmtune::jobs::sft::{run_sft, SftJobConfig};
use vlmtune_data::dataset::{load_preference, load_sft};
use vlmtune_data::loader::BatchEncoder;
use vlmtune_data::{
    CollatorConfig, DatasetFormat, DatasetSource, OnBadExample, PreferenceCollator, Processor,
    SftCollator,
};

const PROMPT: &str = r#""prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "q"}]}]"#;

fn sft_row(image: &str) -> String {
    format!(
        r#"{{"images": ["{image}"], {PROMPT}, "completion": [{{"role": "assistant", "content": [{{"type": "text", "text": "a"}}]}}]}}"#
    )
}

fn dpo_row(image: &str) -> String {
    format!(r#"{{"images": ["{image}"], {PROMPT}, "chosen": "yes", "rejected": "no"}}"#)
}

/// A folder with a good image, one that is no image at all and one whose pixel data is cut
/// off after the header (it passes the load-time header check and fails to decode).
fn images(dir: &Path) {
    let png = std::fs::read(fixture_path("sft/images/gray.png")).unwrap();
    std::fs::write(dir.join("good.png"), &png).unwrap();
    std::fs::write(dir.join("broken.png"), b"not an image").unwrap();
    std::fs::write(dir.join("truncated.png"), &png[..png.len().min(60)]).unwrap();
}

/// Lines 1 and 6 good, 2 not JSON, 3 without a completion, 4 no image, 5 cut-off pixels,
/// 7 not UTF-8.
fn sft_file(dir: &Path) -> PathBuf {
    images(dir);
    let mut text = [
        sft_row("good.png"),
        "{not json".into(),
        format!(r#"{{"images": ["good.png"], {PROMPT}}}"#),
        sft_row("broken.png"),
        sft_row("truncated.png"),
        sft_row("good.png"),
    ]
    .join("\n")
    .into_bytes();
    text.extend_from_slice(b"\n{\"prompt\": \"\xff\xfe\"}\n");
    let path = dir.join("data.jsonl");
    std::fs::write(&path, text).unwrap();
    path
}

fn collator() -> SftCollator {
    SftCollator::new(
        Processor::from_dir(&fixture_path("tiny-smolvlm")).unwrap(),
        CollatorConfig::default(),
    )
}

#[test]
fn sft_rows_error_naming_file_and_row_or_are_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let path = sft_file(dir.path());
    let source = DatasetSource::Path(path.clone());
    let format = DatasetFormat::default();
    let err = load_sft(&source, &format, "train", OnBadExample::Error)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("{}:2", path.display())) && err.contains("invalid JSON"),
        "{err}"
    );

    let loaded = load_sft(&source, &format, "train", OnBadExample::Skip).unwrap();
    let origins: Vec<&str> = loaded
        .examples
        .iter()
        .map(|e| e.origin.rsplit(':').next().unwrap())
        .collect();
    assert_eq!(origins, ["1", "5", "6"]);
    let why: Vec<String> = loaded.skipped.iter().map(|e| e.to_string()).collect();
    assert_eq!(why.len(), 4, "{why:?}");
    for (line, what) in [
        (2, "invalid JSON"),
        (3, "completion"),
        (4, "broken.png"),
        (7, "JSON"),
    ] {
        let entry = &why[[2, 3, 4, 7].iter().position(|l| *l == line).unwrap()];
        assert!(
            entry.contains(&format!("{}:{line}", path.display())) && entry.contains(what),
            "line {line}: {entry}"
        );
    }

    // The cut-off image fails when the batch is encoded: named by its row, or skipped once.
    let batch: Vec<(usize, _)> = loaded.examples.iter().enumerate().collect();
    let strict = collator();
    let err = strict.encode_batch(&batch).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!("example {}:5: image ", path.display()))
            && err.contains("truncated.png"),
        "{err}"
    );
    let mut lenient = collator();
    lenient.on_bad_example = OnBadExample::Skip;
    for _ in 0..2 {
        let encoded = lenient.encode_batch(&batch).unwrap();
        assert_eq!(encoded.batch_size, 2);
        assert_eq!(encoded.indices, [0, 2]);
    }
    assert_eq!(lenient.bad_examples(), 1, "counted once over two epochs");
}

#[test]
fn dpo_rows_follow_the_same_rules() {
    let dir = tempfile::tempdir().unwrap();
    images(dir.path());
    let path = dir.path().join("pairs.jsonl");
    let rows = [
        dpo_row("good.png"),
        dpo_row("broken.png"),
        dpo_row("truncated.png"),
    ];
    std::fs::write(&path, rows.join("\n")).unwrap();
    let source = DatasetSource::Path(path.clone());
    let format = DatasetFormat::default();
    let err = load_preference(&source, &format, "train", OnBadExample::Error)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("{}:2", path.display())) && err.contains("broken.png"),
        "{err}"
    );
    let loaded = load_preference(&source, &format, "train", OnBadExample::Skip).unwrap();
    assert_eq!((loaded.examples.len(), loaded.skipped.len()), (2, 1));
    let batch: Vec<(usize, _)> = loaded.examples.iter().enumerate().collect();
    let mut sft = collator();
    let err = PreferenceCollator { sft: collator() }
        .encode_batch(&batch)
        .unwrap_err()
        .to_string();
    assert!(err.contains(&format!("{}:3", path.display())), "{err}");
    sft.on_bad_example = OnBadExample::Skip;
    let lenient = PreferenceCollator { sft };
    assert_eq!(lenient.encode_batch(&batch).unwrap().pairs.len(), 1);
    assert_eq!(lenient.sft.bad_examples(), 1);
}

#[test]
fn a_job_with_bad_rows_fails_by_default_and_reports_what_it_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let path = sft_file(dir.path());
    let mut config = SftJobConfig::default();
    config.model.name = fixture_path("tiny-smolvlm").display().to_string();
    config.dataset.source = path.display().to_string();
    config.training.output_dir = dir.path().join("run");
    config.training.max_steps = 1;
    config.training.save_steps = 0;
    config.training.progress_bar = false;
    config.eval_max_new_tokens = 2;
    let err = run_sft::<vlmtune::backend::CpuBackend>(&config, Default::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains(&format!("{}:2", path.display())), "{err}");
    config.dataset.on_bad_example = OnBadExample::Skip;
    let report = run_sft::<vlmtune::backend::CpuBackend>(&config, Default::default()).unwrap();
    assert_eq!(report.losses.len(), 1);
    assert_eq!(
        report.bad_examples, 5,
        "4 rows at load, 1 image at encoding"
    );
}

#[test]
fn parquet_rows_written_by_datasets_name_their_row() {
    let path = fixture_path("data/chartqa_like.parquet");
    let source = DatasetSource::Path(path.clone());
    let format = vlmtune_data::FormatKind::ChartQa.format();
    let err = load_sft(&source, &format, "train", OnBadExample::Error)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("{}:row 1", path.display())) && err.contains("decode"),
        "{err}"
    );
    let loaded = load_sft(&source, &format, "train", OnBadExample::Skip).unwrap();
    assert_eq!((loaded.examples.len(), loaded.skipped.len()), (2, 1));
    let batch: Vec<(usize, _)> = loaded.examples.iter().enumerate().collect();
    let encoded = collator().encode_batch(&batch).unwrap();
    assert_eq!(encoded.batch_size, 2);
    assert!(encoded.pixels.is_some());
}
