//! Adapters and quantised weights on the device: PEFT adapters (LoRA + modules_to_save, DoRA,
//! rsLoRA, layers_to_transform) and QLoRA (LoRA / DoRA on the NF4 + double-quantised base)
//! against PEFT's logits, loss and adapter gradients; and the device's dequantisation of NF4 /
//! FP4 (with and without double quantisation) and int8 weights against bitsandbytes'.

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;
use vlmtune_model::{causal_lm_loss, load_dir_with, LoadOptions, SmolVlm};
use vlmtune_peft::{load_adapter, LinearModules};
use vlmtune_quant::bnb::FourBit;
use vlmtune_quant::{QuantConfig, QuantizedWeight, StorageFormat};

use super::fixtures::{host, masked_logits_error, model_batch, relative, relative_l2, Fixture};
use super::{Check, Tolerances};
use crate::error::Result;

/// The PEFT fixture adapters and the checkpoint each belongs to.
const PEFT_CASES: [(&str, &str); 4] = [
    ("smolvlm-lora", "smolvlm"),
    ("smolvlm-dora", "smolvlm"),
    ("idefics3-rslora", "idefics3"),
    ("idefics3-layers", "idefics3"),
];

/// The gradient of every adapter tensor (LoRA A/B, DoRA magnitudes, modules_to_save copies),
/// keyed as PEFT saves them.
fn adapter_grads<AB: AutodiffBackend>(
    model: &SmolVlm<AB>,
    grads: &AB::Gradients,
) -> Result<BTreeMap<String, Vec<f32>>> {
    fn grad<AB: AutodiffBackend, const D: usize>(
        t: Tensor<AB, D>,
        grads: &AB::Gradients,
    ) -> Result<Vec<f32>> {
        t.grad(grads).map(host).unwrap_or(Ok(Vec::new()))
    }
    let mut tensors: Vec<(String, Result<Vec<f32>>)> = Vec::new();
    model.visit_linears(&mut |path, linear| {
        let key = format!("base_model.model.{path}");
        for lora in &linear.lora {
            tensors.push((
                format!("{key}.lora_A.weight"),
                grad(lora.lora_a.val(), grads),
            ));
            tensors.push((
                format!("{key}.lora_B.weight"),
                grad(lora.lora_b.val(), grads),
            ));
            if let Some(m) = &lora.magnitude {
                tensors.push((format!("{key}.lora_magnitude_vector"), grad(m.val(), grads)));
            }
        }
        for copy in &linear.copies {
            tensors.push((format!("{key}.weight"), grad(copy.weight.val(), grads)));
            if let Some(b) = &copy.bias {
                tensors.push((format!("{key}.bias"), grad(b.val(), grads)));
            }
        }
    });
    tensors
        .into_iter()
        .map(|(k, v)| v.map(|v| (k, v)))
        .collect()
}

/// Logits, loss and the adapter gradients of `model` (adapter `case` loaded) on the fixture
/// batch of `kind`, against the keys `<prefix>logits`, `<prefix>loss` and `<prefix>grad.*`
/// of `reference`. A gradient PEFT has and the model lacks counts as infinitely wrong.
fn adapter_case_checks<AB: AutodiffBackend>(
    fixtures: &Path,
    mut model: SmolVlm<AB>,
    (case, kind): (&str, &str),
    (reference, prefix): (&Fixture, &str),
    (label, source, tol): (&str, &str, Tolerances),
) -> Result<Vec<Check>> {
    let (tokens, pixels, labels) = model_batch(fixtures, kind)?;
    load_adapter(
        &mut model,
        &fixtures.join(format!("peft/{case}")),
        "default",
    )?;
    let logits = model.forward(&tokens, Some(&pixels))?;
    let (want_logits, _) = reference.f32(&format!("{prefix}logits"))?;
    let logits_error = masked_logits_error(
        &host(logits.clone().inner())?,
        &want_logits,
        &tokens.attention_mask,
    );
    let loss = causal_lm_loss(logits, &labels, None)?;
    let got_loss = host(loss.clone())?[0];
    let want_loss = reference.f32(&format!("{prefix}loss"))?.0[0];
    let ours = adapter_grads(&model, &loss.backward())?;
    let grad_prefix = format!("{prefix}grad.");
    let wanted = reference.keys_with_prefix(&grad_prefix);
    let mut worst = if wanted.is_empty() {
        f64::INFINITY
    } else {
        0.0
    };
    for key in &wanted {
        let (want, _) = reference.f32(key)?;
        let err = ours
            .get(&key[grad_prefix.len()..])
            .map_or(f64::INFINITY, |got| relative_l2(got, &want));
        worst = worst.max(err);
    }
    Ok(vec![
        Check::new(
            format!("{label}/{case} logits ({source})"),
            logits_error,
            tol.logits,
        ),
        Check::new(
            format!("{label}/{case} loss ({source})"),
            relative(f64::from(got_loss), f64::from(want_loss)),
            tol.loss,
        ),
        Check::new(
            format!(
                "{label}/{case} adapter gradients, {} tensors ({source})",
                wanted.len()
            ),
            worst,
            tol.grads,
        ),
    ])
}

