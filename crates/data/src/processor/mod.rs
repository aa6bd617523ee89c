//! The SmolVLM / Idefics3 processor: a chat with images in, the ids and pixels that
//! transformers' `SmolVLMProcessor` / `Idefics3Processor` produce out.
//!
//! Everything is configured from the checkpoint's own files: `tokenizer.json`,
//! `tokenizer_config.json`, `preprocessor_config.json` (or the `image_processor` object of a
//! v5 `processor_config.json`), `processor_config.json` (`image_seq_len`) and the chat template.

pub mod chat;
pub mod image;
pub mod prompt;
pub mod resample;
pub mod tokenizer;

use std::path::{Path, PathBuf};

use ::image::DynamicImage;
use serde_json::Value;

use crate::error::{DataError, Result};
pub use chat::{ChatTemplate, Content, ContentPart, Message};
pub use image::{decode_image, open_image, ImageProcessor, ImageProcessorConfig, ProcessedImage};
pub use prompt::ImageTokens;
pub use resample::RgbImage;
pub use tokenizer::{PaddingSide, TextTokenizer};

/// Per-call options (transformers' processor kwargs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessOptions {
    /// Override `do_image_splitting` of the config.
    pub do_image_splitting: Option<bool>,
    /// Passed to the tokenizer (SmolVLM's adds nothing either way).
    pub add_special_tokens: bool,
    /// Override the tokenizer's padding side.
    pub padding_side: Option<PaddingSide>,
}

impl Default for ProcessOptions {
    fn default() -> Self {
        Self {
            do_image_splitting: None,
            add_special_tokens: true,
            padding_side: None,
        }
    }
}

/// One text with its images, tokenised.
#[derive(Clone, Debug, PartialEq)]
pub struct EncodedSample {
    /// Token ids of the expanded text.
    pub input_ids: Vec<u32>,
    /// The processed images, in marker order.
    pub images: Vec<ProcessedImage>,
}

/// Padded pixels of a batch: `[batch, max_frames, 3, height, width]` values and the
/// `[batch, max_frames, height, width]` pixel mask.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct PixelValues {
    /// Row-major values; padding frames are all zeros.
    pub values: Vec<f32>,
    /// `[batch, max_frames, 3, height, width]`.
    pub shape: [usize; 5],
    /// Row-major mask, 1 on real pixels.
    pub pixel_attention_mask: Vec<u8>,
}

/// What the processor returns for a batch.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct BatchEncoding {
    /// Padded ids, one row per sample.
    pub input_ids: Vec<Vec<u32>>,
    /// 1 on real tokens.
    pub attention_mask: Vec<Vec<u8>>,
    /// Pixels, when any sample has images.
    pub pixel_values: Option<PixelValues>,
    /// Tile rows per sample and image.
    pub rows: Vec<Vec<usize>>,
    /// Tile columns per sample and image.
    pub cols: Vec<Vec<usize>>,
}

/// The processor of one checkpoint.
#[derive(Clone, Debug)]
pub struct Processor {
    /// Text tokenizer.
    pub tokenizer: TextTokenizer,
    /// The checkpoint's chat template, if it has one.
    pub chat_template: Option<ChatTemplate>,
    /// Image processor.
    pub image_processor: ImageProcessor,
    /// `<image>` tokens per tile (`processor_config.json`, default 169).
    pub image_seq_len: usize,
    /// The image layout strings.
    pub image_tokens: ImageTokens,
    /// Id of `<image>`.
    pub image_token_id: u32,
    /// The end-of-turn token (`<end_of_utterance>`).
    pub end_of_utterance: String,
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| DataError::Config {
        file: path.to_path_buf(),
        field: String::new(),
        message: format!("invalid JSON: {e}"),
    })
}

