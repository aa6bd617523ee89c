//! Every fused kernel against its plain burn-op composition: values and gradients (of every
//! input) within 1e-5 relative, on the CPU autodiff backend.

use burn::tensor::{backend::Backend, Distribution, Tensor, TensorData};
use vlmtune_kernels::*;

type B = burn::backend::Flex;
type AB = burn::backend::Autodiff<B>;

fn random<const D: usize>(shape: [usize; D], seed: u64) -> Tensor<AB, D> {
    <AB as Backend>::seed(&Default::default(), seed);
    Tensor::random(shape, Distribution::Normal(0.0, 1.0), &Default::default())
}

fn host<const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().to_vec::<f32>().unwrap()
}

/// max |a - b| / max |b|.
fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-12);
    a.iter()
        .zip(b)
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

/// Runs `op` on fresh leaves made from `inputs`, backpropagates `sum(out · w)`, and returns the
/// output and each input's gradient.
fn run<const D: usize, const O: usize>(
    inputs: &[Tensor<AB, D>],
    op: impl Fn(&[Tensor<AB, D>]) -> Tensor<AB, O>,
    upstream: &Tensor<AB, O>,
) -> (Vec<f32>, Vec<Vec<f32>>) {
    let leaves: Vec<Tensor<AB, D>> = inputs
        .iter()
        .map(|t| Tensor::from_inner(t.clone().inner()).require_grad())
        .collect();
    let out = op(&leaves);
    let grads = (out.clone() * upstream.clone()).sum().backward();
    let g = leaves
        .iter()
        .map(|l| host(l.grad(&grads).expect("a gradient")))
        .collect();
    (host(out.inner()), g)
}

fn check<const D: usize, const O: usize>(
    what: &str,
    inputs: &[Tensor<AB, D>],
    fused: impl Fn(&[Tensor<AB, D>]) -> Tensor<AB, O>,
    reference: impl Fn(&[Tensor<AB, D>]) -> Tensor<AB, O>,
) {
    let probe = reference(inputs);
    let upstream = random(probe.dims(), 99);
    let (out_f, grads_f) = run(inputs, fused, &upstream);
    let (out_r, grads_r) = run(inputs, reference, &upstream);
    let e = rel_err(&out_f, &out_r);
    assert!(e <= 1e-5, "{what}: output relative error {e}");
    for (i, (gf, gr)) in grads_f.iter().zip(&grads_r).enumerate() {
        let e = rel_err(gf, gr);
        assert!(
            e <= 1e-5,
            "{what}: gradient of input {i}: relative error {e}"
        );
    }
}

struct Case {
    name: &'static str,
    batch: usize,
    heads: usize,
    kv_heads: usize,
    q_len: usize,
    kv_len: usize,
    head_dim: usize,
    mask: AttentionMask,
}

fn check_attention(c: Case) {
    let q = random([c.batch, c.heads, c.q_len, c.head_dim], 1);
    let k = random([c.batch, c.kv_heads, c.kv_len, c.head_dim], 2);
    let v = random([c.batch, c.kv_heads, c.kv_len, c.head_dim], 3);
    // The model hands q, k, v over as views of `[batch, len, heads, d]` projections.
    let as_view = |t: Tensor<AB, 4>| t.swap_dims(1, 2).swap_dims(1, 2);
    let (q, k, v) = (as_view(q), as_view(k), as_view(v));
    let scale = (c.head_dim as f64).powf(-0.5);
    let mask = c.mask.clone();
    let mask2 = c.mask;
    let all = [q, k, v];
    check(
        c.name,
        &all,
        |t| attention(t[0].clone(), t[1].clone(), t[2].clone(), &mask, scale),
        |t| attention_reference(t[0].clone(), t[1].clone(), t[2].clone(), &mask2, scale),
    );
}

