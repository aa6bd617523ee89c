//! Peak training memory, estimated from the architecture and the step's shape, and the
//! largest batch that fits a budget (transformers' `auto_find_batch_size`, planned ahead
//! instead of found by trial).
//!
//! The activation model counts what vlmtune's kernels keep for the backward (f32): per text
//! token and decoder layer the two RMSNorm inputs and the normed attention input, q/k/v and
//! the attention output, the MLP's gate/up outputs and their product (4·D + 2·H·hd +
//! 2·KV·hd + 3·I floats), less what only a frozen projection would read (the fused Linear
//! keeps an input only for its weight's gradient): the normed attention input when nothing
//! in q/k/v trains, the normed MLP input and the gate·up product when nothing in the MLP
//! trains (LoRA on the attention: D + I fewer); per vision patch and encoder layer, when the
//! tower trains, the two LayerNorm inputs and outputs, q/k/v/out, fc1's output and its GELU (8·Dv + 2·Iv). A
//! frozen tower runs without a tape: only one layer's working set is alive at a time.
//! Under gradient checkpointing a decoder layer keeps its input (D per token), and one
//! segment's full set is alive during its recomputation. The estimate is checked against
//! measured peak RSS in `tests/memory_plan.rs`.

use std::fmt;

use vlmtune_model::VlmConfig;
use vlmtune_peft::MemoryReport;

use crate::error::{Result, TrainError};

const F32: u64 = 4;
const MIB: f64 = 1024.0 * 1024.0;

/// The process itself (code, allocator arenas, thread stacks, tokenizer): measured on the
/// CPU build, added to every estimate.
pub const RUNTIME_BYTES: u64 = 48 << 20;

/// The shape of one micro-batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepShape {
    /// Rows (`per_device_train_batch_size`).
    pub batch_size: usize,
    /// Tokens per row (padded), images included.
    pub seq_len: usize,
    /// Image tiles per row (0: text only).
    pub tiles: usize,
    /// Labelled tokens per row (logits are only computed there).
    pub labelled: usize,
}

/// What trains and how the step runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepSetup {
    /// Something in the vision tower trains (weights or adapters).
    pub vision_trains: bool,
    /// Something in the connector trains (weights or adapters).
    pub connector_trains: bool,
    /// Something in the text layers' q/k/v projections trains (weights or adapters).
    pub qkv_trains: bool,
    /// Something in the text layers' MLP trains (weights or adapters).
    pub mlp_trains: bool,
    /// Layer-wise gradient checkpointing.
    pub gradient_checkpointing: bool,
    /// Layers per checkpointed segment.
    pub checkpoint_every: usize,
    /// 8-bit optimizer states (`adamw_8bit`: 2 bytes + an f32 per 256 values for both
    /// moments, instead of 8 bytes).
    pub optimizer_8bit: bool,
}

/// An estimate of a training step's peak memory, by part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryPlan {
    /// Frozen and trainable weights as stored (quantised ones by their bytes).
    pub weights: u64,
    /// Gradients and AdamW's two moments of the trainable parameters.
    pub adapters_and_optimizer: u64,
    /// Activations kept for (or recomputed in) the backward at their peak, with the batch's
    /// pixels; or, when larger, the optimizer update's new parameter values (the update runs
    /// after the activations are gone).
    pub activations: u64,
    /// The process's own memory ([`RUNTIME_BYTES`]).
    pub runtime: u64,
}

impl MemoryPlan {
    /// The estimated peak.
    pub fn total(&self) -> u64 {
        self.weights + self.adapters_and_optimizer + self.activations + self.runtime
    }
}

impl fmt::Display for MemoryPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mib = |b: u64| b as f64 / MIB;
        write!(
            f,
            "estimated peak {:.0} MiB = weights {:.0} MiB + adapters/grads/optimizer {:.0} MiB + activations {:.0} MiB + runtime {:.0} MiB",
            mib(self.total()),
            mib(self.weights),
            mib(self.adapters_and_optimizer),
            mib(self.activations),
            mib(self.runtime)
        )
    }
}

/// Floats kept per text token and decoder layer without checkpointing.
fn text_floats_per_token(config: &VlmConfig, setup: &StepSetup) -> u64 {
    let t = &config.text_config;
    let (d, i) = (t.hidden_size as u64, t.intermediate_size as u64);
    let (h, kv, hd) = (
        t.num_attention_heads as u64,
        t.kv_heads() as u64,
        t.head_dim() as u64,
    );
    let normed_attention_input = if setup.qkv_trains { d } else { 0 };
    let (normed_mlp_input, gate_up_product) = if setup.mlp_trains { (d, i) } else { (0, 0) };
    // The two RMSNorm inputs, q/k/v and the attention output, the MLP's gate and up outputs.
    2 * d
        + 2 * h * hd
        + 2 * kv * hd
        + 2 * i
        + normed_attention_input
        + normed_mlp_input
        + gate_up_product
}

/// Floats kept per vision patch and encoder layer when the tower trains.
fn vision_floats_per_patch(config: &VlmConfig) -> u64 {
    let v = &config.vision_config;
    8 * v.hidden_size as u64 + 2 * v.intermediate_size as u64
}

