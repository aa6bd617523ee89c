//! Gradients by parameter path, global-norm clipping, and AdamW exactly as
//! `torch.optim.AdamW` computes it, with its state saved and restored by path.

use std::collections::BTreeMap;

use burn::module::{AutodiffModule, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use vlmtune_model::LayerTape;
use vlmtune_peft::PathTracker;
use vlmtune_quant::NamedTensor;

use crate::error::{Result, TrainError};

/// Flattened tensors keyed by parameter path.
pub type TensorMap<B> = BTreeMap<String, Tensor<B, 1>>;

struct GradCollector<'a, AB: AutodiffBackend> {
    path: PathTracker,
    grads: &'a AB::Gradients,
    out: TensorMap<AB::InnerBackend>,
}

impl<AB: AutodiffBackend> ModuleVisitor<AB> for GradCollector<'_, AB> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.enter(name);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AB, D>>) {
        if !param.is_require_grad() {
            return;
        }
        if let Some(g) = param.val().grad(self.grads) {
            let n = g.shape().num_elements();
            self.out.insert(self.path.path(), g.reshape([n]));
        }
    }
}

/// The gradient of every trainable parameter, flattened, by path.
pub fn collect_grads<AB: AutodiffBackend, M: AutodiffModule<AB>>(
    module: &M,
    grads: &AB::Gradients,
) -> TensorMap<AB::InnerBackend> {
    let mut c = GradCollector::<AB> {
        path: PathTracker::default(),
        grads,
        out: BTreeMap::new(),
    };
    module.visit(&mut c);
    c.out
}

/// The gradients of `loss` for every trainable parameter of `module`, by path: one
/// backward, or, under gradient checkpointing, the loss's backward and then each segment
/// `tape` recorded while `loss` was computed, recomputed in reverse.
pub fn loss_grads<AB: AutodiffBackend, M: AutodiffModule<AB>>(
    module: &M,
    loss: Tensor<AB, 1>,
    tape: Option<&LayerTape<AB>>,
) -> TensorMap<AB::InnerBackend> {
    match tape {
        Some(tape) => {
            let mut out = BTreeMap::new();
            tape.backward(loss, |g| accumulate(&mut out, collect_grads(module, g)));
            out
        }
        None => collect_grads(module, &loss.backward()),
    }
}

struct ValueCollector<AB: AutodiffBackend> {
    path: PathTracker,
    wanted: std::collections::BTreeSet<String>,
    out: TensorMap<AB::InnerBackend>,
}

impl<AB: AutodiffBackend> ModuleVisitor<AB> for ValueCollector<AB> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.enter(name);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AB, D>>) {
        let path = self.path.path();
        if self.wanted.contains(&path) {
            let v = param.val().inner();
            let n = v.shape().num_elements();
            self.out.insert(path, v.reshape([n]));
        }
    }
}

struct ValueSetter<AB: AutodiffBackend> {
    path: PathTracker,
    values: TensorMap<AB::InnerBackend>,
}

impl<AB: AutodiffBackend> ModuleMapper<AB> for ValueSetter<AB> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.enter(name);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<AB, D>>) -> Param<Tensor<AB, D>> {
        match self.values.remove(&self.path.path()) {
            Some(new) => {
                let (id, old, mapper) = param.consume();
                let shape = old.shape();
                let value = Tensor::<AB, D>::from_inner(new.reshape(shape)).require_grad();
                Param::from_mapped_value(id, value, mapper)
            }
            None => param,
        }
    }
}

/// Sum of squares of all gradients, then the square root (`clip_grad_norm_`'s total norm).
pub fn global_norm<B: Backend>(grads: &TensorMap<B>) -> Result<f64> {
    let mut total = 0.0f64;
    for g in grads.values() {
        total += f64::from(scalar(g.clone().square().sum())?);
    }
    Ok(total.sqrt())
}

fn scalar<B: Backend>(t: Tensor<B, 1>) -> Result<f32> {
    t.into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .map_err(|e| TrainError::Readback(format!("{e:?}")))
        .map(|v| v.first().copied().unwrap_or(0.0))
}

