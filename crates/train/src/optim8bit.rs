//! 8-bit AdamW (`optim = "adamw_8bit"`): bitsandbytes' `AdamW8bit` as its CPU path computes it
//! (0.50, `backends/cpu/ops.py`; see `docs/design/adamw8bit/`). Both moments are stored as
//! uint8 codes, the first on the signed and the second on the unsigned dynamic map, blockwise
//! (256 values per f32 absmax): about 2.03 bytes per parameter instead of 8. Each step
//! dequantises, applies the AdamW update in f32 and requantises. Tensors under
//! [`MIN_8BIT_SIZE`] elements and embedding tables keep f32 moments, as bitsandbytes and
//! transformers' `adamw_8bit` do. The update runs on the host.

use std::collections::BTreeMap;

use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use vlmtune_quant::bnb::{dequantize_blockwise_8bit_into, quantize_blockwise_8bit_into, Code8};
use vlmtune_quant::NamedTensor;

use crate::error::{Result, TrainError};
use crate::optim::{decays, param_values, set_param_values, TensorMap};

/// Values per absmax of the 8-bit states (bitsandbytes' optimizer blocksize).
pub const BLOCKSIZE: usize = 256;
/// Tensors with fewer elements keep f32 moments (bitsandbytes' `min_8bit_size`).
pub const MIN_8BIT_SIZE: usize = 4096;

/// One parameter's moments.
#[derive(Clone, Debug, PartialEq)]
enum Moments {
    /// f32 moments (small tensors, embeddings).
    Full { m: Vec<f32>, v: Vec<f32> },
    /// 8-bit codes with one absmax per block.
    Blockwise {
        m: Vec<u8>,
        absmax1: Vec<f32>,
        v: Vec<u8>,
        absmax2: Vec<f32>,
    },
}

/// Whether `path` keeps f32 moments: transformers' `adamw_8bit` overrides every `nn.Embedding`
/// weight to 32-bit states (`embed_tokens`, the vision tower's `position_embedding`).
fn keeps_f32(path: &str, numel: usize) -> bool {
    numel < MIN_8BIT_SIZE
        || path.ends_with("embed_tokens.weight")
        || path.ends_with("position_embedding.weight")
}

/// bitsandbytes' 8-bit AdamW with decoupled weight decay.
#[derive(Clone, Debug)]
pub struct AdamW8bit {
    /// β₁.
    pub beta1: f64,
    /// β₂.
    pub beta2: f64,
    /// ε.
    pub eps: f64,
    /// Decoupled weight decay (not on biases and norms).
    pub weight_decay: f64,
    /// Updates done so far.
    pub step: u64,
    states: BTreeMap<String, Moments>,
}

impl AdamW8bit {
    /// A fresh optimizer.
    pub fn new(beta1: f64, beta2: f64, eps: f64, weight_decay: f64) -> Self {
        Self {
            beta1,
            beta2,
            eps,
            weight_decay,
            step: 0,
            states: BTreeMap::new(),
        }
    }

    /// Bytes of optimizer state held now.
    pub fn state_bytes(&self) -> usize {
        self.states
            .values()
            .map(|s| match s {
                Moments::Full { m, v } => 4 * (m.len() + v.len()),
                Moments::Blockwise {
                    m,
                    absmax1,
                    v,
                    absmax2,
                } => m.len() + v.len() + 4 * (absmax1.len() + absmax2.len()),
            })
            .sum()
    }

