//! Three epochs of LoRA SFT (r=8, text attention, AdamW, batch 1) on 16 synthetic 512x512
//! charts with the SmolVLM-256M architecture (random weights, f32, one tile each), with the
//! frozen-vision feature cache as `SftTrainer` keeps it: epoch 1 runs the vision tower (on the
//! inner backend: nothing in it trains) and stores each chart's connector output, epochs 2
//! and 3 reuse them. Next to the same three epochs in PyTorch + PEFT
//! (`scripts/reference/bench_epochs.py`), which runs the vision tower every epoch, as TRL does.
//!
//! `cargo bench --bench epochs`

mod common;

use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Tensor;
use vlmtune::data::dataset::synthetic;
use vlmtune::model::{PixelBatch, Preset};
use vlmtune::prelude::TokenBatch;
use vlmtune::train::optim::{clip_grad_norm, collect_grads, AdamW};
use vlmtune::train::sft::batch_loss;

type AB = burn::backend::Autodiff<burn::backend::Flex>;
type Inner = <AB as AutodiffBackend>::InnerBackend;

const CHARTS: usize = 16;
const EPOCHS: usize = 3;

/// Chart `i` as the processor hands a 512x512 tile over: CHW, rescaled to [-1, 1].
fn chart_pixels(i: usize) -> PixelBatch {
    let image = synthetic::chart(7, i as u64, 512).image;
    let (w, h) = image.dimensions();
    let raw = image.as_raw();
    let mut values = vec![0.0f32; 3 * (w * h) as usize];
    for (p, rgb) in raw.chunks(3).enumerate() {
        for c in 0..3 {
            values[c * (w * h) as usize + p] = rgb[c] as f32 / 127.5 - 1.0;
        }
    }
    PixelBatch {
        pixel_values: values,
        shape: [1, 1, 3, h as usize, w as usize],
        pixel_attention_mask: None,
    }
}

fn main() {
    let device = Default::default();
    let config = Preset::SmolVlm256M.config();
    let mut model = common::lora_256m::<AB>(&device);
    let ids = common::one_tile_prompt(config.image_seq_len(), 16);
    let n = ids.len();
    let labels: Vec<i64> = (0..n)
        .map(|i| if i >= n - 16 { ids[i] as i64 } else { -100 })
        .collect();
    let tokens = TokenBatch::from_rows(&[ids]).unwrap();
    let charts: Vec<PixelBatch> = (0..CHARTS).map(chart_pixels).collect();
    let mut cache: Vec<Option<Tensor<Inner, 3>>> = vec![None; CHARTS];
    let mut optimizer = AdamW::<Inner>::new(0.9, 0.999, 1e-8, 0.0);
    let mut epoch_secs = Vec::new();
    for _ in 0..EPOCHS {
        let start = std::time::Instant::now();
        for (i, pixels) in charts.iter().enumerate() {
            let features = match &cache[i] {
                Some(f) => Tensor::from_inner(f.clone()),
                None => {
                    let f = model
                        .encode_images_for_training(pixels)
                        .unwrap()
                        .unwrap()
                        .features;
                    cache[i] = Some(f.clone().inner());
                    f
                }
            };
            // The trainer's loss: logits only at the 16 labelled positions.
            let loss = batch_loss(&model, &tokens, Some(features), &labels, 16)
                .unwrap()
                .unwrap()
                .loss;
            let mut grads = collect_grads(&model, &loss.backward());
            clip_grad_norm(&mut grads, 1.0).unwrap();
            model = optimizer.update::<AB, _>(model.clone(), grads, 1e-4);
        }
        epoch_secs.push(start.elapsed().as_secs_f64());
    }
    let peak = common::peak_rss_mib();
    let reference = common::reference("epochs");
    for (e, secs) in epoch_secs.iter().enumerate() {
        let name = format!("epoch_{}", e + 1);
        print!("3 epochs of 16 charts, {name}: vlmtune {secs:.2} s");
        let theirs = reference
            .as_ref()
            .and_then(|r| Some((r["epochs_s"][e].as_f64()?, r["peak_rss_mib"].as_f64()?)));
        match theirs {
            Some(theirs) => {
                println!();
                println!("{}", common::ratio_line(&name, (*secs, peak), theirs));
            }
            None => println!(" (no PyTorch figure: run scripts/reference/bench_epochs.py)"),
        }
    }
}