/// Patches the vision tower encodes at once (the model runs tiles in chunks of this size).
const VISION_CHUNK_PATCHES: u64 = 1024;

/// Estimates the peak memory of one training step of `config` with the weights `weights`
/// describes (a loaded model's [`vlmtune_peft::memory_report`]).
///
/// The step has two phases whose activations are not alive together when the vision tower
/// is frozen: the tower (one chunk of tiles at a time, plus its output) and the text model's
/// forward and backward. When the tower trains, its kept activations (or checkpoints) are
/// alive through the text phase too. The pixels of the batch are alive throughout.
pub fn estimate(
    config: &VlmConfig,
    weights: &MemoryReport,
    shape: StepShape,
    setup: StepSetup,
) -> MemoryPlan {
    let t = &config.text_config;
    let v = &config.vision_config;
    let layers = t.num_hidden_layers as u64;
    let tokens = (shape.batch_size * shape.seq_len) as u64;
    let per_layer = text_floats_per_token(config, &setup) * tokens * F32;
    let every = setup.checkpoint_every.max(1) as u64;
    let text = if setup.gradient_checkpointing {
        let kept = t.hidden_size as u64 * tokens * F32;
        layers.div_ceil(every) * kept + every.min(layers) * per_layer
    } else {
        layers * per_layer
    };
    // Logits, their softmax and gradient at the labelled positions.
    let head = 3 * (shape.batch_size * shape.labelled) as u64 * t.vocab_size as u64 * F32;
    let patches = (v.image_size / v.patch_size).pow(2) as u64;
    let tiles = (shape.batch_size * shape.tiles) as u64;
    let (dv, iv) = (v.hidden_size as u64, v.intermediate_size as u64);
    let vision_layers = v.num_hidden_layers as u64;
    let pixels = tiles * (v.num_channels * v.image_size * v.image_size) as u64 * F32;
    let output = tiles * patches * dv * F32;
    let (vision_phase, vision_kept) = if tiles == 0 {
        (0, 0)
    } else if setup.vision_trains {
        let per_layer = vision_floats_per_patch(config) * tiles * patches * F32;
        let chunk = VISION_CHUNK_PATCHES.max(patches) * vision_floats_per_patch(config) * F32;
        let kept = if setup.gradient_checkpointing {
            vision_layers.div_ceil(every) * dv * tiles * patches * F32
                + every.min(vision_layers) * chunk
        } else {
            vision_layers * per_layer
        };
        (kept + output, kept)
    } else {
        // One frozen layer's working set on one chunk: its input, the residual branch and
        // the MLP's two intermediate tensors.
        let chunk = VISION_CHUNK_PATCHES.max(patches).min(tiles * patches);
        // With the connector frozen too, it runs on each chunk's output, and only its
        // (`scale_factor²` fewer, `Dt`-wide) features are kept for every tile.
        let kept = if setup.connector_trains {
            output
        } else {
            tiles * config.image_seq_len() as u64 * t.hidden_size as u64 * F32
        };
        ((2 * dv + 2 * iv) * chunk * F32 + kept, 0)
    };
    let trainable = weights.trainable_params as u64;
    MemoryPlan {
        weights: (weights.frozen_bytes + weights.trainable_bytes) as u64,
        // The gradient, then the two moments.
        adapters_and_optimizer: trainable * F32
            + if setup.optimizer_8bit {
                2 * trainable + 2 * trainable.div_ceil(256) * F32
            } else {
                2 * trainable * F32
            },
        activations: (pixels + vision_phase.max(vision_kept + text + head)).max(trainable * F32),
        runtime: RUNTIME_BYTES,
    }
}

/// [`estimate`] for a loaded `model` (weights as it stores them, its trainable parameters,
/// whether its vision tower trains) running steps of `shape`.
pub fn plan_model<AB: burn::tensor::backend::AutodiffBackend>(
    model: &vlmtune_model::SmolVlm<AB>,
    shape: StepShape,
    gradient_checkpointing: bool,
    checkpoint_every: usize,
    optimizer_8bit: bool,
) -> MemoryPlan {
    // Paths of the text model's trainable parameters (weights or adapters), walked once.
    let text_trainable: Vec<String> = vlmtune_peft::named_params(&model.model.text_model)
        .into_iter()
        .filter(|p| p.trainable)
        .map(|p| p.path)
        .collect();
    let any_of = |parts: &[&str]| {
        text_trainable
            .iter()
            .any(|path| parts.iter().any(|part| path.contains(part)))
    };
    estimate(
        model.config(),
        &vlmtune_peft::memory_report::<AB, _>(model),
        shape,
        StepSetup {
            vision_trains: model.vision_is_trainable(),
            connector_trains: model.connector_is_trainable(),
            qkv_trains: any_of(&["q_proj", "k_proj", "v_proj"]),
            mlp_trains: any_of(&["mlp."]),
            gradient_checkpointing,
            checkpoint_every,
            optimizer_8bit,
        },
    )
}

