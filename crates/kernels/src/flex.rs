//! The fused kernels on burn-flex: [`Fused`] for `Flex` (forward only) and for
//! `Autodiff<Flex, C>` (custom autodiff ops whose backward is the analytic one of `cpu`).

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::NodeId;
use burn::backend::Autodiff;
use burn::tensor::{Bytes, DType, Shape, Tensor, TensorPrimitive};
use burn_flex::{Flex, FlexTensor, Layout};

use crate::attention::AttentionMask;
use crate::cpu::flash::{self, Geometry, HeadsView, Mask};
use crate::cpu::matmul::Matrix;
use crate::cpu::rows;
use crate::fused::Fused;

type AdTensor<C> = burn::tensor::ops::FloatTensor<Autodiff<Flex, C>>;

fn primitive<const D: usize>(t: Tensor<Flex, D>) -> FlexTensor {
    t.into_primitive().tensor()
}

fn ad_primitive<C: CheckpointStrategy, const D: usize>(
    t: Tensor<Autodiff<Flex, C>, D>,
) -> AdTensor<C> {
    t.into_primitive().tensor()
}

fn wrap<B: burn::tensor::backend::Backend, const D: usize>(
    t: B::FloatTensorPrimitive,
) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

/// A contiguous f32 tensor from its values, in a given layout.
fn owned(values: Vec<f32>, layout: Layout) -> FlexTensor {
    FlexTensor::new(Bytes::from_elems(values), layout, DType::F32)
}

fn dense(values: Vec<f32>, shape: Shape) -> FlexTensor {
    owned(values, Layout::contiguous(shape))
}

/// The values of a contiguous copy (no copy when already contiguous).
struct Dense(FlexTensor);

impl Dense {
    fn of(t: &FlexTensor) -> Self {
        Self(t.to_contiguous())
    }
    fn values(&self) -> &[f32] {
        self.0.as_slice::<f32>().expect("a contiguous f32 tensor")
    }
}

/// A `[batch, heads, rows, head_dim]` tensor as a strided view: as it is when its strides are
/// non-negative and the last is 1, else a contiguous copy.
fn heads_view(t: &FlexTensor) -> (FlexTensor, [usize; 3]) {
    let strides = t.layout().strides();
    let usable = strides.len() == 4 && strides[3] == 1 && strides.iter().all(|s| *s >= 0);
    let t = if usable { t.clone() } else { t.to_contiguous() };
    let s = t.layout().strides();
    let strides = [s[0] as usize, s[1] as usize, s[2] as usize];
    (t, strides)
}

fn view(t: &(FlexTensor, [usize; 3])) -> HeadsView<'_> {
    HeadsView {
        data: t.0.storage::<f32>(),
        offset: t.0.layout().start_offset(),
        strides: t.1,
    }
}

/// `[batch, heads, rows, d]` values stored as `[batch, rows, heads, d]`.
fn merged_heads(values: Vec<f32>, [batch, heads, rows, d]: [usize; 4]) -> FlexTensor {
    let [sb, sh, sl] = flash::merged_heads_strides(heads, rows, d);
    let layout = Layout::new(
        Shape::from([batch, heads, rows, d]),
        vec![sb as isize, sh as isize, sl as isize, 1],
        0,
    );
    owned(values, layout)
}

fn geometry(q: &FlexTensor, k: &FlexTensor) -> Geometry {
    let qs = q.layout().shape();
    let ks = k.layout().shape();
    Geometry {
        batch: qs[0],
        heads: qs[1],
        kv_heads: ks[1],
        q_len: qs[2],
        kv_len: ks[2],
        head_dim: qs[3],
    }
}

fn kernel_mask(mask: &AttentionMask) -> Mask<'_> {
    Mask {
        causal: mask.causal,
        key_keep: mask.key_keep.as_deref(),
    }
}

fn rms_norm_forward(x: &FlexTensor, w: &FlexTensor, eps: f64) -> (FlexTensor, Vec<f32>) {
    let (xd, wd) = (Dense::of(x), Dense::of(w));
    let (y, recip) = rows::rms_norm(xd.values(), wd.values(), eps as f32);
    (dense(y, x.layout().shape().clone()), recip)
}

