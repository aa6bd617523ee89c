//! The Linear layer's product `x·Wᵀ`.

use burn::tensor::{backend::Backend, DType, FloatDType, Tensor};

use crate::autocast::autocast_dtype;
use crate::fused::{return_if_fused, same, Fused};

/// `x · weightᵀ`: `x` `[rows, in]`, `weight` `[out, in]` as PyTorch stores it; `[rows, out]`.
///
/// Under an [`Autocast`](crate::Autocast) guard the product computes in its dtype (bf16:
/// operands rounded to bf16, accumulated in f32, the result rounded to bf16) and is handed back
/// in `x`'s dtype, as `torch.autocast` runs `F.linear`; the gradients flow back through both
/// casts, so an f32 weight gets an f32 gradient.
pub fn linear<B: Backend>(x: Tensor<B, 2>, weight: Tensor<B, 2>) -> Tensor<B, 2> {
    if let Some(compute) = autocast_dtype() {
        let dtype = x.dtype();
        if DType::from(compute) != dtype {
            let product = linear_reference(x.cast(compute), weight.cast(compute));
            return product.cast(FloatDType::from(dtype));
        }
    }
    if x.dtype() == DType::F32 && weight.dtype() == DType::F32 {
        return_if_fused!(B, |F| F::linear(same(x), same(weight)));
    }
    linear_reference(x, weight)
}

/// The plain burn-op [`linear`].
pub fn linear_reference<B: Backend>(x: Tensor<B, 2>, weight: Tensor<B, 2>) -> Tensor<B, 2> {
    x.matmul(weight.transpose())
}
