//! The fused activations of the two MLPs.

use burn::tensor::activation::{sigmoid, silu};
use burn::tensor::{backend::Backend, DType, Tensor};

use crate::fused::{return_if_fused, same, Fused};

/// `gelu_pytorch_tanh`: `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`.
pub fn gelu_tanh<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    if x.dtype() == DType::F32 {
        return_if_fused!(B, |F| F::gelu_tanh::<D>(same(x)));
    }
    gelu_tanh_reference(x)
}

/// The plain burn-op [`gelu_tanh`], as the equal `x·sigmoid(2·√(2/π)·x·(1 + 0.044715·x²))`.
pub fn gelu_tanh_reference<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let c2 = 2.0 * (2.0f64 / std::f64::consts::PI).sqrt();
    let z = x.clone() * (x.clone().square() * (c2 * 0.044715) + c2);
    x * sigmoid(z)
}

/// Llama's SwiGLU gate: `silu(gate) · up`.
pub fn silu_mul<B: Backend, const D: usize>(gate: Tensor<B, D>, up: Tensor<B, D>) -> Tensor<B, D> {
    if gate.dtype() == DType::F32 {
        return_if_fused!(B, |F| F::silu_mul::<D>(same(gate), same(up)));
    }
    silu_mul_reference(gate, up)
}

/// The plain burn-op [`silu_mul`].
pub fn silu_mul_reference<B: Backend, const D: usize>(
    gate: Tensor<B, D>,
    up: Tensor<B, D>,
) -> Tensor<B, D> {
    silu(gate) * up
}
