//! One forward pass of the SmolVLM-256M architecture (random weights, f32) on one 512x512
//! tile, next to the same forward in PyTorch (`scripts/reference/bench_forward.py`).
//!
//! `cargo bench --bench forward` (add `-- --quick` for fewer samples).

mod common;

use criterion::Criterion;
use vlmtune::prelude::*;

type B = burn::backend::NdArray;

/// The same ids as `bench_common.one_tile_prompt` in the reference scripts.
pub fn one_tile_prompt(image_seq_len: usize, text_tokens: u32) -> Vec<u32> {
    let mut ids = vec![1, 11126, 42, 49189, 49152];
    ids.extend(std::iter::repeat_n(49190, image_seq_len));
    ids.push(49189);
    ids.extend((0..text_tokens).map(|i| 100 + i));
    ids.extend([49279, 198, 9519, 42]);
    ids
}

fn main() {
    let device = Default::default();
    let config = Preset::SmolVlm256M.config();
    let model = SmolVlm::<B>::init(&config, 0, &device).expect("preset builds");
    let tokens = TokenBatch::from_rows(&[one_tile_prompt(config.image_seq_len(), 16)]).unwrap();
    let pixels = PixelBatch {
        pixel_values: (0..3 * 512 * 512)
            .map(|i| ((i % 255) as f32 / 127.5) - 1.0)
            .collect(),
        shape: [1, 1, 3, 512, 512],
        pixel_attention_mask: None,
    };
    let mut forward = || {
        let logits = model.forward(&tokens, Some(&pixels)).unwrap();
        let _ = logits.into_data();
    };
    let secs = common::median_secs(5, &mut forward);
    common::report(
        "forward",
        "SmolVLM-256M forward, 1 tile, f32",
        secs,
        common::peak_rss_mib(),
    );

    let mut c = Criterion::default().sample_size(10).configure_from_args();
    c.bench_function("forward_256m_one_tile", |b| b.iter(&mut forward));
    c.final_summary();
}