/// PEFT's adapters on the f32 checkpoints, then QLoRA on the NF4 + double-quantised one.
pub fn checks<AB: AutodiffBackend>(
    fixtures: &Path,
    tol: Tolerances,
    device: &AB::Device,
) -> Result<Vec<Check>> {
    let load = |kind: &str, quant: Option<QuantConfig>| {
        load_dir_with::<AB>(
            &fixtures.join(format!("tiny-{kind}")),
            &LoadOptions { quant },
            device,
        )
    };
    let mut checks = Vec::new();
    for (case, kind) in PEFT_CASES {
        let reference = Fixture::open(fixtures, &format!("peft/{case}.safetensors"))?;
        checks.extend(adapter_case_checks(
            fixtures,
            load(kind, None)?,
            (case, kind),
            (&reference, ""),
            ("peft", "PEFT", tol),
        )?);
    }
    let qlora = Fixture::open(fixtures, "quant/qlora.safetensors")?;
    for case in ["smolvlm-lora", "smolvlm-dora"] {
        checks.extend(adapter_case_checks(
            fixtures,
            load("smolvlm", Some(QuantConfig::nf4()))?,
            (case, "smolvlm"),
            (&qlora, &format!("{case}.")),
            ("qlora", "PEFT + bitsandbytes", tol),
        )?);
    }
    Ok(checks)
}

/// The device's dequantisation of the bitsandbytes fixture's tensors, quantised here, against
/// bitsandbytes' dequantised values; one check per format, its error the worst case's largest
/// difference relative to the largest magnitude.
pub fn dequantisation_checks<B: Backend>(
    fixtures: &Path,
    tol: Tolerances,
    device: &B::Device,
) -> Result<Vec<Check>> {
    let fx = Fixture::open(fixtures, "quant/bitsandbytes.safetensors")?;
    // `<shape>_<kind>_<blocksize>[_dq]` and `int8_<shape>`.
    let mut worst: BTreeMap<String, f64> = BTreeMap::new();
    for key in fx.keys_with_prefix("") {
        let Some(name) = key.strip_suffix(".dequant") else {
            continue;
        };
        let (input, shape) = fx.f32(&format!("{name}.input"))?;
        let (want, _) = fx.f32(&key)?;
        let parts: Vec<&str> = name.split('_').collect();
        let (format, group) = if parts[0] == "int8" {
            (StorageFormat::Int8, "int8".to_string())
        } else {
            let kind = if parts.get(1) == Some(&"nf4") {
                FourBit::Nf4
            } else {
                FourBit::Fp4
            };
            let double_quant = parts.len() == 4;
            let blocksize = parts.get(2).and_then(|b| b.parse().ok()).unwrap_or(64);
            (
                StorageFormat::FourBit {
                    kind,
                    blocksize,
                    double_quant,
                },
                format!("{}{}", parts[1], if double_quant { "+dq" } else { "" }),
            )
        };
        let rows = shape[0];
        let weight = QuantizedWeight::<B>::quantize_with(
            &input,
            [rows, input.len() / rows],
            format,
            device,
            false,
        );
        let got = host(weight.dequantize())?;
        let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-12);
        let err = super::fixtures::max_abs_diff(&got, &want) / f64::from(scale);
        let entry = worst.entry(group).or_insert(0.0);
        *entry = entry.max(err);
    }
    Ok(worst
        .into_iter()
        .map(|(group, err)| {
            Check::new(
                format!("quant/{group} dequantisation (bitsandbytes)"),
                err,
                tol.dequant,
            )
        })
        .collect())
}
