//! Layer-wise gradient checkpointing computes what the plain run computes: the loss and every
//! trainable gradient of one optimizer step agree within 1e-6 (relative to the tensor's
//! largest gradient) for SFT and DPO (plain and shared-prefix layouts), with LoRA dropout on,
//! for LoRA on the text model, LoRA on every Linear (vision encoder segments too), DoRA on
//! NF4-quantised projections (QLoRA) and a full fine-tune; and a tape whose recomputation draws other dropout masks does not (the negative
//! control showing that the comparison can fail).

mod common;

use std::sync::Arc;

use common::{fixture_path, AB};
use vlmtune_data::collate::{CollatorConfig, SftCollator};
use vlmtune_data::dataset::jsonl;
use vlmtune_data::loader::BatchEncoder;
use vlmtune_data::preference::PreferenceCollator;
use vlmtune_data::{DatasetFormat, Processor};
use vlmtune_model::{load_dir_with, LayerTape, LoadOptions, SmolVlm, Trainable};
use vlmtune_peft::{add_adapter, InitLoraWeights, LoraPreset};
use vlmtune_quant::QuantConfig;
use vlmtune_train::dpo::DpoConfig;
use vlmtune_train::optim::TensorMap;
use vlmtune_train::{DpoTrainer, SftTrainer, TrainingArgs};

type Inner = burn::backend::Flex;

/// What a model is trained with.
#[derive(Clone, Copy, Debug)]
enum Setup {
    /// LoRA r4 on the text attention, dropout 0.1.
    TextLora,
    /// LoRA r4 on every Linear (vision encoder included), dropout 0.1.
    AllLora,
    /// DoRA r4 on the text attention over NF4 + double-quantised text projections (QLoRA),
    /// dropout 0.1.
    QDora,
    /// Every base weight.
    Full,
}

fn model(setup: Setup) -> SmolVlm<AB> {
    let options = LoadOptions {
        quant: matches!(setup, Setup::QDora).then(QuantConfig::nf4),
    };
    let mut model =
        load_dir_with::<AB>(&fixture_path("tiny-smolvlm"), &options, &Default::default()).unwrap();
    let preset = match setup {
        Setup::TextLora | Setup::QDora => LoraPreset::TextAttention,
        Setup::AllLora => LoraPreset::AllLinear,
        Setup::Full => return model.with_trainable(Trainable::all()),
    };
    let mut lora = preset.config(4, 8.0);
    lora.lora_dropout = 0.1;
    lora.use_dora = matches!(setup, Setup::QDora);
    // B random too, so that every adapter matrix has a gradient in the first step.
    lora.init_lora_weights = InitLoraWeights::Bool(false);
    add_adapter(&mut model, "default", &lora, 3).unwrap();
    model
}

fn args(checkpointing: bool, every: usize, dir: &std::path::Path) -> TrainingArgs {
    TrainingArgs {
        output_dir: dir.to_path_buf(),
        per_device_train_batch_size: 2,
        gradient_checkpointing: checkpointing,
        checkpoint_every: every,
        progress_bar: false,
        seed: 5,
        ..TrainingArgs::default()
    }
}

fn processor() -> Processor {
    Processor::from_dir(&fixture_path("tiny-smolvlm")).unwrap()
}

/// How a run is checkpointed.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Plain,
    Every(usize),
    BrokenSeeding,
}

/// One optimizer step's loss and gradients of `batch` under `trainer`, checkpointed as
/// `mode` says; checks that a checkpointing tape recorded segments and was consumed.
fn step<O>(
    trainer: &mut vlmtune_train::Trainer<AB, O>,
    batch: vlmtune_train::trainer::BatchOf<AB, O>,
    mode: Mode,
) -> (f64, TensorMap<Inner>)
where
    O: vlmtune_train::trainer::Objective<AB>,
{
    let tape = match mode {
        Mode::Plain => None,
        Mode::Every(n) => Some(LayerTape::new(n)),
        Mode::BrokenSeeding => Some(LayerTape::with_broken_seeding(1)),
    };
    trainer.tape = tape.clone();
    let out = trainer.step_gradients(&[batch]).unwrap();
    if let Some(tape) = tape {
        assert!(
            tape.segments_recorded() > 0,
            "checkpointing recorded no segment"
        );
        assert!(tape.is_empty(), "the backward consumes the tape");
    }
    (out.loss, out.grads)
}

