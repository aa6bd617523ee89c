//! `[lora]` of the SFT and DPO jobs: a new adapter (a preset or PEFT `LoraConfig` fields) or an
//! existing one to train further, and how a section may contradict the adapter it continues.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use vlmtune_peft::{LoraConfig, LoraPreset};

/// `[lora]`: a preset or PEFT `LoraConfig` fields, or an existing adapter to train further.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LoraSection {
    /// The keys the user gave (config file keys, `--lora*` flags): with `adapter`, these must
    /// agree with the adapter's config. Empty: every field that differs from PEFT's default.
    #[serde(skip)]
    pub explicit: Vec<String>,
    /// A PEFT adapter folder to continue training (`PeftModel.from_pretrained(...,
    /// is_trainable=True)`): its `adapter_config.json` decides rank, targets and the rest; the
    /// fields below may only repeat it. Training starts fresh (new AdamW moments, schedule and
    /// data order), as a new TRL run on a loaded adapter does; `resume_from_checkpoint`
    /// continues a run exactly instead.
    #[serde(default)]
    pub adapter: Option<PathBuf>,
    /// `text-attention`, `text-all-linear`, `vision-and-text` or `all-linear`
    /// (ignored when `target_modules` is set).
    #[serde(default)]
    pub preset: Option<LoraPreset>,
    /// PEFT fields (`r`, `lora_alpha`, `target_modules`, `use_dora`, ...).
    #[serde(flatten)]
    pub config: LoraConfig,
}

impl PartialEq for LoraSection {
    /// The settings, not which of them were written out.
    fn eq(&self, other: &Self) -> bool {
        (&self.adapter, &self.preset, &self.config)
            == (&other.adapter, &other.preset, &other.config)
    }
}

impl LoraSection {
    /// Records which `[lora]` keys a config file wrote (see [`LoraSection::explicit`]).
    pub fn record_keys(section: &mut Option<Self>, keys: Vec<String>) {
        if let Some(lora) = section {
            lora.explicit = keys;
        }
    }

    /// Every key of `[lora]` (with the PEFT fields kept as-is added by the reader).
    pub fn schema() -> Self {
        Self {
            adapter: Some(PathBuf::new()),
            preset: Some(LoraPreset::TextAttention),
            config: LoraConfig::default(),
            explicit: Vec::new(),
        }
    }

    /// How this section contradicts the adapter `loaded` from its `adapter` folder: the
    /// fields set to something other than PEFT's default and other than the adapter's value.
    pub fn conflicts_with(&self, loaded: &LoraConfig) -> Vec<String> {
        let default = LoraConfig::default();
        let mut out = Vec::new();
        let given = |field: &str| {
            self.explicit
                .iter()
                .any(|k| k == field || (field == "target_modules" && k == "preset"))
        };
        let mut check = |field: &str, mine: String, theirs: String, unset: String| {
            let set = if self.explicit.is_empty() {
                mine != unset
            } else {
                given(field)
            };
            if set && mine != theirs {
                out.push(format!("{field}: {mine} here, {theirs} in the adapter"));
            }
        };
        let c = &self.config;
        check(
            "r",
            c.r.to_string(),
            loaded.r.to_string(),
            default.r.to_string(),
        );
        check(
            "lora_alpha",
            c.lora_alpha.to_string(),
            loaded.lora_alpha.to_string(),
            default.lora_alpha.to_string(),
        );
        check(
            "lora_dropout",
            c.lora_dropout.to_string(),
            loaded.lora_dropout.to_string(),
            default.lora_dropout.to_string(),
        );
        let targets = |c: &LoraConfig| format!("{:?}", c.target_modules);
        let mine = match (&c.target_modules, self.preset) {
            (None, Some(preset)) => format!("{:?}", Some(preset.target_modules())),
            _ => targets(c),
        };
        check("target_modules", mine, targets(loaded), targets(&default));
        for (field, mine, theirs) in [
            ("use_dora", c.use_dora, loaded.use_dora),
            ("use_rslora", c.use_rslora, loaded.use_rslora),
        ] {
            check(field, mine.to_string(), theirs.to_string(), "false".into());
        }
        check(
            "modules_to_save",
            format!("{:?}", c.modules_to_save),
            format!("{:?}", loaded.modules_to_save),
            "None".into(),
        );
        out
    }

    /// The `LoraConfig` this section describes.
    pub fn lora_config(&self) -> LoraConfig {
        let mut config = self.config.clone();
        if config.target_modules.is_none() {
            config.target_modules = Some(
                self.preset
                    .unwrap_or(LoraPreset::TextAttention)
                    .target_modules(),
            );
        }
        config
    }
}
