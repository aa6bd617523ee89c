//! Property tests of the parsers that read what users and the Hub hand us: config files
//! (TOML, YAML), JSONL and parquet rows, chat-template rendering of arbitrary messages,
//! safetensors headers and image decoding. Arbitrary or mutated bytes must give `Ok` or an
//! error, never a panic or an abort. Bounded case counts keep them in `cargo test`.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::fixture_path;
use proptest::prelude::*;
use proptest::test_runner::RngSeed;
use vlmtune::config_file::ConfigDocument;
use vlmtune::jobs::dpo::DpoJobConfig;
use vlmtune::jobs::sft::SftJobConfig;
use vlmtune_data::dataset::{jsonl, parquet};
use vlmtune_data::processor::{decode_image, Content, ContentPart, Message};
use vlmtune_data::{
    CollatorConfig, DatasetFormat, DatasetSource, ImageSource, OnBadExample, Processor, SftCollator,
};

/// `cases` cases from a fixed seed, so that CI runs the same inputs every time (a new finding
/// is a bug to fix, not a CI run that fails by chance). To explore further, set
/// `PROPTEST_RNG_SEED=<u64>` and `VLMTUNE_FUZZ_CASES=<n>`.
fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("VLMTUNE_FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(cases);
    let rng_seed = match std::env::var("PROPTEST_RNG_SEED") {
        Ok(_) => ProptestConfig::default().rng_seed,
        Err(_) => RngSeed::Fixed(0x0076_6c6d_7475_6e65),
    };
    ProptestConfig {
        cases,
        rng_seed,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// `base` with up to 16 random byte edits (overwrite, insert, delete) at random places.
fn mutated(base: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec((any::<usize>(), 0u8..3, any::<u8>()), 1..16).prop_map(move |edits| {
        let mut bytes = base.clone();
        for (at, kind, byte) in edits {
            let i = at % (bytes.len() + 1);
            match kind {
                0 if i < bytes.len() => bytes[i] = byte,
                1 => bytes.insert(i, byte),
                _ if i < bytes.len() => {
                    bytes.remove(i);
                }
                _ => bytes.push(byte),
            }
        }
        bytes
    })
}

/// Mutations of `base`, or bytes with no structure at all.
fn bytes_like(base: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => mutated(base),
        1 => prop::collection::vec(any::<u8>(), 0..512),
    ]
}

fn read_config(name: &str, bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    let path = Path::new(name);
    if let Ok(doc) = ConfigDocument::parse(path, &text) {
        let sft = serde_json::to_value(SftJobConfig::schema()).unwrap();
        let _ = doc.deserialize::<SftJobConfig>(&sft);
        let dpo = serde_json::to_value(DpoJobConfig::schema()).unwrap();
        let _ = doc.deserialize::<DpoJobConfig>(&dpo);
    }
}

const YAML: &str = "model:\n  name: tiny\nlora:\n  r: 4\n  target_modules: [q_proj, v_proj]\n  rank_pattern: {q_proj: 8}\ntraining:\n  learning_rate: 1.0e-4\n  max_steps: 3\n  lr_scheduler_type: cosine\ndpo:\n  loss_type: [sigmoid, sft]\n  reference: {checkpoint: runs/x}\n";

fn example(name: &str) -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join(name)).unwrap()
}

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn toml_configs(bytes in bytes_like(example("examples/sft.toml"))) {
        read_config("sft.toml", &bytes);
    }

    #[test]
    fn yaml_configs(bytes in bytes_like(YAML.as_bytes().to_vec())) {
        read_config("sft.yaml", &bytes);
    }

    #[test]
    fn chat_template_of_arbitrary_messages(
        messages in prop::collection::vec(
            (
                prop_oneof![Just("user".to_string()), Just("assistant".to_string()),
                            Just("system".to_string()), ".{0,12}"],
                prop_oneof![
                    ".{0,40}".prop_map(Content::Text),
                    prop::collection::vec(
                        prop_oneof![
                            Just(ContentPart::Image),
                            ".{0,40}".prop_map(|text| ContentPart::Text { text }),
                        ],
                        0..4,
                    )
                    .prop_map(Content::Parts),
                ],
            )
                .prop_map(|(role, content)| Message { role, content }),
            0..6,
        ),
        generation_prompt in any::<bool>(),
    ) {
        let processor = processor();
        if let Ok(text) = processor.apply_chat_template(&messages, generation_prompt) {
            let _ = processor.tokenizer.encode(&text, false);
        }
    }
}

