//! `SftTrainer`: supervised fine-tuning of SmolVLM like TRL's `SFTTrainer` — loss over all
//! completion tokens of the accumulated batch (`num_items_in_batch`), AdamW with a schedule,
//! global-norm clipping, TRL's metrics, atomic checkpoints with exact resume, evaluation by
//! loss and by generated answers (ChartQA's relaxed accuracy).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;
use serde_json::json;
use vlmtune_data::collate::{SftCollator, TrainBatch};
use vlmtune_data::loader::{batches_per_epoch, epoch_batches, LoaderConfig};
use vlmtune_data::processor::stack_pixels;
use vlmtune_data::{Conversation, SftExample};
use vlmtune_model::loss::{count_correct, cross_entropy_sum, ShiftedTargets};
use vlmtune_model::{generate, GenerationConfig, PixelBatch, SmolVlm, TokenBatch};
use vlmtune_peft::{save_adapter, LoraConfig};
use vlmtune_quant::NamedTensor;

use crate::args::TrainingArgs;
use crate::checkpoint::{self, TrainerState};
use crate::error::{Result, TrainError};
use crate::eval::relaxed_correct;
use crate::feature_cache::{CacheLevel, FeatureCache};
use crate::metrics::MetricsLog;
use crate::optim::{accumulate, clip_grad_norm, collect_grads, AdamW, TensorMap};
use crate::schedule::lr_lambda;

/// The model inputs of a collated batch.
pub fn model_inputs(batch: &TrainBatch) -> (TokenBatch, Option<PixelBatch>) {
    (
        TokenBatch {
            input_ids: batch.input_ids.clone(),
            attention_mask: batch.attention_mask.clone(),
            batch_size: batch.batch_size,
            seq_len: batch.seq_len,
        },
        batch.pixels.as_ref().map(|p| PixelBatch {
            pixel_values: p.values.clone(),
            shape: p.shape,
            pixel_attention_mask: Some(p.pixel_attention_mask.clone()),
        }),
    )
}

/// What one micro-batch gave.
struct MicroStep<B: Backend> {
    loss: f64,
    correct: usize,
    counted: usize,
    grads: TensorMap<B>,
}

/// How a step's losses are computed; shared by training and evaluation.
pub struct LossOutput<B: Backend> {
    /// `Σ -log p(target)` over the counted targets, divided by `denominator`.
    pub loss: Tensor<B, 1>,
    /// Targets predicted right (arg-max).
    pub correct: usize,
    /// Targets counted.
    pub counted: usize,
}

/// Image features of a batch, reusing `cache` when allowed.
fn image_features<B>(
    model: &SmolVlm<B>,
    batch: &TrainBatch,
    pixels: Option<&PixelBatch>,
    cache: Option<&mut FeatureCache<B::InnerBackend>>,
) -> Result<Option<Tensor<B, 3>>>
where
    B: AutodiffBackend,
{
    let Some(pixels) = pixels else {
        return Ok(None);
    };
    let level = cache.as_ref().map(|c| c.level).unwrap_or(CacheLevel::Off);
    let project = |t: Tensor<B, 3>, from: CacheLevel| match from {
        CacheLevel::Vision => model.model.connector.forward(t),
        _ => t,
    };
    if let Some(cache) = cache {
        if level != CacheLevel::Off {
            if let Some(parts) = cache.get_all(&batch.indices) {
                let parts: Vec<Tensor<B, 3>> = parts
                    .into_iter()
                    .filter(|p| p.dims()[0] > 0)
                    .map(Tensor::from_inner)
                    .collect();
                if parts.is_empty() {
                    return Ok(None);
                }
                return Ok(Some(project(Tensor::cat(parts, 0), level)));
            }
            let Some((vision, tiles)) = model.encode_vision(pixels)? else {
                return Ok(None);
            };
            let stored = if level == CacheLevel::Connector {
                model.model.connector.forward(vision)
            } else {
                vision
            };
            let mut start = 0;
            for (index, n) in batch.indices.iter().zip(&tiles) {
                cache.put(*index, stored.clone().narrow(0, start, *n).inner());
                start += n;
            }
            return Ok(Some(project(stored, level)));
        }
    }
    Ok(model.encode_images(pixels)?.map(|f| f.features))
}

