//! End-to-end jobs (what the CLI subcommands run), usable from Rust too.

pub mod dpo;
pub mod lora;
pub mod sft;

use std::path::Path;

use vlmtune_data::dataset::DatasetSource;
use vlmtune_data::{DatasetFormat, Loaded, OnBadExample};

use crate::config_file::ConfigDocument;
use crate::error::{Error, Result};
use crate::trl::TrlJob;

/// Reads a job's config file (TOML or YAML; missing fields take their defaults). Keys the
/// `schema` (the config's serialised form with every optional section present) lacks are
/// errors naming the file, the line, the key and the nearest valid key. Also returns the keys
/// written in `[lora]` (which of its settings the user chose).
///
/// A YAML file may also be TRL's flat layout (`trl sft --config` files: `model_name_or_path`,
/// `learning_rate`, `use_peft`, ...), translated by [`crate::trl`].
pub(crate) fn read_config<T: serde::de::DeserializeOwned + serde::Serialize>(
    path: &Path,
    schema: &T,
    job: TrlJob,
) -> Result<(T, Vec<String>)> {
    let schema =
        serde_json::to_value(schema).map_err(|e| Error::Config(format!("config schema: {e}")))?;
    let doc = ConfigDocument::read(path)?;
    let doc = if doc.is_yaml() && crate::trl::is_flat(&doc.value) {
        let translated = crate::trl::translate(&doc, job, true)?;
        for warning in &translated.warnings {
            tracing::warn!("{warning}");
        }
        translated.doc
    } else {
        doc
    };
    let lora_keys = doc
        .value
        .get("lora")
        .and_then(|l| l.as_object())
        .map(|l| l.keys().cloned().collect())
        .unwrap_or_default();
    Ok((doc.deserialize(&with_peft_lora_fields(schema))?, lora_keys))
}

/// PEFT `LoraConfig` fields vlmtune does not model are still valid `[lora]` keys (the ones
/// that switch on a missing feature are refused by `LoraConfig::validate`).
fn with_peft_lora_fields(mut schema: serde_json::Value) -> serde_json::Value {
    if let Some(lora) = schema.get_mut("lora").and_then(|l| l.as_object_mut()) {
        for key in vlmtune_peft::PEFT_FIELDS_NOT_MODELLED {
            lora.entry(key).or_insert(serde_json::Value::Null);
        }
    }
    schema
}

/// The examples of a job's `[dataset]`.
pub struct Splits<T> {
    /// Training examples.
    pub train: Vec<T>,
    /// Held-out examples (empty: no evaluation).
    pub eval: Vec<T>,
    /// Rows left out while loading (`on_bad_example = "skip"`).
    pub skipped: usize,
}

/// Train and held-out examples of a non-synthetic `[dataset]`, read by `load` per split:
/// `max_train` / `max_eval` applied, no held-out set for a single file or `eval_split = "none"`,
/// bad rows handled as `on_bad_example` says (skips logged here, at the start of the run).
pub(crate) fn load_splits<T>(
    config: &sft::DatasetSection,
    source: &DatasetSource,
    format: &DatasetFormat,
    load: impl Fn(&DatasetSource, &DatasetFormat, &str, OnBadExample) -> vlmtune_data::Result<Loaded<T>>,
) -> Result<Splits<T>> {
    let on_bad = config.on_bad_example;
    let mut train = load(source, format, &config.split, on_bad)?;
    if let Some(n) = config.max_train {
        train.examples.truncate(n);
    }
    let single_file = matches!(source, DatasetSource::Path(p) if p.is_file());
    let eval = if config.eval_split == "none" || single_file {
        Loaded::default()
    } else {
        let mut eval = load(source, format, &config.eval_split, on_bad)?;
        eval.examples.truncate(config.max_eval);
        eval
    };
    let skipped: Vec<_> = train.skipped.iter().chain(&eval.skipped).collect();
    if let Some(first) = skipped.first() {
        tracing::warn!(
            skipped = skipped.len(),
            first = %first,
            "bad dataset rows left out (on_bad_example = \"skip\")"
        );
    }
    Ok(Splits {
        skipped: skipped.len(),
        train: train.examples,
        eval: eval.examples,
    })
}
