//! `LoraConfig` with PEFT's field names and defaults, read from and written to
//! `adapter_config.json`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{PeftError, Result};

/// `target_modules` / `exclude_modules`: a list of names (a name matches a module whose path
/// equals it or ends with `.name`), or a string (a full-match regex, or `"all-linear"`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ModuleSelector {
    /// Names or suffixes.
    List(Vec<String>),
    /// A regex over the full module path, or `all-linear`.
    Pattern(String),
}

impl ModuleSelector {
    /// A list selector.
    pub fn list(names: &[&str]) -> Self {
        Self::List(names.iter().map(|s| s.to_string()).collect())
    }
    /// Whether this is PEFT's `all-linear` shorthand.
    pub fn is_all_linear(&self) -> bool {
        matches!(self, Self::Pattern(p) if p.eq_ignore_ascii_case("all-linear"))
    }
}

/// `init_lora_weights`: `true` (A kaiming-uniform, B zero), `"gaussian"` (A normal with std
/// 1/r, B zero) or `false` (A and B both random, so the adapter starts nonzero).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum InitLoraWeights {
    /// `true` / `false`.
    Bool(bool),
    /// A named scheme; only `gaussian` is supported.
    Named(String),
}

/// An int or a list of ints (`layers_to_transform`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LayerIndexes {
    /// One layer.
    One(usize),
    /// Several layers.
    Many(Vec<usize>),
}

impl LayerIndexes {
    /// Whether `index` is selected.
    pub fn contains(&self, index: usize) -> bool {
        match self {
            Self::One(i) => *i == index,
            Self::Many(list) => list.contains(&index),
        }
    }
    /// Whether no layer is listed (PEFT then ignores the setting).
    pub fn is_empty(&self) -> bool {
        matches!(self, Self::Many(list) if list.is_empty())
    }
}

/// A string or a list of strings (`layers_pattern`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StringOrList {
    /// One string.
    One(String),
    /// Several strings.
    Many(Vec<String>),
}

impl StringOrList {
    /// The strings.
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s.clone()],
            Self::Many(v) => v.clone(),
        }
    }
}

fn d_r() -> usize {
    8
}
fn d_alpha() -> f64 {
    8.0
}
fn d_bias() -> String {
    "none".into()
}
fn d_init() -> InitLoraWeights {
    InitLoraWeights::Bool(true)
}
fn d_peft_type() -> String {
    "LORA".into()
}

/// PEFT's `LoraConfig` (the fields vlmtune implements), with PEFT's defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    /// Rank.
    #[serde(default = "d_r")]
    pub r: usize,
    /// Scale numerator: `scaling = lora_alpha / r` (or `/ sqrt(r)` with `use_rslora`).
    #[serde(default = "d_alpha")]
    pub lora_alpha: f64,
    /// Dropout on the adapter input while training.
    #[serde(default)]
    pub lora_dropout: f64,
    /// Which modules get adapters.
    #[serde(default)]
    pub target_modules: Option<ModuleSelector>,
    /// Which modules never get adapters.
    #[serde(default)]
    pub exclude_modules: Option<ModuleSelector>,
    /// Only `none` is supported.
    #[serde(default = "d_bias")]
    pub bias: String,
    /// Modules trained in full as a copy (Linear layers such as `lm_head`).
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    /// rsLoRA scaling `lora_alpha / sqrt(r)`.
    #[serde(default)]
    pub use_rslora: bool,
    /// Weight-decomposed LoRA.
    #[serde(default)]
    pub use_dora: bool,
    /// Initialisation scheme.
    #[serde(default = "d_init")]
    pub init_lora_weights: InitLoraWeights,
    /// Only adapt these layer indices.
    #[serde(default)]
    pub layers_to_transform: Option<LayerIndexes>,
    /// The name of the layer list (`layers`) used with `layers_to_transform`.
    #[serde(default)]
    pub layers_pattern: Option<StringOrList>,
    /// Per-module rank overrides (key: module-name suffix regex).
    #[serde(default)]
    pub rank_pattern: BTreeMap<String, usize>,
    /// Per-module alpha overrides.
    #[serde(default)]
    pub alpha_pattern: BTreeMap<String, f64>,
    /// Must be false (Conv1D-style weights are not used by SmolVLM).
    #[serde(default)]
    pub fan_in_fan_out: bool,
    /// Must be `LORA`.
    #[serde(default = "d_peft_type")]
    pub peft_type: String,
    /// PEFT task type (informational).
    #[serde(default)]
    pub task_type: Option<String>,
    /// The base model this adapter was trained on.
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    /// Whether the adapter was saved for inference.
    #[serde(default)]
    pub inference_mode: bool,
    /// Other fields of PEFT's config, kept for round trips; non-default values of features
    /// vlmtune lacks are refused by [`LoraConfig::validate`].
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("defaults deserialize")
    }
}

