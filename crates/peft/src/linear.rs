//! The one Linear layer of every projection in the model.

use burn::module::{Module, Param};
use burn::tensor::{backend::Backend, Tensor};
use vlmtune_quant::{Init, Weights};

use crate::error::Result;

/// `y = x·Wᵀ + b`, with `W: [out_features, in_features]` as PyTorch's `nn.Linear` stores it.
///
/// Field names are the Hugging Face ones, so a parameter's module path is its checkpoint key.
#[derive(Module, Debug)]
pub struct Linear<B: Backend> {
    /// `[out_features, in_features]`; frozen unless the layer is fully fine-tuned.
    pub weight: Param<Tensor<B, 2>>,
    /// `[out_features]`, when the layer has a bias.
    pub bias: Option<Param<Tensor<B, 1>>>,
}

impl<B: Backend> Linear<B> {
    /// Builds the layer from `<prefix>.weight` (and `<prefix>.bias` when `bias`).
    ///
    /// Random initialisation follows PyTorch's `nn.Linear` (uniform ±1/√in).
    pub fn load(
        w: &Weights<B>,
        in_features: usize,
        out_features: usize,
        bias: bool,
    ) -> Result<Self> {
        let bound = 1.0 / (in_features as f64).sqrt();
        let init = Init::Uniform { bound };
        Ok(Self {
            weight: w.param("weight", [out_features, in_features], init)?,
            bias: if bias {
                Some(w.param("bias", [out_features], init)?)
            } else {
                None
            },
        })
    }

    /// `in_features`.
    pub fn in_features(&self) -> usize {
        self.weight.dims()[1]
    }

    /// `out_features`.
    pub fn out_features(&self) -> usize {
        self.weight.dims()[0]
    }

    /// Applies the layer to the last dimension: `[..., in] -> [..., out]`.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let mut out_shape = x.dims();
        let in_features = out_shape[D - 1];
        out_shape[D - 1] = self.out_features();
        let rows = x.shape().num_elements() / in_features.max(1);
        let x2: Tensor<B, 2> = x.reshape([rows, in_features]);
        let mut y = x2.matmul(self.weight.val().transpose());
        if let Some(bias) = &self.bias {
            y = y + bias.val().unsqueeze::<2>();
        }
        y.reshape(out_shape)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;
    use vlmtune_quant::RandomInit;

    type B = burn::backend::NdArray;

    #[test]
    fn forward_matches_manual_matmul() {
        let src = RandomInit::new(3);
        let dev = Default::default();
        let lin = Linear::<B>::load(&Weights::new(&src, &dev).pp("fc"), 3, 2, true).unwrap();
        let x = Tensor::<B, 3>::from_data(
            TensorData::new(vec![1.0f32, 2.0, 3.0, -1.0, 0.5, 0.0], [1, 2, 3]),
            &dev,
        );
        let y = lin.forward(x).into_data().to_vec::<f32>().unwrap();
        let w = lin.weight.val().into_data().to_vec::<f32>().unwrap();
        let b = lin.bias.unwrap().val().into_data().to_vec::<f32>().unwrap();
        let xs = [[1.0f32, 2.0, 3.0], [-1.0, 0.5, 0.0]];
        for (r, row) in xs.iter().enumerate() {
            for o in 0..2 {
                let want: f32 = (0..3).map(|i| row[i] * w[o * 3 + i]).sum::<f32>() + b[o];
                assert!((y[r * 2 + o] - want).abs() < 1e-6);
            }
        }
    }
}
