//! `DpoTrainer`: direct preference optimisation with TRL's loss types and metrics on the
//! shared [`Trainer`] loop. The reference model is by default the same model with its
//! adapters disabled (no second copy); an explicit reference checkpoint and reference
//! log-probabilities precomputed once (and cached to disk) are the alternatives.
//!
//! With `shared_prefix` (the default) each pair's image and prompt are encoded once and the
//! KV cache is reused for the chosen and the rejected answer; the image features are also
//! reused by the reference pass when nothing in the vision tower or connector trains. The
//! plain path lays the batch out as TRL does (`[chosen rows; rejected rows]`, every row with
//! its own prompt and images); both give the same numbers.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};
use vlmtune_data::preference::{EncodedPair, PreferenceBatch, PreferenceCollator};
use vlmtune_data::{Conversation, PreferenceExample, SftExample};
use vlmtune_model::SmolVlm;
use vlmtune_peft::set_adapters_enabled;

use crate::args::TrainingArgs;
use crate::error::{Result, TrainError};
use crate::memory_plan::StepShape;
use crate::sft::generate_answers;
use crate::trainer::{Accumulation, Objective, ObjectiveOutput, Trainer};

mod logps;
mod loss;

use logps::{host, pair_features};
pub use logps::{plain_logps, shared_prefix_logps, SequenceLogps};
pub use loss::dpo_loss;

/// TRL's DPO loss types implemented by vlmtune.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DpoLossType {
    /// `-log σ(β·Δ)` (the DPO paper).
    Sigmoid,
    /// `(Δ_c/|c| - Δ_r/|r| - 1/(2β))²` (IPO, length-normalised as TRL does).
    Ipo,
    /// `relu(1 - β·Δ)` (SLiC).
    Hinge,
    /// Label-smoothing-robust DPO (`label_smoothing`).
    Robust,
    /// Negative mean log-likelihood of the chosen tokens.
    Sft,
    /// `-log σ(β·(Δ_c/|c| - Δ_r/|r|))`.
    SigmoidNorm,
}

/// Where reference log-probabilities come from.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReferenceSource {
    /// The policy with its adapters disabled (TRL's default for PEFT models).
    #[default]
    AdaptersDisabled,
    /// Another checkpoint folder.
    Checkpoint(PathBuf),
    /// The policy as training starts, frozen (with a continued adapter: that adapter, as TRL's
    /// frozen `ref` copy of it).
    InitialPolicy,
}

fn d_beta() -> f64 {
    0.1
}
fn d_loss() -> Vec<DpoLossType> {
    vec![DpoLossType::Sigmoid]
}
fn d_true() -> bool {
    true
}

/// TRL's `DPOConfig` fields on top of [`TrainingArgs`] (`learning_rate` defaults to 1e-6
/// there; set it in the training arguments).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DpoConfig {
    /// Temperature of the implicit reward.
    #[serde(default = "d_beta")]
    pub beta: f64,
    /// Losses to combine.
    #[serde(default = "d_loss")]
    pub loss_type: Vec<DpoLossType>,
    /// Weights of `loss_type` (default 1 each).
    #[serde(default)]
    pub loss_weights: Option<Vec<f64>>,
    /// Label smoothing of the `robust` loss.
    #[serde(default)]
    pub label_smoothing: f64,
    /// The reference model.
    #[serde(default)]
    pub reference: ReferenceSource,
    /// Compute the reference log-probabilities once before training (cached in
    /// `<output_dir>/ref_logps.json`).
    #[serde(default)]
    pub precompute_ref_log_probs: bool,
    /// Encode each pair's image and prompt once for both answers.
    #[serde(default = "d_true")]
    pub shared_prefix: bool,
    /// Quantisation of an explicit reference checkpoint (the job passes its `[quant]`, so a
    /// QLoRA policy's reference is quantised the same way).
    #[serde(skip)]
    pub reference_quant: Option<vlmtune_quant::QuantConfig>,
}

impl Default for DpoConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("defaults deserialize")
    }
}

