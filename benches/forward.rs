//! One forward pass of the SmolVLM-256M architecture (random weights, f32) on one 512x512
//! tile, next to the same forward in PyTorch (`scripts/reference/bench_forward.py`).
//!
//! `cargo bench --bench forward` (add `-- --quick` for fewer samples, `-- --summary` for the
//! side-by-side line only).

mod common;

use criterion::Criterion;
use vlmtune::prelude::*;

type B = burn::backend::Flex;

fn main() {
    let device = Default::default();
    let config = Preset::SmolVlm256M.config();
    let model = SmolVlm::<B>::init(&config, 0, &device).expect("preset builds");
    let tokens =
        TokenBatch::from_rows(&[common::one_tile_prompt(config.image_seq_len(), 16)]).unwrap();
    let pixels = common::one_tile_pixels();
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

    if common::summary_only() {
        return;
    }
    let mut c = Criterion::default().sample_size(10).configure_from_args();
    c.bench_function("forward_256m_one_tile", |b| b.iter(&mut forward));
    c.final_summary();
}
