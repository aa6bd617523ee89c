//! Small building blocks with Hugging Face parameter names: LayerNorm, RMSNorm, Embedding
//! (the norms and the tanh-approximated GELU compute in `vlmtune-kernels`).

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
        vlmtune_kernels::layer_norm(x, self.weight.val(), self.bias.val(), self.eps)
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
        vlmtune_kernels::rms_norm(x, self.weight.val(), self.eps)
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

pub use vlmtune_kernels::gelu_tanh;