fn layer_norm_forward(
    x: &FlexTensor,
    w: &FlexTensor,
    b: &FlexTensor,
    eps: f64,
) -> (FlexTensor, rows::LayerNormStats) {
    let (xd, wd, bd) = (Dense::of(x), Dense::of(w), Dense::of(b));
    let (y, stats) = rows::layer_norm(xd.values(), wd.values(), bd.values(), eps as f32);
    (dense(y, x.layout().shape().clone()), stats)
}

fn gelu_forward(x: &FlexTensor) -> FlexTensor {
    dense(
        rows::gelu_tanh(Dense::of(x).values()),
        x.layout().shape().clone(),
    )
}

fn silu_mul_forward(gate: &FlexTensor, up: &FlexTensor) -> FlexTensor {
    let y = rows::silu_mul(Dense::of(gate).values(), Dense::of(up).values());
    dense(y, gate.layout().shape().clone())
}

fn attention_forward(
    q: &FlexTensor,
    k: &FlexTensor,
    v: &FlexTensor,
    mask: &AttentionMask,
    scale: f64,
) -> (FlexTensor, Arc<Vec<f32>>) {
    let g = geometry(q, k);
    let (qv, kv, vv) = (heads_view(q), heads_view(k), heads_view(v));
    let out = flash::forward(
        view(&qv),
        view(&kv),
        view(&vv),
        g,
        kernel_mask(mask),
        scale as f32,
    );
    let shape = [g.batch, g.heads, g.q_len, g.head_dim];
    (merged_heads(out.out, shape), Arc::new(out.lse))
}

/// RoPE of `x` with `[batch, 1, len, d]` tables; the result in the merged-heads layout.
fn rope_forward(x: &FlexTensor, cos: &FlexTensor, sin: &FlexTensor, inverse: bool) -> FlexTensor {
    let s = x.layout().shape();
    let dims = [s[0], s[1], s[2], s[3]];
    let xv = heads_view(x);
    let (c, sn) = (Dense::of(cos), Dense::of(sin));
    let out = crate::cpu::rope::rope(view(&xv), dims, c.values(), sn.values(), inverse);
    merged_heads(out, dims)
}

/// A 2-D tensor as a strided matrix (a contiguous copy when a stride is negative).
fn matrix_of(t: &FlexTensor) -> FlexTensor {
    if t.layout().strides().iter().all(|s| *s >= 0) {
        t.clone()
    } else {
        t.to_contiguous()
    }
}

fn matrix(t: &FlexTensor) -> Matrix<'_> {
    let shape = t.layout().shape();
    let s = t.layout().strides();
    Matrix {
        data: t.storage::<f32>(),
        offset: t.layout().start_offset(),
        rows: shape[0],
        cols: shape[1],
        rs: s[0],
        cs: s[1],
    }
}

/// `a · b` of two 2-D tensors.
fn product(a: Matrix, b: Matrix) -> FlexTensor {
    let (m, n) = (a.rows, b.cols);
    dense(crate::cpu::matmul::matmul(a, b), Shape::from([m, n]))
}

fn linear_forward(x: &FlexTensor, w: &FlexTensor) -> FlexTensor {
    let (x, w) = (matrix_of(x), matrix_of(w));
    product(matrix(&x), matrix(&w).t())
}

impl Fused for Flex {
    fn rms_norm<const D: usize>(
        x: Tensor<Self, D>,
        weight: Tensor<Self, 1>,
        eps: f64,
    ) -> Tensor<Self, D> {
        wrap::<Flex, D>(rms_norm_forward(&primitive(x), &primitive(weight), eps).0)
    }

    fn layer_norm<const D: usize>(
        x: Tensor<Self, D>,
        weight: Tensor<Self, 1>,
        bias: Tensor<Self, 1>,
        eps: f64,
    ) -> Tensor<Self, D> {
        let y = layer_norm_forward(&primitive(x), &primitive(weight), &primitive(bias), eps).0;
        wrap::<Flex, D>(y)
    }

