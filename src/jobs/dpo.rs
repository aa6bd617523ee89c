//! The DPO job behind `vlmtune dpo`: a TOML config (model, preference data, LoRA, `[dpo]`,
//! training arguments) turned into a trained adapter, with reward and answer accuracy on
//! held-out pairs before and after.

use std::path::PathBuf;
use std::sync::Arc;

use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};
use vlmtune_data::collate::{CollatorConfig, SftCollator};
use vlmtune_data::dataset::{self, synthetic, DatasetSource};
use vlmtune_data::{PreferenceCollator, PreferenceExample, Processor};
use vlmtune_model::Trainable;
use vlmtune_peft::LoraPreset;
use vlmtune_train::distributed::{launch, Collective, DistributedConfig};
use vlmtune_train::{DpoConfig, DpoTrainer, Objective, ReferenceSource, TrainingArgs};

use super::sft::{model_dir, prepare_model, DatasetSection, LoraSection, ModelSection};
use super::Splits;
use crate::error::{Error, Result};

/// The whole `dpo.toml`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DpoJobConfig {
    /// The policy's starting point (`tiny`, a folder, or a Hub id).
    pub model: ModelSection,
    /// Preference data (`prompt`, `chosen`, `rejected`, images).
    pub dataset: DatasetSection,
    /// The adapter trained (DPO on a frozen base).
    pub lora: Option<LoraSection>,
    /// Parts trained in full when there is no `[lora]`.
    pub trainable: Option<Trainable>,
    /// `[quant]`: quantised frozen base weights (QLoRA with `[lora]`).
    pub quant: Option<vlmtune_quant::QuantConfig>,
    /// DPO settings (TRL's `DPOConfig` names).
    pub dpo: DpoConfig,
    /// Collator settings.
    pub collator: CollatorConfig,
    /// Training arguments.
    pub training: TrainingArgs,
    /// Most new tokens of generated answers to held-out prompts.
    pub eval_max_new_tokens: usize,
    /// Data parallelism (ranks on this machine and others).
    pub distributed: DistributedConfig,
}

impl DpoJobConfig {
    /// Defaults that continue the SFT main job: the model in `runs/sft-tiny/final`, a new
    /// LoRA adapter on every Linear, synthetic chart pairs (chosen = the right answer,
    /// rejected = a plausible wrong one), the base (SFT) model as reference, and TRL's
    /// `loss_type = ["sigmoid", "sft"]` (DPO plus the chosen answers' likelihood, which keeps
    /// generation from drifting).
    pub fn builtin() -> Self {
        let mut c = Self {
            model: ModelSection {
                name: "runs/sft-tiny/final".into(),
                seed: 0,
            },
            ..Self::default()
        };
        c.dataset.num_train = 2000;
        c.dataset.num_eval = 200;
        c.dataset.seed = 7;
        c.lora = Some(LoraSection {
            preset: Some(LoraPreset::AllLinear),
            config: LoraPreset::AllLinear.config(16, 32.0),
            ..LoraSection::default()
        });
        c.dpo.beta = 0.1;
        c.dpo.loss_type = vec![
            vlmtune_train::DpoLossType::Sigmoid,
            vlmtune_train::DpoLossType::Sft,
        ];
        c.training.output_dir = PathBuf::from("runs/dpo-tiny");
        c.training.learning_rate = 5e-4;
        c.training.per_device_train_batch_size = 8;
        c.training.max_steps = 300;
        c.training.warmup_ratio = 0.05;
        c.training.logging_steps = 10;
        c.training.save_steps = 0;
        c.training.eval_steps = Some(100);
        c.collator.max_length = Some(256);
        c.eval_max_new_tokens = 6;
        c
    }

    /// Reads a TOML or YAML file (missing fields take TRL's defaults); unknown keys and bad
    /// values are errors naming the file, the line and the key.
    pub fn from_file(path: &std::path::Path) -> Result<Self> {
        let (mut config, lora_keys) =
            super::read_config(path, &Self::schema(), crate::trl::TrlJob::Dpo)?;
        LoraSection::record_keys(&mut config.lora, lora_keys);
        Ok(config)
    }

    /// Every key a config may have: the defaults with every optional section present.
    pub fn schema() -> Self {
        Self {
            lora: Some(LoraSection::schema()),
            trainable: Some(Trainable::all()),
            quant: Some(vlmtune_quant::QuantConfig::default()),
            ..Self::default()
        }
    }
}

/// Train and held-out pairs of `[dataset]`.
pub fn load_pairs(config: &DatasetSection) -> Result<Splits<PreferenceExample>> {
    let source = DatasetSource::parse(&config.source)?;
    if source == DatasetSource::Synthetic {
        let train =
            synthetic::preference_examples(config.seed, 0, config.num_train, config.image_size);
        let eval = synthetic::preference_examples(
            config.seed,
            1_000_000,
            config.num_eval,
            config.image_size,
        );
        return Ok(Splits {
            train,
            eval,
            skipped: 0,
        });
    }
    let mut format = config.format.format();
    format.prompt_field = config.fields.prompt_field.clone().or(format.prompt_field);
    format.chosen_field = config.fields.chosen_field.clone();
    format.rejected_field = config.fields.rejected_field.clone();
    format.image_field = config.fields.image_field.clone().or(format.image_field);
    super::load_splits(config, &source, &format, dataset::load_preference)
}

