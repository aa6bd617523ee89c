//! QLoRA: LoRA on an NF4 + double-quantised base (fixtures from
//! `scripts/reference/quant_fixtures.py`, PEFT + bitsandbytes on CPU): logits, loss and adapter
//! gradients against PEFT; a short SFT run whose loss falls like the f32 run's; the weight
//! memory report.

mod common;

use std::sync::Arc;

use common::{fixture_path, host, masked_logits_error, model_batch, Fixture, AB};
use vlmtune_data::collate::{CollatorConfig, SftCollator};
use vlmtune_data::dataset::jsonl;
use vlmtune_data::{DatasetFormat, Processor};
use vlmtune_model::{causal_lm_loss, load_dir_with, LoadOptions, SmolVlm};
use vlmtune_peft::{add_adapter, load_adapter, memory_report, LinearModules, LoraPreset};
use vlmtune_quant::QuantConfig;
use vlmtune_train::{SftTrainer, TrainingArgs};

fn nf4_model() -> SmolVlm<AB> {
    let options = LoadOptions {
        quant: Some(QuantConfig::nf4()),
    };
    load_dir_with::<AB>(&fixture_path("tiny-smolvlm"), &options, &Default::default()).unwrap()
}

/// `‖a - b‖ / ‖b‖`.
fn relative_l2(a: &[f32], b: &[f32]) -> f32 {
    vlmtune::selftest::fixtures::relative_l2(a, b) as f32
}

#[test]
fn qlora_logits_loss_and_gradients_match_peft_on_bitsandbytes() {
    let fx = Fixture::open("quant/qlora.safetensors");
    let (tokens, pixels, labels) = model_batch("smolvlm");
    for case in ["smolvlm-lora", "smolvlm-dora"] {
        let mut model = nf4_model();
        load_adapter(
            &mut model,
            &fixture_path(&format!("peft/{case}")),
            "default",
        )
        .unwrap();
        let quantised = vlmtune_peft::quantized_paths(&model);
        assert_eq!(quantised.len(), 14, "the text projections are 4-bit");

        let logits = model.forward(&tokens, Some(&pixels)).unwrap();
        let want = fx.f32(&format!("{case}.logits")).0;
        let got = host(logits.clone().inner());
        let err = masked_logits_error(&got, &want, &tokens.attention_mask);
        let loss = causal_lm_loss(logits, &labels, None).unwrap();
        let (got_loss, want_loss) = (
            loss.clone().into_scalar(),
            fx.f32(&format!("{case}.loss")).0[0],
        );
        assert!(err <= 1e-4, "{case}: logits off by {err}");
        assert!(
            (got_loss - want_loss).abs() <= 1e-5,
            "{case}: loss {got_loss} vs {want_loss}"
        );

        let grads = loss.backward();
        let prefix = format!("{case}.grad.");
        let mut worst = 0.0f32;
        let mut checked = 0;
        model.visit_linears(&mut |path, linear| {
            let key = format!("base_model.model.{path}");
            for lora in &linear.lora {
                let mut pairs = vec![
                    (
                        format!("{key}.lora_A.weight"),
                        lora.lora_a.val().grad(&grads).map(host),
                    ),
                    (
                        format!("{key}.lora_B.weight"),
                        lora.lora_b.val().grad(&grads).map(host),
                    ),
                ];
                if let Some(m) = &lora.magnitude {
                    let g = m
                        .val()
                        .grad(&grads)
                        .map(|g| g.into_data().to_vec::<f32>().unwrap());
                    pairs.push((format!("{key}.lora_magnitude_vector"), g));
                }
                for (name, got) in pairs {
                    let want = fx.f32(&format!("{prefix}{name}")).0;
                    worst = worst.max(relative_l2(&got.expect("adapter gradient"), &want));
                    checked += 1;
                }
            }
        });
        eprintln!("{case}: QLoRA logits {err:.2e}, loss {got_loss} vs {want_loss}, adapter gradients max rel {worst:.2e} over {checked}");
        assert!(checked > 0);
        assert!(
            worst <= 1e-5,
            "{case}: adapter gradient relative error {worst}"
        );
    }
}

