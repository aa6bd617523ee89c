//! `QuantConfig`: what transformers' `BitsAndBytesConfig` says (8-bit or 4-bit NF4/FP4 with
//! double quantisation, compute dtype, modules left alone), plus bf16/f16 storage, applied
//! per module path while a checkpoint loads.

use serde::{Deserialize, Serialize};

use crate::bnb::FourBit;
use crate::error::{QuantError, Result};

/// How one frozen weight is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StorageFormat {
    /// bfloat16 bits.
    Bf16,
    /// IEEE half bits.
    F16,
    /// int8 codes with a per-row absmax (LLM.int8() weight storage).
    Int8,
    /// 4-bit codes with blockwise absmax.
    FourBit {
        /// NF4 or FP4.
        kind: FourBit,
        /// Values per absmax (64 in bitsandbytes).
        blocksize: usize,
        /// Whether the absmax values are quantised again (8-bit, blocks of 256).
        double_quant: bool,
    },
}

fn d_quant_type() -> FourBit {
    FourBit::Fp4
}
fn d_blocksize() -> usize {
    64
}
fn d_compute() -> String {
    "float32".into()
}
fn d_skip() -> Vec<String> {
    vec![
        "model.vision_model".into(),
        "model.connector".into(),
        "lm_head".into(),
    ]
}

/// transformers' `BitsAndBytesConfig` field names, with its defaults (`bnb_4bit_quant_type`
/// defaults to `fp4` there too), plus `blocksize` (32..4096) and `storage_dtype` for 16-bit
/// storage of every frozen weight that is not quantised.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuantConfig {
    /// int8 row-wise storage.
    #[serde(default)]
    pub load_in_8bit: bool,
    /// 4-bit storage.
    #[serde(default)]
    pub load_in_4bit: bool,
    /// `nf4` or `fp4`.
    #[serde(default = "d_quant_type")]
    pub bnb_4bit_quant_type: FourBit,
    /// Quantise the absmax statistics too.
    #[serde(default)]
    pub bnb_4bit_use_double_quant: bool,
    /// Dtype of the matmul: accepted for `BitsAndBytesConfig` compatibility and validated;
    /// vlmtune dequantises into the backend's float type (f32 on the CPU, bf16 with `--bf16`
    /// on CUDA), which is where the compute dtype is chosen.
    #[serde(default = "d_compute")]
    pub bnb_4bit_compute_dtype: String,
    /// Values per 4-bit absmax.
    #[serde(default = "d_blocksize")]
    pub blocksize: usize,
    /// Module paths containing one of these stay in full precision (default: the vision tower,
    /// the connector and `lm_head`, as QLoRA recipes for VLMs do).
    #[serde(default = "d_skip")]
    pub llm_int8_skip_modules: Vec<String>,
    /// `bf16` / `f16`: store the frozen Linear weights that are not 4-bit / int8 (all of
    /// them when neither is on, the skipped modules otherwise) in 16 bits.
    #[serde(default)]
    pub storage_dtype: Option<String>,
}

impl Default for QuantConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("defaults deserialize")
    }
}

impl QuantConfig {
    /// QLoRA's usual choice: NF4 with double quantisation.
    pub fn nf4() -> Self {
        Self {
            load_in_4bit: true,
            bnb_4bit_quant_type: FourBit::Nf4,
            bnb_4bit_use_double_quant: true,
            ..Self::default()
        }
    }

    /// 8-bit.
    pub fn int8() -> Self {
        Self {
            load_in_8bit: true,
            ..Self::default()
        }
    }

    /// bf16 storage of every frozen projection.
    pub fn bf16() -> Self {
        Self {
            storage_dtype: Some("bf16".into()),
            ..Self::default()
        }
    }

    /// Checks the settings; errors name the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, message: String| {
            Err(QuantError::Config {
                field: field.into(),
                message,
            })
        };
        if self.load_in_4bit && self.load_in_8bit {
            return bad(
                "load_in_4bit",
                "load_in_4bit and load_in_8bit are exclusive".into(),
            );
        }
        if !(32..=4096).contains(&self.blocksize) || !self.blocksize.is_power_of_two() {
            return bad(
                "blocksize",
                format!("{} is not a power of two in 32..=4096", self.blocksize),
            );
        }
        if !matches!(
            self.bnb_4bit_compute_dtype.as_str(),
            "float32" | "bfloat16" | "float16"
        ) {
            return bad(
                "bnb_4bit_compute_dtype",
                format!(
                    "`{}` is not float32, bfloat16 or float16",
                    self.bnb_4bit_compute_dtype
                ),
            );
        }
        if let Some(d) = &self.storage_dtype {
            if d != "bf16" && d != "f16" {
                return bad("storage_dtype", format!("`{d}` is not bf16 or f16"));
            }
        }
        Ok(())
    }

    /// Whether module `path` is left unquantised: as transformers' `should_convert_module`, a
    /// skip pattern matches from the start of the path up to a module boundary (also as a
    /// regex), or as a suffix.
    pub fn skips(&self, path: &str) -> bool {
        self.llm_int8_skip_modules.iter().any(|pattern| {
            let anchored = format!(r"^(?:{pattern})(?:$|\.)");
            let regex_match = regex::Regex::new(&anchored).is_ok_and(|r| r.is_match(path));
            regex_match || path.ends_with(pattern.as_str())
        })
    }

    /// The storage of the Linear weight at module path `path` (`None`: f32): 4-bit or int8
    /// unless skipped, else `storage_dtype` when set.
    pub fn format_for(&self, path: &str) -> Option<StorageFormat> {
        if !self.skips(path) {
            if self.load_in_4bit {
                return Some(StorageFormat::FourBit {
                    kind: self.bnb_4bit_quant_type,
                    blocksize: self.blocksize,
                    double_quant: self.bnb_4bit_use_double_quant,
                });
            }
            if self.load_in_8bit {
                return Some(StorageFormat::Int8);
            }
        }
        match self.storage_dtype.as_deref() {
            Some("bf16") => Some(StorageFormat::Bf16),
            Some("f16") => Some(StorageFormat::F16),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_modules_and_defaults() {
        let c = QuantConfig::nf4();
        assert_eq!(c.format_for("lm_head"), None);
        // Matched from the start to a module boundary, or as a suffix (transformers' rule).
        let c2 = QuantConfig {
            llm_int8_skip_modules: vec!["model.text_model.layers.1".into(), "k_proj".into()],
            ..QuantConfig::nf4()
        };
        assert!(c2.skips("model.text_model.layers.1.mlp.up_proj"));
        assert!(!c2.skips("model.text_model.layers.11.mlp.up_proj"));
        assert!(c2.skips("model.text_model.layers.3.self_attn.k_proj"));
        assert!(!c2.skips("model.text_model.layers.3.self_attn.q_proj"));
        assert_eq!(
            c.format_for("model.vision_model.encoder.layers.0.mlp.fc1"),
            None
        );
        assert!(matches!(
            c.format_for("model.text_model.layers.0.mlp.up_proj"),
            Some(StorageFormat::FourBit {
                kind: FourBit::Nf4,
                blocksize: 64,
                double_quant: true
            })
        ));
        assert_eq!(QuantConfig::default().bnb_4bit_quant_type, FourBit::Fp4);
        let err = QuantConfig {
            blocksize: 48,
            ..QuantConfig::nf4()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(err.contains("blocksize"), "{err}");
    }
}
