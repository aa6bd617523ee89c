//! Layer-wise gradient checkpointing, as transformers' `gradient_checkpointing=True` does
//! it: during the forward only each segment's input is kept; the backward recomputes one
//! segment at a time and backpropagates through it.
//!
//! # Design
//! burn 0.21 cannot run a backward inside a custom op's backward (its graph lock is not
//! re-entrant, tracel-ai/burn#5193), so recomputation cannot hide inside the autodiff graph
//! as `torch.utils.checkpoint` does. Instead the backward is a loop driven from outside:
//!
//! 1. **Forward.** While a [`LayerTape`] is [active](LayerTape::activate), the text decoder
//!    and the vision encoder hand each segment (`segment_len` consecutive layers) to it. The
//!    tape runs the segment on the inner backend — no graph, no kept activations — and
//!    returns its outputs (hidden states and, for the decoder, each layer's keys and values)
//!    as fresh autodiff leaves. Everything outside the segments (embeddings, connector, final
//!    norm, LM head, the loss, a KV cache shared by DPO's two answers) is ordinary autodiff.
//! 2. **Backward.** [`LayerTape::backward`] differentiates the loss, which reaches the last
//!    segments' output leaves; then, for each recorded segment from the last to the first,
//!    it reruns the segment with autodiff on its original (tracked) inputs and differentiates
//!    `Σ (output · output gradient)`. That gives the segment's parameter gradients and carries
//!    the gradient back into whatever produced its inputs: earlier segments' output leaves
//!    (collected for their own turn), or the embedding/connector graph for the first one.
//!
//! Every partial backward's gradients go to a sink (the trainer adds them up by parameter
//! path), so a parameter used by several segments (DPO's prompt and answers) sums its parts.
//! Records are processed in reverse creation order, which is a reverse topological order: a
//! segment's inputs only come from segments recorded before it.
//!
//! LoRA dropout draws its masks from seeds that name the forward, the stack and the layer
//! ([`vlmtune_peft::dropout`]), so the recomputation drops exactly what the first run did,
//! and a run with checkpointing computes what a run without it computes.

use std::any::Any;
use std::cell::RefCell;
use std::rc::Rc;

use burn::module::{AutodiffModule, Module, ModuleVisitor, Param};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;
use vlmtune_peft::dropout;

use crate::attention::AttentionMask;
use crate::text::{run_decoder_layers, DecoderLayer, LayerKv, Rope};
use crate::vision::{run_encoder_layers, EncoderLayer};

/// Runs layer segments in place of the plain loop; what an active [`LayerTape`] is to the
/// model code, which only knows `B: Backend`.
pub trait SegmentRunner<B: Backend> {
    /// Layers per segment.
    fn segment_len(&self) -> usize;
    /// Decoder layers (see [`run_decoder_layers`]); with `keep_kv` false the keys and values
    /// are returned but not kept for gradients (nobody reads them).
    #[allow(clippy::too_many_arguments)]
    fn decoder_segment(
        &self,
        layers: &[DecoderLayer<B>],
        seeds: &[u64],
        h: Tensor<B, 3>,
        rope: &Rope<B>,
        mask: &AttentionMask,
        past: Vec<Option<LayerKv<B>>>,
        keep_kv: bool,
    ) -> (Tensor<B, 3>, Vec<LayerKv<B>>);
    /// Encoder layers (see [`run_encoder_layers`]).
    fn encoder_segment(
        &self,
        layers: &[EncoderLayer<B>],
        seeds: &[u64],
        h: Tensor<B, 3>,
        mask: &AttentionMask,
    ) -> Tensor<B, 3>;
}

thread_local! {
    /// The active runner: an `Rc<dyn SegmentRunner<AB>>` for the backend it serves.
    static ACTIVE: RefCell<Option<Rc<dyn Any>>> = const { RefCell::new(None) };
}

/// The runner active on this thread for backend `B`, if any (a tape for `Autodiff<X>` is
/// not one for `X`, so inference on the inner model inside a step runs plainly).
pub fn active_runner<B: Backend>() -> Option<Rc<dyn SegmentRunner<B>>> {
    ACTIVE.with(|a| {
        a.borrow()
            .as_ref()
            .and_then(|r| r.downcast_ref::<Rc<dyn SegmentRunner<B>>>().cloned())
    })
}

/// Ends an activation when dropped, restoring the previous one.
#[must_use = "the tape stops recording when this guard is dropped"]
pub struct ActiveGuard(Option<Rc<dyn Any>>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        ACTIVE.with(|a| *a.borrow_mut() = self.0.take());
    }
}

/// A hidden state or a key/value output of a segment.
#[derive(Clone, Debug)]
enum Value<B: Backend> {
    D3(Tensor<B, 3>),
    D4(Tensor<B, 4>),
}