/// Adds `other` into `acc` (gradient accumulation).
pub fn accumulate<B: Backend>(acc: &mut TensorMap<B>, other: TensorMap<B>) {
    for (k, g) in other {
        match acc.remove(&k) {
            Some(a) => acc.insert(k, a + g),
            None => acc.insert(k, g),
        };
    }
}

/// Scales gradients so their global norm is at most `max_norm` (torch's
/// `clip_grad_norm_`: factor `max_norm / (norm + 1e-6)` when below 1). Returns the norm
/// before clipping.
pub fn clip_grad_norm<B: Backend>(grads: &mut TensorMap<B>, max_norm: f64) -> Result<f64> {
    let norm = global_norm(grads)?;
    if max_norm > 0.0 {
        let coef = max_norm / (norm + 1e-6);
        if coef < 1.0 {
            for g in grads.values_mut() {
                *g = g.clone().mul_scalar(coef);
            }
        }
    }
    Ok(norm)
}

/// The values of the parameters named in `wanted`, flattened, by path.
pub(crate) fn param_values<AB: AutodiffBackend, M: AutodiffModule<AB>>(
    module: &M,
    wanted: std::collections::BTreeSet<String>,
) -> TensorMap<AB::InnerBackend> {
    let mut values = ValueCollector::<AB> {
        path: PathTracker::default(),
        wanted,
        out: BTreeMap::new(),
    };
    module.visit(&mut values);
    values.out
}

/// `module` with the parameters named in `values` replaced (keeping their shapes and whether
/// they train).
pub(crate) fn set_param_values<AB: AutodiffBackend, M: AutodiffModule<AB>>(
    module: M,
    values: TensorMap<AB::InnerBackend>,
) -> M {
    module.map(&mut ValueSetter::<AB> {
        path: PathTracker::default(),
        values,
    })
}

/// Whether weight decay applies to `path` (transformers skips biases and norm weights).
pub fn decays(path: &str) -> bool {
    !(path.ends_with("bias") || path.contains("norm"))
}

/// `torch.optim.AdamW` (decoupled weight decay, bias-corrected moments).
#[derive(Clone, Debug)]
pub struct AdamW<B: Backend> {
    /// β₁.
    pub beta1: f64,
    /// β₂.
    pub beta2: f64,
    /// ε.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// Updates done so far.
    pub step: u64,
    /// First moments.
    pub exp_avg: TensorMap<B>,
    /// Second moments.
    pub exp_avg_sq: TensorMap<B>,
}

impl<B: Backend> AdamW<B> {
    /// A fresh optimizer.
    pub fn new(beta1: f64, beta2: f64, eps: f64, weight_decay: f64) -> Self {
        Self {
            beta1,
            beta2,
            eps,
            weight_decay,
            step: 0,
            exp_avg: BTreeMap::new(),
            exp_avg_sq: BTreeMap::new(),
        }
    }

    /// Applies one update with learning rate `lr` to the parameters named in `grads`.
    pub fn update<AB, M>(&mut self, module: M, grads: TensorMap<B>, lr: f64) -> M
    where
        AB: AutodiffBackend<InnerBackend = B>,
        M: AutodiffModule<AB>,
    {
        self.step += 1;
        let t = self.step as i32;
        let bias1 = 1.0 - self.beta1.powi(t);
        let bias2_sqrt = (1.0 - self.beta2.powi(t)).sqrt();
        let mut values = param_values::<AB, M>(&module, grads.keys().cloned().collect());
        let mut new_values = BTreeMap::new();
        for (path, g) in grads {
            let Some(p) = values.remove(&path) else {
                continue;
            };
            let p = if self.weight_decay > 0.0 && decays(&path) {
                p.mul_scalar(1.0 - lr * self.weight_decay)
            } else {
                p
            };
            let m = match self.exp_avg.remove(&path) {
                Some(m) => m.mul_scalar(self.beta1) + g.clone().mul_scalar(1.0 - self.beta1),
                None => g.clone().mul_scalar(1.0 - self.beta1),
            };
            let v = match self.exp_avg_sq.remove(&path) {
                Some(v) => v.mul_scalar(self.beta2) + g.square().mul_scalar(1.0 - self.beta2),
                None => g.square().mul_scalar(1.0 - self.beta2),
            };
            let denom = v.clone().sqrt().div_scalar(bias2_sqrt).add_scalar(self.eps);
            let updated = p - (m.clone() / denom).mul_scalar(lr / bias1);
            self.exp_avg.insert(path.clone(), m);
            self.exp_avg_sq.insert(path.clone(), v);
            new_values.insert(path, updated);
        }
        set_param_values::<AB, M>(module, new_values)
    }

