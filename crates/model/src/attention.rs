//! Attention as the vision tower (bidirectional, key padding) and the text model (causal,
//! grouped-query) call it: the fused kernel of `vlmtune-kernels` (flash attention on the CPU,
//! the plain burn ops elsewhere).

pub use vlmtune_kernels::{attention, attention_reference, AttentionMask, MASK_VALUE};

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Tensor;

    type B = burn::backend::Flex;

    #[test]
    fn causal_mask_hides_future_and_padding() {
        let dev = Default::default();
        // batch 2, 3 tokens, second row left-padded by one.
        let mask = AttentionMask::causal(&[1, 1, 1, 0, 1, 1])
            .additive::<B>(2, 3, 3, &dev)
            .unwrap();
        let m = mask.into_data().to_vec::<f32>().unwrap();
        let hidden: Vec<bool> = m.iter().map(|v| *v == MASK_VALUE).collect();
        #[rustfmt::skip]
        let want = [
            false, true, true,   false, false, true,   false, false, false,
            true, true, true,    true, false, true,    true, false, false,
        ];
        assert_eq!(hidden, want);
        let one_new_token = AttentionMask::causal(&[1, 1, 1, 1]);
        assert!(one_new_token.additive::<B>(2, 1, 2, &dev).is_none());
    }

    #[test]
    fn grouped_query_attention_equals_repeated_kv() {
        let dev = Default::default();
        let q = Tensor::<B, 4>::random([1, 4, 3, 2], burn::tensor::Distribution::Default, &dev);
        let k = Tensor::<B, 4>::random([1, 2, 3, 2], burn::tensor::Distribution::Default, &dev);
        let v = Tensor::<B, 4>::random([1, 2, 3, 2], burn::tensor::Distribution::Default, &dev);
        let none = AttentionMask::none();
        let out = attention(q.clone(), k.clone(), v.clone(), &none, 0.7);
        // repeat_kv: head i uses kv head i / 2
        let k_rep = Tensor::cat((0..4).map(|h| k.clone().narrow(1, h / 2, 1)).collect(), 1);
        let v_rep = Tensor::cat((0..4).map(|h| v.clone().narrow(1, h / 2, 1)).collect(), 1);
        let reference = attention_reference(q, k_rep, v_rep, &none, 0.7);
        let diff = (out - reference).abs().max().into_scalar();
        assert!(diff < 1e-6, "{diff}");
    }
}
