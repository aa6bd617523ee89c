//! Hugging Face parquet files (`datasets`' layout: images as `{bytes, path}` structs).

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::{Field, List, Map, Row as PqRow};

use crate::dataset::cell::Cell;
use crate::dataset::format::{DatasetFormat, Row};
use crate::dataset::{Loaded, OnBadExample, PreferenceExample, SftExample};
use crate::error::{DataError, Result};

fn field_to_cell(f: &Field) -> Cell {
    match f {
        Field::Null => Cell::Null,
        Field::Bool(b) => Cell::Bool(*b),
        Field::Byte(v) => Cell::Int(i64::from(*v)),
        Field::Short(v) => Cell::Int(i64::from(*v)),
        Field::Int(v) => Cell::Int(i64::from(*v)),
        Field::Long(v) => Cell::Int(*v),
        Field::UByte(v) => Cell::Int(i64::from(*v)),
        Field::UShort(v) => Cell::Int(i64::from(*v)),
        Field::UInt(v) => Cell::Int(i64::from(*v)),
        Field::ULong(v) => Cell::Int(*v as i64),
        Field::Float(v) => Cell::Float(f64::from(*v)),
        Field::Double(v) => Cell::Float(*v),
        Field::Str(s) => Cell::Str(s.clone()),
        Field::Bytes(b) => Cell::Bytes(b.data().to_vec()),
        Field::Group(row) => Cell::Map(row_to_map(row)),
        Field::ListInternal(list) => Cell::List(list_cells(list)),
        Field::MapInternal(map) => map_cells(map),
        other => Cell::Str(other.to_string()),
    }
}

fn list_cells(list: &List) -> Vec<Cell> {
    list.elements().iter().map(field_to_cell).collect()
}

fn map_cells(map: &Map) -> Cell {
    Cell::Map(
        map.entries()
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string().trim_matches('"').to_string(),
                    field_to_cell(v),
                )
            })
            .collect(),
    )
}

fn row_to_map(row: &PqRow) -> BTreeMap<String, Cell> {
    row.get_column_iter()
        .map(|(name, field)| (name.clone(), field_to_cell(field)))
        .collect()
}

/// Reads every row of a parquet file.
pub fn read_rows(path: &Path) -> Result<Vec<(String, BTreeMap<String, Cell>)>> {
    Loaded::all_or_error(|f| for_each_row(path, f))
}

/// Calls `f` with every row of `path` (or why it cannot be read). A file that is not readable
/// parquet at all is an error whatever `f` does.
fn for_each_row(
    path: &Path,
    mut f: impl FnMut(Result<(String, BTreeMap<String, Cell>)>) -> Result<()>,
) -> Result<()> {
    let err = |message: String| DataError::Dataset {
        source_name: path.display().to_string(),
        message,
    };
    let file = File::open(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let reader = SerializedFileReader::new(file)
        .map_err(|e| err(format!("not a readable parquet file: {e}")))?;
    let iter = reader
        .get_row_iter(None)
        .map_err(|e| err(format!("cannot read rows: {e}")))?;
    for (i, row) in iter.enumerate() {
        let origin = format!("{}:row {i}", path.display());
        match row {
            Ok(row) => f(Ok((origin, row_to_map(&row))))?,
            Err(e) => {
                // The decoder's position in the file is lost (it would report the same error
                // for ever): the rest of the file is one bad stretch.
                return f(Err(DataError::Dataset {
                    source_name: origin,
                    message: format!("cannot read the rows from here to the end of the file: {e}"),
                }));
            }
        }
    }
    Ok(())
}

/// Reads supervised examples from parquet files (any bad row is an error).
pub fn load_sft(paths: &[std::path::PathBuf], format: &DatasetFormat) -> Result<Vec<SftExample>> {
    Ok(load_rows(paths, OnBadExample::Error, |row| row.to_sft(format))?.examples)
}

/// Reads preference examples from parquet files (any bad row is an error).
pub fn load_preference(
    paths: &[std::path::PathBuf],
    format: &DatasetFormat,
) -> Result<Vec<PreferenceExample>> {
    Ok(load_rows(paths, OnBadExample::Error, |row| row.to_preference(format))?.examples)
}

/// Every row of every file, converted by `convert`; bad rows handled as `on_bad` says.
pub(crate) fn load_rows<T>(
    paths: &[std::path::PathBuf],
    on_bad: OnBadExample,
    convert: impl Fn(&Row) -> Result<T>,
) -> Result<Loaded<T>> {
    let mut out = Loaded::default();
    for path in paths {
        let base = path.parent().unwrap_or(Path::new("."));
        for_each_row(path, |row| {
            let example = row.and_then(|(origin, cells)| {
                convert(&Row {
                    cells: &cells,
                    origin,
                    base_dir: base,
                })
            });
            out.push(example, on_bad)
        })?;
    }
    Ok(out)
}