/// PEFT features vlmtune does not implement: a config that turns one on is refused.
const UNSUPPORTED: [&str; 14] = [
    "layer_replication",
    "use_qalora",
    "trainable_token_indices",
    "target_parameters",
    "lora_bias",
    "loftq_config",
    "eva_config",
    "corda_config",
    "megatron_config",
    "alora_invocation_tokens",
    "arrow_config",
    "use_bdlora",
    "kasa_config",
    "lora_ga_config",
];

/// Fields of PEFT's `LoraConfig` (0.21) that [`LoraConfig`] keeps in `other` rather than
/// models: informational ones, and the features vlmtune lacks. Keys outside these and
/// the modelled fields are unknown (a warning in `adapter_config.json`, an error in a job
/// config's `[lora]`).
pub const PEFT_FIELDS_NOT_MODELLED: [&str; 22] = [
    "alora_invocation_tokens",
    "arrow_config",
    "auto_mapping",
    "corda_config",
    "ensure_weight_tying",
    "eva_config",
    "kasa_config",
    "layer_replication",
    "loftq_config",
    "lora_bias",
    "lora_ga_config",
    "megatron_config",
    "megatron_core",
    "monteclora_config",
    "peft_version",
    "qalora_group_size",
    "revision",
    "runtime_config",
    "target_parameters",
    "trainable_token_indices",
    "use_bdlora",
    "use_qalora",
];

fn is_default_value(v: &Value) -> bool {
    match v {
        Value::Null | Value::Bool(false) => true,
        Value::Object(o) => o.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

impl LoraConfig {
    /// A config targeting `target` with rank `r` and `lora_alpha`.
    pub fn new(r: usize, lora_alpha: f64, target: ModuleSelector) -> Self {
        Self {
            r,
            lora_alpha,
            target_modules: Some(target),
            ..Self::default()
        }
    }

    /// Checks the settings; errors name the field and value.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, message: String| {
            Err(PeftError::Config {
                field: field.into(),
                message,
            })
        };
        if self.peft_type != "LORA" {
            return bad(
                "peft_type",
                format!("`{}` is not supported (expected `LORA`)", self.peft_type),
            );
        }
        if self.r == 0 {
            return bad("r", "must be positive".into());
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return bad(
                "lora_dropout",
                format!("{} is outside [0, 1)", self.lora_dropout),
            );
        }
        if self.bias != "none" {
            return bad(
                "bias",
                format!("`{}` is not supported (only `none`)", self.bias),
            );
        }
        if self.fan_in_fan_out {
            return bad("fan_in_fan_out", "true is not supported".into());
        }
        match &self.init_lora_weights {
            InitLoraWeights::Bool(_) => {}
            InitLoraWeights::Named(n) if n == "gaussian" => {}
            InitLoraWeights::Named(n) => {
                return bad(
                    "init_lora_weights",
                    format!("`{n}` is not supported (true, false or `gaussian`)"),
                );
            }
        }
        if self.target_modules.is_none() {
            return bad(
                "target_modules",
                "must be given (a list of names, a regex, or `all-linear`)".into(),
            );
        }
        for selector in [&self.target_modules, &self.exclude_modules]
            .into_iter()
            .flatten()
        {
            if let ModuleSelector::Pattern(p) = selector {
                if !selector.is_all_linear() {
                    regex::Regex::new(&format!("^(?:{p})$")).map_err(|e| PeftError::Config {
                        field: "target_modules".into(),
                        message: format!("bad regex `{p}`: {e}"),
                    })?;
                }
            }
        }
        if let Some((field, value)) = self
            .other
            .iter()
            .find(|(k, v)| UNSUPPORTED.contains(&k.as_str()) && !is_default_value(v))
        {
            return bad(field, format!("{value} is not supported by vlmtune"));
        }
        Ok(())
    }

    /// The rank of the module at `path` (`rank_pattern` first).
    pub fn rank_for(&self, path: &str) -> usize {
        pattern_value(&self.rank_pattern, path).unwrap_or(self.r)
    }

    /// The scaling of the module at `path`: `alpha / r`, or `alpha / sqrt(r)` with rsLoRA.
    pub fn scaling_for(&self, path: &str) -> f64 {
        let r = self.rank_for(path) as f64;
        let alpha = pattern_value(&self.alpha_pattern, path).unwrap_or(self.lora_alpha);
        if self.use_rslora {
            alpha / r.sqrt()
        } else {
            alpha / r
        }
    }

    /// Reads `adapter_config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| PeftError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let de = &mut serde_json::Deserializer::from_str(&text);
        let config: Self =
            serde_path_to_error::deserialize(de).map_err(|e| PeftError::ConfigFile {
                path: path.to_path_buf(),
                field: e.path().to_string(),
                message: e.inner().to_string(),
            })?;
        config.validate().map_err(|e| match e {
            PeftError::Config { field, message } => PeftError::ConfigFile {
                path: path.to_path_buf(),
                field,
                message,
            },
            other => other,
        })?;
        let unknown = config.unknown_fields();
        if !unknown.is_empty() {
            // PEFT versions add fields: a newer adapter must still load.
            tracing::warn!(
                file = %path.display(),
                keys = %unknown.join(", "),
                "adapter_config.json has keys this PEFT schema does not know; kept, not used"
            );
        }
        Ok(config)
    }

    /// Keys of `other` that are no PEFT `LoraConfig` field vlmtune knows of.
    pub fn unknown_fields(&self) -> Vec<String> {
        self.other
            .keys()
            .filter(|k| !PEFT_FIELDS_NOT_MODELLED.contains(&k.as_str()))
            .cloned()
            .collect()
    }

    /// The JSON PEFT writes, with the fields PEFT needs to load it.
    pub fn to_json(&self) -> String {
        let mut value = serde_json::to_value(self).expect("config serializes");
        if let Value::Object(map) = &mut value {
            map.entry("lora_bias").or_insert(Value::Bool(false));
            map.entry("revision").or_insert(Value::Null);
        }
        serde_json::to_string_pretty(&value).expect("config serializes")
    }
}

