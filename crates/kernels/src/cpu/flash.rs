//! Flash attention on the CPU (forward and backward), over f32 slices with strides.
//!
//! Queries are taken in blocks of [`BLOCK_Q`] rows and keys in blocks of [`BLOCK_K`]; the
//! forward keeps a running maximum and sum per row (online softmax) and stores only the
//! log-sum-exp per row for the backward, which recomputes each block's probabilities from it
//! (FlashAttention-2's algorithm). No `[q_len, kv_len]` score tensor is ever kept. The block
//! products run on the `gemm` crate, one thread each; in the forward the query block, the
//! scores and the accumulator are column-major, the layout gemm reads and writes without
//! copying element by element, and the online softmax runs across query rows in SIMD lanes
//! (2-core Xeon: forward of one tile 1.17-1.20 -> 1.05-1.10 s). The work is spread over
//! `batch x heads x query blocks` (forward) and `batch x heads` (backward) with rayon.
//!
//! Masked scores get the value `f32::MIN`, exactly as the additive mask of the plain path
//! makes them, so a row whose keys are all masked (a left-padded query) averages all values
//! uniformly there and here.

use gemm::{gemm, Parallelism};
use rayon::prelude::*;

use super::exp::{exp, exp_shifted_sum, with_simd};
use super::transpose::transpose;

/// Query rows per block.
pub const BLOCK_Q: usize = 64;
/// Key rows per block.
pub const BLOCK_K: usize = 128;

/// Sizes of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct Geometry {
    /// Batch size.
    pub batch: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (`heads` is a multiple).
    pub kv_heads: usize,
    /// Query rows.
    pub q_len: usize,
    /// Key rows.
    pub kv_len: usize,
    /// Width of one head.
    pub head_dim: usize,
}

impl Geometry {
    fn groups(&self) -> usize {
        self.heads / self.kv_heads
    }
    /// Position of query 0 in the key sequence (the cached prefix length).
    fn past(&self) -> usize {
        self.kv_len - self.q_len
    }
}

/// `[batch, heads, rows, head_dim]` values laid out with any strides, the last one 1.
#[derive(Clone, Copy, Debug)]
pub struct HeadsView<'a> {
    /// The storage.
    pub data: &'a [f32],
    /// Element offset of `[0, 0, 0, 0]`.
    pub offset: usize,
    /// Strides of batch, head and row.
    pub strides: [usize; 3],
}

impl HeadsView<'_> {
    fn row(&self, b: usize, h: usize, i: usize) -> *const f32 {
        self.rows_from(b, h, i).as_ptr()
    }
    pub(crate) fn row_slice(&self, b: usize, h: usize, i: usize, d: usize) -> &[f32] {
        &self.rows_from(b, h, i)[..d]
    }
    /// The storage from row `i` of head `(b, h)` on.
    fn rows_from(&self, b: usize, h: usize, i: usize) -> &[f32] {
        let [sb, sh, sl] = self.strides;
        &self.data[self.offset + b * sb + h * sh + i * sl..]
    }
    fn row_stride(&self) -> isize {
        self.strides[2] as isize
    }
}

/// Which keys each query sees.
#[derive(Clone, Copy, Debug, Default)]
pub struct Mask<'a> {
    /// Query `i` sees keys `j <= past + i` only.
    pub causal: bool,
    /// `[batch, kv_len]`: false hides that key from every query.
    pub key_keep: Option<&'a [bool]>,
}

