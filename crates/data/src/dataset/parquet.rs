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
    let file_len = file.metadata().map(|m| m.len()).unwrap_or(u64::MAX);
    let reader = SerializedFileReader::new(file)
        .map_err(|e| err(format!("not a readable parquet file: {e}")))?;
    check_column_chunks(reader.metadata(), file_len).map_err(err)?;
    // The `parquet` crate asserts on some malformed files instead of returning an error; a
    // panic inside it is this file's error, not the program's end.
    let mut next_row = 0usize;
    let rows = std::panic::AssertUnwindSafe(|| -> Result<()> {
        let iter = reader
            .get_row_iter(None)
            .map_err(|e| err(format!("cannot read rows: {e}")))?;
        for row in iter {
            let origin = format!("{}:row {next_row}", path.display());
            next_row += 1;
            match row {
                Ok(row) => f(Ok((origin, row_to_map(&row))))?,
                Err(e) => return f(Err(rest_of_file_unreadable(origin, &e))),
            }
        }
        Ok(())
    });
    match std::panic::catch_unwind(rows) {
        Ok(result) => result,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "the decoder failed".into());
            Err(err(format!(
                "malformed parquet file (row {next_row} onwards unreadable): {what}"
            )))
        }
    }
}

/// The error for a row the decoder could not read. Its position in the file is lost then (it
/// would report the same error for ever): the rest of the file is one bad stretch.
fn rest_of_file_unreadable(origin: String, e: &parquet::errors::ParquetError) -> DataError {
    DataError::Dataset {
        source_name: origin,
        message: format!("cannot read the rows from here to the end of the file: {e}"),
    }
}

/// Every column chunk the footer names lies inside the file (the `parquet` crate asserts on a
/// negative offset or size rather than returning an error).
fn check_column_chunks(
    metadata: &parquet::file::metadata::ParquetMetaData,
    file_len: u64,
) -> std::result::Result<(), String> {
    for (g, group) in metadata.row_groups().iter().enumerate() {
        for column in group.columns() {
            let start = column
                .dictionary_page_offset()
                .unwrap_or(column.data_page_offset());
            let len = column.compressed_size();
            let inside = start >= 0
                && len >= 0
                && (start as u64)
                    .checked_add(len as u64)
                    .is_some_and(|end| end <= file_len);
            if !inside {
                return Err(format!(
                    "malformed parquet footer: row group {g}, column `{}` claims bytes {start}..+{len} of a {file_len}-byte file",
                    column.column_path()
                ));
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

#[cfg(test)]
mod tests {
    use super::*;
    use parquet::file::metadata::{ParquetMetaDataReader, ParquetMetaDataWriter};

    /// The fixture with its footer rewritten by `edit` (the column chunks stay where they are).
    fn with_footer(
        edit: impl Fn(
            parquet::file::metadata::ColumnChunkMetaData,
        ) -> parquet::file::metadata::ColumnChunkMetaData,
    ) -> Vec<u8> {
        let fixture = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/data/chartqa_like.parquet"
        );
        let bytes = std::fs::read(fixture).unwrap();
        let metadata = ParquetMetaDataReader::new()
            .parse_and_finish(&File::open(fixture).unwrap())
            .unwrap();
        let footer_len =
            u32::from_le_bytes(bytes[bytes.len() - 8..bytes.len() - 4].try_into().unwrap());
        let groups = metadata
            .row_groups()
            .iter()
            .map(|group| {
                let columns = group.columns().iter().cloned().map(&edit).collect();
                group
                    .clone()
                    .into_builder()
                    .set_column_metadata(columns)
                    .build()
                    .unwrap()
            })
            .collect();
        let metadata = metadata.into_builder().set_row_groups(groups).build();
        let mut out = bytes[..bytes.len() - 8 - footer_len as usize].to_vec();
        ParquetMetaDataWriter::new(&mut out, &metadata)
            .finish()
            .unwrap();
        out
    }

    fn read(bytes: &[u8]) -> Result<Vec<(String, BTreeMap<String, Cell>)>> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.parquet");
        std::fs::write(&path, bytes).unwrap();
        read_rows(&path)
    }

    #[test]
    fn an_unchanged_footer_reads_as_before() {
        assert_eq!(read(&with_footer(|c| c)).unwrap().len(), 3);
    }

    #[test]
    fn a_column_chunk_outside_the_file_is_an_error_naming_it() {
        let negative = with_footer(|c| {
            c.into_builder()
                .set_dictionary_page_offset(None)
                .set_data_page_offset(-4)
                .build()
                .unwrap()
        });
        let err = read(&negative).unwrap_err().to_string();
        assert!(
            err.contains("malformed parquet footer: row group 0, column") && err.contains("-4"),
            "{err}"
        );
        let past_the_end = with_footer(|c| {
            c.into_builder()
                .set_total_compressed_size(1 << 40)
                .build()
                .unwrap()
        });
        let err = read(&past_the_end).unwrap_err().to_string();
        assert!(err.contains("malformed parquet footer"), "{err}");
    }
}
