//! End-to-end jobs (what the CLI subcommands run), usable from Rust too.

pub mod dpo;
pub mod sft;

use std::path::Path;

use vlmtune_data::dataset::DatasetSource;
use vlmtune_data::DatasetFormat;

use crate::error::{Error, Result};

/// Reads a job's TOML file (missing fields take their defaults); errors name the file and
/// the field.
pub(crate) fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|source| vlmtune_data::DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let de = toml::Deserializer::parse(&text)
        .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        Error::Config(format!(
            "{}: field `{}`: {}",
            path.display(),
            e.path(),
            e.inner()
        ))
    })
}

/// Train and held-out examples of a non-synthetic `[dataset]`, read by `load` per split:
/// `max_train` / `max_eval` applied, no held-out set for a single file or `eval_split = "none"`.
pub(crate) fn load_splits<T>(
    config: &sft::DatasetSection,
    source: &DatasetSource,
    format: &DatasetFormat,
    load: impl Fn(&DatasetSource, &DatasetFormat, &str) -> vlmtune_data::Result<Vec<T>>,
) -> Result<(Vec<T>, Vec<T>)> {
    let mut train = load(source, format, &config.split)?;
    if let Some(n) = config.max_train {
        train.truncate(n);
    }
    let single_file = matches!(source, DatasetSource::Path(p) if p.is_file());
    let eval = if config.eval_split == "none" || single_file {
        Vec::new()
    } else {
        let mut eval = load(source, format, &config.eval_split)?;
        eval.truncate(config.max_eval);
        eval
    };
    Ok((train, eval))
}
