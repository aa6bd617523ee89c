//! 8-bit AdamW against bitsandbytes 0.50.2 on the CPU (`scripts/reference/adamw8bit_fixtures.py`):
//! blockwise quantisation of both dynamic maps bit for bit, 5 `AdamW8bit` steps within 1e-6,
//! exact resume, and training runs whose loss tracks the f32-state run.

mod common;

use std::collections::BTreeMap;

use burn::module::Param;
use burn::tensor::{Tensor, TensorData};
use common::{fixture_path, Fixture, AB};
use vlmtune_quant::bnb::{dequantize_blockwise_8bit_into, quantize_blockwise_8bit_into, Code8};
use vlmtune_train::optim8bit::AdamW8bit;

#[test]
fn blockwise_quantisation_matches_bitsandbytes_bit_for_bit() {
    let fx = Fixture::open("optim/adamw8bit.safetensors");
    for (name, code) in [("signed", Code8::Signed), ("unsigned", Code8::Unsigned)] {
        let input = fx.f32(&format!("quant.{name}.input")).0;
        let mut codes = vec![0u8; input.len()];
        let mut absmax = vec![0.0f32; input.len().div_ceil(256)];
        quantize_blockwise_8bit_into(&input, code, 256, &mut codes, &mut absmax);
        let want: Vec<u8> = fx
            .f32(&format!("quant.{name}.codes"))
            .0
            .iter()
            .map(|c| *c as u8)
            .collect();
        assert_eq!(codes, want, "{name} codes");
        assert_eq!(
            absmax,
            fx.f32(&format!("quant.{name}.absmax")).0,
            "{name} absmax"
        );
        let mut back = vec![0.0f32; input.len()];
        dequantize_blockwise_8bit_into(&codes, &absmax, code, 256, &mut back);
        assert_eq!(
            back,
            fx.f32(&format!("quant.{name}.dequant")).0,
            "{name} dequantised"
        );
    }
}

#[derive(burn::module::Module, Debug)]
struct Pair<B: burn::tensor::backend::Backend> {
    big: Param<Tensor<B, 1>>,
    small: Param<Tensor<B, 1>>,
}

fn tensor(values: Vec<f32>) -> Tensor<AB, 1> {
    let n = values.len();
    Tensor::from_data(TensorData::new(values, [n]), &Default::default())
}

fn inner(values: Vec<f32>) -> Tensor<common::B, 1> {
    let n = values.len();
    Tensor::from_data(TensorData::new(values, [n]), &Default::default())
}

#[test]
fn five_steps_match_bitsandbytes_adamw8bit() {
    let fx = Fixture::open("optim/adamw8bit.safetensors");
    let param = |k: &str| {
        Param::from_tensor(tensor(fx.f32(&format!("adam.{k}.init")).0)).set_require_grad(true)
    };
    let mut model = Pair {
        big: param("big"),
        small: param("small"),
    };
    let mut opt = AdamW8bit::new(0.9, 0.999, 1e-8, 0.01);
    let mut worst = 0.0f32;
    for step in 1..=5 {
        let mut grads = BTreeMap::new();
        for k in ["big", "small"] {
            grads.insert(
                k.to_string(),
                inner(fx.f32(&format!("adam.{k}.grad{step}")).0),
            );
        }
        model = opt.update::<AB, _>(model, grads, 1e-3).unwrap();
        for (k, got) in [("big", &model.big), ("small", &model.small)] {
            let got = got.val().into_data().to_vec::<f32>().unwrap();
            let want = fx.f32(&format!("adam.{k}.param{step}")).0;
            for (a, b) in got.iter().zip(&want) {
                worst = worst.max((a - b).abs());
            }
        }
    }
    eprintln!("5 AdamW8bit steps: max abs parameter error {worst:e}");
    assert!(worst <= 1e-6, "max abs error {worst:e}");
    // The stored 8-bit states are bitsandbytes' own.
    let state: BTreeMap<String, Vec<f32>> = opt
        .state_tensors()
        .into_iter()
        .map(|t| (t.name, t.values))
        .collect();
    for key in ["state1", "absmax1", "state2", "absmax2"] {
        assert_eq!(
            state[&format!("{key}.big")],
            fx.f32(&format!("adam.big.{key}")).0,
            "{key}"
        );
    }
    assert!(
        state.contains_key("exp_avg.small"),
        "under min_8bit_size: f32 moments"
    );
}

