//! # vlmtune-kernels
//!
//! The few operations that dominate a SmolVLM step, as functions over burn tensors that the
//! model calls without asking which backend it runs on:
//!
//! | function | what |
//! | --- | --- |
//! | [`attention`] | scaled dot-product attention, grouped-query, causal / key-padding mask |
//! | [`linear`] | `x·Wᵀ` of every projection (gemm straight into an uninitialised output) |
//! | [`rms_norm`], [`layer_norm`] | the two norms, over the last dimension |
//! | [`gelu_tanh`], [`silu_mul`] | the vision and text MLP activations |
//! | [`rotary_embedding`] | Llama's RoPE on queries and keys |
//!
//! [`Autocast`] turns on bf16 products with f32 master weights (`torch.autocast`, TRL's `bf16`).
//!
//! On the CPU backend (`burn-flex`, with or without `Autodiff`) each is one fused kernel with an
//! analytic backward registered as a custom autodiff op: attention is flash attention (online
//! softmax over key blocks, only the log-sum-exp kept for the backward), the norms and
//! activations and RoPE one pass each. On any other backend they are the plain burn-op compositions
//! (`*_reference`), which are also what the fused kernels are tested against.
//!
//! ```
//! use burn::tensor::{Distribution, Tensor};
//! use vlmtune_kernels::{attention, AttentionMask};
//! type B = burn::backend::Flex;
//! let dev = Default::default();
//! let q = Tensor::<B, 4>::random([1, 4, 8, 16], Distribution::Default, &dev);
//! let kv = Tensor::<B, 4>::random([1, 2, 8, 16], Distribution::Default, &dev);
//! let out = attention(q, kv.clone(), kv, &AttentionMask::causal(&[1; 8]), 0.25);
//! assert_eq!(out.dims(), [1, 4, 8, 16]);
//! ```

mod activation;
mod attention;
mod autocast;
mod cpu;
mod flex;
mod fused;
mod linear;
mod norm;
mod rope;

pub use activation::{gelu_tanh, gelu_tanh_reference, silu_mul, silu_mul_reference};
pub use attention::{attention, attention_reference, AttentionMask, MASK_VALUE};
pub use autocast::{autocast_dtype, Autocast};
pub use linear::{linear, linear_reference};
pub use norm::{layer_norm, layer_norm_reference, rms_norm, rms_norm_reference};
pub use rope::{rotary_embedding, rotary_embedding_reference};
