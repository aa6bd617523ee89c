//! `x·wᵀ` and its two backward products straight on the `gemm` crate, writing into an
//! uninitialised output: burn-flex's matmul zero-fills a fresh buffer for every product first,
//! which measured 139 against 178-262 GFLOP/s for the same gemm call on the vision MLP's shape.

use gemm::{gemm, Parallelism};
use rayon::prelude::*;

/// A row-major-or-strided `[rows, cols]` operand: storage, offset, (row stride, column stride).
#[derive(Clone, Copy, Debug)]
pub struct Matrix<'a> {
    /// The storage.
    pub data: &'a [f32],
    /// Element offset of `[0, 0]`.
    pub offset: usize,
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// Row stride.
    pub rs: isize,
    /// Column stride.
    pub cs: isize,
}

impl Matrix<'_> {
    /// The transposed view (no copy).
    pub fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    /// Columns `c0..c1` (no copy).
    fn column_block(self, c0: usize, c1: usize) -> Self {
        Self {
            offset: self.shifted(c0, self.cs),
            cols: c1 - c0,
            ..self
        }
    }

    /// Rows `r0..r1` (no copy).
    fn row_block(self, r0: usize, r1: usize) -> Self {
        Self {
            offset: self.shifted(r0, self.rs),
            rows: r1 - r0,
            ..self
        }
    }

    /// The offset `steps` strides of `stride` further on (strides are non-negative here).
    fn shifted(&self, steps: usize, stride: isize) -> usize {
        self.offset + steps * usize::try_from(stride).expect("non-negative stride")
    }

    fn ptr(&self) -> *const f32 {
        self.data[self.offset..].as_ptr()
    }
}

/// Products below this many multiply-adds run on one thread (burn-flex's threshold).
const PARALLEL_THRESHOLD: usize = 192 * 192 * 192;

/// A thread's share of the output columns is a multiple of this (whole 16-float panels).
const PANEL: usize = 16;

/// `a · b`, `[a.rows, b.cols]` row-major.
///
/// Above [`PARALLEL_THRESHOLD`] the output is cut into one block of columns per rayon thread
/// (of rows when it is too narrow), each computed by a one-thread gemm call: on the model's
/// shapes (2-core AMD EPYC, AVX-512) that ran at 1.0-1.8x the GFLOP/s of gemm's own rayon
/// split, the most on the text model's short products (100 rows: 50 -> 90 GFLOP/s for the
/// MLP's down projection). Each output element is still one gemm sum over `k` in blocks of the
/// same size (the unit test measured the split bit-identical to one call).
pub fn matmul(a: Matrix, b: Matrix) -> Vec<f32> {
    assert_eq!(a.cols, b.rows, "inner dimensions");
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if k == 0 || m == 0 || n == 0 {
        return vec![0.0; m * n];
    }
    let parts = if m * n * k >= PARALLEL_THRESHOLD {
        rayon::current_num_threads()
    } else {
        1
    };
    let mut out: Vec<f32> = Vec::with_capacity(m * n);
    let dst = OutPtr(out.as_mut_ptr());
    // SAFETY (all three calls): the operands cover their strided extents (checked by the
    // callers' layouts); the blocks are disjoint and together cover the m×n output, and gemm
    // writes every element of its block (`read_dst = false`), so all m·n are set before
    // `set_len`.
    if parts <= 1 {
        unsafe { block_product(a, b, dst, n) };
    } else if n >= 2 * parts * PANEL {
        let width = n.div_ceil(parts).div_ceil(PANEL) * PANEL;
        for_each_block(n, width, |c0, c1| unsafe {
            block_product(a, b.column_block(c0, c1), dst.add(c0), n)
        });
    } else {
        for_each_block(m, m.div_ceil(parts), |r0, r1| unsafe {
            block_product(a.row_block(r0, r1), b, dst.add(r0 * n), n)
        });
    }
    unsafe { out.set_len(m * n) };
    out
}

/// Runs `f(start, end)` for the blocks of `block` (the last one shorter) of `0..len`, in
/// parallel.
fn for_each_block(len: usize, block: usize, f: impl Fn(usize, usize) + Sync) {
    (0..len.div_ceil(block))
        .into_par_iter()
        .for_each(|i| f(i * block, ((i + 1) * block).min(len)));
}

/// The output pointer, shared by the threads that write its disjoint blocks.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);

// SAFETY: every thread writes its own block of the output only.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// `count` elements further on.
    ///
    /// # Safety
    /// The result must stay inside the output allocation.
    unsafe fn add(self, count: usize) -> Self {
        Self(unsafe { self.0.add(count) })
    }
}

/// `a · b` written into `dst` (row stride `dst_rs`), on this thread.
///
/// # Safety
/// `a` and `b` must cover their strided extents; `dst` must be valid for writes of an
/// `a.rows × b.cols` block with row stride `dst_rs`.
unsafe fn block_product(a: Matrix, b: Matrix, dst: OutPtr, dst_rs: usize) {
    unsafe {
        gemm(
            a.rows,
            b.cols,
            a.cols,
            dst.0,
            1,
            dst_rs as isize,
            false,
            a.ptr(),
            a.cs,
            a.rs,
            b.ptr(),
            b.cs,
            b.rs,
            0.0,
            1.0,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(len: usize, seed: u32) -> Vec<f32> {
        let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..len)
            .map(|_| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (state >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            })
            .collect()
    }

    fn row_major(data: &[f32], rows: usize, cols: usize) -> Matrix<'_> {
        Matrix {
            data,
            offset: 0,
            rows,
            cols,
            rs: cols as isize,
            cs: 1,
        }
    }

    fn in_pool(threads: usize, f: impl FnOnce() -> Vec<f32> + Send) -> Vec<f32> {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(f)
    }

    /// The threaded blocks against one gemm call on one thread and a plain f64 sum: column
    /// blocks (with a ragged last one), row blocks (a narrow output), a transposed operand.
    #[test]
    fn blocks_over_threads_match_one_call_and_the_plain_sum() {
        for (m, k, n, threads) in [(300, 200, 250, 2), (3000, 200, 24, 2), (211, 190, 999, 3)] {
            let a = values(m * k, 1);
            let w = values(n * k, 2); // [n, k]: b = wᵀ, a strided view
            let product = || matmul(row_major(&a, m, k), row_major(&w, n, k).t());
            let split = in_pool(threads, product);
            let single = in_pool(1, product);
            let mut worst = 0f64;
            for (i, (s, o)) in split.iter().zip(&single).enumerate() {
                let (r, c) = (i / n, i % n);
                let exact: f64 = (0..k)
                    .map(|j| f64::from(a[r * k + j]) * f64::from(w[c * k + j]))
                    .sum();
                assert!(
                    (f64::from(*s) - exact).abs() <= 1e-4,
                    "[{r}, {c}] of {m}x{k}x{n}"
                );
                worst = worst.max((s - o).abs() as f64);
            }
            assert!(
                worst <= 1e-5,
                "{m}x{k}x{n}: split vs one call differ by {worst}"
            );
        }
    }
}