impl Mask<'_> {
    /// The first visible key of batch row `b` (kv_len when none is).
    fn first_kept(&self, b: usize, kv_len: usize) -> usize {
        match self.key_keep {
            Some(keep) => keep[b * kv_len..(b + 1) * kv_len]
                .iter()
                .position(|k| *k)
                .unwrap_or(kv_len),
            None => 0,
        }
    }

    /// Whether query `i` of batch row `b` sees no key at all.
    fn fully_masked(&self, g: &Geometry, b: usize, i: usize) -> bool {
        let first = self.first_kept(b, g.kv_len);
        first == g.kv_len || (self.causal && first > g.past() + i)
    }

    /// Sets the masked scores of one row (`scores[c]` is key `j0 + c`) to `f32::MIN`.
    fn apply(&self, g: &Geometry, b: usize, i: usize, j0: usize, scores: &mut [f32]) {
        if self.causal {
            let visible_end = (g.past() + i + 1).saturating_sub(j0).min(scores.len());
            scores[visible_end..].fill(f32::MIN);
        }
        if let Some(keep) = self.key_keep {
            let keep = &keep[b * g.kv_len + j0..b * g.kv_len + j0 + scores.len()];
            for (s, k) in scores.iter_mut().zip(keep) {
                if !k {
                    *s = f32::MIN;
                }
            }
        }
    }

    /// Sets the masked scores of a column-major block (`block[c * rows + r]` is query
    /// `i0 + r` against key `j0 + c`) to `f32::MIN`.
    fn apply_to_columns(
        &self,
        g: &Geometry,
        b: usize,
        i0: usize,
        j0: usize,
        block: &mut [f32],
        rows: usize,
    ) {
        for (c, column) in block.chunks_exact_mut(rows).enumerate() {
            let j = j0 + c;
            if self.key_keep.is_some_and(|keep| !keep[b * g.kv_len + j]) {
                column.fill(f32::MIN);
            } else if self.causal {
                // Query i sees key j when j <= past + i.
                let hidden = (j + 1).saturating_sub(g.past() + i0 + 1).min(rows);
                column[..hidden].fill(f32::MIN);
            }
        }
    }

    /// The end of the keys any query of `i0..i1` may see, unless a row sees none (then all
    /// keys take part, uniformly).
    fn key_end(&self, g: &Geometry, b: usize, i0: usize, i1: usize) -> usize {
        if !self.causal || (i0..i1).any(|i| self.fully_masked(g, b, i)) {
            g.kv_len
        } else {
            (g.past() + i1).min(g.kv_len)
        }
    }
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: every task writes a disjoint set of elements through it.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The element `offset` past the start (a method, so closures capture the whole wrapper).
    fn at(self, offset: usize) -> *mut f32 {
        // SAFETY: callers stay inside the allocation the pointer came from.
        unsafe { self.0.add(offset) }
    }
}

/// `dst[m×n] (+)= beta · lhs[m×k] · rhs[k×n]`, strides in elements (row stride, column stride).
#[allow(clippy::too_many_arguments)]
unsafe fn matmul(
    [m, n, k]: [usize; 3],
    dst: (*mut f32, isize, isize),
    accumulate: bool,
    lhs: (*const f32, isize, isize),
    rhs: (*const f32, isize, isize),
    beta: f32,
) {
    gemm(
        m,
        n,
        k,
        dst.0,
        dst.2,
        dst.1,
        accumulate,
        lhs.0,
        lhs.2,
        lhs.1,
        rhs.0,
        rhs.2,
        rhs.1,
        1.0,
        beta,
        false,
        false,
        false,
        Parallelism::None,
    );
}

/// Attention output and per-row log-sum-exp.
pub struct Forward {
    /// `[batch, q_len, heads, head_dim]` (so that merging the heads afterwards is free).
    pub out: Vec<f32>,
    /// `[batch, heads, q_len]`; NaN marks a row that saw no key.
    pub lse: Vec<f32>,
}

/// Strides of the `[batch, rows, heads, head_dim]` layout, seen as `[batch, heads, rows, d]`.
pub fn merged_heads_strides(heads: usize, rows: usize, head_dim: usize) -> [usize; 3] {
    [rows * heads * head_dim, head_dim, heads * head_dim]
}

