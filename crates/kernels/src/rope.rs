//! Rotary position embedding as Llama applies it to queries and keys.

use burn::tensor::{backend::Backend, DType, Tensor};

use crate::fused::{return_if_fused, same, Fused};

/// `x·cos + rotate_half(x)·sin` with `rotate_half(x) = cat(-x[d/2..], x[..d/2])`.
///
/// * `x`: `[batch, heads, len, head_dim]`
/// * `cos`, `sin`: `[batch, 1, len, head_dim]`, constants (no gradient flows to them)
pub fn rotary_embedding<B: Backend>(
    x: Tensor<B, 4>,
    cos: Tensor<B, 4>,
    sin: Tensor<B, 4>,
) -> Tensor<B, 4> {
    if x.dtype() == DType::F32 {
        return_if_fused!(B, |F| F::rotary_embedding(same(x), same(cos), same(sin)));
    }
    rotary_embedding_reference(x, cos, sin)
}

/// The plain burn-op [`rotary_embedding`].
pub fn rotary_embedding_reference<B: Backend>(
    x: Tensor<B, 4>,
    cos: Tensor<B, 4>,
    sin: Tensor<B, 4>,
) -> Tensor<B, 4> {
    let hd = x.dims()[3];
    let first = x.clone().narrow(3, 0, hd / 2);
    let second = x.clone().narrow(3, hd / 2, hd / 2);
    let rotated = Tensor::cat(vec![second.neg(), first], 3);
    x * cos + rotated * sin
}
