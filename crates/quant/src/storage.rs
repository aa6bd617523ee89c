//! Frozen weights stored in fewer bits on the device, dequantised on the fly for the matmul:
//! bf16 / f16 (bit patterns, decoded exactly), int8 row-wise, NF4 / FP4 blockwise with
//! optional double-quantised statistics.

use std::sync::Arc;

use burn::module::Module;
use burn::tensor::{backend::Backend, Int, IntDType, Tensor, TensorData};

use crate::bnb::{self, FourBit, DOUBLE_QUANT_BLOCKSIZE};
use crate::config::StorageFormat;
use crate::host_dequant;

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
    /// Lookup table (4-bit: the code values of each byte's two nibbles, `[256 · 2]`; half:
    /// the exponent table).
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
    /// On the CPU backend the compact data stays in host memory and is dequantised by the
    /// reference loops of [`crate::bnb`] (the backend's gathers cost ~25 ns an element); the
    /// tensor fields are then one-element placeholders.
    #[module(skip)]
    pub host: Option<Arc<HostStorage>>,
}

/// The compact data of a [`QuantizedWeight`] in host memory.
#[derive(Clone, Debug, PartialEq)]
pub enum HostStorage {
    /// bf16 / f16 bit patterns.
    Half {
        /// The bits.
        bits: Vec<u16>,
        /// Which 16-bit format.
        kind: HalfKind,
    },
    /// int8 codes and per-row absmax.
    Int8 {
        /// The codes, row-major.
        codes: Vec<i8>,
        /// Row absmax values.
        stats: Vec<f32>,
    },
    /// Packed 4-bit codes with plain or double-quantised block absmax.
    FourBit {
        /// Two codes per byte.
        packed: Vec<u8>,
        /// NF4 or FP4.
        kind: FourBit,
        /// Values per absmax.
        blocksize: usize,
        /// The block absmax values.
        scales: BlockScales,
    },
}

/// The per-block absmax of 4-bit storage.
#[derive(Clone, Debug, PartialEq)]
pub enum BlockScales {
    /// As f32 values.
    Plain(Vec<f32>),
    /// Double-quantised (`compress_statistics`).
    Double(bnb::DoubleQuant),
}

/// Whether `device` is the CPU (burn-flex) device, where host-side dequantisation is faster.
fn is_host_device<D: 'static>(device: &D) -> bool {
    (device as &dyn std::any::Any).is::<burn::backend::flex::FlexDevice>()
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

/// A 1-D integer tensor of `values`, in their own dtype where the backend has it.
fn int_vector<B: Backend, T: burn::tensor::Element>(
    values: Vec<T>,
    device: &B::Device,
) -> Tensor<B, 1, Int> {
    let n = values.len();
    int_tensor(TensorData::new(values, [n]), device)
}

/// Codes widened for arithmetic and indexing.
fn widen<B: Backend>(t: Tensor<B, 1, Int>) -> Tensor<B, 1, Int> {
    t.cast(IntDType::I32)
}

fn float_tensor<B: Backend>(values: Vec<f32>, device: &B::Device) -> Tensor<B, 1> {
    let n = values.len();
    Tensor::from_data(TensorData::new(values, [n]), device)
}