#[test]
fn resuming_the_8bit_state_continues_exactly() {
    let fx = Fixture::open("optim/adamw8bit.safetensors");
    let make = || Pair {
        big: Param::from_tensor(tensor(fx.f32("adam.big.init").0)).set_require_grad(true),
        small: Param::from_tensor(tensor(fx.f32("adam.small.init").0)).set_require_grad(true),
    };
    let grads = |step: usize| {
        let mut g = BTreeMap::new();
        for k in ["big", "small"] {
            g.insert(
                k.to_string(),
                inner(fx.f32(&format!("adam.{k}.grad{step}")).0),
            );
        }
        g
    };
    let mut straight = AdamW8bit::new(0.9, 0.999, 1e-8, 0.01);
    let mut a = make();
    for step in 1..=4 {
        a = straight.update::<AB, _>(a, grads(step), 1e-3).unwrap();
    }
    let mut first = AdamW8bit::new(0.9, 0.999, 1e-8, 0.01);
    let mut b = make();
    for step in 1..=2 {
        b = first.update::<AB, _>(b, grads(step), 1e-3).unwrap();
    }
    let mut resumed = AdamW8bit::new(0.9, 0.999, 1e-8, 0.01);
    resumed.load_state(first.state_tensors()).unwrap();
    for step in 3..=4 {
        b = resumed.update::<AB, _>(b, grads(step), 1e-3).unwrap();
    }
    assert_eq!(
        a.big.val().into_data().to_vec::<f32>().unwrap(),
        b.big.val().into_data().to_vec::<f32>().unwrap()
    );
    assert_eq!(straight.state_tensors(), resumed.state_tensors());
}

/// 30 steps of the tiny model: the 8-bit run's loss stays within 2% of the starting loss of
/// the f32-state run at every step.
#[test]
fn training_with_8bit_states_tracks_the_f32_run() {
    use vlmtune::jobs::sft::{run_sft, LoraSection, SftJobConfig};
    let run = |optim: &str, lora: bool| {
        let dir = tempfile::tempdir().unwrap();
        let mut c = SftJobConfig::default();
        c.model.name = fixture_path("tiny-smolvlm").display().to_string();
        c.dataset.source = fixture_path("sft/data.jsonl").display().to_string();
        if lora {
            c.lora = Some(LoraSection {
                preset: Some(vlmtune_peft::LoraPreset::AllLinear),
                config: vlmtune_peft::LoraPreset::AllLinear.config(64, 64.0),
                ..LoraSection::default()
            });
        }
        c.training.output_dir = dir.path().to_path_buf();
        c.training.max_steps = 30;
        c.training.per_device_train_batch_size = 1;
        c.training.learning_rate = if lora { 5e-3 } else { 1e-3 };
        c.training.save_steps = 0;
        c.training.progress_bar = false;
        c.training.optim = optim.into();
        run_sft::<AB>(&c, Default::default()).unwrap().losses
    };
    for lora in [true, false] {
        let f32_run = run("adamw_torch", lora);
        let run_8bit = run("adamw_8bit", lora);
        let tolerance = 0.02 * f32_run[0];
        let worst = f32_run
            .iter()
            .zip(&run_8bit)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        eprintln!(
            "lora {lora}: loss {:.4} -> {:.4} (f32) vs {:.4} (8-bit); worst gap {:.2}% of the start",
            f32_run[0],
            f32_run[29],
            run_8bit[29],
            100.0 * worst / f32_run[0]
        );
        assert!(
            worst <= tolerance,
            "lora {lora}: worst {worst} > {tolerance}\n{f32_run:?}\n{run_8bit:?}"
        );
        assert!(f32_run[29] < f32_run[0] * 0.9, "it learns: {f32_run:?}");
    }
}

/// Kill + resume == uninterrupted, with 8-bit states in the checkpoint.
#[test]
fn a_run_with_8bit_states_resumes_exactly() {
    use std::sync::Arc;
    use vlmtune_data::{dataset::jsonl, CollatorConfig, DatasetFormat, Processor, SftCollator};
    use vlmtune_train::{SftTrainer, TrainingArgs};
    let dir = tempfile::tempdir().unwrap();
    let trainer = |out: &std::path::Path| {
        let mut model =
            vlmtune_model::load_dir::<AB>(&fixture_path("tiny-smolvlm"), &Default::default())
                .unwrap();
        let config = vlmtune_peft::LoraPreset::AllLinear.config(64, 64.0);
        vlmtune_peft::add_adapter(&mut model, "default", &config, 0).unwrap();
        let collator = SftCollator::new(
            Processor::from_dir(&fixture_path("tiny-smolvlm")).unwrap(),
            CollatorConfig::default(),
        );
        let data =
            jsonl::load_sft(&fixture_path("sft/data.jsonl"), &DatasetFormat::default()).unwrap();
        let args = TrainingArgs {
            output_dir: out.to_path_buf(),
            max_steps: 6,
            per_device_train_batch_size: 1,
            learning_rate: 5e-3,
            save_steps: 3,
            progress_bar: false,
            optim: "adamw_8bit".into(),
            ..TrainingArgs::default()
        };
        SftTrainer::new(model, args, Arc::new(collator), data, Default::default())
            .unwrap()
            .with_adapter(config)
    };
    let whole = trainer(&dir.path().join("whole")).train().unwrap();
    let run = dir.path().join("run");
    let mut first = trainer(&run);
    first.stop_after = Some(3);
    let head = first.train().unwrap();
    drop(first);
    let mut second = trainer(&run);
    second.args.resume_from_checkpoint = Some("latest".into());
    let tail = second.train().unwrap();
    assert_eq!([head, tail].concat(), whole);
    let state =
        vlmtune_train::checkpoint::read_named(&run.join("checkpoint-3/optimizer.safetensors"))
            .unwrap();
    assert!(
        state.iter().any(|t| t.name.starts_with("state1.")),
        "8-bit codes saved"
    );
}
