//! bitsandbytes' quantisation algorithms on the host, step for step as its CPU code paths
//! (0.50.2) compute them, so codes and statistics come out bit for bit the same:
//!
//! * 4-bit NF4 / FP4 (`quantize_4bit`, default backend): blockwise absmax, `x · (1/absmax)`
//!   clamped to [-1, 1], bucketised against the midpoints of the sorted code, two codes per
//!   byte, the first in the high nibble;
//! * double quantisation (`compress_statistics`): the absmax values minus their mean,
//!   8-bit blockwise with blocksize 256 against the dynamic map (the CPU kernel's 65536-point
//!   lookup table of nearest codes);
//! * int8 row-wise absmax (`int8_vectorwise_quant`): `round(x · (127 / absmax_row))`.

use std::sync::OnceLock;

use crate::tables::{dynamic_map, unsigned_dynamic_map, FP4, NF4};

/// The 4-bit data types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FourBit {
    /// NormalFloat4.
    Nf4,
    /// 4-bit float (e2m1).
    Fp4,
}

impl FourBit {
    /// The code table, indexed by the 4-bit code.
    pub fn code(self) -> [f32; 16] {
        match self {
            Self::Nf4 => NF4,
            Self::Fp4 => FP4,
        }
    }

    /// Midpoints of the sorted code and, for each sorted position, its code index.
    fn bounds(self) -> ([f32; 15], [u8; 16]) {
        let code = self.code();
        let mut order: Vec<u8> = (0..16).collect();
        // torch.argsort is stable here: FP4's two zeros keep their order.
        order.sort_by(|a, b| {
            code[*a as usize]
                .total_cmp(&code[*b as usize])
                .then(a.cmp(b))
        });
        let sorted: Vec<f32> = order.iter().map(|i| code[*i as usize]).collect();
        let mut bounds = [0.0f32; 15];
        for i in 0..15 {
            bounds[i] = (sorted[i] + sorted[i + 1]) / 2.0;
        }
        let mut ord = [0u8; 16];
        ord.copy_from_slice(&order);
        (bounds, ord)
    }
}

/// Blockwise absolute maxima and the normalised values `x / absmax` clamped to [-1, 1], as
/// bitsandbytes' default backend computes them: full blocks multiply by `1 / max(absmax,
/// 1e-38)` and keep the raw absmax; a short last block divides by its clamped absmax and
/// stores that.
fn normalise_blocks(values: &[f32], blocksize: usize) -> (Vec<f32>, Vec<f32>) {
    let mut absmax = Vec::with_capacity(values.len().div_ceil(blocksize));
    let mut scaled = Vec::with_capacity(values.len());
    for block in values.chunks(blocksize) {
        let am = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        if block.len() == blocksize {
            let inv = 1.0f32 / am.max(1e-38);
            scaled.extend(block.iter().map(|v| (v * inv).clamp(-1.0, 1.0)));
            absmax.push(am);
        } else {
            let am = am.max(1e-38);
            scaled.extend(block.iter().map(|v| (v / am).clamp(-1.0, 1.0)));
            absmax.push(am);
        }
    }
    (scaled, absmax)
}

/// `torch.bucketize(x, bounds, right=False)`: the number of bounds strictly below `x`.
fn bucketize(x: f32, bounds: &[f32]) -> usize {
    bounds.partition_point(|b| *b < x)
}

/// Quantises to packed 4-bit codes (two per byte, first in the high nibble) and blockwise
/// absmax, as `bitsandbytes.functional.quantize_4bit` without double quantisation.
pub fn quantize_4bit(values: &[f32], blocksize: usize, kind: FourBit) -> (Vec<u8>, Vec<f32>) {
    let (bounds, order) = kind.bounds();
    let (mut scaled, absmax) = normalise_blocks(values, blocksize);
    if scaled.len() % 2 == 1 {
        // torch pads the scaled values with 0.0 before bucketising.
        scaled.push(0.0);
    }
    let code = |x: f32| order[bucketize(x, &bounds)];
    let packed = scaled
        .chunks(2)
        .map(|c| (code(c[0]) << 4) | code(c[1]))
        .collect();
    (packed, absmax)
}

/// Unpacks 4-bit codes and scales them back: `code[q] · absmax[block]`.
pub fn dequantize_4bit(
    packed: &[u8],
    absmax: &[f32],
    blocksize: usize,
    kind: FourBit,
    n: usize,
) -> Vec<f32> {
    let code = kind.code();
    (0..n)
        .map(|i| {
            let byte = packed[i / 2];
            let q = if i % 2 == 0 { byte >> 4 } else { byte & 0x0F };
            code[q as usize] * absmax[i / blocksize]
        })
        .collect()
}

