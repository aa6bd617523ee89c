//! Unknown keys and sections in job configs (TOML and YAML) are errors naming the file, the
//! line, the key and the closest valid key; PEFT's `adapter_config.json` only warns.

use std::path::Path;

use vlmtune::jobs::dpo::DpoJobConfig;
use vlmtune::jobs::sft::SftJobConfig;

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// `(section, a valid key written before the typo, the typo, what should be suggested)`.
const SFT_SECTIONS: [(&str, &str, &str, &str); 7] = [
    ("model", "name = \"tiny\"", "nme", "name"),
    (
        "dataset",
        "source = \"synthetic\"",
        "num_trian",
        "num_train",
    ),
    ("lora", "r = 4", "lora_alph", "lora_alpha"),
    ("trainable", "text = true", "lm_heads", "lm_head"),
    (
        "quant",
        "load_in_4bit = true",
        "bnb_4bit_quant_typ",
        "bnb_4bit_quant_type",
    ),
    (
        "collator",
        "max_length = 64",
        "completion_only_los",
        "completion_only_loss",
    ),
    ("training", "max_steps = 1", "learning_rat", "learning_rate"),
];

fn check(err: &str, file: &Path, line: usize, key: &str, hint: &str) {
    let location = format!("{}:{line}:", file.display());
    assert!(err.contains(&location), "no {location} in: {err}");
    assert!(err.contains(&format!("`{key}`")), "no key {key} in: {err}");
    assert!(
        err.contains(&format!("did you mean `{hint}`")),
        "no hint {hint} in: {err}"
    );
}

#[test]
fn every_sft_section_rejects_a_misspelt_key_in_toml_and_yaml() {
    let dir = tempfile::tempdir().unwrap();
    for (section, valid, typo, hint) in SFT_SECTIONS {
        // A comment line first, so the typo is on line 4.
        let toml = format!("# config\n[{section}]\n{valid}\n{typo} = 1\n");
        let path = write(dir.path(), "sft.toml", &toml);
        let err = SftJobConfig::from_file(&path).unwrap_err().to_string();
        check(&err, &path, 4, typo, hint);
        let yaml = format!(
            "# config\n{section}:\n  {}\n  {typo}: 1\n",
            valid.replacen(" =", ":", 1)
        );
        let path = write(dir.path(), "sft.yaml", &yaml);
        let err = SftJobConfig::from_file(&path).unwrap_err().to_string();
        check(&err, &path, 4, typo, hint);
    }
}

#[test]
fn dpo_sections_and_top_level_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "dpo.toml",
        "eval_max_new_token = 4\n[dpo]\nbeta = 0.2\nlos_type = [\"sigmoid\"]\n",
    );
    let err = DpoJobConfig::from_file(&path).unwrap_err().to_string();
    check(&err, &path, 1, "eval_max_new_token", "eval_max_new_tokens");
    check(&err, &path, 4, "los_type", "loss_type");
    let path = write(
        dir.path(),
        "dpo.yml",
        "training:\n  max_steps: 2\ndpo:\n  betta: 0.1\n",
    );
    let err = DpoJobConfig::from_file(&path).unwrap_err().to_string();
    check(&err, &path, 4, "betta", "beta");
    // A DPO-only section is unknown to SFT.
    let path = write(dir.path(), "sft.toml", "[dpo]\nbeta = 0.1\n");
    let err = SftJobConfig::from_file(&path).unwrap_err().to_string();
    assert!(
        err.contains(&format!("{}:1: unknown section [dpo]", path.display())),
        "{err}"
    );
}

