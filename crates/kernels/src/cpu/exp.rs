//! A vectorisable `exp` (Cephes' `expf`: range reduction by `ln 2`, degree-5 polynomial, the
//! exponent written into the bits), about 1 ulp, compiled for AVX-512 or AVX2 + FMA when the CPU
//! has them.
//! libm's scalar `expf` was the bottleneck of the attention softmax: 150 M calls per vision
//! forward of one tile.

/// `exp(x)`; inputs below -87 give exactly 0 (so masked scores drop out exactly), inputs above
/// 88 give `exp(88)`.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5·2²³: adding it rounds to an integer held in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let xc = x.clamp(-87.0, 88.0);
    let t = xc * LOG2E + ROUND;
    let n = t - ROUND;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    let exponent = ((t.to_bits() as i32 - 0x4B40_0000 + 127) << 23) as u32;
    let y = y * f32::from_bits(exponent);
    if x < -87.0 {
        0.0
    } else {
        y
    }
}

/// `1 / (1 + exp(-x))`.
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// Runs `$body` compiled for AVX-512 or else AVX2 + FMA when the CPU has them, else for the
/// baseline target. Rust contracts no `a * b + c` into an FMA, so every copy computes the
/// same values.
/// The body is an `#[inline(always)]` generic loop, so each copy is vectorised for its target.
macro_rules! with_simd {
    (fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty $body:block) => {
        pub fn $name($($arg: $ty),*) -> $ret {
            #[inline(always)]
            fn generic($($arg: $ty),*) -> $ret $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) -> $ret {
                    generic($($arg),*)
                }
                if std::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has the features `avx512` was compiled for.
                    return unsafe { avx512($($arg),*) };
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) -> $ret {
                    generic($($arg),*)
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU has the features `avx2` was compiled for.
                    return unsafe { avx2($($arg),*) };
                }
            }
            generic($($arg),*)
        }
    };
}
pub(crate) use with_simd;

/// Sums in eight lanes, so the loop vectorises (a single accumulator would not).
#[inline(always)]
pub fn lane_sum(values: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let chunks = values.chunks_exact(8);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (lane, v) in lanes.iter_mut().zip(chunk) {
            *lane += v;
        }
    }
    lanes.iter().sum::<f32>() + rest.iter().sum::<f32>()
}

with_simd! {
    fn exp_shifted_sum(row: &mut [f32], shift: f32) -> f32 {
        for v in row.iter_mut() {
            *v = exp(*v - shift);
        }
        lane_sum(row)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_of_libm() {
        let mut worst = 0.0f64;
        for i in -870_000..=880_000 {
            let x = i as f32 * 1e-4;
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            worst = worst.max(((got - want) / want).abs());
        }
        assert!(worst < 2.5e-7, "worst relative error {worst}");
        assert_eq!(exp(f32::MIN), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn shifted_sum_matches_the_scalar_loop() {
        let mut row: Vec<f32> = (0..37).map(|i| (i as f32 * 0.37).sin() * 5.0).collect();
        let want: f32 = row.iter().map(|v| (v - 1.5).exp()).sum();
        let got = exp_shifted_sum(&mut row, 1.5);
        assert!((got - want).abs() / want < 1e-6);
    }
}