    /// The state as named tensors (`exp_avg.<path>`, `exp_avg_sq.<path>`, `step`).
    pub fn state_tensors(&self) -> Result<Vec<NamedTensor>> {
        let mut out = Vec::new();
        for (prefix, map) in [("exp_avg", &self.exp_avg), ("exp_avg_sq", &self.exp_avg_sq)] {
            for (path, t) in map {
                let values = t
                    .to_data()
                    .convert::<f32>()
                    .to_vec::<f32>()
                    .map_err(|e| TrainError::Readback(format!("{e:?}")))?;
                out.push(NamedTensor {
                    name: format!("{prefix}.{path}"),
                    shape: vec![values.len()],
                    values,
                });
            }
        }
        out.push(NamedTensor {
            name: "step".into(),
            values: vec![self.step as f32],
            shape: vec![1],
        });
        Ok(out)
    }

    /// Restores state written by [`AdamW::state_tensors`].
    pub fn load_state(&mut self, tensors: Vec<NamedTensor>, device: &B::Device) {
        for t in tensors {
            let n = t.values.len();
            let tensor =
                || Tensor::<B, 1>::from_data(TensorData::new(t.values.clone(), [n]), device);
            if t.name == "step" {
                self.step = t.values.first().copied().unwrap_or(0.0) as u64;
            } else if let Some(path) = t.name.strip_prefix("exp_avg_sq.") {
                self.exp_avg_sq.insert(path.to_string(), tensor());
            } else if let Some(path) = t.name.strip_prefix("exp_avg.") {
                self.exp_avg.insert(path.to_string(), tensor());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type AB = burn::backend::Autodiff<burn::backend::Flex>;

    #[derive(burn::module::Module, Debug)]
    struct Toy<B: Backend> {
        w: Param<Tensor<B, 1>>,
        bias: Param<Tensor<B, 1>>,
    }

    #[test]
    fn two_adamw_steps_match_torch() {
        // torch.optim.AdamW([w, bias], lr=0.1, weight_decay=0.5) with grads g1 then g2:
        // w = [1, -2] -> [0.85, -1.8] -> [0.7203936, -1.7466103]; bias (no decay) -> [0.3128936, 0.5633897]
        let dev = Default::default();
        let p = |v: Vec<f32>| {
            Param::from_tensor(Tensor::<AB, 1>::from_data(TensorData::new(v, [2]), &dev))
                .set_require_grad(true)
        };
        let mut toy = Toy {
            w: p(vec![1.0, -2.0]),
            bias: p(vec![0.5, 0.5]),
        };
        let mut opt = AdamW::new(0.9, 0.999, 1e-8, 0.5);
        for g in [[0.3f32, -0.2], [0.1, 0.4]] {
            let mut grads = BTreeMap::new();
            grads.insert(
                "w".to_string(),
                Tensor::from_data(TensorData::new(g.to_vec(), [2]), &dev),
            );
            grads.insert(
                "bias".to_string(),
                Tensor::from_data(TensorData::new(g.to_vec(), [2]), &dev),
            );
            toy = opt.update::<AB, _>(toy, grads, 0.1);
        }
        let w = toy.w.val().into_data().to_vec::<f32>().unwrap();
        let want = [0.720_393_6, -1.746_610_3];
        for (a, b) in w.iter().zip(want) {
            assert!((a - b).abs() < 1e-5, "{w:?}");
        }
        let b = toy.bias.val().into_data().to_vec::<f32>().unwrap();
        assert!(
            (b[0] - 0.312_893_6).abs() < 1e-5 && (b[1] - 0.563_389_7).abs() < 1e-5,
            "{b:?}"
        );
        assert!(toy.w.is_require_grad());
    }
}
