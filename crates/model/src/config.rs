//! `config.json` of SmolVLM / Idefics3 checkpoints, one to one, with transformers' class
//! defaults for missing keys (SPEC §0, §9). Derived values are methods.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

fn d_vision_hidden() -> usize {
    1152
}
fn d_vision_intermediate() -> usize {
    3072
}
fn d_vision_layers() -> usize {
    12
}
fn d_vision_heads() -> usize {
    16
}
fn d_channels() -> usize {
    3
}
fn d_image_size() -> usize {
    224
}
fn d_patch_size() -> usize {
    32
}
fn d_gelu_tanh() -> String {
    "gelu_pytorch_tanh".into()
}
fn d_ln_eps() -> f64 {
    1e-6
}
fn d_init_range() -> f64 {
    0.02
}

/// The SigLIP vision tower (`vision_config`): `SmolVLMVisionConfig` / `Idefics3VisionConfig`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VisionConfig {
    /// Width of the vision transformer (`Dv`).
    #[serde(default = "d_vision_hidden")]
    pub hidden_size: usize,
    /// Width of the MLP.
    #[serde(default = "d_vision_intermediate")]
    pub intermediate_size: usize,
    /// Number of encoder layers.
    #[serde(default = "d_vision_layers")]
    pub num_hidden_layers: usize,
    /// Attention heads.
    #[serde(default = "d_vision_heads")]
    pub num_attention_heads: usize,
    /// Input channels (3).
    #[serde(default = "d_channels")]
    pub num_channels: usize,
    /// Tile side in pixels the position table is sized for.
    #[serde(default = "d_image_size")]
    pub image_size: usize,
    /// Patch side in pixels.
    #[serde(default = "d_patch_size")]
    pub patch_size: usize,
    /// MLP activation; only `gelu_pytorch_tanh` is supported.
    #[serde(default = "d_gelu_tanh")]
    pub hidden_act: String,
    /// LayerNorm epsilon.
    #[serde(default = "d_ln_eps")]
    pub layer_norm_eps: f64,
    /// Std of random initialisation.
    #[serde(default = "d_init_range")]
    pub initializer_range: f64,
    /// `smolvlm_vision` or `idefics3_vision`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_type: Option<String>,
}

impl Default for VisionConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("defaults deserialize")
    }
}

impl VisionConfig {
    /// Patches per tile side, `G = image_size / patch_size`.
    pub fn patches_per_side(&self) -> usize {
        self.image_size / self.patch_size
    }
    /// Patches per tile, `P = G²`.
    pub fn num_patches(&self) -> usize {
        self.patches_per_side().pow(2)
    }
    /// Per-head width.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

/// RoPE settings in the transformers v5 layout (`rope_parameters`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RopeParameters {
    /// Base of the inverse frequencies.
    pub rope_theta: f64,
    /// Only `default` is supported.
    #[serde(default = "d_rope_type")]
    pub rope_type: String,
}

fn d_rope_type() -> String {
    "default".into()
}
fn d_vocab() -> usize {
    32000
}
fn d_text_hidden() -> usize {
    4096
}
fn d_text_intermediate() -> usize {
    11008
}
fn d_text_layers() -> usize {
    32
}
fn d_text_heads() -> usize {
    32
}
fn d_silu() -> String {
    "silu".into()
}
fn d_max_pos() -> usize {
    2048
}
fn d_rms_eps() -> f64 {
    1e-6
}
fn d_bos() -> Option<u32> {
    Some(1)
}
fn d_eos() -> Option<TokenIds> {
    Some(TokenIds::One(2))
}
fn d_llama() -> String {
    "llama".into()
}

/// One token id or several (`eos_token_id` may be a list).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    /// A single id.
    One(u32),
    /// Several ids.
    Many(Vec<u32>),
}

impl TokenIds {
    /// The ids as a list.
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            TokenIds::One(id) => vec![*id],
            TokenIds::Many(ids) => ids.clone(),
        }
    }
}