/// The causal-LM loss of `batch` under `model`, normalised by `denominator`
/// (`num_items_in_batch`), computing logits only at labelled positions.
pub fn batch_loss<B: Backend>(
    model: &SmolVlm<B>,
    tokens: &TokenBatch,
    features: Option<Tensor<B, 3>>,
    labels: &[i64],
    denominator: usize,
) -> Result<Option<LossOutput<B>>> {
    let shifted = ShiftedTargets::from_labels(labels, tokens.batch_size, tokens.seq_len)?;
    let (hidden, _) = model.forward_hidden(tokens, features.as_ref(), None, None, None)?;
    if shifted.is_empty() {
        return Ok(None);
    }
    let rows = shifted.select_rows(hidden);
    let logits: Tensor<B, 2> = model.lm_head(rows.unsqueeze_dim(0)).squeeze_dim(0);
    let correct = count_correct(logits.clone().detach(), &shifted.targets)?;
    let loss = cross_entropy_sum(logits, &shifted.targets) / denominator.max(1) as f64;
    Ok(Some(LossOutput {
        loss,
        correct,
        counted: shifted.len(),
    }))
}

/// Evaluation results.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalResult {
    /// Mean loss over batches.
    pub loss: f64,
    /// Relaxed accuracy of generated answers (when generation ran).
    pub accuracy: Option<f64>,
    /// Every generated answer.
    pub answers: Vec<Answer>,
}

/// One generated answer to a held-out prompt.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    /// The text of the prompt's last user turn.
    pub question: String,
    /// The dataset's answer.
    pub reference: String,
    /// The model's answer.
    pub prediction: String,
}

impl Answer {
    /// ChartQA's relaxed correctness of the prediction.
    pub fn correct(&self) -> bool {
        relaxed_correct(&self.reference, &self.prediction)
    }
}

/// Supervised fine-tuning.
pub struct SftTrainer<AB: AutodiffBackend> {
    /// The model being trained.
    pub model: SmolVlm<AB>,
    /// Settings.
    pub args: TrainingArgs,
    /// Batches from examples.
    pub collator: Arc<SftCollator>,
    /// Training examples.
    pub train_set: Arc<Vec<SftExample>>,
    /// Held-out examples.
    pub eval_set: Option<Arc<Vec<SftExample>>>,
    /// The adapter being trained (`None`: the trainable base weights are saved instead).
    pub adapter: Option<LoraConfig>,
    /// The base checkpoint folder (its tokenizer/processor files are copied into saves).
    pub base_dir: Option<PathBuf>,
    /// Most new tokens when generating evaluation answers (0 disables).
    pub eval_max_new_tokens: usize,
    /// Where training stands.
    pub state: TrainerState,
    /// The result of the latest evaluation.
    pub last_eval: Option<EvalResult>,
    /// Stop (as if interrupted) after this optimizer step, keeping the schedule of the full
    /// run; used to test and demonstrate resuming.
    pub stop_after: Option<usize>,
    optimizer: AdamW<AB::InnerBackend>,
    cache: FeatureCache<AB::InnerBackend>,
    device: AB::Device,
}

