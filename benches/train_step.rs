//! Training-step costs on the SmolVLM-256M architecture (random weights, f32, one 512x512
//! tile, batch 1), next to PyTorch + PEFT (`scripts/reference/bench_train_step.py`):
//! * `lora` / `full`: forward + backward with LoRA r=8 on the text attention, and as a full
//!   fine-tune;
//! * `sft` / `sft-gc`: one whole SFT optimizer step (forward, backward, AdamW) with that
//!   LoRA, as `SftTrainer` computes it (the frozen vision tower without autodiff, logits only
//!   at the labelled positions), without and with layer-wise gradient checkpointing;
//! * `sft17` / `sft17-gc` and `full17` / `full17-gc`: that SFT step on a 17-tile image (the
//!   processor's default 2048-px longest edge: 16 tiles + the global one, 1230 tokens) with
//!   the LoRA, and as a full fine-tune of the text model (vision and connector frozen),
//!   without and with gradient checkpointing; `full17-8bit`: the full fine-tune with
//!   bitsandbytes' 8-bit AdamW states (`optim = "adamw_8bit"`); `sft17-bf16` / `sft17-bf16-gc`:
//!   the 17-tile LoRA step with the frozen weights stored in bf16, where they no longer
//!   outweigh the activations that checkpointing frees;
//! * `sft-bf16` / `sft-int8` / `sft-nf4`: that SFT step with the frozen weights stored in
//!   bf16 (every projection), int8 or NF4 + double quantisation (text projections; QLoRA);
//! * `fwd-f32` / `fwd-bf16` / `fwd-int8` / `fwd-nf4`: a forward pass without autodiff, for
//!   the cost of dequantising inside the matmuls.
//!
//! Each mode runs in its own process so that peak memory is its own; beside peak RSS (what
//! the ratios use, as PyTorch's figure is RSS too) it reports the live-heap peak, the most that
//! was allocated at once, which tells the step's own memory from what jemalloc keeps around it:
//! `cargo bench --bench train_step` (all modes) or `-- sft sft-nf4` (those).

mod common;

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use vlmtune::model::{causal_lm_loss, LayerTape, Preset, SmolVlm, Trainable};
use vlmtune::peft::{add_adapter, LoraPreset};
use vlmtune::prelude::TokenBatch;
use vlmtune::quant::{QuantConfig, RandomInit, Weights};
use vlmtune::train::optim8bit::{AdamW8bit, Optimizer};
use vlmtune::train::sft::batch_loss;

type AB = burn::backend::Autodiff<burn::backend::Flex>;

const MODES: [&str; 18] = [
    "lora",
    "full",
    "sft",
    "sft-gc",
    "sft17",
    "sft17-gc",
    "full17",
    "full17-gc",
    "full17-8bit",
    "sft17-bf16",
    "sft17-bf16-gc",
    "sft-bf16",
    "sft-int8",
    "sft-nf4",
    "fwd-f32",
    "fwd-bf16",
    "fwd-int8",
    "fwd-nf4",
];

/// Tiles of the many-tile modes.
const TILES: usize = 17;

/// The frozen-weight storage a mode asks for.
fn quant_of(mode: &str) -> Option<QuantConfig> {
    mode.split('-').find_map(|part| match part {
        "bf16" => Some(QuantConfig::bf16()),
        "int8" => Some(QuantConfig::int8()),
        "nf4" => Some(QuantConfig::nf4()),
        _ => None,
    })
}

