//! LoRA against PEFT (fixtures from `scripts/reference/peft_fixtures.py`): logits and loss
//! with PEFT-saved adapters (LoRA + modules_to_save, DoRA, rsLoRA, layers_to_transform),
//! adapter gradients, merged logits, trainable-parameter counts of the presets, adapter files
//! written the way PEFT writes them, and clear errors for adapters that do not fit.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::Tensor;
use common::{fixture_path, host, masked_logits_error, model_batch, Fixture, AB, B};
use vlmtune_model::{causal_lm_loss, load_dir, SmolVlm};
use vlmtune_peft::{
    add_adapter, load_adapter, merge_and_unload, save_adapter, set_adapters_enabled,
    trainable_report, LinearModules, LoraConfig, LoraPreset, ModuleSelector,
};
use vlmtune_quant::SafetensorsFiles;

const CASES: [(&str, &str); 4] = [
    ("smolvlm-lora", "smolvlm"),
    ("smolvlm-dora", "smolvlm"),
    ("idefics3-rslora", "idefics3"),
    ("idefics3-layers", "idefics3"),
];

fn model<Bk: burn::tensor::backend::Backend>(kind: &str) -> SmolVlm<Bk> {
    load_dir::<Bk>(&fixture_path(&format!("tiny-{kind}")), &Default::default()).unwrap()
}

/// The gradient of every adapter tensor, keyed like the saved file.
fn adapter_grads(
    model: &SmolVlm<AB>,
    grads: &<AB as burn::tensor::backend::AutodiffBackend>::Gradients,
) -> BTreeMap<String, Vec<f32>> {
    fn g<const D: usize>(
        t: Tensor<AB, D>,
        grads: &<AB as burn::tensor::backend::AutodiffBackend>::Gradients,
    ) -> Vec<f32> {
        t.grad(grads)
            .map(|x| x.into_data().to_vec::<f32>().unwrap())
            .unwrap_or_default()
    }
    let mut out = BTreeMap::new();
    model.visit_linears(&mut |path, linear| {
        let key = format!("base_model.model.{path}");
        for lora in &linear.lora {
            out.insert(format!("{key}.lora_A.weight"), g(lora.lora_a.val(), grads));
            out.insert(format!("{key}.lora_B.weight"), g(lora.lora_b.val(), grads));
            if let Some(m) = &lora.magnitude {
                out.insert(format!("{key}.lora_magnitude_vector"), g(m.val(), grads));
            }
        }
        for copy in &linear.copies {
            out.insert(format!("{key}.weight"), g(copy.weight.val(), grads));
            if let Some(b) = &copy.bias {
                out.insert(format!("{key}.bias"), g(b.val(), grads));
            }
        }
    });
    out
}

#[test]
fn peft_adapters_give_peft_logits_loss_and_gradients() {
    for (case, kind) in CASES {
        let fx = Fixture::open(&format!("peft/{case}.safetensors"));
        let (tokens, pixels, labels) = model_batch(kind);
        let mut m = model::<AB>(kind);
        load_adapter(&mut m, &fixture_path(&format!("peft/{case}")), "default").unwrap();

        let logits = m.forward(&tokens, Some(&pixels)).unwrap();
        let err = masked_logits_error(
            &host(logits.clone().inner()),
            &fx.f32("logits").0,
            &tokens.attention_mask,
        );
        eprintln!("{case}: logits max abs error {err:.2e}");
        assert!(err <= 1e-4, "{case}: logits max abs error {err}");

        let loss = causal_lm_loss(logits, &labels, None).unwrap();
        let want_loss = fx.f32("loss").0[0];
        let got_loss = loss.clone().into_scalar();
        assert!(
            (got_loss - want_loss).abs() <= 1e-5,
            "{case}: loss {got_loss} vs {want_loss}"
        );

        let grads = loss.backward();
        let ours = adapter_grads(&m, &grads);
        let mut worst = 0.0f32;
        for key in fx.0.keys().into_iter().filter(|k| k.starts_with("grad.")) {
            let name = &key["grad.".len()..];
            let want = fx.f32(&key).0;
            let got = ours
                .get(name)
                .unwrap_or_else(|| panic!("{case}: no gradient for {name}"));
            // Relative error of the whole tensor: ‖g - g_peft‖ / ‖g_peft‖.
            let diff: f32 = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b) * (a - b))
                .sum::<f32>()
                .sqrt();
            let norm: f32 = want.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
            worst = worst.max(diff / norm);
        }
        eprintln!("{case}: gradient max relative error {worst:.2e}");
        assert!(worst <= 1e-5, "{case}: gradient relative error {worst}");
        assert_eq!(
            ours.len(),
            fx.0.keys()
                .iter()
                .filter(|k| k.starts_with("grad."))
                .count()
        );
    }
}

