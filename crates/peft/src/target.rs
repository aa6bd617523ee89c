//! Which modules an adapter goes on, matched exactly as PEFT's `check_target_module_exists`.

use regex::Regex;

use crate::config::{LoraConfig, ModuleSelector};

fn full_match(pattern: &str, key: &str) -> bool {
    Regex::new(&format!("^(?:{pattern})$")).is_ok_and(|re| re.is_match(key))
}

fn name_or_suffix(list: &[String], key: &str) -> bool {
    list.iter()
        .any(|t| key == t || key.ends_with(&format!(".{t}")))
}

/// Whether `key` is a `modules_to_save` entry: PEFT's `(^|.*\.)m($|\..*)`.
pub fn is_module_to_save(config: &LoraConfig, key: &str) -> bool {
    config.modules_to_save.iter().flatten().any(|m| {
        Regex::new(&format!(r"^(?:|.*\.){m}(?:$|\..*)")).is_ok_and(|re| re.is_match(key))
            || key == m
    })
}

/// The layer index PEFT reads from `key` for `layers_to_transform`.
fn layer_index(config: &LoraConfig, key: &str) -> Option<usize> {
    let patterns = config
        .layers_pattern
        .as_ref()
        .map(|p| p.to_vec())
        .unwrap_or_default();
    let regexes: Vec<String> = if patterns.iter().all(String::is_empty) {
        vec![r"^.*?\.[^.]*\.(\d+)\.".to_string()]
    } else {
        patterns
            .iter()
            .map(|p| format!(r"^(?:|.*?\.){p}\.(\d+)\."))
            .collect()
    };
    regexes.iter().find_map(|re| {
        Regex::new(re)
            .ok()?
            .captures(key)?
            .get(1)?
            .as_str()
            .parse()
            .ok()
    })
}

/// Whether a module at `key` (a Linear; `is_output_layer` for `lm_head`) gets an adapter.
pub fn is_target(config: &LoraConfig, key: &str, is_output_layer: bool) -> bool {
    match &config.exclude_modules {
        Some(ModuleSelector::Pattern(p)) if full_match(p, key) => return false,
        Some(ModuleSelector::List(list)) if name_or_suffix(list, key) => return false,
        _ => {}
    }
    if is_module_to_save(config, key) {
        return false;
    }
    match &config.target_modules {
        None => false,
        Some(selector) if selector.is_all_linear() => !is_output_layer,
        Some(ModuleSelector::Pattern(p)) => full_match(p, key),
        Some(ModuleSelector::List(list)) if list.iter().any(|t| t == key) => true,
        Some(ModuleSelector::List(list)) => {
            let found = list.iter().any(|t| key.ends_with(&format!(".{t}")));
            match &config.layers_to_transform {
                Some(indexes) if found && !indexes.is_empty() => {
                    layer_index(config, key).is_some_and(|i| indexes.contains(i))
                }
                _ => found,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LayerIndexes;

    const Q0: &str = "model.text_model.layers.0.self_attn.q_proj";
    const Q2: &str = "model.text_model.layers.2.self_attn.q_proj";
    const VQ: &str = "model.vision_model.encoder.layers.0.self_attn.q_proj";
    const VO: &str = "model.vision_model.encoder.layers.1.self_attn.out_proj";

    #[test]
    fn lists_match_names_and_suffixes() {
        let c = LoraConfig::new(8, 8.0, ModuleSelector::list(&["q_proj", "lm_head"]));
        assert!(is_target(&c, Q0, false) && is_target(&c, VQ, false));
        assert!(!is_target(&c, VO, false));
        assert!(is_target(&c, "lm_head", true));
        // a suffix must follow a dot: "proj" does not match "q_proj"
        let c = LoraConfig::new(8, 8.0, ModuleSelector::list(&["proj"]));
        assert!(!is_target(&c, Q0, false));
        assert!(is_target(
            &c,
            "model.connector.modality_projection.proj",
            false
        ));
    }

    #[test]
    fn regex_is_a_full_match() {
        let c = LoraConfig::new(
            8,
            8.0,
            ModuleSelector::Pattern(r"model\.text_model\.layers\.\d+\.self_attn\.q_proj".into()),
        );
        assert!(is_target(&c, Q0, false));
        assert!(!is_target(&c, VQ, false));
        assert!(!is_target(&c, &format!("{Q0}.extra"), false));
    }

    #[test]
    fn all_linear_skips_the_output_layer() {
        let c = LoraConfig::new(8, 8.0, ModuleSelector::Pattern("all-linear".into()));
        assert!(is_target(&c, VO, false));
        assert!(!is_target(&c, "lm_head", true));
    }

    #[test]
    fn layers_and_exclusions() {
        let mut c = LoraConfig::new(8, 8.0, ModuleSelector::list(&["q_proj"]));
        c.layers_to_transform = Some(LayerIndexes::Many(vec![0, 2]));
        c.exclude_modules = Some(ModuleSelector::list(&[
            "vision_model.encoder.layers.0.self_attn.q_proj",
        ]));
        assert!(is_target(&c, Q0, false) && is_target(&c, Q2, false));
        assert!(!is_target(
            &c,
            "model.text_model.layers.1.self_attn.q_proj",
            false
        ));
        assert!(!is_target(&c, VQ, false));
        c.modules_to_save = Some(vec!["q_proj".into()]);
        assert!(!is_target(&c, Q0, false));
        assert!(is_module_to_save(&c, Q0));
    }
}
