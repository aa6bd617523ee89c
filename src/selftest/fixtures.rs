//! Reading the committed fixtures and measuring distances to them (shared by the selftest's
//! checks and, for the error measures, by the test suite).

use std::path::Path;

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use vlmtune_model::{PixelBatch, TokenBatch};
use vlmtune_quant::SafetensorsFiles;

use crate::error::{Error, Result};

/// A safetensors file of the fixtures folder.
pub struct Fixture(pub SafetensorsFiles);

impl Fixture {
    /// Opens `fixtures/rel`.
    pub fn open(fixtures: &Path, rel: &str) -> Result<Self> {
        Ok(Self(SafetensorsFiles::open(&[fixtures.join(rel)])?))
    }

    /// A float tensor and its shape.
    pub fn f32(&self, key: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        Ok(self.0.read_f32(key)?)
    }

    /// An integer tensor and its shape.
    pub fn i64(&self, key: &str) -> Result<(Vec<i64>, Vec<usize>)> {
        Ok(self.0.read_i64(key)?)
    }

    /// The tensor names starting with `prefix`, sorted.
    pub fn keys_with_prefix(&self, prefix: &str) -> Vec<String> {
        let mut keys: Vec<String> = self
            .0
            .keys()
            .into_iter()
            .filter(|k| k.starts_with(prefix))
            .collect();
        keys.sort();
        keys
    }
}

/// A JSON fixture.
pub fn json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
}

/// A tensor's values on the host, as f32 (whatever the backend computes in).
pub fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Result<Vec<f32>> {
    t.into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .map_err(|e| Error::Config(format!("reading a tensor back: {e:?}")))
}

/// Largest absolute difference; infinite when the lengths differ.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    a.iter()
        .zip(b)
        .map(|(x, y)| f64::from((x - y).abs()))
        .fold(0.0, f64::max)
}

/// `|got - want| / |want|`.
pub fn relative(got: f64, want: f64) -> f64 {
    (got - want).abs() / want.abs().max(1e-12)
}

/// `‖a - b‖ / ‖b‖` (the whole tensor's relative error); infinite when the lengths differ.
pub fn relative_l2(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    let diff: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(x - y).powi(2))
        .sum::<f64>()
        .sqrt();
    diff / b
        .iter()
        .map(|v| f64::from(*v).powi(2))
        .sum::<f64>()
        .sqrt()
        .max(1e-12)
}

/// Max abs logit error over the attended positions (`[positions, vocab]` flattened).
pub fn masked_logits_error(got: &[f32], want: &[f32], mask: &[u8]) -> f64 {
    if got.len() != want.len() || mask.is_empty() {
        return f64::INFINITY;
    }
    let vocab = want.len() / mask.len();
    mask.iter()
        .enumerate()
        .filter(|(_, m)| **m == 1)
        .map(|(p, _)| {
            let r = p * vocab..(p + 1) * vocab;
            max_abs_diff(&got[r.clone()], &want[r])
        })
        .fold(0.0, f64::max)
}

/// The padded multi-tile batch of `model/<kind>.safetensors`: tokens, pixels and the masked
/// labels.
pub fn model_batch(fixtures: &Path, kind: &str) -> Result<(TokenBatch, PixelBatch, Vec<i64>)> {
    let fx = Fixture::open(fixtures, &format!("model/{kind}.safetensors"))?;
    let (ids, shape) = fx.i64("batch_input_ids")?;
    let (mask, _) = fx.i64("batch_attention_mask")?;
    let (pixels, pshape) = fx.f32("batch_pixel_values")?;
    let (pmask, _) = fx.i64("batch_pixel_attention_mask")?;
    let (labels, _) = fx.i64("batch_labels")?;
    let shape5: [usize; 5] = pshape
        .try_into()
        .map_err(|_| Error::Config("batch_pixel_values is not 5-d".into()))?;
    Ok((
        TokenBatch {
            input_ids: ids.iter().map(|i| *i as u32).collect(),
            attention_mask: mask.iter().map(|m| *m as u8).collect(),
            batch_size: shape[0],
            seq_len: shape[1],
        },
        PixelBatch {
            pixel_values: pixels,
            shape: shape5,
            pixel_attention_mask: Some(pmask.iter().map(|m| *m as u8).collect()),
        },
        labels,
    ))
}
