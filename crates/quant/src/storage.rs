//! Frozen weights stored in fewer bits on the device, dequantised on the fly for the matmul:
//! bf16 / f16 (bit patterns, decoded exactly), int8 row-wise, NF4 / FP4 blockwise with
//! optional double-quantised statistics.

use burn::module::Module;
use burn::tensor::{backend::Backend, Int, IntDType, Tensor, TensorData};

use crate::bnb::{self, DOUBLE_QUANT_BLOCKSIZE};
use crate::config::{QuantConfig, StorageFormat};

/// The float16-family formats stored as 16-bit patterns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HalfKind {
    /// bfloat16.
    Bf16,
    /// IEEE half.
    F16,
}

/// A frozen `[rows, cols]` weight in a compact format. Only plain tensors (never parameters),
/// so nothing here is trainable.
#[derive(Module, Debug)]
pub struct QuantizedWeight<B: Backend> {
    /// bf16/f16 bit patterns `[rows, cols]`, int8 codes `[rows, cols]`, or packed 4-bit codes
    /// `[rows·cols/2]` (as integer tensors; u16 / i8 / u8 storage where the backend has it).
    pub codes: Tensor<B, 1, Int>,
    /// int8: per-row absmax; 4-bit: per-block absmax (when not double-quantised).
    pub scales: Option<Tensor<B, 1>>,
    /// Double quantisation: 8-bit codes of the block absmax minus `offset`.
    pub scale_codes: Option<Tensor<B, 1, Int>>,
    /// Double quantisation: absmax of each 256 block absmax values.
    pub scale_absmax: Option<Tensor<B, 1>>,
    /// Lookup table (4-bit code, dynamic map, or half exponent table).
    pub table: Tensor<B, 1>,
    /// Second lookup table (the dynamic map of double quantisation).
    pub table2: Option<Tensor<B, 1>>,
    /// The storage format.
    #[module(skip)]
    pub format: StorageFormat,
    /// `[rows, cols]`.
    #[module(skip)]
    pub shape: [usize; 2],
    /// Double quantisation: the mean of the block absmax values.
    #[module(skip)]
    pub offset: f32,
}

/// An integer tensor in the data's own (compact) dtype when the backend supports it.
fn int_tensor<B: Backend>(data: TensorData, device: &B::Device) -> Tensor<B, 1, Int> {
    let dtype = data.dtype;
    if B::supports_dtype(device, dtype) {
        Tensor::from_data(data, (device, dtype))
    } else {
        Tensor::from_data(data, device)
    }
}

/// Codes widened for arithmetic and indexing.
fn widen<B: Backend>(t: Tensor<B, 1, Int>) -> Tensor<B, 1, Int> {
    t.cast(IntDType::I32)
}

fn float_tensor<B: Backend>(values: Vec<f32>, device: &B::Device) -> Tensor<B, 1> {
    let n = values.len();
    Tensor::from_data(TensorData::new(values, [n]), device)
}

/// `2^(e - bias)` for every exponent field value (subnormals use the minimum exponent).
fn exponent_table(kind: HalfKind) -> Vec<f32> {
    match kind {
        HalfKind::Bf16 => (0..256).map(|e: i32| 2f32.powi(e.max(1) - 127)).collect(),
        HalfKind::F16 => (0..32).map(|e: i32| 2f32.powi(e.max(1) - 15)).collect(),
    }
}

