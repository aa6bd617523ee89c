//! What the ranks exchange in an optimizer step: the accumulated batch's size before the
//! losses (SFT normalises by the label tokens of all ranks), then, in one all-reduce, the
//! gradients (flattened in a fixed path order; a parameter a rank has no gradient for counts
//! as zeros) and the step's statistics. Everything travels as f32, whatever the compute
//! dtype, so counts stay exact (below 2^24) and bf16 gradients are summed in f32.

use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData};

use super::Collective;
use crate::error::{Result, TrainError};
use crate::optim::TensorMap;

/// The trainable parameters' paths and sizes, in the order of the flattened gradients.
pub(crate) struct GradLayout {
    params: Vec<(String, usize)>,
}

impl GradLayout {
    /// The layout of `model`'s trainable parameters (path order, the same on every rank).
    pub fn of<B: Backend, M: Module<B>>(model: &M) -> Self {
        let mut params: Vec<(String, usize)> = vlmtune_peft::named_params::<B, M>(model)
            .into_iter()
            .filter(|p| p.trainable)
            .map(|p| (p.path, p.shape.iter().product()))
            .collect();
        params.sort();
        Self { params }
    }
}

fn values_tensor<B: Backend>(values: &[f64], device: &B::Device) -> Tensor<B, 1> {
    let data: Vec<f32> = values.iter().map(|&v| v as f32).collect();
    Tensor::from_data(TensorData::new(data, [values.len()]), (device, DType::F32))
}

fn host_values<B: Backend>(tensor: Tensor<B, 1>) -> Result<Vec<f64>> {
    let values = tensor
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .map_err(|e| TrainError::Readback(format!("{e:?}")))?;
    Ok(values.into_iter().map(f64::from).collect())
}

/// `values` summed over the ranks.
pub(crate) fn sum_values<B: Backend>(
    collective: &dyn Collective<B>,
    values: &[f64],
    device: &B::Device,
) -> Result<Vec<f64>> {
    host_values(collective.all_reduce_sum(values_tensor::<B>(values, device))?)
}

/// `grads` and `values` summed over the ranks, in one all-reduce.
pub(crate) fn sum_gradients<B: Backend>(
    collective: &dyn Collective<B>,
    layout: &GradLayout,
    mut grads: TensorMap<B>,
    values: &[f64],
    device: &B::Device,
) -> Result<(TensorMap<B>, Vec<f64>)> {
    let mut dtype = None;
    let mut pieces = Vec::with_capacity(layout.params.len() + 1);
    for (path, numel) in &layout.params {
        let piece = match grads.remove(path) {
            Some(g) => {
                if g.dims()[0] != *numel {
                    return Err(TrainError::Distributed(format!(
                        "the gradient of {path} has {} values, the parameter {numel}",
                        g.dims()[0]
                    )));
                }
                dtype.get_or_insert(g.dtype());
                g.cast(DType::F32)
            }
            None => Tensor::zeros([*numel], (device, DType::F32)),
        };
        pieces.push(piece);
    }
    if let Some(path) = grads.keys().next() {
        return Err(TrainError::Distributed(format!(
            "a gradient for {path}, which is not a trainable parameter"
        )));
    }
    pieces.push(values_tensor::<B>(values, device));
    let summed = collective.all_reduce_sum(Tensor::cat(pieces, 0))?;
    // Back in the gradients' dtype (the compute dtype where this rank had none).
    let target = dtype.unwrap_or_else(|| Tensor::<B, 1>::zeros([1], device).dtype());
    let mut out = TensorMap::new();
    let mut offset = 0;
    for (path, numel) in &layout.params {
        let piece = summed.clone().slice(offset..offset + numel);
        out.insert(path.clone(), piece.cast(target));
        offset += numel;
    }
    let values = host_values(summed.slice(offset..offset + values.len()))?;
    Ok((out, values))
}