fn run<AB: AutodiffBackend>(mode: &str) {
    let device = Default::default();
    let config = Preset::SmolVlm256M.config();
    let quant = quant_of(mode);
    let source = RandomInit::new(0);
    let weights = Weights::new(&source, &device).with_quant(quant.as_ref());
    let mut model = SmolVlm::<AB>::load(&weights, &config).expect("preset builds");
    let forward_only = forward_only_mode(mode);
    let checkpointing = mode.ends_with("-gc");
    let tiles = if mode.contains("17") { TILES } else { 1 };
    match mode {
        _ if forward_only => {}
        "lora" | "sft" | "sft-gc" | "sft17" | "sft17-gc" | "sft17-bf16" | "sft17-bf16-gc"
        | "sft-bf16" | "sft-int8" | "sft-nf4" => {
            let lora = LoraPreset::TextAttention.config(8, 16.0);
            add_adapter(&mut model, "default", &lora, 0).unwrap();
        }
        "full" => model = model.with_trainable(Trainable::all()),
        "full17" | "full17-gc" | "full17-8bit" => {
            model = model.with_trainable(Trainable {
                text: true,
                ..Trainable::default()
            })
        }
        other => panic!("unknown mode {other}"),
    }
    let optimizer_step = mode.starts_with("sft") || mode.starts_with("full17");
    // `-8bit`: bitsandbytes' 8-bit AdamW states (`optim = "adamw_8bit"`).
    let mut optimizer = if mode.ends_with("-8bit") {
        Optimizer::AdamW8bit(AdamW8bit::new(0.9, 0.999, 1e-8, 0.0))
    } else {
        Optimizer::AdamW(vlmtune::train::optim::AdamW::new(0.9, 0.999, 1e-8, 0.0))
    };
    let ids = if tiles == 1 {
        common::one_tile_prompt(config.image_seq_len(), 16)
    } else {
        common::tiled_prompt(tiles, config.image_seq_len(), 100)
    };
    let mut labels: Vec<i64> = vec![-100; ids.len()];
    let n = ids.len();
    for (i, l) in labels.iter_mut().enumerate().skip(n - 16) {
        *l = ids[i] as i64;
    }
    let tokens = TokenBatch::from_rows(&[ids]).unwrap();
    let pixels = common::tiled_pixels(tiles);
    // Only the forward modes keep an inference copy: it shares the weights of the model as
    // loaded, and after a full fine-tune's first update it would hold the old text weights
    // (513 MiB) beside the new ones.
    let inference = forward_only.then(|| model.valid());
    let mut step = || {
        if let Some(inference) = &inference {
            let logits = inference.forward(&tokens, Some(&pixels)).unwrap();
            drop(logits.into_data());
            return;
        }
        let tape = checkpointing.then(|| LayerTape::<AB>::new(1));
        let loss = if optimizer_step {
            // The trainer's own path: the frozen tower without autodiff, logits only at the
            // labelled positions.
            let _recording = tape.as_ref().map(|t| t.activate());
            let features = model
                .encode_images_for_training(&pixels)
                .unwrap()
                .map(|f| f.features);
            batch_loss(&model, &tokens, features, &labels, 16)
                .unwrap()
                .unwrap()
                .loss
        } else {
            causal_lm_loss(
                model.forward(&tokens, Some(&pixels)).unwrap(),
                &labels,
                None,
            )
            .unwrap()
        };
        let mut g = vlmtune::train::optim::loss_grads(&model, loss, tape.as_deref());
        if optimizer_step {
            vlmtune::train::optim::clip_grad_norm(&mut g, 1.0).unwrap();
            model = optimizer.update::<AB, _>(model.clone(), g, 1e-4).unwrap();
        } else {
            drop(g);
        }
        AB::sync(&device).ok();
    };
    let secs = common::median_secs(3, &mut step);
    common::print_mode_result(mode, secs);
}

/// The name of a mode's side-by-side line (`sft_step`, `sft_step_nf4`, `sft_step_17tiles_gc`,
/// `full_step_17tiles`, `train_step_lora`, ...).
fn line_name(mode: &str) -> String {
    let mode = mode.replace("17", "_17tiles");
    if let Some(rest) = mode.strip_prefix("sft") {
        format!("sft_step{}", rest.replace('-', "_"))
    } else if let Some(rest) = mode.strip_prefix("full_") {
        format!("full_step_{}", rest.replace('-', "_"))
    } else {
        format!("train_step_{}", mode.replace('-', "_"))
    }
}

fn forward_only_mode(mode: &str) -> bool {
    mode.starts_with("fwd")
}

fn main() {
    if let Some(mode) = common::mode_arg() {
        run::<AB>(&mode);
        return;
    }
    let reference = common::reference("train_step");
    let asked = common::positional_args();
    let modes: Vec<&str> = if asked.is_empty() {
        MODES.to_vec()
    } else {
        asked.iter().map(String::as_str).collect()
    };
    for mode in modes {
        let ours = common::run_mode_in_subprocess(mode);
        let what = if mode.starts_with("sft") || mode.starts_with("full17") {
            "SFT step"
        } else if forward_only_mode(mode) {
            "forward"
        } else {
            "forward+backward"
        };
        print!("256M {what}, {mode}: {}", ours.summary());
        if let Some(r) = reference.as_ref().and_then(|r| r.get(mode)) {
            let theirs = (
                r["median_s"].as_f64().unwrap(),
                r["peak_rss_mib"].as_f64().unwrap(),
            );
            print!(
                "{}",
                common::ratio_suffix("PyTorch", ours.time_and_rss(), theirs)
            );
            println!();
            println!(
                "{}",
                common::ratio_line(&line_name(mode), ours.time_and_rss(), theirs)
            );
        } else {
            println!();
        }
    }
}