    /// One update of `p` (host values) with gradient `g`, as bitsandbytes' CPU kernels do it.
    fn update_values(&mut self, path: &str, p: &mut [f32], g: &[f32], lr: f64) {
        let t = self.step as i32;
        let (b1, b2) = (self.beta1, self.beta2);
        let c1 = 1.0 - b1.powi(t);
        let c2 = (1.0 - b2.powi(t)).sqrt();
        let decay = (self.weight_decay > 0.0 && decays(path))
            .then_some((1.0 - lr * self.weight_decay) as f32);
        let n = p.len();
        let state = self.states.entry(path.to_string()).or_insert_with(|| {
            if keeps_f32(path, n) {
                Moments::Full {
                    m: vec![0.0; n],
                    v: vec![0.0; n],
                }
            } else {
                let blocks = n.div_ceil(BLOCKSIZE);
                Moments::Blockwise {
                    m: vec![0; n],
                    absmax1: vec![0.0; blocks],
                    v: vec![0; n],
                    absmax2: vec![0.0; blocks],
                }
            }
        });
        // 1 - β computed in f64 and rounded once, as torch receives Python floats.
        let (b1f, nb1f) = (b1 as f32, (1.0 - b1) as f32);
        let (b2f, nb2f) = (b2 as f32, (1.0 - b2) as f32);
        match state {
            Moments::Full { m, v } => {
                // `optimizer_update_32bit`'s CPU path: p += -lr·c2/c1 · m / (√v + ε·c2).
                let step_size = (-lr * c2 / c1) as f32;
                let eps_c2 = (self.eps * c2) as f32;
                for i in 0..n {
                    m[i] = b1f * m[i] + nb1f * g[i];
                    v[i] = b2f * v[i] + nb2f * g[i] * g[i];
                    if let Some(d) = decay {
                        p[i] *= d;
                    }
                    p[i] += step_size * (m[i] / (v[i].sqrt() + eps_c2));
                }
            }
            Moments::Blockwise {
                m,
                absmax1,
                v,
                absmax2,
            } => {
                let mut mf = vec![0.0f32; n];
                let mut vf = vec![0.0f32; n];
                dequantize_blockwise_8bit_into(m, absmax1, Code8::Signed, BLOCKSIZE, &mut mf);
                dequantize_blockwise_8bit_into(v, absmax2, Code8::Unsigned, BLOCKSIZE, &mut vf);
                let step_size = (-lr / c1) as f32;
                let (c2f, epsf) = (c2 as f32, self.eps as f32);
                for i in 0..n {
                    // torch's `add_(alpha=)` and `addcmul_` are fused multiply-adds.
                    mf[i] = g[i].mul_add(nb1f, mf[i] * b1f);
                    vf[i] = (nb2f * g[i]).mul_add(g[i], vf[i] * b2f);
                    let den = vf[i].sqrt() / c2f + epsf;
                    if let Some(d) = decay {
                        p[i] *= d;
                    }
                    p[i] += (step_size * mf[i]) / den;
                }
                quantize_blockwise_8bit_into(&mf, Code8::Signed, BLOCKSIZE, m, absmax1);
                quantize_blockwise_8bit_into(&vf, Code8::Unsigned, BLOCKSIZE, v, absmax2);
            }
        }
    }

    /// Applies one update with learning rate `lr` to the parameters named in `grads`.
    pub fn update<AB, M>(
        &mut self,
        module: M,
        grads: TensorMap<AB::InnerBackend>,
        lr: f64,
    ) -> Result<M>
    where
        AB: AutodiffBackend,
        M: AutodiffModule<AB>,
    {
        self.step += 1;
        let mut values = param_values::<AB, M>(&module, grads.keys().cloned().collect());
        let mut new_values = BTreeMap::new();
        for (path, g) in grads {
            let Some(p) = values.remove(&path) else {
                continue;
            };
            let device = p.device();
            let mut p_host = host(p)?;
            let g_host = host(g)?;
            self.update_values(&path, &mut p_host, &g_host, lr);
            let n = p_host.len();
            new_values.insert(
                path,
                Tensor::<AB::InnerBackend, 1>::from_data(TensorData::new(p_host, [n]), &device),
            );
        }
        Ok(set_param_values::<AB, M>(module, new_values))
    }

    /// The state as named tensors: `state1.<path>` / `state2.<path>` (codes as exact f32
    /// integers), `absmax1.<path>` / `absmax2.<path>`, `exp_avg.<path>` / `exp_avg_sq.<path>`
    /// for f32 moments, and `step`.
    pub fn state_tensors(&self) -> Vec<NamedTensor> {
        let named = |name: String, values: Vec<f32>| NamedTensor {
            name,
            shape: vec![values.len()],
            values,
        };
        let codes = |c: &[u8]| c.iter().map(|&q| f32::from(q)).collect::<Vec<_>>();
        let mut out = Vec::new();
        for (path, state) in &self.states {
            match state {
                Moments::Full { m, v } => {
                    out.push(named(format!("exp_avg.{path}"), m.clone()));
                    out.push(named(format!("exp_avg_sq.{path}"), v.clone()));
                }
                Moments::Blockwise {
                    m,
                    absmax1,
                    v,
                    absmax2,
                } => {
                    out.push(named(format!("state1.{path}"), codes(m)));
                    out.push(named(format!("absmax1.{path}"), absmax1.clone()));
                    out.push(named(format!("state2.{path}"), codes(v)));
                    out.push(named(format!("absmax2.{path}"), absmax2.clone()));
                }
            }
        }
        out.push(named("step".into(), vec![self.step as f32]));
        out
    }

