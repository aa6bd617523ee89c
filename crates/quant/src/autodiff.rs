//! `x · dequantise(W)ᵀ` with a backward pass that dequantises `W` again instead of keeping the
//! float weight alive until backward, as bitsandbytes' `MatMul4Bit` does: a frozen quantised
//! weight then costs its compact bytes, not 4 bytes per parameter, for the whole step.
//!
//! Burn has no hook for custom backward ops on a generic backend, so [`quantized_linear`]
//! recognises the autodiff backends vlmtune runs on (`Autodiff<NdArray>` and, with the `cuda`
//! feature, `Autodiff<Cuda>` in f32 and bf16, each with or without `BalancedCheckpointing`)
//! and registers its own op there; other backends get the plain matmul, whose backward keeps
//! the dequantised weight.

use std::any::Any;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::{
    BalancedCheckpointing, CheckpointStrategy, NoCheckpointing,
};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{unary, Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, FloatDType, Tensor, TensorPrimitive};

use crate::storage::QuantizedWeight;

/// Tries the custom op for each listed `Autodiff<inner, strategy>` backend in turn, returning
/// its result from the enclosing function; rebinds `$x` for the next try otherwise.
macro_rules! try_recompute {
    ($x:ident, $q:ident, $(($inner:ty, $strategy:ty)),+ $(,)?) => {
        $(
            let $x = match recompute_in_backward::<B, $inner, $strategy>($x, $q) {
                Ok(y) => return y,
                Err(x) => x,
            };
        )+
    };
}

/// `x · dequantise(q)ᵀ` on `[rows, in]`; see the module docs for the backward pass.
pub fn quantized_linear<B: Backend>(x: Tensor<B, 2>, q: &QuantizedWeight<B>) -> Tensor<B, 2> {
    if !B::ad_enabled(&x.device()) {
        return dequantized_matmul(x, q);
    }
    type Cpu = burn::backend::Flex;
    try_recompute!(x, q, (Cpu, NoCheckpointing), (Cpu, BalancedCheckpointing));
    #[cfg(feature = "cuda")]
    let x = {
        type Cuda = burn_cuda::Cuda;
        type CudaBf16 = burn_cuda::Cuda<half::bf16>;
        try_recompute!(
            x,
            q,
            (Cuda, NoCheckpointing),
            (Cuda, BalancedCheckpointing),
            (CudaBf16, NoCheckpointing),
            (CudaBf16, BalancedCheckpointing),
        );
        x
    };
    dequantized_matmul(x, q)
}

/// The plain path: dequantise, then matmul.
fn dequantized_matmul<B: Backend>(x: Tensor<B, 2>, q: &QuantizedWeight<B>) -> Tensor<B, 2> {
    let weight = q.dequantize().cast(x.dtype());
    vlmtune_kernels::linear(x, weight)
}

/// Runs the custom op when `B` is `Autodiff<I, C>`; hands `x` back otherwise.
fn recompute_in_backward<B: Backend, I: Backend, C: CheckpointStrategy>(
    x: Tensor<B, 2>,
    q: &QuantizedWeight<B>,
) -> Result<Tensor<B, 2>, Tensor<B, 2>> {
    let boxed: Box<dyn Any> = Box::new(x);
    let x = match boxed.downcast::<Tensor<Autodiff<I, C>, 2>>() {
        Ok(x) => *x,
        Err(other) => return Err(*other.downcast::<Tensor<B, 2>>().expect("same type back")),
    };
    let Some(q) = (q as &dyn Any).downcast_ref::<QuantizedWeight<Autodiff<I, C>>>() else {
        let back: Box<dyn Any> = Box::new(x);
        return Err(*back.downcast::<Tensor<B, 2>>().expect("same type back"));
    };
    let y: Box<dyn Any> = Box::new(autodiff_quantized_linear::<I, C>(x, q));
    Ok(*y.downcast::<Tensor<B, 2>>().expect("B is Autodiff<I, C>"))
}

/// The backward of `y = x · Wᵀ` for a frozen `W`: `dx = dy · W`, with `W` dequantised anew,
/// in the dtype the forward's product computed in (bf16 under autocast, as bitsandbytes'
/// `MatMul4Bit` multiplies in the compute dtype).
#[derive(Debug)]
struct QuantizedLinearBackward;

impl<I: Backend> Backward<I, 1> for QuantizedLinearBackward {
    type State = (QuantizedWeight<I>, Option<FloatDType>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (weight, compute) = ops.state;
        unary::<I, _>(ops.parents, ops.node, grads, |grad| {
            let grad = Tensor::<I, 2>::from_primitive(TensorPrimitive::Float(grad));
            let dtype = grad.dtype();
            let w = weight.dequantize();
            let dx = match compute {
                Some(c) if DType::from(c) != dtype => {
                    grad.cast(c).matmul(w.cast(c)).cast(FloatDType::from(dtype))
                }
                _ => grad.matmul(w.cast(dtype)),
            };
            dx.into_primitive().tensor()
        });
    }
}

fn autodiff_quantized_linear<I: Backend, C: CheckpointStrategy>(
    x: Tensor<Autodiff<I, C>, 2>,
    q: &QuantizedWeight<Autodiff<I, C>>,
) -> Tensor<Autodiff<I, C>, 2> {
    let inner: QuantizedWeight<I> = q.valid();
    let x = x.into_primitive().tensor();
    let forward = |x: I::FloatTensorPrimitive| {
        let x = Tensor::<I, 2>::from_primitive(TensorPrimitive::Float(x));
        dequantized_matmul(x, &inner).into_primitive().tensor()
    };
    let out = match QuantizedLinearBackward
        .prepare::<C>([x.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let y = forward(x.primitive);
            prep.finish((inner.clone(), vlmtune_kernels::autocast_dtype()), y)
        }
        OpsKind::UnTracked(prep) => prep.finish(forward(x.primitive)),
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bnb::FourBit;
    use crate::config::StorageFormat;
    use burn::tensor::TensorData;

    type AB = Autodiff<burn::backend::Flex>;

    #[test]
    fn custom_backward_equals_the_plain_matmul() {
        let dev = Default::default();
        let values: Vec<f32> = (0..6 * 40)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 40.0)
            .collect();
        let format = StorageFormat::FourBit {
            kind: FourBit::Nf4,
            blocksize: 64,
            double_quant: true,
        };
        let q = QuantizedWeight::<AB>::quantize(&values, [6, 40], format, &dev);
        let xs: Vec<f32> = (0..3 * 40).map(|i| (i as f32 * 0.37).sin()).collect();
        let x = || {
            Tensor::<AB, 2>::from_data(TensorData::new(xs.clone(), [3, 40]), &dev).require_grad()
        };
        let weights = Tensor::<AB, 2>::from_data(
            TensorData::new((0..18).map(|v| v as f32 - 9.0).collect::<Vec<_>>(), [3, 6]),
            &dev,
        );

        let x1 = x();
        let y1 = quantized_linear(x1.clone(), &q);
        let g1 = (y1.clone() * weights.clone()).sum().backward();
        let x2 = x();
        let y2 = dequantized_matmul(x2.clone(), &q);
        let g2 = (y2.clone() * weights).sum().backward();
        let host = |t: Tensor<burn::backend::Flex, 2>| t.into_data().to_vec::<f32>().unwrap();
        assert_eq!(host(y1.inner()), host(y2.inner()));
        assert_eq!(host(x1.grad(&g1).unwrap()), host(x2.grad(&g2).unwrap()));
    }
}
