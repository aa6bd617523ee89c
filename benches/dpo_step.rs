//! One DPO step per preference pair on the SmolVLM-256M architecture (random weights, f32,
//! LoRA r=8 on the text attention, one 512x512 tile, a 90-token prompt, 8-token answers):
//! the shared-prefix path against TRL's layout (plain), next to TRL's computation in PyTorch
//! (`scripts/reference/bench_dpo_step.py`). Each mode runs in its own process.
//!
//! `cargo bench --bench dpo_step`

mod common;

use vlmtune::data::processor::ProcessedImage;
use vlmtune::data::{EncodedPair, PreferenceBatch};
use vlmtune::model::Preset;
use vlmtune::train::optim::{clip_grad_norm, collect_grads, AdamW};
use vlmtune::train::{Accumulation, Objective};

type AB = burn::backend::Autodiff<burn::backend::Flex>;

fn run(mode: &str) {
    let device = Default::default();
    let config = Preset::SmolVlm256M.config();
    let mut model = common::lora_256m::<AB>(&device);
    let prompt = common::one_tile_prompt(config.image_seq_len(), 16);
    let frame = common::test_frame();
    let batch = PreferenceBatch {
        pairs: vec![EncodedPair {
            prompt_ids: prompt,
            chosen_ids: (200..208).collect(),
            rejected_ids: (300..308).collect(),
            images: vec![ProcessedImage {
                frames: vec![frame],
                height: 512,
                width: 512,
                rows: 0,
                cols: 0,
            }],
            index: 0,
        }],
    };
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-smolvlm");
    let mut objective =
        vlmtune::bench_inputs::bench_dpo_objective::<AB>(&dir, mode == "shared").unwrap();
    let mut optimizer = AdamW::<<AB as burn::tensor::backend::AutodiffBackend>::InnerBackend>::new(
        0.9, 0.999, 1e-8, 0.0,
    );
    let accumulation = Accumulation {
        items: 1,
        micro_batches: 1,
    };
    let mut step = || {
        let out = objective
            .loss(&model, &batch, accumulation)
            .unwrap()
            .unwrap();
        let mut grads = collect_grads(&model, &out.loss.backward());
        clip_grad_norm(&mut grads, 1.0).unwrap();
        model = optimizer.update::<AB, _>(model.clone(), grads, 1e-6);
    };
    let secs = common::median_secs(3, &mut step);
    common::print_mode_result(mode, secs);
}

fn main() {
    if let Some(mode) = common::mode_arg() {
        run(&mode);
        return;
    }
    let reference = common::reference("dpo_step");
    let trl = reference.as_ref().and_then(|r| {
        Some((
            r["trl"]["median_s"].as_f64()?,
            r["trl"]["peak_rss_mib"].as_f64()?,
        ))
    });
    let asked = common::positional_args();
    let modes: Vec<&str> = if asked.is_empty() {
        vec!["shared", "plain"]
    } else {
        asked.iter().map(String::as_str).collect()
    };
    for mode in modes {
        let ours = common::run_mode_in_subprocess(mode);
        let ours_pair = ours.time_and_rss();
        print!("256M DPO step per pair, {mode}: {}", ours.summary());
        if let Some(theirs) = trl {
            println!(
                "{}",
                common::ratio_suffix("TRL-style PyTorch", ours_pair, theirs)
            );
            let name = if mode == "shared" {
                "dpo_step"
            } else {
                "dpo_step_plain"
            };
            println!("{}", common::ratio_line(name, ours_pair, theirs));
        } else {
            println!();
        }
    }
}