/// Size of the lookup table of bitsandbytes' CPU blockwise quantiser.
const LUT_SIZE: usize = 65536;

/// bitsandbytes' CPU lookup table: the normalised range [-1, 1] cut into 65536 points
/// `-1 + 2i/65535`, each mapped to the nearest code (by midpoints, ties to the lower code).
fn quantize_lut(code: &[f32; 256]) -> Vec<u8> {
    let midpoints: Vec<f32> = code.windows(2).map(|w| 0.5f32 * (w[0] + w[1])).collect();
    let mut lut = Vec::with_capacity(LUT_SIZE);
    let mut idx = 0usize;
    for i in 0..LUT_SIZE {
        let val = -1.0f32 + (2.0f32 * i as f32) / (LUT_SIZE - 1) as f32;
        while idx < 255 && midpoints[idx] < val {
            idx += 1;
        }
        lut.push(idx as u8);
    }
    lut
}

/// A 256-entry code table of 8-bit blockwise quantisation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code8 {
    /// `create_dynamic_map(signed=True)` (double quantisation, optimizers' first moments).
    Signed,
    /// `create_dynamic_map(signed=False)` (optimizers' second moments).
    Unsigned,
}

impl Code8 {
    /// The table.
    pub fn table(self) -> [f32; 256] {
        match self {
            Self::Signed => dynamic_map(),
            Self::Unsigned => unsigned_dynamic_map(),
        }
    }

    /// The quantiser's lookup table, built once per code.
    fn lut(self) -> &'static [u8] {
        static SIGNED: OnceLock<Vec<u8>> = OnceLock::new();
        static UNSIGNED: OnceLock<Vec<u8>> = OnceLock::new();
        let cell = match self {
            Self::Signed => &SIGNED,
            Self::Unsigned => &UNSIGNED,
        };
        cell.get_or_init(|| quantize_lut(&self.table()))
    }
}

/// 8-bit blockwise quantisation against the dynamic map, as bitsandbytes' CPU kernel
/// (`quantize_cpu_impl`, 0.50): `x · (1/absmax)` rounded onto a 65536-point grid of [-1, 1]
/// and looked up in a table of nearest codes; an all-zero block gets code 0.
pub fn quantize_blockwise_8bit(values: &[f32], blocksize: usize) -> (Vec<u8>, Vec<f32>) {
    let mut codes = vec![0u8; values.len()];
    let mut absmax = vec![0.0f32; values.len().div_ceil(blocksize)];
    quantize_blockwise_8bit_into(values, Code8::Signed, blocksize, &mut codes, &mut absmax);
    (codes, absmax)
}

/// [`quantize_blockwise_8bit`] against `code`, into existing buffers (optimizer states are
/// requantised in place every step). NaN is left out of the absmax and stored as code 0, as
/// the C++ kernel does.
pub fn quantize_blockwise_8bit_into(
    values: &[f32],
    code: Code8,
    blocksize: usize,
    codes: &mut [u8],
    absmax: &mut [f32],
) {
    let lut = code.lut();
    for ((block, out), am) in values
        .chunks(blocksize)
        .zip(codes.chunks_mut(blocksize))
        .zip(absmax.iter_mut())
    {
        *am = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        if *am == 0.0 {
            out.fill(0);
            continue;
        }
        let inv = 1.0f32 / *am;
        for (v, q) in block.iter().zip(out.iter_mut()) {
            let normed = (v * inv).clamp(-1.0, 1.0);
            let grid = ((normed + 1.0) * 0.5 * (LUT_SIZE - 1) as f32 + 0.5) as usize;
            *q = lut[grid.min(LUT_SIZE - 1)];
        }
    }
}

/// `code[q] · absmax[block]` for 8-bit blockwise codes of the signed dynamic map.
pub fn dequantize_blockwise_8bit(codes: &[u8], absmax: &[f32], blocksize: usize) -> Vec<f32> {
    let mut out = vec![0.0; codes.len()];
    dequantize_blockwise_8bit_into(codes, absmax, Code8::Signed, blocksize, &mut out);
    out
}

