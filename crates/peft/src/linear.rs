//! The one Linear layer of every projection in the model: a frozen base weight with optional
//! named LoRA/DoRA adapters and `modules_to_save` copies.

use burn::module::{Module, Param, ParamId};
use burn::tensor::{backend::Backend, Tensor, TensorData};
use vlmtune_kernels::linear;
use vlmtune_quant::{Init, QuantizedWeight, Weights};

use crate::error::{PeftError, Result};
use crate::lora::{row_norm, LoraAdapter, TrainableCopy};

/// A merged adapter: which one, and DoRA's factor needed to unmerge.
#[derive(Clone, Debug, PartialEq)]
pub struct MergeState {
    /// The merged adapter.
    pub adapter: String,
    /// DoRA's `magnitude / ‖W + ΔW‖` at merge time.
    pub dora_factor: Option<Vec<f32>>,
}

/// `y = x·Wᵀ + b + scaling·(dropout(x)·Aᵀ)·Bᵀ` (PEFT's unmerged LoRA forward), with
/// `W: [out_features, in_features]` as PyTorch stores it. The base `W` is frozen and never
/// materialised as a trainable tensor; only adapters (and `modules_to_save` copies) train.
///
/// Field names are the Hugging Face ones, so a base parameter's module path is its checkpoint
/// key. The base weight is either dense (`weight`) or, when a [`vlmtune_quant::QuantConfig`]
/// selected this layer while loading, held compressed in `quantized` and dequantised for each
/// matmul (QLoRA); exactly one of the two is set.
#[derive(Module, Debug)]
pub struct Linear<B: Backend> {
    /// `[out_features, in_features]`; frozen unless the layer is fully fine-tuned.
    pub weight: Option<Param<Tensor<B, 2>>>,
    /// The frozen base weight in a compact format (bf16/f16, int8, NF4/FP4); never trainable.
    pub quantized: Option<QuantizedWeight<B>>,
    /// `[out_features]`, when the layer has a bias.
    pub bias: Option<Param<Tensor<B, 1>>>,
    /// Named low-rank adapters.
    pub lora: Vec<LoraAdapter<B>>,
    /// Named full copies (`modules_to_save`).
    pub copies: Vec<TrainableCopy<B>>,
    /// The adapter in use (PEFT's active adapter).
    #[module(skip)]
    pub active_adapter: Option<String>,
    /// False while adapters are disabled (the base model alone, e.g. DPO's reference).
    #[module(skip)]
    pub adapters_enabled: bool,
    /// Set while an adapter is merged into `weight`.
    #[module(skip)]
    pub merged: Option<MergeState>,
}

impl<B: Backend> Linear<B> {
    /// Builds the layer from `<prefix>.weight` (and `<prefix>.bias` when `bias`), quantising
    /// the weight right away when the cursor's quantisation config selects this path (so only
    /// one layer's float weight is ever resident).
    ///
    /// Random initialisation follows PyTorch's `nn.Linear` (uniform ±1/√in).
    pub fn load(
        w: &Weights<B>,
        in_features: usize,
        out_features: usize,
        bias: bool,
    ) -> Result<Self> {
        let bound = 1.0 / (in_features as f64).sqrt();
        let init = Init::Uniform { bound };
        let shape = [out_features, in_features];
        let (weight, quantized) = match w.quant_format() {
            Some(format) => {
                let values = w.values("weight", &shape, init)?;
                let q = QuantizedWeight::quantize(&values, shape, format, w.device());
                (None, Some(q))
            }
            None => (Some(w.param("weight", shape, init)?), None),
        };
        Ok(Self {
            weight,
            quantized,
            bias: if bias {
                Some(w.param("bias", [out_features], init)?)
            } else {
                None
            },
            lora: Vec::new(),
            copies: Vec::new(),
            active_adapter: None,
            adapters_enabled: true,
            merged: None,
        })
    }

    /// `[out_features, in_features]`.
    pub fn dims(&self) -> [usize; 2] {
        match (&self.weight, &self.quantized) {
            (Some(w), _) => w.dims(),
            (None, Some(q)) => q.dims(),
            (None, None) => [0, 0],
        }
    }

