//! `x·wᵀ` and its two backward products straight on the `gemm` crate, writing into an
//! uninitialised output: burn-flex's matmul zero-fills a fresh buffer for every product first,
//! which measured 139 against 178-262 GFLOP/s for the same gemm call on the vision MLP's shape.

use gemm::{gemm, Parallelism};

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

    fn ptr(&self) -> *const f32 {
        self.data[self.offset..].as_ptr()
    }
}

/// Products below this many multiply-adds run on one thread (burn-flex's threshold).
const PARALLEL_THRESHOLD: usize = 192 * 192 * 192;

/// `a · b`, `[a.rows, b.cols]` row-major.
pub fn matmul(a: Matrix, b: Matrix) -> Vec<f32> {
    assert_eq!(a.cols, b.rows, "inner dimensions");
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if k == 0 || m == 0 || n == 0 {
        return vec![0.0; m * n];
    }
    let parallelism = if m * n * k >= PARALLEL_THRESHOLD {
        Parallelism::Rayon(0)
    } else {
        Parallelism::None
    };
    let mut out: Vec<f32> = Vec::with_capacity(m * n);
    // SAFETY: the operands cover their strided extents (checked by the callers' layouts);
    // with `read_dst = false` gemm writes every element of the m×n output before `set_len`.
    unsafe {
        gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
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
            parallelism,
        );
        out.set_len(m * n);
    }
    out
}
