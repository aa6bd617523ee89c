//! The SmolVLM / Idefics3 image processor (SPEC §5), PIL backend: RGB conversion, longest-edge
//! resize, optional tiling with a global image, rescale + normalise, batch padding.

use std::path::Path;

use image::DynamicImage;
use rayon::prelude::*;
use serde::Deserialize;

use crate::error::{DataError, Result};
use crate::processor::resample::{composite_on_white, resize, Filter, RgbImage};

/// Cap transformers applies after the longest-edge resize.
pub const MAX_IMAGE_SIZE: usize = 4096;

/// `{"longest_edge": n}` (or `{"height", "width"}` for fixed sizes).
#[derive(Clone, Debug, PartialEq, Deserialize, serde::Serialize)]
pub struct SizeSpec {
    /// The longest edge in pixels.
    #[serde(default)]
    pub longest_edge: Option<usize>,
    /// A fixed height.
    #[serde(default)]
    pub height: Option<usize>,
    /// A fixed width.
    #[serde(default)]
    pub width: Option<usize>,
}

impl SizeSpec {
    /// A longest-edge size.
    pub fn longest(n: usize) -> Self {
        Self {
            longest_edge: Some(n),
            height: None,
            width: None,
        }
    }
}

fn d_true() -> bool {
    true
}
fn d_resample() -> u32 {
    1
}
fn d_size() -> SizeSpec {
    SizeSpec::longest(4 * 364)
}
fn d_max_size() -> SizeSpec {
    SizeSpec::longest(364)
}
fn d_half() -> Vec<f32> {
    vec![0.5, 0.5, 0.5]
}
fn d_rescale() -> f64 {
    1.0 / 255.0
}

/// `preprocessor_config.json` (or the `image_processor` object of `processor_config.json`),
/// with `SmolVLMImageProcessor`'s class defaults.
#[derive(Clone, Debug, PartialEq, Deserialize, serde::Serialize)]
pub struct ImageProcessorConfig {
    /// Resize the longest edge to `size`.
    #[serde(default = "d_true")]
    pub do_resize: bool,
    /// The first resize target.
    #[serde(default = "d_size")]
    pub size: SizeSpec,
    /// PIL resampling filter (1 = LANCZOS).
    #[serde(default = "d_resample")]
    pub resample: u32,
    /// Split into tiles of `max_image_size` plus a global image.
    #[serde(default = "d_true")]
    pub do_image_splitting: bool,
    /// Tile side.
    #[serde(default = "d_max_size")]
    pub max_image_size: SizeSpec,
    /// Multiply by `rescale_factor`.
    #[serde(default = "d_true")]
    pub do_rescale: bool,
    /// Usually 1/255.
    #[serde(default = "d_rescale")]
    pub rescale_factor: f64,
    /// Subtract `image_mean`, divide by `image_std`.
    #[serde(default = "d_true")]
    pub do_normalize: bool,
    /// Per-channel mean.
    #[serde(default = "d_half")]
    pub image_mean: Vec<f32>,
    /// Per-channel std.
    #[serde(default = "d_half")]
    pub image_std: Vec<f32>,
    /// Pad frames to the largest in the batch and return a pixel mask.
    #[serde(default = "d_true")]
    pub do_pad: bool,
    /// Convert to RGB (alpha composited on white).
    #[serde(default = "d_true")]
    pub do_convert_rgb: bool,
}

impl Default for ImageProcessorConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("defaults deserialize")
    }
}

impl ImageProcessorConfig {
    /// Parses the JSON object; `origin` names the file in errors.
    pub fn from_value(value: serde_json::Value, origin: &Path) -> Result<Self> {
        let config: Self =
            serde_path_to_error::deserialize(value).map_err(|e| DataError::Config {
                file: origin.to_path_buf(),
                field: e.path().to_string(),
                message: e.inner().to_string(),
            })?;
        config.validate(origin)?;
        Ok(config)
    }

