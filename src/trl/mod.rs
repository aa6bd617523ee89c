//! TRL's flat config keys (what `trl sft --config x.yaml` and `trl sft --key value` take:
//! `ScriptArguments`, `ModelConfig`, `SFTConfig` / `DPOConfig` with `TrainingArguments`),
//! translated into vlmtune's sections with TRL's meaning and defaults.
//!
//! Every key falls in one of four classes: implemented (translated), infrastructure (a warning:
//! `report_to: wandb`, `push_to_hub`, ...), known to TRL but not implemented (an error listing
//! them, unless the value is TRL's default, which asks for nothing), or unknown (an error with
//! the nearest key).

mod known_keys;

use std::collections::{BTreeMap, HashMap};

use serde_json::{json, Map, Value};

use crate::config_file::{closest, ConfigDocument};
use crate::error::{Error, Result};

/// Which TRL script the keys are for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrlJob {
    /// `trl sft`.
    Sft,
    /// `trl dpo`.
    Dpo,
}

impl TrlJob {
    fn tables(self) -> [&'static [(&'static str, &'static str)]; 3] {
        let config = match self {
            Self::Sft => known_keys::SFT_CONFIG,
            Self::Dpo => known_keys::DPO_CONFIG,
        };
        [
            known_keys::SCRIPT_ARGUMENTS,
            known_keys::MODEL_CONFIG,
            config,
        ]
    }

    /// TRL's default of `key` as JSON, if TRL knows the key.
    fn default_of(self, key: &str) -> Option<Value> {
        self.tables()
            .iter()
            .flat_map(|t| t.iter())
            .find(|(k, _)| *k == key)
            .map(|(_, d)| serde_json::from_str(d).unwrap_or(Value::Null))
    }
}

/// Whether `key` is a TRL key of `job` (or one of the older names vlmtune also reads).
pub fn knows(job: TrlJob, key: &str) -> bool {
    all_keys(job).any(|k| k == key)
}

/// vlmtune sections whose presence marks a config as vlmtune's own layout.
const SECTIONS: [&str; 8] = [
    "model",
    "dataset",
    "lora",
    "trainable",
    "quant",
    "collator",
    "training",
    "dpo",
];

/// Whether a document is TRL's flat layout (no top-level key is a vlmtune section).
pub fn is_flat(doc: &Value) -> bool {
    doc.as_object()
        .is_some_and(|m| !m.keys().any(|k| SECTIONS.contains(&k.as_str())))
}

/// `TrainingArguments` / `SFTConfig` / `DPOConfig` keys that are `[training]` fields of the same
/// name and meaning.
const TRAINING_KEYS: &[&str] = &[
    "output_dir",
    "per_device_train_batch_size",
    "per_device_eval_batch_size",
    "gradient_accumulation_steps",
    "num_train_epochs",
    "max_steps",
    "learning_rate",
    "lr_scheduler_type",
    "warmup_ratio",
    "weight_decay",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "max_grad_norm",
    "logging_steps",
    "save_steps",
    "save_total_limit",
    "eval_steps",
    "seed",
    "bf16",
    "gradient_checkpointing",
    "auto_find_batch_size",
    "resume_from_checkpoint",
    "dataloader_num_workers",
    "logging_dir",
    "report_to",
];