/// PEFT's `get_pattern_key`: the first key `k` with `(.*\.)?(k)$` matching `path`.
fn pattern_value<T: Copy>(patterns: &BTreeMap<String, T>, path: &str) -> Option<T> {
    patterns.iter().find_map(|(key, value)| {
        let re = regex::Regex::new(&format!(r"^(?:.*\.)?(?:{key})$")).ok()?;
        re.is_match(path).then_some(*value)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_peft_defaults() {
        let c: LoraConfig = serde_json::from_str(r#"{"target_modules": ["q_proj"]}"#).unwrap();
        assert_eq!((c.r, c.lora_alpha, c.lora_dropout), (8, 8.0, 0.0));
        assert_eq!(c.bias, "none");
        assert_eq!(c.init_lora_weights, InitLoraWeights::Bool(true));
        assert_eq!(c.scaling_for("a.q_proj"), 1.0);
        c.validate().unwrap();
    }

    #[test]
    fn rslora_and_patterns() {
        let mut c = LoraConfig::new(16, 32.0, ModuleSelector::list(&["q_proj"]));
        c.use_rslora = true;
        assert_eq!(c.scaling_for("x.q_proj"), 8.0);
        c.use_rslora = false;
        c.rank_pattern.insert("v_proj".into(), 4);
        assert_eq!(c.rank_for("model.layers.0.v_proj"), 4);
        assert_eq!(c.rank_for("model.layers.0.q_proj"), 16);
        assert_eq!(c.scaling_for("model.layers.0.v_proj"), 8.0);
    }

    #[test]
    fn unsupported_values_name_the_field() {
        let err = LoraConfig {
            bias: "all".into(),
            ..LoraConfig::new(8, 8.0, ModuleSelector::list(&["q"]))
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(err.contains("`bias`") && err.contains("all"), "{err}");
        let c: LoraConfig = serde_json::from_str(
            r#"{"target_modules": "q", "use_qalora": true, "init_lora_weights": "pissa"}"#,
        )
        .unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(
            err.contains("init_lora_weights") && err.contains("pissa"),
            "{err}"
        );
        let c: LoraConfig =
            serde_json::from_str(r#"{"target_modules": "q", "use_qalora": true}"#).unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("use_qalora"));
        let c: LoraConfig = serde_json::from_str(r#"{"target_modules": "(unclosed"}"#).unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("bad regex"));
    }
}
