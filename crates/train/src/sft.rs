//! `SftTrainer`: supervised fine-tuning of SmolVLM like TRL's `SFTTrainer` — the loss over all
//! completion tokens of the accumulated batch (`num_items_in_batch`) on the shared
//! [`Trainer`] loop, evaluation by loss and by generated answers (ChartQA's relaxed accuracy),
//! and the frozen-vision feature cache.

use std::collections::BTreeMap;
use std::sync::Arc;

use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;
use vlmtune_data::collate::{SftCollator, TrainBatch};
use vlmtune_data::processor::stack_pixels;
use vlmtune_data::{Conversation, SftExample};
use vlmtune_model::loss::{count_correct, cross_entropy_sum, ShiftedTargets};
use vlmtune_model::{generate, GenerationConfig, PixelBatch, SmolVlm, TokenBatch};

use crate::args::TrainingArgs;
use crate::error::{Result, TrainError};
use crate::eval::relaxed_correct;
use crate::feature_cache::{CacheLevel, FeatureCache};
use crate::memory_plan::StepShape;
use crate::trainer::{Accumulation, Objective, ObjectiveOutput, Trainer};

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
            let Some((vision, tiles)) = model.encode_vision_for_training(pixels)? else {
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
    Ok(model
        .encode_images_for_training(pixels)?
        .map(|f| f.features))
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
    let hidden = model.hidden_states(tokens, features.as_ref(), None, None, None)?;
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

/// SFT's step: the causal-LM loss over the completion tokens of the accumulated batch.
pub struct SftObjective<AB: AutodiffBackend> {
    /// The collator (also used to build evaluation batches and prompts).
    pub collator: Arc<SftCollator>,
    /// Held-out examples.
    pub eval_set: Option<Arc<Vec<SftExample>>>,
    /// Evaluation batch size.
    pub eval_batch_size: usize,
    /// Most new tokens when generating evaluation answers (0 disables).
    pub eval_max_new_tokens: usize,
    /// The result of the latest evaluation.
    pub last_eval: Option<EvalResult>,
    cache: FeatureCache<AB::InnerBackend>,
}

impl<AB: AutodiffBackend> SftObjective<AB> {
    /// The feature-cache level in use.
    pub fn cache_level(&self) -> CacheLevel {
        self.cache.level
    }
}

impl<AB: AutodiffBackend> Objective<AB> for SftObjective<AB> {
    type Example = SftExample;
    type Encoder = SftCollator;

    fn items(&self, batch: &TrainBatch) -> usize {
        batch.num_label_tokens()
    }

    fn tokens(&self, batch: &TrainBatch) -> usize {
        batch.num_tokens()
    }

    fn step_shape(&self, batch: &TrainBatch) -> StepShape {
        let rows = batch.batch_size.max(1);
        StepShape {
            batch_size: batch.batch_size,
            seq_len: batch.seq_len,
            tiles: batch.pixels.as_ref().map_or(0, |p| p.shape[1]),
            labelled: batch.num_label_tokens().div_ceil(rows),
        }
    }

    fn loss(
        &mut self,
        model: &SmolVlm<AB>,
        batch: &TrainBatch,
        accumulation: Accumulation,
    ) -> Result<Option<ObjectiveOutput<AB>>> {
        let (tokens, pixels) = model_inputs(batch);
        let cache = (self.cache.level != CacheLevel::Off).then_some(&mut self.cache);
        let features = image_features(model, batch, pixels.as_ref(), cache)?;
        Ok(
            batch_loss(model, &tokens, features, &batch.labels, accumulation.items)?.map(|out| {
                ObjectiveOutput {
                    loss: out.loss,
                    metrics: if out.counted > 0 {
                        vec![(
                            "mean_token_accuracy",
                            out.correct as f64 / out.counted as f64,
                        )]
                    } else {
                        Vec::new()
                    },
                }
            }),
        )
    }

    fn metric_names(&self) -> &'static [&'static str] {
        &["mean_token_accuracy"]
    }

    fn has_eval(&self) -> bool {
        self.eval_set.is_some()
    }

    fn evaluate(&mut self, model: &SmolVlm<AB::InnerBackend>) -> Result<BTreeMap<String, f64>> {
        let Some(eval_set) = self.eval_set.clone() else {
            return Ok(BTreeMap::new());
        };
        let result = evaluate(
            model,
            &self.collator,
            &eval_set,
            self.eval_batch_size,
            self.eval_max_new_tokens,
        )?;
        let mut out = BTreeMap::new();
        out.insert("loss".to_string(), result.loss);
        if let Some(a) = result.accuracy {
            out.insert("accuracy".to_string(), a);
        }
        self.last_eval = Some(result);
        Ok(out)
    }
}

/// Supervised fine-tuning: the shared [`Trainer`] with the SFT objective.
pub type SftTrainer<AB> = Trainer<AB, SftObjective<AB>>;

impl<AB: AutodiffBackend> Trainer<AB, SftObjective<AB>> {
    /// TRL's `SFTTrainer(model, args, train_dataset=..., peft_config=...)`: adds a new
    /// trainable adapter `peft_config` (seeded by `args.seed`) to the frozen `model`, and saves
    /// it in PEFT's format.
    pub fn new_with_peft(
        mut model: SmolVlm<AB>,
        args: TrainingArgs,
        collator: Arc<SftCollator>,
        train_set: Vec<SftExample>,
        peft_config: vlmtune_peft::LoraConfig,
        device: AB::Device,
    ) -> Result<Self> {
        vlmtune_peft::add_adapter(&mut model, "default", &peft_config, args.seed)?;
        Ok(Self::new(model, args, collator, train_set, device)?.with_adapter(peft_config))
    }

    /// An SFT trainer over `model` (adapters already added or parts marked trainable). The
    /// frozen-vision feature cache is on when `cache_image_features` and nothing before the
    /// cached features trains.
    pub fn new(
        model: SmolVlm<AB>,
        args: TrainingArgs,
        collator: Arc<SftCollator>,
        train_set: Vec<SftExample>,
        device: AB::Device,
    ) -> Result<Self> {
        let vision_trains = model.vision_is_trainable();
        let connector_trains = model.connector_is_trainable();
        let level = match (args.cache_image_features, vision_trains, connector_trains) {
            (false, _, _) | (_, true, _) => CacheLevel::Off,
            (true, false, true) => CacheLevel::Vision,
            (true, false, false) => CacheLevel::Connector,
        };
        let objective = SftObjective {
            collator: collator.clone(),
            eval_set: None,
            eval_batch_size: args.per_device_eval_batch_size,
            eval_max_new_tokens: 16,
            last_eval: None,
            cache: FeatureCache::new(level, args.feature_cache_max_mb),
        };
        Self::with_objective(model, args, objective, collator, train_set, device)
    }

    /// Adds a held-out set for evaluation.
    pub fn with_eval(mut self, eval_set: Vec<SftExample>) -> Self {
        self.objective.eval_set = Some(Arc::new(eval_set));
        self
    }

    /// Loss and generation accuracy on the held-out set.
    pub fn evaluate(&self) -> Result<EvalResult> {
        let eval_set = self
            .objective
            .eval_set
            .clone()
            .ok_or_else(|| TrainError::Config {
                field: "eval_dataset".into(),
                message: "no evaluation set".into(),
            })?;
        evaluate(
            &self.model.valid(),
            &self.objective.collator,
            &eval_set,
            self.args.per_device_eval_batch_size,
            self.objective.eval_max_new_tokens,
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
