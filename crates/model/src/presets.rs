//! Architecture presets of the published SmolVLM checkpoints (SPEC §9) and a tiny one for
//! tests and the offline default job.

use crate::config::{RopeParameters, TextConfig, TokenIds, VisionConfig, VlmConfig};

/// A named architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    /// `HuggingFaceTB/SmolVLM-256M-Instruct`.
    SmolVlm256M,
    /// `HuggingFaceTB/SmolVLM-500M-Instruct`.
    SmolVlm500M,
    /// `HuggingFaceTB/SmolVLM-Instruct` (2.2B).
    SmolVlm2B,
    /// A few-hundred-thousand-parameter model with the same architecture.
    Tiny,
}

impl Preset {
    /// Parses `256m`, `500m`, `2.2b` (or `2b`), `tiny`.
    pub fn parse(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "256m" | "smolvlm-256m" => Some(Self::SmolVlm256M),
            "500m" | "smolvlm-500m" => Some(Self::SmolVlm500M),
            "2.2b" | "2b" | "smolvlm-2.2b" => Some(Self::SmolVlm2B),
            "tiny" => Some(Self::Tiny),
            _ => None,
        }
    }

    /// The Hub id of the published checkpoint, if any.
    pub fn hub_id(self) -> Option<&'static str> {
        match self {
            Self::SmolVlm256M => Some("HuggingFaceTB/SmolVLM-256M-Instruct"),
            Self::SmolVlm500M => Some("HuggingFaceTB/SmolVLM-500M-Instruct"),
            Self::SmolVlm2B => Some("HuggingFaceTB/SmolVLM-Instruct"),
            Self::Tiny => None,
        }
    }

    /// The model config (the tiny preset matches the built-in 460-token tokenizer).
    pub fn config(self) -> VlmConfig {
        match self {
            Self::SmolVlm256M => smolvlm(
                SigLip::Base,
                576,
                1536,
                30,
                9,
                3,
                49280,
                49190,
                100_000.0,
                8192,
            ),
            Self::SmolVlm500M => smolvlm(
                SigLip::Base,
                960,
                2560,
                32,
                15,
                5,
                49280,
                49190,
                100_000.0,
                8192,
            ),
            Self::SmolVlm2B => smolvlm(
                SigLip::So400m,
                2048,
                8192,
                24,
                32,
                32,
                49155,
                49153,
                273_768.0,
                16384,
            ),
            Self::Tiny => tiny_config(460, 459, 420, 2, 1),
        }
    }
}

enum SigLip {
    Base,
    So400m,
}

#[allow(clippy::too_many_arguments)]
fn smolvlm(
    vision: SigLip,
    hidden: usize,
    intermediate: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    vocab: usize,
    image_token_id: u32,
    rope_theta: f64,
    max_positions: usize,
) -> VlmConfig {
    let (vision_config, scale_factor) = match vision {
        SigLip::Base => (
            VisionConfig {
                hidden_size: 768,
                intermediate_size: 3072,
                num_hidden_layers: 12,
                num_attention_heads: 12,
                image_size: 512,
                patch_size: 16,
                ..VisionConfig::default()
            },
            4,
        ),
        SigLip::So400m => (
            VisionConfig {
                hidden_size: 1152,
                intermediate_size: 4304,
                num_hidden_layers: 27,
                num_attention_heads: 16,
                image_size: 384,
                patch_size: 14,
                ..VisionConfig::default()
            },
            3,
        ),
    };
    let eos = if vocab == 49280 { 49279 } else { 2 };
    VlmConfig {
        model_type: "idefics3".into(),
        vision_config,
        text_config: TextConfig {
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: intermediate,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: Some(kv_heads),
            head_dim: Some(64),
            max_position_embeddings: max_positions,
            rms_norm_eps: 1e-5,
            rope_parameters: Some(RopeParameters {
                rope_theta,
                rope_type: "default".into(),
            }),
            pad_token_id: Some(2),
            bos_token_id: Some(1),
            eos_token_id: Some(TokenIds::One(eos)),
            ..TextConfig::default()
        },
        scale_factor,
        image_token_id,
        tie_word_embeddings: false,
        eos_token_id: Some(TokenIds::One(eos)),
        architectures: None,
    }
}

/// The tiny architecture (64-pixel tiles of 8-pixel patches, 16 tokens per tile, a 4-layer
/// 128-wide text model) with the given vocabulary and token ids.
pub fn tiny_config(vocab: usize, image_token_id: u32, eos: u32, pad: u32, bos: u32) -> VlmConfig {
    VlmConfig {
        model_type: "smolvlm".into(),
        vision_config: VisionConfig {
            hidden_size: 64,
            intermediate_size: 128,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            image_size: 64,
            patch_size: 8,
            ..VisionConfig::default()
        },
        text_config: TextConfig {
            vocab_size: vocab,
            hidden_size: 128,
            intermediate_size: 256,
            num_hidden_layers: 4,
            num_attention_heads: 4,
            num_key_value_heads: Some(2),
            head_dim: Some(32),
            max_position_embeddings: 2048,
            rms_norm_eps: 1e-5,
            rope_parameters: Some(RopeParameters {
                rope_theta: 10_000.0,
                rope_type: "default".into(),
            }),
            pad_token_id: Some(pad),
            bos_token_id: Some(bos),
            eos_token_id: Some(TokenIds::One(eos)),
            ..TextConfig::default()
        },
        scale_factor: 2,
        image_token_id,
        tie_word_embeddings: false,
        eos_token_id: Some(TokenIds::One(eos)),
        architectures: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_valid_with_published_token_counts() {
        for (preset, seq) in [
            (Preset::SmolVlm256M, 64),
            (Preset::SmolVlm500M, 64),
            (Preset::SmolVlm2B, 81),
            (Preset::Tiny, 16),
        ] {
            let c = preset.config();
            c.validate("preset").unwrap();
            assert_eq!(c.image_seq_len(), seq, "{preset:?}");
        }
        assert_eq!(Preset::parse("256M"), Some(Preset::SmolVlm256M));
    }
}
