//! DPO against TRL's DPOTrainer (fixtures from `scripts/reference/dpo_fixtures.py`): the loss
//! and every logged metric of one step for each loss type, the updated adapter, and the
//! shared-prefix path giving the plain path's loss and gradients.

mod common;

use std::sync::Arc;

use common::{fixture_path, max_abs_diff, one_step_args, Fixture, AB};
use vlmtune_data::collate::{CollatorConfig, SftCollator};
use vlmtune_data::dataset::jsonl;
use vlmtune_data::preference::{PreferenceBatch, PreferenceCollator};
use vlmtune_data::{DatasetFormat, PreferenceExample, Processor};
use vlmtune_model::{load_dir, SmolVlm};
use vlmtune_peft::load_adapter;
use vlmtune_train::dpo::{dpo_loss, plain_logps, shared_prefix_logps, DpoConfig, DpoLossType};
use vlmtune_train::optim::collect_grads;
use vlmtune_train::DpoTrainer;

fn pairs() -> Vec<PreferenceExample> {
    jsonl::load_preference(&fixture_path("dpo/data.jsonl"), &DatasetFormat::default()).unwrap()
}

fn collator() -> Arc<PreferenceCollator> {
    let processor = Processor::from_dir(&fixture_path("tiny-smolvlm")).unwrap();
    Arc::new(PreferenceCollator {
        sft: SftCollator::new(processor, CollatorConfig::default()),
    })
}

fn policy() -> (SmolVlm<AB>, vlmtune_peft::LoraConfig) {
    let mut model = load_dir::<AB>(&fixture_path("tiny-smolvlm"), &Default::default()).unwrap();
    let config = load_adapter(&mut model, &fixture_path("sft/initial-adapter"), "default").unwrap();
    (model, config)
}

fn config_of(entry: &serde_json::Value) -> DpoConfig {
    DpoConfig {
        beta: entry.get("beta").and_then(|b| b.as_f64()).unwrap_or(0.1),
        loss_type: serde_json::from_value(entry["loss_type"].clone()).unwrap(),
        loss_weights: entry
            .get("loss_weights")
            .map(|w| serde_json::from_value(w.clone()).unwrap()),
        label_smoothing: entry
            .get("label_smoothing")
            .and_then(|l| l.as_f64())
            .unwrap_or(0.0),
        ..DpoConfig::default()
    }
}

#[test]
fn one_step_of_each_loss_type_matches_trl() {
    let text = std::fs::read_to_string(fixture_path("dpo/trl.json")).unwrap();
    let trl: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text).unwrap();
    let fx = Fixture::open("dpo/trl_step.safetensors");
    for (name, entry) in &trl {
        let (model, lora) = policy();
        let tmp = tempfile::tempdir().unwrap();
        let args = one_step_args(2, 1, tmp.path());
        let mut trainer = DpoTrainer::new(
            model,
            args,
            config_of(entry),
            collator(),
            pairs(),
            Default::default(),
        )
        .unwrap()
        .with_adapter(lora);
        trainer.train().unwrap();
        let log = &trainer.state.log_history[0];
        for metric in [
            "loss",
            "grad_norm",
            "rewards/chosen",
            "rewards/rejected",
            "rewards/margins",
            "rewards/accuracies",
            "logps/chosen",
            "logps/rejected",
            "logits/chosen",
            "logits/rejected",
        ] {
            let want = entry[metric]
                .as_f64()
                .unwrap_or_else(|| panic!("{name}: TRL logged no {metric}"));
            let got = log[metric]
                .as_f64()
                .unwrap_or_else(|| panic!("{name}: no {metric} in {log}"));
            let err = (got - want).abs() / want.abs().max(1.0);
            assert!(err <= 1e-5, "{name}: {metric} {got} vs TRL {want}");
        }
        // Adam's first update is lr * g / (|g| + eps): +-lr for every element whose gradient is
        // well above eps, and ill-conditioned for the rare element whose gradient is about eps
        // (one of 3840 for `robust`). Those elements get a tolerance of 10% of the step.
        let initial = Fixture::open("sft/initial-adapter/adapter_model.safetensors");
        let mut worst = 0.0f32;
        for t in vlmtune_peft::io::adapter_tensors(&trainer.model, "default") {
            let (reference, _) = fx.f32(&format!("{name}.{}", t.name));
            let (before, _) = initial.f32(&t.name);
            let scale = reference.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            for ((ours, trl), w0) in t.values.iter().zip(&reference).zip(&before) {
                let step = (trl - w0).abs();
                let err = (ours - trl).abs();
                if step >= 0.99e-2 {
                    worst = worst.max(err / scale);
                } else {
                    assert!(
                        err <= 1e-3,
                        "{name}: {} ill-conditioned element off by {err}",
                        t.name
                    );
                }
            }
        }
        eprintln!(
            "{name}: loss {} (TRL {}), updated weights max relative error {worst:.2e}",
            log["loss"], entry["loss"]
        );
        assert!(worst <= 1e-5, "{name}: updated adapter differs by {worst}");
    }
}

#[test]
fn shared_prefix_gives_the_plain_loss_and_gradients() {
    let collator = collator();
    let batch = PreferenceBatch {
        pairs: pairs()
            .iter()
            .enumerate()
            .map(|(i, p)| collator.encode(p, i).unwrap().unwrap())
            .collect(),
    };
    let config = DpoConfig {
        loss_type: vec![DpoLossType::Sigmoid, DpoLossType::Sft],
        ..DpoConfig::default()
    };
    let ref_c = [-3.0, -1.5];
    let ref_r = [-2.0, -4.0];
    let run = |shared: bool| {
        let (model, _) = policy();
        let seq = if shared {
            shared_prefix_logps(&model, &batch, None).unwrap()
        } else {
            plain_logps(&model, &batch, None).unwrap()
        };
        let (loss, _) = dpo_loss(&config, &seq, &ref_c, &ref_r).unwrap();
        let value = loss.clone().into_scalar();
        let grads = collect_grads(&model, &loss.backward());
        (value, grads)
    };
    let (plain_loss, plain_grads) = run(false);
    let (shared_loss, shared_grads) = run(true);
    assert!(
        (plain_loss - shared_loss).abs() <= 1e-6,
        "{plain_loss} vs {shared_loss}"
    );
    assert_eq!(plain_grads.len(), shared_grads.len());
    for (k, g) in &plain_grads {
        let a = g.clone().into_data().to_vec::<f32>().unwrap();
        let b = shared_grads[k].clone().into_data().to_vec::<f32>().unwrap();
        let scale = a.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-12);
        assert!(max_abs_diff(&a, &b) / scale <= 1e-5, "{k}");
    }
}