impl DpoConfig {
    /// Checks the settings; errors name the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, message: String| {
            Err(TrainError::Config {
                field: field.into(),
                message,
            })
        };
        if self.loss_type.is_empty() {
            return bad("loss_type", "needs at least one loss".into());
        }
        if let Some(w) = &self.loss_weights {
            if w.len() != self.loss_type.len() {
                return bad(
                    "loss_weights",
                    format!(
                        "{} weights for {} loss types",
                        w.len(),
                        self.loss_type.len()
                    ),
                );
            }
        }
        if !(0.0..0.5).contains(&self.label_smoothing) {
            return bad(
                "label_smoothing",
                format!("{} is outside [0, 0.5)", self.label_smoothing),
            );
        }
        if self.beta <= 0.0 {
            return bad("beta", "must be positive".into());
        }
        Ok(())
    }

    fn weights(&self) -> Vec<f64> {
        self.loss_weights
            .clone()
            .unwrap_or_else(|| vec![1.0; self.loss_type.len()])
    }
}

/// Metric name and value pairs, TRL's names.
pub type NamedMetrics = Vec<(&'static str, f64)>;

/// Where the reference numbers of a batch come from at run time.
pub enum Reference<B: Backend> {
    /// The policy with adapters disabled.
    AdaptersDisabled,
    /// A separate model.
    Model(Box<SmolVlm<B>>),
    /// `(chosen, rejected)` per dataset index.
    Precomputed(HashMap<usize, (f64, f64)>),
}

/// DPO's step.
pub struct DpoObjective<AB: AutodiffBackend> {
    /// Settings.
    pub config: DpoConfig,
    /// The reference.
    pub reference: Reference<AB::InnerBackend>,
    /// Held-out pairs.
    pub eval_set: Option<Arc<Vec<PreferenceExample>>>,
    /// Encodes held-out pairs.
    pub collator: Arc<PreferenceCollator>,
    /// Whether the image features can be shared by policy and reference (nothing in the
    /// vision tower or connector trains or carries an adapter).
    pub share_features: bool,
    /// Most new tokens of generated answers to held-out prompts (0: no generation).
    pub eval_max_new_tokens: usize,
}

impl<AB: AutodiffBackend> DpoObjective<AB> {
    fn reference_logps(
        &self,
        policy: &SmolVlm<AB>,
        batch: &PreferenceBatch,
        shared_features: Option<&Vec<Option<Tensor<AB::InnerBackend, 3>>>>,
    ) -> Result<(Vec<f64>, Vec<f64>)> {
        let n = batch.pairs.len();
        let from_model = |model: &SmolVlm<AB::InnerBackend>,
                          features: Option<Vec<Option<Tensor<AB::InnerBackend, 3>>>>|
         -> Result<(Vec<f64>, Vec<f64>)> {
            let seq = if self.config.shared_prefix {
                shared_prefix_logps(model, batch, features)?
            } else {
                plain_logps(model, batch, None)?
            };
            let v: Vec<f64> = host(seq.logps)?.into_iter().map(f64::from).collect();
            Ok((v[..n].to_vec(), v[n..].to_vec()))
        };
        match &self.reference {
            Reference::Precomputed(map) => batch
                .pairs
                .iter()
                .map(|p| {
                    map.get(&p.index)
                        .copied()
                        .ok_or_else(|| TrainError::Config {
                            field: "precompute_ref_log_probs".into(),
                            message: format!(
                                "no reference log-probabilities for example {}",
                                p.index
                            ),
                        })
                })
                .collect::<Result<Vec<_>>>()
                .map(|v| v.into_iter().unzip()),
            Reference::Model(model) => from_model(model, None),
            Reference::AdaptersDisabled => {
                let mut model = policy.valid();
                set_adapters_enabled(&mut model, false)?;
                from_model(&model, shared_features.cloned())
            }
        }
    }

    /// Loss and metrics of a batch under `policy`.
    fn compute(
        &self,
        policy: &SmolVlm<AB>,
        batch: &PreferenceBatch,
    ) -> Result<(Tensor<AB, 1>, NamedMetrics)> {
        let shared: Option<Vec<Option<Tensor<AB::InnerBackend, 3>>>> =
            if self.share_features && self.config.shared_prefix {
                let inner = policy.valid();
                Some(
                    batch
                        .pairs
                        .iter()
                        .map(|p| pair_features(&inner, p))
                        .collect::<Result<_>>()?,
                )
            } else {
                None
            };
        let seq = if self.config.shared_prefix {
            let features = shared.as_ref().map(|list| {
                list.iter()
                    .map(|f| f.clone().map(Tensor::from_inner))
                    .collect()
            });
            shared_prefix_logps(policy, batch, features)?
        } else {
            plain_logps(policy, batch, None)?
        };
        let (rc, rr) = self.reference_logps(policy, batch, shared.as_ref())?;
        dpo_loss(&self.config, &seq, &rc, &rr)
    }
}

impl<AB: AutodiffBackend> Objective<AB> for DpoObjective<AB> {
    type Example = PreferenceExample;
    type Encoder = PreferenceCollator;

    fn items(&self, batch: &PreferenceBatch) -> usize {
        batch.pairs.len()
    }

    fn tokens(&self, batch: &PreferenceBatch) -> usize {
        batch.num_tokens()
    }

    fn step_shape(&self, batch: &PreferenceBatch) -> StepShape {
        // Policy rows: TRL's layout runs prompt + answer twice per pair, each with the
        // images; the shared-prefix layout is costed the same (an upper bound).
        let longest = |f: fn(&EncodedPair) -> usize| batch.pairs.iter().map(f).max().unwrap_or(0);
        StepShape {
            batch_size: 2 * batch.pairs.len(),
            seq_len: longest(|p| p.prompt_ids.len() + p.chosen_ids.len().max(p.rejected_ids.len())),
            tiles: longest(|p| p.images.iter().map(|i| i.frames.len()).sum()),
            labelled: longest(|p| p.chosen_ids.len().max(p.rejected_ids.len())),
        }
    }

    fn loss(
        &mut self,
        model: &SmolVlm<AB>,
        batch: &PreferenceBatch,
        accumulation: Accumulation,
    ) -> Result<Option<ObjectiveOutput<AB>>> {
        if batch.pairs.is_empty() {
            return Ok(None);
        }
        let (loss, metrics) = self.compute(model, batch)?;
        // transformers divides each micro-batch's loss by the accumulation steps.
        Ok(Some(ObjectiveOutput {
            loss: loss / accumulation.micro_batches.max(1) as f64,
            metrics,
        }))
    }

    fn metric_names(&self) -> &'static [&'static str] {
        loss::METRICS
    }

    fn has_eval(&self) -> bool {
        self.eval_set.is_some()
    }

    fn evaluate(&mut self, model: &SmolVlm<AB::InnerBackend>) -> Result<BTreeMap<String, f64>> {
        let Some(eval) = self.eval_set.clone() else {
            return Ok(BTreeMap::new());
        };
        let mut sums: BTreeMap<String, (f64, usize)> = BTreeMap::new();
        let as_autodiff = SmolVlm::<AB>::from_inner(model.clone());
        for (i, chunk) in eval.chunks(8).enumerate() {
            let mut pairs = Vec::new();
            for (j, ex) in chunk.iter().enumerate() {
                if let Some(p) = self.collator.encode(ex, i * 8 + j)? {
                    pairs.push(p);
                }
            }
            if pairs.is_empty() {
                continue;
            }
            let batch = PreferenceBatch { pairs };
            let (loss, metrics) = self.compute(&as_autodiff, &batch)?;
            let l = f64::from(host(loss)?[0]);
            for (k, v) in metrics.into_iter().chain(std::iter::once(("loss", l))) {
                let e = sums.entry(k.to_string()).or_default();
                e.0 += v;
                e.1 += 1;
            }
        }
        let mut out: BTreeMap<String, f64> = sums
            .into_iter()
            .map(|(k, (s, n))| (k, s / n.max(1) as f64))
            .collect();
        if self.eval_max_new_tokens > 0 {
            let questions: Vec<SftExample> = eval.iter().map(chosen_as_sft).collect();
            let answers = generate_answers(
                model,
                &self.collator.sft,
                &questions,
                16,
                self.eval_max_new_tokens,
            )?;
            if !answers.is_empty() {
                let right = answers.iter().filter(|a| a.correct()).count();
                out.insert("accuracy".into(), right as f64 / answers.len() as f64);
            }
        }
        Ok(out)
    }
}

