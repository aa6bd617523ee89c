//! Where a model's weight memory goes: frozen base weights (dense or quantised), trainable
//! parameters, and the optimiser state they imply.

use burn::module::Module;
use burn::tensor::backend::Backend;

use crate::adapters::LinearModules;

/// Bytes held by a model's weights, by role (activations and gradients not included).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryReport {
    /// Frozen base parameters (quantised weights counted by their logical size).
    pub frozen_params: usize,
    /// Bytes of the frozen base parameters on the device.
    pub frozen_bytes: usize,
    /// Of those, parameters stored quantised (bf16/f16, int8, 4-bit).
    pub quantized_params: usize,
    /// Bytes of the quantised weights (codes and statistics).
    pub quantized_bytes: usize,
    /// Parameters that receive gradients (adapters, `modules_to_save`, fully trained parts).
    pub trainable_params: usize,
    /// Bytes of the trainable parameters.
    pub trainable_bytes: usize,
    /// Bytes of AdamW's two moments for the trainable parameters.
    pub optimizer_bytes: usize,
}

impl MemoryReport {
    /// Frozen-weight bytes per frozen parameter.
    pub fn frozen_bytes_per_param(&self) -> f64 {
        self.frozen_bytes as f64 / self.frozen_params.max(1) as f64
    }

    /// Quantised-weight bytes per quantised parameter.
    pub fn quantized_bytes_per_param(&self) -> f64 {
        self.quantized_bytes as f64 / self.quantized_params.max(1) as f64
    }

    /// All weight bytes: frozen + trainable + optimiser state.
    pub fn total_bytes(&self) -> usize {
        self.frozen_bytes + self.trainable_bytes + self.optimizer_bytes
    }
}

fn mib(bytes: usize) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

impl std::fmt::Display for MemoryReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "frozen weights: {} ({} params, {:.3} bytes/param",
            mib(self.frozen_bytes),
            self.frozen_params,
            self.frozen_bytes_per_param()
        )?;
        if self.quantized_params > 0 {
            write!(
                f,
                "; {} quantised at {:.3} bytes/param",
                self.quantized_params,
                self.quantized_bytes_per_param()
            )?;
        }
        write!(
            f,
            ") || trainable: {} ({} params) || optimizer state: {} || total: {}",
            mib(self.trainable_bytes),
            self.trainable_params,
            mib(self.optimizer_bytes),
            mib(self.total_bytes())
        )
    }
}

/// The [`MemoryReport`] of `model` on backend `B` (float parameters at `B`'s float size).
pub fn memory_report<B: Backend, M: Module<B> + LinearModules<B>>(model: &M) -> MemoryReport {
    let float_bytes = std::mem::size_of::<B::FloatElem>();
    let mut report = MemoryReport::default();
    for p in crate::params::named_params::<B, M>(model) {
        if p.trainable {
            report.trainable_params += p.numel();
            report.trainable_bytes += float_bytes * p.numel();
        } else {
            report.frozen_params += p.numel();
            report.frozen_bytes += float_bytes * p.numel();
        }
    }
    model.visit_linears(&mut |_, linear| {
        if let Some(q) = &linear.quantized {
            let [rows, cols] = q.dims();
            report.quantized_params += rows * cols;
            report.quantized_bytes += q.storage_bytes();
        }
    });
    report.frozen_params += report.quantized_params;
    report.frozen_bytes += report.quantized_bytes;
    report.optimizer_bytes = 2 * 4 * report.trainable_params;
    report
}
