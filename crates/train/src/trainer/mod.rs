//! The training loop shared by SFT and DPO: batches from the threaded loader, gradient
//! accumulation, clipping, AdamW on a schedule, TRL-named metrics, periodic evaluation,
//! atomic checkpoints and exact resume. What a step computes is an [`Objective`].

mod data_parallel;
mod planning;

use data_parallel::SharedStep;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Tensor;
use serde_json::json;
use vlmtune_data::loader::{batches_per_epoch, epoch_batches, BatchEncoder, LoaderConfig};
use vlmtune_model::{LayerTape, SmolVlm};
use vlmtune_peft::{save_adapter, LoraConfig};
use vlmtune_quant::NamedTensor;

use crate::args::TrainingArgs;
use crate::checkpoint::{self, TrainerState};
use crate::distributed::{Collective, SingleProcess};
use crate::error::{Result, TrainError};
use crate::memory_plan::StepShape;
use crate::metrics::{MetricsLog, Window};
use crate::optim::{accumulate, clip_grad_norm, global_norm, loss_grads, AdamW, TensorMap};
use crate::optim8bit::{AdamW8bit, Optimizer};
use crate::schedule::lr_lambda;

/// The accumulated batch a micro-batch belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Accumulation {
    /// Sum of [`Objective::items`] over the micro-batches of the step.
    pub items: usize,
    /// Micro-batches in the step.
    pub micro_batches: usize,
}

/// A micro-batch's loss (already normalised for the accumulation) and metrics.
pub struct ObjectiveOutput<B: burn::tensor::backend::Backend> {
    /// The loss to differentiate.
    pub loss: Tensor<B, 1>,
    /// Metrics averaged over micro-batches at log time (TRL names).
    pub metrics: Vec<(&'static str, f64)>,
}

/// What a training step computes.
pub trait Objective<AB: AutodiffBackend> {
    /// A dataset example.
    type Example: Send + Sync + 'static;
    /// Turns examples into batches on loader threads.
    type Encoder: BatchEncoder<Self::Example> + 'static;

    /// How much this micro-batch weighs in the accumulated normalisation (SFT: label tokens).
    fn items(&self, batch: &<Self::Encoder as BatchEncoder<Self::Example>>::Batch) -> usize;
    /// Non-padding tokens (for `num_tokens`).
    fn tokens(&self, batch: &<Self::Encoder as BatchEncoder<Self::Example>>::Batch) -> usize;
    /// The shape of a batch as the memory plan sees it (rows the model runs, tokens per row,
    /// tiles per row, labelled tokens per row).
    fn step_shape(
        &self,
        batch: &<Self::Encoder as BatchEncoder<Self::Example>>::Batch,
    ) -> StepShape;
    /// The loss of a micro-batch, `None` when it has nothing to learn from.
    fn loss(
        &mut self,
        model: &SmolVlm<AB>,
        batch: &<Self::Encoder as BatchEncoder<Self::Example>>::Batch,
        accumulation: Accumulation,
    ) -> Result<Option<ObjectiveOutput<AB>>>;
    /// Whether there is a held-out set.
    fn has_eval(&self) -> bool {
        false
    }
    /// The names of the metrics [`Objective::loss`] returns, which data-parallel ranks
    /// average (a metric missing here is an error with more than one rank).
    fn metric_names(&self) -> &'static [&'static str] {
        &[]
    }
    /// Held-out metrics (logged with an `eval_` prefix).
    fn evaluate(&mut self, _model: &SmolVlm<AB::InnerBackend>) -> Result<BTreeMap<String, f64>> {
        Ok(BTreeMap::new())
    }
}

/// A model, an objective and the state of training them.
pub struct Trainer<AB: AutodiffBackend, O: Objective<AB>> {
    /// The model being trained.
    pub model: SmolVlm<AB>,
    /// Settings.
    pub args: TrainingArgs,
    /// What a step computes.
    pub objective: O,
    /// Batches from examples.
    pub encoder: Arc<O::Encoder>,
    /// Training examples.
    pub train_set: Arc<Vec<O::Example>>,
    /// The adapter being trained (`None`: the trainable base weights are saved instead).
    pub adapter: Option<LoraConfig>,
    /// The base checkpoint folder (its tokenizer/processor files are copied into saves).
    pub base_dir: Option<PathBuf>,
    /// Where training stands.
    pub state: TrainerState,
    /// Stop (as if interrupted) after this optimizer step, keeping the schedule of the full
    /// run; used to test and demonstrate resuming.
    pub stop_after: Option<usize>,
    /// A tape to checkpoint with instead of a fresh [`LayerTape`] per micro-batch (tests).
    #[doc(hidden)]
    pub tape: Option<std::rc::Rc<LayerTape<AB>>>,
    /// With `auto_find_batch_size`, whether a trial of the first step lowers the batch on an
    /// out-of-memory ([`crate::oom_retry`]): on by default on device backends (cubecl's
    /// allocator failures unwind), off on the CPU (a failed allocation aborts there).
    pub retry_out_of_memory: bool,
    optimizer: Optimizer<AB::InnerBackend>,
    device: AB::Device,
    collective: Arc<dyn Collective<AB::InnerBackend>>,
    /// The flattened-gradient layout of data-parallel steps (the trainable set does not
    /// change while training).
    grad_layout: std::cell::OnceCell<crate::distributed::step::GradLayout>,
}

