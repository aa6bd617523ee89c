//! Steps that overflow are not applied and stop the run after `max_nonfinite_steps` in a row
//! with a checkpoint of the last good weights; a checkpoint that cannot be written is an error
//! naming it, and the earlier checkpoints stay usable.

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use common::{fixture_path, one_step_args, AB};
use vlmtune_data::dataset::jsonl;
use vlmtune_data::{CollatorConfig, DatasetFormat, Processor, SftCollator, TrainBatch};
use vlmtune_model::{load_dir, SmolVlm};
use vlmtune_peft::load_adapter;
use vlmtune_train::checkpoint::{list_checkpoints, read_named, OPTIMIZER_FILE, TRAINABLE_FILE};
use vlmtune_train::memory_plan::StepShape;
use vlmtune_train::trainer::Accumulation;
use vlmtune_train::{
    Objective, ObjectiveOutput, Result, SftObjective, SftTrainer, TrainError, Trainer, TrainingArgs,
};

/// SFT whose loss overflows for chosen dataset examples: `inf` outright, or a finite loss
/// whose gradients are scaled by 1e30 (their squared norm overflows f32).
struct Poisoned {
    inner: SftObjective<AB>,
    infinite_loss: HashSet<usize>,
    huge_gradient: HashSet<usize>,
    /// Batches of more rows run out of device memory (cubecl's panic).
    out_of_memory_above_rows: usize,
}

impl Objective<AB> for Poisoned {
    type Example = vlmtune_data::SftExample;
    type Encoder = SftCollator;

    fn items(&self, batch: &TrainBatch) -> usize {
        self.inner.items(batch)
    }
    fn tokens(&self, batch: &TrainBatch) -> usize {
        self.inner.tokens(batch)
    }
    fn step_shape(&self, batch: &TrainBatch) -> StepShape {
        self.inner.step_shape(batch)
    }
    fn loss(
        &mut self,
        model: &SmolVlm<AB>,
        batch: &TrainBatch,
        accumulation: Accumulation,
    ) -> Result<Option<ObjectiveOutput<AB>>> {
        if batch.indices.len() > self.out_of_memory_above_rows {
            panic!("can't allocate buffer of size: 123456789 (BufferTooBig)");
        }
        let hit = |set: &HashSet<usize>| batch.indices.iter().any(|i| set.contains(i));
        Ok(self.inner.loss(model, batch, accumulation)?.map(|mut out| {
            if hit(&self.infinite_loss) {
                out.loss = out.loss.mul_scalar(f32::INFINITY);
            } else if hit(&self.huge_gradient) {
                let scaled = out.loss.clone().mul_scalar(1e30);
                out.loss = out.loss + scaled.clone() - scaled.detach();
            }
            out
        }))
    }
}

fn trainer(
    args: TrainingArgs,
    infinite_loss: &[usize],
    huge_gradient: &[usize],
) -> Trainer<AB, Poisoned> {
    let mut model = load_dir::<AB>(&fixture_path("tiny-smolvlm"), &Default::default()).unwrap();
    let config = load_adapter(&mut model, &fixture_path("sft/initial-adapter"), "default").unwrap();
    let collator = Arc::new(SftCollator::new(
        Processor::from_dir(&fixture_path("tiny-smolvlm")).unwrap(),
        CollatorConfig::default(),
    ));
    let data = jsonl::load_sft(&fixture_path("sft/data.jsonl"), &DatasetFormat::default()).unwrap();
    let sft = SftTrainer::new(
        model,
        args.clone(),
        collator,
        data.clone(),
        Default::default(),
    )
    .unwrap();
    Trainer::with_objective(
        sft.model,
        args,
        Poisoned {
            inner: sft.objective,
            infinite_loss: infinite_loss.iter().copied().collect(),
            huge_gradient: huge_gradient.iter().copied().collect(),
            out_of_memory_above_rows: usize::MAX,
        },
        sft.encoder,
        data,
        Default::default(),
    )
    .unwrap()
    .with_adapter(config)
}

fn args(dir: &std::path::Path, steps: i64) -> TrainingArgs {
    TrainingArgs {
        max_steps: steps,
        save_steps: steps as usize,
        ..one_step_args(1, 1, dir)
    }
}

fn optimizer_steps(checkpoint: &std::path::Path) -> f32 {
    let state = read_named(&checkpoint.join(OPTIMIZER_FILE)).unwrap();
    state.iter().find(|t| t.name == "step").unwrap().values[0]
}

/// `auto_find_batch_size` on a device whose first step runs out of memory above 2 rows: the
/// trial halves the batch (4 -> 2) and doubles the accumulation, and training is then exactly
/// the run asked for with those sizes (the trial changes nothing).
#[test]
fn an_out_of_memory_at_the_first_step_halves_the_batch_and_keeps_the_effective_batch() {
    let dir = tempfile::tempdir().unwrap();
    let fitted = TrainingArgs {
        auto_find_batch_size: true,
        max_memory: Some("64GiB".into()),
        ..one_step_args(4, 1, dir.path())
    };
    let mut t = trainer(fitted, &[], &[]);
    t.objective.out_of_memory_above_rows = 2;
    t.retry_out_of_memory = true;
    let losses = t.train().unwrap();
    assert_eq!(
        (
            t.args.per_device_train_batch_size,
            t.args.gradient_accumulation_steps
        ),
        (2, 2)
    );
    let plain_dir = tempfile::tempdir().unwrap();
    let mut plain = trainer(one_step_args(2, 2, plain_dir.path()), &[], &[]);
    assert_eq!(losses, plain.train().unwrap());
    assert_eq!(
        vlmtune_peft::io::adapter_tensors(&t.model, "default")[0].values,
        vlmtune_peft::io::adapter_tensors(&plain.model, "default")[0].values
    );

    // Not even one row fits: an error naming the setting, not a crash.
    let none_fit_dir = tempfile::tempdir().unwrap();
    let mut t = trainer(
        TrainingArgs {
            auto_find_batch_size: true,
            max_memory: Some("64GiB".into()),
            ..one_step_args(2, 1, none_fit_dir.path())
        },
        &[],
        &[],
    );
    t.objective.out_of_memory_above_rows = 0;
    t.retry_out_of_memory = true;
    let err = t.train().unwrap_err().to_string();
    assert!(
        err.contains("per_device_train_batch_size") && err.contains("batch of 1"),
        "{err}"
    );
}

