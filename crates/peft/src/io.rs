//! Adapter files exactly as PEFT writes them: `adapter_config.json` and
//! `adapter_model.safetensors` with keys `base_model.model.<path>.lora_A.weight` (`[r, in]`),
//! `.lora_B.weight` (`[out, r]`), `.lora_magnitude_vector` (DoRA, `[out]`) and
//! `base_model.model.<path>.weight` / `.bias` for `modules_to_save`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use burn::module::{Param, ParamId};
use burn::tensor::{backend::Backend, Tensor, TensorData};
use vlmtune_quant::{write_atomic, write_safetensors, NamedTensor, SafetensorsFiles, SaveDtype};

use crate::adapters::{add_adapter, LinearModules};
use crate::config::LoraConfig;
use crate::error::{PeftError, Result};

/// The key prefix PEFT gives a causal LM's adapter weights.
pub const KEY_PREFIX: &str = "base_model.model.";

/// Config file name.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// Weights file name.
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";

fn host<B: Backend, const D: usize>(name: String, t: Tensor<B, D>) -> NamedTensor {
    let shape = t.dims().to_vec();
    NamedTensor {
        name,
        values: t
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .unwrap_or_default(),
        shape,
    }
}

/// The tensors of adapter `name` under PEFT's key names.
pub fn adapter_tensors<B: Backend, M: LinearModules<B>>(model: &M, name: &str) -> Vec<NamedTensor> {
    let mut out = Vec::new();
    model.visit_linears(&mut |path, linear| {
        let key = format!("{KEY_PREFIX}{path}");
        if let Some(lora) = linear.adapter(name) {
            out.push(host(format!("{key}.lora_A.weight"), lora.lora_a.val()));
            out.push(host(format!("{key}.lora_B.weight"), lora.lora_b.val()));
            if let Some(m) = &lora.magnitude {
                out.push(host(format!("{key}.lora_magnitude_vector"), m.val()));
            }
        }
        if let Some(copy) = linear.copy(name) {
            out.push(host(format!("{key}.weight"), copy.weight.val()));
            if let Some(b) = &copy.bias {
                out.push(host(format!("{key}.bias"), b.val()));
            }
        }
    });
    out
}

/// Writes adapter `name` with its `config` to `dir` (both files atomically).
pub fn save_adapter<B: Backend, M: LinearModules<B>>(
    model: &M,
    name: &str,
    config: &LoraConfig,
    dir: &Path,
) -> Result<()> {
    let tensors = adapter_tensors(model, name);
    if tensors.is_empty() {
        return Err(PeftError::Adapter {
            name: name.into(),
            message: "no such adapter to save".into(),
        });
    }
    std::fs::create_dir_all(dir).map_err(|source| PeftError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut meta = BTreeMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    write_safetensors(
        &dir.join(WEIGHTS_FILE),
        &tensors,
        SaveDtype::F32,
        Some(meta),
    )?;
    write_atomic(&dir.join(CONFIG_FILE), config.to_json().as_bytes())?;
    Ok(())
}

/// Loads a PEFT adapter folder as adapter `name`, checking that every file key targets a
/// module of the model with the shape its config implies. Returns the config.
pub fn load_adapter<B: Backend, M: LinearModules<B>>(
    model: &mut M,
    dir: &Path,
    name: &str,
) -> Result<LoraConfig> {
    let config_path = dir.join(CONFIG_FILE);
    let config = LoraConfig::from_file(&config_path)?;
    let weights_path = dir.join(WEIGHTS_FILE);
    let files = SafetensorsFiles::open(std::slice::from_ref(&weights_path))?;
    add_adapter(model, name, &config, 0).map_err(|e| PeftError::AdapterFile {
        path: config_path.clone(),
        message: e.to_string(),
    })?;
    let file_err = |message: String| PeftError::AdapterFile {
        path: weights_path.clone(),
        message,
    };
    let mut expected = BTreeSet::new();
    let mut failure: Option<PeftError> = None;
    model.visit_linears_mut(&mut |path, linear| {
        if failure.is_some() {
            return;
        }
        let key = format!("{KEY_PREFIX}{path}");
        let device = linear.device();
        let read = |k: &str, shape: &[usize]| -> Result<Vec<f32>> {
            let found = files
                .shape(k)
                .ok_or_else(|| file_err(format!("missing `{k}` (the config targets `{path}`)")))?;
            if found != shape {
                return Err(file_err(format!(
                    "`{k}` has shape {found:?} but the model and config (r = {}) imply {shape:?}",
                    config.rank_for(path)
                )));
            }
            Ok(files.read_f32(k)?.0)
        };
        let result = (|| -> Result<()> {
            if let Some(lora) = linear.lora.iter_mut().find(|a| a.name == name) {
                let [r, inp] = lora.lora_a.dims();
                let out = lora.lora_b.dims()[0];
                for (suffix, shape) in [("lora_A.weight", [r, inp]), ("lora_B.weight", [out, r])] {
                    let k = format!("{key}.{suffix}");
                    let values = read(&k, &shape)?;
                    let param = trainable::<B, 2>(values, shape, &device);
                    if suffix.starts_with("lora_A") {
                        lora.lora_a = param;
                    } else {
                        lora.lora_b = param;
                    }
                    expected.insert(k);
                }
                if lora.magnitude.is_some() {
                    let k = format!("{key}.lora_magnitude_vector");
                    lora.magnitude = Some(trainable::<B, 1>(read(&k, &[out])?, [out], &device));
                    expected.insert(k);
                }
            }
            if let Some(copy) = linear.copies.iter_mut().find(|c| c.name == name) {
                let shape = copy.weight.dims();
                let k = format!("{key}.weight");
                copy.weight = trainable::<B, 2>(read(&k, &shape)?, shape, &device);
                expected.insert(k);
                if let Some(b) = &mut copy.bias {
                    let shape = b.dims();
                    let k = format!("{key}.bias");
                    *b = trainable::<B, 1>(read(&k, &shape)?, shape, &device);
                    expected.insert(k);
                }
            }
            Ok(())
        })();
        if let Err(e) = result {
            failure = Some(e);
        }
    });
    let unexpected: Vec<String> = files
        .keys()
        .into_iter()
        .filter(|k| !expected.contains(k))
        .collect();
    let failure = failure.or_else(|| {
        (!unexpected.is_empty()).then(|| {
            file_err(format!(
                "weights for modules the config does not target or the model does not have: {}",
                unexpected.join(", ")
            ))
        })
    });
    if let Some(e) = failure {
        crate::adapters::delete_adapter(model, name).ok();
        return Err(e);
    }
    Ok(config)
}

fn trainable<B: Backend, const D: usize>(
    values: Vec<f32>,
    shape: [usize; D],
    device: &B::Device,
) -> Param<Tensor<B, D>> {
    Param::initialized(
        ParamId::new(),
        Tensor::from_data(TensorData::new(values, shape), device),
    )
    .set_require_grad(true)
}
