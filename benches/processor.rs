//! Processor throughput with the SmolVLM-256M image settings (longest edge 2048, 512-pixel
//! tiles, splitting, LANCZOS) on 512x512 and 1024x768 images, next to transformers' processor
//! (`scripts/reference/bench_processor.py`, PIL and torchvision backends).

mod common;

use criterion::Criterion;
use image::{DynamicImage, RgbImage};
use vlmtune::data::processor::image::SizeSpec;
use vlmtune::data::{ProcessOptions, Processor};

fn test_image(w: u32, h: u32) -> DynamicImage {
    DynamicImage::ImageRgb8(RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x + y) % 256) as u8])
    }))
}

fn main() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-smolvlm");
    let mut processor = Processor::from_dir(&dir).expect("fixture processor");
    let cfg = &mut processor.image_processor.config;
    cfg.size = SizeSpec::longest(2048);
    cfg.max_image_size = SizeSpec::longest(512);
    cfg.do_image_splitting = true;
    processor.image_seq_len = 64;
    let text = "<|im_start|>User:<image>What is the highest bar?<end_of_utterance>\nAssistant:";
    let reference = common::reference("processor");
    let mut c = Criterion::default().sample_size(10).configure_from_args();
    for (w, h) in [(512u32, 512u32), (1024, 768)] {
        let img = test_image(w, h);
        let mut run = || {
            processor
                .call(&[text], &[vec![img.clone()]], ProcessOptions::default())
                .unwrap()
        };
        let per_s = 1.0
            / common::median_secs(5, &mut || {
                run();
            });
        print!("processor {w}x{h}: vlmtune {per_s:.2} images/s");
        if let Some(r) = &reference {
            for backend in ["pil", "torchvision"] {
                if let Some(theirs) = r[format!("{backend}_{w}x{h}_images_per_s")].as_f64() {
                    print!(
                        ", transformers-{backend} {theirs:.2} images/s (x{:.2})",
                        per_s / theirs
                    );
                }
            }
        }
        println!();
        c.bench_function(&format!("processor_256m_{w}x{h}"), |b| b.iter(&mut run));
    }
    c.final_summary();
}
