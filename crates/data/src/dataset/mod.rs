//! Datasets of image + text examples: TRL's formats read from JSONL + image files, Hugging
//! Face parquet (local or from the Hub), or generated synthetic charts.

pub mod cell;
pub mod format;
pub mod hub;
pub mod jsonl;
pub mod parquet;
pub mod synthetic;

use std::path::PathBuf;
use std::sync::Arc;

use image::DynamicImage;

use crate::error::{DataError, Result};
use crate::processor::{decode_image, open_image, Message};
pub use format::{DatasetFormat, FormatKind};

/// Where an example's image comes from. Decoding happens on the loader's worker threads.
#[derive(Clone, Debug)]
pub enum ImageSource {
    /// Encoded bytes (a parquet `{bytes, path}` cell), with a name for errors.
    Bytes {
        /// PNG/JPEG/WebP bytes.
        bytes: Arc<Vec<u8>>,
        /// The column and position in its row (errors add the file and row).
        origin: String,
    },
    /// A file on disk.
    Path(PathBuf),
    /// An image already in memory (synthetic data).
    Image(Arc<DynamicImage>),
}

impl ImageSource {
    /// Decodes the image.
    pub fn load(&self) -> Result<DynamicImage> {
        match self {
            Self::Bytes { bytes, origin } => decode_image(bytes, origin),
            Self::Path(path) => open_image(path),
            Self::Image(img) => Ok((**img).clone()),
        }
    }

    /// Reads the image's header (format and size) without decoding the pixels: the cheap
    /// check at load time that catches files that are no image at all. A file whose pixel data
    /// is broken still fails later, in [`ImageSource::load`].
    pub fn check_header(&self) -> Result<()> {
        let unreadable = |e: &dyn std::fmt::Display| DataError::Image {
            source_name: self.describe(),
            message: format!("cannot decode image: {e}"),
        };
        let dims = match self {
            Self::Bytes { bytes, .. } => image::ImageReader::new(std::io::Cursor::new(&bytes[..]))
                .with_guessed_format()
                .map_err(|e| unreadable(&e))?
                .into_dimensions(),
            Self::Path(path) => image::ImageReader::open(path)
                .map_err(|source| DataError::Io {
                    path: path.clone(),
                    source,
                })?
                .with_guessed_format()
                .map_err(|e| unreadable(&e))?
                .into_dimensions(),
            Self::Image(_) => return Ok(()),
        };
        match dims {
            Ok((w, h)) if w > 0 && h > 0 => Ok(()),
            Ok((w, h)) => Err(unreadable(&format!("the image is {w}x{h} pixels"))),
            Err(e) => Err(unreadable(&e)),
        }
    }

    /// A short description for errors.
    pub fn describe(&self) -> String {
        match self {
            Self::Bytes { origin, .. } => origin.clone(),
            Self::Path(p) => p.display().to_string(),
            Self::Image(_) => "in-memory image".into(),
        }
    }
}

/// The text of an example, in one of TRL's conversational forms.
#[derive(Clone, Debug, PartialEq)]
pub enum Conversation {
    /// Language modelling: a whole chat (`{"messages": [...]}`).
    Messages(Vec<Message>),
    /// A prompt and its completion (`{"prompt": [...], "completion": [...]}`).
    PromptCompletion {
        /// The prompt turns (ending with the user's).
        prompt: Vec<Message>,
        /// The answer turn(s).
        completion: Vec<Message>,
    },
}

/// One supervised example: images and a conversation with `<image>` parts in image order.
#[derive(Clone, Debug)]
pub struct SftExample {
    /// The images, in the order of the conversation's image parts.
    pub images: Vec<ImageSource>,
    /// The text.
    pub conversation: Conversation,
    /// Where it came from (file:row), for errors.
    pub origin: String,
}

/// One preference example (DPO): a prompt with images, a chosen and a rejected answer.
#[derive(Clone, Debug)]
pub struct PreferenceExample {
    /// The images.
    pub images: Vec<ImageSource>,
    /// Prompt turns.
    pub prompt: Vec<Message>,
    /// The preferred answer.
    pub chosen: Vec<Message>,
    /// The dispreferred answer.
    pub rejected: Vec<Message>,
    /// Where it came from.
    pub origin: String,
}

/// What to do with an example that cannot be used (a row that does not parse, an image that
/// does not decode): `error` (the default) stops with an error naming the file and row,
/// `skip` leaves it out, counts it and logs it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnBadExample {
    /// Stop with the example's error.
    #[default]
    Error,
    /// Leave the example out and count it.
    Skip,
}

/// Examples read from a dataset, with the bad ones left out under [`OnBadExample::Skip`].
#[derive(Debug)]
pub struct Loaded<T> {
    /// The usable examples, in file order.
    pub examples: Vec<T>,
    /// Why each skipped row was skipped (each names its file and row).
    pub skipped: Vec<DataError>,
}

impl<T> Loaded<T> {
    /// Everything `each` yields (it calls its argument once per item), stopping at the first
    /// error.
    pub(crate) fn all_or_error(
        each: impl FnOnce(&mut dyn FnMut(Result<T>) -> Result<()>) -> Result<()>,
    ) -> Result<Vec<T>> {
        let mut out = Self::default();
        each(&mut |item| out.push(item, OnBadExample::Error))?;
        Ok(out.examples)
    }

