//! The processor against transformers' `SmolVLMProcessor` / `Idefics3Processor` with the PIL
//! image backend (fixtures from `scripts/reference/processor_fixtures.py`): chat template text,
//! input ids, pixel values (within one uint8 level), pixel masks and tile grids.

mod common;

use common::{fixture_path, Fixture};
use serde_json::Value;
use vlmtune_data::processor::{open_image, Message};
use vlmtune_data::{ProcessOptions, Processor};

const KINDS: [&str; 2] = ["smolvlm", "idefics3"];
/// One uint8 level after normalisation ((x/255 - 0.5) / 0.5), plus float16 storage rounding.
const PIXEL_TOL: f32 = 2.0 / 255.0 + 1e-3;

fn cases(kind: &str) -> Value {
    let text = std::fs::read_to_string(fixture_path(&format!("processor/{kind}.json"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn processor_matches_transformers_pil_backend() {
    for kind in KINDS {
        let processor = Processor::from_dir(&fixture_path(&format!("tiny-{kind}"))).unwrap();
        let fx = Fixture::open(&format!("processor/{kind}.safetensors"));
        let all = cases(kind);
        for case in all["cases"].as_array().unwrap() {
            let name = case["name"].as_str().unwrap();
            let gen_prompt = case["add_generation_prompt"].as_bool().unwrap();
            let texts: Vec<String> = case["conversations"]
                .as_array()
                .unwrap()
                .iter()
                .map(|conv| {
                    let messages: Vec<Message> = serde_json::from_value(conv.clone()).unwrap();
                    processor
                        .apply_chat_template(&messages, gen_prompt)
                        .unwrap()
                })
                .collect();
            let want_texts: Vec<String> = serde_json::from_value(case["texts"].clone()).unwrap();
            assert_eq!(texts, want_texts, "{kind}/{name}: chat template");

            let images: Vec<Vec<_>> = case["images"]
                .as_array()
                .unwrap()
                .iter()
                .map(|sample| {
                    sample
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|f| {
                            open_image(&fixture_path(&format!(
                                "processor/images/{}",
                                f.as_str().unwrap()
                            )))
                            .unwrap()
                        })
                        .collect()
                })
                .collect();
            let options = ProcessOptions {
                do_image_splitting: Some(case["split"].as_bool().unwrap()),
                ..Default::default()
            };
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let enc = processor.call(&refs, &images, options).unwrap();

            let (ids, shape) = fx.i64(&format!("{name}_input_ids"));
            let got_ids: Vec<i64> = enc.input_ids.concat().iter().map(|i| *i as i64).collect();
            assert_eq!(
                vec![enc.input_ids.len(), enc.input_ids[0].len()],
                shape,
                "{kind}/{name}: ids shape"
            );
            assert_eq!(got_ids, ids, "{kind}/{name}: input ids");
            let (mask, _) = fx.i64(&format!("{name}_attention_mask"));
            let got_mask: Vec<i64> = enc
                .attention_mask
                .concat()
                .iter()
                .map(|m| *m as i64)
                .collect();
            assert_eq!(got_mask, mask, "{kind}/{name}: attention mask");

            assert_eq!(
                serde_json::to_value(&enc.rows).unwrap(),
                case["rows"],
                "{kind}/{name}: rows"
            );
            assert_eq!(
                serde_json::to_value(&enc.cols).unwrap(),
                case["cols"],
                "{kind}/{name}: cols"
            );

            let pixels = enc.pixel_values.expect("images give pixels");
            let (want, want_shape) = fx.f32(&format!("{name}_pixel_values"));
            assert_eq!(
                pixels.shape.to_vec(),
                want_shape,
                "{kind}/{name}: pixel shape"
            );
            let err = common::max_abs_diff(&pixels.values, &want);
            eprintln!("{kind}/{name}: pixel max abs error {err:.2e}");
            assert!(err <= PIXEL_TOL, "{kind}/{name}: pixel max abs error {err}");
            let (pmask, _) = fx.i64(&format!("{name}_pixel_attention_mask"));
            let got_pmask: Vec<i64> = pixels
                .pixel_attention_mask
                .iter()
                .map(|m| *m as i64)
                .collect();
            assert_eq!(got_pmask, pmask, "{kind}/{name}: pixel attention mask");
        }
    }
}

#[test]
fn bad_inputs_are_clear_errors() {
    let processor = Processor::from_dir(&fixture_path("tiny-smolvlm")).unwrap();
    let img = open_image(&fixture_path("processor/images/landscape.png")).unwrap();
    let opts = ProcessOptions::default();
    let err = processor
        .call(&["<image><image>two markers"], &[vec![img.clone()]], opts)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("2 `<image>` marker(s) but 1 image(s)"),
        "{err}"
    );
    let err = processor
        .call(&["no marker"], &[vec![img]], opts)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("0 `<image>` marker(s) but 1 image(s)"),
        "{err}"
    );

    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.png");
    std::fs::write(&bad, b"\x89PNG\r\n\x1a\nthis is not really a png").unwrap();
    let err = open_image(&bad).unwrap_err().to_string();
    assert!(err.contains("bad.png") && err.contains("decode"), "{err}");

    let empty = image::DynamicImage::new_rgb8(0, 0);
    let err = processor
        .call(&["<image>x"], &[vec![empty]], opts)
        .unwrap_err()
        .to_string();
    assert!(err.contains("empty"), "{err}");

    // A tokenizer without the image tokens is refused with the token's name.
    let dir = tmp.path().join("model");
    std::fs::create_dir_all(&dir).unwrap();
    for f in [
        "processor_config.json",
        "tokenizer_config.json",
        "chat_template.jinja",
    ] {
        std::fs::copy(fixture_path("tiny-smolvlm").join(f), dir.join(f)).unwrap();
    }
    let tok = std::fs::read_to_string(fixture_path("tiny-smolvlm/tokenizer.json")).unwrap();
    std::fs::write(
        dir.join("tokenizer.json"),
        tok.replace("<fake_token_around_image>", "<fake_token>"),
    )
    .unwrap();
    let err = Processor::from_dir(&dir).unwrap_err().to_string();
    assert!(err.contains("<fake_token_around_image>"), "{err}");
}
