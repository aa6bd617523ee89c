//! `vlmtune selftest --bench`: the SmolVLM-256M benchmarks on the selftest's device (random
//! weights, seed 0; the inputs of [`crate::bench_inputs`], laid out as
//! `scripts/reference/bench_device.py` lays out PyTorch's):
//! * `forward`: one forward pass without autodiff, one 512x512 tile;
//! * `sft_step`: one LoRA SFT optimizer step (r=8 on the text attention; the trainer's path:
//!   frozen vision tower without autodiff, logits at the 16 labelled positions; clipping,
//!   AdamW), one tile, batch 1;
//! * `dpo_step_batch8`: one DPO step (sigmoid, reference = adapters disabled, shared prompt
//!   prefix) on 8 preference pairs of one tile each (8-token answers);
//! * `sft_step_17tiles`: the SFT step on a 17-tile image (1230 tokens).
//!
//! In f32 and with the frozen weights in NF4 + double quantisation (`_nf4`), or in bf16 (f32
//! weights, bf16 products under autocast, as TRL's `bf16=True`). Each case builds its own model, warms up once and reports the
//! median of three timed steps, tokens per second (the batch's input tokens in TRL's layout)
//! and, on CUDA, the device memory the allocator holds after the case (the pool only grows
//! within a case, so it is the case's peak; compare `torch.cuda.max_memory_reserved`).

use std::path::Path;
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use serde::Serialize;
use vlmtune_data::processor::ProcessedImage;
use vlmtune_data::{EncodedPair, PreferenceBatch};
use vlmtune_model::{Preset, SmolVlm, TokenBatch};
use vlmtune_quant::{QuantConfig, RandomInit, Weights};
use vlmtune_train::optim::{clip_grad_norm, collect_grads, loss_grads, AdamW, TensorMap};
use vlmtune_train::sft::batch_loss;
use vlmtune_train::{Accumulation, Objective};

use crate::bench_inputs::{
    add_bench_lora, bench_dpo_objective, one_tile_prompt, tiled_pixels, tiled_prompt,
};
use crate::error::{Error, Result};

/// The cases, in the order they run.
pub const CASES: [&str; 4] = ["forward", "sft_step", "dpo_step_batch8", "sft_step_17tiles"];

/// Tiles of the many-tile case.
const TILES: usize = 17;
/// Preference pairs of the DPO case.
const PAIRS: usize = 8;
/// Timed steps (after one warm-up); their median is reported.
const RUNS: usize = 3;

/// One benchmark's figures.
#[derive(Clone, Debug, Serialize)]
pub struct Benchmark {
    /// `<case>_<precision>`, e.g. `sft_step_nf4`: the name of its PyTorch counterpart.
    pub name: String,
    /// The case (see [`CASES`]).
    pub case: String,
    /// `f32`, `bf16` or `nf4` (NF4 + double-quantised frozen weights, f32 compute).
    pub precision: String,
    /// Median seconds of a step.
    pub median_s: f64,
    /// Input tokens of a step.
    pub tokens: usize,
    /// `tokens / median_s`.
    pub tokens_per_s: f64,
    /// Device memory held after the case, in MiB (CUDA only).
    pub peak_device_mib: Option<f64>,
    /// Why the case did not finish, if it did not.
    pub error: Option<String>,
}

impl std::fmt::Display for Benchmark {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.error {
            Some(e) => write!(f, "FAIL bench {}: {e}", self.name),
            None => {
                write!(
                    f,
                    "bench {}: {:.4} s, {:.0} tokens/s",
                    self.name, self.median_s, self.tokens_per_s
                )?;
                if let Some(mib) = self.peak_device_mib {
                    write!(f, ", device memory {mib:.0} MiB")?;
                }
                Ok(())
            }
        }
    }
}

/// Every case of `cases` (all when empty) in `f32` + `nf4`, or in `bf16` (the caller's
/// autocast), each caught
/// on its own: a case that fails or panics (out of memory) is reported and the next one runs.
pub fn run_all<AB: AutodiffBackend>(
    fixtures: &Path,
    bf16: bool,
    cases: &[String],
    device: &AB::Device,
) -> Vec<Benchmark> {
    let precisions: Vec<(&str, Option<QuantConfig>)> = if bf16 {
        vec![("bf16", None)]
    } else {
        vec![("f32", None), ("nf4", Some(QuantConfig::nf4()))]
    };
    let mut out = Vec::new();
    for (precision, quant) in &precisions {
        for case in CASES
            .into_iter()
            .filter(|c| cases.is_empty() || cases.iter().any(|asked| asked == c))
        {
            let benchmark = run_case::<AB>(fixtures, case, precision, quant.as_ref(), device);
            tracing::info!("{benchmark}");
            out.push(benchmark);
        }
    }
    out
}

/// One case, timed, with its failure (error or panic) recorded instead of propagated.
pub fn run_case<AB: AutodiffBackend>(
    fixtures: &Path,
    case: &str,
    precision: &str,
    quant: Option<&QuantConfig>,
    device: &AB::Device,
) -> Benchmark {
    <AB::InnerBackend as Backend>::memory_cleanup(device);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        timed_case::<AB>(fixtures, case, quant, device)
    }));
    let (median_s, tokens, error) = match outcome {
        Ok(Ok((secs, tokens))) => (secs, tokens, None),
        Ok(Err(e)) => (f64::NAN, 0, Some(e.to_string())),
        Err(panic) => {
            let what = vlmtune_train::oom_retry::panic_message(&*panic);
            (f64::NAN, 0, Some(format!("panicked: {what}")))
        }
    };
    let peak_device_mib = crate::backend::device_memory_reserved::<AB::InnerBackend>(device)
        .map(|bytes| bytes as f64 / (1024.0 * 1024.0));
    Benchmark {
        name: format!("{case}_{precision}"),
        case: case.to_string(),
        precision: precision.to_string(),
        median_s,
        tokens,
        tokens_per_s: tokens as f64 / median_s,
        peak_device_mib,
        error,
    }
}

