//! The SFT job behind `vlmtune sft`: a TOML config (model, dataset, LoRA or full fine-tune,
//! collator, training arguments) turned into a trained adapter or model, with evaluation
//! before and after.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};
use vlmtune_data::collate::{CollatorConfig, SftCollator};
use vlmtune_data::dataset::{self, synthetic, DatasetSource};
use vlmtune_data::{DatasetFormat, FormatKind, OnBadExample, Processor, SftExample};
use vlmtune_model::{load_dir_with, resolve_model, LoadOptions, SmolVlm, Trainable};
use vlmtune_peft::{add_adapter, LoraConfig};
use vlmtune_quant::QuantConfig;
use vlmtune_train::distributed::{launch, Collective, DistributedConfig};
use vlmtune_train::{SftTrainer, TrainingArgs};

pub use super::lora::LoraSection;
use super::Splits;
use crate::error::{Error, Result};

/// `[model]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ModelSection {
    /// `tiny` (the built-in random model), a checkpoint folder, or a Hub id.
    pub name: String,
    /// Seed of the tiny model's random weights.
    pub seed: u64,
}

impl Default for ModelSection {
    fn default() -> Self {
        Self {
            name: "tiny".into(),
            seed: 0,
        }
    }
}

/// `[dataset]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DatasetSection {
    /// `synthetic`, a `.jsonl` / `.parquet` file or folder, or a Hub dataset id.
    pub source: String,
    /// Field mapping: `trl` or `chartqa`.
    pub format: FormatKind,
    /// Column overrides on top of `format`.
    #[serde(flatten)]
    pub fields: DatasetFormat,
    /// Training split (parquet folders and Hub datasets).
    pub split: String,
    /// Held-out split (`none` for no evaluation).
    pub eval_split: String,
    /// Use at most this many training examples.
    pub max_train: Option<usize>,
    /// Use at most this many held-out examples.
    pub max_eval: usize,
    /// Synthetic charts: training examples.
    pub num_train: usize,
    /// Synthetic charts: held-out examples.
    pub num_eval: usize,
    /// Synthetic charts: image side in pixels.
    pub image_size: u32,
    /// Synthetic charts: seed.
    pub seed: u64,
    /// A row that does not parse or an image that does not decode: `error` (stop, naming the
    /// file and row) or `skip` (leave it out; counted at the start and in the summary).
    pub on_bad_example: OnBadExample,
}

impl Default for DatasetSection {
    fn default() -> Self {
        Self {
            source: "synthetic".into(),
            format: FormatKind::Trl,
            fields: DatasetFormat::default(),
            split: "train".into(),
            eval_split: "test".into(),
            max_train: None,
            max_eval: 200,
            num_train: 3000,
            num_eval: 200,
            image_size: 64,
            seed: 1,
            on_bad_example: OnBadExample::Error,
        }
    }
}

/// The whole `sft.toml`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SftJobConfig {
    /// The model.
    pub model: ModelSection,
    /// The data.
    pub dataset: DatasetSection,
    /// LoRA; absent means full fine-tuning of `trainable`.
    pub lora: Option<LoraSection>,
    /// Parts trained in full (default: everything when there is no `[lora]`).
    pub trainable: Option<Trainable>,
    /// `[quant]`: quantised frozen base weights (`BitsAndBytesConfig` names); with `[lora]`,
    /// QLoRA.
    pub quant: Option<QuantConfig>,
    /// Collator settings.
    pub collator: CollatorConfig,
    /// Training arguments (TRL names).
    pub training: TrainingArgs,
    /// Most new tokens of generated evaluation answers.
    pub eval_max_new_tokens: usize,
    /// Data parallelism (ranks on this machine and others).
    pub distributed: DistributedConfig,
}

impl SftJobConfig {
    /// The built-in defaults: the tiny model, synthetic charts, full fine-tuning tuned to
    /// learn them in a few minutes on 2 CPU cores.
    pub fn builtin() -> Self {
        let mut c = Self::default();
        c.training.output_dir = PathBuf::from("runs/sft-tiny");
        c.training.learning_rate = 1e-3;
        c.training.per_device_train_batch_size = 8;
        c.training.max_steps = 2000;
        c.training.warmup_ratio = 0.05;
        c.training.logging_steps = 50;
        c.training.save_steps = 500;
        c.training.save_total_limit = Some(2);
        c.training.eval_steps = Some(500);
        c.training.per_device_eval_batch_size = 32;
        c.training.weight_decay = 0.01;
        c.collator.max_length = Some(256);
        c.eval_max_new_tokens = 6;
        c
    }