/// `softmax(scale · q·kᵀ + mask) · v`.
pub fn forward(
    q: HeadsView,
    k: HeadsView,
    v: HeadsView,
    g: Geometry,
    mask: Mask,
    scale: f32,
) -> Forward {
    let d = g.head_dim;
    let mut out = vec![0.0f32; g.batch * g.q_len * g.heads * d];
    let mut lse = vec![0.0f32; g.batch * g.heads * g.q_len];
    let out_ptr = SendPtr(out.as_mut_ptr());
    let lse_ptr = SendPtr(lse.as_mut_ptr());
    let q_blocks = g.q_len.div_ceil(BLOCK_Q);
    let [osb, osh, osl] = merged_heads_strides(g.heads, g.q_len, d);
    (0..g.batch * g.heads * q_blocks)
        .into_par_iter()
        .for_each(|task| {
            let (bh, qb) = (task / q_blocks, task % q_blocks);
            let (b, h) = (bh / g.heads, bh % g.heads);
            let kvh = h / g.groups();
            let i0 = qb * BLOCK_Q;
            let i1 = (i0 + BLOCK_Q).min(g.q_len);
            let rows = i1 - i0;
            // Every block is kept column-major (a column per key, or per head feature): gemm's
            // microkernel reads its left operand and writes its output down columns, and the
            // online softmax then runs across the query rows, in SIMD lanes.
            let mut q_columns = vec![0.0f32; d * rows];
            transpose(q.rows_from(b, h, i0), rows, d, q.strides[2], &mut q_columns);
            let mut scores = vec![0.0f32; rows * BLOCK_K];
            let mut acc = vec![0.0f32; rows * d];
            let mut running = Running::new(rows);
            let key_end = mask.key_end(&g, b, i0, i1);
            for j0 in (0..key_end).step_by(BLOCK_K) {
                let cols = (j0 + BLOCK_K).min(g.kv_len) - j0;
                let block = &mut scores[..rows * cols];
                // SAFETY: the views cover these rows; `block` holds rows×cols, `q_columns`
                // d×rows.
                unsafe {
                    matmul(
                        [rows, cols, d],
                        (block.as_mut_ptr(), 1, rows as isize),
                        false,
                        (q_columns.as_ptr(), 1, rows as isize),
                        (k.row(b, kvh, j0), 1, k.row_stride()),
                        scale,
                    );
                }
                mask.apply_to_columns(&g, b, i0, j0, block, rows);
                if running.absorb(block) {
                    scale_columns(&mut acc, &running.correction);
                }
                // SAFETY: as above; `acc` holds d×rows.
                unsafe {
                    matmul(
                        [rows, d, cols],
                        (acc.as_mut_ptr(), 1, rows as isize),
                        true,
                        (block.as_ptr(), 1, rows as isize),
                        (v.row(b, kvh, j0), v.row_stride(), 1),
                        1.0,
                    );
                }
            }
            for r in 0..rows {
                let i = i0 + r;
                // SAFETY: row (b, i, h) of `out` and entry (b, h, i) of `lse` belong to this task.
                let dst = unsafe {
                    std::slice::from_raw_parts_mut(out_ptr.at(b * osb + h * osh + i * osl), d)
                };
                let lse_at = unsafe { &mut *lse_ptr.at((b * g.heads + h) * g.q_len + i) };
                if mask.fully_masked(&g, b, i) {
                    dst.fill(0.0);
                    for j in 0..g.kv_len {
                        for (o, x) in dst.iter_mut().zip(v.row_slice(b, kvh, j, d)) {
                            *o += x;
                        }
                    }
                    dst.iter_mut().for_each(|o| *o /= g.kv_len as f32);
                    *lse_at = f32::NAN;
                } else {
                    let inv = 1.0 / running.sum[r];
                    for (o, column) in dst.iter_mut().zip(acc.chunks_exact(rows)) {
                        *o = column[r] * inv;
                    }
                    *lse_at = running.max[r] + running.sum[r].ln();
                }
            }
        });
    Forward { out, lse }
}