/// What a DPO run produced.
#[derive(Clone, Debug, PartialEq)]
pub struct DpoReport {
    /// Loss of every step.
    pub losses: Vec<f64>,
    /// Held-out metrics before training (`rewards/accuracies`, `accuracy`, ...).
    pub before: std::collections::BTreeMap<String, f64>,
    /// Held-out metrics after training.
    pub after: std::collections::BTreeMap<String, f64>,
    /// Where the adapter was saved.
    pub saved_to: PathBuf,
    /// The data-parallel rank this report is of (0 without `[distributed]`); only rank 0
    /// evaluates and saves, so another rank's report has no accuracies and `saved_to` is
    /// where rank 0 saved.
    pub rank: usize,
    /// Seconds of training.
    pub train_seconds: f64,
    /// Bad pairs left out (`on_bad_example = "skip"`), at load time and while training.
    pub bad_examples: usize,
}

/// Runs the job.
pub fn run_dpo<AB: AutodiffBackend>(
    config: &DpoJobConfig,
    device: AB::Device,
) -> Result<DpoReport> {
    if config.model.name == "runs/sft-tiny/final"
        && !std::path::Path::new(&config.model.name).exists()
    {
        return Err(crate::Error::Config(
            "runs/sft-tiny/final does not exist: run `vlmtune sft` first (the DPO defaults continue the SFT main job)".into(),
        ));
    }
    let mut config = config.clone();
    super::sft::resolve_adapter_folder(&mut config.model, &mut config.lora)?;
    let continued = config.lora.as_ref().is_some_and(|l| l.adapter.is_some());
    if continued && config.dpo.reference == ReferenceSource::AdaptersDisabled {
        // TRL copies a loaded adapter into a frozen `ref` adapter: the reference is the
        // policy as it starts, not the bare base.
        config.dpo.reference = ReferenceSource::InitialPolicy;
    }
    config.distributed.validate()?;
    let config = &config;
    let dir = model_dir::<AB>(&config.model, &config.training.output_dir, &device)?;
    let processor = Processor::from_dir(&dir)?;
    let mut sft = SftCollator::new(processor, config.collator.clone());
    sft.on_bad_example = config.dataset.on_bad_example;
    let collator = Arc::new(PreferenceCollator { sft });
    let splits = load_pairs(&config.dataset)?;
    launch::<AB::InnerBackend, _, Error, _>(&config.distributed, device, |collective, device| {
        train_rank::<AB>(config, &dir, collator.clone(), &splits, collective, device)
    })
}

/// One rank of [`run_dpo`] (the only one without `[distributed]`).
fn train_rank<AB: AutodiffBackend>(
    config: &DpoJobConfig,
    dir: &std::path::Path,
    collator: Arc<PreferenceCollator>,
    splits: &Splits<PreferenceExample>,
    collective: Arc<dyn Collective<AB::InnerBackend>>,
    device: AB::Device,
) -> Result<DpoReport> {
    let (model, adapter) = prepare_model::<AB>(
        dir,
        &config.model.name,
        config.lora.as_ref(),
        config.trainable,
        config.quant.as_ref(),
        config.training.seed,
        &device,
    )?;
    let mut dpo = config.dpo.clone();
    dpo.reference_quant = config.quant.clone();
    let mut trainer = DpoTrainer::new(
        model,
        config.training.clone(),
        dpo,
        collator,
        splits.train.clone(),
        device,
    )?
    .with_collective(collective);
    trainer.base_dir = Some(dir.to_path_buf());
    trainer.objective.eval_max_new_tokens = config.eval_max_new_tokens;
    if let Some(lora) = adapter {
        trainer = trainer.with_adapter(lora);
    }
    let has_eval = !splits.eval.is_empty() && trainer.is_main();
    if has_eval {
        trainer = trainer.with_eval(splits.eval.clone());
    }
    let before = if has_eval && config.training.resume_from_checkpoint.is_none() {
        let inner = burn::module::AutodiffModule::valid(&trainer.model);
        trainer.objective.evaluate(&inner)?
    } else {
        Default::default()
    };
    let start = std::time::Instant::now();
    let losses = trainer.train()?;
    let train_seconds = start.elapsed().as_secs_f64();
    let after = trainer
        .state
        .log_history
        .iter()
        .rev()
        .find(|r| r.get("eval_loss").is_some())
        .and_then(|r| r.as_object())
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.strip_prefix("eval_")?.to_string(), v.as_f64()?)))
                .collect()
        })
        .unwrap_or_default();
    let saved_to = config.training.output_dir.join("final");
    let rank = trainer.rank();
    if trainer.is_main() {
        trainer.save_model(&saved_to)?;
    }
    Ok(DpoReport {
        losses,
        before,
        after,
        saved_to,
        rank,
        train_seconds,
        bad_examples: splits.skipped + trainer.encoder.sft.bad_examples(),
    })
}