#[test]
fn attention_without_mask_grouped_heads_several_blocks() {
    check_attention(Case {
        name: "bidirectional, 9 heads on 3 kv heads, 150 x 150",
        batch: 2,
        heads: 9,
        kv_heads: 3,
        q_len: 150,
        kv_len: 150,
        head_dim: 16,
        mask: AttentionMask::none(),
    });
}

#[test]
fn attention_causal() {
    check_attention(Case {
        name: "causal 200 x 200",
        batch: 1,
        heads: 4,
        kv_heads: 2,
        q_len: 200,
        kv_len: 200,
        head_dim: 32,
        mask: AttentionMask::causal(&[1; 200]),
    });
}

#[test]
fn attention_causal_with_left_padding_and_fully_masked_rows() {
    // Row 1 is left-padded by 70: its first 70 queries see no key at all.
    let mut m = vec![1u8; 2 * 140];
    m[140..210].fill(0);
    check_attention(Case {
        name: "causal + left padding",
        batch: 2,
        heads: 2,
        kv_heads: 1,
        q_len: 140,
        kv_len: 140,
        head_dim: 8,
        mask: AttentionMask::causal(&m),
    });
}

#[test]
fn attention_causal_after_a_cached_prefix() {
    let mut m = vec![1u8; 2 * 150];
    m[150] = 0;
    check_attention(Case {
        name: "5 new queries after 145 cached keys",
        batch: 2,
        heads: 3,
        kv_heads: 3,
        q_len: 5,
        kv_len: 150,
        head_dim: 16,
        mask: AttentionMask::causal(&m),
    });
}

#[test]
fn attention_key_padding() {
    let mut keep = vec![true; 3 * 100];
    keep[60..100].fill(false);
    keep[200..300].fill(false); // a tile with no real patch at all
    check_attention(Case {
        name: "vision key padding",
        batch: 3,
        heads: 4,
        kv_heads: 4,
        q_len: 100,
        kv_len: 100,
        head_dim: 16,
        mask: AttentionMask::key_padding(&keep),
    });
}

#[test]
fn attention_forward_without_autodiff_matches() {
    let dev = Default::default();
    let q = Tensor::<B, 4>::random([1, 2, 70, 8], Distribution::Default, &dev);
    let k = Tensor::<B, 4>::random([1, 1, 70, 8], Distribution::Default, &dev);
    let v = Tensor::<B, 4>::random([1, 1, 70, 8], Distribution::Default, &dev);
    let mask = AttentionMask::causal(&[1; 70]);
    let fused = attention(q.clone(), k.clone(), v.clone(), &mask, 0.3);
    let reference = attention_reference(q, k, v, &mask, 0.3);
    let e = rel_err(&host(fused), &host(reference));
    assert!(e <= 1e-5, "{e}");
}

#[test]
fn rotary_embedding_matches_the_plain_ops() {
    for table_batch in [2, 1] {
        // q as the model hands it over: a view of the `[batch, len, heads, d]` projection.
        let x = random([2, 7, 3, 16], 10).swap_dims(1, 2);
        let cos = random([table_batch, 1, 7, 16], 11).inner();
        let sin = random([table_batch, 1, 7, 16], 12).inner();
        let constant = |t: &Tensor<B, 4>| Tensor::<AB, 4>::from_inner(t.clone());
        check(
            "rotary_embedding",
            std::slice::from_ref(&x),
            |t| rotary_embedding(t[0].clone(), constant(&cos), constant(&sin)),
            |t| rotary_embedding_reference(t[0].clone(), constant(&cos), constant(&sin)),
        );
    }
}

#[test]
fn linear_matches_the_plain_matmul() {
    // x as a strided view (a transposed leaf), the weight as stored; a product above the
    // threshold of the threaded path, one below.
    for (rows, din, dout) in [(300, 200, 250), (7, 40, 24)] {
        let x = random([din, rows], 13).transpose();
        let w = random([dout, din], 14);
        check(
            "linear",
            &[x, w],
            |t| linear(t[0].clone(), t[1].clone()),
            |t| linear_reference(t[0].clone(), t[1].clone()),
        );
    }
}