/// Median seconds of [`RUNS`] calls of `step` after one warm-up.
fn median_secs(step: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
    step()?;
    let mut times = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let start = Instant::now();
        step()?;
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[RUNS / 2])
}

/// The 256M model with random weights, its frozen weights stored as `quant` says.
fn model_256m<AB: AutodiffBackend>(
    quant: Option<&QuantConfig>,
    device: &AB::Device,
) -> Result<SmolVlm<AB>> {
    let source = RandomInit::new(0);
    let weights = Weights::new(&source, device).with_quant(quant);
    Ok(SmolVlm::<AB>::load(
        &weights,
        &Preset::SmolVlm256M.config(),
    )?)
}

/// Runs `case`; returns its median seconds and input tokens.
fn timed_case<AB: AutodiffBackend>(
    fixtures: &Path,
    case: &str,
    quant: Option<&QuantConfig>,
    device: &AB::Device,
) -> Result<(f64, usize)> {
    let image_seq_len = Preset::SmolVlm256M.config().image_seq_len();
    let mut model = model_256m::<AB>(quant, device)?;
    match case {
        "forward" => {
            let inference = model.valid();
            let tokens = TokenBatch::from_rows(&[one_tile_prompt(image_seq_len, 16)])?;
            let pixels = tiled_pixels(1);
            let secs = median_secs(&mut || {
                let logits = inference.forward(&tokens, Some(&pixels))?;
                drop(logits.into_data());
                Ok(())
            })?;
            Ok((secs, tokens.seq_len))
        }
        "sft_step" | "sft_step_17tiles" => {
            add_bench_lora(&mut model);
            let (ids, tiles) = if case == "sft_step" {
                (one_tile_prompt(image_seq_len, 16), 1)
            } else {
                (tiled_prompt(TILES, image_seq_len, 100), TILES)
            };
            let n = ids.len();
            let labels: Vec<i64> = (0..n)
                .map(|i| if i >= n - 16 { i64::from(ids[i]) } else { -100 })
                .collect();
            let tokens = TokenBatch::from_rows(&[ids])?;
            let pixels = tiled_pixels(tiles);
            let mut optimizer = AdamW::<AB::InnerBackend>::new(0.9, 0.999, 1e-8, 0.0);
            let secs = median_secs(&mut || {
                let features = model
                    .encode_images_for_training(&pixels)?
                    .map(|f| f.features);
                let loss = batch_loss(&model, &tokens, features, &labels, 16)?
                    .ok_or_else(|| Error::Config("the benchmark batch has no labels".into()))?
                    .loss;
                let grads = loss_grads(&model, loss, None);
                model = clip_and_update(model.clone(), &mut optimizer, grads, 1e-4, device)?;
                Ok(())
            })?;
            Ok((secs, n))
        }
        "dpo_step_batch8" => {
            add_bench_lora(&mut model);
            let (batch, tokens) = preference_batch(image_seq_len);
            let mut objective = bench_dpo_objective::<AB>(&fixtures.join("tiny-smolvlm"), true)?;
            let mut optimizer = AdamW::<AB::InnerBackend>::new(0.9, 0.999, 1e-8, 0.0);
            let accumulation = Accumulation {
                items: PAIRS,
                micro_batches: 1,
            };
            let secs = median_secs(&mut || {
                let out = objective
                    .loss(&model, &batch, accumulation)?
                    .ok_or_else(|| Error::Config("the benchmark pairs gave no loss".into()))?;
                let grads = collect_grads(&model, &out.loss.backward());
                model = clip_and_update(model.clone(), &mut optimizer, grads, 1e-6, device)?;
                Ok(())
            })?;
            Ok((secs, tokens))
        }
        other => Err(Error::Config(format!(
            "unknown benchmark case `{other}` (one of {CASES:?})"
        ))),
    }
}

/// The end of a benchmark step: clipping at 1.0, AdamW at `lr`, and waiting for the device.
fn clip_and_update<AB: AutodiffBackend>(
    model: SmolVlm<AB>,
    optimizer: &mut AdamW<AB::InnerBackend>,
    mut grads: TensorMap<AB::InnerBackend>,
    lr: f64,
    device: &AB::Device,
) -> Result<SmolVlm<AB>> {
    clip_grad_norm(&mut grads, 1.0)?;
    let model = optimizer.update::<AB, _>(model, grads, lr);
    AB::sync(device).map_err(|e| Error::Config(format!("device sync: {e:?}")))?;
    Ok(model)
}

/// [`PAIRS`] pairs of the one-tile prompt with 8-token answers, and their input tokens in
/// TRL's layout (prompt + answer, chosen and rejected rows).
fn preference_batch(image_seq_len: usize) -> (PreferenceBatch, usize) {
    let prompt = one_tile_prompt(image_seq_len, 16);
    let frame = crate::bench_inputs::test_frame();
    let pairs: Vec<EncodedPair> = (0..PAIRS)
        .map(|k| {
            let base = 200 + 16 * k as u32;
            EncodedPair {
                prompt_ids: prompt.clone(),
                chosen_ids: (base..base + 8).collect(),
                rejected_ids: (base + 8..base + 16).collect(),
                images: vec![ProcessedImage {
                    frames: vec![frame.clone()],
                    height: 512,
                    width: 512,
                    rows: 0,
                    cols: 0,
                }],
                index: k,
            }
        })
        .collect();
    let tokens = PAIRS * 2 * (prompt.len() + 8);
    (PreferenceBatch { pairs }, tokens)
}
