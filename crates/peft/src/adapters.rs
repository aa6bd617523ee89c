//! Model-level adapter operations (PEFT's `get_peft_model`, `set_adapter`,
//! `disable_adapter`, `delete_adapter`, `merge_and_unload`, `print_trainable_parameters`) over
//! any model that lists its Linear layers by path.

use burn::module::Module;
use burn::tensor::backend::Backend;

use crate::config::LoraConfig;
use crate::error::{PeftError, Result};
use crate::linear::Linear;
use crate::lora::LoraAdapter;
use crate::target::{is_module_to_save, is_target};

/// A model whose projections are [`Linear`] layers, walkable with their module paths.
pub trait LinearModules<B: Backend> {
    /// Calls `f` with the path and layer of every Linear, in a fixed order.
    fn visit_linears(&self, f: &mut dyn FnMut(&str, &Linear<B>));
    /// Calls `f` with the path and layer of every Linear, mutably.
    fn visit_linears_mut(&mut self, f: &mut dyn FnMut(&str, &mut Linear<B>));
    /// Whether `path` is the output layer (`lm_head`), which `all-linear` leaves out.
    fn is_output_layer(&self, path: &str) -> bool {
        path == "lm_head"
    }
}

/// Adds adapter `name` as PEFT's `get_peft_model` / `add_adapter` do: LoRA (or DoRA) on every
/// targeted Linear, trainable copies of `modules_to_save`. The first adapter of a model
/// becomes active. Returns the adapted module paths.
pub fn add_adapter<B: Backend, M: LinearModules<B>>(
    model: &mut M,
    name: &str,
    config: &LoraConfig,
    seed: u64,
) -> Result<Vec<String>> {
    config.validate()?;
    if adapter_names(model).iter().any(|n| n == name) {
        return Err(PeftError::Adapter {
            name: name.into(),
            message: "already exists".into(),
        });
    }
    let first = adapter_names(model).is_empty();
    let mut output_layers = Vec::new();
    model.visit_linears(&mut |path, _| output_layers.push(path.to_string()));
    output_layers.retain(|p| model.is_output_layer(p));
    let mut targeted = Vec::new();
    let mut saved = Vec::new();
    model.visit_linears_mut(&mut |path, linear| {
        if is_module_to_save(config, path) {
            linear.add_copy(name);
            saved.push(path.to_string());
        } else if is_target(config, path, output_layers.iter().any(|p| p == path)) {
            let device = linear.device();
            let lora = LoraAdapter::init(
                name,
                path,
                linear.in_features(),
                linear.out_features(),
                config,
                seed,
                &device,
            );
            linear.add_lora(lora, config.use_dora);
            targeted.push(path.to_string());
        }
        if first {
            linear.active_adapter = Some(name.to_string());
        }
    });
    for entry in config.modules_to_save.iter().flatten() {
        let probe = LoraConfig {
            modules_to_save: Some(vec![entry.clone()]),
            ..LoraConfig::default()
        };
        if !saved.iter().any(|p| is_module_to_save(&probe, p)) {
            remove_adapter(model, name);
            return Err(PeftError::ModuleToSave {
                name: entry.clone(),
            });
        }
    }
    if targeted.is_empty() {
        remove_adapter(model, name);
        return Err(PeftError::NoTargets {
            selector: serde_json::to_string(&config.target_modules).unwrap_or_default(),
        });
    }
    Ok(targeted)
}

fn remove_adapter<B: Backend, M: LinearModules<B>>(model: &mut M, name: &str) {
    model.visit_linears_mut(&mut |_, linear| {
        linear.lora.retain(|a| a.name != name);
        linear.copies.retain(|c| c.name != name);
        if linear.active_adapter.as_deref() == Some(name) {
            linear.active_adapter = None;
        }
    });
}

/// Names of the adapters present, in the order they were added.
pub fn adapter_names<B: Backend, M: LinearModules<B>>(model: &M) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    model.visit_linears(&mut |_, linear| {
        for n in linear
            .lora
            .iter()
            .map(|a| &a.name)
            .chain(linear.copies.iter().map(|c| &c.name))
        {
            if !names.contains(n) {
                names.push(n.clone());
            }
        }
    });
    names
}

/// The active adapter, if any.
pub fn active_adapter<B: Backend, M: LinearModules<B>>(model: &M) -> Option<String> {
    let mut active = None;
    model.visit_linears(&mut |_, linear| {
        if active.is_none() {
            active = linear.active_adapter.clone();
        }
    });
    active
}