    /// Reads a TOML or YAML file (missing fields take TRL's defaults); unknown keys and bad
    /// values are errors naming the file, the line and the key.
    pub fn from_file(path: &Path) -> Result<Self> {
        let (mut config, lora_keys) =
            super::read_config(path, &Self::schema(), crate::trl::TrlJob::Sft)?;
        LoraSection::record_keys(&mut config.lora, lora_keys);
        Ok(config)
    }

    /// Every key a config may have: the defaults with every optional section present.
    pub fn schema() -> Self {
        Self {
            lora: Some(LoraSection::schema()),
            trainable: Some(Trainable::all()),
            quant: Some(QuantConfig::default()),
            ..Self::default()
        }
    }
}

/// What an SFT run produced.
#[derive(Clone, Debug, PartialEq)]
pub struct SftReport {
    /// Loss of every optimizer step.
    pub losses: Vec<f64>,
    /// Held-out accuracy before training (relaxed), if evaluated.
    pub accuracy_before: Option<f64>,
    /// Held-out accuracy after training.
    pub accuracy_after: Option<f64>,
    /// Held-out loss after training.
    pub eval_loss_after: Option<f64>,
    /// Where the final adapter or model was written.
    pub saved_to: PathBuf,
    /// The data-parallel rank this report is of (0 without `[distributed]`); only rank 0
    /// evaluates and saves, so another rank's report has no accuracies and `saved_to` is
    /// where rank 0 saved.
    pub rank: usize,
    /// PEFT-style trainable-parameter line.
    pub trainable: String,
    /// Weight memory at the start of training (frozen, trainable, optimizer state).
    pub memory: String,
    /// Seconds spent in training.
    pub train_seconds: f64,
    /// The answers of the last evaluation.
    pub answers: Vec<vlmtune_train::Answer>,
    /// Accuracy of answering at random among each question's possible answers, for the
    /// synthetic charts.
    pub chance_accuracy: Option<f64>,
    /// Bad examples left out (`on_bad_example = "skip"`): rows at load time plus examples whose
    /// images or text failed to encode during training.
    pub bad_examples: usize,
}

/// PEFT's convention for a model id that is an adapter folder (`adapter_config.json`, no
/// `config.json`): the base is the adapter's `base_model_name_or_path` and the adapter is
/// trained further (`[lora] adapter`). Applied before the model is loaded.
pub fn resolve_adapter_folder(
    model: &mut ModelSection,
    lora: &mut Option<LoraSection>,
) -> Result<()> {
    let dir = PathBuf::from(&model.name);
    if !dir.join(vlmtune_peft::io::CONFIG_FILE).is_file() || dir.join("config.json").is_file() {
        return Ok(());
    }
    let config = LoraConfig::from_file(&dir.join(vlmtune_peft::io::CONFIG_FILE))?;
    let base = config.base_model_name_or_path.clone().ok_or_else(|| {
        Error::Config(format!(
            "{}: an adapter folder as the model needs base_model_name_or_path in adapter_config.json",
            dir.display()
        ))
    })?;
    let section = lora.get_or_insert_with(LoraSection::default);
    match &section.adapter {
        Some(other) if other != &dir => {
            return Err(Error::Config(format!(
                "the model {} is an adapter folder, and [lora] adapter is another one ({})",
                dir.display(),
                other.display()
            )))
        }
        _ => section.adapter = Some(dir),
    }
    model.name = base;
    Ok(())
}

/// The checkpoint folder of `[model]` (writing the tiny model when asked for).
pub fn model_dir<AB: AutodiffBackend>(
    model: &ModelSection,
    output_dir: &Path,
    device: &AB::Device,
) -> Result<PathBuf> {
    if model.name == "tiny" {
        let dir = output_dir.join("base-model");
        crate::builtin::write_tiny_checkpoint::<AB::InnerBackend>(&dir, model.seed, device)?;
        return Ok(dir);
    }
    Ok(resolve_model(&model.name)?)
}

/// Train and held-out examples of `[dataset]`.
pub fn load_examples(config: &DatasetSection) -> Result<Splits<SftExample>> {
    let source = DatasetSource::parse(&config.source)?;
    if source == DatasetSource::Synthetic {
        let train = synthetic::sft_examples(config.seed, 0, config.num_train, config.image_size);
        let eval =
            synthetic::sft_examples(config.seed, 1_000_000, config.num_eval, config.image_size);
        return Ok(Splits {
            train: train.into_iter().map(|(e, _)| e).collect(),
            eval: eval.into_iter().map(|(e, _)| e).collect(),
            skipped: 0,
        });
    }
    let mut format = config.format.format();
    let f = &config.fields;
    for (slot, value) in [
        (&mut format.image_field, &f.image_field),
        (&mut format.messages_field, &f.messages_field),
        (&mut format.prompt_field, &f.prompt_field),
        (&mut format.completion_field, &f.completion_field),
    ] {
        if value.is_some() {
            *slot = value.clone();
        }
    }
    format.system_prompt = f.system_prompt.clone();
    super::load_splits(config, &source, &format, dataset::load_sft)
}

