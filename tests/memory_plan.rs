//! The memory plan against measured peak memory: three configurations of a cut-down
//! SmolVLM-256M (4 text layers, 2 vision layers, two 512x512 tiles per row, batch 2) each run
//! two SFT steps in a child process of their own (so that the peak RSS is theirs alone), and
//! the estimate must be within 25% of the measured peak: LoRA on the text attention without
//! and with gradient checkpointing, and a full fine-tune of the text model.

mod common;

use std::process::Command;

use vlmtune_model::{Preset, SmolVlm, TokenBatch, Trainable, VlmConfig};
use vlmtune_peft::{add_adapter, LoraPreset};
use vlmtune_quant::{RandomInit, Weights};
use vlmtune_train::memory_plan::{plan_model, StepShape};
use vlmtune_train::optim::{clip_grad_norm, loss_grads, AdamW};
use vlmtune_train::sft::batch_loss;

type AB = common::AB;

const CHILD: &str = "VLMTUNE_MEMORY_PLAN_CHILD";
const TEST: &str = "estimates_are_within_25_percent_of_the_measured_peak";
const TILES: usize = 2;
const BATCH: usize = 2;
const LABELLED: usize = 16;

fn config() -> VlmConfig {
    let mut config = Preset::SmolVlm256M.config();
    config.text_config.num_hidden_layers = 4;
    config.vision_config.num_hidden_layers = 2;
    config
}

fn prompt(image_seq_len: usize) -> Vec<u32> {
    let mut ids = vec![1, 11126, 42];
    for _ in 0..TILES {
        ids.extend([49189, 49152]);
        ids.extend(std::iter::repeat_n(49190, image_seq_len));
    }
    ids.push(49189);
    ids.extend((0..200).map(|i| 100 + i));
    ids.extend([49279, 198, 9519, 42]);
    ids
}

fn peak_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

/// Two SFT steps of `name`'s configuration; prints `estimate=<bytes> measured=<bytes>`.
fn run_child(name: &str) {
    let device = Default::default();
    let config = config();
    let mut model =
        SmolVlm::<AB>::load(&Weights::new(&RandomInit::new(0), &device), &config).unwrap();
    match name {
        "lora" | "lora-gc" => {
            add_adapter(
                &mut model,
                "default",
                &LoraPreset::TextAttention.config(8, 16.0),
                0,
            )
            .unwrap();
        }
        "full-text" => {
            model = model.with_trainable(Trainable {
                text: true,
                ..Trainable::default()
            })
        }
        other => panic!("unknown configuration {other}"),
    }
    let checkpointing = name.ends_with("-gc");
    let ids = prompt(config.image_seq_len());
    let seq_len = ids.len();
    let rows: Vec<Vec<u32>> = vec![ids; BATCH];
    let tokens = TokenBatch::from_rows(&rows).unwrap();
    let mut labels = vec![-100i64; BATCH * seq_len];
    for r in 0..BATCH {
        for i in seq_len - LABELLED..seq_len {
            labels[r * seq_len + i] = i64::from(rows[r][i]);
        }
    }
    let size = config.vision_config.image_size;
    let tile: Vec<f32> = (0..3 * size * size)
        .map(|i| (i % 255) as f32 / 127.5 - 1.0)
        .collect();
    let pixels = vlmtune_model::PixelBatch {
        pixel_values: (0..BATCH * TILES)
            .flat_map(|_| tile.iter().copied())
            .collect(),
        shape: [BATCH, TILES, 3, size, size],
        pixel_attention_mask: None,
    };
    let shape = StepShape {
        batch_size: BATCH,
        seq_len,
        tiles: TILES,
        labelled: LABELLED,
    };
    let plan = plan_model(&model, shape, checkpointing, 1, false);
    let mut optimizer = AdamW::new(0.9, 0.999, 1e-8, 0.0);
    for _ in 0..2 {
        let tape = checkpointing.then(|| vlmtune_model::LayerTape::<AB>::new(1));
        let loss = {
            let _recording = tape.as_ref().map(|t| t.activate());
            let features = model
                .encode_images_for_training(&pixels)
                .unwrap()
                .map(|f| f.features);
            batch_loss(&model, &tokens, features, &labels, BATCH * LABELLED)
                .unwrap()
                .unwrap()
                .loss
        };
        let mut grads = loss_grads(&model, loss, tape.as_deref());
        clip_grad_norm(&mut grads, 1.0).unwrap();
        model = optimizer.update::<AB, _>(model.clone(), grads, 1e-4);
    }
    println!("{plan}");
    println!("estimate={} measured={}", plan.total(), peak_rss_bytes());
}

