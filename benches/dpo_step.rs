//! One DPO step per preference pair on the SmolVLM-256M architecture (random weights, f32,
//! LoRA r=8 on the text attention, one 512x512 tile, a 90-token prompt, 8-token answers):
//! the shared-prefix path against TRL's layout (plain), next to TRL's computation in PyTorch
//! (`scripts/reference/bench_dpo_step.py`). Each mode runs in its own process.
//!
//! `cargo bench --bench dpo_step`

mod common;

use std::sync::Arc;

use vlmtune::data::collate::{CollatorConfig, SftCollator};
use vlmtune::data::processor::ProcessedImage;
use vlmtune::data::{EncodedPair, PreferenceBatch, PreferenceCollator, Processor};
use vlmtune::model::{Preset, SmolVlm};
use vlmtune::peft::{add_adapter, LoraPreset};
use vlmtune::train::dpo::{DpoObjective, Reference};
use vlmtune::train::optim::{clip_grad_norm, collect_grads, AdamW};
use vlmtune::train::{Accumulation, DpoConfig, Objective};

type AB = burn::backend::Autodiff<burn::backend::NdArray>;

fn run(mode: &str) {
    let device = Default::default();
    let config = Preset::SmolVlm256M.config();
    let mut model = SmolVlm::<AB>::init(&config, 0, &device).unwrap();
    add_adapter(
        &mut model,
        "default",
        &LoraPreset::TextAttention.config(8, 16.0),
        0,
    )
    .unwrap();
    let mut prompt = vec![1, 11126, 42, 49189, 49152];
    prompt.extend(std::iter::repeat_n(49190, config.image_seq_len()));
    prompt.push(49189);
    prompt.extend(100..116);
    prompt.extend([49279, 198, 9519, 42]);
    let frame: Vec<f32> = (0..3 * 512 * 512)
        .map(|i| ((i % 255) as f32 / 127.5) - 1.0)
        .collect();
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
    let collator = Arc::new(PreferenceCollator {
        sft: SftCollator::new(
            Processor::from_dir(&dir).unwrap(),
            CollatorConfig::default(),
        ),
    });
    let mut objective = DpoObjective::<AB> {
        config: DpoConfig {
            shared_prefix: mode == "shared",
            ..DpoConfig::default()
        },
        reference: Reference::AdaptersDisabled,
        eval_set: None,
        collator,
        share_features: true,
        eval_max_new_tokens: 0,
    };
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
    println!(
        "{{\"mode\": \"{mode}\", \"median_s\": {secs:.3}, \"peak_rss_mib\": {:.0}}}",
        common::peak_rss_mib()
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--mode") {
        run(&args[i + 1]);
        return;
    }
    let reference = common::reference("dpo_step");
    let exe = std::env::current_exe().unwrap();
    let torch = reference
        .as_ref()
        .and_then(|r| r["trl"]["median_s"].as_f64());
    let torch_mib = reference
        .as_ref()
        .and_then(|r| r["trl"]["peak_rss_mib"].as_f64());
    for mode in ["shared", "plain"] {
        let out = std::process::Command::new(&exe)
            .args(["--mode", mode])
            .output()
            .unwrap();
        let line = String::from_utf8_lossy(&out.stdout);
        let ours: serde_json::Value = serde_json::from_str(line.trim())
            .unwrap_or_else(|_| panic!("{line}\n{}", String::from_utf8_lossy(&out.stderr)));
        let (s, mib) = (
            ours["median_s"].as_f64().unwrap(),
            ours["peak_rss_mib"].as_f64().unwrap(),
        );
        print!("256M DPO step per pair, {mode}: vlmtune {s:.2} s, peak RSS {mib:.0} MiB");
        if let (Some(t), Some(m)) = (torch, torch_mib) {
            print!(
                "; TRL-style PyTorch {t:.2} s, {m:.0} MiB -> time x{:.2}, memory x{:.2}",
                s / t,
                mib / m
            );
        }
        println!();
    }
}