/// The prompt of a pair with its chosen answer as the reference completion.
pub fn chosen_as_sft(pair: &PreferenceExample) -> SftExample {
    SftExample {
        images: pair.images.clone(),
        conversation: Conversation::PromptCompletion {
            prompt: pair.prompt.clone(),
            completion: pair.chosen.clone(),
        },
        origin: pair.origin.clone(),
    }
}

/// Preference optimisation: the shared [`Trainer`] with the DPO objective.
pub type DpoTrainer<AB> = Trainer<AB, DpoObjective<AB>>;

impl<AB: AutodiffBackend> Trainer<AB, DpoObjective<AB>> {
    /// TRL's `DPOTrainer(model, args, train_dataset=..., peft_config=...)`: a new trainable
    /// adapter on the frozen `model`; the reference is the model with it disabled (unless
    /// `config.reference` says otherwise).
    pub fn new_with_peft(
        mut model: SmolVlm<AB>,
        args: TrainingArgs,
        config: DpoConfig,
        collator: Arc<PreferenceCollator>,
        train_set: Vec<PreferenceExample>,
        peft_config: vlmtune_peft::LoraConfig,
        device: AB::Device,
    ) -> Result<Self> {
        vlmtune_peft::add_adapter(&mut model, "default", &peft_config, args.seed)?;
        Ok(Self::new(model, args, config, collator, train_set, device)?.with_adapter(peft_config))
    }