    /// Restores state written by [`AdamW8bit::state_tensors`].
    pub fn load_state(&mut self, tensors: Vec<NamedTensor>) -> Result<()> {
        let mut by_name: BTreeMap<String, Vec<f32>> =
            tensors.into_iter().map(|t| (t.name, t.values)).collect();
        self.step = by_name
            .remove("step")
            .and_then(|v| v.first().copied())
            .unwrap_or(0.0) as u64;
        let paths: Vec<String> = by_name
            .keys()
            .filter_map(|k| {
                k.strip_prefix("exp_avg.")
                    .or_else(|| k.strip_prefix("state1."))
                    .map(str::to_string)
            })
            .collect();
        let missing = |what: &str, path: &str| {
            TrainError::Readback(format!("8-bit optimizer state: no {what} for {path}"))
        };
        for path in paths {
            let mut take = |prefix: &str| by_name.remove(&format!("{prefix}.{path}"));
            let state = if let Some(m) = take("exp_avg") {
                let v = take("exp_avg_sq").ok_or_else(|| missing("exp_avg_sq", &path))?;
                Moments::Full { m, v }
            } else {
                let code = |v: Vec<f32>| v.into_iter().map(|x| x as u8).collect::<Vec<u8>>();
                Moments::Blockwise {
                    m: code(take("state1").ok_or_else(|| missing("state1", &path))?),
                    absmax1: take("absmax1").ok_or_else(|| missing("absmax1", &path))?,
                    v: code(take("state2").ok_or_else(|| missing("state2", &path))?),
                    absmax2: take("absmax2").ok_or_else(|| missing("absmax2", &path))?,
                }
            };
            self.states.insert(path, state);
        }
        Ok(())
    }
}

fn host<B: Backend>(t: Tensor<B, 1>) -> Result<Vec<f32>> {
    t.into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .map_err(|e| TrainError::Readback(format!("{e:?}")))
}

/// The optimizer a run uses (`optim`).
#[derive(Clone, Debug)]
pub enum Optimizer<B: Backend> {
    /// `adamw_torch`: f32 moments on the device.
    AdamW(crate::optim::AdamW<B>),
    /// `adamw_8bit`: bitsandbytes' blockwise 8-bit moments.
    AdamW8bit(AdamW8bit),
}

impl<B: Backend> Optimizer<B> {
    /// Applies one update.
    pub fn update<AB, M>(&mut self, module: M, grads: TensorMap<B>, lr: f64) -> Result<M>
    where
        AB: AutodiffBackend<InnerBackend = B>,
        M: AutodiffModule<AB>,
    {
        match self {
            Self::AdamW(o) => Ok(o.update::<AB, M>(module, grads, lr)),
            Self::AdamW8bit(o) => o.update::<AB, M>(module, grads, lr),
        }
    }

    /// The state as named tensors (what checkpoints store).
    pub fn state_tensors(&self) -> Result<Vec<NamedTensor>> {
        match self {
            Self::AdamW(o) => o.state_tensors(),
            Self::AdamW8bit(o) => Ok(o.state_tensors()),
        }
    }

    /// Restores a checkpoint's state.
    pub fn load_state(&mut self, tensors: Vec<NamedTensor>, device: &B::Device) -> Result<()> {
        match self {
            Self::AdamW(o) => {
                o.load_state(tensors, device);
                Ok(())
            }
            Self::AdamW8bit(o) => o.load_state(tensors),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_8bit_state_costs_about_two_bytes_per_parameter() {
        let mut o = AdamW8bit::new(0.9, 0.999, 1e-8, 0.0);
        o.step = 1;
        let n = 1 << 16;
        let mut p = vec![0.5f32; n];
        let g: Vec<f32> = (0..n).map(|i| ((i % 97) as f32 - 48.0) * 1e-3).collect();
        o.update_values("w", &mut p, &g, 1e-3);
        let per_param = o.state_bytes() as f64 / n as f64;
        assert!((2.0..=2.1).contains(&per_param), "{per_param}");
        // Small tensors and embeddings keep f32 moments.
        o.update_values("b", &mut [0.0; 10], &[0.1; 10], 1e-3);
        o.update_values(
            "model.text_model.embed_tokens.weight",
            &mut vec![0.0; n],
            &g,
            1e-3,
        );
        let state = o.state_tensors();
        assert!(state.iter().any(|t| t.name == "exp_avg.b"));
        assert!(state
            .iter()
            .any(|t| t.name == "exp_avg.model.text_model.embed_tokens.weight"));
        assert!(state.iter().any(|t| t.name == "state1.w"));
        let mut back = AdamW8bit::new(0.9, 0.999, 1e-8, 0.0);
        back.load_state(state).unwrap();
        assert_eq!(back.states, o.states);
        assert_eq!(back.step, o.step);
    }
}