#[test]
fn estimates_are_within_25_percent_of_the_measured_peak() {
    if let Ok(name) = std::env::var(CHILD) {
        run_child(&name);
        return;
    }
    for name in ["lora", "lora-gc", "full-text"] {
        let out = Command::new(std::env::current_exe().unwrap())
            .args([TEST, "--exact", "--nocapture", "--test-threads", "1"])
            .env(CHILD, name)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{name}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let field = |key: &str| -> f64 {
            let line = stdout.lines().find(|l| l.starts_with("estimate=")).unwrap();
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .unwrap()
                .parse()
                .unwrap()
        };
        let (estimate, measured) = (field("estimate="), field("measured="));
        let error = estimate / measured - 1.0;
        eprintln!(
            "{name}: estimate {:.0} MiB, measured {:.0} MiB ({:+.1}%)",
            estimate / 1048576.0,
            measured / 1048576.0,
            100.0 * error
        );
        assert!(
            error.abs() <= 0.25,
            "{name}: estimate off by {:+.1}%",
            100.0 * error
        );
    }
}

#[test]
fn auto_find_batch_size_keeps_the_effective_batch_within_the_budget() {
    use std::sync::Arc;
    use vlmtune_data::collate::{CollatorConfig, SftCollator};
    use vlmtune_data::{DatasetFormat, Processor};
    use vlmtune_train::{SftTrainer, TrainingArgs};

    let examples = vlmtune_data::dataset::jsonl::load_sft(
        &common::fixture_path("sft/data.jsonl"),
        &DatasetFormat::default(),
    )
    .unwrap();
    let collator = Arc::new(SftCollator::new(
        Processor::from_dir(&common::fixture_path("tiny-smolvlm")).unwrap(),
        CollatorConfig::default(),
    ));
    let tmp = tempfile::tempdir().unwrap();
    let build = |max_memory: Option<String>| {
        let model = vlmtune_model::load_dir::<AB>(
            &common::fixture_path("tiny-smolvlm"),
            &Default::default(),
        )
        .unwrap()
        .with_trainable(Trainable::all());
        let args = TrainingArgs {
            output_dir: tmp.path().to_path_buf(),
            per_device_train_batch_size: 4,
            gradient_accumulation_steps: 1,
            max_steps: 1,
            save_steps: 0,
            progress_bar: false,
            auto_find_batch_size: true,
            max_memory,
            ..TrainingArgs::default()
        };
        SftTrainer::new(
            model,
            args,
            collator.clone(),
            examples.clone(),
            Default::default(),
        )
        .unwrap()
    };
    let probe = build(None);
    let (two, four) = (
        probe.memory_plan(2).unwrap().total(),
        probe.memory_plan(4).unwrap().total(),
    );
    assert!(two < four, "a bigger batch needs more: {two} vs {four}");
    // Room for 2 rows (and 3), not 4: 2 rows x 2 micro-batches keeps the effective batch.
    let mut trainer = build(Some(format!("{}", (two + four) / 2)));
    trainer.train().unwrap();
    assert_eq!(
        (
            trainer.args.per_device_train_batch_size,
            trainer.args.gradient_accumulation_steps
        ),
        (2, 2)
    );
    // Not even one row fits: an error naming the setting.
    let err = build(Some("1MiB".into())).train().unwrap_err().to_string();
    assert!(
        err.contains("max_memory") && err.contains("batch of 1"),
        "{err}"
    );
}
