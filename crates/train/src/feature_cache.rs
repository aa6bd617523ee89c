//! Reuse of image features across epochs when nothing before them trains: the vision
//! tower's output when only the vision tower is frozen, the connector's output when the
//! connector is frozen too.

use std::collections::HashMap;

use burn::tensor::{backend::Backend, Tensor};

/// How far the cached features go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheLevel {
    /// Nothing is cached (the vision tower trains).
    Off,
    /// Vision tower outputs `[tiles, P, Dv]` (the connector trains).
    Vision,
    /// Connector outputs `[tiles, S, Dt]`.
    Connector,
}

/// Per-example features on the device, within a memory budget.
pub struct FeatureCache<B: Backend> {
    /// What is cached.
    pub level: CacheLevel,
    budget_bytes: usize,
    used_bytes: usize,
    entries: HashMap<usize, Tensor<B, 3>>,
    /// Lookups served.
    pub hits: usize,
}

impl<B: Backend> FeatureCache<B> {
    /// A cache at `level` holding at most `budget_mb` MiB.
    pub fn new(level: CacheLevel, budget_mb: usize) -> Self {
        Self {
            level,
            budget_bytes: budget_mb << 20,
            used_bytes: 0,
            entries: HashMap::new(),
            hits: 0,
        }
    }

    /// The features of every listed example, concatenated, if all are cached.
    pub fn get_all(&mut self, indices: &[usize]) -> Option<Vec<Tensor<B, 3>>> {
        let found: Option<Vec<Tensor<B, 3>>> = indices
            .iter()
            .map(|i| self.entries.get(i).cloned())
            .collect();
        if found.is_some() {
            self.hits += 1;
        }
        found
    }

    /// Stores the features of example `index` if the budget allows.
    pub fn put(&mut self, index: usize, features: Tensor<B, 3>) {
        if self.level == CacheLevel::Off || self.entries.contains_key(&index) {
            return;
        }
        let bytes = features.shape().num_elements() * 4;
        if self.used_bytes + bytes <= self.budget_bytes {
            self.used_bytes += bytes;
            self.entries.insert(index, features);
        }
    }

    /// Cached examples.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