impl<B: Backend> QuantizedWeight<B> {
    /// Quantises `values` (`[rows, cols]`, row-major) in `format` on the host and uploads the
    /// compact form.
    pub fn quantize(values: &[f32], shape: [usize; 2], format: StorageFormat, device: &B::Device) -> Self {
        let n = shape[0] * shape[1];
        let mut out = Self {
            codes: int_tensor(TensorData::new(vec![0i32], [1]), device),
            scales: None,
            scale_codes: None,
            scale_absmax: None,
            table: float_tensor(vec![0.0], device),
            table2: None,
            format,
            shape,
            offset: 0.0,
        };
        match format {
            StorageFormat::Bf16 | StorageFormat::F16 => {
                let kind = if format == StorageFormat::Bf16 { HalfKind::Bf16 } else { HalfKind::F16 };
                let bits: Vec<u16> = values
                    .iter()
                    .map(|v| match kind {
                        HalfKind::Bf16 => half::bf16::from_f32(*v).to_bits(),
                        HalfKind::F16 => half::f16::from_f32(*v).to_bits(),
                    })
                    .collect();
                out.codes = int_tensor(TensorData::new(bits, [n]), device);
                out.table = float_tensor(exponent_table(kind), device);
            }
            StorageFormat::Int8 => {
                let (codes, stats) = bnb::quantize_int8_rows(values, shape[1]);
                out.codes = int_tensor(TensorData::new(codes, [n]), device);
                out.scales = Some(float_tensor(stats, device));
            }
            StorageFormat::FourBit {
                kind,
                blocksize,
                double_quant,
            } => {
                let (packed, absmax) = bnb::quantize_4bit(values, blocksize, kind);
                let m = packed.len();
                out.codes = int_tensor(TensorData::new(packed, [m]), device);
                out.table = float_tensor(kind.code().to_vec(), device);
                if double_quant {
                    let dq = bnb::double_quantize(&absmax);
                    let k = dq.codes.len();
                    out.scale_codes = Some(int_tensor(TensorData::new(dq.codes, [k]), device));
                    out.scale_absmax = Some(float_tensor(dq.absmax2, device));
                    out.table2 = Some(float_tensor(crate::tables::dynamic_map().to_vec(), device));
                    out.offset = dq.offset;
                } else {
                    out.scales = Some(float_tensor(absmax, device));
                }
            }
        }
        out
    }

    /// `[rows, cols]`.
    pub fn dims(&self) -> [usize; 2] {
        self.shape
    }

    /// The device.
    pub fn device(&self) -> B::Device {
        self.table.device()
    }

    /// Per-block absmax of 4-bit storage, undoing double quantisation on the device.
    fn block_absmax(&self) -> Tensor<B, 1> {
        if let Some(s) = &self.scales {
            return s.clone();
        }
        let (Some(codes), Some(absmax2), Some(table2)) = (&self.scale_codes, &self.scale_absmax, &self.table2) else {
            return float_tensor(vec![], &self.device());
        };
        let n = codes.dims()[0];
        let values = table2.clone().select(0, widen(codes.clone()));
        let blocks = n.div_ceil(DOUBLE_QUANT_BLOCKSIZE);
        let scale = repeat_each(absmax2.clone(), DOUBLE_QUANT_BLOCKSIZE, blocks).narrow(0, 0, n);
        values * scale + self.offset
    }

    /// The weight as f32 `[rows, cols]`, computed on the device.
    pub fn dequantize(&self) -> Tensor<B, 2> {
        let [rows, cols] = self.shape;
        let n = rows * cols;
        match self.format {
            StorageFormat::Bf16 | StorageFormat::F16 => {
                let (exp_shift, exp_mask, mant_bits) = match self.format {
                    StorageFormat::Bf16 => (7, 255, 128.0f32),
                    _ => (10, 31, 1024.0f32),
                };
                let bits = widen(self.codes.clone());
                let sign = bits.clone().div_scalar(32768);
                let exponent = bits.clone().div_scalar(1 << exp_shift).remainder_scalar(exp_mask + 1);
                let mantissa = bits.remainder_scalar(1 << exp_shift).float() / mant_bits;
                let normal = exponent.clone().greater_elem(0).float();
                let magnitude = self.table.clone().select(0, exponent) * (normal + mantissa);
                let signed = magnitude * (sign.float() * -2.0 + 1.0);
                signed.reshape([rows, cols])
            }
            StorageFormat::Int8 => {
                let inv127 = 7.874015718698502e-3_f64 as f32;
                let scales = self.scales.clone().unwrap_or_else(|| float_tensor(vec![1.0; rows], &self.device()));
                let codes: Tensor<B, 2> = widen(self.codes.clone()).float().reshape([rows, cols]);
                codes * scales.unsqueeze_dim::<2>(1) * inv127
            }
            StorageFormat::FourBit { blocksize, .. } => {
                let packed = widen(self.codes.clone());
                let m = packed.dims()[0];
                let high = packed.clone().div_scalar(16);
                let low = packed.remainder_scalar(16);
                let codes: Tensor<B, 1, Int> = Tensor::stack::<2>(vec![high, low], 1).reshape([2 * m]).narrow(0, 0, n);
                let values = self.table.clone().select(0, codes);
                let blocks = n.div_ceil(blocksize);
                let scale = repeat_each(self.block_absmax(), blocksize, blocks).narrow(0, 0, n);
                (values * scale).reshape([rows, cols])
            }
        }
    }