/// Loads the model of `dir` (frozen weights quantised as `quant` says) with a new LoRA
/// adapter (`lora`) or, without one, with the `trainable` parts (default: all) trained in
/// full.
pub fn prepare_model<AB: AutodiffBackend>(
    dir: &Path,
    model_name: &str,
    lora: Option<&LoraSection>,
    trainable: Option<Trainable>,
    quant: Option<&QuantConfig>,
    seed: u64,
    device: &AB::Device,
) -> Result<(SmolVlm<AB>, Option<LoraConfig>)> {
    let options = LoadOptions {
        quant: quant.cloned(),
    };
    let mut model = load_dir_with::<AB>(dir, &options, device)?;
    let full_parts = match lora {
        Some(_) => trainable,
        None => Some(trainable.unwrap_or_else(Trainable::all)),
    };
    if let Some(parts) = full_parts {
        ensure_trainable_not_quantized(&model, parts)?;
    }
    let adapter = match lora {
        Some(
            section @ LoraSection {
                adapter: Some(adapter_dir),
                ..
            },
        ) => {
            let mut loaded = vlmtune_peft::load_adapter(&mut model, adapter_dir, "default")?;
            let conflicts = section.conflicts_with(&loaded);
            if !conflicts.is_empty() {
                return Err(Error::Config(format!(
                    "[lora] contradicts the adapter {} it continues (the adapter's config wins; drop these or make them equal): {}",
                    adapter_dir.display(),
                    conflicts.join("; ")
                )));
            }
            // Trained further, the adapter is no longer saved for inference only.
            loaded.inference_mode = false;
            if loaded.base_model_name_or_path.is_none() {
                loaded.base_model_name_or_path = Some(model_name.to_string());
            }
            if let Some(parts) = trainable {
                model = model.with_trainable(parts);
            }
            Some(loaded)
        }
        Some(section) => {
            let mut lora = section.lora_config();
            lora.base_model_name_or_path = Some(model_name.to_string());
            add_adapter(&mut model, "default", &lora, seed)?;
            if let Some(parts) = trainable {
                model = model.with_trainable(parts);
            }
            Some(lora)
        }
        None => {
            model = model.with_trainable(trainable.unwrap_or_else(Trainable::all));
            None
        }
    };
    Ok((model, adapter))
}

/// Quantised weights are frozen storage: training them in full is a configuration error.
fn ensure_trainable_not_quantized<B: burn::tensor::backend::Backend>(
    model: &SmolVlm<B>,
    parts: Trainable,
) -> Result<()> {
    let offending = vlmtune_peft::quantized_paths(model)
        .into_iter()
        .find(|path| parts.covers(&format!("{path}.weight")));
    match offending {
        None => Ok(()),
        Some(path) => Err(Error::Config(format!(
            "`{path}` is stored quantised ([quant]) but is set to train in full: quantised base weights are frozen; add a [lora] section (QLoRA), or list the module in quant.llm_int8_skip_modules"
        ))),
    }
}

/// Runs the job: evaluates, trains, evaluates, saves to `<output_dir>/final`. With
/// `[distributed]`, every rank trains a replica on its share of the data and rank 0
/// evaluates, logs and saves.
pub fn run_sft<AB: AutodiffBackend>(
    config: &SftJobConfig,
    device: AB::Device,
) -> Result<SftReport> {
    let mut config = config.clone();
    resolve_adapter_folder(&mut config.model, &mut config.lora)?;
    config.distributed.validate()?;
    let config = &config;
    let dir = model_dir::<AB>(&config.model, &config.training.output_dir, &device)?;
    let processor = Processor::from_dir(&dir)?;
    let mut collator = SftCollator::new(processor, config.collator.clone());
    collator.on_bad_example = config.dataset.on_bad_example;
    let collator = Arc::new(collator);
    let splits = load_examples(&config.dataset)?;
    tracing::info!(
        train = splits.train.len(),
        eval = splits.eval.len(),
        "dataset loaded"
    );
    launch::<AB::InnerBackend, _, Error, _>(&config.distributed, device, |collective, device| {
        train_rank::<AB>(config, &dir, collator.clone(), &splits, collective, device)
    })
}

