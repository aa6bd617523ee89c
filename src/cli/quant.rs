//! Quantisation flags shared by the subcommands that load a model, with the names of TRL's
//! `ModelConfig` (`--load_in_4bit`, `--bnb_4bit_quant_type`, `--use_bnb_nested_quant`).

use vlmtune::quant::{FourBit, QuantConfig};

/// Quantised frozen weights (QLoRA).
#[derive(clap::Args, Debug, Default, Clone)]
pub struct QuantArgs {
    /// Store the frozen text-model projections in 4 bits (vision tower, connector and
    /// lm_head stay in full precision).
    #[arg(long, conflicts_with = "load_in_8bit")]
    pub load_in_4bit: bool,
    /// Store the frozen text-model projections as int8 with a per-row absmax.
    #[arg(long)]
    pub load_in_8bit: bool,
    /// 4-bit data type (TRL's default: nf4).
    #[arg(long, value_enum, default_value = "nf4")]
    pub bnb_4bit_quant_type: QuantType,
    /// Quantise the 4-bit absmax statistics too (double quantisation).
    #[arg(long)]
    pub use_bnb_nested_quant: bool,
    /// Store the frozen projections that are not 4-bit / int8 in bf16 or f16.
    #[arg(long, value_enum)]
    pub storage_dtype: Option<HalfType>,
}

/// 4-bit data types.
#[derive(Clone, Copy, Debug, Default, clap::ValueEnum)]
pub enum QuantType {
    /// NormalFloat4.
    #[default]
    Nf4,
    /// 4-bit float.
    Fp4,
}

/// 16-bit storage types.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum HalfType {
    /// bfloat16.
    Bf16,
    /// IEEE half.
    F16,
}

impl QuantArgs {
    /// The quantisation these flags ask for (`None`: full precision).
    pub fn config(&self) -> Option<QuantConfig> {
        if !self.load_in_4bit && !self.load_in_8bit && self.storage_dtype.is_none() {
            return None;
        }
        let mut config = QuantConfig {
            load_in_4bit: self.load_in_4bit,
            load_in_8bit: self.load_in_8bit,
            ..QuantConfig::default()
        };
        if self.load_in_4bit {
            config.bnb_4bit_quant_type = match self.bnb_4bit_quant_type {
                QuantType::Nf4 => FourBit::Nf4,
                QuantType::Fp4 => FourBit::Fp4,
            };
            config.bnb_4bit_use_double_quant = self.use_bnb_nested_quant;
        }
        if let Some(half) = self.storage_dtype {
            config.storage_dtype = Some(match half {
                HalfType::Bf16 => "bf16".into(),
                HalfType::F16 => "f16".into(),
            });
        }
        Some(config)
    }

    /// The config to use: these flags when given, else `fallback` (a job file's `[quant]`).
    pub fn or(&self, fallback: Option<QuantConfig>) -> Option<QuantConfig> {
        self.config().or(fallback)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_read_like_trl() {
        assert_eq!(QuantArgs::default().config(), None);
        let qlora = QuantArgs {
            load_in_4bit: true,
            use_bnb_nested_quant: true,
            ..QuantArgs::default()
        };
        assert_eq!(qlora.config(), Some(QuantConfig::nf4()));
        let bf16 = QuantArgs {
            storage_dtype: Some(HalfType::Bf16),
            ..QuantArgs::default()
        };
        assert_eq!(bf16.config(), Some(QuantConfig::bf16()));
        let int8 = QuantArgs {
            load_in_8bit: true,
            ..QuantArgs::default()
        };
        assert_eq!(int8.or(Some(QuantConfig::nf4())), Some(QuantConfig::int8()));
        assert_eq!(
            QuantArgs::default().or(Some(QuantConfig::nf4())),
            Some(QuantConfig::nf4())
        );
    }
}