impl<AB: AutodiffBackend> SftTrainer<AB> {
    /// A trainer over `model` (adapters already added or parts marked trainable).
    pub fn new(
        model: SmolVlm<AB>,
        args: TrainingArgs,
        collator: Arc<SftCollator>,
        train_set: Vec<SftExample>,
        device: AB::Device,
    ) -> Result<Self> {
        args.validate()?;
        if train_set.is_empty() {
            return Err(TrainError::Config {
                field: "train_dataset".into(),
                message: "the training set is empty".into(),
            });
        }
        let params = vlmtune_peft::named_params::<AB, _>(&model);
        if !params.iter().any(|p| p.trainable) {
            return Err(TrainError::Config {
                field: "trainable".into(),
                message: "nothing to train: add an adapter or mark parts of the model trainable"
                    .into(),
            });
        }
        let vision_trains = params
            .iter()
            .any(|p| p.trainable && p.path.starts_with("model.vision_model."));
        let connector_trains = params
            .iter()
            .any(|p| p.trainable && p.path.starts_with("model.connector."));
        let level = match (args.cache_image_features, vision_trains, connector_trains) {
            (false, _, _) | (_, true, _) => CacheLevel::Off,
            (true, false, true) => CacheLevel::Vision,
            (true, false, false) => CacheLevel::Connector,
        };
        Ok(Self {
            optimizer: AdamW::new(
                args.adam_beta1,
                args.adam_beta2,
                args.adam_epsilon,
                args.weight_decay,
            ),
            cache: FeatureCache::new(level, args.feature_cache_max_mb),
            model,
            args,
            collator,
            train_set: Arc::new(train_set),
            eval_set: None,
            adapter: None,
            base_dir: None,
            eval_max_new_tokens: 16,
            state: TrainerState::default(),
            stop_after: None,
            last_eval: None,
            device,
        })
    }

    /// Adds a held-out set for evaluation.
    pub fn with_eval(mut self, eval_set: Vec<SftExample>) -> Self {
        self.eval_set = Some(Arc::new(eval_set));
        self
    }

    /// Records which adapter is trained (saved in PEFT format).
    pub fn with_adapter(mut self, config: LoraConfig) -> Self {
        self.adapter = Some(config);
        self
    }

    /// The feature-cache level in use.
    pub fn cache_level(&self) -> CacheLevel {
        self.cache.level
    }

    fn loader_config(&self) -> LoaderConfig {
        LoaderConfig {
            batch_size: self.args.per_device_train_batch_size,
            shuffle: true,
            seed: self.args.seed,
            workers: self.args.dataloader_num_workers,
            prefetch: 4,
        }
    }