    /// Bytes held on the device by this weight.
    pub fn storage_bytes(&self) -> usize {
        let [rows, cols] = self.shape;
        let n = rows * cols;
        match self.format {
            StorageFormat::Bf16 | StorageFormat::F16 => 2 * n,
            StorageFormat::Int8 => n + 4 * rows,
            StorageFormat::FourBit { blocksize, double_quant, .. } => {
                let blocks = n.div_ceil(blocksize);
                let stats = if double_quant {
                    blocks + 4 * blocks.div_ceil(DOUBLE_QUANT_BLOCKSIZE) + 4
                } else {
                    4 * blocks
                };
                n.div_ceil(2) + stats
            }
        }
    }
}

/// `[k]` -> `[k·times]` with each value repeated `times` times in place.
fn repeat_each<B: Backend>(t: Tensor<B, 1>, times: usize, k: usize) -> Tensor<B, 1> {
    t.narrow(0, 0, k).unsqueeze_dim::<2>(1).expand([k, times]).reshape([k * times])
}

/// The format `config` gives the weight at `path`, if any.
pub fn format_for(config: Option<&QuantConfig>, path: &str) -> Option<StorageFormat> {
    config.and_then(|c| c.format_for(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bnb::FourBit;

    type B = burn::backend::NdArray;

    fn sample(n: usize) -> Vec<f32> {
        (0..n).map(|i| ((i * 7919 % 997) as f32 - 498.0) / 311.0).collect()
    }

    #[test]
    fn device_dequantisation_equals_host_reference() {
        let dev = Default::default();
        let shape = [6, 50];
        let values = sample(300);
        for format in [
            StorageFormat::Int8,
            StorageFormat::FourBit { kind: FourBit::Nf4, blocksize: 64, double_quant: false },
            StorageFormat::FourBit { kind: FourBit::Fp4, blocksize: 32, double_quant: true },
        ] {
            let q = QuantizedWeight::<B>::quantize(&values, shape, format, &dev);
            let got = q.dequantize().into_data().to_vec::<f32>().unwrap();
            let want = match format {
                StorageFormat::Int8 => {
                    let (c, s) = bnb::quantize_int8_rows(&values, 50);
                    bnb::dequantize_int8_rows(&c, &s, 50)
                }
                StorageFormat::FourBit { kind, blocksize, double_quant } => {
                    let (p, a) = bnb::quantize_4bit(&values, blocksize, kind);
                    let a = if double_quant { bnb::double_dequantize(&bnb::double_quantize(&a)) } else { a };
                    bnb::dequantize_4bit(&p, &a, blocksize, kind, 300)
                }
                _ => unreachable!(),
            };
            assert_eq!(got, want, "{format:?}");
        }
    }

    #[test]
    fn half_storage_decodes_exactly() {
        let dev = Default::default();
        let values = vec![1.0f32, -2.5, 3.0e-3, 1.0e-40, 65504.0, -0.0, 0.333_333_34, 1.5e-5];
        for (format, round) in [
            (StorageFormat::Bf16, (|v: f32| half::bf16::from_f32(v).to_f32()) as fn(f32) -> f32),
            (StorageFormat::F16, |v: f32| half::f16::from_f32(v).to_f32()),
        ] {
            let q = QuantizedWeight::<B>::quantize(&values, [2, 4], format, &dev);
            let got = q.dequantize().into_data().to_vec::<f32>().unwrap();
            let want: Vec<f32> = values.iter().map(|v| round(*v)).collect();
            assert_eq!(got, want, "{format:?}");
        }
    }
}
