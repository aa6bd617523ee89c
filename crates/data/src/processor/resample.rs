//! Pillow's resampling and alpha compositing on 8-bit images, ported to give the same bytes
//! as `PIL.Image.resize` (two separable passes, 22-bit fixed-point coefficients, clipping after
//! each pass) and `PIL.Image.alpha_composite`.
//!
//! transformers' PIL image processor resizes with these, so matching them bit for bit keeps
//! `pixel_values` equal to transformers' up to float rounding.

use rayon::prelude::*;

/// An 8-bit RGB image, interleaved `[height][width][3]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RgbImage {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `height · width · 3` bytes.
    pub data: Vec<u8>,
}

impl RgbImage {
    /// The `width×height` sub-image at `(x, y)`.
    pub fn crop(&self, x: usize, y: usize, width: usize, height: usize) -> RgbImage {
        let mut data = Vec::with_capacity(width * height * 3);
        for row in y..y + height {
            let start = (row * self.width + x) * 3;
            data.extend_from_slice(&self.data[start..start + width * 3]);
        }
        RgbImage {
            width,
            height,
            data,
        }
    }
}

/// Resampling filters, numbered as `PIL.Image.Resampling`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filter {
    /// 0: NEAREST is not supported by vlmtune (it uses another code path in Pillow).
    Box,
    /// 2.
    Bilinear,
    /// 5.
    Hamming,
    /// 3.
    Bicubic,
    /// 1.
    Lanczos,
}

impl Filter {
    /// The filter of a `resample` value in `preprocessor_config.json`.
    pub fn from_pil(code: u32) -> Option<Self> {
        match code {
            1 => Some(Self::Lanczos),
            2 => Some(Self::Bilinear),
            3 => Some(Self::Bicubic),
            4 => Some(Self::Box),
            5 => Some(Self::Hamming),
            _ => None,
        }
    }