    /// `in_features`.
    pub fn in_features(&self) -> usize {
        self.dims()[1]
    }

    /// `out_features`.
    pub fn out_features(&self) -> usize {
        self.dims()[0]
    }

    /// The device of the base weight.
    pub fn device(&self) -> B::Device {
        match (&self.weight, &self.quantized) {
            (Some(w), _) => w.device(),
            (None, Some(q)) => q.device(),
            (None, None) => Default::default(),
        }
    }

    /// Whether the base weight is held quantised.
    pub fn is_quantized(&self) -> bool {
        self.quantized.is_some()
    }

    /// The base weight `[out, in]` as a float tensor: the parameter's value, or the
    /// quantised storage dequantised on the device.
    pub fn base_weight(&self) -> Tensor<B, 2> {
        match (&self.weight, &self.quantized) {
            (Some(w), _) => w.val(),
            (None, Some(q)) => q.dequantize(),
            (None, None) => Tensor::zeros([0, 0], &Default::default()),
        }
    }

    /// Bytes held by the frozen base weight (and bias) on the device.
    pub fn base_bytes(&self) -> usize {
        let weight = match (&self.weight, &self.quantized) {
            (Some(w), _) => 4 * w.shape().num_elements(),
            (None, Some(q)) => q.storage_bytes(),
            (None, None) => 0,
        };
        weight
            + self
                .bias
                .as_ref()
                .map_or(0, |b| 4 * b.shape().num_elements())
    }

    /// The adapter the forward pass applies, if any.
    pub fn active(&self) -> Option<&str> {
        if self.adapters_enabled {
            self.active_adapter.as_deref()
        } else {
            None
        }
    }

    /// The LoRA adapter called `name`.
    pub fn adapter(&self, name: &str) -> Option<&LoraAdapter<B>> {
        self.lora.iter().find(|a| a.name == name)
    }

    /// The `modules_to_save` copy called `name`.
    pub fn copy(&self, name: &str) -> Option<&TrainableCopy<B>> {
        self.copies.iter().find(|c| c.name == name)
    }