/// The online softmax's per-row state over the key blocks seen so far.
struct Running {
    /// The largest score of each row.
    max: Vec<f32>,
    /// `Σ exp(score - max)` of each row.
    sum: Vec<f32>,
    /// The last block's rescaling of the earlier blocks' terms, `exp(old max - new max)`.
    correction: Vec<f32>,
    /// Scratch: the last block's own maxima, then its sums.
    block: Vec<f32>,
    /// Scratch: eight partial sums per row.
    lanes: Vec<f32>,
}

impl Running {
    fn new(rows: usize) -> Self {
        Self {
            max: vec![f32::NEG_INFINITY; rows],
            sum: vec![0.0; rows],
            correction: vec![1.0; rows],
            block: vec![0.0; rows],
            lanes: vec![0.0; 8 * rows],
        }
    }

    /// Takes in one column-major block of scores (replaced by `exp(score - new max)`);
    /// returns whether the earlier blocks' terms need rescaling.
    fn absorb(&mut self, scores: &mut [f32]) -> bool {
        columns_max(scores, &mut self.block);
        let mut rescale = false;
        for ((max, block_max), correction) in self
            .max
            .iter_mut()
            .zip(&self.block)
            .zip(&mut self.correction)
        {
            let new_max = max.max(*block_max);
            *correction = exp(*max - new_max);
            rescale |= *correction != 1.0;
            *max = new_max;
        }
        exp_columns(scores, &self.max, &mut self.lanes, &mut self.block);
        for ((sum, correction), block_sum) in
            self.sum.iter_mut().zip(&self.correction).zip(&self.block)
        {
            *sum = *sum * correction + block_sum;
        }
        rescale
    }
}

with_simd! {
    fn columns_max(block: &[f32], max: &mut [f32]) -> () {
        max.fill(f32::NEG_INFINITY);
        for column in block.chunks_exact(max.len()) {
            for (m, v) in max.iter_mut().zip(column) {
                *m = m.max(*v);
            }
        }
    }
}

// `exp(score - shift)` in place, and each row's sum of them in `sums`, added in the order
// `lane_sum` adds a row (eight lanes by column index, then the columns past the last eight): the
// forward is the row-major kernel's bit for bit (a tiny model's training run follows rounding).
with_simd! {
    fn exp_columns(block: &mut [f32], shift: &[f32], lanes: &mut [f32], sums: &mut [f32]) -> () {
        let rows = shift.len();
        let in_lanes = block.len() / rows / 8 * 8;
        lanes.fill(0.0);
        sums.fill(0.0);
        for (c, column) in block.chunks_exact_mut(rows).enumerate() {
            let into = if c < in_lanes {
                &mut lanes[(c % 8) * rows..(c % 8 + 1) * rows]
            } else {
                &mut *sums
            };
            for ((v, s), sum) in column.iter_mut().zip(shift).zip(into.iter_mut()) {
                *v = exp(*v - s);
                *sum += *v;
            }
        }
        for (r, rest) in sums.iter_mut().enumerate() {
            let mut total = 0.0f32;
            for lane in lanes.chunks_exact(rows) {
                total += lane[r];
            }
            *rest += total;
        }
    }
}

with_simd! {
    fn scale_columns(block: &mut [f32], factor: &[f32]) -> () {
        for column in block.chunks_exact_mut(factor.len()) {
            for (v, f) in column.iter_mut().zip(factor) {
                *v *= f;
            }
        }
    }
}

/// Gradients of q, k and v.
pub struct Backward {
    /// `[batch, q_len, heads, head_dim]`.
    pub dq: Vec<f32>,
    /// `[batch, kv_len, kv_heads, head_dim]`.
    pub dk: Vec<f32>,
    /// `[batch, kv_len, kv_heads, head_dim]`.
    pub dv: Vec<f32>,
}