fn processor() -> Processor {
    Processor::from_dir(&fixture_path("tiny-smolvlm")).unwrap()
}

proptest! {
    #![proptest_config(config(384))]

    #[test]
    fn jsonl_rows(bytes in bytes_like(std::fs::read(fixture_path("sft/data.jsonl")).unwrap())) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.jsonl");
        std::fs::write(&path, &bytes).unwrap();
        let _ = jsonl::read_rows(&path);
        let source = DatasetSource::Path(path);
        let _ = vlmtune_data::dataset::load_sft(&source, &DatasetFormat::default(), "train", OnBadExample::Skip);
        let _ = vlmtune_data::dataset::load_preference(&source, &DatasetFormat::default(), "train", OnBadExample::Skip);
    }

    #[test]
    fn parquet_rows(bytes in bytes_like(std::fs::read(fixture_path("data/chartqa_like.parquet")).unwrap())) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.parquet");
        std::fs::write(&path, &bytes).unwrap();
        let _ = parquet::read_rows(&path);
        let format = vlmtune_data::FormatKind::ChartQa.format();
        let _ = vlmtune_data::dataset::load_sft(&DatasetSource::Path(path), &format, "train", OnBadExample::Skip);
    }

    #[test]
    fn safetensors_headers(bytes in bytes_like(small_safetensors())) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        std::fs::write(&path, &bytes).unwrap();
        if let Ok(files) = vlmtune_quant::SafetensorsFiles::open(&[path]) {
            for key in files.keys() {
                let _ = files.read_f32(&key);
            }
        }
    }

    #[test]
    fn images(bytes in prop_oneof![
        bytes_like(std::fs::read(fixture_path("sft/images/gray.png")).unwrap()),
        bytes_like(std::fs::read(fixture_path("processor/images/photo.jpg")).unwrap()),
        bytes_like(std::fs::read(fixture_path("processor/images/chart.webp")).unwrap()),
    ]) {
        let _ = decode_image(&bytes, "fuzz");
        let source = ImageSource::Bytes { bytes: Arc::new(bytes), origin: "fuzz".into() };
        let _ = source.check_header();
        let _ = collator().process_images(&[source]);
    }
}

fn collator() -> SftCollator {
    SftCollator::new(processor(), CollatorConfig::default())
}

/// Three small tensors of two dtypes, as vlmtune writes them.
fn small_safetensors() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("small.safetensors");
    let tensors: Vec<vlmtune_quant::NamedTensor> = [
        ("a", vec![2, 3]),
        ("b.weight", vec![4]),
        ("c", vec![1, 1, 2]),
    ]
    .into_iter()
    .map(
        |(name, shape): (&str, Vec<usize>)| vlmtune_quant::NamedTensor {
            name: name.into(),
            values: (0..shape.iter().product::<usize>())
                .map(|v| v as f32)
                .collect(),
            shape,
        },
    )
    .collect();
    vlmtune_quant::write_safetensors(&path, &tensors, vlmtune_quant::SaveDtype::Bf16, None)
        .unwrap();
    std::fs::read(&path).unwrap()
}

/// Nesting deep enough to overflow a recursive parser's stack is an error.
#[test]
fn deeply_nested_documents_are_errors() {
    for depth in [200, 100_000] {
        let open = "[".repeat(depth);
        read_config("sft.toml", format!("a = {open}").as_bytes());
        read_config("sft.yaml", open.as_bytes());
        read_config("sft.yaml", "a:\n".repeat(depth).as_bytes());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("deep.jsonl");
        std::fs::write(&path, format!("{{\"a\": {open}")).unwrap();
        assert!(jsonl::read_rows(&path).is_err());
    }
}

/// A JPEG whose header claims 65000x65000 pixels is refused before anything is allocated.
#[test]
fn a_decompression_bomb_is_an_error() {
    let mut jpeg = std::fs::read(fixture_path("processor/images/photo.jpg")).unwrap();
    let sof = jpeg
        .windows(2)
        .position(|w| w[0] == 0xFF && (w[1] == 0xC0 || w[1] == 0xC2))
        .expect("a start-of-frame marker");
    // Marker, length (2), precision (1), then height and width (2 bytes each, big-endian).
    jpeg[sof + 5..sof + 9].copy_from_slice(&[0xFD, 0xE8, 0xFD, 0xE8]);
    let err = decode_image(&jpeg, "bomb.jpg").unwrap_err().to_string();
    assert!(
        err.contains("bomb.jpg") && err.contains("65000x65000"),
        "{err}"
    );
}