    /// Applies the layer to the last dimension: `[..., in] -> [..., out]`.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let mut out_shape = x.dims();
        let in_features = out_shape[D - 1];
        out_shape[D - 1] = self.out_features();
        let rows = x.shape().num_elements() / in_features.max(1);
        self.forward_rows(x.reshape([rows, in_features]))
            .reshape(out_shape)
    }

    /// The forward pass on `[rows, in]`.
    fn forward_rows(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let active = self.active();
        if let Some(copy) = active.and_then(|n| self.copy(n)) {
            return affine(x, copy.weight.val(), copy.bias.as_ref().map(Param::val));
        }
        let base = match &self.quantized {
            // The backward dequantises again rather than keeping the float weight alive.
            Some(q) => vlmtune_quant::quantized_linear(x.clone(), q),
            None => linear(x.clone(), self.base_weight()),
        };
        let unmerged = active.filter(|n| self.merged.as_ref().is_none_or(|m| m.adapter != *n));
        let mut y = match unmerged.and_then(|n| self.adapter(n)) {
            None => base,
            Some(lora) => match lora.magnitude.as_ref().and_then(|_| {
                // DoRA needs the base weight itself (dequantised once when quantised).
                let weight = self.base_weight();
                lora.dora_scale(weight.clone()).map(|scale| (weight, scale))
            }) {
                None => base + lora.lora_output(lora.dropout_input(x)),
                Some((weight, scale)) => {
                    // DoRA: (m/‖W+ΔW‖ - 1)·(x'Wᵀ) + m/‖W+ΔW‖·scaling·(x'AᵀBᵀ), with x' the
                    // dropped-out input (PEFT recomputes x'Wᵀ only when dropout is active).
                    let dropped = lora.dropout_input(x.clone());
                    let base_dropped = if lora.dropout_applies(&dropped.device()) {
                        linear(dropped.clone(), weight)
                    } else {
                        base.clone()
                    };
                    let scale = scale.unsqueeze::<2>();
                    base + (scale.clone() - 1.0) * base_dropped + scale * lora.lora_output(dropped)
                }
            },
        };
        if let Some(bias) = &self.bias {
            y = y + bias.val().unsqueeze();
        }
        y
    }

    /// Adds adapter `lora` (the first one added becomes active).
    pub fn add_lora(&mut self, mut lora: LoraAdapter<B>, dora: bool) {
        if dora {
            let norm = row_norm(self.base_weight() + lora.delta_weight()).detach();
            lora.magnitude = Some(Param::initialized(ParamId::new(), norm).set_require_grad(true));
        }
        self.lora.push(lora);
    }

    /// Adds a trainable copy of weight and bias for adapter `name`.
    pub fn add_copy(&mut self, name: &str) {
        let weight =
            Param::initialized(ParamId::new(), self.base_weight().detach()).set_require_grad(true);
        let bias = self
            .bias
            .as_ref()
            .map(|b| Param::initialized(ParamId::new(), b.val().detach()).set_require_grad(true));
        self.copies.push(TrainableCopy {
            weight,
            bias,
            name: name.to_string(),
        });
    }

    /// Errors when the active adapter cannot be merged because the base weight is quantised
    /// (merging needs the float base; PEFT would re-quantise with rounding).
    pub fn ensure_mergeable(&self) -> Result<()> {
        let active = self.active_adapter.as_deref();
        match active.filter(|n| self.is_quantized() && self.adapter(n).is_some()) {
            Some(name) => Err(PeftError::State(format!(
                "cannot merge adapter `{name}` into a quantised base weight: load the base model without quantisation to merge"
            ))),
            None => Ok(()),
        }
    }

    /// Merges the active LoRA adapter into `weight` (PEFT's `merge`): `W + scaling·B·A`, or for
    /// DoRA `m/‖W+ΔW‖ · (W + ΔW)`.
    pub fn merge(&mut self) -> Result<()> {
        let Some(name) = self.active_adapter.clone() else {
            return Ok(());
        };
        if self.merged.is_some() {
            return Err(PeftError::State(format!(
                "adapter `{name}` is already merged"
            )));
        }
        let Some(lora) = self.adapter(&name) else {
            return Ok(());
        };
        self.ensure_mergeable()?;
        let w = self.base_weight();
        let delta = lora.delta_weight();
        let (new_w, factor) = match &lora.magnitude {
            None => (w + delta, None),
            Some(m) => {
                let combined = w + delta;
                let factor = m.val() / row_norm(combined.clone());
                let host = factor
                    .clone()
                    .into_data()
                    .convert::<f32>()
                    .to_vec::<f32>()
                    .map_err(|e| PeftError::State(format!("{e:?}")))?;
                (combined * factor.unsqueeze_dim::<2>(1), Some(host))
            }
        };
        self.set_weight(new_w.detach());
        self.merged = Some(MergeState {
            adapter: name,
            dora_factor: factor,
        });
        Ok(())
    }

    /// Undoes [`Linear::merge`].
    pub fn unmerge(&mut self) -> Result<()> {
        let Some(state) = self.merged.take() else {
            return Ok(());
        };
        let Some(lora) = self.adapter(&state.adapter) else {
            return Err(PeftError::State(format!(
                "merged adapter `{}` was deleted",
                state.adapter
            )));
        };
        let delta = lora.delta_weight();
        let w = self.base_weight();
        let restored = match state.dora_factor {
            None => w - delta,
            Some(f) => {
                let out = f.len();
                let factor = Tensor::<B, 2>::from_data(TensorData::new(f, [out, 1]), &w.device());
                w / factor - delta
            }
        };
        self.set_weight(restored.detach());
        Ok(())
    }

    /// Replaces the base weight's value, keeping its id and trainability (a quantised base
    /// becomes a dense, frozen one).
    pub fn set_weight(&mut self, value: Tensor<B, 2>) {
        self.quantized = None;
        self.weight = Some(match self.weight.take() {
            Some(w) => {
                let trainable = w.is_require_grad();
                Param::initialized(w.id, value).set_require_grad(trainable)
            }
            None => Param::initialized(ParamId::new(), value).set_require_grad(false),
        });
    }

    /// Removes every adapter structure, keeping a merged adapter's effect and promoting the
    /// active adapter's `modules_to_save` copy to the base weight.
    pub fn unload(&mut self) {
        if let Some(copy) = self.active_adapter.as_deref().and_then(|n| self.copy(n)) {
            let weight = copy.weight.val().detach();
            let bias = copy.bias.as_ref().map(|b| b.val().detach());
            self.set_weight(weight);
            if let (Some(b), Some(value)) = (&mut self.bias, bias) {
                let id = b.id;
                *b = Param::initialized(id, value).set_require_grad(false);
            }
        }
        self.lora.clear();
        self.copies.clear();
        self.active_adapter = None;
        self.merged = None;
    }
}