impl<AB: AutodiffBackend, O: Objective<AB>> Trainer<AB, O> {
    /// A trainer over `model` (adapters already added or parts marked trainable).
    pub fn with_objective(
        model: SmolVlm<AB>,
        args: TrainingArgs,
        objective: O,
        encoder: Arc<O::Encoder>,
        train_set: Vec<O::Example>,
        device: AB::Device,
    ) -> Result<Self> {
        args.validate()?;
        if train_set.is_empty() {
            return Err(TrainError::Config {
                field: "train_dataset".into(),
                message: "the training set is empty".into(),
            });
        }
        if !vlmtune_peft::named_params::<AB, _>(&model)
            .iter()
            .any(|p| p.trainable)
        {
            return Err(TrainError::Config {
                field: "trainable".into(),
                message: "nothing to train: add an adapter or mark parts of the model trainable"
                    .into(),
            });
        }
        let (b1, b2, eps, wd) = (
            args.adam_beta1,
            args.adam_beta2,
            args.adam_epsilon,
            args.weight_decay,
        );
        let optimizer = if args.uses_8bit_optimizer() {
            if args.optim == "paged_adamw_8bit" {
                tracing::info!("paged_adamw_8bit runs as adamw_8bit: paging moves optimizer states out of CUDA memory, which vlmtune does not need");
            }
            Optimizer::AdamW8bit(AdamW8bit::new(b1, b2, eps, wd))
        } else {
            Optimizer::AdamW(AdamW::new(b1, b2, eps, wd))
        };
        let retry_out_of_memory = AB::name(&device).contains("cubecl");
        Ok(Self {
            retry_out_of_memory,
            optimizer,
            model,
            args,
            objective,
            encoder,
            train_set: Arc::new(train_set),
            adapter: None,
            base_dir: None,
            state: TrainerState::default(),
            stop_after: None,
            tape: None,
            device,
            collective: Arc::new(SingleProcess),
            grad_layout: std::cell::OnceCell::new(),
        })
    }

    /// Records which adapter is trained (saved in PEFT format).
    pub fn with_adapter(mut self, config: LoraConfig) -> Self {
        self.adapter = Some(config);
        self
    }

    /// The device.
    pub fn device(&self) -> &AB::Device {
        &self.device
    }

    fn loader_config(&self) -> LoaderConfig {
        LoaderConfig {
            batch_size: self.args.per_device_train_batch_size,
            shuffle: true,
            seed: self.args.seed,
            workers: self.args.dataloader_num_workers,
            prefetch: 4,
            shard: self.shard(),
        }
    }

    /// Trainable tensors by path (what resume restores).
    fn trainable_tensors(&self) -> Vec<NamedTensor> {
        let trainable: std::collections::HashSet<String> =
            vlmtune_peft::named_params::<AB, _>(&self.model)
                .into_iter()
                .filter(|p| p.trainable)
                .map(|p| p.path)
                .collect();
        vlmtune_peft::param_values::<AB, _>(&self.model, |p| trainable.contains(p))
    }

    /// Writes the user-facing model files to `dir`: the adapter (PEFT format) or the whole
    /// model (Hugging Face format, with the base's tokenizer and processor files).
    pub fn save_model(&self, dir: &Path) -> Result<()> {
        match &self.adapter {
            Some(config) => save_adapter(&self.model, "default", config, dir)?,
            None => {
                vlmtune_model::save_pretrained(
                    &self.model.valid(),
                    dir,
                    vlmtune_quant::SaveDtype::F32,
                )?;
                if let Some(base) = &self.base_dir {
                    vlmtune_model::checkpoint::copy_side_files(base, dir)?;
                }
            }
        }
        Ok(())
    }

