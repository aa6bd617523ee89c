//! One LoRA (or DoRA) adapter of a Linear layer, and a full trainable copy for
//! `modules_to_save`.

use burn::module::{Module, Param, ParamId};
use burn::tensor::{backend::Backend, Tensor, TensorData};

use crate::config::{InitLoraWeights, LoraConfig};
use vlmtune_quant::{sample_init, stable_hash, Init};

/// A named low-rank adapter: `Δy = scaling · B·A·x`, DoRA-rescaled when `magnitude` is set.
#[derive(Module, Debug)]
pub struct LoraAdapter<B: Backend> {
    /// `[r, in_features]`.
    pub lora_a: Param<Tensor<B, 2>>,
    /// `[out_features, r]`.
    pub lora_b: Param<Tensor<B, 2>>,
    /// DoRA's per-output magnitude `[out_features]`.
    pub magnitude: Option<Param<Tensor<B, 1>>>,
    /// Adapter name (`default`, ...).
    #[module(skip)]
    pub name: String,
    /// `lora_alpha / r` (or `/ sqrt(r)`).
    #[module(skip)]
    pub scaling: f64,
    /// Input dropout while training.
    #[module(skip)]
    pub dropout: f64,
}

fn trainable<B: Backend, const D: usize>(
    values: Vec<f32>,
    shape: [usize; D],
    device: &B::Device,
) -> Param<Tensor<B, D>> {
    let t = Tensor::<B, D>::from_data(TensorData::new(values, shape), device);
    Param::initialized(ParamId::new(), t).set_require_grad(true)
}

impl<B: Backend> LoraAdapter<B> {
    /// A new adapter for a `[out, in]` layer at `path`, initialised as `config` says with a
    /// seed mixed from `seed` and the path (PEFT: A kaiming-uniform(a=√5) = U(±1/√in), B = 0;
    /// `gaussian`: A ~ N(0, 1/r); `false`: A and B both `nn.Linear`-random).
    pub fn init(
        name: &str,
        path: &str,
        in_features: usize,
        out_features: usize,
        config: &LoraConfig,
        seed: u64,
        device: &B::Device,
    ) -> Self {
        let r = config.rank_for(path);
        let s = seed ^ stable_hash(path) ^ stable_hash(name);
        let a_init = match &config.init_lora_weights {
            InitLoraWeights::Named(_) => Init::Normal {
                std: 1.0 / r as f64,
            },
            InitLoraWeights::Bool(_) => Init::Uniform {
                bound: 1.0 / (in_features as f64).sqrt(),
            },
        };
        let b_init = match &config.init_lora_weights {
            InitLoraWeights::Bool(false) => Init::Uniform {
                bound: 1.0 / (r as f64).sqrt(),
            },
            _ => Init::Zeros,
        };
        Self {
            lora_a: trainable(
                sample_init(a_init, r * in_features, s),
                [r, in_features],
                device,
            ),
            lora_b: trainable(
                sample_init(b_init, out_features * r, s.rotate_left(17)),
                [out_features, r],
                device,
            ),
            magnitude: None,
            name: name.to_string(),
            scaling: config.scaling_for(path),
            dropout: config.lora_dropout,
        }
    }

    /// The rank.
    pub fn rank(&self) -> usize {
        self.lora_a.dims()[0]
    }

    /// `scaling · B·A`, `[out, in]`.
    pub fn delta_weight(&self) -> Tensor<B, 2> {
        self.lora_b
            .val()
            .matmul(self.lora_a.val())
            .mul_scalar(self.scaling)
    }

    /// Applies inverted input dropout when training (autodiff backends, as burn's `Dropout`,
    /// or a checkpointed layer's tape-less forward), with a mask that [`crate::dropout`]
    /// makes reproducible.
    pub fn dropout_input<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        if !self.dropout_applies(&x.device()) {
            return x;
        }
        let mask = crate::dropout::mask::<B, D>(x.dims(), 1.0 - self.dropout, &x.device());
        x * mask
    }

    /// Whether [`Self::dropout_input`] changes its input on `device`.
    pub fn dropout_applies(&self, device: &B::Device) -> bool {
        self.dropout > 0.0 && crate::dropout::active::<B>(device)
    }

    /// `scaling · (x·Aᵀ)·Bᵀ` on `[rows, in]`.
    pub fn lora_output(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let low_rank = vlmtune_kernels::linear(x, self.lora_a.val());
        vlmtune_kernels::linear(low_rank, self.lora_b.val()).mul_scalar(self.scaling)
    }

    /// DoRA's `magnitude / ‖W + scaling·B·A‖` per output row, the norm detached (DoRA §4.3).
    pub fn dora_scale(&self, weight: Tensor<B, 2>) -> Option<Tensor<B, 1>> {
        let magnitude = self.magnitude.as_ref()?;
        let norm = row_norm(weight + self.delta_weight().detach()).detach();
        Some(magnitude.val() / norm)
    }
}

/// L2 norm of each row of `[out, in]`: `[out]`.
pub fn row_norm<B: Backend>(w: Tensor<B, 2>) -> Tensor<B, 1> {
    let out = w.dims()[0];
    w.square().sum_dim(1).sqrt().reshape([out])
}

/// A full trainable copy of a layer's weight and bias (`modules_to_save`), used instead of the
/// frozen original while its adapter is active.
#[derive(Module, Debug)]
pub struct TrainableCopy<B: Backend> {
    /// `[out, in]`.
    pub weight: Param<Tensor<B, 2>>,
    /// `[out]`.
    pub bias: Option<Param<Tensor<B, 1>>>,
    /// The adapter this copy belongs to.
    #[module(skip)]
    pub name: String,
}