#[test]
fn merged_models_match_adapter_logits() {
    for (case, kind) in CASES {
        let fx = Fixture::open(&format!("peft/{case}.safetensors"));
        let (tokens, pixels, _) = model_batch(kind);
        let mut m = model::<B>(kind);
        load_adapter(&mut m, &fixture_path(&format!("peft/{case}")), "default").unwrap();
        let unmerged = host(m.forward(&tokens, Some(&pixels)).unwrap());
        merge_and_unload(&mut m).unwrap();
        let merged = host(m.forward(&tokens, Some(&pixels)).unwrap());
        let self_err = masked_logits_error(&merged, &unmerged, &tokens.attention_mask);
        let peft_err =
            masked_logits_error(&merged, &fx.f32("merged_logits").0, &tokens.attention_mask);
        eprintln!("{case}: merged vs adapter {self_err:.2e}, vs PEFT merged {peft_err:.2e}");
        assert!(
            self_err <= 1e-4 && peft_err <= 1e-4,
            "{case}: {self_err} / {peft_err}"
        );
        let keys: Vec<String> = vlmtune_peft::named_params::<B, _>(&m)
            .into_iter()
            .map(|p| p.path)
            .collect();
        assert!(
            keys.iter()
                .all(|k| vlmtune_model::checkpoint::is_base_param(k)),
            "adapters unloaded"
        );
    }
}

#[test]
fn disabling_adapters_gives_the_base_model() {
    let (tokens, pixels, _) = model_batch("smolvlm");
    let base = host(
        model::<B>("smolvlm")
            .forward(&tokens, Some(&pixels))
            .unwrap(),
    );
    let mut m = model::<B>("smolvlm");
    load_adapter(&mut m, &fixture_path("peft/smolvlm-dora"), "dora").unwrap();
    set_adapters_enabled(&mut m, false).unwrap();
    let off = host(m.forward(&tokens, Some(&pixels)).unwrap());
    assert_eq!(off, base);
    set_adapters_enabled(&mut m, true).unwrap();
    let on = host(m.forward(&tokens, Some(&pixels)).unwrap());
    assert!(masked_logits_error(&on, &base, &tokens.attention_mask) > 1e-2);
}

#[test]
fn preset_trainable_counts_equal_peft() {
    let text = std::fs::read_to_string(fixture_path("peft/trainable_counts.json")).unwrap();
    let want: serde_json::Value = serde_json::from_str(&text).unwrap();
    for kind in ["smolvlm", "idefics3"] {
        for (name, preset) in [
            ("text-attention", LoraPreset::TextAttention),
            ("text-all-linear", LoraPreset::TextAllLinear),
            ("vision-and-text", LoraPreset::VisionAndText),
            ("all-linear", LoraPreset::AllLinear),
        ] {
            let mut m = model::<AB>(kind);
            add_adapter(&mut m, "default", &preset.config(8, 16.0), 0).unwrap();
            let report = trainable_report::<AB, _>(&m);
            let w = &want[format!("{kind}/{name}")];
            assert_eq!(
                report.trainable as u64,
                w["trainable"].as_u64().unwrap(),
                "{kind}/{name}"
            );
            assert_eq!(
                report.total as u64,
                w["total"].as_u64().unwrap(),
                "{kind}/{name}"
            );
        }
    }
}

#[test]
fn saved_adapters_have_peft_keys_and_values() {
    for (case, kind) in CASES {
        let dir = fixture_path(&format!("peft/{case}"));
        let mut m = model::<B>(kind);
        let config = load_adapter(&mut m, &dir, "default").unwrap();
        let tmp = tempfile::tempdir().unwrap();
        save_adapter(&m, "default", &config, tmp.path()).unwrap();
        let ours = SafetensorsFiles::open(&[tmp.path().join("adapter_model.safetensors")]).unwrap();
        let peft = SafetensorsFiles::open(&[dir.join("adapter_model.safetensors")]).unwrap();
        assert_eq!(ours.keys(), peft.keys(), "{case}");
        for k in peft.keys() {
            assert_eq!(
                ours.read_f32(&k).unwrap(),
                peft.read_f32(&k).unwrap(),
                "{case}: {k}"
            );
        }
        assert_eq!(
            LoraConfig::from_file(&tmp.path().join("adapter_config.json")).unwrap(),
            config
        );
    }
}