    /// Redraws `curves.png` from `metrics.jsonl` (a failure is a warning: it costs no work).
    fn draw_curves(&self) {
        let dir = &self.args.output_dir;
        if let Err(e) = crate::curves::draw(&dir.join("metrics.jsonl"), &dir.join("curves.png")) {
            tracing::warn!("curves.png not drawn: {e}");
        }
    }

    /// Writes a checkpoint (the main rank; the others return the folder it writes).
    fn save_checkpoint(&self) -> Result<PathBuf> {
        if !self.is_main() {
            return Ok(checkpoint::checkpoint_dir(
                &self.args.output_dir,
                self.state.global_step,
            ));
        }
        self.draw_curves();
        let full_model = self.adapter.is_none();
        checkpoint::save_checkpoint(
            &self.args.output_dir,
            &self.state,
            &if full_model {
                Vec::new()
            } else {
                self.trainable_tensors()
            },
            &self.optimizer.state_tensors()?,
            |dir| self.save_model(dir),
            self.args.save_total_limit,
        )
    }

    /// Restores model weights, optimizer and position from a checkpoint folder.
    pub fn resume(&mut self, dir: &Path) -> Result<()> {
        let state = checkpoint::load_state(dir)?;
        let weights_file = [checkpoint::TRAINABLE_FILE, "model.safetensors"]
            .iter()
            .map(|f| dir.join(f))
            .find(|p| p.is_file())
            .ok_or_else(|| TrainError::Checkpoint {
                path: dir.to_path_buf(),
                message: "no trainable.safetensors or model.safetensors".into(),
            })?;
        let (model, unmatched) =
            checkpoint::set_params(self.model.clone(), checkpoint::read_named(&weights_file)?);
        if !unmatched.is_empty() {
            return Err(TrainError::Checkpoint {
                path: weights_file,
                message: format!("weights the model does not have: {}", unmatched.join(", ")),
            });
        }
        self.model = model;
        self.optimizer.load_state(
            checkpoint::read_named(&dir.join(checkpoint::OPTIMIZER_FILE))?,
            &self.device,
        )?;
        self.state = state;
        Ok(())
    }

    /// The loss and the summed gradients of one optimizer step over `micro` (its
    /// micro-batches), seeded as training at the current step seeds them; with
    /// `gradient_checkpointing`, through a [`LayerTape`]. A micro-batch whose loss (or, with
    /// several micro-batches, gradient norm) is not finite is left out (listed in `nonfinite`);
    /// a single micro-batch's gradient norm is checked by the caller's clipping. Does not
    /// update anything.
    pub fn step_gradients(&mut self, micro: &[BatchOf<AB, O>]) -> Result<StepGradients<AB>> {
        let accumulation = self.accumulation(micro)?;
        let (rank, world) = (self.collective.rank(), self.collective.world());
        // bf16: the forward (and the checkpointed recomputation inside `loss_grads`) multiplies
        // in bf16, the weights, gradients and optimiser state stay f32 (TRL's `bf16=True`).
        let _autocast = self.args.autocast();
        let mut out = StepGradients {
            loss: 0.0,
            grads: TensorMap::new(),
            metrics: Vec::new(),
            tokens: 0,
            nonfinite: Vec::new(),
            applied: 0,
        };
        for (m, batch) in micro.iter().enumerate() {
            // Seeded by the micro-batch's place in the global accumulated batch, so the ranks
            // of a data-parallel run draw what one process accumulating their batches would.
            let index = (m * world + rank) as u64;
            let seed = self.args.seed ^ ((self.state.global_step as u64) << 8) ^ index;
            AB::seed(&self.device, seed);
            vlmtune_peft::dropout::begin_step(seed);
            out.tokens += self.objective.tokens(batch);
            let tape = self.step_tape();
            let loss = {
                let _recording = tape.as_ref().map(|t| t.activate());
                self.objective.loss(&self.model, batch, accumulation)?
            };
            let Some(loss) = loss else {
                continue;
            };
            let value = scalar(loss.loss.clone())?;
            if !value.is_finite() {
                out.nonfinite.push(value);
                continue;
            }
            let grads = loss_grads(&self.model, loss.loss, tape.as_deref());
            // An overflow can stay out of the loss and still reach the gradients. Alone in its
            // step, a micro-batch's norm is the step's, which the clipping computes anyway.
            if micro.len() > 1 && !global_norm(&grads)?.is_finite() {
                out.nonfinite.push(value);
                continue;
            }
            out.loss += value;
            out.metrics.push(loss.metrics);
            out.applied += 1;
            accumulate(&mut out.grads, grads);
        }
        Ok(out)
    }