/// The Llama text model (`text_config`), with `LlamaConfig`'s defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TextConfig {
    /// Must be `llama`.
    #[serde(default = "d_llama")]
    pub model_type: String,
    /// Vocabulary size `V`.
    #[serde(default = "d_vocab")]
    pub vocab_size: usize,
    /// Width `Dt`.
    #[serde(default = "d_text_hidden")]
    pub hidden_size: usize,
    /// MLP width.
    #[serde(default = "d_text_intermediate")]
    pub intermediate_size: usize,
    /// Decoder layers.
    #[serde(default = "d_text_layers")]
    pub num_hidden_layers: usize,
    /// Query heads.
    #[serde(default = "d_text_heads")]
    pub num_attention_heads: usize,
    /// Key/value heads (GQA); defaults to `num_attention_heads`.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Per-head width; defaults to `hidden_size / num_attention_heads`.
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// MLP activation; only `silu` is supported.
    #[serde(default = "d_silu")]
    pub hidden_act: String,
    /// Longest supported sequence.
    #[serde(default = "d_max_pos")]
    pub max_position_embeddings: usize,
    /// RMSNorm epsilon.
    #[serde(default = "d_rms_eps")]
    pub rms_norm_eps: f64,
    /// v4 layout: the RoPE base at the top of `text_config`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    /// v4 layout: RoPE scaling (only `null` is supported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<serde_json::Value>,
    /// v5 layout: RoPE settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_parameters: Option<RopeParameters>,
    /// Bias on q/k/v/o (unsupported when true).
    #[serde(default)]
    pub attention_bias: bool,
    /// Bias on the MLP (unsupported when true).
    #[serde(default)]
    pub mlp_bias: bool,
    /// Padding token.
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    /// Beginning-of-sequence token.
    #[serde(default = "d_bos")]
    pub bos_token_id: Option<u32>,
    /// End-of-sequence token(s).
    #[serde(default = "d_eos")]
    pub eos_token_id: Option<TokenIds>,
    /// Whether `lm_head` shares `embed_tokens`' weight.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Std of random initialisation.
    #[serde(default = "d_init_range")]
    pub initializer_range: f64,
}

impl Default for TextConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("defaults deserialize")
    }
}

impl TextConfig {
    /// Key/value heads.
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }
    /// Per-head width.
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads)
    }
    /// The RoPE base, from either layout (10000 when neither is given).
    pub fn rope_theta(&self) -> f64 {
        self.rope_parameters
            .as_ref()
            .map(|r| r.rope_theta)
            .or(self.rope_theta)
            .unwrap_or(10000.0)
    }
}

fn d_text_config() -> TextConfig {
    // SmolVLMConfig builds a default text config with rms_norm_eps 1e-5 (SPEC §0).
    TextConfig {
        rms_norm_eps: 1e-5,
        ..TextConfig::default()
    }
}
fn d_image_token_id() -> u32 {
    128257
}
fn d_scale_factor() -> usize {
    2
}

/// The whole `config.json` of an `idefics3` or `smolvlm` checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VlmConfig {
    /// `idefics3` or `smolvlm`.
    pub model_type: String,
    /// The vision tower.
    #[serde(default)]
    pub vision_config: VisionConfig,
    /// The text model.
    #[serde(default = "d_text_config")]
    pub text_config: TextConfig,
    /// Pixel-shuffle factor `s`.
    #[serde(default = "d_scale_factor")]
    pub scale_factor: usize,
    /// Id of the `<image>` token whose embeddings are replaced by image features.
    #[serde(default = "d_image_token_id")]
    pub image_token_id: u32,
    /// Whether `lm_head` shares `embed_tokens`' weight.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Top-level end-of-sequence id(s), when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eos_token_id: Option<TokenIds>,
    /// Architectures list, kept for round trips.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architectures: Option<Vec<String>>,
}

impl VlmConfig {
    /// Parses and validates `config.json` text; `origin` names the file in errors.
    pub fn from_json_str(text: &str, origin: &str) -> Result<Self> {
        let de = &mut serde_json::Deserializer::from_str(text);
        let config: VlmConfig =
            serde_path_to_error::deserialize(de).map_err(|e| ModelError::Config {
                file: origin.to_string(),
                field: e.path().to_string(),
                message: e.inner().to_string(),
            })?;
        config.validate(origin)?;
        Ok(config)
    }

