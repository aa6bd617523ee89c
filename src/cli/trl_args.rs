//! TRL's command-line spelling for `sft` and `dpo`: a `trl sft ...` line with `trl` replaced by
//! `vlmtune` runs. Before clap sees the arguments, `--snake_case` flags that are vlmtune flags
//! are rewritten to `--kebab-case` (with HfArgumentParser's `--flag true|false` for switches),
//! and TRL keys vlmtune has no flag for (`--model_name_or_path`, `--dataset_name`,
//! `--use_peft`, `--lora_target_modules q_proj v_proj`, ...) are taken out and applied as a
//! flat TRL config ([`vlmtune::trl`]) over the job's config.

use std::ffi::OsString;

use clap::{ArgAction, Command};
use serde_json::{Map, Value};

/// TRL keys given on the command line, in order.
pub type TrlOverrides = Map<String, Value>;

/// Splits `args` (the whole command line) into what clap parses and the TRL overrides of the
/// `sft` / `dpo` subcommand of `command`.
pub fn split(command: &Command, args: Vec<OsString>) -> (Vec<OsString>, TrlOverrides) {
    let mut overrides = Map::new();
    let Some(sub_at) = args.iter().position(|a| a == "sft" || a == "dpo") else {
        return (args, overrides);
    };
    let job = if args[sub_at] == "sft" {
        vlmtune::trl::TrlJob::Sft
    } else {
        vlmtune::trl::TrlJob::Dpo
    };
    let Some(sub) = command.find_subcommand(args[sub_at].to_str().unwrap_or_default()) else {
        return (args, overrides);
    };
    let switch = |long: &str| {
        sub.get_arguments()
            .chain(command.get_arguments())
            .find(|a| a.get_long() == Some(long))
            .map(|a| matches!(a.get_action(), ArgAction::SetTrue))
    };
    let mut out: Vec<OsString> = args[..=sub_at].to_vec();
    let mut rest = args[sub_at + 1..].iter().peekable();
    while let Some(arg) = rest.next() {
        let Some(flag) = arg.to_str().and_then(|a| a.strip_prefix("--")) else {
            out.push(arg.clone());
            continue;
        };
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (flag, None),
        };
        let kebab = name.replace('_', "-");
        if let Some(is_switch) = switch(&kebab) {
            let value = inline.or_else(|| {
                let next = rest.peek()?.to_str()?;
                (is_switch && matches!(next, "true" | "false" | "True" | "False")).then(|| {
                    rest.next()
                        .and_then(|v| v.to_str())
                        .unwrap_or_default()
                        .to_string()
                })
            });
            match (is_switch, value) {
                (true, Some(v)) if v.eq_ignore_ascii_case("false") => {}
                (true, _) => out.push(format!("--{kebab}").into()),
                (false, Some(v)) => out.push(format!("--{kebab}={v}").into()),
                (false, None) => out.push(format!("--{kebab}").into()),
            }
            continue;
        }
        // TRL's keys in either spelling (`--report_to`, `--report-to`).
        let snake = name.replace('-', "_");
        if !vlmtune::trl::knows(job, &snake) {
            out.push(arg.clone());
            continue;
        }
        let name = snake.as_str();
        let mut values: Vec<Value> = inline.iter().map(|v| scalar(v)).collect();
        while let Some(next) = rest.peek().and_then(|v| v.to_str()) {
            if next.starts_with("--") {
                break;
            }
            values.push(scalar(next));
            rest.next();
        }
        let value = match values.len() {
            0 => Value::Bool(true),
            1 => values.remove(0),
            _ => Value::Array(values),
        };
        overrides.insert(name.to_string(), value);
    }
    (out, overrides)
}