/// For every byte, the values of its two 4-bit codes (high nibble first), flattened
/// `[256 · 2]`.
fn byte_pair_table(kind: FourBit) -> Vec<f32> {
    let code = kind.code();
    (0..256usize)
        .flat_map(|b| [code[b >> 4], code[b & 0x0F]])
        .collect()
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
    pub fn quantize(
        values: &[f32],
        shape: [usize; 2],
        format: StorageFormat,
        device: &B::Device,
    ) -> Self {
        Self::quantize_with(values, shape, format, device, is_host_device(device))
    }

    /// [`QuantizedWeight::quantize`], choosing where the compact data lives: host memory
    /// (dequantised by host loops) or device tensors (dequantised by tensor ops, as on CUDA).
    pub fn quantize_with(
        values: &[f32],
        shape: [usize; 2],
        format: StorageFormat,
        device: &B::Device,
        on_host: bool,
    ) -> Self {
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
            host: None,
        };
        let host = Self::host_storage(values, shape, format);
        if on_host {
            out.host = Some(Arc::new(host));
            return out;
        }
        match host {
            HostStorage::Half { bits, kind } => {
                out.codes = int_vector(bits, device);
                out.table = float_tensor(exponent_table(kind), device);
            }
            HostStorage::Int8 { codes, stats } => {
                out.codes = int_vector(codes, device);
                out.scales = Some(float_tensor(stats, device));
            }
            HostStorage::FourBit {
                packed,
                kind,
                scales,
                ..
            } => {
                out.table = float_tensor(byte_pair_table(kind), device);
                out.codes = int_vector(packed, device);
                match scales {
                    BlockScales::Plain(absmax) => out.scales = Some(float_tensor(absmax, device)),
                    BlockScales::Double(dq) => {
                        out.scale_codes = Some(int_vector(dq.codes, device));
                        out.scale_absmax = Some(float_tensor(dq.absmax2, device));
                        out.table2 =
                            Some(float_tensor(crate::tables::dynamic_map().to_vec(), device));
                        out.offset = dq.offset;
                    }
                }
            }
        }
        out
    }

    /// The compact form in host memory.
    fn host_storage(values: &[f32], shape: [usize; 2], format: StorageFormat) -> HostStorage {
        match format {
            StorageFormat::Bf16 => HostStorage::Half {
                bits: values
                    .iter()
                    .map(|v| half::bf16::from_f32(*v).to_bits())
                    .collect(),
                kind: HalfKind::Bf16,
            },
            StorageFormat::F16 => HostStorage::Half {
                bits: values
                    .iter()
                    .map(|v| half::f16::from_f32(*v).to_bits())
                    .collect(),
                kind: HalfKind::F16,
            },
            StorageFormat::Int8 => {
                let (codes, stats) = bnb::quantize_int8_rows(values, shape[1]);
                HostStorage::Int8 { codes, stats }
            }
            StorageFormat::FourBit {
                kind,
                blocksize,
                double_quant,
            } => {
                let (packed, absmax) = bnb::quantize_4bit(values, blocksize, kind);
                let scales = if double_quant {
                    BlockScales::Double(bnb::double_quantize(&absmax))
                } else {
                    BlockScales::Plain(absmax)
                };
                HostStorage::FourBit {
                    packed,
                    kind,
                    blocksize,
                    scales,
                }
            }
        }
    }

    /// Dequantises host storage on every core ([`host_dequant`], equal to the reference loops
    /// of [`bnb`] bit for bit).
    fn dequantize_host(&self, host: &HostStorage) -> Vec<f32> {
        let [rows, cols] = self.shape;
        match host {
            HostStorage::Half { bits, kind } => match kind {
                HalfKind::Bf16 => {
                    host_dequant::widen_halves(bits, |b| half::bf16::from_bits(b).to_f32())
                }
                HalfKind::F16 => {
                    host_dequant::widen_halves(bits, |b| half::f16::from_bits(b).to_f32())
                }
            },
            HostStorage::Int8 { codes, stats } => {
                host_dequant::dequantize_int8_rows(codes, stats, cols)
            }
            HostStorage::FourBit {
                packed,
                kind,
                blocksize,
                scales,
            } => {
                let absmax: std::borrow::Cow<[f32]> = match scales {
                    BlockScales::Plain(absmax) => absmax.into(),
                    BlockScales::Double(dq) => bnb::double_dequantize(dq).into(),
                };
                host_dequant::dequantize_4bit(packed, &absmax, *blocksize, *kind, rows * cols)
            }
        }
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
        let (Some(codes), Some(absmax2), Some(table2)) =
            (&self.scale_codes, &self.scale_absmax, &self.table2)
        else {
            return float_tensor(vec![], &self.device());
        };
        let n = codes.dims()[0];
        let values = table2.clone().select(0, widen(codes.clone()));
        let blocks = n.div_ceil(DOUBLE_QUANT_BLOCKSIZE);
        let scale = repeat_each(absmax2.clone(), DOUBLE_QUANT_BLOCKSIZE, blocks).narrow(0, 0, n);
        values * scale + self.offset
    }

    /// The weight as f32 `[rows, cols]`, computed on the device (or, for host storage, on
    /// the host and uploaded).
    pub fn dequantize(&self) -> Tensor<B, 2> {
        let [rows, cols] = self.shape;
        let n = rows * cols;
        if let Some(host) = &self.host {
            let values = self.dequantize_host(host);
            return Tensor::from_data(TensorData::new(values, [rows, cols]), &self.device());
        }
        match self.format {
            StorageFormat::Bf16 | StorageFormat::F16 => {
                let (exp_shift, exp_mask, mant_bits) = match self.format {
                    StorageFormat::Bf16 => (7, 255, 128.0f32),
                    _ => (10, 31, 1024.0f32),
                };
                let bits = widen(self.codes.clone());
                let sign = bits.clone().div_scalar(32768);
                let exponent = bits
                    .clone()
                    .div_scalar(1 << exp_shift)
                    .remainder_scalar(exp_mask + 1);
                let mantissa = bits.remainder_scalar(1 << exp_shift).float() / mant_bits;
                let normal = exponent.clone().greater_elem(0).float();
                let magnitude = self.table.clone().select(0, exponent) * (normal + mantissa);
                let signed = magnitude * (sign.float() * -2.0 + 1.0);
                signed.reshape([rows, cols])
            }
            StorageFormat::Int8 => {
                let inv127 = bnb::INV_127;
                let scales = self
                    .scales
                    .clone()
                    .unwrap_or_else(|| float_tensor(vec![1.0; rows], &self.device()));
                let codes: Tensor<B, 2> = widen(self.codes.clone()).float().reshape([rows, cols]);
                codes * scales.unsqueeze_dim::<2>(1) * inv127
            }
            StorageFormat::FourBit { blocksize, .. } => {
                // One gather per byte from the 256 x 2 table of code pairs.
                let packed = widen(self.codes.clone());
                let m = packed.dims()[0];
                let pairs: Tensor<B, 2> = self.table.clone().reshape([256, 2]);
                let values: Tensor<B, 1> = pairs.select(0, packed).reshape([2 * m]);
                let absmax = self.block_absmax();
                let blocks = n.div_ceil(blocksize);
                if n % blocksize == 0 {
                    let values: Tensor<B, 2> = values.narrow(0, 0, n).reshape([blocks, blocksize]);
                    (values * absmax.unsqueeze_dim::<2>(1)).reshape([rows, cols])
                } else {
                    let scale = repeat_each(absmax, blocksize, blocks).narrow(0, 0, n);
                    (values.narrow(0, 0, n) * scale).reshape([rows, cols])
                }
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
            StorageFormat::FourBit {
                blocksize,
                double_quant,
                ..
            } => {
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
    t.narrow(0, 0, k)
        .unsqueeze_dim::<2>(1)
        .expand([k, times])
        .reshape([k * times])
}

#[cfg(test)]
mod tests {
    use super::*;

    type B = burn::backend::Flex;

    fn sample(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7919 % 997) as f32 - 498.0) / 311.0)
            .collect()
    }

    #[test]
    fn device_dequantisation_equals_host_reference() {
        let dev = Default::default();
        let shape = [6, 50];
        let values = sample(300);
        for format in [
            StorageFormat::Int8,
            StorageFormat::FourBit {
                kind: FourBit::Nf4,
                blocksize: 64,
                double_quant: false,
            },
            StorageFormat::FourBit {
                kind: FourBit::Fp4,
                blocksize: 32,
                double_quant: true,
            },
        ] {
            // The device kernels (CUDA's path), and the host path of the CPU backend.
            let q = QuantizedWeight::<B>::quantize_with(&values, shape, format, &dev, false);
            let got = q.dequantize().into_data().to_vec::<f32>().unwrap();
            let on_host = QuantizedWeight::<B>::quantize(&values, shape, format, &dev);
            assert!(on_host.host.is_some());
            assert_eq!(
                got,
                on_host.dequantize().into_data().to_vec::<f32>().unwrap(),
                "{format:?}"
            );
            let want = match format {
                StorageFormat::Int8 => {
                    let (c, s) = bnb::quantize_int8_rows(&values, 50);
                    bnb::dequantize_int8_rows(&c, &s, 50)
                }
                StorageFormat::FourBit {
                    kind,
                    blocksize,
                    double_quant,
                } => {
                    let (p, a) = bnb::quantize_4bit(&values, blocksize, kind);
                    let a = if double_quant {
                        bnb::double_dequantize(&bnb::double_quantize(&a))
                    } else {
                        a
                    };
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
        let values = vec![
            1.0f32,
            -2.5,
            3.0e-3,
            1.0e-40,
            65504.0,
            -0.0,
            0.333_333_34,
            1.5e-5,
        ];
        for (format, round) in [
            (
                StorageFormat::Bf16,
                (|v: f32| half::bf16::from_f32(v).to_f32()) as fn(f32) -> f32,
            ),
            (StorageFormat::F16, |v: f32| half::f16::from_f32(v).to_f32()),
        ] {
            let q = QuantizedWeight::<B>::quantize_with(&values, [2, 4], format, &dev, false);
            let got = q.dequantize().into_data().to_vec::<f32>().unwrap();
            let on_host = QuantizedWeight::<B>::quantize(&values, [2, 4], format, &dev);
            assert_eq!(
                got,
                on_host.dequantize().into_data().to_vec::<f32>().unwrap(),
                "{format:?}"
            );
            let want: Vec<f32> = values.iter().map(|v| round(*v)).collect();
            assert_eq!(got, want, "{format:?}");
        }
    }
}