/// One rank of [`run_sft`] (the only one without `[distributed]`).
fn train_rank<AB: AutodiffBackend>(
    config: &SftJobConfig,
    dir: &Path,
    collator: Arc<SftCollator>,
    splits: &Splits<SftExample>,
    collective: Arc<dyn Collective<AB::InnerBackend>>,
    device: AB::Device,
) -> Result<SftReport> {
    let (model, adapter) = prepare_model::<AB>(
        dir,
        &config.model.name,
        config.lora.as_ref(),
        config.trainable,
        config.quant.as_ref(),
        config.training.seed,
        &device,
    )?;
    let mut trainer = SftTrainer::new(
        model,
        config.training.clone(),
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
    if !splits.eval.is_empty() && trainer.is_main() {
        trainer = trainer.with_eval(splits.eval.clone());
    }
    let trainable = vlmtune_peft::trainable_report::<AB, _>(&trainer.model).to_string();
    let memory = vlmtune_peft::memory_report::<AB, _>(&trainer.model).to_string();
    let accuracy_before = match (
        &trainer.objective.eval_set,
        &config.training.resume_from_checkpoint,
    ) {
        (Some(_), None) => trainer.evaluate()?.accuracy,
        _ => None,
    };
    let start = std::time::Instant::now();
    let losses = trainer.train()?;
    let train_seconds = start.elapsed().as_secs_f64();
    let after = if trainer.objective.eval_set.is_some() {
        trainer
            .state
            .log_history
            .iter()
            .rev()
            .find(|r| r.get("eval_loss").is_some())
            .cloned()
    } else {
        None
    };
    let saved_to = config.training.output_dir.join("final");
    let rank = trainer.rank();
    if trainer.is_main() {
        trainer.save_model(&saved_to)?;
    }
    let synthetic =
        DatasetSource::parse(&config.dataset.source).ok() == Some(DatasetSource::Synthetic);
    Ok(SftReport {
        losses,
        accuracy_before,
        accuracy_after: after.as_ref().and_then(|r| r["eval_accuracy"].as_f64()),
        eval_loss_after: after.as_ref().and_then(|r| r["eval_loss"].as_f64()),
        saved_to,
        rank,
        trainable,
        memory,
        train_seconds,
        answers: trainer
            .objective
            .last_eval
            .map(|e| e.answers)
            .unwrap_or_default(),
        chance_accuracy: synthetic.then(synthetic::chance_accuracy),
        bad_examples: splits.skipped + trainer.encoder.bad_examples(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vlmtune_peft::LoraPreset;

    fn parse(text: &str) -> Result<SftJobConfig> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sft.toml");
        std::fs::write(&path, text).unwrap();
        SftJobConfig::from_file(&path)
    }

    #[test]
    fn example_config_and_quant_section_parse() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/sft.toml");
        let text = std::fs::read_to_string(example).unwrap();
        let c = parse(&text).unwrap();
        assert_eq!(c.training.learning_rate, 2e-4);
        assert_eq!(c.quant, None);
        // The commented QLoRA section, switched on.
        let qlora = text
            .replace("# [quant]", "[quant]")
            .replace("# load_in_4bit", "load_in_4bit");
        let qlora = qlora
            .replace("# bnb_4bit", "bnb_4bit")
            .replace("# llm_int8", "llm_int8");
        assert_eq!(parse(&qlora).unwrap().quant, Some(QuantConfig::nf4()));
        let err = parse("[quant]\nload_in_4bits = true\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("quant") && err.contains("load_in_4bits"),
            "{err}"
        );
    }

    #[test]
    fn distributed_section_parses_and_typos_are_named() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/sft.toml");
        let text = std::fs::read_to_string(example).unwrap();
        let on = text
            .replace("# [distributed]", "[distributed]")
            .replace("# nproc_per_node", "nproc_per_node")
            .replace("# master_addr", "master_addr")
            .replace("# nnodes = 1", "nnodes = 2");
        let c = parse(&on).unwrap();
        assert_eq!(c.distributed.nproc_per_node, 2);
        assert_eq!(c.distributed.world(), 4);
        c.distributed.validate().unwrap();
        let err = parse("[distributed]\nnproc_per_nod = 2\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("nproc_per_node"), "{err}");
    }

    #[test]
    fn training_quantised_weights_in_full_is_a_config_error() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-smolvlm");
        let quant = QuantConfig::nf4();
        let prepare = |lora: Option<&LoraSection>| {
            prepare_model::<crate::backend::CpuBackend>(
                &dir,
                "tiny",
                lora,
                None,
                Some(&quant),
                0,
                &Default::default(),
            )
        };
        let err = prepare(None)
            .expect_err("full fine-tuning of NF4 weights")
            .to_string();
        assert!(
            err.contains("model.text_model.layers.0") && err.contains("[lora]"),
            "{err}"
        );
        let lora = LoraSection {
            preset: Some(LoraPreset::TextAttention),
            config: LoraPreset::TextAttention.config(4, 8.0),
            ..LoraSection::default()
        };
        assert!(prepare(Some(&lora)).is_ok(), "QLoRA is fine");
    }
}