/// Makes `name` the active adapter.
pub fn set_adapter<B: Backend, M: LinearModules<B>>(model: &mut M, name: &str) -> Result<()> {
    if !adapter_names(model).iter().any(|n| n == name) {
        return Err(PeftError::Adapter {
            name: name.into(),
            message: format!(
                "no such adapter (have: {})",
                adapter_names(model).join(", ")
            ),
        });
    }
    let mut result = Ok(());
    model.visit_linears_mut(&mut |_, linear| {
        if linear.merged.is_some() && result.is_ok() {
            result = linear.unmerge();
        }
        linear.active_adapter = Some(name.to_string());
    });
    result
}

/// Turns all adapters off (the base model alone) or back on. Merged adapters are unmerged
/// first, as PEFT does.
pub fn set_adapters_enabled<B: Backend, M: LinearModules<B>>(
    model: &mut M,
    enabled: bool,
) -> Result<()> {
    let mut result = Ok(());
    model.visit_linears_mut(&mut |_, linear| {
        if !enabled && linear.merged.is_some() && result.is_ok() {
            result = linear.unmerge();
        }
        linear.adapters_enabled = enabled;
    });
    result
}

/// Deletes adapter `name`; another remaining adapter becomes active if it was.
pub fn delete_adapter<B: Backend, M: LinearModules<B>>(model: &mut M, name: &str) -> Result<()> {
    let names = adapter_names(model);
    if !names.iter().any(|n| n == name) {
        return Err(PeftError::Adapter {
            name: name.into(),
            message: "no such adapter".into(),
        });
    }
    let mut result = Ok(());
    model.visit_linears_mut(&mut |_, linear| {
        if linear.merged.as_ref().is_some_and(|m| m.adapter == name) && result.is_ok() {
            result = linear.unmerge();
        }
    });
    result?;
    remove_adapter(model, name);
    let next = names.into_iter().find(|n| n != name);
    model.visit_linears_mut(&mut |_, linear| {
        if linear.active_adapter.is_none() {
            linear.active_adapter = next.clone();
        }
    });
    Ok(())
}

/// Merges the active adapter into the base weights (forward results unchanged).
pub fn merge_adapter<B: Backend, M: LinearModules<B>>(model: &mut M) -> Result<()> {
    // Refuse before touching anything, so a failed merge leaves no layer merged.
    let mut unmergeable = Ok(());
    model.visit_linears(&mut |path, linear| {
        if unmergeable.is_ok() {
            unmergeable = linear
                .ensure_mergeable()
                .map_err(|e| PeftError::State(format!("`{path}`: {e}")));
        }
    });
    unmergeable?;
    let mut result = Ok(());
    model.visit_linears_mut(&mut |_, linear| {
        if result.is_ok() && linear.merged.is_none() {
            result = linear.merge();
        }
    });
    result
}

/// Undoes [`merge_adapter`].
pub fn unmerge_adapter<B: Backend, M: LinearModules<B>>(model: &mut M) -> Result<()> {
    let mut result = Ok(());
    model.visit_linears_mut(&mut |_, linear| {
        if result.is_ok() {
            result = linear.unmerge();
        }
    });
    result
}

/// PEFT's `merge_and_unload`: merges the active adapter and removes every adapter, leaving a
/// plain model that saves as a Hugging Face checkpoint.
pub fn merge_and_unload<B: Backend, M: LinearModules<B>>(model: &mut M) -> Result<()> {
    merge_adapter(model)?;
    model.visit_linears_mut(&mut |_, linear| linear.unload());
    Ok(())
}

/// Module paths of the Linear layers whose base weight is stored quantised.
pub fn quantized_paths<B: Backend, M: LinearModules<B>>(model: &M) -> Vec<String> {
    let mut paths = Vec::new();
    model.visit_linears(&mut |path, linear| {
        if linear.is_quantized() {
            paths.push(path.to_string());
        }
    });
    paths
}

/// Trainable and total parameter counts, printed like PEFT's `print_trainable_parameters`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrainableReport {
    /// Parameters that receive gradients.
    pub trainable: usize,
    /// All parameters.
    pub total: usize,
}

impl std::fmt::Display for TrainableReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pct = 100.0 * self.trainable as f64 / self.total.max(1) as f64;
        write!(
            f,
            "trainable params: {} || all params: {} || trainable%: {:.4}",
            thousands(self.trainable),
            thousands(self.total),
            pct
        )
    }
}

fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Counts the trainable and total parameters of `module` (quantised base weights by their
/// logical size, as PEFT counts 4-bit parameters).
pub fn trainable_report<B: Backend, M: Module<B> + LinearModules<B>>(
    module: &M,
) -> TrainableReport {
    let memory = crate::memory::memory_report::<B, M>(module);
    TrainableReport {
        trainable: memory.trainable_params,
        total: memory.trainable_params + memory.frozen_params,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_reads_like_peft() {
        let r = TrainableReport {
            trainable: 5120,
            total: 116368,
        };
        assert_eq!(
            r.to_string(),
            "trainable params: 5,120 || all params: 116,368 || trainable%: 4.3998"
        );
    }
}
