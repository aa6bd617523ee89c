//! Rotary position embedding (Llama's half-split form), forward and backward in one pass.

use rayon::prelude::*;

use super::flash::HeadsView;

/// `x·cos + rotate_half(x)·sin` of `x` `[batch, heads, len, d]` (any strides, the last 1), with
/// `cos`, `sin` `[batch, len, d]` (or `[1, len, d]`) shared by the heads; the result is stored
/// `[batch, len, heads, d]`. With `inverse`, the transposed rotation (the backward:
/// `dx = dy·cos + rotate_halfᵀ(dy·sin)`).
pub fn rope(
    x: HeadsView,
    [batch, heads, len, d]: [usize; 4],
    cos: &[f32],
    sin: &[f32],
    inverse: bool,
) -> Vec<f32> {
    let half = d / 2;
    let mut out = vec![0.0f32; batch * len * heads * d];
    out.par_chunks_mut(heads * d)
        .enumerate()
        .for_each(|(row, dst)| {
            let (b, i) = (row / len, row % len);
            // Tables of batch 1 serve every batch row.
            let t = if cos.len() == batch * len * d { row } else { i };
            let c = &cos[t * d..(t + 1) * d];
            let s = &sin[t * d..(t + 1) * d];
            for (h, o) in dst.chunks_mut(d).enumerate() {
                let v = x.row_slice(b, h, i, d);
                for j in 0..half {
                    let (x1, x2) = (v[j], v[j + half]);
                    if inverse {
                        o[j] = x1 * c[j] + x2 * s[j + half];
                        o[j + half] = x2 * c[j + half] - x1 * s[j];
                    } else {
                        o[j] = x1 * c[j] - x2 * s[j];
                        o[j + half] = x2 * c[j + half] + x1 * s[j + half];
                    }
                }
            }
        });
    out
}
