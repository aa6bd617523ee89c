//! The inputs of the SmolVLM-256M benchmarks (`benches/`, `vlmtune selftest --bench`), laid out
//! as the PyTorch references lay them out (`scripts/reference/bench_common.py`): prompt ids of
//! one or many image tiles, a deterministic frame, and the 256M architecture with random
//! weights and LoRA r=8 on the text attention.

use std::path::Path;
use std::sync::Arc;

use burn::tensor::backend::{AutodiffBackend, Backend};
use vlmtune_data::{CollatorConfig, PreferenceCollator, Processor, SftCollator};
use vlmtune_model::{PixelBatch, Preset, SmolVlm};
use vlmtune_peft::{add_adapter, LoraPreset};
use vlmtune_train::dpo::{DpoObjective, Reference};
use vlmtune_train::DpoConfig;

/// Ids of `<|im_start|>User:<fake><global-img><image>xN<fake>question<eou>\nAssistant:`
/// (`bench_common.one_tile_prompt`).
pub fn one_tile_prompt(image_seq_len: usize, text_tokens: u32) -> Vec<u32> {
    tiled_prompt(1, image_seq_len, text_tokens)
}

/// A deterministic 512x512 RGB frame (CHW, in [-1, 1]).
pub fn test_frame() -> Vec<f32> {
    (0..3 * 512 * 512)
        .map(|i| ((i % 255) as f32 / 127.5) - 1.0)
        .collect()
}

/// Ids of a prompt with `tiles` image blocks (`<fake><marker><image>xN` each, as the
/// processor lays out a split image) and `text_tokens` question tokens; the same layout as
/// `bench_common.tiled_prompt`.
pub fn tiled_prompt(tiles: usize, image_seq_len: usize, text_tokens: u32) -> Vec<u32> {
    let mut ids = vec![1, 11126, 42];
    for _ in 0..tiles {
        ids.extend([49189, 49152]);
        ids.extend(std::iter::repeat_n(49190, image_seq_len));
    }
    ids.push(49189);
    ids.extend((0..text_tokens).map(|i| 100 + i));
    ids.extend([49279, 198, 9519, 42]);
    ids
}

/// `tiles` copies of the test frame as one sample.
pub fn tiled_pixels(tiles: usize) -> PixelBatch {
    // `repeat` sizes the buffer exactly (collecting a `flat_map` grows it by doubling, up to
    // twice the 51 MiB of 17 tiles, which the memory benchmarks would count).
    PixelBatch {
        pixel_values: test_frame().repeat(tiles),
        shape: [1, tiles, 3, 512, 512],
        pixel_attention_mask: None,
    }
}

/// [`test_frame`] as a batch of one image of one tile.
pub fn one_tile_pixels() -> PixelBatch {
    tiled_pixels(1)
}

/// Adds the benchmarks' LoRA r=8 (alpha 16) on the text attention to `model`.
pub fn add_bench_lora<B: Backend>(model: &mut SmolVlm<B>) {
    let lora = LoraPreset::TextAttention.config(8, 16.0);
    add_adapter(model, "default", &lora, 0).expect("the preset's adapter fits the preset");
}

/// The SmolVLM-256M architecture with random weights (seed 0) and a LoRA r=8 adapter on the
/// text attention, as the PyTorch references build it (`bench_common.lora_256m_model`).
pub fn lora_256m<B: Backend>(device: &B::Device) -> SmolVlm<B> {
    let config = Preset::SmolVlm256M.config();
    let mut model = SmolVlm::<B>::init(&config, 0, device).expect("preset builds");
    add_bench_lora(&mut model);
    model
}

/// The benchmarks' DPO objective: TRL's defaults (sigmoid, beta 0.1), the reference = the
/// adapters disabled, with or without the shared prompt prefix; the collator of the tiny
/// checkpoint in `tiny_smolvlm` (its tokenizer; the batches come encoded).
pub fn bench_dpo_objective<AB: AutodiffBackend>(
    tiny_smolvlm: &Path,
    shared_prefix: bool,
) -> crate::Result<DpoObjective<AB>> {
    let collator = Arc::new(PreferenceCollator {
        sft: SftCollator::new(
            Processor::from_dir(tiny_smolvlm)?,
            CollatorConfig::default(),
        ),
    });
    Ok(DpoObjective {
        config: DpoConfig {
            shared_prefix,
            ..DpoConfig::default()
        },
        reference: Reference::AdaptersDisabled,
        eval_set: None,
        collator,
        share_features: true,
        eval_max_new_tokens: 0,
    })
}
