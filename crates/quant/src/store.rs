//! Reading and writing safetensors files: single files, sharded checkpoints
//! (`model.safetensors.index.json`), F32/BF16/F16 on disk, atomic writes.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::{Dtype, SafeTensors, TensorInfo};

use crate::error::{QuantError, Result};

/// The on-disk element type of a saved tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SaveDtype {
    /// 32-bit float.
    #[default]
    F32,
    /// bfloat16.
    Bf16,
    /// IEEE half.
    F16,
}

struct MappedFile {
    path: PathBuf,
    mmap: Mmap,
    data_start: usize,
}

/// One or more memory-mapped safetensors files read as one set of named tensors.
///
/// Every key that is read is remembered, so that [`SafetensorsFiles::unused_keys`] can report
/// checkpoint entries the model never asked for.
pub struct SafetensorsFiles {
    files: Vec<MappedFile>,
    index: HashMap<String, (usize, TensorInfo)>,
    used: RefCell<BTreeSet<String>>,
}

impl std::fmt::Debug for SafetensorsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafetensorsFiles")
            .field(
                "files",
                &self.files.iter().map(|m| &m.path).collect::<Vec<_>>(),
            )
            .field("tensors", &self.index.len())
            .finish()
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> QuantError + '_ {
    move |source| QuantError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl SafetensorsFiles {
    /// Opens the given files. A key present in two files is an error.
    pub fn open(paths: &[PathBuf]) -> Result<Self> {
        let mut files = Vec::with_capacity(paths.len());
        let mut index = HashMap::new();
        for path in paths {
            let file = File::open(path).map_err(io_err(path))?;
            // SAFETY: the file is opened read-only; like every mmap user we rely on nobody
            // truncating a checkpoint while it is being read.
            let mmap = unsafe { Mmap::map(&file) }.map_err(io_err(path))?;
            let (header, metadata) =
                SafeTensors::read_metadata(&mmap).map_err(|e| QuantError::Safetensors {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
            let file_idx = files.len();
            for (name, info) in metadata.tensors() {
                if index.contains_key(&name) {
                    return Err(QuantError::Safetensors {
                        path: path.clone(),
                        message: format!("tensor `{name}` also appears in another file"),
                    });
                }
                index.insert(name, (file_idx, info.clone()));
            }
            files.push(MappedFile {
                path: path.clone(),
                mmap,
                data_start: 8 + header,
            });
        }
        Ok(Self {
            files,
            index,
            used: RefCell::new(BTreeSet::new()),
        })
    }

    /// Opens the weights of a checkpoint directory: `<stem>.safetensors`, or the shards listed in
    /// `<stem>.safetensors.index.json`.
    pub fn open_dir(dir: &Path, stem: &str) -> Result<Self> {
        let single = dir.join(format!("{stem}.safetensors"));
        let index = dir.join(format!("{stem}.safetensors.index.json"));
        if single.is_file() {
            return Self::open(&[single]);
        }
        if index.is_file() {
            let shards = read_shard_index(&index)?;
            return Self::open(&shards);
        }
        Err(QuantError::Io {
            path: single,
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("neither this file nor {} exists", index.display()),
            ),
        })
    }

    /// All tensor names, sorted.
    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.index.keys().cloned().collect();
        keys.sort();
        keys
    }

    /// Whether the files hold `key`.
    pub fn contains(&self, key: &str) -> bool {
        self.index.contains_key(key)
    }

    /// The stored shape of `key`.
    pub fn shape(&self, key: &str) -> Option<&[usize]> {
        self.index.get(key).map(|(_, info)| info.shape.as_slice())
    }

    /// Reads `key` as f32 values (row-major) and its shape, converting BF16/F16.
    pub fn read_f32(&self, key: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let (bytes, info) = self.raw(key)?;
        Ok((bytes_to_f32(key, info.dtype, bytes)?, info.shape.clone()))
    }

    /// Reads an integer or boolean tensor (I64, I32, U8, I8, BOOL) as i64 values and its shape.
    pub fn read_i64(&self, key: &str) -> Result<(Vec<i64>, Vec<usize>)> {
        let (bytes, info) = self.raw(key)?;
        let values = match info.dtype {
            Dtype::I64 => bytes
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                .collect(),
            Dtype::I32 => bytes
                .chunks_exact(4)
                .map(|c| i64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                .collect(),
            Dtype::U8 | Dtype::BOOL => bytes.iter().map(|b| i64::from(*b)).collect(),
            Dtype::I8 => bytes.iter().map(|b| i64::from(*b as i8)).collect(),
            other => {
                return Err(QuantError::UnsupportedDtype {
                    key: key.to_string(),
                    dtype: format!("{other:?} (expected an integer dtype)"),
                })
            }
        };
        Ok((values, info.shape.clone()))
    }

    fn raw(&self, key: &str) -> Result<(&[u8], &TensorInfo)> {
        let (file_idx, info) = self.index.get(key).ok_or_else(|| QuantError::MissingKey {
            key: key.to_string(),
            expected: vec![],
        })?;
        let file = &self.files[*file_idx];
        let (start, end) = info.data_offsets;
        let bytes = file
            .mmap
            .get(file.data_start + start..file.data_start + end)
            .ok_or_else(|| QuantError::Safetensors {
                path: file.path.clone(),
                message: format!("tensor `{key}` points past the end of the file"),
            })?;
        self.used.borrow_mut().insert(key.to_string());
        Ok((bytes, info))
    }

    /// Reads `key` and checks it has `expected` shape.
    pub fn read_f32_checked(&self, key: &str, expected: &[usize]) -> Result<Vec<f32>> {
        let found = self.shape(key).ok_or_else(|| QuantError::MissingKey {
            key: key.to_string(),
            expected: expected.to_vec(),
        })?;
        if found != expected {
            return Err(QuantError::ShapeMismatch {
                key: key.to_string(),
                expected: expected.to_vec(),
                found: found.to_vec(),
            });
        }
        Ok(self.read_f32(key)?.0)
    }

    /// Keys never read so far, sorted.
    pub fn unused_keys(&self) -> Vec<String> {
        let used = self.used.borrow();
        let mut keys: Vec<String> = self
            .index
            .keys()
            .filter(|k| !used.contains(*k))
            .cloned()
            .collect();
        keys.sort();
        keys
    }
}

/// The shard files named by a `*.safetensors.index.json`, in first-seen order.
pub fn read_shard_index(index: &Path) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(index).map_err(io_err(index))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| QuantError::Index {
        path: index.to_path_buf(),
        message: format!("invalid JSON: {e}"),
    })?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| QuantError::Index {
            path: index.to_path_buf(),
            message: "missing object `weight_map`".into(),
        })?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut shards: Vec<PathBuf> = Vec::new();
    for (key, file) in map {
        let file = file.as_str().ok_or_else(|| QuantError::Index {
            path: index.to_path_buf(),
            message: format!("`weight_map.{key}` is not a file name"),
        })?;
        let path = dir.join(file);
        if !shards.contains(&path) {
            shards.push(path);
        }
    }
    Ok(shards)
}

