//! The pixel-shuffle connector (SPEC §2): `s×s` neighbouring patches are stacked into one
//! token, then projected to the text width.

use burn::module::Module;
use burn::tensor::{backend::Backend, Tensor};
use vlmtune_peft::Linear;
use vlmtune_quant::Weights;

use crate::config::VlmConfig;
use crate::error::Result;

/// `modality_projection.proj`: `Dv·s² -> Dt`, no bias.
#[derive(Module, Debug)]
pub struct SimpleMlp<B: Backend> {
    /// The projection.
    pub proj: Linear<B>,
}

/// Pixel shuffle followed by the projection.
#[derive(Module, Debug)]
pub struct Connector<B: Backend> {
    /// The projection.
    pub modality_projection: SimpleMlp<B>,
    /// The shuffle factor `s`.
    pub scale_factor: usize,
}

impl<B: Backend> Connector<B> {
    /// Builds from `<prefix>.modality_projection.proj.weight`.
    pub fn load(w: &Weights<B>, c: &VlmConfig) -> Result<Self> {
        let s = c.scale_factor;
        let input = c.vision_config.hidden_size * s * s;
        Ok(Self {
            modality_projection: SimpleMlp {
                proj: Linear::load(
                    &w.pp("modality_projection").pp("proj"),
                    input,
                    c.text_config.hidden_size,
                    false,
                )?,
            },
            scale_factor: s,
        })
    }

    /// `[n, P, Dv] -> [n, P/s², Dt]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.modality_projection
            .proj
            .forward(pixel_shuffle(x, self.scale_factor))
    }
}

/// `[n, P, D] -> [n, P/s², D·s²]` exactly as `SmolVLMConnector.pixel_shuffle`: output token
/// `I·(w/s) + j` holds feature `m·(s·D) + k·D + d = x[(I·s+m)·w + (j·s+k), d]`.
pub fn pixel_shuffle<B: Backend>(x: Tensor<B, 3>, s: usize) -> Tensor<B, 3> {
    let [n, len, dim] = x.dims();
    let side = (len as f64).sqrt() as usize;
    let (h, w) = (side, side);
    x.reshape([n, h, w / s, dim * s])
        .permute([0, 2, 1, 3])
        .reshape([n, w / s, h / s, dim * s * s])
        .permute([0, 2, 1, 3])
        .reshape([n, len / (s * s), dim * s * s])
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    type B = burn::backend::Flex;

    #[test]
    fn pixel_shuffle_matches_index_formula() {
        let (n, side, dim, s) = (2usize, 4usize, 3usize, 2usize);
        let len = side * side;
        let values: Vec<f32> = (0..n * len * dim).map(|v| v as f32).collect();
        let x = Tensor::<B, 3>::from_data(
            TensorData::new(values.clone(), [n, len, dim]),
            &Default::default(),
        );
        let y = pixel_shuffle(x, s);
        assert_eq!(y.dims(), [n, len / 4, dim * 4]);
        let y = y.into_data().to_vec::<f32>().unwrap();
        let ws = side / s;
        for b in 0..n {
            for big_i in 0..side / s {
                for j in 0..ws {
                    for m in 0..s {
                        for k in 0..s {
                            for d in 0..dim {
                                let t = big_i * ws + j;
                                let f = m * (s * dim) + k * dim + d;
                                let src = (big_i * s + m) * side + (j * s + k);
                                let got = y[(b * (len / 4) + t) * dim * 4 + f];
                                assert_eq!(got, values[(b * len + src) * dim + d]);
                            }
                        }
                    }
                }
            }
        }
    }
}
