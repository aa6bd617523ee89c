//! Common target choices for SmolVLM-style vision-language models.

use crate::config::{LoraConfig, ModuleSelector};

/// Where to put adapters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LoraPreset {
    /// q/k/v/o of the text model (the usual SmolVLM recipe).
    TextAttention,
    /// Attention and MLP of the text model.
    TextAllLinear,
    /// Attention and MLP of the text model and the vision tower.
    VisionAndText,
    /// Every Linear but `lm_head`: text, vision and connector (PEFT's `all-linear`).
    AllLinear,
}

impl LoraPreset {
    /// Parses `text-attention`, `text-all-linear`, `vision-and-text`, `all-linear`.
    pub fn parse(name: &str) -> Option<Self> {
        serde_json::from_value(serde_json::Value::String(name.to_string())).ok()
    }

    /// The `target_modules` of this preset (regexes are full matches over module paths).
    pub fn target_modules(self) -> ModuleSelector {
        const TEXT_ATTN: &str = r"self_attn\.(q_proj|k_proj|v_proj|o_proj)";
        const TEXT_MLP: &str = r"mlp\.(gate_proj|up_proj|down_proj)";
        const VISION: &str = r"vision_model\.encoder\.layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|out_proj)|mlp\.(fc1|fc2))";
        ModuleSelector::Pattern(match self {
            Self::TextAttention => format!(r"model\.text_model\.layers\.\d+\.{TEXT_ATTN}"),
            Self::TextAllLinear => {
                format!(r"model\.text_model\.layers\.\d+\.({TEXT_ATTN}|{TEXT_MLP})")
            }
            Self::VisionAndText => {
                format!(r"model\.(text_model\.layers\.\d+\.({TEXT_ATTN}|{TEXT_MLP})|{VISION})")
            }
            Self::AllLinear => "all-linear".into(),
        })
    }

    /// A config with this preset's targets.
    pub fn config(self, r: usize, lora_alpha: f64) -> LoraConfig {
        LoraConfig::new(r, lora_alpha, self.target_modules())
    }
}