/// Loss of every step of a short LoRA SFT run (text all-linear, r 8) on the three SFT
/// fixture examples, with or without an NF4 + double-quantised base.
fn sft_losses(quant: Option<QuantConfig>) -> (Vec<f64>, vlmtune_peft::MemoryReport) {
    let dev = Default::default();
    let options = LoadOptions { quant };
    let mut model = load_dir_with::<AB>(&fixture_path("tiny-smolvlm"), &options, &dev).unwrap();
    let lora = LoraPreset::TextAllLinear.config(8, 16.0);
    add_adapter(&mut model, "default", &lora, 0).unwrap();
    let memory = memory_report::<AB, _>(&model);
    let data = jsonl::load_sft(&fixture_path("sft/data.jsonl"), &DatasetFormat::default()).unwrap();
    let collator = Arc::new(SftCollator::new(
        Processor::from_dir(&fixture_path("tiny-smolvlm")).unwrap(),
        CollatorConfig::default(),
    ));
    let tmp = tempfile::tempdir().unwrap();
    let args = TrainingArgs {
        output_dir: tmp.path().to_path_buf(),
        per_device_train_batch_size: 3,
        max_steps: 30,
        learning_rate: 1e-2,
        lr_scheduler_type: vlmtune_train::args::SchedulerType::Constant,
        logging_steps: 1,
        save_steps: 0,
        progress_bar: false,
        ..TrainingArgs::default()
    };
    let mut trainer = SftTrainer::new(model, args, collator, data, dev)
        .unwrap()
        .with_adapter(lora);
    (trainer.train().unwrap(), memory)
}

#[test]
fn qlora_sft_loss_falls_like_the_f32_run() {
    let (f32_losses, f32_memory) = sft_losses(None);
    let (nf4_losses, nf4_memory) = sft_losses(Some(QuantConfig::nf4()));
    let tail = |l: &[f64]| l[l.len() - 5..].iter().sum::<f64>() / 5.0;
    eprintln!(
        "f32 loss {:.3} -> {:.3}; NF4+DQ loss {:.3} -> {:.3}",
        f32_losses[0],
        tail(&f32_losses),
        nf4_losses[0],
        tail(&nf4_losses)
    );
    eprintln!("f32: {f32_memory}\nNF4: {nf4_memory}");
    eprintln!("{f32_losses:.3?}\n{nf4_losses:.3?}");
    // Both runs learn the three examples ...
    assert!(tail(&f32_losses) < 0.3 * f32_losses[0]);
    assert!(tail(&nf4_losses) < 0.3 * nf4_losses[0]);
    // ... the quantised curve stays within 5% of the starting loss of the f32 one at every
    // step (measured: 0.22 at step 0, the quantisation itself, 0.13 at most after), and ends
    // where it ends, within 0.1 nats per token.
    let gap = f32_losses
        .iter()
        .zip(&nf4_losses)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(
        gap <= 0.05 * f32_losses[0],
        "{f32_losses:?}\n{nf4_losses:?}"
    );
    assert!(
        (tail(&nf4_losses) - tail(&f32_losses)).abs() <= 0.1,
        "{f32_losses:?}\n{nf4_losses:?}"
    );
    // Frozen 4-bit weights: at most 0.52 bytes per parameter (blocksize 64, DQ).
    assert!(
        nf4_memory.quantized_bytes_per_param() <= 0.52,
        "{nf4_memory}"
    );
    assert_eq!(nf4_memory.trainable_params, f32_memory.trainable_params);
    assert!(nf4_memory.frozen_bytes < f32_memory.frozen_bytes);
}

#[test]
fn quantised_bases_refuse_merging_and_saving_as_checkpoints() {
    let mut model = nf4_model();
    load_adapter(&mut model, &fixture_path("peft/smolvlm-lora"), "default").unwrap();
    let err = vlmtune_peft::merge_and_unload(&mut model)
        .unwrap_err()
        .to_string();
    assert!(err.contains("quantised"), "{err}");
    let tmp = tempfile::tempdir().unwrap();
    let err = vlmtune_model::save_pretrained(&model, tmp.path(), vlmtune_quant::SaveDtype::F32)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("quantised") && err.contains("model.text_model.layers.0"),
        "{err}"
    );
}

#[test]
fn parameter_counts_do_not_depend_on_the_storage() {
    let plain = vlmtune_model::summary::param_counts(
        &load_dir_with::<AB>(
            &fixture_path("tiny-smolvlm"),
            &LoadOptions::default(),
            &Default::default(),
        )
        .unwrap(),
    );
    let nf4 = vlmtune_model::summary::param_counts(&nf4_model());
    assert_eq!(plain.quantized, 0);
    // The text projections are quantised (the vision tower, connector and lm_head skipped).
    assert!(nf4.quantized > 0 && nf4.quantized < nf4.text, "{nf4:?}");
    assert_eq!(
        (
            nf4.vision,
            nf4.connector,
            nf4.text,
            nf4.lm_head,
            nf4.total()
        ),
        (
            plain.vision,
            plain.connector,
            plain.text,
            plain.lm_head,
            plain.total()
        )
    );
    let text = vlmtune_model::summary::describe(&nf4_model());
    assert!(text.contains("quantised"), "{text}");
}