    /// Reads and validates a `config.json` file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json_str(&text, &path.display().to_string())
    }

    /// Checks the settings vlmtune relies on; errors name the field.
    pub fn validate(&self, origin: &str) -> Result<()> {
        let bad = |field: &str, message: String| {
            Err(ModelError::Config {
                file: origin.to_string(),
                field: field.to_string(),
                message,
            })
        };
        if self.model_type != "idefics3" && self.model_type != "smolvlm" {
            return bad(
                "model_type",
                format!(
                    "`{}` is not supported (expected `idefics3` or `smolvlm`)",
                    self.model_type
                ),
            );
        }
        let v = &self.vision_config;
        let t = &self.text_config;
        if v.hidden_act != "gelu_pytorch_tanh" {
            return bad(
                "vision_config.hidden_act",
                format!(
                    "`{}` is not supported (expected `gelu_pytorch_tanh`)",
                    v.hidden_act
                ),
            );
        }
        if t.model_type != "llama" {
            return bad(
                "text_config.model_type",
                format!("`{}` is not supported (expected `llama`)", t.model_type),
            );
        }
        if t.hidden_act != "silu" {
            return bad(
                "text_config.hidden_act",
                format!("`{}` is not supported (expected `silu`)", t.hidden_act),
            );
        }
        for (field, value) in [
            ("vision_config.hidden_size", v.hidden_size),
            ("vision_config.num_attention_heads", v.num_attention_heads),
            ("vision_config.patch_size", v.patch_size),
            ("vision_config.image_size", v.image_size),
            ("text_config.hidden_size", t.hidden_size),
            ("text_config.num_attention_heads", t.num_attention_heads),
            ("text_config.vocab_size", t.vocab_size),
            ("scale_factor", self.scale_factor),
        ] {
            if value == 0 {
                return bad(field, "must be positive".into());
            }
        }
        if !v.hidden_size.is_multiple_of(v.num_attention_heads) {
            return bad(
                "vision_config.num_attention_heads",
                format!(
                    "hidden_size {} is not a multiple of {} heads",
                    v.hidden_size, v.num_attention_heads
                ),
            );
        }
        if v.patches_per_side() == 0 || !v.patches_per_side().is_multiple_of(self.scale_factor) {
            return bad(
                "scale_factor",
                format!(
                    "{} patches per side (image_size {} / patch_size {}) are not a multiple of scale_factor {}",
                    v.patches_per_side(),
                    v.image_size,
                    v.patch_size,
                    self.scale_factor
                ),
            );
        }
        if t.kv_heads() == 0 || !t.num_attention_heads.is_multiple_of(t.kv_heads()) {
            return bad(
                "text_config.num_key_value_heads",
                format!(
                    "{} query heads are not a multiple of {} key/value heads",
                    t.num_attention_heads,
                    t.kv_heads()
                ),
            );
        }
        if !t.head_dim().is_multiple_of(2) {
            return bad(
                "text_config.head_dim",
                format!("{} must be even for RoPE", t.head_dim()),
            );
        }
        if t.attention_bias {
            return bad(
                "text_config.attention_bias",
                "biased attention is not supported".into(),
            );
        }
        if t.mlp_bias {
            return bad(
                "text_config.mlp_bias",
                "a biased MLP is not supported".into(),
            );
        }
        if let Some(rope) = &t.rope_parameters {
            if rope.rope_type != "default" {
                return bad(
                    "text_config.rope_parameters.rope_type",
                    format!("`{}` is not supported (expected `default`)", rope.rope_type),
                );
            }
        }
        if let Some(scaling) = &t.rope_scaling {
            if !scaling.is_null() {
                return bad(
                    "text_config.rope_scaling",
                    format!("{scaling} is not supported (expected null)"),
                );
            }
        }
        if self.image_token_id as usize >= t.vocab_size {
            return bad(
                "image_token_id",
                format!(
                    "{} is outside the vocabulary of {}",
                    self.image_token_id, t.vocab_size
                ),
            );
        }
        Ok(())
    }

    /// Tokens per image tile after the connector: `(G² / s²)`.
    pub fn image_seq_len(&self) -> usize {
        self.vision_config.num_patches() / (self.scale_factor * self.scale_factor)
    }

    /// Whether `lm_head` shares `embed_tokens`' weight.
    pub fn tied_embeddings(&self) -> bool {
        self.tie_word_embeddings || self.text_config.tie_word_embeddings
    }

    /// End-of-sequence ids (top level first, then `text_config`).
    pub fn eos_token_ids(&self) -> Vec<u32> {
        self.eos_token_id
            .as_ref()
            .or(self.text_config.eos_token_id.as_ref())
            .map(TokenIds::to_vec)
            .unwrap_or_default()
    }

    /// The config as pretty JSON, in the v5 layout transformers writes today.
    pub fn to_json_string(&self) -> String {
        let mut copy = self.clone();
        let theta = copy.text_config.rope_theta();
        copy.text_config.rope_theta = None;
        copy.text_config.rope_scaling = None;
        copy.text_config.rope_parameters = Some(RopeParameters {
            rope_theta: theta,
            rope_type: "default".into(),
        });
        if copy.architectures.is_none() {
            copy.architectures = Some(vec![match copy.model_type.as_str() {
                "smolvlm" => "SmolVLMForConditionalGeneration".into(),
                _ => "Idefics3ForConditionalGeneration".into(),
            }]);
        }
        serde_json::to_string_pretty(&copy).expect("config serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_keys_take_transformers_defaults() {
        // transformers' own class defaults (224 / 32 = 7 patches, scale 2) cannot pixel-shuffle,
        // so they are checked without validation.
        let c: VlmConfig = serde_json::from_str(r#"{"model_type": "smolvlm"}"#).unwrap();
        assert!(c
            .validate("t")
            .unwrap_err()
            .to_string()
            .contains("scale_factor"));
        assert_eq!(c.vision_config.hidden_size, 1152);
        assert_eq!(c.vision_config.patch_size, 32);
        assert_eq!(c.scale_factor, 2);
        assert_eq!(c.image_token_id, 128257);
        assert_eq!(c.text_config.rms_norm_eps, 1e-5);
        assert_eq!(c.text_config.rope_theta(), 10000.0);
        assert_eq!(c.text_config.kv_heads(), 32);
        assert_eq!(c.text_config.head_dim(), 128);
        // A partial text_config takes LlamaConfig's defaults for what it lacks.
        let c = VlmConfig::from_json_str(
            r#"{"model_type": "idefics3", "vision_config": {"patch_size": 14, "image_size": 384}, "scale_factor": 3, "text_config": {"vocab_size": 200000, "rope_theta": 273768.0}}"#,
            "t",
        )
        .unwrap();
        assert_eq!(c.text_config.rms_norm_eps, 1e-6);
        assert_eq!(c.text_config.rope_theta(), 273768.0);
    }

    #[test]
    fn errors_name_the_field() {
        let err = VlmConfig::from_json_str(r#"{"model_type": "llava"}"#, "cfg.json")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cfg.json") && err.contains("model_type") && err.contains("llava"),
            "{err}"
        );
        let err = VlmConfig::from_json_str(
            r#"{"model_type": "smolvlm", "vision_config": {"patch_size": 16, "image_size": 512}, "text_config": {"hidden_size": "big"}}"#,
            "cfg.json",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("text_config.hidden_size"), "{err}");
        let err = VlmConfig::from_json_str(
            r#"{"model_type": "smolvlm", "vision_config": {"patch_size": 16, "image_size": 512}, "text_config": {"vocab_size": 200000, "rope_parameters": {"rope_theta": 1.0, "rope_type": "yarn"}}}"#,
            "cfg.json",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("rope_type") && err.contains("yarn"), "{err}");
        let err = VlmConfig::from_json_str(
            r#"{"model_type": "smolvlm", "scale_factor": 5, "text_config": {"vocab_size": 200000}}"#,
            "cfg.json",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("scale_factor"), "{err}");
    }

    #[test]
    fn json_round_trip_is_v5() {
        let c = VlmConfig::from_json_str(
            r#"{"model_type": "idefics3", "vision_config": {"patch_size": 16, "image_size": 512}, "text_config": {"vocab_size": 200000, "rope_theta": 5.0}}"#,
            "t",
        )
        .unwrap();
        let text = c.to_json_string();
        assert!(text.contains("rope_parameters"));
        let back = VlmConfig::from_json_str(&text, "t").unwrap();
        assert_eq!(back.text_config.rope_theta(), 5.0);
    }
}
