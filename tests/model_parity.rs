//! The model against transformers on the two tiny checkpoints (fixtures from
//! `scripts/reference/model_fixtures.py`): vision tower, connector, logits of a padded
//! multi-tile batch, masked-label loss, and greedy generation; and the training path's image
//! features (frozen tower and connector run together in chunks of tiles) against the plain path.

mod common;

use common::{fixture_path, host, max_abs_diff, Fixture, AB, B};
use vlmtune_model::{
    causal_lm_loss, generate, load_dir, GenerationConfig, PixelBatch, SmolVlm, TokenBatch,
};
use vlmtune_peft::{add_adapter, LoraPreset};

const KINDS: [&str; 2] = ["smolvlm", "idefics3"];

fn load(kind: &str) -> (SmolVlm<B>, Fixture) {
    let model = load_dir::<B>(&fixture_path(&format!("tiny-{kind}")), &Default::default())
        .unwrap_or_else(|e| panic!("{kind}: {e}"));
    (model, Fixture::open(&format!("model/{kind}.safetensors")))
}

fn pixels(fx: &Fixture, prefix: &str) -> PixelBatch {
    let (values, shape) = fx.f32(&format!("{prefix}_pixel_values"));
    let (mask, _) = fx.i64(&format!("{prefix}_pixel_attention_mask"));
    PixelBatch {
        pixel_values: values,
        shape: shape.try_into().expect("5-d pixels"),
        pixel_attention_mask: Some(mask.iter().map(|m| *m as u8).collect()),
    }
}

fn tokens(fx: &Fixture, ids: &str, mask: &str) -> TokenBatch {
    let (input_ids, shape) = fx.i64(ids);
    let (attention_mask, _) = fx.i64(mask);
    TokenBatch {
        input_ids: input_ids.iter().map(|i| *i as u32).collect(),
        attention_mask: attention_mask.iter().map(|m| *m as u8).collect(),
        batch_size: shape[0],
        seq_len: shape[1],
    }
}

#[test]
fn vision_tower_with_partial_patch_mask() {
    for kind in KINDS {
        let (model, fx) = load(kind);
        let (values, shape) = fx.f32("partial_pixel_values");
        let (mask, _) = fx.i64("partial_pixel_attention_mask");
        let batch = PixelBatch {
            pixel_values: values,
            shape: [1, shape[0], shape[1], shape[2], shape[3]],
            pixel_attention_mask: Some(mask.iter().map(|m| *m as u8).collect()),
        };
        let (vision, tiles) = model.encode_vision(&batch).unwrap().unwrap();
        assert_eq!(tiles, vec![2]);
        let (want, want_shape) = fx.f32("partial_vision_out");
        assert_eq!(vision.dims().to_vec(), want_shape);
        let err = max_abs_diff(&host(vision), &want);
        eprintln!("{kind}: partial-mask vision max abs error {err:.2e}");
        assert!(err <= 1e-4, "{kind}: vision max abs error {err}");
    }
}

#[test]
fn vision_connector_logits_and_loss_of_a_padded_batch() {
    for kind in KINDS {
        let (model, fx) = load(kind);
        let pix = pixels(&fx, "batch");
        let toks = tokens(&fx, "batch_input_ids", "batch_attention_mask");

        let (vision, tiles) = model.encode_vision(&pix).unwrap().unwrap();
        assert_eq!(tiles, vec![3, 1], "{kind}: padding tiles are dropped");
        let err = max_abs_diff(&host(vision), &fx.f32("batch_vision_out").0);
        assert!(err <= 1e-4, "{kind}: vision max abs error {err}");

        let features = model.encode_images(&pix).unwrap().unwrap();
        let err = max_abs_diff(&host(features.features), &fx.f32("batch_connector_out").0);
        assert!(err <= 1e-4, "{kind}: connector max abs error {err}");

        let logits = model.forward(&toks, Some(&pix)).unwrap();
        let (want, shape) = fx.f32("batch_logits");
        assert_eq!(logits.dims().to_vec(), shape);
        let got = host(logits.clone());
        let vocab = shape[2];
        let mut err = 0.0f32;
        for (pos, m) in toks.attention_mask.iter().enumerate() {
            if *m == 1 {
                let row = pos * vocab..(pos + 1) * vocab;
                err = err.max(max_abs_diff(&got[row.clone()], &want[row]));
            }
        }
        eprintln!("{kind}: logits max abs error {err:.2e}");
        assert!(err <= 1e-4, "{kind}: logits max abs error {err}");

        let (labels, _) = fx.i64("batch_labels");
        let loss = causal_lm_loss(logits, &labels, None).unwrap().into_scalar();
        let want_loss = fx.f32("batch_loss").0[0];
        eprintln!("{kind}: loss {loss} vs {want_loss}");
        assert!(
            (loss - want_loss).abs() <= 1e-5,
            "{kind}: loss {loss} vs transformers {want_loss}"
        );
    }
}