fn bytes_to_f32(key: &str, dtype: Dtype, bytes: &[u8]) -> Result<Vec<f32>> {
    Ok(match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
            .collect(),
        other => {
            return Err(QuantError::UnsupportedDtype {
                key: key.to_string(),
                dtype: format!("{other:?}"),
            })
        }
    })
}

/// A named tensor to write: row-major f32 values and a shape.
#[derive(Clone, Debug, PartialEq)]
pub struct NamedTensor {
    /// The key in the file.
    pub name: String,
    /// Row-major values.
    pub values: Vec<f32>,
    /// The shape.
    pub shape: Vec<usize>,
}

struct Encoded {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl safetensors::View for &Encoded {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

fn encode(t: &NamedTensor, dtype: SaveDtype) -> Encoded {
    let (dtype, bytes) = match dtype {
        SaveDtype::F32 => (
            Dtype::F32,
            t.values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ),
        SaveDtype::Bf16 => (
            Dtype::BF16,
            t.values
                .iter()
                .flat_map(|v| half::bf16::from_f32(*v).to_bits().to_le_bytes())
                .collect(),
        ),
        SaveDtype::F16 => (
            Dtype::F16,
            t.values
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_bits().to_le_bytes())
                .collect(),
        ),
    };
    Encoded {
        dtype,
        shape: t.shape.clone(),
        bytes,
    }
}

/// Writes `tensors` to `path` as safetensors, atomically (a temporary file in the same
/// directory, then a rename), with optional string metadata (e.g. `{"format": "pt"}`).
pub fn write_safetensors(
    path: &Path,
    tensors: &[NamedTensor],
    dtype: SaveDtype,
    metadata: Option<BTreeMap<String, String>>,
) -> Result<()> {
    let encoded: Vec<(String, Encoded)> = tensors
        .iter()
        .map(|t| (t.name.clone(), encode(t, dtype)))
        .collect();
    let bytes = safetensors::serialize(
        encoded.iter().map(|(n, e)| (n.as_str(), e)),
        metadata.map(|m| m.into_iter().collect()),
    )
    .map_err(|e| QuantError::Safetensors {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    write_atomic(path, &bytes)
}

/// Writes `bytes` to `path` through a temporary sibling file and a rename, so a crash never
/// leaves a half-written file under the final name.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(dir) = dir {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    // Unique per write, so threads writing the same file (data-parallel ranks) each rename
    // a complete one.
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_file_name(format!(".{file_name}.tmp-{}-{n}", std::process::id()));
    {
        let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(bytes).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str, values: Vec<f32>, shape: Vec<usize>) -> NamedTensor {
        NamedTensor {
            name: name.into(),
            values,
            shape,
        }
    }

    #[test]
    fn round_trips_each_dtype() {
        let dir = tempfile::tempdir().unwrap();
        let values = vec![1.0, -2.5, 0.15625, 3.0e-3, 1024.0, -0.0];
        for dtype in [SaveDtype::F32, SaveDtype::Bf16, SaveDtype::F16] {
            let path = dir.path().join(format!("{dtype:?}.safetensors"));
            write_safetensors(
                &path,
                &[t("a.weight", values.clone(), vec![2, 3])],
                dtype,
                None,
            )
            .unwrap();
            let files = SafetensorsFiles::open(&[path]).unwrap();
            let (read, shape) = files.read_f32("a.weight").unwrap();
            assert_eq!(shape, vec![2, 3]);
            for (a, b) in values.iter().zip(&read) {
                let tol = match dtype {
                    SaveDtype::F32 => 0.0,
                    SaveDtype::Bf16 => a.abs() * 2f32.powi(-8),
                    SaveDtype::F16 => a.abs() * 2f32.powi(-11) + 1e-7,
                };
                assert!((a - b).abs() <= tol, "{dtype:?}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn reports_missing_mismatched_and_unused_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        write_safetensors(
            &path,
            &[t("x", vec![0.0; 4], vec![4]), t("y", vec![0.0; 2], vec![2])],
            SaveDtype::F32,
            None,
        )
        .unwrap();
        let files = SafetensorsFiles::open(&[path]).unwrap();
        let err = files
            .read_f32_checked("x", &[2, 2])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`x`") && err.contains("[4]") && err.contains("[2, 2]"),
            "{err}"
        );
        let err = files.read_f32_checked("z", &[1]).unwrap_err().to_string();
        assert!(err.contains("missing weight `z`"), "{err}");
        files.read_f32_checked("y", &[2]).unwrap();
        assert_eq!(files.unused_keys(), vec!["x".to_string()]);
    }

    #[test]
    fn garbage_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.safetensors");
        std::fs::write(&path, b"not a safetensors file at all").unwrap();
        let err = SafetensorsFiles::open(&[path]).unwrap_err().to_string();
        assert!(
            err.contains("bad.safetensors") && err.contains("not a valid safetensors"),
            "{err}"
        );
    }
}
