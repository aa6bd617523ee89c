//! Norms and activations, one pass over the data each, forward and analytic backward, over
//! contiguous f32 slices split across threads by rows.

use rayon::prelude::*;

use super::exp::{lane_sum, sigmoid, with_simd};

/// Elements per parallel chunk of the element-wise kernels.
const CHUNK: usize = 1 << 14;

/// Rows per parallel chunk so that each holds about [`CHUNK`] elements.
fn rows_per_chunk(dim: usize) -> usize {
    (CHUNK / dim.max(1)).max(1)
}

with_simd! {
    fn sum_of_squares(x: &[f32]) -> f32 {
        let mut lanes = [0.0f32; 8];
        let chunks = x.chunks_exact(8);
        let rest = chunks.remainder();
        for c in chunks {
            for (l, v) in lanes.iter_mut().zip(c) {
                *l += v * v;
            }
        }
        lanes.iter().sum::<f32>() + rest.iter().map(|v| v * v).sum::<f32>()
    }
}

/// RMSNorm of `[rows, dim]`: `y = w · x / sqrt(mean(x²) + eps)`; also returns the per-row
/// reciprocal `r` for the backward.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32) -> (Vec<f32>, Vec<f32>) {
    let dim = weight.len();
    let rows = x.len() / dim;
    let mut y = vec![0.0f32; x.len()];
    let mut recip = vec![0.0f32; rows];
    let per = rows_per_chunk(dim);
    y.par_chunks_mut(per * dim)
        .zip(recip.par_chunks_mut(per))
        .zip(x.par_chunks(per * dim))
        .for_each(|((y, recip), x)| {
            for ((y, r), x) in y.chunks_mut(dim).zip(recip.iter_mut()).zip(x.chunks(dim)) {
                *r = 1.0 / (sum_of_squares(x) / dim as f32 + eps).sqrt();
                for ((y, x), w) in y.iter_mut().zip(x).zip(weight) {
                    *y = x * *r * w;
                }
            }
        });
    (y, recip)
}

/// Backward of [`rms_norm`]: `(dx, dw)`.
pub fn rms_norm_backward(
    x: &[f32],
    weight: &[f32],
    recip: &[f32],
    dy: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    let dim = weight.len();
    let per = rows_per_chunk(dim);
    let mut dx = vec![0.0f32; x.len()];
    let dw = dx
        .par_chunks_mut(per * dim)
        .zip(x.par_chunks(per * dim))
        .zip(dy.par_chunks(per * dim))
        .zip(recip.par_chunks(per))
        .map(|(((dx, x), dy), recip)| {
            let mut dw = vec![0.0f32; dim];
            let mut g = vec![0.0f32; dim];
            for (((dx, x), dy), r) in dx
                .chunks_mut(dim)
                .zip(x.chunks(dim))
                .zip(dy.chunks(dim))
                .zip(recip)
            {
                for (((g, dy), w), (dw, x)) in
                    g.iter_mut().zip(dy).zip(weight).zip(dw.iter_mut().zip(x))
                {
                    *g = dy * w;
                    *dw += dy * x * r;
                }
                let dot: f32 = g.iter().zip(x).map(|(g, x)| g * x).sum();
                let c = dot * r * r * r / dim as f32;
                for ((dx, g), x) in dx.iter_mut().zip(&g).zip(x) {
                    *dx = r * g - c * x;
                }
            }
            dw
        })
        .reduce(|| vec![0.0f32; dim], add_into);
    (dx, dw)
}

fn add_into(mut a: Vec<f32>, b: Vec<f32>) -> Vec<f32> {
    for (a, b) in a.iter_mut().zip(&b) {
        *a += b;
    }
    a
}

/// Per-row statistics of [`layer_norm`]: mean and `1/sqrt(var + eps)`.
#[derive(Clone, Debug)]
pub struct LayerNormStats {
    /// Row means.
    pub mean: Vec<f32>,
    /// Row reciprocal standard deviations.
    pub rstd: Vec<f32>,
}

/// LayerNorm of `[rows, dim]` with the biased variance: `y = (x - μ)·rstd·w + b`.
pub fn layer_norm(x: &[f32], weight: &[f32], bias: &[f32], eps: f32) -> (Vec<f32>, LayerNormStats) {
    let dim = weight.len();
    let rows = x.len() / dim;
    let mut y = vec![0.0f32; x.len()];
    let mut mean = vec![0.0f32; rows];
    let mut rstd = vec![0.0f32; rows];
    let per = rows_per_chunk(dim);
    y.par_chunks_mut(per * dim)
        .zip(mean.par_chunks_mut(per).zip(rstd.par_chunks_mut(per)))
        .zip(x.par_chunks(per * dim))
        .for_each(|((y, (mean, rstd)), x)| {
            for (((y, m), s), x) in y
                .chunks_mut(dim)
                .zip(mean.iter_mut())
                .zip(rstd.iter_mut())
                .zip(x.chunks(dim))
            {
                *m = lane_sum(x) / dim as f32;
                let var = x.iter().map(|v| (v - *m) * (v - *m)).sum::<f32>() / dim as f32;
                *s = 1.0 / (var + eps).sqrt();
                for (((y, x), w), b) in y.iter_mut().zip(x).zip(weight).zip(bias) {
                    *y = (x - *m) * *s * w + b;
                }
            }
        });
    (y, LayerNormStats { mean, rstd })
}