    /// The layer tape a micro-batch records on with `gradient_checkpointing` (fresh, or the
    /// tests' own).
    fn step_tape(&self) -> Option<std::rc::Rc<LayerTape<AB>>> {
        self.args.gradient_checkpointing.then(|| {
            self.tape
                .clone()
                .unwrap_or_else(|| LayerTape::new(self.args.checkpoint_every))
        })
    }

    /// Runs training to `max_steps` / `num_train_epochs`; returns the loss of every step.
    pub fn train(&mut self) -> Result<Vec<f64>> {
        for warning in self.args.ineffective_settings() {
            tracing::warn!("{warning}");
        }
        let largest_example = self.plan_batch_size()?;
        self.fit_first_step(largest_example)?;
        if let Some(spec) = self.args.resume_from_checkpoint.clone() {
            let dir = checkpoint::resolve_checkpoint(&spec, &self.args.output_dir)?;
            self.resume(&dir)?;
            tracing::info!(checkpoint = %dir.display(), step = self.state.global_step, "resumed");
        }
        let batches = self.shard().batches_per_rank(batches_per_epoch(
            self.train_set.len(),
            self.args.per_device_train_batch_size,
        ));
        let total = self.args.total_steps(batches);
        let warmup = self.args.warmup(total);
        let report = vlmtune_peft::trainable_report::<AB, _>(&self.model);
        let memory = vlmtune_peft::memory_report::<AB, _>(&self.model);
        if self.is_main() {
            tracing::info!(%report, total_steps = total, "training");
            tracing::info!(%memory, "weight memory");
        }
        let tensorboard = self
            .args
            .report_to
            .iter()
            .any(|r| r == "tensorboard")
            .then(|| {
                self.args
                    .logging_dir
                    .clone()
                    .unwrap_or_else(|| self.args.output_dir.join("runs"))
            });
        let mut log = if self.is_main() {
            MetricsLog::open(
                &self.args.output_dir,
                total,
                self.state.global_step,
                self.args.progress_bar,
                tensorboard.as_deref(),
            )?
        } else {
            MetricsLog::silent()
        };
        let mut step_losses = Vec::new();
        let mut window = Window::default();
        let mut nonfinite_in_a_row = 0;
        'epochs: while self.state.global_step < total {
            let mut batches_iter = epoch_batches(
                self.train_set.clone(),
                self.encoder.clone(),
                self.loader_config(),
                self.state.epoch,
                self.state.batch_in_epoch,
            );
            loop {
                let mut micro = Vec::new();
                for _ in 0..self.args.gradient_accumulation_steps {
                    match batches_iter.next() {
                        Some((_, b)) => micro.push(b?),
                        None => break,
                    }
                }
                if micro.is_empty() {
                    break;
                }
                let lr = self.args.learning_rate
                    * lr_lambda(
                        self.args.lr_scheduler_type,
                        self.state.global_step,
                        warmup,
                        total,
                    );
                let local = self.step_gradients(&micro)?;
                let SharedStep {
                    loss: step_loss,
                    mut grads,
                    metrics,
                    tokens,
                    mut nonfinite,
                    nonfinite_anywhere,
                    mut applied,
                    interrupted,
                } = self.share_step(local, crate::interrupt::requested())?;
                window.tokens += tokens;
                self.state.num_tokens += tokens as u64;
                window.add_totals(&metrics);
                let mut grad_norm = f64::NAN;
                if applied > 0 {
                    grad_norm = clip_grad_norm(&mut grads, self.args.max_grad_norm)?;
                    if grad_norm.is_finite() {
                        self.model =
                            self.optimizer
                                .update::<AB, _>(self.model.clone(), grads, lr)?;
                    } else {
                        // One micro-batch in the step (see `step_gradients`), or a rank's
                        // overflow in the sum: every rank sees the same norm.
                        nonfinite.push(step_loss);
                        applied = 0;
                    }
                }
                self.state.global_step += 1;
                self.state.batch_in_epoch = batches_iter.position();
                if !nonfinite_anywhere && nonfinite.is_empty() {
                    nonfinite_in_a_row = 0;
                } else {
                    nonfinite_in_a_row += 1;
                }
                if !nonfinite.is_empty() {
                    tracing::warn!(
                        step = self.state.global_step,
                        rank = self.collective.rank(),
                        losses = ?nonfinite,
                        left_out = nonfinite.len(),
                        of = micro.len(),
                        in_a_row = nonfinite_in_a_row,
                        "micro-batches with a non-finite loss or gradient were not applied"
                    );
                }
                match nonfinite.first() {
                    // Nothing applied: the step has no loss to average into the log.
                    Some(&first) if applied == 0 => step_losses.push(first),
                    None if applied == 0 => step_losses.push(f64::NAN),
                    _ => {
                        step_losses.push(step_loss);
                        window.loss += step_loss;
                        window.steps += 1;
                    }
                }
                if self.args.max_nonfinite_steps > 0
                    && nonfinite_in_a_row >= self.args.max_nonfinite_steps
                {
                    log.finish();
                    let checkpoint = self.save_checkpoint()?;
                    return Err(TrainError::NonFinite {
                        steps: nonfinite_in_a_row,
                        step: self.state.global_step,
                        checkpoint,
                    });
                }
                let step = self.state.global_step;
                log.step(step);
                let epoch_f = self.state.epoch as f64
                    + self.state.batch_in_epoch as f64 / batches.max(1) as f64;
                if step.is_multiple_of(self.args.logging_steps) || step == total {
                    let record = window.record(step, epoch_f, grad_norm, lr, self.state.num_tokens);
                    log.record(&record)?;
                    self.state.log_history.push(record);
                    window = Window::default();
                }
                if self.objective.has_eval()
                    && self.is_main()
                    && self
                        .args
                        .eval_steps
                        .is_some_and(|e| e > 0 && step.is_multiple_of(e))
                    && step != total
                {
                    self.log_eval(&mut log, step, epoch_f)?;
                }
                let saved = self.args.save_steps > 0 && step.is_multiple_of(self.args.save_steps);
                if saved {
                    self.save_checkpoint()?;
                }
                if step >= total {
                    break 'epochs;
                }
                if self.stop_after.is_some_and(|s| step >= s) {
                    log.finish();
                    return Ok(step_losses);
                }
                // Decided on the ranks' shared flag: a signal to any of them stops them all
                // at the same step.
                if interrupted {
                    crate::interrupt::clear();
                    log.finish();
                    let checkpoint = if saved {
                        checkpoint::checkpoint_dir(&self.args.output_dir, step)
                    } else {
                        self.save_checkpoint()?
                    };
                    return Err(TrainError::Interrupted { step, checkpoint });
                }
            }
            self.state.epoch += 1;
            self.state.batch_in_epoch = 0;
        }
        if self.objective.has_eval() && self.is_main() {
            let epoch_f =
                self.state.epoch as f64 + self.state.batch_in_epoch as f64 / batches.max(1) as f64;
            self.log_eval(&mut log, self.state.global_step, epoch_f)?;
        }
        log.finish();
        if self.is_main() {
            self.draw_curves();
        }
        Ok(step_losses)
    }

    fn log_eval(&mut self, log: &mut MetricsLog, step: usize, epoch: f64) -> Result<()> {
        let metrics = {
            let _autocast = self.args.autocast();
            self.objective.evaluate(&self.model.valid())?
        };
        let mut record = serde_json::Map::new();
        record.insert("step".into(), json!(step));
        record.insert("epoch".into(), json!(epoch));
        for (k, v) in metrics {
            record.insert(format!("eval_{k}"), json!(v));
        }
        let record = serde_json::Value::Object(record);
        log.record(&record)?;
        self.state.log_history.push(record);
        Ok(())
    }
}