/// Keys about where a run is reported, pushed or scheduled: vlmtune has no such machinery, so
/// they are warned about and have no effect.
const INFRASTRUCTURE: &[&str] = &[
    "report_to",
    "push_to_hub",
    "hub_model_id",
    "hub_strategy",
    "hub_token",
    "hub_private_repo",
    "hub_always_push",
    "hub_revision",
    "run_name",
    "project",
    "trackio_space_id",
    "trackio_bucket_id",
    "trackio_static_space_id",
    "logging_first_step",
    "logging_nan_inf_filter",
    "log_level",
    "log_level_replica",
    "log_on_each_node",
    "disable_tqdm",
    "dataloader_pin_memory",
    "dataloader_persistent_workers",
    "dataloader_prefetch_factor",
    "dataset_num_proc",
    "ddp_backend",
    "ddp_broadcast_buffers",
    "ddp_bucket_cap_mb",
    "ddp_find_unused_parameters",
    "ddp_static_graph",
    "ddp_timeout",
    "local_rank",
    "save_on_each_node",
    "skip_memory_metrics",
    "use_cpu",
    "tf32",
    "torch_compile",
    "torch_compile_backend",
    "torch_compile_mode",
    "torch_empty_cache_steps",
    "do_train",
    "do_eval",
    "do_predict",
    "remove_unused_columns",
    "trust_remote_code",
    "attn_implementation",
    "lora_task_type",
    "bnb_4bit_quant_storage",
    "gradient_checkpointing_kwargs",
    "activation_checkpointing_kwargs",
    "gradient_checkpointing_use_reentrant",
    "ignore_bias_buffers",
    "model_init_kwargs",
];

/// A translated flat config: vlmtune sections (with the original lines) and the warnings.
pub struct Translated {
    /// The document in vlmtune's layout.
    pub doc: ConfigDocument,
    /// Keys that were read but have no effect here.
    pub warnings: Vec<String>,
}