    fn micro_step(
        &mut self,
        batch: &TrainBatch,
        denominator: usize,
        seed: u64,
    ) -> Result<MicroStep<AB::InnerBackend>> {
        AB::seed(&self.device, seed);
        let (tokens, pixels) = model_inputs(batch);
        let cache = (self.cache.level != CacheLevel::Off).then_some(&mut self.cache);
        let features = image_features(&self.model, batch, pixels.as_ref(), cache)?;
        let Some(out) = batch_loss(&self.model, &tokens, features, &batch.labels, denominator)?
        else {
            return Ok(MicroStep {
                loss: 0.0,
                correct: 0,
                counted: 0,
                grads: TensorMap::new(),
            });
        };
        let loss_value = f64::from(
            out.loss
                .clone()
                .into_data()
                .convert::<f32>()
                .to_vec::<f32>()
                .map_err(|e| TrainError::Readback(format!("{e:?}")))?[0],
        );
        let grads = out.loss.backward();
        Ok(MicroStep {
            loss: loss_value,
            correct: out.correct,
            counted: out.counted,
            grads: collect_grads(&self.model, &grads),
        })
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
    pub fn save_model(&self, dir: &std::path::Path) -> Result<()> {
        match &self.adapter {
            Some(config) => save_adapter(&self.model, "default", config, dir)?,
            None => {
                let inner = self.model.valid();
                vlmtune_model::save_pretrained(&inner, dir, vlmtune_quant::SaveDtype::F32)?;
                if let Some(base) = &self.base_dir {
                    vlmtune_model::checkpoint::copy_side_files(base, dir)?;
                }
            }
        }
        Ok(())
    }

    fn save_checkpoint(&self) -> Result<PathBuf> {
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
    pub fn resume(&mut self, dir: &std::path::Path) -> Result<()> {
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
        );
        self.state = state;
        Ok(())
    }

    /// Runs training to `max_steps` / `num_train_epochs`; returns the loss of every step.
    pub fn train(&mut self) -> Result<Vec<f64>> {
        if let Some(spec) = self.args.resume_from_checkpoint.clone() {
            let dir = checkpoint::resolve_checkpoint(&spec, &self.args.output_dir)?;
            self.resume(&dir)?;
            tracing::info!(checkpoint = %dir.display(), step = self.state.global_step, "resumed");
        }
        let batches =
            batches_per_epoch(self.train_set.len(), self.args.per_device_train_batch_size);
        let total = self.args.total_steps(batches);
        let warmup = self.args.warmup(total);
        let report = vlmtune_peft::trainable_report::<AB, _>(&self.model);
        tracing::info!(%report, total_steps = total, "training");
        let mut log = if self.args.progress_bar || !self.args.output_dir.as_os_str().is_empty() {
            MetricsLog::open(
                &self.args.output_dir,
                total,
                self.state.global_step,
                self.args.progress_bar,
            )?
        } else {
            MetricsLog::silent()
        };
        let mut step_losses = Vec::new();
        let (mut window_loss, mut window_steps, mut window_acc, mut window_tokens) =
            (0.0, 0usize, Vec::new(), 0usize);
        let mut window_start = Instant::now();
        'epochs: while self.state.global_step < total {
            let mut batches_iter = epoch_batches(
                self.train_set.clone(),
                self.collator.clone(),
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
                let denominator: usize = micro.iter().map(TrainBatch::num_label_tokens).sum();
                let lr = self.args.learning_rate
                    * lr_lambda(
                        self.args.lr_scheduler_type,
                        self.state.global_step,
                        warmup,
                        total,
                    );
                let mut grads = TensorMap::new();
                let mut step_loss = 0.0;
                for (m, batch) in micro.iter().enumerate() {
                    let seed = self.args.seed ^ ((self.state.global_step as u64) << 8) ^ m as u64;
                    let out = self.micro_step(batch, denominator, seed)?;
                    step_loss += out.loss;
                    if out.counted > 0 {
                        window_acc.push(out.correct as f64 / out.counted as f64);
                    }
                    accumulate(&mut grads, out.grads);
                    window_tokens += batch.num_tokens();
                    self.state.num_tokens += batch.num_tokens() as u64;
                }
                if !step_loss.is_finite() {
                    return Err(TrainError::NonFinite {
                        step: self.state.global_step + 1,
                        value: step_loss,
                    });
                }
                let grad_norm = clip_grad_norm(&mut grads, self.args.max_grad_norm)?;
                self.model = self
                    .optimizer
                    .update::<AB, _>(self.model.clone(), grads, lr);
                self.state.global_step += 1;
                self.state.batch_in_epoch = batches_iter.position();
                step_losses.push(step_loss);
                window_loss += step_loss;
                window_steps += 1;
                let step = self.state.global_step;
                log.step(step);
                let epoch_f = self.state.epoch as f64
                    + self.state.batch_in_epoch as f64 / batches.max(1) as f64;
                if step.is_multiple_of(self.args.logging_steps) || step == total {
                    let secs = window_start.elapsed().as_secs_f64().max(1e-9);
                    let record = json!({
                        "step": step,
                        "epoch": epoch_f,
                        "loss": window_loss / window_steps as f64,
                        "grad_norm": grad_norm,
                        "learning_rate": lr,
                        "mean_token_accuracy": if window_acc.is_empty() { 0.0 } else { window_acc.iter().sum::<f64>() / window_acc.len() as f64 },
                        "num_tokens": self.state.num_tokens,
                        "tokens_per_second": window_tokens as f64 / secs,
                    });
                    log.record(&record)?;
                    self.state.log_history.push(record);
                    (window_loss, window_steps, window_tokens) = (0.0, 0, 0);
                    window_acc.clear();
                    window_start = Instant::now();
                }
                if self.eval_set.is_some()
                    && self
                        .args
                        .eval_steps
                        .is_some_and(|e| e > 0 && step.is_multiple_of(e))
                    && step != total
                {
                    self.log_eval(&mut log, step, epoch_f)?;
                }
                if self.args.save_steps > 0 && step.is_multiple_of(self.args.save_steps) {
                    self.save_checkpoint()?;
                }
                if step >= total {
                    break 'epochs;
                }
                if self.stop_after.is_some_and(|s| step >= s) {
                    log.finish();
                    return Ok(step_losses);
                }
            }
            self.state.epoch += 1;
            self.state.batch_in_epoch = 0;
        }
        if self.eval_set.is_some() {
            let epoch_f =
                self.state.epoch as f64 + self.state.batch_in_epoch as f64 / batches.max(1) as f64;
            self.log_eval(&mut log, self.state.global_step, epoch_f)?;
        }
        log.finish();
        let skipped = self.collator.skipped();
        if skipped > 0 {
            tracing::warn!(
                skipped,
                "samples skipped because their images did not fit max_length"
            );
        }
        Ok(step_losses)
    }

