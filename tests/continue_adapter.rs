//! Training an existing PEFT adapter further (`[lora] adapter`, `--adapter`, or the adapter
//! folder as the model): 2 SFT steps, then 2 more from the saved adapter, equal 4 steps of one
//! run whose optimiser state (and schedule and data order) start afresh after step 2, as a new
//! TRL run on `PeftModel.from_pretrained(..., is_trainable=True)` does. The adapter's config
//! wins over `[lora]` fields, a contradiction is an error; for DPO the reference is the policy
//! with the continued adapter frozen.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::{fixture_path, AB};
use vlmtune::jobs::dpo::{run_dpo, DpoJobConfig};
use vlmtune::jobs::sft::{load_examples, prepare_model, run_sft, LoraSection, SftJobConfig};
use vlmtune_data::{Processor, SftCollator};
use vlmtune_peft::LoraPreset;
use vlmtune_quant::SafetensorsFiles;
use vlmtune_train::SftTrainer;

fn sft_config(out: &Path, steps: i64) -> SftJobConfig {
    let mut c = SftJobConfig::default();
    c.model.name = fixture_path("tiny-smolvlm").display().to_string();
    c.dataset.source = fixture_path("sft/data.jsonl").display().to_string();
    c.lora = Some(LoraSection {
        preset: Some(LoraPreset::TextAttention),
        config: LoraPreset::TextAttention.config(4, 8.0),
        ..LoraSection::default()
    });
    c.training.output_dir = out.to_path_buf();
    c.training.max_steps = steps;
    c.training.per_device_train_batch_size = 1;
    c.training.learning_rate = 1e-2;
    c.training.logging_steps = 1;
    c.training.save_steps = 0;
    c.training.progress_bar = false;
    c
}

/// The job's trainer, built from the same pieces `run_sft` uses.
fn trainer(config: &SftJobConfig, model: vlmtune_model::SmolVlm<AB>) -> SftTrainer<AB> {
    let dir = fixture_path("tiny-smolvlm");
    let collator = SftCollator::new(Processor::from_dir(&dir).unwrap(), config.collator.clone());
    let train = load_examples(&config.dataset).unwrap().train;
    SftTrainer::new(
        model,
        config.training.clone(),
        Arc::new(collator),
        train,
        Default::default(),
    )
    .unwrap()
}

fn adapter_tensors(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let files = SafetensorsFiles::open(&[dir.join("adapter_model.safetensors")]).unwrap();
    let mut keys = files.keys();
    keys.sort();
    keys.into_iter()
        .map(|k| {
            let values = files.read_f32(&k).unwrap().0;
            (k, values)
        })
        .collect()
}