impl<AB: AutodiffBackend> Value<AB> {
    fn grad(&self, grads: &AB::Gradients) -> Option<Value<AB::InnerBackend>> {
        match self {
            Value::D3(t) => t.grad(grads).map(Value::D3),
            Value::D4(t) => t.grad(grads).map(Value::D4),
        }
    }

    /// `Σ self · grad`, whose gradient with respect to `self` is `grad`.
    fn surrogate(&self, grad: &Value<AB::InnerBackend>) -> Option<Tensor<AB, 1>> {
        match (self, grad) {
            (Value::D3(t), Value::D3(g)) => Some((t.clone() * Tensor::from_inner(g.clone())).sum()),
            (Value::D4(t), Value::D4(g)) => Some((t.clone() * Tensor::from_inner(g.clone())).sum()),
            _ => None,
        }
    }
}

impl<B: Backend> Value<B> {
    fn add(self, other: Value<B>) -> Value<B> {
        match (self, other) {
            (Value::D3(a), Value::D3(b)) => Value::D3(a + b),
            (Value::D4(a), Value::D4(b)) => Value::D4(a + b),
            (a, _) => a,
        }
    }
}

/// Whether any parameter of `modules` takes gradients (trained, or an adapter's).
pub(crate) fn any_trainable<'a, B: Backend, M: Module<B> + 'a>(
    modules: impl IntoIterator<Item = &'a M>,
) -> bool {
    struct Trainable(bool);
    impl<B: Backend> ModuleVisitor<B> for Trainable {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.0 |= param.is_require_grad();
        }
    }
    let mut any = Trainable(false);
    for m in modules {
        m.visit(&mut any);
    }
    any.0
}

type Rerun<AB> = Box<dyn Fn() -> Vec<Value<AB>>>;

/// One recorded segment: its output leaves, the gradients that reached them, and how to run
/// it again with autodiff.
struct Record<AB: AutodiffBackend> {
    outputs: Vec<Value<AB>>,
    grads: Vec<Option<Value<AB::InnerBackend>>>,
    rerun: Rerun<AB>,
}

/// The per-step recorder of checkpointed segments (see the module docs).
pub struct LayerTape<AB: AutodiffBackend> {
    segment_len: usize,
    records: RefCell<Vec<Record<AB>>>,
    recorded: std::cell::Cell<usize>,
    rerun_seed_offset: u64,
}

impl<AB: AutodiffBackend> LayerTape<AB> {
    /// A tape keeping one input per `segment_len` layers (transformers: 1).
    pub fn new(segment_len: usize) -> Rc<Self> {
        Rc::new(Self {
            segment_len: segment_len.max(1),
            records: RefCell::new(Vec::new()),
            recorded: Default::default(),
            rerun_seed_offset: 0,
        })
    }

    /// A deliberately wrong tape whose recomputation draws other dropout masks: the negative
    /// control of the tests that show seeding matters. Never use it to train.
    #[doc(hidden)]
    pub fn with_broken_seeding(segment_len: usize) -> Rc<Self> {
        Rc::new(Self {
            segment_len: segment_len.max(1),
            records: RefCell::new(Vec::new()),
            recorded: Default::default(),
            rerun_seed_offset: 1,
        })
    }

    /// Makes the model record segments on this thread until the guard drops.
    pub fn activate(self: &Rc<Self>) -> ActiveGuard {
        let runner: Rc<dyn SegmentRunner<AB>> = self.clone();
        let any: Rc<dyn Any> = Rc::new(runner);
        ActiveGuard(ACTIVE.with(|a| a.borrow_mut().replace(any)))
    }

    /// Segments recorded over the tape's life (backward passes included).
    pub fn segments_recorded(&self) -> usize {
        self.recorded.get()
    }

    /// Segments recorded and not yet backpropagated.
    pub fn len(&self) -> usize {
        self.records.borrow().len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn record(&self, outputs: Vec<Value<AB>>, rerun: Rerun<AB>) {
        let grads = vec![None; outputs.len()];
        self.recorded.set(self.recorded.get() + 1);
        self.records.borrow_mut().push(Record {
            outputs,
            grads,
            rerun,
        });
    }

    fn rerun_seeds(&self, seeds: &[u64]) -> Vec<u64> {
        seeds
            .iter()
            .map(|s| s.wrapping_add(self.rerun_seed_offset))
            .collect()
    }

    /// Adds the gradients in `grads` of the records' outputs to those collected so far.
    fn collect(records: &mut [Record<AB>], grads: &AB::Gradients) {
        for record in records {
            for (out, acc) in record.outputs.iter().zip(record.grads.iter_mut()) {
                if let Some(g) = out.grad(grads) {
                    *acc = Some(match acc.take() {
                        Some(a) => a.add(g),
                        None => g,
                    });
                }
            }
        }
    }

    /// Backpropagates `loss` through the head and then through every recorded segment in
    /// reverse, recomputing each; `sink` receives the gradients of every partial backward
    /// (parameter gradients are the sum over all of them). Clears the tape.
    pub fn backward(&self, loss: Tensor<AB, 1>, mut sink: impl FnMut(&AB::Gradients)) {
        let mut records = std::mem::take(&mut *self.records.borrow_mut());
        let grads = loss.backward();
        sink(&grads);
        Self::collect(&mut records, &grads);
        drop(grads);
        while let Some(record) = records.pop() {
            // No gradient reached this segment's outputs: nothing flows through it.
            if record.grads.iter().all(Option::is_none) {
                continue;
            }
            let surrogate = {
                let outputs = (record.rerun)();
                outputs
                    .iter()
                    .zip(&record.grads)
                    .filter_map(|(out, g)| g.as_ref().and_then(|g| out.surrogate(g)))
                    .reduce(|a, b| a + b)
            };
            let Some(surrogate) = surrogate else {
                continue;
            };
            drop(record);
            let grads = surrogate.backward();
            sink(&grads);
            Self::collect(&mut records, &grads);
        }
    }
}

impl<AB: AutodiffBackend> SegmentRunner<AB> for LayerTape<AB> {
    fn segment_len(&self) -> usize {
        self.segment_len
    }