fn sft_step(setup: Setup, mode: Mode) -> (f64, TensorMap<Inner>) {
    sft_step_in(setup, mode, false)
}

/// [`sft_step`], in bf16 (TRL's `bf16=True`: autocast products, f32 weights) when `bf16`.
fn sft_step_in(setup: Setup, mode: Mode, bf16: bool) -> (f64, TensorMap<Inner>) {
    let tmp = tempfile::tempdir().unwrap();
    let every = match mode {
        Mode::Every(n) => n,
        _ => 1,
    };
    let examples =
        jsonl::load_sft(&fixture_path("sft/data.jsonl"), &DatasetFormat::default()).unwrap();
    let collator = Arc::new(SftCollator::new(processor(), CollatorConfig::default()));
    let mut trainer = SftTrainer::new(
        model(setup),
        TrainingArgs {
            bf16,
            ..args(mode != Mode::Plain, every, tmp.path())
        },
        collator.clone(),
        examples.clone(),
        Default::default(),
    )
    .unwrap();
    let indexed: Vec<(usize, &_)> = examples.iter().take(2).enumerate().collect();
    let batch = collator.encode_batch(&indexed).unwrap();
    assert!(batch.pixels.is_some(), "the batch carries images");
    step(&mut trainer, batch, mode)
}

fn dpo_step(shared_prefix: bool, mode: Mode) -> (f64, TensorMap<Inner>) {
    let tmp = tempfile::tempdir().unwrap();
    let pairs =
        jsonl::load_preference(&fixture_path("dpo/data.jsonl"), &DatasetFormat::default()).unwrap();
    let collator = Arc::new(PreferenceCollator {
        sft: SftCollator::new(processor(), CollatorConfig::default()),
    });
    let config = DpoConfig {
        shared_prefix,
        ..DpoConfig::default()
    };
    let mut trainer = DpoTrainer::new(
        model(Setup::TextLora),
        args(mode != Mode::Plain, 1, tmp.path()),
        config,
        collator.clone(),
        pairs.clone(),
        Default::default(),
    )
    .unwrap();
    let indexed: Vec<(usize, &_)> = pairs.iter().take(2).enumerate().collect();
    let batch = collator.encode_batch(&indexed).unwrap();
    step(&mut trainer, batch, mode)
}

fn host(t: &burn::tensor::Tensor<Inner, 1>) -> Vec<f32> {
    t.to_data().to_vec::<f32>().unwrap()
}

/// The largest difference between the two runs, relative to each tensor's largest gradient
/// (and the loss's relative difference); panics when they do not cover the same parameters.
fn worst_relative_error(a: &(f64, TensorMap<Inner>), b: &(f64, TensorMap<Inner>)) -> (f64, String) {
    assert_eq!(
        a.1.keys().collect::<Vec<_>>(),
        b.1.keys().collect::<Vec<_>>(),
        "both runs give gradients for the same parameters"
    );
    assert!(!a.1.is_empty());
    let mut worst = ((a.0 - b.0).abs() / a.0.abs().max(1e-12), "loss".to_string());
    for (path, ga) in &a.1 {
        let (x, y) = (host(ga), host(&b.1[path]));
        let scale = x.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-20);
        let diff = x
            .iter()
            .zip(&y)
            .fold(0.0f32, |m, (p, q)| m.max((p - q).abs()));
        let rel = f64::from(diff / scale);
        if rel > worst.0 {
            worst = (rel, path.clone());
        }
    }
    worst
}