    fn support(self) -> f64 {
        match self {
            Self::Box => 0.5,
            Self::Bilinear | Self::Hamming => 1.0,
            Self::Bicubic => 2.0,
            Self::Lanczos => 3.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        match self {
            Self::Box => {
                if x > -0.5 && x <= 0.5 {
                    1.0
                } else {
                    0.0
                }
            }
            Self::Bilinear => {
                let x = x.abs();
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Self::Hamming => {
                let x = x.abs();
                if x == 0.0 {
                    1.0
                } else if x >= 1.0 {
                    0.0
                } else {
                    let x = x * std::f64::consts::PI;
                    x.sin() / x * (0.54f32 as f64 + 0.46f32 as f64 * x.cos())
                }
            }
            Self::Bicubic => {
                let a = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * a
                } else {
                    0.0
                }
            }
            Self::Lanczos => {
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let x = x * std::f64::consts::PI;
        x.sin() / x
    }
}

const PRECISION_BITS: u32 = 32 - 8 - 2;
/// The rounding offset every accumulator starts from.
const HALF: i32 = 1 << (PRECISION_BITS - 1);

/// Per output pixel: the first input index, and fixed-point weights of the inputs from there.
struct Coefficients {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    weights: Vec<i32>,
}

/// `precompute_coeffs` + `normalize_coeffs_8bpc` of Pillow's `Resample.c`.
fn coefficients(in_size: usize, out_size: usize, filter: Filter) -> Coefficients {
    let (in0, in1) = (0.0f32, in_size as f32);
    let scale = f64::from(in1 - in0) / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut k = vec![0.0f64; ksize];
    for xx in 0..out_size {
        let center = f64::from(in0) + (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let count = xmax.saturating_sub(xmin);
        let mut ww = 0.0;
        for (x, slot) in k.iter_mut().enumerate().take(count) {
            let w = filter.weight((x as f64 + xmin as f64 - center + 0.5) * ss);
            *slot = w;
            ww += w;
        }
        for x in 0..ksize {
            let value = if x < count {
                if ww != 0.0 {
                    k[x] / ww
                } else {
                    k[x]
                }
            } else {
                0.0
            };
            let fixed = value * f64::from(1u32 << PRECISION_BITS);
            weights[xx * ksize + x] = if value < 0.0 {
                (-0.5 + fixed) as i32
            } else {
                (0.5 + fixed) as i32
            };
        }
        bounds.push((xmin, count));
    }
    Coefficients {
        ksize,
        bounds,
        weights,
    }
}

fn clip8(value: i32) -> u8 {
    (value >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resizes `image` to `width×height` exactly as `PIL.Image.resize(..., resample=filter)` does
/// for an RGB image (no `box`, no `reducing_gap`), Pillow 13 pass order included: the vertical
/// pass runs first when the height shrinks by more than twice as many pixels as the width.
pub fn resize(image: &RgbImage, width: usize, height: usize, filter: Filter) -> RgbImage {
    if width == image.width && height == image.height {
        return image.clone();
    }
    let need_horizontal = width != image.width;
    let need_vertical = height != image.height;
    let shrink_h = image.height as i64 - height as i64;
    let shrink_w = image.width as i64 - width as i64;
    let horizontal_first = !(shrink_h > 0 && shrink_h > shrink_w * 2);
    if horizontal_first {
        let vert = coefficients(image.height, height, filter);
        let first_row = vert.bounds.first().map(|b| b.0).unwrap_or(0);
        let last_row = vert.bounds.last().map(|b| b.0 + b.1).unwrap_or(0);
        let tmp = if need_horizontal {
            horizontal_pass(image, first_row, last_row - first_row, width, filter)
        } else {
            image.clone()
        };
        let offset = if need_horizontal { first_row } else { 0 };
        if need_vertical {
            vertical_pass(&tmp, &vert, offset)
        } else {
            tmp
        }
    } else {
        let tmp = if need_vertical {
            vertical_pass(image, &coefficients(image.height, height, filter), 0)
        } else {
            image.clone()
        };
        if need_horizontal {
            horizontal_pass(&tmp, 0, tmp.height, width, filter)
        } else {
            tmp
        }
    }
}

/// Resamples rows `first_row .. first_row + rows` of `image` to `width` columns (rows in
/// parallel).
fn horizontal_pass(
    image: &RgbImage,
    first_row: usize,
    rows: usize,
    width: usize,
    filter: Filter,
) -> RgbImage {
    let horiz = coefficients(image.width, width, filter);
    let mut data = vec![0u8; rows * width * 3];
    data.par_chunks_mut(width * 3)
        .enumerate()
        .for_each(|(y, out)| {
            let src = &image.data
                [(y + first_row) * image.width * 3..(y + first_row + 1) * image.width * 3];
            for (xx, &(xmin, count)) in horiz.bounds.iter().enumerate() {
                let k = &horiz.weights[xx * horiz.ksize..xx * horiz.ksize + count];
                let taps = &src[xmin * 3..(xmin + count) * 3];
                let (mut r, mut g, mut b) = (HALF, HALF, HALF);
                for (px, w) in taps.chunks_exact(3).zip(k) {
                    r += i32::from(px[0]) * w;
                    g += i32::from(px[1]) * w;
                    b += i32::from(px[2]) * w;
                }
                out[xx * 3] = clip8(r);
                out[xx * 3 + 1] = clip8(g);
                out[xx * 3 + 2] = clip8(b);
            }
        });
    RgbImage {
        width,
        height: rows,
        data,
    }
}

/// Resamples columns with precomputed vertical coefficients; `image` row 0 is source row
/// `offset`. Each output row accumulates whole source rows, which vectorises, and output rows
/// run in parallel.
fn vertical_pass(image: &RgbImage, vert: &Coefficients, offset: usize) -> RgbImage {
    let width = image.width;
    let row_len = width * 3;
    let height = vert.bounds.len();
    let mut data = vec![0u8; height * row_len];
    data.par_chunks_mut(row_len)
        .enumerate()
        .for_each(|(yy, out)| {
            let (ymin, count) = vert.bounds[yy];
            let k = &vert.weights[yy * vert.ksize..yy * vert.ksize + count];
            let mut acc = vec![HALF; row_len];
            for (y, w) in k.iter().enumerate() {
                let start = (ymin - offset + y) * row_len;
                for (a, s) in acc.iter_mut().zip(&image.data[start..start + row_len]) {
                    *a += i32::from(*s) * w;
                }
            }
            for (o, a) in out.iter_mut().zip(&acc) {
                *o = clip8(*a);
            }
        });
    RgbImage {
        width,
        height,
        data,
    }
}

/// `PIL.Image.alpha_composite(white, rgba).convert("RGB")` for one pixel: Pillow's integer
/// formula with 7 extra bits of precision.
pub fn composite_on_white(rgba: [u8; 4]) -> [u8; 3] {
    let [r, g, b, a] = rgba.map(u32::from);
    if a == 0 {
        return [255, 255, 255];
    }
    const BITS: u32 = 7;
    let shift_div_255 = |v: u32| ((v >> 8) + v) >> 8;
    let blend = 255 * (255 - a);
    let outa255 = a * 255 + blend;
    let coef1 = a * 255 * 255 * (1 << BITS) / outa255;
    let coef2 = 255 * (1 << BITS) - coef1;
    let channel = |s: u32| (shift_div_255(s * coef1 + 255 * coef2 + (0x80 << BITS)) >> BITS) as u8;
    [channel(r), channel(g), channel(b)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(width: usize, height: usize) -> RgbImage {
        let mut data = Vec::with_capacity(width * height * 3);
        for y in 0..height {
            for x in 0..width {
                data.extend([
                    (x * 255 / width.max(1)) as u8,
                    (y * 255 / height.max(1)) as u8,
                    ((x * y) % 256) as u8,
                ]);
            }
        }
        RgbImage {
            width,
            height,
            data,
        }
    }

    #[test]
    fn same_size_is_a_copy_and_flat_images_stay_flat() {
        let img = gradient(7, 5);
        assert_eq!(resize(&img, 7, 5, Filter::Lanczos), img);
        let flat = RgbImage {
            width: 9,
            height: 4,
            data: vec![200; 9 * 4 * 3],
        };
        for (w, h) in [(3, 2), (20, 11), (9, 13)] {
            let out = resize(&flat, w, h, Filter::Lanczos);
            assert!(out.data.iter().all(|v| *v == 200), "{w}x{h}");
        }
    }

    #[test]
    fn composite_matches_pillow_edge_cases() {
        assert_eq!(composite_on_white([10, 20, 30, 255]), [10, 20, 30]);
        assert_eq!(composite_on_white([10, 20, 30, 0]), [255, 255, 255]);
        // PIL.Image.alpha_composite(white, (0, 0, 0, 128)) -> (127, 127, 127)
        assert_eq!(composite_on_white([0, 0, 0, 128]), [127, 127, 127]);
    }
}