/// The inputs of the backward besides q, k and v.
#[derive(Clone, Copy)]
pub struct Saved<'a> {
    /// The forward output.
    pub out: HeadsView<'a>,
    /// The forward's log-sum-exp, `[batch, heads, q_len]`.
    pub lse: &'a [f32],
    /// The gradient of the output.
    pub grad: HeadsView<'a>,
}

/// The backward of [`forward`].
#[allow(clippy::too_many_arguments)]
pub fn backward(
    q: HeadsView,
    k: HeadsView,
    v: HeadsView,
    saved: Saved,
    g: Geometry,
    mask: Mask,
    scale: f32,
) -> Backward {
    let d = g.head_dim;
    let groups = g.groups();
    let mut dq = vec![0.0f32; g.batch * g.q_len * g.heads * d];
    // With grouped heads, each query head first sums into its own buffer, reduced after.
    let mut dk_heads = vec![0.0f32; g.batch * g.kv_len * g.heads * d];
    let mut dv_heads = vec![0.0f32; g.batch * g.kv_len * g.heads * d];
    let ptrs = (
        SendPtr(dq.as_mut_ptr()),
        SendPtr(dk_heads.as_mut_ptr()),
        SendPtr(dv_heads.as_mut_ptr()),
    );
    let [qsb, qsh, qsl] = merged_heads_strides(g.heads, g.q_len, d);
    let [ksb, ksh, ksl] = merged_heads_strides(g.heads, g.kv_len, d);
    (0..g.batch * g.heads).into_par_iter().for_each(|bh| {
        let (b, h) = (bh / g.heads, bh % g.heads);
        let kvh = h / groups;
        // This task owns head (b, h) of dq and of the per-head dk/dv buffers.
        let dq_head = ptrs.0.at(b * qsb + h * qsh);
        let dk_head = ptrs.1.at(b * ksb + h * ksh);
        let dv_head = ptrs.2.at(b * ksb + h * ksh);
        let lse = &saved.lse[bh * g.q_len..(bh + 1) * g.q_len];
        let delta: Vec<f32> = (0..g.q_len)
            .map(|i| {
                let o = saved.out.row_slice(b, h, i, d);
                let dout = saved.grad.row_slice(b, h, i, d);
                o.iter().zip(dout).map(|(a, b)| a * b).sum()
            })
            .collect();
        let mut probs = vec![0.0f32; BLOCK_Q * BLOCK_K];
        let mut dprobs = vec![0.0f32; BLOCK_Q * BLOCK_K];
        for i0 in (0..g.q_len).step_by(BLOCK_Q) {
            let i1 = (i0 + BLOCK_Q).min(g.q_len);
            let rows = i1 - i0;
            let key_end = mask.key_end(&g, b, i0, i1);
            for j0 in (0..key_end).step_by(BLOCK_K) {
                let cols = (j0 + BLOCK_K).min(g.kv_len) - j0;
                let (p, dp) = (&mut probs[..rows * cols], &mut dprobs[..rows * cols]);
                // SAFETY (all products below): the views and this head's gradient rows cover
                // the blocks; p and dp hold rows×cols.
                unsafe {
                    matmul(
                        [rows, cols, d],
                        (p.as_mut_ptr(), cols as isize, 1),
                        false,
                        (q.row(b, h, i0), q.row_stride(), 1),
                        (k.row(b, kvh, j0), 1, k.row_stride()),
                        scale,
                    );
                }
                for r in 0..rows {
                    let i = i0 + r;
                    let row = &mut p[r * cols..(r + 1) * cols];
                    if lse[i].is_nan() {
                        row.fill(1.0 / g.kv_len as f32);
                    } else {
                        mask.apply(&g, b, i, j0, row);
                        exp_shifted_sum(row, lse[i]);
                    }
                }
                unsafe {
                    // dV += Pᵀ · dO
                    matmul(
                        [cols, d, rows],
                        (dv_head.add(j0 * ksl), ksl as isize, 1),
                        true,
                        (p.as_ptr(), 1, cols as isize),
                        (saved.grad.row(b, h, i0), saved.grad.row_stride(), 1),
                        1.0,
                    );
                    // dP = dO · Vᵀ
                    matmul(
                        [rows, cols, d],
                        (dp.as_mut_ptr(), cols as isize, 1),
                        false,
                        (saved.grad.row(b, h, i0), saved.grad.row_stride(), 1),
                        (v.row(b, kvh, j0), 1, v.row_stride()),
                        1.0,
                    );
                }
                for r in 0..rows {
                    let di = delta[i0 + r];
                    let (pr, dpr) = (
                        &p[r * cols..(r + 1) * cols],
                        &mut dp[r * cols..(r + 1) * cols],
                    );
                    for (ds, pv) in dpr.iter_mut().zip(pr) {
                        *ds = pv * (*ds - di);
                    }
                }
                unsafe {
                    // dQ += scale · dS · K
                    matmul(
                        [rows, d, cols],
                        (dq_head.add(i0 * qsl), qsl as isize, 1),
                        true,
                        (dp.as_ptr(), cols as isize, 1),
                        (k.row(b, kvh, j0), k.row_stride(), 1),
                        scale,
                    );
                    // dK += scale · dSᵀ · Q
                    matmul(
                        [cols, d, rows],
                        (dk_head.add(j0 * ksl), ksl as isize, 1),
                        true,
                        (dp.as_ptr(), 1, cols as isize),
                        (q.row(b, h, i0), q.row_stride(), 1),
                        scale,
                    );
                }
            }
        }
    });
    let (dk, dv) = if groups == 1 {
        (dk_heads, dv_heads)
    } else {
        (
            sum_groups(&dk_heads, g, groups),
            sum_groups(&dv_heads, g, groups),
        )
    };
    Backward { dq, dk, dv }
}