/// Parses a memory size: `8GiB`, `512MiB`, `8GB`, `1.5G`, or a number of bytes.
pub fn parse_memory(text: &str) -> Result<u64> {
    let s = text.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let bad = || TrainError::Config {
        field: "max_memory".into(),
        message: format!("`{text}` is not a memory size (e.g. `8GiB`, `512MiB`)"),
    };
    let value: f64 = number.parse().map_err(|_| bad())?;
    let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mib" => MIB,
        "g" | "gb" => 1e9,
        "gib" => MIB * 1024.0,
        "t" | "tb" => 1e12,
        "tib" => MIB * MIB,
        _ => return Err(bad()),
    };
    Ok((value * scale) as u64)
}

/// The memory this machine has available now (Linux `MemAvailable`), for the default budget.
pub fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The batch [`pick_batch_size`] chose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchChoice {
    /// Rows per micro-batch.
    pub per_device_train_batch_size: usize,
    /// Micro-batches per optimizer step.
    pub gradient_accumulation_steps: usize,
    /// The estimate at that batch size.
    pub plan: MemoryPlan,
}

/// The largest `per_device_train_batch_size` whose estimate fits `budget` bytes, among the
/// divisors of the effective batch (`batch_size · accumulation`), with the accumulation that
/// keeps the effective batch; an error when even one row does not fit.
pub fn pick_batch_size(
    batch_size: usize,
    accumulation: usize,
    budget: u64,
    plan_for: impl Fn(usize) -> MemoryPlan,
) -> Result<BatchChoice> {
    let effective = batch_size.max(1) * accumulation.max(1);
    for b in (1..=batch_size.max(1)).rev() {
        if !effective.is_multiple_of(b) {
            continue;
        }
        let plan = plan_for(b);
        if plan.total() <= budget {
            return Ok(BatchChoice {
                per_device_train_batch_size: b,
                gradient_accumulation_steps: effective / b,
                plan,
            });
        }
    }
    let one = plan_for(1);
    Err(TrainError::Config {
        field: "max_memory".into(),
        message: format!(
            "even a batch of 1 needs about {:.0} MiB, over the budget of {:.0} MiB ({one}); \
             try gradient_checkpointing, quantised weights or fewer image tiles",
            one.total() as f64 / MIB,
            budget as f64 / MIB
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes_parse() {
        assert_eq!(parse_memory("8GiB").unwrap(), 8 << 30);
        assert_eq!(parse_memory("512 MiB").unwrap(), 512 << 20);
        assert_eq!(parse_memory("2GB").unwrap(), 2_000_000_000);
        assert_eq!(parse_memory("1.5G").unwrap(), 1_500_000_000);
        assert_eq!(parse_memory("4096").unwrap(), 4096);
        let err = parse_memory("lots").unwrap_err().to_string();
        assert!(err.contains("max_memory") && err.contains("lots"), "{err}");
        assert!(parse_memory("8 parsecs").is_err());
    }

    fn plan(total: u64) -> MemoryPlan {
        MemoryPlan {
            weights: total,
            adapters_and_optimizer: 0,
            activations: 0,
            runtime: 0,
        }
    }

    #[test]
    fn the_largest_fitting_divisor_keeps_the_effective_batch() {
        // 8 x 1 asked, 3 rows fit: 3 does not divide 8, so 2 rows x 4 micro-batches.
        let choice = pick_batch_size(8, 1, 300, |b| plan(100 * b as u64)).unwrap();
        assert_eq!(
            (
                choice.per_device_train_batch_size,
                choice.gradient_accumulation_steps
            ),
            (2, 4)
        );
        // Everything fits: unchanged.
        let choice = pick_batch_size(4, 2, 10_000, |b| plan(100 * b as u64)).unwrap();
        assert_eq!(
            (
                choice.per_device_train_batch_size,
                choice.gradient_accumulation_steps
            ),
            (4, 2)
        );
        let err = pick_batch_size(4, 1, 50, |b| plan(100 * b as u64))
            .unwrap_err()
            .to_string();
        assert!(err.contains("batch of 1"), "{err}");
    }

    #[test]
    fn checkpointing_keeps_less() {
        let config = vlmtune_model::Preset::SmolVlm256M.config();
        let weights = MemoryReport {
            frozen_params: 0,
            frozen_bytes: 0,
            quantized_params: 0,
            quantized_bytes: 0,
            trainable_params: 0,
            trainable_bytes: 0,
            optimizer_bytes: 0,
        };
        let shape = StepShape {
            batch_size: 1,
            seq_len: 1230,
            tiles: 17,
            labelled: 16,
        };
        let setup = |gradient_checkpointing| StepSetup {
            optimizer_8bit: false,
            vision_trains: false,
            connector_trains: false,
            qkv_trains: true,
            mlp_trains: false,
            gradient_checkpointing,
            checkpoint_every: 1,
        };
        let plain = estimate(&config, &weights, shape, setup(false));
        let gc = estimate(&config, &weights, shape, setup(true));
        assert!(gc.activations * 4 < plain.activations, "{gc} vs {plain}");
    }
}