/// The config a `sft` / `dpo` command line starts from, with its TRL keys applied: the file
/// (`from_file`), or for a TRL command line (one naming the model or the data that way) the
/// job's defaults with TRL's, or else the built-in job (`builtin`).
pub fn base_config<T: serde::Serialize + serde::de::DeserializeOwned + Default>(
    file: Option<&std::path::Path>,
    trl: &TrlOverrides,
    job: vlmtune::trl::TrlJob,
    from_file: impl FnOnce(&std::path::Path) -> vlmtune::Result<T>,
    builtin: impl FnOnce() -> T,
) -> anyhow::Result<T> {
    let trl_line = file.is_none()
        && ["model_name_or_path", "dataset_name"]
            .iter()
            .any(|k| trl.contains_key(*k));
    if trl_line {
        return Ok(vlmtune::trl::apply_overrides(
            &T::default(),
            trl,
            job,
            true,
        )?);
    }
    let base = match file {
        Some(path) => from_file(path)?,
        None => builtin(),
    };
    Ok(if trl.is_empty() {
        base
    } else {
        vlmtune::trl::apply_overrides(&base, trl, job, false)?
    })
}

/// A command-line value as HfArgumentParser would type it.
fn scalar(text: &str) -> Value {
    match text {
        "true" | "True" => Value::Bool(true),
        "false" | "False" => Value::Bool(false),
        "None" | "null" => Value::Null,
        _ => text
            .parse::<i64>()
            .map(Value::from)
            .or_else(|_| text.parse::<f64>().map(Value::from))
            .unwrap_or_else(|_| Value::String(text.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(subcommand)]
        command: Sub,
    }
    #[derive(clap::Subcommand)]
    enum Sub {
        Sft(crate::cli::sft::SftArgs),
    }

    #[test]
    fn a_trl_command_line_is_split_into_flags_and_trl_keys() {
        let line = "vlmtune sft --model_name_or_path HuggingFaceTB/SmolVLM-256M-Instruct --dataset_name HuggingFaceM4/ChartQA --learning_rate 2e-4 --per_device_train_batch_size=4 --gradient_checkpointing true --bf16 false --use_peft --lora_r 8 --lora_target_modules q_proj v_proj --output_dir out";
        let args: Vec<OsString> = line.split(' ').map(OsString::from).collect();
        let (clap_args, trl) = split(&Cli::command(), args);
        let clap_args: Vec<String> = clap_args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            clap_args.join(" "),
            "vlmtune sft --learning-rate 2e-4 --per-device-train-batch-size=4 --gradient-checkpointing --lora-r 8 --output-dir out"
        );
        assert_eq!(
            Value::Object(trl),
            serde_json::json!({
                "model_name_or_path": "HuggingFaceTB/SmolVLM-256M-Instruct",
                "dataset_name": "HuggingFaceM4/ChartQA",
                "use_peft": true,
                "lora_target_modules": ["q_proj", "v_proj"],
            })
        );
    }

    #[test]
    fn the_trl_command_line_of_the_example_yaml_is_the_same_job() {
        use clap::Parser;
        let line = "vlmtune sft --model_name_or_path HuggingFaceTB/SmolVLM-256M-Instruct --dtype float32 --attn_implementation eager --use_peft --lora_r 8 --lora_alpha 16 --lora_dropout 0.05 --lora_target_modules q_proj k_proj v_proj o_proj --dataset_name HuggingFaceM4/ChartQA --dataset_train_split train --dataset_test_split val --output_dir runs/smolvlm-256m-chartqa-trl --max_length 1024 --per_device_train_batch_size 4 --gradient_accumulation_steps 4 --num_train_epochs 1 --learning_rate 2.0e-4 --lr_scheduler_type cosine --warmup_steps 0.03 --max_grad_norm 1.0 --gradient_checkpointing true --logging_steps 10 --eval_strategy steps --eval_steps 100 --save_strategy steps --save_steps 100 --save_total_limit 2 --seed 42 --report_to none --push_to_hub false";
        let args: Vec<OsString> = line.split(' ').map(OsString::from).collect();
        let (clap_args, trl) = split(&Cli::command(), args);
        let Sub::Sft(mut sft) = Cli::parse_from(clap_args).command;
        sft.trl = trl;
        let from_line = sft.job_config().unwrap();
        let yaml = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/trl_sft.yaml");
        let from_file = vlmtune::jobs::sft::SftJobConfig::from_file(&yaml).unwrap();
        assert_eq!(from_line, from_file);
    }
}