    fn gelu_tanh<const D: usize>(x: Tensor<Self, D>) -> Tensor<Self, D> {
        wrap::<Flex, D>(gelu_forward(&primitive(x)))
    }

    fn silu_mul<const D: usize>(gate: Tensor<Self, D>, up: Tensor<Self, D>) -> Tensor<Self, D> {
        wrap::<Flex, D>(silu_mul_forward(&primitive(gate), &primitive(up)))
    }

    fn linear(x: Tensor<Self, 2>, weight: Tensor<Self, 2>) -> Tensor<Self, 2> {
        wrap::<Flex, 2>(linear_forward(&primitive(x), &primitive(weight)))
    }

    fn rotary_embedding(
        x: Tensor<Self, 4>,
        cos: Tensor<Self, 4>,
        sin: Tensor<Self, 4>,
    ) -> Tensor<Self, 4> {
        wrap::<Flex, 4>(rope_forward(
            &primitive(x),
            &primitive(cos),
            &primitive(sin),
            false,
        ))
    }

    fn attention(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        mask: &AttentionMask,
        scale: f64,
    ) -> Tensor<Self, 4> {
        let out = attention_forward(&primitive(q), &primitive(k), &primitive(v), mask, scale).0;
        wrap::<Flex, 4>(out)
    }
}

/// Registers a custom op: runs `forward` and keeps its state when a parent is tracked.
fn record<C, Op, const N: usize>(
    op: Op,
    parents: [&AdTensor<C>; N],
    forward: impl FnOnce() -> (FlexTensor, Op::State),
) -> AdTensor<C>
where
    C: CheckpointStrategy,
    Op: Backward<Flex, N>,
{
    match op
        .prepare::<C>(parents.map(|p| p.node.clone()))
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let (y, state) = forward();
            prep.finish(state, y)
        }
        OpsKind::UnTracked(prep) => prep.finish(forward().0),
    }
}

/// Hands `grad` to `parent`, when the parent is tracked.
fn give(grads: &mut Gradients, parent: Option<NodeId>, grad: impl FnOnce() -> FlexTensor) {
    if let Some(id) = parent {
        grads.register::<Flex>(id, grad());
    }
}

#[derive(Debug)]
struct RmsNormBackward;

impl Backward<Flex, 2> for RmsNormBackward {
    type State = (FlexTensor, FlexTensor, Arc<Vec<f32>>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [x_parent, w_parent] = ops.parents.map(|p| p.map(|p| p.id));
        let dy = Dense::of(&grads.consume::<Flex>(&ops.node));
        let (x, w, recip) = ops.state;
        let (xd, wd) = (Dense::of(&x), Dense::of(&w));
        let (dx, dw) = rows::rms_norm_backward(xd.values(), wd.values(), &recip, dy.values());
        give(grads, x_parent, || dense(dx, x.layout().shape().clone()));
        give(grads, w_parent, || dense(dw, w.layout().shape().clone()));
    }
}

#[derive(Debug)]
struct LayerNormBackward;

impl Backward<Flex, 3> for LayerNormBackward {
    type State = (FlexTensor, FlexTensor, Arc<rows::LayerNormStats>);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [x_parent, w_parent, b_parent] = ops.parents.map(|p| p.map(|p| p.id));
        let dy = Dense::of(&grads.consume::<Flex>(&ops.node));
        let (x, w, stats) = ops.state;
        let (xd, wd) = (Dense::of(&x), Dense::of(&w));
        let (dx, dw, db) = rows::layer_norm_backward(xd.values(), wd.values(), &stats, dy.values());
        let dim = w.layout().shape().clone();
        give(grads, x_parent, || dense(dx, x.layout().shape().clone()));
        give(grads, w_parent, || dense(dw, dim.clone()));
        give(grads, b_parent, || dense(db, dim));
    }
}

#[derive(Debug)]
struct GeluTanhBackward;