    /// Keeps `item`, or under `Skip` records why it is bad; under `Error` returns the error.
    pub(crate) fn push(&mut self, item: Result<T>, on_bad: OnBadExample) -> Result<()> {
        match (item, on_bad) {
            (Ok(example), _) => self.examples.push(example),
            (Err(e), OnBadExample::Skip) => {
                tracing::warn!(error = %e, "bad example skipped");
                self.skipped.push(e);
            }
            (Err(e), OnBadExample::Error) => return Err(e),
        }
        Ok(())
    }
}

impl<T> Default for Loaded<T> {
    fn default() -> Self {
        Self {
            examples: Vec::new(),
            skipped: Vec::new(),
        }
    }
}

/// Checks that a dataset is not empty, naming its source.
pub fn ensure_not_empty<T>(examples: &[T], source: &str) -> Result<()> {
    if examples.is_empty() {
        return Err(DataError::Dataset {
            source_name: source.into(),
            message: "the dataset has no examples".into(),
        });
    }
    Ok(())
}

/// Where a dataset comes from, parsed from a command-line / config string.
#[derive(Clone, Debug, PartialEq)]
pub enum DatasetSource {
    /// `synthetic`: generated charts.
    Synthetic,
    /// A `.jsonl` file, a `.parquet` file, or a folder of parquet files.
    Path(PathBuf),
    /// `owner/name`: a Hub dataset's parquet files.
    Hub(String),
}

impl DatasetSource {
    /// Parses `synthetic`, an existing path, or a Hub id.
    pub fn parse(spec: &str) -> Result<Self> {
        if spec == "synthetic" || spec == "synthetic-charts" {
            return Ok(Self::Synthetic);
        }
        let path = PathBuf::from(spec);
        if path.exists() {
            return Ok(Self::Path(path));
        }
        let parts: Vec<&str> = spec.split('/').collect();
        let is_file_name = [".jsonl", ".json", ".parquet"]
            .iter()
            .any(|e| spec.ends_with(e));
        if parts.len() == 2 && parts.iter().all(|p| !p.is_empty()) && !is_file_name {
            return Ok(Self::Hub(spec.to_string()));
        }
        Err(DataError::Io {
            path,
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no such dataset file or folder",
            ),
        })
    }

    /// The parquet files of a split of a local folder (recursively) or of a Hub dataset.
    pub fn parquet_files(&self, split: &str) -> Result<Vec<PathBuf>> {
        match self {
            Self::Hub(repo) => hub::fetch_parquet_split(repo, split),
            Self::Path(p) if p.is_file() => Ok(vec![p.clone()]),
            Self::Path(dir) => {
                let mut all = Vec::new();
                collect_files(dir, "parquet", &mut all)?;
                all.sort();
                let split_files: Vec<PathBuf> = all
                    .iter()
                    .filter(|p| {
                        hub::is_split_shard(
                            &p.strip_prefix(dir).unwrap_or(p).to_string_lossy(),
                            split,
                        )
                    })
                    .cloned()
                    .collect();
                Ok(if split_files.is_empty() {
                    all
                } else {
                    split_files
                })
            }
            Self::Synthetic => Ok(Vec::new()),
        }
    }
}

fn collect_files(dir: &std::path::Path, ext: &str, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|source| DataError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    for entry in entries.flatten() {
        let p = entry.path();
        if p.is_dir() {
            collect_files(&p, ext, out)?;
        } else if p.extension().is_some_and(|e| e == ext) {
            out.push(p);
        }
    }
    Ok(())
}

/// Loads supervised examples from a JSONL file, parquet file(s) or a Hub dataset; bad rows
/// are errors naming file and row, or, with [`OnBadExample::Skip`], left out and listed.
pub fn load_sft(
    source: &DatasetSource,
    format: &DatasetFormat,
    split: &str,
    on_bad: OnBadExample,
) -> Result<Loaded<SftExample>> {
    load_any(source, split, on_bad, |row| row.to_sft(format))
}

/// Loads preference examples from a JSONL file, parquet file(s) or a Hub dataset (bad rows as
/// [`load_sft`] treats them).
pub fn load_preference(
    source: &DatasetSource,
    format: &DatasetFormat,
    split: &str,
    on_bad: OnBadExample,
) -> Result<Loaded<PreferenceExample>> {
    load_any(source, split, on_bad, |row| row.to_preference(format))
}

fn load_any<T>(
    source: &DatasetSource,
    split: &str,
    on_bad: OnBadExample,
    convert: impl Fn(&format::Row) -> Result<T>,
) -> Result<Loaded<T>> {
    let loaded = match source {
        DatasetSource::Path(p) if p.extension().is_some_and(|e| e == "jsonl" || e == "json") => {
            jsonl::load_rows(p, on_bad, convert)?
        }
        DatasetSource::Synthetic => {
            return Err(DataError::Dataset {
                source_name: "synthetic".into(),
                message: "synthetic data is generated with dataset::synthetic".into(),
            })
        }
        other => parquet::load_rows(&other.parquet_files(split)?, on_bad, convert)?,
    };
    if loaded.examples.is_empty() && !loaded.skipped.is_empty() {
        return Err(DataError::Dataset {
            source_name: format!("{source:?}"),
            message: format!(
                "every row is bad ({} skipped); the first: {}",
                loaded.skipped.len(),
                loaded.skipped[0]
            ),
        });
    }
    ensure_not_empty(&loaded.examples, &format!("{source:?}"))?;
    Ok(loaded)
}