impl Processor {
    /// Builds the processor of the checkpoint folder `dir`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let tokenizer = TextTokenizer::from_dir(dir)?;
        let chat_template = ChatTemplate::from_dir(dir, &tokenizer.config)?;
        let processor_path = dir.join("processor_config.json");
        let processor_json = if processor_path.is_file() {
            read_json(&processor_path)?
        } else {
            Value::Object(Default::default())
        };
        let preprocessor_path = dir.join("preprocessor_config.json");
        let (image_json, image_origin): (Value, PathBuf) = if preprocessor_path.is_file() {
            (read_json(&preprocessor_path)?, preprocessor_path)
        } else if let Some(nested) = processor_json.get("image_processor") {
            (nested.clone(), processor_path.clone())
        } else {
            return Err(DataError::Io {
                path: preprocessor_path,
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no image processor settings (neither preprocessor_config.json nor `image_processor` in processor_config.json)",
                ),
            });
        };
        let image_config = ImageProcessorConfig::from_value(image_json, &image_origin)?;
        let image_seq_len = match processor_json.get("image_seq_len") {
            None => 169,
            Some(v) => v
                .as_u64()
                .filter(|n| *n > 0)
                .ok_or_else(|| DataError::Config {
                    file: processor_path.clone(),
                    field: "image_seq_len".into(),
                    message: format!("expected a positive integer, got {v}"),
                })? as usize,
        };
        let image_tokens = ImageTokens::default();
        let image_token_id = tokenizer.id_of(&image_tokens.image, "it marks image features")?;
        tokenizer.id_of(&image_tokens.fake, "it wraps each image")?;
        tokenizer.id_of(&image_tokens.global, "it opens the global image")?;
        let end_of_utterance = "<end_of_utterance>".to_string();
        Ok(Self {
            tokenizer,
            chat_template,
            image_processor: ImageProcessor {
                config: image_config,
            },
            image_seq_len,
            image_tokens,
            image_token_id,
            end_of_utterance,
        })
    }

    /// Renders `messages` with the checkpoint's chat template.
    pub fn apply_chat_template(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let template = self
            .chat_template
            .as_ref()
            .ok_or_else(|| DataError::Template("the checkpoint has no chat template".into()))?;
        let extra = serde_json::json!({
            "bos_token": self.tokenizer.bos_token.clone().unwrap_or_default(),
            "eos_token": self.tokenizer.eos_token.clone().unwrap_or_default(),
        });
        template.render(messages, add_generation_prompt, &extra)
    }

    /// Processes decoded images; `origins` name them in errors.
    pub fn process_images(
        &self,
        images: &[DynamicImage],
        origins: &[String],
        split: bool,
    ) -> Result<Vec<ProcessedImage>> {
        images
            .iter()
            .enumerate()
            .map(|(i, img)| {
                let origin = origins.get(i).cloned().unwrap_or_else(|| format!("#{i}"));
                let rgb = image::to_rgb(img, &origin)?;
                Ok(self.image_processor.process(&rgb, split))
            })
            .collect()
    }

    /// Expands the `<image>` markers of `text` for `images` and tokenises it.
    pub fn encode(
        &self,
        text: &str,
        images: &[DynamicImage],
        options: ProcessOptions,
    ) -> Result<EncodedSample> {
        let origins: Vec<String> = (0..images.len()).map(|i| format!("#{i}")).collect();
        let split = options
            .do_image_splitting
            .unwrap_or(self.image_processor.config.do_image_splitting);
        let processed = self.process_images(images, &origins, split)?;
        self.encode_processed(text, processed, options)
    }

    /// As [`Self::encode`], for images already processed.
    pub fn encode_processed(
        &self,
        text: &str,
        images: Vec<ProcessedImage>,
        options: ProcessOptions,
    ) -> Result<EncodedSample> {
        let grids: Vec<(usize, usize)> = images.iter().map(|i| (i.rows, i.cols)).collect();
        let expanded = self
            .image_tokens
            .expand_text(text, &grids, self.image_seq_len)?;
        let input_ids = self
            .tokenizer
            .encode(&expanded, options.add_special_tokens)?;
        Ok(EncodedSample { input_ids, images })
    }

    /// `processor(text=texts, images=images, padding=True)`: encodes and pads a batch.
    pub fn call(
        &self,
        texts: &[&str],
        images: &[Vec<DynamicImage>],
        options: ProcessOptions,
    ) -> Result<BatchEncoding> {
        if !images.is_empty() && images.len() != texts.len() {
            return Err(DataError::Mismatch(format!(
                "{} texts but {} image lists",
                texts.len(),
                images.len()
            )));
        }
        let samples = texts
            .iter()
            .enumerate()
            .map(|(i, text)| {
                self.encode(
                    text,
                    images.get(i).map(Vec::as_slice).unwrap_or(&[]),
                    options,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let side = options.padding_side.unwrap_or(self.tokenizer.padding_side);
        Ok(batch_samples(&samples, self.tokenizer.pad_id(), side))
    }

    /// Decodes ids to text.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.tokenizer.decode(ids, skip_special_tokens)
    }
}

/// Pads ids to the longest sample and stacks the frames into padded pixel values.
pub fn batch_samples(samples: &[EncodedSample], pad_id: u32, side: PaddingSide) -> BatchEncoding {
    let width = samples.iter().map(|s| s.input_ids.len()).max().unwrap_or(0);
    let mut out = BatchEncoding::default();
    for s in samples {
        let pad = width - s.input_ids.len();
        let (ids, mask) = match side {
            PaddingSide::Right => (
                s.input_ids
                    .iter()
                    .copied()
                    .chain(std::iter::repeat_n(pad_id, pad))
                    .collect(),
                std::iter::repeat_n(1u8, s.input_ids.len())
                    .chain(std::iter::repeat_n(0, pad))
                    .collect(),
            ),
            PaddingSide::Left => (
                std::iter::repeat_n(pad_id, pad)
                    .chain(s.input_ids.iter().copied())
                    .collect(),
                std::iter::repeat_n(0u8, pad)
                    .chain(std::iter::repeat_n(1, s.input_ids.len()))
                    .collect(),
            ),
        };
        out.input_ids.push(ids);
        out.attention_mask.push(mask);
        out.rows.push(s.images.iter().map(|i| i.rows).collect());
        out.cols.push(s.images.iter().map(|i| i.cols).collect());
    }
    out.pixel_values = stack_pixels(samples.iter().map(|s| s.images.as_slice()));
    out
}

/// Zero-pads every frame to the largest frame and every sample to the most frames.
pub fn stack_pixels<'a>(
    per_sample: impl Iterator<Item = &'a [ProcessedImage]> + Clone,
) -> Option<PixelValues> {
    let frames_of = |imgs: &[ProcessedImage]| imgs.iter().map(|i| i.frames.len()).sum::<usize>();
    let max_frames = per_sample.clone().map(frames_of).max().unwrap_or(0);
    if max_frames == 0 {
        return None;
    }
    let batch = per_sample.clone().count();
    let all = per_sample.clone().flat_map(|s| s.iter());
    let height = all.clone().map(|i| i.height).max().unwrap_or(0);
    let width = all.map(|i| i.width).max().unwrap_or(0);
    let plane = height * width;
    let mut values = vec![0.0f32; batch * max_frames * 3 * plane];
    let mut mask = vec![0u8; batch * max_frames * plane];
    for (b, images) in per_sample.enumerate() {
        let mut f = 0;
        for img in images {
            for frame in &img.frames {
                let base = (b * max_frames + f) * 3 * plane;
                let mbase = (b * max_frames + f) * plane;
                let src_plane = img.height * img.width;
                for ch in 0..3 {
                    for y in 0..img.height {
                        let src = &frame
                            [ch * src_plane + y * img.width..ch * src_plane + (y + 1) * img.width];
                        let dst = base + ch * plane + y * width;
                        values[dst..dst + img.width].copy_from_slice(src);
                    }
                }
                for y in 0..img.height {
                    mask[mbase + y * width..mbase + y * width + img.width].fill(1);
                }
                f += 1;
            }
        }
    }
    Some(PixelValues {
        values,
        shape: [batch, max_frames, 3, height, width],
        pixel_attention_mask: mask,
    })
}