/// `x·Wᵀ + b` on `[rows, in]`.
fn affine<B: Backend>(x: Tensor<B, 2>, w: Tensor<B, 2>, b: Option<Tensor<B, 1>>) -> Tensor<B, 2> {
    let y = linear(x, w);
    match b {
        Some(b) => y + b.unsqueeze(),
        None => y,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{InitLoraWeights, LoraConfig, ModuleSelector};
    use vlmtune_quant::RandomInit;

    type B = burn::backend::Flex;

    fn layer() -> Linear<B> {
        let src = RandomInit::new(3);
        Linear::<B>::load(
            &Weights::new(&src, &Default::default()).pp("fc"),
            5,
            4,
            true,
        )
        .unwrap()
    }

    fn host(t: Tensor<B, 2>) -> Vec<f32> {
        t.into_data().to_vec::<f32>().unwrap()
    }

    fn input() -> Tensor<B, 2> {
        Tensor::from_data(
            TensorData::new(
                (0..10).map(|v| v as f32 * 0.3 - 1.0).collect::<Vec<_>>(),
                [2, 5],
            ),
            &Default::default(),
        )
    }

    #[test]
    fn forward_matches_manual_lora_and_merge_round_trips() {
        let mut lin = layer();
        let mut config = LoraConfig::new(2, 4.0, ModuleSelector::list(&["fc"]));
        config.init_lora_weights = InitLoraWeights::Bool(false);
        lin.add_lora(
            LoraAdapter::init("default", "fc", 5, 4, &config, 1, &Default::default()),
            false,
        );
        lin.active_adapter = Some("default".into());
        let x = input();
        let y = host(lin.forward(x.clone()));
        let lora = lin.adapter("default").unwrap();
        let w = lin.base_weight() + lora.delta_weight();
        let want =
            host(x.clone().matmul(w.transpose()) + lin.bias.as_ref().unwrap().val().unsqueeze());
        for (a, b) in y.iter().zip(&want) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        let before = host(lin.base_weight());
        lin.merge().unwrap();
        for (a, b) in host(lin.forward(x.clone())).iter().zip(&y) {
            assert!((a - b).abs() < 1e-5);
        }
        lin.unmerge().unwrap();
        for (a, b) in host(lin.base_weight()).iter().zip(&before) {
            assert!((a - b).abs() < 1e-5);
        }
        lin.adapters_enabled = false;
        let base = host(lin.forward(x));
        assert!(base.iter().zip(&y).any(|(a, b)| (a - b).abs() > 1e-3));
    }

    #[test]
    fn fresh_dora_equals_the_base_layer() {
        let mut lin = layer();
        let config = LoraConfig::new(2, 4.0, ModuleSelector::list(&["fc"]));
        lin.add_lora(
            LoraAdapter::init("default", "fc", 5, 4, &config, 1, &Default::default()),
            true,
        );
        let x = input();
        let base = host(lin.forward(x.clone()));
        lin.active_adapter = Some("default".into());
        for (a, b) in host(lin.forward(x)).iter().zip(&base) {
            assert!(
                (a - b).abs() < 1e-5,
                "B = 0 and m = ‖W‖ leave the output unchanged"
            );
        }
    }
}