    fn validate(&self, origin: &Path) -> Result<()> {
        let bad = |field: &str, message: String| {
            Err(DataError::Config {
                file: origin.to_path_buf(),
                field: field.into(),
                message,
            })
        };
        if Filter::from_pil(self.resample).is_none() {
            return bad(
                "resample",
                format!("PIL filter {} is not supported (1-5)", self.resample),
            );
        }
        if self.image_mean.len() != 3 || self.image_std.len() != 3 {
            return bad(
                "image_mean",
                "image_mean and image_std need 3 values".into(),
            );
        }
        if self.tile_size().unwrap_or(0) == 0 {
            return bad(
                "max_image_size.longest_edge",
                "must be a positive number".into(),
            );
        }
        if self.do_resize
            && self.size.longest_edge.unwrap_or(0) == 0
            && (self.size.height.is_none() || self.size.width.is_none())
        {
            return bad(
                "size",
                "needs `longest_edge` or `height` and `width`".into(),
            );
        }
        Ok(())
    }

    /// The tile side `T`.
    pub fn tile_size(&self) -> Option<usize> {
        self.max_image_size.longest_edge
    }

    fn filter(&self) -> Filter {
        Filter::from_pil(self.resample).unwrap_or(Filter::Lanczos)
    }
}

/// One image after processing: its frames (tiles, then the global image) as normalised CHW
/// float32, and the grid it was split into (`0×0` when not split).
#[derive(Clone, Debug, PartialEq)]
pub struct ProcessedImage {
    /// Frames, each `3 · height · width` values, channel-major.
    pub frames: Vec<Vec<f32>>,
    /// Height of every frame.
    pub height: usize,
    /// Width of every frame.
    pub width: usize,
    /// Tile rows (0 when not split).
    pub rows: usize,
    /// Tile columns (0 when not split).
    pub cols: usize,
}

/// Converts a decoded image to 8-bit RGB as transformers' `convert_to_rgb` does: images with
/// alpha are composited onto white, grayscale is replicated. Errors on an empty image.
pub fn to_rgb(image: &DynamicImage, origin: &str) -> Result<RgbImage> {
    let (width, height) = (image.width() as usize, image.height() as usize);
    if width == 0 || height == 0 {
        return Err(DataError::Image {
            source_name: origin.into(),
            message: format!("the image is empty ({width}x{height})"),
        });
    }
    let data = if image.color().has_alpha() {
        image
            .to_rgba8()
            .pixels()
            .flat_map(|p| composite_on_white(p.0))
            .collect()
    } else {
        image.to_rgb8().into_raw()
    };
    Ok(RgbImage {
        width,
        height,
        data,
    })
}

/// `_resize_output_size_rescale_to_max_len` then `_resize_output_size_scale_below_upper_bound`:
/// `(height, width)` after the longest-edge resize, with transformers' even rounding.
pub fn longest_edge_size(height: usize, width: usize, longest: usize) -> (usize, usize) {
    let aspect = width as f64 / height as f64;
    let (mut h, mut w) = if width >= height {
        let w = longest;
        let mut h = (w as f64 / aspect) as usize;
        if !h.is_multiple_of(2) {
            h += 1;
        }
        (h, w)
    } else {
        let h = longest;
        let mut w = (h as f64 * aspect) as usize;
        if !w.is_multiple_of(2) {
            w += 1;
        }
        (h, w)
    };
    h = h.max(1);
    w = w.max(1);
    let aspect = w as f64 / h as f64;
    if w >= h && w > MAX_IMAGE_SIZE {
        w = MAX_IMAGE_SIZE;
        h = (w as f64 / aspect) as usize;
    } else if h > w && h > MAX_IMAGE_SIZE {
        h = MAX_IMAGE_SIZE;
        w = (h as f64 * aspect) as usize;
    }
    (h.max(1), w.max(1))
}

