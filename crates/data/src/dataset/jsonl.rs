//! JSONL datasets: one JSON object per line, image paths relative to the file.

use std::collections::BTreeMap;
use std::path::Path;

use crate::dataset::cell::Cell;
use crate::dataset::format::{DatasetFormat, Row};
use crate::dataset::{Loaded, OnBadExample, PreferenceExample, SftExample};
use crate::error::{DataError, Result};

/// Parses every non-empty line of `path` into a row; errors name the line.
pub fn read_rows(path: &Path) -> Result<Vec<(String, BTreeMap<String, Cell>)>> {
    Loaded::all_or_error(|f| for_each_row(path, f))
}

/// Calls `f` with every non-empty line of `path` parsed into a row (or why it is not one).
fn for_each_row(
    path: &Path,
    mut f: impl FnMut(Result<(String, BTreeMap<String, Cell>)>) -> Result<()>,
) -> Result<()> {
    let bytes = std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    // Lines are split on bytes so that one line of invalid UTF-8 is one bad row.
    for (i, line) in bytes.split(|b| *b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let origin = format!("{}:{}", path.display(), i + 1);
        let bad = |message: String| DataError::Dataset {
            source_name: origin.clone(),
            message,
        };
        let row = serde_json::from_slice::<serde_json::Value>(line)
            .map_err(|e| bad(format!("invalid JSON: {e}")))
            .and_then(|value| match Cell::from(&value) {
                Cell::Map(m) => Ok((origin.clone(), m)),
                _ => Err(bad("a line must be a JSON object".into())),
            });
        f(row)?;
    }
    Ok(())
}

fn base_dir(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new("."))
}

/// Reads supervised examples from a JSONL file (any bad row is an error).
pub fn load_sft(path: &Path, format: &DatasetFormat) -> Result<Vec<SftExample>> {
    Ok(load_rows(path, OnBadExample::Error, |row| row.to_sft(format))?.examples)
}

/// Reads preference examples from a JSONL file (any bad row is an error).
pub fn load_preference(path: &Path, format: &DatasetFormat) -> Result<Vec<PreferenceExample>> {
    Ok(load_rows(path, OnBadExample::Error, |row| row.to_preference(format))?.examples)
}

/// Every row of `path`, converted by `convert`; bad rows handled as `on_bad` says.
pub(crate) fn load_rows<T>(
    path: &Path,
    on_bad: OnBadExample,
    convert: impl Fn(&Row) -> Result<T>,
) -> Result<Loaded<T>> {
    let mut out = Loaded::default();
    for_each_row(path, |row| {
        let example = row.and_then(|(origin, cells)| {
            convert(&Row {
                cells: &cells,
                origin,
                base_dir: base_dir(path),
            })
        });
        out.push(example, on_bad)
    })?;
    Ok(out)
}