    fn log_eval(&mut self, log: &mut MetricsLog, step: usize, epoch: f64) -> Result<()> {
        let result = self.evaluate()?;
        let record = json!({
            "step": step,
            "epoch": epoch,
            "eval_loss": result.loss,
            "eval_accuracy": result.accuracy,
        });
        log.record(&record)?;
        self.state.log_history.push(record);
        self.last_eval = Some(result);
        Ok(())
    }

    /// Loss and generation accuracy on the held-out set.
    pub fn evaluate(&self) -> Result<EvalResult> {
        let eval_set = self.eval_set.clone().ok_or_else(|| TrainError::Config {
            field: "eval_dataset".into(),
            message: "no evaluation set".into(),
        })?;
        evaluate(
            &self.model.valid(),
            &self.collator,
            &eval_set,
            self.args.per_device_eval_batch_size,
            self.eval_max_new_tokens,
        )
    }
}

/// Mean loss over batches of `examples`, and the relaxed accuracy of greedy answers to
/// their prompts (prompt/completion examples with one text answer).
pub fn evaluate<B: Backend>(
    model: &SmolVlm<B>,
    collator: &SftCollator,
    examples: &[SftExample],
    batch_size: usize,
    max_new_tokens: usize,
) -> Result<EvalResult> {
    let mut losses = Vec::new();
    for (c, chunk) in examples.chunks(batch_size.max(1)).enumerate() {
        let mut encoded = Vec::new();
        for (i, ex) in chunk.iter().enumerate() {
            if let Some(e) = collator.encode(ex)? {
                encoded.push((c * batch_size + i, e));
            }
        }
        let batch = collator.collate(encoded);
        if batch.batch_size == 0 {
            continue;
        }
        let (tokens, pixels) = model_inputs(&batch);
        let features = match &pixels {
            Some(p) => model.encode_images(p)?.map(|f| f.features),
            None => None,
        };
        if let Some(out) = batch_loss(
            model,
            &tokens,
            features,
            &batch.labels,
            batch.num_label_tokens(),
        )? {
            losses.push(f64::from(
                out.loss
                    .into_data()
                    .convert::<f32>()
                    .to_vec::<f32>()
                    .map_err(|e| TrainError::Readback(format!("{e:?}")))?[0],
            ));
        }
    }
    let loss = if losses.is_empty() {
        0.0
    } else {
        losses.iter().sum::<f64>() / losses.len() as f64
    };
    let answers = if max_new_tokens > 0 {
        generate_answers(model, collator, examples, batch_size, max_new_tokens)?
    } else {
        Vec::new()
    };
    let accuracy = (!answers.is_empty())
        .then(|| answers.iter().filter(|a| a.correct()).count() as f64 / answers.len() as f64);
    Ok(EvalResult {
        loss,
        accuracy,
        answers,
    })
}