#[test]
fn two_steps_and_two_more_from_the_saved_adapter_equal_one_run_with_a_fresh_optimizer() {
    let dir = tempfile::tempdir().unwrap();
    let first = run_sft::<AB>(&sft_config(&dir.path().join("a"), 2), Default::default()).unwrap();
    let mut more = sft_config(&dir.path().join("b"), 2);
    more.lora = Some(LoraSection {
        adapter: Some(first.saved_to.clone()),
        ..LoraSection::default()
    });
    let second = run_sft::<AB>(&more, Default::default()).unwrap();

    // One run in memory: 2 steps, then a new trainer (fresh AdamW, schedule, data order) on
    // the same model for 2 more.
    let config = sft_config(&dir.path().join("c"), 2);
    let (model, lora) = prepare_model::<AB>(
        &fixture_path("tiny-smolvlm"),
        &config.model.name,
        config.lora.as_ref(),
        None,
        None,
        config.training.seed,
        &Default::default(),
    )
    .unwrap();
    let mut t = trainer(&config, model).with_adapter(lora.clone().unwrap());
    let losses_1 = t.train().unwrap();
    assert_eq!(
        losses_1, first.losses,
        "the job and the in-memory run agree"
    );
    let mut t = trainer(&config, t.model).with_adapter(lora.unwrap());
    let losses_2 = t.train().unwrap();
    assert_eq!(losses_2, second.losses);
    let reference = dir.path().join("c/final");
    t.save_model(&reference).unwrap();
    assert_eq!(
        adapter_tensors(&second.saved_to),
        adapter_tensors(&reference)
    );
    let saved: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(second.saved_to.join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(saved["r"], 4, "the adapter's config, kept");

    // The adapter folder as the model: the base comes from adapter_config.json.
    let mut as_model = sft_config(&dir.path().join("d"), 2);
    as_model.model.name = first.saved_to.display().to_string();
    as_model.lora = None;
    let third = run_sft::<AB>(&as_model, Default::default()).unwrap();
    assert_eq!(third.losses, second.losses);
}

#[test]
fn lora_fields_that_contradict_the_adapter_are_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let first = run_sft::<AB>(&sft_config(&dir.path().join("a"), 1), Default::default()).unwrap();
    let mut more = sft_config(&dir.path().join("b"), 1);
    let lora = more.lora.as_mut().unwrap();
    lora.adapter = Some(first.saved_to.clone());
    // Repeating the adapter's own values is fine.
    assert!(run_sft::<AB>(&more, Default::default()).is_ok());
    // From a config file: the keys written count.
    let toml = dir.path().join("more.toml");
    std::fs::write(
        &toml,
        format!(
            "[lora]\nadapter = \"{}\"\nr = 8\nlora_alpha = 8\n",
            first.saved_to.display()
        ),
    )
    .unwrap();
    let from_file = SftJobConfig::from_file(&toml).unwrap();
    let err = from_file.lora.as_ref().unwrap().conflicts_with(
        &vlmtune_peft::LoraConfig::from_file(&first.saved_to.join("adapter_config.json")).unwrap(),
    );
    assert_eq!(err, ["r: 8 here, 4 in the adapter"], "lora_alpha 8 agrees");
    // r = 8 is PEFT's default: only the keys the user gave tell it apart from unset.
    let lora = more.lora.as_mut().unwrap();
    lora.config.r = 8;
    lora.explicit = vec!["adapter".into(), "r".into()];
    let err = run_sft::<AB>(&more, Default::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("r: 8 here, 4 in the adapter") && err.contains("adapter's config wins"),
        "{err}"
    );
}

#[test]
fn dpo_on_a_continued_adapter_uses_it_frozen_as_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    let first = run_sft::<AB>(&sft_config(&dir.path().join("a"), 2), Default::default()).unwrap();
    let dpo = |reference: Option<std::path::PathBuf>| {
        let mut c = DpoJobConfig::default();
        c.model.name = fixture_path("tiny-smolvlm").display().to_string();
        c.dataset.num_train = 4;
        c.dataset.num_eval = 4;
        c.dataset.image_size = 32;
        c.lora = Some(LoraSection {
            adapter: Some(first.saved_to.clone()),
            ..LoraSection::default()
        });
        if let Some(dir) = reference {
            c.dpo.reference = vlmtune_train::ReferenceSource::Checkpoint(dir);
        }
        c.training.output_dir = dir.path().join("dpo");
        c.training.max_steps = 1;
        c.training.per_device_train_batch_size = 2;
        c.training.progress_bar = false;
        run_dpo::<AB>(&c, Default::default()).unwrap()
    };
    // The reference equals the starting policy: every reward, hence every margin, is 0.
    let continued = dpo(None);
    for metric in ["rewards/chosen", "rewards/rejected", "rewards/margins"] {
        assert_eq!(
            continued.before[metric], 0.0,
            "{metric}: {:?}",
            continued.before
        );
    }
    // Negative control: the bare base as the reference (what disabling the adapter would
    // give) sees the adapter's 2 SFT steps as rewards.
    let against_base = dpo(Some(fixture_path("tiny-smolvlm")));
    assert_ne!(against_base.before["rewards/chosen"], 0.0);
}
