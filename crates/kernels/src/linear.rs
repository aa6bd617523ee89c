//! The Linear layer's product `x·Wᵀ`.

use burn::tensor::{backend::Backend, DType, Tensor};

use crate::fused::{return_if_fused, same, Fused};

/// `x · weightᵀ`: `x` `[rows, in]`, `weight` `[out, in]` as PyTorch stores it; `[rows, out]`.
pub fn linear<B: Backend>(x: Tensor<B, 2>, weight: Tensor<B, 2>) -> Tensor<B, 2> {
    if x.dtype() == DType::F32 && weight.dtype() == DType::F32 {
        return_if_fused!(B, |F| F::linear(same(x), same(weight)));
    }
    linear_reference(x, weight)
}

/// The plain burn-op [`linear`].
pub fn linear_reference<B: Backend>(x: Tensor<B, 2>, weight: Tensor<B, 2>) -> Tensor<B, 2> {
    x.matmul(weight.transpose())
}