impl Backward<Flex, 1> for GeluTanhBackward {
    type State = FlexTensor;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [x_parent] = ops.parents;
        let dy = Dense::of(&grads.consume::<Flex>(&ops.node));
        let x = ops.state;
        if let Some(p) = x_parent {
            let dx = rows::gelu_tanh_backward(Dense::of(&x).values(), dy.values());
            grads.register::<Flex>(p.id, dense(dx, x.layout().shape().clone()));
        }
    }
}

#[derive(Debug)]
struct SiluMulBackward;

impl Backward<Flex, 2> for SiluMulBackward {
    type State = (FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [gate_parent, up_parent] = ops.parents.map(|p| p.map(|p| p.id));
        let dy = Dense::of(&grads.consume::<Flex>(&ops.node));
        let (gate, up) = ops.state;
        let shape = gate.layout().shape().clone();
        let (dg, du) = rows::silu_mul_backward(
            Dense::of(&gate).values(),
            Dense::of(&up).values(),
            dy.values(),
        );
        give(grads, gate_parent, || dense(dg, shape.clone()));
        give(grads, up_parent, || dense(du, shape));
    }
}

#[derive(Debug)]
struct LinearBackward;

impl Backward<Flex, 2> for LinearBackward {
    /// `(x, w)`, each kept only when the other operand is tracked.
    type State = (Option<FlexTensor>, Option<FlexTensor>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [x_parent, w_parent] = ops.parents.map(|p| p.map(|p| p.id));
        let dy = matrix_of(&grads.consume::<Flex>(&ops.node));
        let kept = |t: Option<FlexTensor>| matrix_of(&t.expect("kept for a tracked operand"));
        let (x, w) = ops.state;
        // y = x·wᵀ: dx = dy·w, dw = dyᵀ·x.
        give(grads, x_parent, || product(matrix(&dy), matrix(&kept(w))));
        give(grads, w_parent, || {
            product(matrix(&dy).t(), matrix(&kept(x)))
        });
    }
}

#[derive(Debug)]
struct RopeBackward;

impl Backward<Flex, 1> for RopeBackward {
    type State = (FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [x_parent] = ops.parents.map(|p| p.map(|p| p.id));
        let dy = grads.consume::<Flex>(&ops.node);
        let (cos, sin) = ops.state;
        give(grads, x_parent, || rope_forward(&dy, &cos, &sin, true));
    }
}

/// What the attention backward needs: inputs, output, log-sum-exp, mask and scale.
#[derive(Clone, Debug)]
struct AttentionState {
    q: FlexTensor,
    k: FlexTensor,
    v: FlexTensor,
    out: FlexTensor,
    lse: Arc<Vec<f32>>,
    mask: AttentionMask,
    scale: f64,
}

#[derive(Debug)]
struct AttentionBackward;

impl Backward<Flex, 3> for AttentionBackward {
    type State = AttentionState;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [q_parent, k_parent, v_parent] = ops.parents.map(|p| p.map(|p| p.id));
        let grad = grads.consume::<Flex>(&ops.node);
        let s = ops.state;
        let g = geometry(&s.q, &s.k);
        let (qv, kv, vv) = (heads_view(&s.q), heads_view(&s.k), heads_view(&s.v));
        let (ov, gv) = (heads_view(&s.out), heads_view(&grad));
        let saved = flash::Saved {
            out: view(&ov),
            lse: &s.lse,
            grad: view(&gv),
        };
        let mask = kernel_mask(&s.mask);
        let d = flash::backward(
            view(&qv),
            view(&kv),
            view(&vv),
            saved,
            g,
            mask,
            s.scale as f32,
        );
        let q_shape = [g.batch, g.heads, g.q_len, g.head_dim];
        let kv_shape = [g.batch, g.kv_heads, g.kv_len, g.head_dim];
        give(grads, q_parent, || merged_heads(d.dq, q_shape));
        give(grads, k_parent, || merged_heads(d.dk, kv_shape));
        give(grads, v_parent, || merged_heads(d.dv, kv_shape));
    }
}

