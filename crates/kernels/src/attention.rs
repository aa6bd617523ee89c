//! Scaled dot-product attention with grouped-query heads, and the masks it takes.

use std::sync::Arc;

use burn::tensor::activation::softmax;
use burn::tensor::{backend::Backend, Bool, DType, Int, Tensor, TensorData};

use crate::fused::{return_if_fused, same, Fused};

/// The value masked scores get: `finfo(float32).min`, as transformers adds it.
pub const MASK_VALUE: f32 = f32::MIN;

/// Which keys each query may see.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AttentionMask {
    /// Query `i` sits at key position `kv_len - q_len + i` and sees only keys up to it.
    pub causal: bool,
    /// `[batch, kv_len]` row-major: false hides that key (padding) from every query.
    pub key_keep: Option<Arc<[bool]>>,
}

impl AttentionMask {
    /// Every query sees every key.
    pub fn none() -> Self {
        Self::default()
    }

    /// The text model's mask: causal, and hiding keys whose `attention_mask` (`[batch,
    /// kv_len]`, past and new tokens) is 0.
    pub fn causal(attention_mask: &[u8]) -> Self {
        Self {
            causal: true,
            key_keep: attention_mask
                .contains(&0)
                .then(|| attention_mask.iter().map(|m| *m != 0).collect()),
        }
    }

    /// Bidirectional, hiding the keys where `keep` (`[batch, kv_len]`) is false.
    pub fn key_padding(keep: &[bool]) -> Self {
        Self {
            causal: false,
            key_keep: keep.contains(&false).then(|| keep.into()),
        }
    }

    /// The mask as transformers adds it to the scores: `0` where seen, [`MASK_VALUE`] where
    /// hidden, broadcastable to `[batch, heads, q_len, kv_len]`; `None` when nothing is hidden.
    pub fn additive<B: Backend>(
        &self,
        batch: usize,
        q_len: usize,
        kv_len: usize,
        device: &B::Device,
    ) -> Option<Tensor<B, 4>> {
        let keep = self.key_keep.as_ref().map(|keep| {
            Tensor::<B, 2, Bool>::from_data(TensorData::new(keep.to_vec(), [batch, kv_len]), device)
                .reshape([batch, 1, 1, kv_len])
        });
        let past_len = kv_len - q_len;
        let hidden: Tensor<B, 4, Bool> = match (self.causal && q_len > 1, keep) {
            (false, None) => return None,
            (false, Some(keep)) => keep.bool_not(),
            (true, keep) => {
                let q_pos = Tensor::<B, 1, Int>::arange(past_len as i64..kv_len as i64, device)
                    .reshape([1, 1, q_len, 1]);
                let k_pos = Tensor::<B, 1, Int>::arange(0..kv_len as i64, device)
                    .reshape([1, 1, 1, kv_len]);
                let future = k_pos.greater(q_pos).expand([batch, 1, q_len, kv_len]);
                match keep {
                    Some(keep) => future.bool_or(keep.bool_not().expand([batch, 1, q_len, kv_len])),
                    None => future,
                }
            }
        };
        let shape = hidden.dims();
        Some(Tensor::<B, 4>::zeros(shape, device).mask_fill(hidden, MASK_VALUE))
    }
}

/// `softmax(q·kᵀ·scale + mask)·v` with grouped-query heads.
///
/// * `q`: `[batch, heads, q_len, head_dim]`
/// * `k`, `v`: `[batch, kv_heads, kv_len, head_dim]`, `heads` a multiple of `kv_heads`
///   (query head `i` reads kv head `i / (heads / kv_heads)`, as `repeat_kv` does)
///
/// Returns `[batch, heads, q_len, head_dim]`. On the CPU backend this is flash attention
/// (no score tensor is kept for the backward); elsewhere [`attention_reference`].
pub fn attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    mask: &AttentionMask,
    scale: f64,
) -> Tensor<B, 4> {
    if q.dtype() == DType::F32 {
        return_if_fused!(B, |F| F::attention(same(q), same(k), same(v), mask, scale));
    }
    attention_reference(q, k, v, mask, scale)
}

/// The plain burn-op attention: the scores are materialised, the mask added, softmax taken.
/// Grouped heads are folded into the query length instead of repeating k and v.
pub fn attention_reference<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    mask: &AttentionMask,
    scale: f64,
) -> Tensor<B, 4> {
    let [batch, heads, q_len, head_dim] = q.dims();
    let [_, kv_heads, kv_len, _] = k.dims();
    let groups = heads / kv_heads;
    let n = batch * kv_heads;
    // Scaling q (head_dim wide) is cheaper than scaling the scores (kv_len wide).
    let q = q.mul_scalar(scale).reshape([n, groups * q_len, head_dim]);
    let k_t = k.reshape([n, kv_len, head_dim]).swap_dims(1, 2);
    let mut scores = q.matmul(k_t).reshape([batch, heads, q_len, kv_len]);
    if let Some(mask) = mask.additive::<B>(batch, q_len, kv_len, &scores.device()) {
        scores = scores + mask;
    }
    let probs = softmax(scores, 3).reshape([n, groups * q_len, kv_len]);
    probs
        .matmul(v.reshape([n, kv_len, head_dim]))
        .reshape([batch, heads, q_len, head_dim])
}