    /// A DPO trainer over `model` (with its trainable adapter). With
    /// `precompute_ref_log_probs`, the reference log-probabilities of every training pair are
    /// computed now, or read from `<output_dir>/ref_logps.json` when it matches.
    pub fn new(
        model: SmolVlm<AB>,
        args: TrainingArgs,
        config: DpoConfig,
        collator: Arc<PreferenceCollator>,
        train_set: Vec<PreferenceExample>,
        device: AB::Device,
    ) -> Result<Self> {
        config.validate()?;
        let params = vlmtune_peft::named_params::<AB, _>(&model);
        let share_features = !params.iter().any(|p| {
            (p.path.starts_with("model.vision_model.") || p.path.starts_with("model.connector."))
                && (p.trainable || !vlmtune_model::checkpoint::is_base_param(&p.path))
        });
        let reference = match &config.reference {
            ReferenceSource::AdaptersDisabled => Reference::AdaptersDisabled,
            // Frozen base tensors are shared, not copied; the adapter values are this
            // snapshot's own once the policy moves.
            ReferenceSource::InitialPolicy => Reference::Model(Box::new(model.valid())),
            ReferenceSource::Checkpoint(dir) => {
                let options = vlmtune_model::LoadOptions {
                    quant: config.reference_quant.clone(),
                };
                let reference = vlmtune_model::load_dir_with(dir, &options, &device)?;
                Reference::Model(Box::new(reference))
            }
        };
        let objective = DpoObjective {
            config,
            reference,
            eval_set: None,
            collator: collator.clone(),
            share_features,
            eval_max_new_tokens: 0,
        };
        let mut trainer =
            Self::with_objective(model, args, objective, collator, train_set, device)?;
        if trainer.objective.config.precompute_ref_log_probs {
            trainer.precompute_reference()?;
        }
        Ok(trainer)
    }

    /// Adds held-out pairs.
    pub fn with_eval(mut self, eval_set: Vec<PreferenceExample>) -> Self {
        self.objective.eval_set = Some(Arc::new(eval_set));
        self
    }

    fn precompute_reference(&mut self) -> Result<()> {
        let path = self.args.output_dir.join("ref_logps.json");
        if let Ok(text) = std::fs::read_to_string(&path) {
            if let Ok(map) = serde_json::from_str::<HashMap<usize, (f64, f64)>>(&text) {
                if map.len() == self.train_set.len() {
                    self.objective.reference = Reference::Precomputed(map);
                    return Ok(());
                }
            }
        }
        let mut map = HashMap::new();
        let train = self.train_set.clone();
        // In the training steps' precision (TRL computes these under the same autocast).
        let _autocast = self.args.autocast();
        for (c, chunk) in train.chunks(8).enumerate() {
            let mut pairs = Vec::new();
            for (j, ex) in chunk.iter().enumerate() {
                if let Some(p) = self.objective.collator.encode(ex, c * 8 + j)? {
                    pairs.push(p);
                }
            }
            let batch = PreferenceBatch { pairs };
            let (rc, rr) = self.objective.reference_logps(&self.model, &batch, None)?;
            for ((p, c), r) in batch.pairs.iter().zip(rc).zip(rr) {
                map.insert(p.index, (c, r));
            }
        }
        std::fs::create_dir_all(&self.args.output_dir).map_err(|source| TrainError::Io {
            path: self.args.output_dir.clone(),
            source,
        })?;
        let json = serde_json::to_string(&map).map_err(|e| TrainError::Readback(e.to_string()))?;
        vlmtune_quant::write_atomic(&path, json.as_bytes())?;
        self.objective.reference = Reference::Precomputed(map);
        Ok(())
    }
}