fn scalar<B: burn::tensor::backend::Backend>(t: Tensor<B, 1>) -> Result<f64> {
    let v = t
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .map_err(|e| TrainError::Readback(format!("{e:?}")))?;
    Ok(f64::from(v.first().copied().unwrap_or(0.0)))
}

/// A batch of objective `O`.
pub type BatchOf<AB, O> =
    <<O as Objective<AB>>::Encoder as BatchEncoder<<O as Objective<AB>>::Example>>::Batch;

/// What [`Trainer::step_gradients`] computes.
pub struct StepGradients<AB: AutodiffBackend> {
    /// Sum of the micro-batches' (normalised) losses.
    pub loss: f64,
    /// Gradients of the trainable parameters by path, summed over micro-batches.
    pub grads: TensorMap<AB::InnerBackend>,
    /// Each micro-batch's metrics.
    pub metrics: Vec<Vec<(&'static str, f64)>>,
    /// Non-padding tokens seen.
    pub tokens: usize,
    /// Losses of the micro-batches left out because their loss or gradients were not
    /// finite (their gradients are not in `grads`; a loss listed here may be finite when only
    /// its gradients overflowed).
    pub nonfinite: Vec<f64>,
    /// Micro-batches whose gradients are in `grads`.
    pub applied: usize,
}
