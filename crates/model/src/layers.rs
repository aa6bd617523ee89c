//! Small building blocks with Hugging Face parameter names: LayerNorm, RMSNorm, Embedding,
//! and the tanh-approximated GELU.

use burn::module::{Module, Param};
use burn::tensor::{backend::Backend, Int, Tensor};
use vlmtune_quant::{Init, Weights};

use crate::error::Result;

/// `nn.LayerNorm(dim, eps)` with weight and bias.
#[derive(Module, Debug)]
pub struct LayerNorm<B: Backend> {
    /// `[dim]`.
    pub weight: Param<Tensor<B, 1>>,
    /// `[dim]`.
    pub bias: Param<Tensor<B, 1>>,
    /// Epsilon added to the variance.
    pub eps: f64,
}

impl<B: Backend> LayerNorm<B> {
    /// Reads `<prefix>.weight` and `<prefix>.bias`.
    pub fn load(w: &Weights<B>, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: w.param("weight", [dim], Init::Ones)?,
            bias: w.param("bias", [dim], Init::Zeros)?,
            eps,
        })
    }

    /// Normalises the last dimension of `[batch, seq, dim]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let (var, mean) = x.clone().var_mean_bias(2);
        let normed = (x - mean) / (var + self.eps).sqrt();
        normed * self.weight.val().unsqueeze::<3>() + self.bias.val().unsqueeze::<3>()
    }
}

/// Llama's RMSNorm: `weight * x / sqrt(mean(x²) + eps)`, computed in f32.
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    /// `[dim]`.
    pub weight: Param<Tensor<B, 1>>,
    /// Epsilon added to the mean square.
    pub eps: f64,
}

impl<B: Backend> RmsNorm<B> {
    /// Reads `<prefix>.weight`.
    pub fn load(w: &Weights<B>, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: w.param("weight", [dim], Init::Ones)?,
            eps,
        })
    }

    /// Normalises the last dimension of `[batch, seq, dim]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let mean_square = x.clone().square().mean_dim(2);
        let normed = x * (mean_square + self.eps).sqrt().recip();
        normed * self.weight.val().unsqueeze::<3>()
    }
}

/// A lookup table `[num_embeddings, dim]`.
#[derive(Module, Debug)]
pub struct Embedding<B: Backend> {
    /// `[num_embeddings, dim]`.
    pub weight: Param<Tensor<B, 2>>,
}

impl<B: Backend> Embedding<B> {
    /// Reads `<prefix>.weight`, initialised N(0, `std`) when random.
    pub fn load(w: &Weights<B>, num: usize, dim: usize, std: f64) -> Result<Self> {
        Ok(Self {
            weight: w.param("weight", [num, dim], Init::Normal { std })?,
        })
    }

    /// Looks up `[batch, seq]` ids: `[batch, seq, dim]`.
    pub fn forward(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let [batch, seq] = ids.dims();
        let dim = self.weight.dims()[1];
        let flat = ids.reshape([batch * seq]);
        self.weight.val().select(0, flat).reshape([batch, seq, dim])
    }
}

/// `gelu_pytorch_tanh`: `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`, computed as the
/// equal `x·sigmoid(2·√(2/π)·x·(1 + 0.044715·x²))` (fewer element-wise passes).
pub fn gelu_tanh<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let c2 = 2.0 * (2.0f64 / std::f64::consts::PI).sqrt();
    let z = x.clone() * (x.clone().square() * (c2 * 0.044715) + c2);
    x * burn::tensor::activation::sigmoid(z)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    type B = burn::backend::NdArray;

    #[test]
    fn gelu_tanh_matches_torch_values() {
        // torch.nn.functional.gelu(x, approximate="tanh") for x = -2, -0.5, 0, 1, 3
        let want = [-0.04540229f32, -0.15428599, 0.0, 0.8411920, 2.9963627];
        let x = Tensor::<B, 1>::from_data(
            TensorData::new(vec![-2.0f32, -0.5, 0.0, 1.0, 3.0], [5]),
            &Default::default(),
        );
        let y = gelu_tanh(x).into_data().to_vec::<f32>().unwrap();
        for (a, b) in y.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
    }
}