/// Backward of [`layer_norm`]: `(dx, dw, db)`.
pub fn layer_norm_backward(
    x: &[f32],
    weight: &[f32],
    stats: &LayerNormStats,
    dy: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let dim = weight.len();
    let per = rows_per_chunk(dim);
    let mut dx = vec![0.0f32; x.len()];
    let (dw, db) = dx
        .par_chunks_mut(per * dim)
        .zip(x.par_chunks(per * dim))
        .zip(dy.par_chunks(per * dim))
        .zip(stats.mean.par_chunks(per).zip(stats.rstd.par_chunks(per)))
        .map(|(((dx, x), dy), (mean, rstd))| {
            let mut dw = vec![0.0f32; dim];
            let mut db = vec![0.0f32; dim];
            let mut xhat = vec![0.0f32; dim];
            let mut g = vec![0.0f32; dim];
            for ((((dx, x), dy), m), s) in dx
                .chunks_mut(dim)
                .zip(x.chunks(dim))
                .zip(dy.chunks(dim))
                .zip(mean)
                .zip(rstd)
            {
                let (mut sum_g, mut sum_gx) = (0.0f32, 0.0f32);
                for c in 0..dim {
                    xhat[c] = (x[c] - m) * s;
                    g[c] = dy[c] * weight[c];
                    dw[c] += dy[c] * xhat[c];
                    db[c] += dy[c];
                    sum_g += g[c];
                    sum_gx += g[c] * xhat[c];
                }
                let (mean_g, mean_gx) = (sum_g / dim as f32, sum_gx / dim as f32);
                for c in 0..dim {
                    dx[c] = s * (g[c] - mean_g - xhat[c] * mean_gx);
                }
            }
            (dw, db)
        })
        .reduce(
            || (vec![0.0f32; dim], vec![0.0f32; dim]),
            |a, b| (add_into(a.0, b.0), add_into(a.1, b.1)),
        );
    (dx, dw, db)
}

/// `2·sqrt(2/π)`: `gelu_tanh(x) = x·sigmoid(C·x·(1 + 0.044715·x²))`.
const GELU_C: f32 = 2.0 * std::f32::consts::FRAC_2_SQRT_PI * std::f32::consts::FRAC_1_SQRT_2;
const GELU_K: f32 = 0.044_715;

with_simd! {
    fn gelu_tanh_chunk(x: &[f32], y: &mut [f32]) -> () {
        for (y, x) in y.iter_mut().zip(x) {
            let z = GELU_C * x * (1.0 + GELU_K * x * x);
            *y = x * sigmoid(z);
        }
    }
}

with_simd! {
    fn gelu_tanh_backward_chunk(x: &[f32], dy: &[f32], dx: &mut [f32]) -> () {
        for ((dx, x), dy) in dx.iter_mut().zip(x).zip(dy) {
            let z = GELU_C * x * (1.0 + GELU_K * x * x);
            let s = sigmoid(z);
            let dz = GELU_C * (1.0 + 3.0 * GELU_K * x * x);
            *dx = dy * (s + x * s * (1.0 - s) * dz);
        }
    }
}

with_simd! {
    fn silu_mul_chunk(gate: &[f32], up: &[f32], y: &mut [f32]) -> () {
        for ((y, g), u) in y.iter_mut().zip(gate).zip(up) {
            *y = g * sigmoid(*g) * u;
        }
    }
}

with_simd! {
    fn silu_mul_backward_chunk(gate: &[f32], up: &[f32], dy: &[f32], dgate: &mut [f32], dup: &mut [f32]) -> () {
        for ((((dg, du), g), u), dy) in dgate.iter_mut().zip(dup.iter_mut()).zip(gate).zip(up).zip(dy) {
            let s = sigmoid(*g);
            *du = dy * g * s;
            *dg = dy * u * s * (1.0 + g * (1.0 - s));
        }
    }
}

/// `gelu_pytorch_tanh(x)`.
pub fn gelu_tanh(x: &[f32]) -> Vec<f32> {
    let mut y = vec![0.0f32; x.len()];
    y.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(y, x)| gelu_tanh_chunk(x, y));
    y
}

/// Backward of [`gelu_tanh`].
pub fn gelu_tanh_backward(x: &[f32], dy: &[f32]) -> Vec<f32> {
    let mut dx = vec![0.0f32; x.len()];
    dx.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK).zip(dy.par_chunks(CHUNK)))
        .for_each(|(dx, (x, dy))| gelu_tanh_backward_chunk(x, dy, dx));
    dx
}

/// `silu(gate) · up`.
pub fn silu_mul(gate: &[f32], up: &[f32]) -> Vec<f32> {
    let mut y = vec![0.0f32; gate.len()];
    y.par_chunks_mut(CHUNK)
        .zip(gate.par_chunks(CHUNK).zip(up.par_chunks(CHUNK)))
        .for_each(|(y, (g, u))| silu_mul_chunk(g, u, y));
    y
}

/// Backward of [`silu_mul`]: `(dgate, dup)`.
pub fn silu_mul_backward(gate: &[f32], up: &[f32], dy: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let mut dgate = vec![0.0f32; gate.len()];
    let mut dup = vec![0.0f32; gate.len()];
    dgate
        .par_chunks_mut(CHUNK)
        .zip(dup.par_chunks_mut(CHUNK))
        .zip(gate.par_chunks(CHUNK).zip(up.par_chunks(CHUNK)))
        .zip(dy.par_chunks(CHUNK))
        .for_each(|(((dg, du), (g, u)), dy)| silu_mul_backward_chunk(g, u, dy, dg, du));
    (dgate, dup)
}