/// Translates a flat TRL document (`doc.value` an object of TRL keys) for `job`; with
/// `trl_defaults`, TRL's defaults are filled in where they differ from vlmtune's (a whole TRL
/// config), without them only the keys given are (overrides on the command line).
pub fn translate(doc: &ConfigDocument, job: TrlJob, trl_defaults: bool) -> Result<Translated> {
    let keys = doc.value.as_object().cloned().unwrap_or_default();
    let mut out = Sections::default();
    let mut warnings = Vec::new();
    let mut unsupported = Vec::new();
    let mut unknown = Vec::new();
    if trl_defaults {
        // TRL's defaults that differ from vlmtune's own.
        out.set("training", "gradient_checkpointing", json!(true), None);
        out.set("collator", "assistant_only_loss", json!(false), None);
        out.set("dataset", "eval_split", json!("none"), None);
        if job == TrlJob::Dpo {
            out.set("training", "learning_rate", json!(1e-6), None);
        }
    }
    let mut lora = Map::new();
    let mut use_peft = false;
    for (key, value) in &keys {
        let line = doc.line_of(key);
        let at = |s: &str| format!("{}: {s}", location(doc, line));
        let mut to = |section: &str, field: &str, v: Value| out.set(section, field, v, line);
        match key.as_str() {
            "report_to" if value_is(value, &["none", "tensorboard"]) => {
                to("training", "report_to", list_of(value))
            }
            k if TRAINING_KEYS.contains(&k) && k != "report_to" => to("training", k, value.clone()),
            "activation_checkpointing" => to("training", "gradient_checkpointing", value.clone()),
            // transformers 5: a warmup_steps below 1 is a ratio of the total steps.
            "warmup_steps" => match value.as_f64() {
                Some(r) if r > 0.0 && r < 1.0 => to("training", "warmup_ratio", value.clone()),
                _ => to("training", "warmup_steps", value.clone()),
            },
            "eval_strategy" => match value.as_str() {
                Some("no") => {}
                Some("steps") => {
                    to(
                        "dataset",
                        "eval_split",
                        keys.get("dataset_test_split")
                            .cloned()
                            .unwrap_or(json!("test")),
                    );
                    if !keys.contains_key("eval_steps") {
                        let logging = keys.get("logging_steps").cloned().unwrap_or(json!(10));
                        to("training", "eval_steps", logging);
                    }
                }
                _ => unsupported.push(at(&format!(
                    "eval_strategy: {value} (vlmtune evaluates by steps: `steps` or `no`)"
                ))),
            },
            "save_strategy" => match value.as_str() {
                Some("steps") => {}
                Some("no") => to("training", "save_steps", json!(0)),
                _ => unsupported.push(at(&format!("save_strategy: {value} (`steps` or `no`)"))),
            },
            "logging_strategy" if value_is(value, &["steps"]) => {}
            "optim"
                if value_is(
                    value,
                    &[
                        "adamw_torch",
                        "adamw_torch_fused",
                        "adamw_hf",
                        "adamw_8bit",
                        "adamw_bnb_8bit",
                        "paged_adamw_8bit",
                    ],
                ) =>
            {
                to("training", "optim", value.clone())
            }
            "dtype" | "torch_dtype" => match value.as_str() {
                None | Some("auto" | "float32") => {}
                Some("bfloat16") => to("training", "bf16", json!(true)),
                _ => unsupported.push(at(&format!("{key}: {value} (float32 or bfloat16)"))),
            },
            "model_name_or_path" => to("model", "name", value.clone()),
            "model_revision" if value_is(value, &["main"]) => {}
            "dataset_name" => to("dataset", "source", value.clone()),
            "dataset_train_split" => to("dataset", "split", value.clone()),
            "dataset_test_split" if !trl_defaults => to("dataset", "eval_split", value.clone()),
            "dataset_test_split" => {}
            "max_length" => to("collator", "max_length", value.clone()),
            "completion_only_loss" | "assistant_only_loss" if !value.is_null() => {
                to("collator", key, value.clone())
            }
            "use_peft" => use_peft = value.as_bool().unwrap_or(false),
            "lora_r" => drop(lora.insert("r".into(), value.clone())),
            "lora_alpha" | "lora_dropout" | "use_rslora" | "use_dora" => {
                drop(lora.insert(key.clone(), value.clone()))
            }
            "lora_target_modules" => drop(lora.insert("target_modules".into(), value.clone())),
            "lora_modules_to_save" => drop(lora.insert("modules_to_save".into(), value.clone())),
            "load_in_4bit" | "load_in_8bit" | "bnb_4bit_quant_type" => {
                to("quant", key, value.clone())
            }
            "use_bnb_nested_quant" => to("quant", "bnb_4bit_use_double_quant", value.clone()),
            "beta" | "loss_weights" | "label_smoothing" | "precompute_ref_log_probs"
                if job == TrlJob::Dpo =>
            {
                to("dpo", key, value.clone())
            }
            "loss_type" if job == TrlJob::Dpo => to("dpo", "loss_type", list_of(value)),
            k if INFRASTRUCTURE.contains(&k) => {
                let default = job.default_of(k).unwrap_or(Value::Null);
                if !same_value(value, &default) {
                    warnings.push(at(&format!("`{k}: {value}` has no effect in vlmtune")));
                }
            }
            k => match job.default_of(k) {
                Some(default) if same_value(value, &default) => {}
                Some(_) => unsupported.push(at(&format!("{k}: {value}"))),
                None => unknown.push(at(&format!(
                    "unknown key `{k}`{}",
                    closest(k, all_keys(job))
                        .map(|c| format!("; did you mean `{c}`?"))
                        .unwrap_or_default()
                ))),
            },
        }
    }
    let adapter_folder = keys
        .get("model_name_or_path")
        .and_then(Value::as_str)
        .is_some_and(|m| {
            std::path::Path::new(m)
                .join("adapter_config.json")
                .is_file()
        });
    if use_peft && adapter_folder {
        // PEFT's convention: the adapter's own config decides; ModelConfig's LoRA defaults do
        // not apply (the job loads it from the folder).
        let line = doc.line_of("use_peft");
        for (k, v) in lora {
            out.set("lora", &k, v, line);
        }
    } else if use_peft {
        if !lora.contains_key("target_modules") {
            unsupported.push(format!(
                "{}: use_peft needs lora_target_modules (PEFT has no default target modules for SmolVLM / Idefics3): a list, or all-linear",
                location(doc, doc.line_of("use_peft"))
            ));
        }
        let mut section = Map::new();
        // ModelConfig's LoRA defaults.
        section.insert("r".into(), json!(16));
        section.insert("lora_alpha".into(), json!(32));
        section.insert("lora_dropout".into(), json!(0.05));
        section.extend(lora);
        let line = doc.line_of("use_peft");
        for (k, v) in section {
            out.set("lora", &k, v, line);
        }
    } else if let Some(k) = lora.keys().next() {
        warnings.push(format!(
            "{}: LoRA keys without use_peft: true have no effect (TRL trains in full)",
            location(doc, doc.line_of(if k == "r" { "lora_r" } else { k }))
        ));
    }
    let errors: Vec<String> = unknown
        .into_iter()
        .chain(unsupported.into_iter().map(|u| {
            format!("{u}: a TRL setting vlmtune does not implement (only its default is accepted)")
        }))
        .collect();
    if !errors.is_empty() {
        return Err(Error::Config(errors.join("\n")));
    }
    Ok(Translated {
        doc: ConfigDocument::from_parts(doc.path.clone(), out.value(), out.lines),
        warnings,
    })
}

