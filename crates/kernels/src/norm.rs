//! LayerNorm and RMSNorm over the last dimension.

use burn::tensor::{backend::Backend, DType, Tensor};

use crate::fused::{return_if_fused, same, Fused};

/// `(x - mean) / sqrt(var + eps) · weight + bias` over the last dimension (biased variance,
/// as `nn.LayerNorm`). `weight`, `bias`: `[dim]`.
pub fn layer_norm<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 1>,
    bias: Tensor<B, 1>,
    eps: f64,
) -> Tensor<B, D> {
    if x.dtype() == DType::F32 {
        return_if_fused!(B, |F| F::layer_norm::<D>(
            same(x),
            same(weight),
            same(bias),
            eps
        ));
    }
    layer_norm_reference(x, weight, bias, eps)
}

/// The plain burn-op [`layer_norm`].
pub fn layer_norm_reference<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 1>,
    bias: Tensor<B, 1>,
    eps: f64,
) -> Tensor<B, D> {
    let (var, mean) = x.clone().var_mean_bias(D - 1);
    let normed = (x - mean) / (var + eps).sqrt();
    normed * weight.unsqueeze::<D>() + bias.unsqueeze::<D>()
}

/// Llama's RMSNorm `weight · x / sqrt(mean(x²) + eps)` over the last dimension.
pub fn rms_norm<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 1>,
    eps: f64,
) -> Tensor<B, D> {
    if x.dtype() == DType::F32 {
        return_if_fused!(B, |F| F::rms_norm::<D>(same(x), same(weight), eps));
    }
    rms_norm_reference(x, weight, eps)
}

/// The plain burn-op [`rms_norm`].
pub fn rms_norm_reference<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 1>,
    eps: f64,
) -> Tensor<B, D> {
    let mean_square = x.clone().square().mean_dim(D - 1);
    let normed = x * (mean_square + eps).sqrt().recip();
    normed * weight.unsqueeze::<D>()
}
