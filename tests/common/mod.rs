//! Helpers shared by the fixture-parity tests.
#![allow(dead_code)]

use std::path::PathBuf;

use vlmtune_quant::SafetensorsFiles;

/// The CPU backend the tests run on.
pub type B = burn::backend::NdArray;
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
