//! JSONL datasets: one JSON object per line, image paths relative to the file.

use std::collections::BTreeMap;
use std::path::Path;

use crate::dataset::cell::Cell;
use crate::dataset::format::{DatasetFormat, Row};
use crate::dataset::{PreferenceExample, SftExample};
use crate::error::{DataError, Result};

/// Parses every non-empty line of `path` into a row; errors name the line.
pub fn read_rows(path: &Path) -> Result<Vec<(String, BTreeMap<String, Cell>)>> {
    let text = std::fs::read_to_string(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let origin = format!("{}:{}", path.display(), i + 1);
        let value: serde_json::Value =
            serde_json::from_str(line).map_err(|e| DataError::Dataset {
                source_name: origin.clone(),
                message: format!("invalid JSON: {e}"),
            })?;
        match Cell::from(&value) {
            Cell::Map(m) => rows.push((origin, m)),
            _ => {
                return Err(DataError::Dataset {
                    source_name: origin,
                    message: "a line must be a JSON object".into(),
                })
            }
        }
    }
    Ok(rows)
}

fn base_dir(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new("."))
}

/// Reads supervised examples from a JSONL file.
pub fn load_sft(path: &Path, format: &DatasetFormat) -> Result<Vec<SftExample>> {
    load_rows(path, |row| row.to_sft(format))
}

/// Reads preference examples from a JSONL file.
pub fn load_preference(path: &Path, format: &DatasetFormat) -> Result<Vec<PreferenceExample>> {
    load_rows(path, |row| row.to_preference(format))
}

/// Every row of `path`, converted by `convert`.
fn load_rows<T>(path: &Path, convert: impl Fn(&Row) -> Result<T>) -> Result<Vec<T>> {
    read_rows(path)?
        .iter()
        .map(|(origin, cells)| {
            convert(&Row {
                cells,
                origin: origin.clone(),
                base_dir: base_dir(path),
            })
        })
        .collect()
}
