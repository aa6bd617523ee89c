//! Building modules from named weights: a [`TensorSource`] (a checkpoint, or seeded random
//! initialisation) and a [`Weights`] cursor that walks the module tree by key prefix, in the
//! spirit of candle's `VarBuilder`.

use burn::module::{Param, ParamId};
use burn::tensor::{backend::Backend, Tensor, TensorData};
use rand::{RngExt, SeedableRng};

use crate::config::{QuantConfig, StorageFormat};
use crate::error::{QuantError, Result};
use crate::store::SafetensorsFiles;

/// How a weight is initialised when no checkpoint provides it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// All zeros.
    Zeros,
    /// All ones.
    Ones,
    /// Normal with mean 0.
    Normal {
        /// Standard deviation.
        std: f64,
    },
    /// Uniform in `[-bound, bound]`.
    Uniform {
        /// Half-width.
        bound: f64,
    },
}

/// Where weights come from.
pub trait TensorSource {
    /// The values of `key` (row-major f32), checked to have `shape`. `init` is used by sources
    /// that make weights up (random initialisation) and ignored by checkpoints.
    fn load(&self, key: &str, shape: &[usize], init: Init) -> Result<Vec<f32>>;

    /// Whether the source can provide `key` (always true for random initialisation).
    fn contains(&self, key: &str) -> bool;
}

impl TensorSource for SafetensorsFiles {
    fn load(&self, key: &str, shape: &[usize], _init: Init) -> Result<Vec<f32>> {
        self.read_f32_checked(key, shape)
    }

    fn contains(&self, key: &str) -> bool {
        SafetensorsFiles::contains(self, key)
    }
}

/// Seeded random initialisation. Each key draws from its own stream (seed mixed with a stable
/// hash of the key), so a weight's values do not depend on the order of construction.
#[derive(Clone, Copy, Debug)]
pub struct RandomInit {
    /// The base seed.
    pub seed: u64,
}

impl RandomInit {
    /// A random source with this seed.
    pub fn new(seed: u64) -> Self {
        Self { seed }
    }
}

/// FNV-1a: a stable 64-bit hash (std's hasher may change between Rust releases).
pub fn stable_hash(text: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Draws `n` values from `init` with a seeded generator.
pub fn sample_init(init: Init, n: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    match init {
        Init::Zeros => vec![0.0; n],
        Init::Ones => vec![1.0; n],
        Init::Uniform { bound } => (0..n)
            .map(|_| ((rng.random::<f64>() * 2.0 - 1.0) * bound) as f32)
            .collect(),
        Init::Normal { std } => (0..n)
            .map(|_| {
                // Box-Muller; 1 - u keeps the logarithm finite.
                let u1: f64 = 1.0 - rng.random::<f64>();
                let u2: f64 = rng.random::<f64>();
                ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos() * std) as f32
            })
            .collect(),
    }
}

impl TensorSource for RandomInit {
    fn load(&self, key: &str, shape: &[usize], init: Init) -> Result<Vec<f32>> {
        let n = shape.iter().product();
        Ok(sample_init(init, n, self.seed ^ stable_hash(key)))
    }

    fn contains(&self, _key: &str) -> bool {
        true
    }
}

/// A cursor over a [`TensorSource`] at a key prefix, on a device.
///
/// `weights.pp("layers").pp(3).param("weight", ...)` reads `<prefix>.layers.3.weight`.
pub struct Weights<'a, B: Backend> {
    source: &'a dyn TensorSource,
    prefix: String,
    device: B::Device,
    quant: Option<&'a QuantConfig>,
}

impl<B: Backend> Clone for Weights<'_, B> {
    fn clone(&self) -> Self {
        Self {
            source: self.source,
            prefix: self.prefix.clone(),
            device: self.device.clone(),
            quant: self.quant,
        }
    }
}

impl<'a, B: Backend> Weights<'a, B> {
    /// A cursor at the root of `source`.
    pub fn new(source: &'a dyn TensorSource, device: &B::Device) -> Self {
        Self {
            source,
            prefix: String::new(),
            device: device.clone(),
            quant: None,
        }
    }

    /// The same cursor, with `config` deciding which Linear weights are stored quantised.
    pub fn with_quant(mut self, config: Option<&'a QuantConfig>) -> Self {
        self.quant = config;
        self
    }

    /// The storage format the quantisation config gives the Linear weight at this prefix
    /// (`None`: f32).
    pub fn quant_format(&self) -> Option<StorageFormat> {
        self.quant.and_then(|c| c.format_for(&self.prefix))
    }

    /// The cursor one level down, at `<prefix>.<name>`.
    pub fn pp(&self, name: impl std::fmt::Display) -> Self {
        Self {
            source: self.source,
            prefix: self.key(&name.to_string()),
            device: self.device.clone(),
            quant: self.quant,
        }
    }

    /// The full key of `name` under this prefix.
    pub fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// This cursor's prefix (the module path).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The device tensors are created on.
    pub fn device(&self) -> &B::Device {
        &self.device
    }

    /// Whether the source holds `name` under this prefix.
    pub fn contains(&self, name: &str) -> bool {
        self.source.contains(&self.key(name))
    }

    /// The raw values of `name`, checked to have `shape`.
    pub fn values(&self, name: &str, shape: &[usize], init: Init) -> Result<Vec<f32>> {
        self.source.load(&self.key(name), shape, init)
    }

    /// Reads `name` as a tensor of `shape`.
    pub fn tensor<const D: usize>(
        &self,
        name: &str,
        shape: [usize; D],
        init: Init,
    ) -> Result<Tensor<B, D>> {
        let values = self.values(name, &shape, init)?;
        Ok(Tensor::from_data(
            TensorData::new(values, shape),
            &self.device,
        ))
    }

    /// Reads `name` as a frozen parameter (`require_grad` off; a trainer turns it on).
    pub fn param<const D: usize>(
        &self,
        name: &str,
        shape: [usize; D],
        init: Init,
    ) -> Result<Param<Tensor<B, D>>> {
        let tensor = self.tensor(name, shape, init)?;
        Ok(Param::initialized(ParamId::new(), tensor).set_require_grad(false))
    }
}

/// Turns a source's unused keys into an error (for checkpoints that must be consumed whole).
pub fn ensure_all_used(files: &SafetensorsFiles) -> Result<()> {
    let unused = files.unused_keys();
    if unused.is_empty() {
        Ok(())
    } else {
        Err(QuantError::UnexpectedKeys { keys: unused })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_init_is_seeded_and_order_free() {
        let src = RandomInit::new(7);
        let a = src
            .load("a.weight", &[1000], Init::Normal { std: 0.5 })
            .unwrap();
        let b = src
            .load("b.weight", &[3], Init::Normal { std: 0.5 })
            .unwrap();
        let a2 = src
            .load("a.weight", &[1000], Init::Normal { std: 0.5 })
            .unwrap();
        assert_eq!(a, a2);
        assert_ne!(a[..3], b[..]);
        let mean = a.iter().map(|v| *v as f64).sum::<f64>() / 1000.0;
        let var = a.iter().map(|v| (*v as f64 - mean).powi(2)).sum::<f64>() / 1000.0;
        assert!(mean.abs() < 0.06, "{mean}");
        assert!((var.sqrt() - 0.5).abs() < 0.05, "{}", var.sqrt());
        let u = src
            .load("u", &[1000], Init::Uniform { bound: 0.1 })
            .unwrap();
        assert!(u.iter().all(|v| v.abs() <= 0.1));
    }
}