    fn decoder_segment(
        &self,
        layers: &[DecoderLayer<AB>],
        seeds: &[u64],
        h: Tensor<AB, 3>,
        rope: &Rope<AB>,
        mask: &AttentionMask,
        past: Vec<Option<LayerKv<AB>>>,
        keep_kv: bool,
    ) -> (Tensor<AB, 3>, Vec<LayerKv<AB>>) {
        let (out, kv) = {
            let inner: Vec<DecoderLayer<AB::InnerBackend>> =
                layers.iter().map(|l| l.valid()).collect();
            let past_inner = past
                .iter()
                .map(|p| p.clone().map(|(k, v)| (k.inner(), v.inner())))
                .collect();
            let _training = dropout::force_training();
            run_decoder_layers(
                &inner,
                seeds,
                h.clone().inner(),
                &rope.inner(),
                mask,
                past_inner,
            )
        };
        let inputs_tracked = h.is_require_grad()
            || past
                .iter()
                .flatten()
                .any(|(k, v)| k.is_require_grad() || v.is_require_grad());
        if !inputs_tracked && !any_trainable(layers) {
            // Nothing before or inside the segment trains: there is nothing to recompute.
            let kv = kv
                .into_iter()
                .map(|(k, v)| (Tensor::from_inner(k), Tensor::from_inner(v)))
                .collect();
            return (Tensor::from_inner(out), kv);
        }
        let out = Tensor::<AB, 3>::from_inner(out).require_grad();
        let leaf = |t: Tensor<AB::InnerBackend, 4>| match keep_kv {
            true => Tensor::<AB, 4>::from_inner(t).require_grad(),
            false => Tensor::from_inner(t),
        };
        let kv: Vec<LayerKv<AB>> = kv.into_iter().map(|(k, v)| (leaf(k), leaf(v))).collect();
        let mut outputs = vec![Value::D3(out.clone())];
        if keep_kv {
            for (k, v) in &kv {
                outputs.push(Value::D4(k.clone()));
                outputs.push(Value::D4(v.clone()));
            }
        }
        let (layers, seeds, rope, mask) = (
            layers.to_vec(),
            self.rerun_seeds(seeds),
            rope.clone(),
            mask.clone(),
        );
        self.record(
            outputs,
            Box::new(move || {
                let (out, kv) =
                    run_decoder_layers(&layers, &seeds, h.clone(), &rope, &mask, past.clone());
                let mut values = vec![Value::D3(out)];
                if keep_kv {
                    for (k, v) in kv {
                        values.push(Value::D4(k));
                        values.push(Value::D4(v));
                    }
                }
                values
            }),
        );
        (out, kv)
    }

    fn encoder_segment(
        &self,
        layers: &[EncoderLayer<AB>],
        seeds: &[u64],
        h: Tensor<AB, 3>,
        mask: &AttentionMask,
    ) -> Tensor<AB, 3> {
        let out = {
            let inner: Vec<EncoderLayer<AB::InnerBackend>> =
                layers.iter().map(|l| l.valid()).collect();
            let _training = dropout::force_training();
            run_encoder_layers(&inner, seeds, h.clone().inner(), mask)
        };
        if !h.is_require_grad() && !any_trainable(layers) {
            return Tensor::from_inner(out);
        }
        let out = Tensor::<AB, 3>::from_inner(out).require_grad();
        let (layers, seeds, mask) = (layers.to_vec(), self.rerun_seeds(seeds), mask.clone());
        self.record(
            vec![Value::D3(out.clone())],
            Box::new(move || {
                vec![Value::D3(run_encoder_layers(
                    &layers,
                    &seeds,
                    h.clone(),
                    &mask,
                ))]
            }),
        );
        out
    }
}