#[test]
fn an_overflowing_micro_batch_is_not_applied() {
    for (infinite_loss, huge_gradient) in [(vec![1], vec![]), (vec![], vec![1])] {
        let dir = tempfile::tempdir().unwrap();
        let mut t = trainer(args(dir.path(), 3), &infinite_loss, &huge_gradient);
        let losses = t
            .train()
            .expect("one bad step of three does not stop the run");
        assert_eq!(losses.len(), 3);
        let bad: Vec<usize> = (0..3).filter(|i| !losses[*i].is_finite()).collect();
        if infinite_loss.is_empty() {
            // The loss itself was finite: it is still left out of the step.
            assert!(bad.is_empty(), "{losses:?}");
        } else {
            assert_eq!(bad.len(), 1, "{losses:?}");
        }
        let (_, checkpoint) = list_checkpoints(dir.path()).unwrap().pop().unwrap();
        assert_eq!(
            optimizer_steps(&checkpoint),
            2.0,
            "the optimizer skipped one step"
        );
        let logged_losses = t
            .state
            .log_history
            .iter()
            .filter(|r| r["loss"].is_null())
            .count();
        assert_eq!(logged_losses, 1, "the skipped step logs no loss");
    }
}

#[test]
fn with_accumulation_the_other_micro_batches_still_step() {
    let dir = tempfile::tempdir().unwrap();
    for (infinite_loss, huge_gradient) in [(vec![1], vec![]), (vec![], vec![1])] {
        let args = TrainingArgs {
            gradient_accumulation_steps: 3,
            ..args(dir.path(), 1)
        };
        let mut t = trainer(args, &infinite_loss, &huge_gradient);
        let losses = t.train().unwrap();
        assert!(losses[0].is_finite(), "{losses:?}");
        let (_, checkpoint) = list_checkpoints(dir.path()).unwrap().pop().unwrap();
        assert_eq!(
            optimizer_steps(&checkpoint),
            1.0,
            "two of three micro-batches applied"
        );
    }
}

#[test]
fn too_many_nonfinite_steps_in_a_row_stop_with_the_last_good_weights() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = args(dir.path(), 3);
    args.max_nonfinite_steps = 2;
    let mut t = trainer(args, &[0, 1, 2], &[]);
    let initial = vlmtune_peft::param_values::<AB, _>(&t.model, |p| p.contains("lora_"));
    let err = t.train().unwrap_err();
    let TrainError::NonFinite {
        steps,
        step,
        checkpoint,
    } = &err
    else {
        panic!("{err}");
    };
    assert_eq!((*steps, *step), (2, 2));
    assert!(err.to_string().contains("max_nonfinite_steps"), "{err}");
    assert_eq!(optimizer_steps(checkpoint), 0.0);
    let saved = read_named(&checkpoint.join(TRAINABLE_FILE)).unwrap();
    assert_eq!(saved.len(), initial.len());
    for tensor in &saved {
        let before = initial.iter().find(|t| t.name == tensor.name).unwrap();
        assert_eq!(before.values, tensor.values, "{}", tensor.name);
    }
}

#[test]
fn an_unwritable_checkpoint_is_an_error_naming_it_and_earlier_ones_survive() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = trainer(
        TrainingArgs {
            save_steps: 1,
            ..args(dir.path(), 3)
        },
        &[],
        &[],
    );
    // Something in the way of checkpoint-2 (a file, which no folder can replace): the write
    // fails after every file of it was written, even for root, whom permissions do not stop.
    std::fs::write(dir.path().join("checkpoint-2"), b"in the way").unwrap();
    let err = t.train().unwrap_err().to_string();
    let wanted = format!("checkpoint {}", dir.path().join("checkpoint-2").display());
    assert!(err.starts_with(&wanted), "{err}");
    assert!(err.contains("could not be written"), "{err}");
    let checkpoints = list_checkpoints(dir.path()).unwrap();
    assert_eq!(checkpoints.len(), 1);
    assert_eq!(checkpoints[0].0, 1);
    assert!(
        std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .all(|e| !e.file_name().to_string_lossy().contains(".tmp-")),
        "no half-written folder is left"
    );
    // The earlier checkpoint still resumes.
    let mut resumed = trainer(args(dir.path(), 1), &[], &[]);
    resumed.resume(&checkpoints[0].1).unwrap();
    assert_eq!(resumed.state.global_step, 1);

    // A read-only output folder (permissions do not bind root, so only checked for others).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let ro = tempfile::tempdir().unwrap();
        std::fs::set_permissions(ro.path(), std::fs::Permissions::from_mode(0o555)).unwrap();
        let probe = ro.path().join("probe");
        if std::fs::write(&probe, b"").is_err() {
            let mut t = trainer(
                TrainingArgs {
                    save_steps: 1,
                    ..args(&ro.path().join("run"), 1)
                },
                &[],
                &[],
            );
            let err = t.train().unwrap_err().to_string();
            assert!(err.contains(&ro.path().display().to_string()), "{err}");
        } else {
            eprintln!("running as root: the read-only folder case is not checked");
        }
        std::fs::set_permissions(ro.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}