fn assert_same(
    setup: &str,
    plain: &(f64, TensorMap<Inner>),
    checkpointed: &(f64, TensorMap<Inner>),
) {
    let (err, path) = worst_relative_error(plain, checkpointed);
    eprintln!(
        "{setup}: loss {:.6}, worst relative error {err:.2e} at {path}",
        plain.0
    );
    assert!(err <= 1e-6, "{setup}: {path} differs by {err:.2e} relative");
}

#[test]
fn sft_lora_with_dropout_matches_the_plain_run() {
    let plain = sft_step(Setup::TextLora, Mode::Plain);
    assert_same(
        "sft text LoRA, every 1",
        &plain,
        &sft_step(Setup::TextLora, Mode::Every(1)),
    );
    assert_same(
        "sft text LoRA, every 2",
        &plain,
        &sft_step(Setup::TextLora, Mode::Every(2)),
    );
}

#[test]
fn sft_lora_on_the_vision_encoder_too_matches_the_plain_run() {
    let plain = sft_step(Setup::AllLora, Mode::Plain);
    assert!(plain.1.keys().any(|p| p.starts_with("model.vision_model.")));
    assert_same(
        "sft all-linear LoRA",
        &plain,
        &sft_step(Setup::AllLora, Mode::Every(1)),
    );
}

#[test]
fn sft_qlora_dora_matches_the_plain_run() {
    let plain = sft_step(Setup::QDora, Mode::Plain);
    assert!(plain.1.keys().any(|p| p.ends_with("magnitude")));
    assert_same(
        "sft DoRA on NF4",
        &plain,
        &sft_step(Setup::QDora, Mode::Every(1)),
    );
}

#[test]
fn sft_full_fine_tune_matches_the_plain_run() {
    let plain = sft_step(Setup::Full, Mode::Plain);
    assert!(plain.1.contains_key("model.text_model.embed_tokens.weight"));
    assert_same("sft full", &plain, &sft_step(Setup::Full, Mode::Every(1)));
}

/// bf16 with checkpointing: the recomputation runs under the same autocast, so the step is
/// the plain bf16 step's (QLoRA's recomputing quantised backward and full fine-tuning), and
/// differs from the f32 step by bf16's rounding.
#[test]
fn bf16_with_checkpointing_matches_the_plain_bf16_run() {
    for (name, setup) in [("DoRA on NF4", Setup::QDora), ("full", Setup::Full)] {
        let plain = sft_step_in(setup, Mode::Plain, true);
        let name = format!("sft {name}, bf16");
        assert_same(&name, &plain, &sft_step_in(setup, Mode::Every(1), true));
        let (err, path) = worst_relative_error(&plain, &sft_step(setup, Mode::Plain));
        eprintln!("{name}: bf16 against f32, worst relative error {err:.2e} at {path}");
        assert!(
            err >= 1e-4,
            "{name}: the bf16 step is the f32 one ({err:.2e})"
        );
    }
}

#[test]
fn dpo_matches_the_plain_run_in_both_layouts() {
    for shared in [false, true] {
        let plain = dpo_step(shared, Mode::Plain);
        let name = format!("dpo, shared prefix {shared}");
        assert_same(&name, &plain, &dpo_step(shared, Mode::Every(1)));
    }
}

#[test]
fn recomputing_with_other_dropout_masks_is_caught() {
    let plain = sft_step(Setup::TextLora, Mode::Plain);
    let broken = sft_step(Setup::TextLora, Mode::BrokenSeeding);
    let (err, path) = worst_relative_error(&plain, &broken);
    eprintln!("broken seeding: worst relative error {err:.2e} at {path}");
    assert!(
        err > 1e-3,
        "other masks in the recomputation went unnoticed ({err:.2e})"
    );
    // Same forward masks, so the loss itself agrees: only the gradients show it.
    assert!((plain.0 - broken.0).abs() <= 1e-6 * plain.0.abs());
}