#[test]
fn misspelt_sections_and_keys_in_the_wrong_section() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "sft.toml",
        "[trainingg]\nlearning_rate = 1e-4\n\n[model]\nmax_steps = 3\n",
    );
    let err = SftJobConfig::from_file(&path).unwrap_err().to_string();
    assert!(
        err.contains(&format!(
            "{}:1: unknown section [trainingg]; did you mean [training]?",
            path.display()
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{}:5: unknown key `max_steps` in [model]; did you mean `max_steps` in [training]?",
            path.display()
        )),
        "{err}"
    );
    // Nothing near: no hint, still an error.
    let path = write(dir.path(), "sft.toml", "[training]\nzzzz = 1\n");
    let err = SftJobConfig::from_file(&path).unwrap_err().to_string();
    assert!(err.ends_with("unknown key `zzzz` in [training]"), "{err}");
}

#[test]
fn bad_values_name_the_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "sft.yaml",
        "training:\n  max_steps: 2\n  learning_rate: fast\n",
    );
    let err = SftJobConfig::from_file(&path).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!(
            "{}:3: field `training.learning_rate`",
            path.display()
        )),
        "{err}"
    );
    let path = write(dir.path(), "sft.json", "{}");
    let err = SftJobConfig::from_file(&path).unwrap_err().to_string();
    assert!(err.contains(".toml, .yaml or .yml"), "{err}");
    let path = write(dir.path(), "sft.toml", "[training\nx = 1");
    let err = SftJobConfig::from_file(&path).unwrap_err().to_string();
    assert!(err.contains("sft.toml") && err.contains("line 1"), "{err}");
}

#[test]
fn valid_configs_parse_the_same_from_toml_and_yaml() {
    let dir = tempfile::tempdir().unwrap();
    let toml = write(
        dir.path(),
        "sft.toml",
        "[model]\nname = \"tiny\"\n[lora]\npreset = \"text-attention\"\nr = 4\nlora_alpha = 8\nrevision = \"main\"\nrank_pattern = { q_proj = 8 }\n[training]\nlearning_rate = 1e-4\nmax_steps = 3\n[dataset]\nimage_field = \"img\"\n",
    );
    let yaml = write(
        dir.path(),
        "sft.yaml",
        "model:\n  name: tiny\nlora:\n  preset: text-attention\n  r: 4\n  lora_alpha: 8\n  revision: main\n  rank_pattern:\n    q_proj: 8\ntraining:\n  learning_rate: 1e-4\n  max_steps: 3\ndataset:\n  image_field: img\n",
    );
    let a = SftJobConfig::from_file(&toml).unwrap();
    let b = SftJobConfig::from_file(&yaml).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.training.learning_rate, 1e-4);
    assert_eq!(a.lora.unwrap().config.rank_pattern["q_proj"], 8);
    for example in ["examples/sft.toml", "examples/dpo.toml"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(example);
        let result = if example.contains("dpo") {
            DpoJobConfig::from_file(&path).map(|_| ())
        } else {
            SftJobConfig::from_file(&path).map(|_| ())
        };
        result.unwrap_or_else(|e| panic!("{example}: {e}"));
    }
}

#[test]
fn the_schema_is_exactly_what_deserialises() {
    // Every key of the schema is accepted and read back (no key the reader would wrongly
    // call unknown), for both jobs.
    let dir = tempfile::tempdir().unwrap();
    let sft = toml::to_string(&SftJobConfig::schema()).unwrap();
    let path = write(dir.path(), "sft.toml", &sft);
    assert_eq!(
        SftJobConfig::from_file(&path).unwrap(),
        SftJobConfig::schema()
    );
    let dpo = toml::to_string(&DpoJobConfig::schema()).unwrap();
    let path = write(dir.path(), "dpo.toml", &dpo);
    assert_eq!(
        DpoJobConfig::from_file(&path).unwrap(),
        DpoJobConfig::schema()
    );
}

#[test]
fn unknown_adapter_config_keys_only_warn() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "adapter_config.json",
        r#"{"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"], "peft_type": "LORA",
            "revision": null, "a_field_from_peft_0_99": 1}"#,
    );
    let config = vlmtune::peft::LoraConfig::from_file(&path).unwrap();
    assert_eq!(config.r, 4);
    assert_eq!(config.unknown_fields(), vec!["a_field_from_peft_0_99"]);
}