impl<C: CheckpointStrategy> Fused for Autodiff<Flex, C> {
    fn rms_norm<const D: usize>(
        x: Tensor<Self, D>,
        weight: Tensor<Self, 1>,
        eps: f64,
    ) -> Tensor<Self, D> {
        let (x, w) = (ad_primitive(x), ad_primitive(weight));
        let out = record::<C, _, 2>(RmsNormBackward, [&x, &w], || {
            let (y, recip) = rms_norm_forward(&x.primitive, &w.primitive, eps);
            (
                y,
                (x.primitive.clone(), w.primitive.clone(), Arc::new(recip)),
            )
        });
        wrap::<Self, D>(out)
    }

    fn layer_norm<const D: usize>(
        x: Tensor<Self, D>,
        weight: Tensor<Self, 1>,
        bias: Tensor<Self, 1>,
        eps: f64,
    ) -> Tensor<Self, D> {
        let (x, w, b) = (ad_primitive(x), ad_primitive(weight), ad_primitive(bias));
        let out = record::<C, _, 3>(LayerNormBackward, [&x, &w, &b], || {
            let (y, stats) = layer_norm_forward(&x.primitive, &w.primitive, &b.primitive, eps);
            (
                y,
                (x.primitive.clone(), w.primitive.clone(), Arc::new(stats)),
            )
        });
        wrap::<Self, D>(out)
    }

    fn gelu_tanh<const D: usize>(x: Tensor<Self, D>) -> Tensor<Self, D> {
        let x = ad_primitive(x);
        let out = record::<C, _, 1>(GeluTanhBackward, [&x], || {
            (gelu_forward(&x.primitive), x.primitive.clone())
        });
        wrap::<Self, D>(out)
    }

    fn silu_mul<const D: usize>(gate: Tensor<Self, D>, up: Tensor<Self, D>) -> Tensor<Self, D> {
        let (gate, up) = (ad_primitive(gate), ad_primitive(up));
        let out = record::<C, _, 2>(SiluMulBackward, [&gate, &up], || {
            let y = silu_mul_forward(&gate.primitive, &up.primitive);
            (y, (gate.primitive.clone(), up.primitive.clone()))
        });
        wrap::<Self, D>(out)
    }

    fn linear(x: Tensor<Self, 2>, weight: Tensor<Self, 2>) -> Tensor<Self, 2> {
        let (x, w) = (ad_primitive(x), ad_primitive(weight));
        // Each operand is kept only for the other's gradient: a frozen weight (LoRA's base
        // projections) does not keep its input alive until the backward.
        let (keep_x, keep_w) = (w.is_tracked(), x.is_tracked());
        let out = record::<C, _, 2>(LinearBackward, [&x, &w], || {
            let y = linear_forward(&x.primitive, &w.primitive);
            let state = (
                keep_x.then(|| x.primitive.clone()),
                keep_w.then(|| w.primitive.clone()),
            );
            (y, state)
        });
        wrap::<Self, 2>(out)
    }

    fn rotary_embedding(
        x: Tensor<Self, 4>,
        cos: Tensor<Self, 4>,
        sin: Tensor<Self, 4>,
    ) -> Tensor<Self, 4> {
        let x = ad_primitive(x);
        // The tables are constants: only x is a parent.
        let (cos, sin) = (ad_primitive(cos).primitive, ad_primitive(sin).primitive);
        let out = record::<C, _, 1>(RopeBackward, [&x], || {
            let y = rope_forward(&x.primitive, &cos, &sin, false);
            (y, (cos.clone(), sin.clone()))
        });
        wrap::<Self, 4>(out)
    }

    fn attention(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        mask: &AttentionMask,
        scale: f64,
    ) -> Tensor<Self, 4> {
        let (q, k, v) = (ad_primitive(q), ad_primitive(k), ad_primitive(v));
        let out = record::<C, _, 3>(AttentionBackward, [&q, &k, &v], || {
            let (out, lse) =
                attention_forward(&q.primitive, &k.primitive, &v.primitive, mask, scale);
            let state = AttentionState {
                q: q.primitive.clone(),
                k: k.primitive.clone(),
                v: v.primitive.clone(),
                out: out.clone(),
                lse,
                mask: mask.clone(),
                scale,
            };
            (out, state)
        });
        wrap::<Self, 4>(out)
    }
}
