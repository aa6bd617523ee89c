//! TRL's flat YAML configs (the files `trl sft --config` / `trl dpo --config` take) read as the
//! same job as the equivalent vlmtune TOML; keys TRL knows and vlmtune does not implement are
//! errors unless they keep TRL's default; infrastructure keys only warn; typos are errors.

use std::path::Path;

use vlmtune::jobs::dpo::DpoJobConfig;
use vlmtune::jobs::sft::SftJobConfig;

fn example(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name)
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn the_trl_sft_example_is_the_same_job_as_its_toml() {
    let dir = tempfile::tempdir().unwrap();
    let toml = write(
        dir.path(),
        "sft.toml",
        r#"
[model]
name = "HuggingFaceTB/SmolVLM-256M-Instruct"
[dataset]
source = "HuggingFaceM4/ChartQA"
split = "train"
eval_split = "val"
[lora]
r = 8
lora_alpha = 16
lora_dropout = 0.05
target_modules = ["q_proj", "k_proj", "v_proj", "o_proj"]
[collator]
max_length = 1024
assistant_only_loss = false
[training]
output_dir = "runs/smolvlm-256m-chartqa-trl"
per_device_train_batch_size = 4
gradient_accumulation_steps = 4
num_train_epochs = 1
learning_rate = 2e-4
lr_scheduler_type = "cosine"
warmup_ratio = 0.03
max_grad_norm = 1.0
gradient_checkpointing = true
logging_steps = 10
eval_steps = 100
save_steps = 100
save_total_limit = 2
seed = 42
report_to = ["none"]
"#,
    );
    let from_trl = SftJobConfig::from_file(&example("trl_sft.yaml")).unwrap();
    let from_toml = SftJobConfig::from_file(&toml).unwrap();
    assert_eq!(from_trl, from_toml);
}

#[test]
fn the_trl_dpo_example_is_the_same_job_as_its_toml() {
    let dir = tempfile::tempdir().unwrap();
    let toml = write(
        dir.path(),
        "dpo.toml",
        r#"
[model]
name = "runs/sft-tiny/final"
[dataset]
source = "data/preferences.jsonl"
eval_split = "none"
[lora]
r = 16
lora_alpha = 32
lora_dropout = 0.05
target_modules = "all-linear"
[dpo]
beta = 0.1
loss_type = ["sigmoid", "sft"]
[collator]
max_length = 256
assistant_only_loss = false
[training]
output_dir = "runs/dpo-trl"
per_device_train_batch_size = 8
learning_rate = 5e-4
max_steps = 300
warmup_ratio = 0.05
logging_steps = 10
save_steps = 0
gradient_checkpointing = true
report_to = ["none"]
"#,
    );
    let from_trl = DpoJobConfig::from_file(&example("trl_dpo.yaml")).unwrap();
    let from_toml = DpoJobConfig::from_file(&toml).unwrap();
    assert_eq!(from_trl, from_toml);
}

#[test]
fn trl_defaults_apply_to_a_trl_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "dpo.yaml", "model_name_or_path: m\n");
    let c = DpoJobConfig::from_file(&path).unwrap();
    assert_eq!(c.training.learning_rate, 1e-6, "DPOConfig's default");
    assert!(c.training.gradient_checkpointing, "TRL's default");
    assert_eq!(c.dataset.eval_split, "none", "eval_strategy defaults to no");
    assert!(c.lora.is_none(), "no use_peft: a full fine-tune, as in TRL");
}

#[test]
fn unimplemented_unknown_and_infrastructure_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "sft.yaml",
        "model_name_or_path: m\npacking: true\nlearning_rat: 1.0e-4\nfp16: false\nneftune_noise_alpha: 5\n",
    );
    let err = SftJobConfig::from_file(&path).unwrap_err().to_string();
    let file = path.display();
    assert!(
        err.contains(&format!(
            "{file}:2: packing: true: a TRL setting vlmtune does not implement"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{file}:3: unknown key `learning_rat`; did you mean `learning_rate`?"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("{file}:5: neftune_noise_alpha: 5")),
        "{err}"
    );
    assert!(
        !err.contains("fp16"),
        "TRL's default asks for nothing: {err}"
    );
    // A DPO key is unknown to SFT.
    let path = write(dir.path(), "sft.yaml", "beta: 0.1\n");
    let err = SftJobConfig::from_file(&path).unwrap_err().to_string();
    assert!(err.contains("unknown key `beta`"), "{err}");
    // Infrastructure keys only warn.
    let path = write(
        dir.path(),
        "sft.yaml",
        "model_name_or_path: m\nreport_to: wandb\npush_to_hub: true\nrun_name: x\n",
    );
    assert!(SftJobConfig::from_file(&path).is_ok());
    // use_peft needs target modules (PEFT has none for SmolVLM).
    let path = write(dir.path(), "sft.yaml", "use_peft: true\n");
    let err = SftJobConfig::from_file(&path).unwrap_err().to_string();
    assert!(err.contains("lora_target_modules"), "{err}");
    // optim: the 8-bit AdamW names are implemented (paged runs as adamw_8bit).
    let path = write(dir.path(), "sft.yaml", "optim: paged_adamw_8bit\n");
    let c = SftJobConfig::from_file(&path).unwrap();
    assert!(c.training.uses_8bit_optimizer());
    let path = write(dir.path(), "sft.yaml", "optim: adafactor\n");
    assert!(SftJobConfig::from_file(&path).is_err());
    // report_to: tensorboard is implemented, others in a list are not silently dropped.
    let path = write(dir.path(), "sft.yaml", "report_to: tensorboard\n");
    let c = SftJobConfig::from_file(&path).unwrap();
    assert_eq!(c.training.report_to, ["tensorboard"]);
}