/// `code[q] · absmax[block]` into `out`.
pub fn dequantize_blockwise_8bit_into(
    codes: &[u8],
    absmax: &[f32],
    code: Code8,
    blocksize: usize,
    out: &mut [f32],
) {
    let table = code.table();
    for (i, (q, o)) in codes.iter().zip(out.iter_mut()).enumerate() {
        *o = table[*q as usize] * absmax[i / blocksize];
    }
}

/// Double-quantised absmax statistics (`compress_statistics=True`).
#[derive(Clone, Debug, PartialEq)]
pub struct DoubleQuant {
    /// 8-bit codes of `absmax - offset`.
    pub codes: Vec<u8>,
    /// Absmax of each block of 256 absmax values.
    pub absmax2: Vec<f32>,
    /// The mean of the absmax values.
    pub offset: f32,
}

/// Blocksize of the second quantisation.
pub const DOUBLE_QUANT_BLOCKSIZE: usize = 256;

/// Quantises absmax values: their mean as offset, the rest 8-bit blockwise (blocksize 256).
/// The mean is summed in f64 and rounded once (torch sums in float32 with a cascade, which
/// can differ in the last bit).
pub fn double_quantize(absmax: &[f32]) -> DoubleQuant {
    let offset =
        (absmax.iter().map(|v| f64::from(*v)).sum::<f64>() / absmax.len().max(1) as f64) as f32;
    double_quantize_with_offset(absmax, offset)
}

/// [`double_quantize`] around a given `offset`.
pub fn double_quantize_with_offset(absmax: &[f32], offset: f32) -> DoubleQuant {
    let centred: Vec<f32> = absmax.iter().map(|a| a - offset).collect();
    let (codes, absmax2) = quantize_blockwise_8bit(&centred, DOUBLE_QUANT_BLOCKSIZE);
    DoubleQuant {
        codes,
        absmax2,
        offset,
    }
}

/// The absmax values of [`DoubleQuant`]: `dequantize_blockwise(codes) + offset`.
pub fn double_dequantize(dq: &DoubleQuant) -> Vec<f32> {
    dequantize_blockwise_8bit(&dq.codes, &dq.absmax2, DOUBLE_QUANT_BLOCKSIZE)
        .into_iter()
        .map(|v| v + dq.offset)
        .collect()
}

/// `int8_vectorwise_quant` of a `[rows, cols]` matrix: int8 codes and per-row absmax.
pub fn quantize_int8_rows(values: &[f32], cols: usize) -> (Vec<i8>, Vec<f32>) {
    let mut codes = Vec::with_capacity(values.len());
    let mut stats = Vec::with_capacity(values.len() / cols.max(1));
    for row in values.chunks(cols) {
        let absmax = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let scale = 127.0f32 / absmax;
        for v in row {
            codes.push((v * scale).round_ties_even() as i8);
        }
        stats.push(absmax);
    }
    (codes, stats)
}

/// `1/127` as bitsandbytes rounds it to f32 (the int8 row scale's factor).
pub(crate) const INV_127: f32 = 7.874015718698502e-3_f64 as f32;

/// `int8_vectorwise_dequant`: `code · absmax_row · (1/127 as f32)`.
pub fn dequantize_int8_rows(codes: &[i8], stats: &[f32], cols: usize) -> Vec<f32> {
    codes
        .iter()
        .enumerate()
        .map(|(i, q)| f32::from(*q) * stats[i / cols] * INV_127)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn four_bit_round_trip_hits_table_values() {
        let values: Vec<f32> = (0..130)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        for kind in [FourBit::Nf4, FourBit::Fp4] {
            let (packed, absmax) = quantize_4bit(&values, 64, kind);
            assert_eq!(packed.len(), 65);
            assert_eq!(absmax.len(), 3);
            let back = dequantize_4bit(&packed, &absmax, 64, kind, values.len());
            for (b, v) in back.chunks(64).zip(values.chunks(64)) {
                let am = v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
                // The element equal to the absmax comes back exactly.
                assert!(b.iter().any(|x| (x.abs() - am).abs() < 1e-6));
            }
        }
    }

    #[test]
    fn int8_rows() {
        let (codes, stats) = quantize_int8_rows(&[1.0, -2.0, 0.5, 4.0, 0.0, -1.0], 3);
        assert_eq!(codes, vec![64, -127, 32, 127, 0, -32]);
        assert_eq!(stats, vec![2.0, 4.0]);
        let back = dequantize_int8_rows(&codes, &stats, 3);
        assert!((back[1] + 2.0).abs() < 1e-6);
    }
}
