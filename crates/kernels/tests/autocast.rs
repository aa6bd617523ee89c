//! bf16 autocast of `linear` against a host computation of what `torch.autocast` does for
//! `F.linear`: operands rounded to bf16, products summed in f32, the result rounded to bf16;
//! the backward products the same way, and f32 gradients for the f32 leaves.

use burn::tensor::{DType, Tensor, TensorData};
use half::bf16;
use vlmtune_kernels::{autocast_dtype, linear, Autocast};

type B = burn::backend::Flex;
type AB = burn::backend::Autodiff<B>;

fn round(v: f32) -> f32 {
    bf16::from_f32(v).to_f32()
}

/// `a [m,k] · b [k,n]` of bf16-rounded operands, summed in f64, rounded to bf16.
fn bf16_product(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut out = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let s: f64 = (0..k)
                .map(|p| round(a[i * k + p]) as f64 * round(b[p * n + j]) as f64)
                .sum();
            out[i * n + j] = round(s as f32);
        }
    }
    out
}

fn transpose(a: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    (0..cols * rows)
        .map(|i| a[(i % rows) * cols + i / rows])
        .collect()
}

/// Largest difference in units of the bf16 spacing at the reference's magnitude.
fn ulps(got: &[f32], want: &[f32]) -> f32 {
    got.iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs() / (w.abs().max(1e-3) * 2f32.powi(-8)))
        .fold(0.0, f32::max)
}

fn values(n: usize, phase: f32) -> Vec<f32> {
    (0..n)
        .map(|i| (i as f32 * 0.731 + phase).sin() * 1.7)
        .collect()
}

#[test]
fn bf16_linear_and_its_gradients_are_torch_autocasts() {
    let (m, k, n) = (5, 37, 6);
    let (xs, ws, gs) = (values(m * k, 0.3), values(n * k, 1.1), values(m * n, 2.0));
    let dev = Default::default();
    let leaf = |v: &[f32], shape: [usize; 2]| {
        Tensor::<AB, 2>::from_data(TensorData::new(v.to_vec(), shape), &dev).require_grad()
    };
    let (x, w) = (leaf(&xs, [m, k]), leaf(&ws, [n, k]));
    let upstream = Tensor::<AB, 2>::from_data(TensorData::new(gs.clone(), [m, n]), &dev);
    let y = {
        let _bf16 = Autocast::bf16();
        assert!(autocast_dtype().is_some());
        linear(x.clone(), w.clone())
    };
    assert_eq!(autocast_dtype(), None, "the guard restores the setting");
    assert_eq!(y.dtype(), DType::F32, "the product comes back in x's dtype");
    let grads = (y.clone() * upstream).sum().backward();
    let host = |t: Tensor<B, 2>| {
        assert_eq!(t.dtype(), DType::F32, "f32 leaves get f32 gradients");
        t.into_data().to_vec::<f32>().unwrap()
    };
    let (dx, dw) = (host(x.grad(&grads).unwrap()), host(w.grad(&grads).unwrap()));

    // y = x·wᵀ, dx = g·w, dw = gᵀ·x, each in bf16 (the upstream gradient rounded too).
    let y_want = bf16_product(&xs, &transpose(&ws, n, k), m, k, n);
    let dx_want = bf16_product(&gs, &ws, m, n, k);
    let dw_want = bf16_product(&transpose(&gs, m, n), &xs, n, m, k);
    let y_got = host(y.inner());
    for (name, got, want) in [
        ("y", &y_got, &y_want),
        ("dx", &dx, &dx_want),
        ("dw", &dw, &dw_want),
    ] {
        // One bf16 step where the f32 sums round the other way.
        assert!(
            ulps(got, want) <= 2.0,
            "{name}: {} bf16 ulps",
            ulps(got, want)
        );
    }
    // The f32 product differs by bf16's rounding: autocast really computed in bf16.
    let f32_y = host(linear(x.clone(), w.clone()).inner());
    let f32_err = ulps(&f32_y, &y_want);
    assert!(
        f32_err > 0.05,
        "f32 and bf16 products agree to {f32_err} ulps"
    );
}

#[test]
fn without_the_guard_linear_stays_f32() {
    let dev = Default::default();
    let x = Tensor::<B, 2>::from_data(TensorData::new(values(12, 0.0), [3, 4]), &dev);
    let w = Tensor::<B, 2>::from_data(TensorData::new(values(8, 0.5), [2, 4]), &dev);
    let y = {
        let _outer = Autocast::bf16();
        let _off = Autocast::new(None);
        linear(x.clone(), w.clone())
    };
    let plain = x.matmul(w.transpose());
    assert_eq!(
        y.into_data().to_vec::<f32>().unwrap(),
        plain.into_data().to_vec::<f32>().unwrap()
    );
}