fn message_text(m: &vlmtune_data::Message) -> String {
    match &m.content {
        vlmtune_data::processor::Content::Text(t) => t.clone(),
        vlmtune_data::processor::Content::Parts(parts) => parts
            .iter()
            .filter_map(|p| match p {
                vlmtune_data::processor::ContentPart::Text { text } => Some(text.clone()),
                _ => None,
            })
            .collect::<String>(),
    }
}

/// The reference answer text of a prompt/completion example.
pub fn reference_answer(example: &SftExample) -> Option<(Vec<vlmtune_data::Message>, String)> {
    let Conversation::PromptCompletion { prompt, completion } = &example.conversation else {
        return None;
    };
    let text = completion
        .iter()
        .map(message_text)
        .collect::<Vec<_>>()
        .join(" ");
    Some((prompt.clone(), text))
}

/// Greedy answers to the prompts of `examples`.
pub fn generate_answers<B: Backend>(
    model: &SmolVlm<B>,
    collator: &SftCollator,
    examples: &[SftExample],
    batch_size: usize,
    max_new_tokens: usize,
) -> Result<Vec<Answer>> {
    let processor = &collator.processor;
    let mut config = GenerationConfig::for_checkpoint(None, model.config())?;
    if let Some(eos) = processor.tokenizer.eos_id() {
        config.eos_token_ids = vec![eos];
    }
    config.pad_token_id = processor.tokenizer.pad_id();
    config.max_new_tokens = max_new_tokens;
    let mut out = Vec::new();
    let usable: Vec<(&SftExample, Vec<vlmtune_data::Message>, String)> = examples
        .iter()
        .filter_map(|e| reference_answer(e).map(|(p, r)| (e, p, r)))
        .collect();
    for chunk in usable.chunks(batch_size.max(1)) {
        let mut rows = Vec::new();
        let mut images_per_row = Vec::new();
        for (ex, prompt, _) in chunk {
            let images = collator.process_images(&ex.images)?;
            let text = processor.apply_chat_template(prompt, true)?;
            let options = vlmtune_data::ProcessOptions {
                add_special_tokens: false,
                ..Default::default()
            };
            let enc = processor.encode_processed(&text, images, options)?;
            rows.push(enc.input_ids);
            images_per_row.push(enc.images);
        }
        let width = rows.iter().map(Vec::len).max().unwrap_or(0);
        let pad = processor.tokenizer.pad_id();
        let mut tokens = TokenBatch {
            batch_size: rows.len(),
            seq_len: width,
            ..TokenBatch::default()
        };
        for r in &rows {
            let n = width - r.len();
            tokens
                .input_ids
                .extend(std::iter::repeat_n(pad, n).chain(r.iter().copied()));
            tokens
                .attention_mask
                .extend(std::iter::repeat_n(0u8, n).chain(std::iter::repeat_n(1, r.len())));
        }
        let pixels = stack_pixels(images_per_row.iter().map(Vec::as_slice)).map(|p| PixelBatch {
            pixel_values: p.values,
            shape: p.shape,
            pixel_attention_mask: Some(p.pixel_attention_mask),
        });
        let generated = generate(model, &tokens, pixels.as_ref(), &config)?;
        for ((_, prompt, reference), ids) in chunk.iter().zip(generated.tokens) {
            let text = processor.decode(&ids, true)?;
            out.push(Answer {
                question: prompt
                    .iter()
                    .rev()
                    .find(|m| m.role == "user")
                    .map(message_text)
                    .unwrap_or_default(),
                reference: reference.clone(),
                prediction: text.trim().to_string(),
            });
        }
    }
    Ok(out)
}