/// vlmtune writes an adapter; `scripts/reference/check_vlmtune_adapter.py` loads it with
/// PEFT and compares PEFT's logits with the ones written here. Set `VLMTUNE_WRITE_FIXTURES=1`
/// to rewrite the committed files; otherwise they must equal what this code writes.
#[test]
fn adapter_written_by_vlmtune_is_stable() {
    let (tokens, pixels, _) = model_batch("smolvlm");
    let mut m = model::<B>("smolvlm");
    let mut config = LoraPreset::VisionAndText.config(4, 8.0);
    config.init_lora_weights = vlmtune_peft::InitLoraWeights::Bool(false);
    config.modules_to_save = Some(vec!["lm_head".into()]);
    config.base_model_name_or_path = Some("tests/fixtures/tiny-smolvlm".into());
    add_adapter(&mut m, "default", &config, 7).unwrap();
    let logits = m.forward(&tokens, Some(&pixels)).unwrap();
    let dir = fixture_path("peft/saved-by-vlmtune");
    let logits_file = fixture_path("peft/saved-by-vlmtune.safetensors");
    let write = std::env::var("VLMTUNE_WRITE_FIXTURES").is_ok_and(|v| v == "1");
    let target = if write {
        dir.clone()
    } else {
        tempfile::tempdir().unwrap().keep()
    };
    save_adapter(&m, "default", &config, &target).unwrap();
    let values = host(logits);
    if write {
        vlmtune_quant::write_safetensors(
            &logits_file,
            &[vlmtune_quant::NamedTensor {
                name: "logits".into(),
                values,
                shape: vec![2, tokens.seq_len, 460],
            }],
            vlmtune_quant::SaveDtype::F32,
            None,
        )
        .unwrap();
        return;
    }
    let committed = SafetensorsFiles::open(&[dir.join("adapter_model.safetensors")]).unwrap();
    let fresh = SafetensorsFiles::open(&[target.join("adapter_model.safetensors")]).unwrap();
    assert_eq!(committed.keys(), fresh.keys());
    for k in committed.keys() {
        assert_eq!(
            committed.read_f32(&k).unwrap(),
            fresh.read_f32(&k).unwrap(),
            "{k}"
        );
    }
    let want = Fixture::open("peft/saved-by-vlmtune.safetensors")
        .f32("logits")
        .0;
    let err = masked_logits_error(&values, &want, &tokens.attention_mask);
    assert!(
        err <= 1e-4,
        "logits moved by {err} since the fixture was written"
    );
}

fn copy_adapter(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(from.join(f), to.join(f)).unwrap();
    }
}

#[test]
fn adapters_that_do_not_fit_are_clear_errors() {
    let src = fixture_path("peft/smolvlm-lora");
    let tmp = tempfile::tempdir().unwrap();
    let edit_config = |dir: &Path, from: &str, to: &str| {
        let path = dir.join("adapter_config.json");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(from));
        std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
    };

    let dir = tmp.path().join("no-target");
    copy_adapter(&src, &dir);
    edit_config(&dir, "\"fc1\"", "\"not_a_module\"");
    let err = load_adapter(&mut model::<B>("smolvlm"), &dir, "a")
        .unwrap_err()
        .to_string();
    assert!(err.contains("not_a_module") || err.contains("fc1"), "{err}");

    let dir = tmp.path().join("rank");
    copy_adapter(&src, &dir);
    edit_config(&dir, "\"r\": 4", "\"r\": 6");
    let err = load_adapter(&mut model::<B>("smolvlm"), &dir, "a")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("r = 6") && err.contains("lora_A.weight"),
        "{err}"
    );

    let dir = tmp.path().join("bias");
    copy_adapter(&src, &dir);
    edit_config(&dir, "\"bias\": \"none\"", "\"bias\": \"lora_only\"");
    let err = load_adapter(&mut model::<B>("smolvlm"), &dir, "a")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("adapter_config.json") && err.contains("bias") && err.contains("lora_only"),
        "{err}"
    );

    let mut m = model::<B>("smolvlm");
    let err = add_adapter(
        &mut m,
        "x",
        &LoraConfig::new(4, 8.0, ModuleSelector::list(&["nothing_here"])),
        0,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("nothing_here"), "{err}");
    assert!(vlmtune_peft::adapter_names(&m).is_empty());
}

#[test]
fn cli_merge_writes_a_checkpoint_with_the_adapter_logits() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("merged");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_vlmtune"))
        .args(["merge", "--model"])
        .arg(fixture_path("tiny-smolvlm"))
        .arg("--adapter")
        .arg(fixture_path("peft/smolvlm-lora"))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "processor_config.json",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
    let (tokens, pixels, _) = model_batch("smolvlm");
    let merged = load_dir::<B>(&out, &Default::default()).unwrap();
    let got = host(merged.forward(&tokens, Some(&pixels)).unwrap());
    let want = Fixture::open("peft/smolvlm-lora.safetensors")
        .f32("logits")
        .0;
    let err = masked_logits_error(&got, &want, &tokens.attention_mask);
    assert!(err <= 1e-4, "merged checkpoint logits error {err}");
}