/// `resize_for_vision_encoder`: `(height, width)` rounded up to multiples of the tile side.
pub fn vision_encoder_size(height: usize, width: usize, tile: usize) -> (usize, usize) {
    let aspect = width as f64 / height as f64;
    let ceil_to = |v: usize| v.div_ceil(tile) * tile;
    if width >= height {
        let w = ceil_to(width);
        let h = ceil_to((w as f64 / aspect) as usize);
        (h, w)
    } else {
        let h = ceil_to(height);
        let w = ceil_to((h as f64 * aspect) as usize);
        (h, w)
    }
}

/// Processes images for SmolVLM.
#[derive(Clone, Debug)]
pub struct ImageProcessor {
    /// The settings.
    pub config: ImageProcessorConfig,
}

impl ImageProcessor {
    /// Processes one RGB image into frames.
    pub fn process(&self, rgb: &RgbImage, split: bool) -> ProcessedImage {
        let c = &self.config;
        let filter = c.filter();
        let tile = c.tile_size().unwrap_or(364);
        let mut img = rgb.clone();
        if c.do_resize {
            let (h, w) = match (c.size.longest_edge, c.size.height, c.size.width) {
                (Some(longest), _, _) => longest_edge_size(img.height, img.width, longest),
                (None, Some(h), Some(w)) => (h, w),
                _ => (img.height, img.width),
            };
            img = resize(&img, w, h, filter);
        }
        let (frames, rows, cols) = if split {
            let (h, w) = vision_encoder_size(img.height, img.width, tile);
            img = resize(&img, w, h, filter);
            if img.height > tile || img.width > tile {
                let rows = (img.height - tile) / tile + 1;
                let cols = (img.width - tile) / tile + 1;
                let mut frames = Vec::with_capacity(rows * cols + 1);
                for r in 0..rows {
                    for col in 0..cols {
                        frames.push(img.crop(col * tile, r * tile, tile, tile));
                    }
                }
                frames.push(resize(&img, tile, tile, filter));
                (frames, rows, cols)
            } else {
                (vec![img], 0, 0)
            }
        } else {
            (vec![resize(&img, tile, tile, filter)], 0, 0)
        };
        let (height, width) = (frames[0].height, frames[0].width);
        let table = self.normalise_table();
        ProcessedImage {
            frames: frames
                .par_iter()
                .map(|f| self.normalise(f, &table))
                .collect(),
            height,
            width,
            rows,
            cols,
        }
    }

    /// Rescale (in float64, as numpy does) and normalise (float32) to channel-major values.
    ///
    /// The result depends only on the byte and the channel, so it is read from a 256-entry
    /// table per channel.
    fn normalise(&self, img: &RgbImage, table: &[[f32; 256]; 3]) -> Vec<f32> {
        let plane = img.width * img.height;
        let mut out = vec![0.0f32; 3 * plane];
        let (r, rest) = out.split_at_mut(plane);
        let (g, b) = rest.split_at_mut(plane);
        for (i, px) in img.data.chunks_exact(3).enumerate() {
            r[i] = table[0][px[0] as usize];
            g[i] = table[1][px[1] as usize];
            b[i] = table[2][px[2] as usize];
        }
        out
    }

    /// The normalised value of every byte, per channel.
    fn normalise_table(&self) -> [[f32; 256]; 3] {
        let c = &self.config;
        let mut table = [[0.0f32; 256]; 3];
        for (ch, row) in table.iter_mut().enumerate() {
            for (byte, slot) in row.iter_mut().enumerate() {
                let mut v = if c.do_rescale {
                    (byte as f64 * c.rescale_factor) as f32
                } else {
                    byte as f32
                };
                if c.do_normalize {
                    v = (v - c.image_mean[ch]) / c.image_std[ch];
                }
                *slot = v;
            }
        }
        table
    }
}