/// `[batch, kv_len, heads, d]` per query head to `[batch, kv_len, kv_heads, d]`.
fn sum_groups(per_head: &[f32], g: Geometry, groups: usize) -> Vec<f32> {
    let d = g.head_dim;
    let mut out = vec![0.0f32; g.batch * g.kv_len * g.kv_heads * d];
    out.par_chunks_mut(g.kv_heads * d)
        .zip(per_head.par_chunks(g.heads * d))
        .for_each(|(dst, src)| {
            for (kvh, dst) in dst.chunks_mut(d).enumerate() {
                for gi in 0..groups {
                    let h = kvh * groups + gi;
                    for (o, x) in dst.iter_mut().zip(&src[h * d..(h + 1) * d]) {
                        *o += x;
                    }
                }
            }
        });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The column-major softmax terms and sums are, bit for bit, what the row-major
    /// `exp_shifted_sum` gives each row (full blocks and a ragged last one).
    #[test]
    fn column_sums_equal_the_row_sums_bit_for_bit() {
        for (rows, cols) in [(64, 128), (26, 37), (1, 5), (3, 8)] {
            let values: Vec<f32> = (0..rows * cols)
                .map(|i| ((i * 7919 % 1009) as f32 - 504.0) / 97.0)
                .collect(); // column-major: values[c * rows + r]
            let shift: Vec<f32> = (0..rows).map(|r| r as f32 * 0.25 - 3.0).collect();
            let mut columns = values.clone();
            let (mut lanes, mut sums) = (vec![0.0; 8 * rows], vec![0.0; rows]);
            exp_columns(&mut columns, &shift, &mut lanes, &mut sums);
            for r in 0..rows {
                let mut row: Vec<f32> = (0..cols).map(|c| values[c * rows + r]).collect();
                let sum = exp_shifted_sum(&mut row, shift[r]);
                assert_eq!(sums[r].to_bits(), sum.to_bits(), "row {r} of {rows}x{cols}");
                for (c, v) in row.iter().enumerate() {
                    assert_eq!(columns[c * rows + r].to_bits(), v.to_bits());
                }
            }
        }
    }
}
