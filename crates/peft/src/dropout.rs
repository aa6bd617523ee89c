//! Reproducible LoRA dropout masks.
//!
//! Gradient checkpointing runs each layer twice (once without a tape, once again in the
//! backward), and both runs must drop the same inputs, as must a run without checkpointing:
//! otherwise results would depend on the flag. So a mask is not drawn from the backend's
//! random stream, whose position depends on everything drawn before, but computed from a
//! seed that names where it is used:
//!
//! * the trainer starts every micro-batch with [`begin_step`] (its seed mixes the run's seed,
//!   the step and the micro-batch);
//! * each model forward takes a number from [`next_forward`], and each layer of it runs in a
//!   [`scope`] seeded by [`layer_seed`] (forward, stack, layer);
//! * within a scope, the k-th dropout draw uses the scope's seed and k.
//!
//! The mask itself is a counter-based hash of (seed, element), computed on the host, so it is
//! the same on every backend and thread. The state is per thread (a training step runs on
//! one thread; the kernels' worker threads never draw masks).

use std::cell::Cell;

use burn::tensor::{backend::Backend, Tensor, TensorData};

thread_local! {
    static STEP_SEED: Cell<u64> = const { Cell::new(0) };
    static FORWARDS: Cell<u64> = const { Cell::new(0) };
    static FREE_DRAWS: Cell<u64> = const { Cell::new(0) };
    static SCOPE: Cell<Option<(u64, u64)>> = const { Cell::new(None) };
    static FORCED: Cell<bool> = const { Cell::new(false) };
}

/// SplitMix64's finaliser: a well-mixed 64-bit hash of `x`.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Starts a micro-batch: masks from here on derive from `seed`.
pub fn begin_step(seed: u64) {
    STEP_SEED.with(|s| s.set(seed));
    FORWARDS.with(|f| f.set(0));
    FREE_DRAWS.with(|f| f.set(0));
}

/// A number for one model forward (the n-th since [`begin_step`]).
pub fn next_forward() -> u64 {
    let n = FORWARDS.with(|f| {
        let n = f.get();
        f.set(n + 1);
        n
    });
    mix(STEP_SEED.with(Cell::get) ^ mix(n))
}

/// Which layer stack a [`layer_seed`] is for.
#[derive(Clone, Copy, Debug)]
pub enum Stack {
    /// The vision encoder.
    Vision = 1,
    /// The text decoder.
    Text = 2,
}

/// The seed of layer `layer` of `stack` in forward `forward` (from [`next_forward`]).
pub fn layer_seed(forward: u64, stack: Stack, layer: usize) -> u64 {
    mix(forward ^ mix(((stack as u64) << 32) | layer as u64))
}

/// Restores the previous scope when dropped.
#[must_use = "the scope ends when this guard is dropped"]
pub struct ScopeGuard(Option<(u64, u64)>);

impl Drop for ScopeGuard {
    fn drop(&mut self) {
        SCOPE.with(|s| s.set(self.0));
    }
}

/// Runs the draws until the guard drops under `seed` (from [`layer_seed`]).
pub fn scope(seed: u64) -> ScopeGuard {
    ScopeGuard(SCOPE.with(|s| s.replace(Some((seed, 0)))))
}

/// Restores the previous setting when dropped.
#[must_use = "training mode ends when this guard is dropped"]
pub struct TrainingGuard(bool);

impl Drop for TrainingGuard {
    fn drop(&mut self) {
        FORCED.with(|f| f.set(self.0));
    }
}

/// Applies dropout on non-autodiff backends too until the guard drops: the forward of a
/// checkpointed layer runs without a tape but is a training forward.
pub fn force_training() -> TrainingGuard {
    TrainingGuard(FORCED.with(|f| f.replace(true)))
}

/// Whether dropout applies to tensors on `device` of backend `B`: autodiff backends, or
/// under [`force_training`].
pub fn active<B: Backend>(device: &B::Device) -> bool {
    B::ad_enabled(device) || FORCED.with(Cell::get)
}

fn next_mask_seed() -> u64 {
    match SCOPE.with(Cell::get) {
        Some((seed, k)) => {
            SCOPE.with(|s| s.set(Some((seed, k + 1))));
            mix(seed ^ mix(k))
        }
        None => {
            let k = FREE_DRAWS.with(|f| {
                let k = f.get();
                f.set(k + 1);
                k
            });
            mix(STEP_SEED.with(Cell::get) ^ 0xD409_u64.wrapping_mul(mix(k)))
        }
    }
}

/// The next mask for a tensor of `shape`: each element 1/keep with probability `keep`, else
/// 0 (so `x * mask` is inverted dropout).
pub fn mask<B: Backend, const D: usize>(
    shape: [usize; D],
    keep: f64,
    device: &B::Device,
) -> Tensor<B, D> {
    let seed = next_mask_seed();
    let n: usize = shape.iter().product();
    // Compare the top 24 bits of the hash with keep·2^24: uniform to 2^-24.
    let threshold = (keep * (1u64 << 24) as f64) as u64;
    let scale = (1.0 / keep) as f32;
    let values: Vec<f32> = (0..n as u64)
        .map(|i| {
            if mix(seed ^ i.wrapping_mul(0xA24B_AED4_963E_E407)) >> 40 < threshold {
                scale
            } else {
                0.0
            }
        })
        .collect();
    Tensor::from_data(TensorData::new(values, shape), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    type B = burn::backend::Flex;

    fn draw() -> Vec<f32> {
        mask::<B, 2>([16, 64], 0.75, &Default::default())
            .into_data()
            .to_vec()
            .unwrap()
    }

    #[test]
    fn a_scope_replays_its_masks_and_scopes_differ() {
        begin_step(7);
        let f = next_forward();
        let (a1, a2) = {
            let _s = scope(layer_seed(f, Stack::Text, 3));
            (draw(), draw())
        };
        let replay = {
            let _s = scope(layer_seed(f, Stack::Text, 3));
            (draw(), draw())
        };
        assert_eq!((a1.clone(), a2.clone()), replay);
        assert_ne!(a1, a2);
        let other = {
            let _s = scope(layer_seed(f, Stack::Text, 4));
            draw()
        };
        assert_ne!(a1, other);
        let kept = a1.iter().filter(|v| **v > 0.0).count() as f64 / a1.len() as f64;
        assert!((kept - 0.75).abs() < 0.05, "kept {kept}");
        assert!(a1
            .iter()
            .all(|v| *v == 0.0 || (*v - 1.0 / 0.75).abs() < 1e-6));
    }

    #[test]
    fn forwards_are_numbered_from_each_step() {
        begin_step(1);
        let (a, b) = (next_forward(), next_forward());
        begin_step(1);
        assert_eq!((a, b), (next_forward(), next_forward()));
        assert_ne!(a, b);
        begin_step(2);
        assert_ne!(a, next_forward());
    }
}