/// Decodes image bytes (PNG, JPEG, WebP, GIF, BMP); `origin` names the source in errors.
///
/// JPEG goes through libjpeg-turbo's decoder (mozjpeg), the one Pillow uses, so decoded
/// pixels are identical to `PIL.Image.open`'s; other decoders differ by up to 4 levels.
pub fn decode_image(bytes: &[u8], origin: &str) -> Result<DynamicImage> {
    let header = ::image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .ok()
        .and_then(|r| r.into_dimensions().ok());
    if let Some((w, h)) = header {
        if u64::from(w) * u64::from(h) > MAX_IMAGE_PIXELS {
            return Err(too_many_pixels(origin, w.into(), h.into()));
        }
    }
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        if let Some(img) = decode_jpeg_like_pillow(bytes) {
            return Ok(img);
        }
    }
    image::load_from_memory(bytes).map_err(|e| DataError::Image {
        source_name: origin.into(),
        message: format!("cannot decode image: {e}"),
    })
}

/// Pillow's decompression-bomb limit (`2 * Image.MAX_IMAGE_PIXELS`): larger images are refused
/// before their pixels are allocated.
pub const MAX_IMAGE_PIXELS: u64 = 178_956_970;

fn too_many_pixels(origin: &str, w: u64, h: u64) -> DataError {
    DataError::Image {
        source_name: origin.into(),
        message: format!(
            "{w}x{h} pixels is more than {MAX_IMAGE_PIXELS} (Pillow's decompression-bomb limit)"
        ),
    }
}

/// libjpeg-turbo decoding to RGB; `None` when it fails (corrupt data, CMYK...), in which case
/// the caller falls back to the `image` crate and its error message.
fn decode_jpeg_like_pillow(bytes: &[u8]) -> Option<DynamicImage> {
    // mozjpeg reports libjpeg errors by unwinding; catch them here.
    let decoded = std::panic::catch_unwind(|| -> std::io::Result<(usize, usize, Vec<u8>)> {
        let header = mozjpeg::Decompress::new_mem(bytes)?;
        if (header.width() as u64) * (header.height() as u64) > MAX_IMAGE_PIXELS {
            return Err(std::io::Error::other("too many pixels"));
        }
        let mut rgb = header.rgb()?;
        let (width, height) = (rgb.width(), rgb.height());
        let pixels: Vec<[u8; 3]> = rgb.read_scanlines()?;
        rgb.finish()?;
        Ok((width, height, pixels.concat()))
    });
    match decoded {
        Ok(Ok((width, height, data))) => {
            ::image::RgbImage::from_raw(width as u32, height as u32, data)
                .map(DynamicImage::ImageRgb8)
        }
        _ => None,
    }
}

/// Reads and decodes an image file.
pub fn open_image(path: &Path) -> Result<DynamicImage> {
    let bytes = std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    decode_image(&bytes, &path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_matches_the_spec_example() {
        // SPEC §5: E=96, T=32: 80x48 (w x h) -> 96x58 -> 96x64 -> 2 rows x 3 cols + global
        assert_eq!(longest_edge_size(48, 80, 96), (58, 96));
        assert_eq!(vision_encoder_size(58, 96, 32), (64, 96));
        let p = ImageProcessor {
            config: ImageProcessorConfig {
                size: SizeSpec::longest(96),
                max_image_size: SizeSpec::longest(32),
                ..Default::default()
            },
        };
        let img = RgbImage {
            width: 80,
            height: 48,
            data: vec![128; 80 * 48 * 3],
        };
        let out = p.process(&img, true);
        assert_eq!((out.rows, out.cols, out.frames.len()), (2, 3, 7));
        assert_eq!((out.height, out.width), (32, 32));
        assert!((out.frames[0][0] - (128.0 / 255.0 - 0.5) / 0.5).abs() < 1e-6);
        let out = p.process(&img, false);
        assert_eq!((out.rows, out.cols, out.frames.len()), (0, 0, 1));
    }

    #[test]
    fn portrait_rounding_and_cap() {
        assert_eq!(longest_edge_size(100, 33, 64), (64, 22));
        assert_eq!(longest_edge_size(10, 10000, 8000), (4, 4096));
    }
}