/// One operand frozen (LoRA's base projection: the weight; and the other way round): the
/// fused op keeps only what the tracked operand's gradient needs, and that gradient still
/// matches the plain matmul's.
#[test]
fn linear_with_a_frozen_operand_matches_the_plain_matmul() {
    let (x, w) = (random([300, 200], 15), random([250, 200], 16));
    let upstream = random([300, 250], 17);
    for frozen_weight in [true, false] {
        let grad_of_tracked = |op: fn(Tensor<AB, 2>, Tensor<AB, 2>) -> Tensor<AB, 2>| {
            let leaf = |t: &Tensor<AB, 2>, tracked: bool| {
                let t = Tensor::<AB, 2>::from_inner(t.clone().inner());
                if tracked {
                    t.require_grad()
                } else {
                    t
                }
            };
            let (xl, wl) = (leaf(&x, frozen_weight), leaf(&w, !frozen_weight));
            let out = op(xl.clone(), wl.clone());
            let grads = (out.clone() * upstream.clone()).sum().backward();
            let (tracked, frozen) = if frozen_weight { (xl, wl) } else { (wl, xl) };
            assert!(
                frozen.grad(&grads).is_none(),
                "no gradient for the frozen one"
            );
            (
                host(out.inner()),
                host(tracked.grad(&grads).expect("a gradient")),
            )
        };
        let (out_f, grad_f) = grad_of_tracked(linear);
        let (out_r, grad_r) = grad_of_tracked(linear_reference);
        assert!(rel_err(&out_f, &out_r) <= 1e-5);
        let e = rel_err(&grad_f, &grad_r);
        assert!(
            e <= 1e-5,
            "frozen weight {frozen_weight}: gradient error {e}"
        );
    }
}

#[test]
fn norms_match_the_plain_ops() {
    let x = random([2, 7, 40], 5);
    let w = random([40], 6);
    let b = random([40], 7);
    let wb = [w.clone().unsqueeze::<3>(), b.clone().unsqueeze::<3>()];
    let inputs = [x, wb[0].clone(), wb[1].clone()];
    let flat = |t: &Tensor<AB, 3>| t.clone().reshape([40]);
    check(
        "rms_norm",
        &inputs[..2],
        |t| rms_norm(t[0].clone(), flat(&t[1]), 1e-5),
        |t| rms_norm_reference(t[0].clone(), flat(&t[1]), 1e-5),
    );
    check(
        "layer_norm",
        &inputs,
        |t| layer_norm(t[0].clone(), flat(&t[1]), flat(&t[2]), 1e-6),
        |t| layer_norm_reference(t[0].clone(), flat(&t[1]), flat(&t[2]), 1e-6),
    );
}

#[test]
fn activations_match_the_plain_ops() {
    let x = random([3, 5, 1000], 8).mul_scalar(3.0);
    let up = random([3, 5, 1000], 9);
    check(
        "gelu_tanh",
        std::slice::from_ref(&x),
        |t| gelu_tanh(t[0].clone()),
        |t| gelu_tanh_reference(t[0].clone()),
    );
    check(
        "silu_mul",
        &[x, up],
        |t| silu_mul(t[0].clone(), t[1].clone()),
        |t| silu_mul_reference(t[0].clone(), t[1].clone()),
    );
}

#[test]
#[allow(clippy::excessive_precision)]
fn gelu_tanh_matches_torch_values() {
    // torch.nn.functional.gelu(x, approximate="tanh") for x = -2, -0.5, 0, 1, 3
    let want = [-0.04540229f32, -0.15428599, 0.0, 0.8411920, 2.9963627];
    let x = Tensor::<B, 1>::from_data(
        TensorData::new(vec![-2.0f32, -0.5, 0.0, 1.0, 3.0], [5]),
        &Default::default(),
    );
    let y = host(gelu_tanh(x));
    for (a, b) in y.iter().zip(want) {
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
    }
}