#[test]
fn frozen_tower_and_connector_in_chunks_match_the_plain_path() {
    // 2 samples x 20 tiles of 64 patches: the training path encodes 16 tiles per chunk and
    // projects each chunk through the connector before joining; the plain path joins the
    // tower's output first. A padding tile (all zeros) in the second sample is dropped.
    let mut model = load_dir::<AB>(&fixture_path("tiny-smolvlm"), &Default::default()).unwrap();
    add_adapter(
        &mut model,
        "default",
        &LoraPreset::TextAttention.config(4, 8.0),
        0,
    )
    .unwrap();
    assert!(!model.vision_is_trainable());
    let tile = 3 * 32 * 32;
    let mut values: Vec<f32> = (0..2 * 20 * tile)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    values[39 * tile..].fill(0.0);
    let pix = PixelBatch {
        pixel_values: values,
        shape: [2, 20, 3, 32, 32],
        pixel_attention_mask: None,
    };
    let plain = model.encode_images(&pix).unwrap().unwrap();
    let training = model.encode_images_for_training(&pix).unwrap().unwrap();
    assert_eq!(training.tiles_per_sample, vec![20, 19]);
    assert_eq!(training.tiles_per_sample, plain.tiles_per_sample);
    assert_eq!(training.features.dims(), plain.features.dims());
    let (got, want) = (
        host(training.features.inner()),
        host(plain.features.inner()),
    );
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let err = max_abs_diff(&got, &want);
    assert!(err <= 1e-6 * scale, "max abs error {err} (scale {scale})");
}

#[test]
fn greedy_generation_matches_transformers() {
    for kind in KINDS {
        let (model, fx) = load(kind);
        let eos = model.config().eos_token_ids();
        let pad = model.config().text_config.pad_token_id.unwrap_or(0);
        let config = GenerationConfig {
            max_new_tokens: 12,
            eos_token_ids: eos,
            pad_token_id: pad,
            ..Default::default()
        };
        let pix = pixels(&fx, "batch");
        let toks = tokens(&fx, "gen_input_ids", "gen_attention_mask");
        let out = generate(&model, &toks, Some(&pix), &config).unwrap();
        let (want, shape) = fx.i64("gen_new_tokens");
        let want: Vec<Vec<u32>> = want
            .chunks(shape[1])
            .map(|r| r.iter().map(|t| *t as u32).collect())
            .collect();
        assert_eq!(out.padded(pad), want, "{kind}: image + text prompts");
        assert!(want[0].len() >= 10);

        let (ids, _) = fx.i64("gen_text_input_ids");
        let toks = TokenBatch::from_rows(&[ids.iter().map(|t| *t as u32).collect()]).unwrap();
        let out = generate(&model, &toks, None, &config).unwrap();
        let (want, _) = fx.i64("gen_text_new_tokens");
        let want: Vec<u32> = want.iter().map(|t| *t as u32).collect();
        assert_eq!(out.padded(pad)[0], want, "{kind}: text-only prompt");
    }
}
