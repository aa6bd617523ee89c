//! Forward logits of both tiny checkpoints (transformers) and of the NF4 + double-quantised /
//! FP4 smolvlm (transformers + bitsandbytes).

use std::path::Path;

use burn::tensor::backend::Backend;
use vlmtune_model::{load_dir_with, LoadOptions};
use vlmtune_quant::QuantConfig;

use super::fixtures::{host, masked_logits_error, model_batch, Fixture};
use super::{Check, Tolerances};
use crate::error::Result;

/// Logits of `tiny-<kind>` (stored as `quant`) on the fixture batch against `want.1` of
/// `want.0`.
fn logits_check<B: Backend>(
    fixtures: &Path,
    kind: &str,
    quant: Option<QuantConfig>,
    want: (&str, &str),
    name: &str,
    tolerance: f64,
    device: &B::Device,
) -> Result<Check> {
    let (tokens, pixels, _) = model_batch(fixtures, kind)?;
    let options = LoadOptions { quant };
    let model = load_dir_with::<B>(&fixtures.join(format!("tiny-{kind}")), &options, device)?;
    let logits = host(model.forward(&tokens, Some(&pixels))?)?;
    let (reference, _) = Fixture::open(fixtures, want.0)?.f32(want.1)?;
    Ok(Check::new(
        name,
        masked_logits_error(&logits, &reference, &tokens.attention_mask),
        tolerance,
    ))
}

/// The four logits checks.
pub fn checks<B: Backend>(
    fixtures: &Path,
    tol: Tolerances,
    device: &B::Device,
) -> Result<Vec<Check>> {
    let mut checks = Vec::new();
    for kind in ["smolvlm", "idefics3"] {
        checks.push(logits_check::<B>(
            fixtures,
            kind,
            None,
            (&format!("model/{kind}.safetensors"), "batch_logits"),
            &format!("forward/{kind} logits (transformers)"),
            tol.logits,
            device,
        )?);
    }
    for (case, quant) in [
        ("nf4_dq", QuantConfig::nf4()),
        (
            "fp4",
            QuantConfig {
                load_in_4bit: true,
                ..QuantConfig::default()
            },
        ),
    ] {
        checks.push(logits_check::<B>(
            fixtures,
            "smolvlm",
            Some(quant),
            ("quant/model-4bit.safetensors", &format!("{case}.logits")),
            &format!("quant/{case} logits (transformers + bitsandbytes)"),
            tol.logits,
            device,
        )?);
    }
    Ok(checks)
}
