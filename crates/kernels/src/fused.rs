//! The backends with fast kernels and how a call reaches them.
//!
//! burn has no hook for custom ops on a generic backend, so the public functions compare the
//! backend type with the few vlmtune runs on the CPU — `Flex` and `Autodiff<Flex, C>` for both
//! checkpointing strategies — and, when it is one of them, call its [`Fused`] implementation;
//! every other backend (CUDA) runs the plain burn-op composition.

use std::any::Any;

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::attention::AttentionMask;

/// The fused operations, for a backend that has them.
pub(crate) trait Fused: Backend {
    fn rms_norm<const D: usize>(
        x: Tensor<Self, D>,
        weight: Tensor<Self, 1>,
        eps: f64,
    ) -> Tensor<Self, D>;
    fn layer_norm<const D: usize>(
        x: Tensor<Self, D>,
        weight: Tensor<Self, 1>,
        bias: Tensor<Self, 1>,
        eps: f64,
    ) -> Tensor<Self, D>;
    fn gelu_tanh<const D: usize>(x: Tensor<Self, D>) -> Tensor<Self, D>;
    fn silu_mul<const D: usize>(gate: Tensor<Self, D>, up: Tensor<Self, D>) -> Tensor<Self, D>;
    fn linear(x: Tensor<Self, 2>, weight: Tensor<Self, 2>) -> Tensor<Self, 2>;
    fn rotary_embedding(
        x: Tensor<Self, 4>,
        cos: Tensor<Self, 4>,
        sin: Tensor<Self, 4>,
    ) -> Tensor<Self, 4>;
    fn attention(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        mask: &AttentionMask,
        scale: f64,
    ) -> Tensor<Self, 4>;
}

/// Moves a value to the type it is known to be (the caller has compared the types).
pub(crate) fn same<A: 'static, T: 'static>(value: A) -> T {
    let boxed: Box<dyn Any> = Box::new(value);
    match boxed.downcast::<T>() {
        Ok(t) => *t,
        Err(_) => unreachable!("the backend types were compared before the cast"),
    }
}

/// `return`s `$fast` (an expression over the backend alias `$F`, its tensors moved there with
/// [`same`]) from the calling function when `$B` is a backend with fused kernels.
macro_rules! return_if_fused {
    ($B:ty, |$F:ident| $fast:expr) => {
        $crate::fused::return_if_fused!(@one $B, $F, $fast, burn_flex::Flex);
        $crate::fused::return_if_fused!(@one $B, $F, $fast, burn::backend::Autodiff<burn_flex::Flex>);
        $crate::fused::return_if_fused!(
            @one $B,
            $F,
            $fast,
            burn::backend::Autodiff<
                burn_flex::Flex,
                burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing,
            >
        );
    };
    (@one $B:ty, $F:ident, $fast:expr, $T:ty) => {
        if std::any::TypeId::of::<$B>() == std::any::TypeId::of::<$T>() {
            type $F = $T;
            return $crate::fused::same($fast);
        }
    };
}
pub(crate) use return_if_fused;
