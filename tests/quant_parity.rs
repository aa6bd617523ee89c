//! Quantisation against bitsandbytes (fixtures from `scripts/reference/quant_fixtures.py`):
//! NF4 / FP4 codes, absmax and double-quantisation statistics bit for bit, dequantised values
//! exactly, int8 row-wise codes and statistics; and the logits of the tiny checkpoint loaded
//! with NF4 + double quantisation / FP4 against transformers + bitsandbytes.

mod common;

use common::{fixture_path, host, masked_logits_error, max_abs_diff, model_batch, Fixture, B};
use vlmtune_model::{load_dir_with, LoadOptions};
use vlmtune_quant::bnb::{self, FourBit};
use vlmtune_quant::{QuantConfig, QuantizedWeight, StorageFormat};

fn u8s(fx: &Fixture, key: &str) -> Vec<u8> {
    fx.i64(key).0.into_iter().map(|v| v as u8).collect()
}

/// `<shape>_<kind>_<blocksize>[_dq]` cases in the fixture.
fn four_bit_cases(fx: &Fixture) -> Vec<(String, FourBit, usize, bool)> {
    let mut names: Vec<String> =
        fx.0.keys()
            .into_iter()
            .filter_map(|k| k.strip_suffix(".packed").map(str::to_string))
            .collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let parts: Vec<&str> = name.split('_').collect();
            let kind = if parts[1] == "nf4" {
                FourBit::Nf4
            } else {
                FourBit::Fp4
            };
            let blocksize = parts[2].parse().unwrap();
            (name.clone(), kind, blocksize, parts.len() == 4)
        })
        .collect()
}

#[test]
fn four_bit_codes_and_statistics_match_bitsandbytes_bit_for_bit() {
    let fx = Fixture::open("quant/bitsandbytes.safetensors");
    let cases = four_bit_cases(&fx);
    assert_eq!(cases.len(), 10);
    for (name, kind, blocksize, dq) in cases {
        let (input, shape) = fx.f32(&format!("{name}.input"));
        let (packed, absmax) = bnb::quantize_4bit(&input, blocksize, kind);
        assert_eq!(
            packed,
            u8s(&fx, &format!("{name}.packed")),
            "{name}: packed codes"
        );
        let absmax = if dq {
            let stats = bnb::double_quantize(&absmax);
            let (offset, _) = fx.f32(&format!("{name}.offset"));
            // torch's float32 mean may round the other way in the last bit.
            let ulp = offset[0].abs() * f32::EPSILON;
            assert!(
                (stats.offset - offset[0]).abs() <= ulp,
                "{name}: offset {} vs {}",
                stats.offset,
                offset[0]
            );
            // Around torch's offset, everything else is bit for bit.
            let stats = bnb::double_quantize_with_offset(&absmax, offset[0]);
            assert_eq!(
                stats.codes,
                u8s(&fx, &format!("{name}.qabsmax")),
                "{name}: absmax codes"
            );
            assert_eq!(
                stats.absmax2,
                fx.f32(&format!("{name}.absmax2")).0,
                "{name}: absmax2"
            );
            bnb::double_dequantize(&stats)
        } else {
            assert_eq!(
                absmax,
                fx.f32(&format!("{name}.absmax")).0,
                "{name}: absmax"
            );
            absmax
        };
        let n = input.len();
        let dequant = bnb::dequantize_4bit(&packed, &absmax, blocksize, kind, n);
        assert_eq!(
            dequant,
            fx.f32(&format!("{name}.dequant")).0,
            "{name}: dequantised"
        );

        let rows = shape[0];
        let format = StorageFormat::FourBit {
            kind,
            blocksize,
            double_quant: dq,
        };
        // The device kernels (CUDA's path) dequantise to the same numbers.
        let on_device = QuantizedWeight::<B>::quantize_with(
            &input,
            [rows, n / rows],
            format,
            &Default::default(),
            false,
        );
        if !dq {
            assert_eq!(
                host(on_device.dequantize()),
                dequant,
                "{name}: device dequantisation"
            );
        } else {
            // Only the offset's last bit may differ (see above).
            let err = max_abs_diff(&host(on_device.dequantize()), &dequant);
            assert!(err <= 1e-6, "{name}: device dequantisation off by {err}");
        }
    }
}

#[test]
fn int8_rows_match_bitsandbytes() {
    let fx = Fixture::open("quant/bitsandbytes.safetensors");
    for name in ["int8_7x45", "int8_64x96"] {
        let (input, shape) = fx.f32(&format!("{name}.input"));
        let (codes, stats) = bnb::quantize_int8_rows(&input, shape[1]);
        let want: Vec<i8> = fx
            .i64(&format!("{name}.codes"))
            .0
            .into_iter()
            .map(|v| v as i8)
            .collect();
        assert_eq!(codes, want, "{name}: codes");
        assert_eq!(
            stats,
            fx.f32(&format!("{name}.stats")).0,
            "{name}: row absmax"
        );
        let dequant = bnb::dequantize_int8_rows(&codes, &stats, shape[1]);
        assert_eq!(
            dequant,
            fx.f32(&format!("{name}.dequant")).0,
            "{name}: dequantised"
        );
        let on_device = QuantizedWeight::<B>::quantize_with(
            &input,
            [shape[0], shape[1]],
            StorageFormat::Int8,
            &Default::default(),
            false,
        );
        assert_eq!(
            host(on_device.dequantize()),
            dequant,
            "{name}: device dequantisation"
        );
    }
}

#[test]
fn quantised_model_logits_match_transformers_bitsandbytes() {
    let fx = Fixture::open("quant/model-4bit.safetensors");
    let (f32_logits, _) = Fixture::open("model/smolvlm.safetensors").f32("batch_logits");
    let (tokens, pixels, _) = model_batch("smolvlm");
    let dev = Default::default();
    for (case, config) in [
        ("nf4_dq", QuantConfig::nf4()),
        (
            "fp4",
            QuantConfig {
                load_in_4bit: true,
                ..QuantConfig::default()
            },
        ),
    ] {
        let options = LoadOptions {
            quant: Some(config),
        };
        let model = load_dir_with::<B>(&fixture_path("tiny-smolvlm"), &options, &dev).unwrap();
        let logits = host(model.forward(&tokens, Some(&pixels)).unwrap());
        let (want, _) = fx.f32(&format!("{case}.logits"));
        let err = masked_logits_error(&logits, &want, &tokens.attention_mask);
        assert!(
            err <= 1e-4,
            "{case}: logits off transformers+bitsandbytes by {err}"
        );
        // Quantisation moves the logits as much as it does in transformers.
        let drift = masked_logits_error(&logits, &f32_logits, &tokens.attention_mask);
        let reference_drift = masked_logits_error(&want, &f32_logits, &tokens.attention_mask);
        assert!(
            (drift - reference_drift).abs() <= 1e-4,
            "{case}: drift {drift} vs {reference_drift}"
        );
        eprintln!(
            "{case}: max |logit - transformers| {err:.2e}; max |logit - f32 logit| {drift:.3}"
        );
    }
}
