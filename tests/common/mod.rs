//! Helpers shared by the fixture-parity tests.
#![allow(dead_code)]

vlmtune::use_retaining_allocator!();

use std::path::PathBuf;

use vlmtune_model::{PixelBatch, TokenBatch};
use vlmtune_quant::SafetensorsFiles;

/// The CPU backend the tests run on.
pub type B = burn::backend::Flex;
/// The autodiff CPU backend.
pub type AB = burn::backend::Autodiff<B>;

/// `tests/fixtures/<rel>`.
pub fn fixture_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

/// A fixture safetensors file.
pub struct Fixture(pub SafetensorsFiles);

impl Fixture {
    pub fn open(rel: &str) -> Self {
        Self(SafetensorsFiles::open(&[fixture_path(rel)]).expect("fixture opens"))
    }
    pub fn f32(&self, key: &str) -> (Vec<f32>, Vec<usize>) {
        self.0
            .read_f32(key)
            .unwrap_or_else(|e| panic!("{key}: {e}"))
    }
    pub fn i64(&self, key: &str) -> (Vec<i64>, Vec<usize>) {
        self.0
            .read_i64(key)
            .unwrap_or_else(|e| panic!("{key}: {e}"))
    }
    pub fn has(&self, key: &str) -> bool {
        self.0.contains(key)
    }
}

/// Largest absolute difference of two equally long slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Reads a float tensor back to the host.
pub fn host<const D: usize>(t: burn::tensor::Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec::<f32>().unwrap()
}

/// The padded multi-tile batch of `tests/fixtures/model/<kind>.safetensors`: tokens, pixels
/// and the masked labels (the selftest's reader).
pub fn model_batch(kind: &str) -> (TokenBatch, PixelBatch, Vec<i64>) {
    vlmtune::selftest::fixtures::model_batch(&fixture_path(""), kind).expect("fixture batch")
}

/// Max abs logit error over the positions with attention (`[positions, vocab]` flattened).
pub fn masked_logits_error(got: &[f32], want: &[f32], mask: &[u8]) -> f32 {
    assert_eq!(got.len(), want.len(), "length mismatch");
    vlmtune::selftest::fixtures::masked_logits_error(got, want, mask) as f32
}

/// The training arguments of the one-step parity fixtures (`sft_fixtures.py`,
/// `dpo_fixtures.py`), as `vlmtune selftest` uses them.
#[allow(unused_imports)]
pub use vlmtune::selftest::one_step_args;

/// `vlmtune sft --config CONFIG --output-dir OUTPUT EXTRA..` (warnings only, stdout dropped,
/// stderr piped), ready to spawn.
pub fn sft_command(
    config: &std::path::Path,
    output: &std::path::Path,
    extra: &[&str],
) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_vlmtune"));
    command
        .args(["sft", "--config"])
        .arg(config)
        .arg("--output-dir")
        .arg(output)
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    command
}