fn location(doc: &ConfigDocument, line: Option<usize>) -> String {
    match line {
        Some(l) => format!("{}:{l}", doc.path.display()),
        None => doc.path.display().to_string(),
    }
}

fn all_keys(job: TrlJob) -> impl Iterator<Item = &'static str> {
    job.tables()
        .into_iter()
        .flat_map(|t| t.iter().map(|(k, _)| *k))
        .chain(["warmup_ratio", "logging_dir", "torch_dtype"])
}

fn value_is(value: &Value, allowed: &[&str]) -> bool {
    match value {
        Value::String(s) => allowed.contains(&s.as_str()),
        Value::Array(items) => items.iter().all(|v| value_is(v, allowed)),
        _ => false,
    }
}

fn list_of(value: &Value) -> Value {
    match value {
        Value::Array(_) => value.clone(),
        other => json!([other]),
    }
}

/// Equal as TRL would read them (`1` equals `1.0`).
fn same_value(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

/// The sections being built, with the line each value came from.
#[derive(Default)]
struct Sections {
    tables: BTreeMap<String, Map<String, Value>>,
    lines: HashMap<String, usize>,
}

impl Sections {
    fn set(&mut self, section: &str, key: &str, value: Value, line: Option<usize>) {
        self.tables
            .entry(section.to_string())
            .or_default()
            .insert(key.to_string(), value);
        if let Some(l) = line {
            self.lines.insert(format!("{section}.{key}"), l);
            self.lines.entry(section.to_string()).or_insert(l);
        }
    }

    fn value(&self) -> Value {
        Value::Object(
            self.tables
                .iter()
                .map(|(k, v)| (k.clone(), Value::Object(v.clone())))
                .collect(),
        )
    }
}

/// Applies TRL keys given on the command line over `config` (a job config), as `trl` would
/// read them; `trl_defaults` as in [`translate`].
pub fn apply_overrides<T: serde::Serialize + serde::de::DeserializeOwned>(
    config: &T,
    overrides: &Map<String, Value>,
    job: TrlJob,
    trl_defaults: bool,
) -> Result<T> {
    let doc = ConfigDocument::from_parts(
        "command line".into(),
        Value::Object(overrides.clone()),
        HashMap::new(),
    );
    let translated = translate(&doc, job, trl_defaults)?;
    for warning in &translated.warnings {
        tracing::warn!("{warning}");
    }
    let mut base =
        serde_json::to_value(config).map_err(|e| Error::Config(format!("config: {e}")))?;
    merge(&mut base, &translated.doc.value);
    serde_path_to_error::deserialize(base)
        .map_err(|e| Error::Config(format!("command line: field `{}`: {}", e.path(), e.inner())))
}

/// Overwrites `base` with `over`, table by table (a null table in `base` takes `over`'s).
fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(slot @ Value::Object(_)) => merge(slot, v),
                    Some(slot) => *slot = v.clone(),
                    None => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}
