//! Out-of-place transpose of an f32 matrix, in 8x8 tiles (AVX shuffles where the CPU has AVX,
//! a plain loop elsewhere), on the calling thread (its caller, flash attention, runs one per
//! rayon task).
//!
//! Flash attention turns each query block column-major with it once, so that gemm reads it
//! directly for every key block: gemm's own packing of a row-major left operand is a scalar
//! strided gather, repeated per call.

/// Tile edge.
const TILE: usize = 8;
/// Rows of the source transposed at a time (a multiple of [`TILE`]): their lines stay in L1
/// across the column tiles.
const ROWS_PER_CHUNK: usize = 64;

/// Writes the transpose of `src` (`rows x cols`, row stride `src_rs`, unit column stride) into
/// `dst` (`cols x rows`, row-major, `dst.len() == rows * cols`).
pub fn transpose(src: &[f32], rows: usize, cols: usize, src_rs: usize, dst: &mut [f32]) {
    assert_eq!(dst.len(), rows * cols, "transpose output size");
    if rows == 0 || cols == 0 {
        return;
    }
    assert!(
        (rows - 1) * src_rs + cols <= src.len(),
        "transpose source extent"
    );
    let out = dst.as_mut_ptr();
    for r0 in (0..rows).step_by(ROWS_PER_CHUNK) {
        let r1 = (r0 + ROWS_PER_CHUNK).min(rows);
        // SAFETY: the source extent was checked above; the output holds rows x cols.
        unsafe { transpose_rows(src, src_rs, r0, r1, cols, out, rows) };
    }
}

/// Source rows `r0..r1` into output columns `r0..r1`.
///
/// # Safety
/// `src` covers rows `r0..r1` x `cols` at row stride `src_rs`; `out` is `cols x dst_rs`.
unsafe fn transpose_rows(
    src: &[f32],
    src_rs: usize,
    r0: usize,
    r1: usize,
    cols: usize,
    out: *mut f32,
    dst_rs: usize,
) {
    let src = src.as_ptr();
    let full_rows = r0 + (r1 - r0) / TILE * TILE;
    let full_cols = cols / TILE * TILE;
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx") {
        // Columns outer: each output row gets the chunk's rows as one contiguous run, and the
        // chunk's source rows stay in L1 across the column tiles.
        for c in (0..full_cols).step_by(TILE) {
            for r in (r0..full_rows).step_by(TILE) {
                // SAFETY: an 8x8 tile inside both extents; AVX is present.
                unsafe {
                    tile_avx(
                        src.add(r * src_rs + c),
                        src_rs,
                        out.add(c * dst_rs + r),
                        dst_rs,
                    )
                };
            }
        }
        // SAFETY: the ragged edges, inside both extents.
        unsafe {
            plain(src, src_rs, (r0, full_rows), (full_cols, cols), out, dst_rs);
            plain(src, src_rs, (full_rows, r1), (0, cols), out, dst_rs);
        }
        return;
    }
    // SAFETY: inside both extents.
    unsafe { plain(src, src_rs, (r0, r1), (0, cols), out, dst_rs) };
}

/// The element-by-element transpose of a block of source rows and columns.
///
/// # Safety
/// As [`transpose_rows`], for the block given.
unsafe fn plain(
    src: *const f32,
    src_rs: usize,
    (r0, r1): (usize, usize),
    (c0, c1): (usize, usize),
    out: *mut f32,
    dst_rs: usize,
) {
    for r in r0..r1 {
        for c in c0..c1 {
            // SAFETY: inside both extents (the caller's contract).
            unsafe { *out.add(c * dst_rs + r) = *src.add(r * src_rs + c) };
        }
    }
}

/// One 8x8 tile: eight 8-float rows in, eight out (the classic unpack / shuffle / permute
/// sequence).
///
/// # Safety
/// `src` rows `0..8` at stride `src_rs` and `dst` rows `0..8` at stride `dst_rs` hold 8 floats
/// each; the CPU has AVX.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn tile_avx(src: *const f32, src_rs: usize, dst: *mut f32, dst_rs: usize) {
    use std::arch::x86_64::*;
    unsafe {
        let row = |i: usize| _mm256_loadu_ps(src.add(i * src_rs));
        let (r0, r1, r2, r3) = (row(0), row(1), row(2), row(3));
        let (r4, r5, r6, r7) = (row(4), row(5), row(6), row(7));
        let t0 = _mm256_unpacklo_ps(r0, r1);
        let t1 = _mm256_unpackhi_ps(r0, r1);
        let t2 = _mm256_unpacklo_ps(r2, r3);
        let t3 = _mm256_unpackhi_ps(r2, r3);
        let t4 = _mm256_unpacklo_ps(r4, r5);
        let t5 = _mm256_unpackhi_ps(r4, r5);
        let t6 = _mm256_unpacklo_ps(r6, r7);
        let t7 = _mm256_unpackhi_ps(r6, r7);
        let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
        let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
        let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
        let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
        let put = |i: usize, v: __m256| _mm256_storeu_ps(dst.add(i * dst_rs), v);
        put(0, _mm256_permute2f128_ps::<0x20>(s0, s4));
        put(1, _mm256_permute2f128_ps::<0x20>(s1, s5));
        put(2, _mm256_permute2f128_ps::<0x20>(s2, s6));
        put(3, _mm256_permute2f128_ps::<0x20>(s3, s7));
        put(4, _mm256_permute2f128_ps::<0x31>(s0, s4));
        put(5, _mm256_permute2f128_ps::<0x31>(s1, s5));
        put(6, _mm256_permute2f128_ps::<0x31>(s2, s6));
        put(7, _mm256_permute2f128_ps::<0x31>(s3, s7));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_element_definition_on_ragged_and_strided_shapes() {
        for (rows, cols, pad) in [
            (1, 1, 0),
            (8, 8, 0),
            (13, 29, 3),
            (130, 70, 0),
            (300, 257, 5),
        ] {
            let rs = cols + pad;
            let src: Vec<f32> = (0..rows * rs).map(|i| i as f32).collect();
            let mut dst = vec![f32::NAN; rows * cols];
            transpose(&src, rows, cols, rs, &mut dst);
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(
                        dst[c * rows + r],
                        src[r * rs + c],
                        "[{r}, {c}] of {rows}x{cols}"
                    );
                }
            }
        }
    }
}
