//! The Llama text model (SPEC §4): RMSNorm, half-split RoPE, grouped-query causal attention,
//! SwiGLU MLP, and the key/value cache that generation passes in and gets back.

use burn::module::Module;
use burn::tensor::{backend::Backend, Tensor, TensorData};
use vlmtune_peft::{dropout, Linear};
use vlmtune_quant::Weights;

use crate::attention::{attention, AttentionMask};
use crate::config::TextConfig;
use crate::error::Result;
use crate::layers::{Embedding, RmsNorm};

/// One decoder layer's `(keys, values)`, `[batch, kv_heads, len, head_dim]` each.
pub type LayerKv<B> = (Tensor<B, 4>, Tensor<B, 4>);

/// Keys and values of the tokens seen so far, per decoder layer:
/// `[batch, kv_heads, past_len, head_dim]` each.
///
/// A value, not hidden state: the decoder takes one and returns the extended one, so
/// training and generation share one forward, and a prefix cache can be reused by several
/// continuations (DPO's chosen and rejected).
#[derive(Clone, Debug)]
pub struct KvCache<B: Backend> {
    /// `(keys, values)` of each layer.
    pub layers: Vec<LayerKv<B>>,
}

impl<B: Backend> KvCache<B> {
    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.layers.first().map(|(k, _)| k.dims()[2]).unwrap_or(0)
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Repeats every cached row `times` times along the batch (row `i` becomes rows
    /// `i·times .. (i+1)·times`), so one prefix can serve several continuations.
    pub fn repeat_interleave(&self, times: usize) -> Self {
        let rep = |t: &Tensor<B, 4>| {
            let [b, h, l, d] = t.dims();
            t.clone()
                .unsqueeze_dim::<5>(1)
                .expand([b, times, h, l, d])
                .reshape([b * times, h, l, d])
        };
        Self {
            layers: self.layers.iter().map(|(k, v)| (rep(k), rep(v))).collect(),
        }
    }
}

/// cos/sin tables of RoPE for given positions, `[batch, 1, seq, head_dim]` each.
#[derive(Clone, Debug)]
pub struct Rope<B: Backend> {
    cos: Tensor<B, 4>,
    sin: Tensor<B, 4>,
}

impl<B: Backend> Rope<B> {
    /// Computes the tables as `LlamaRotaryEmbedding` does in float32:
    /// `inv_freq = 1 / theta^(2i/hd)`, `emb = cat(pos·inv_freq, pos·inv_freq)`.
    pub fn new(
        position_ids: &[i64],
        batch: usize,
        seq: usize,
        head_dim: usize,
        theta: f64,
        device: &B::Device,
    ) -> Self {
        let half = head_dim / 2;
        let theta32 = theta as f32;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| 1.0f32 / theta32.powf((2 * i) as f32 / head_dim as f32))
            .collect();
        let mut cos = Vec::with_capacity(batch * seq * head_dim);
        let mut sin = Vec::with_capacity(batch * seq * head_dim);
        for &pos in position_ids {
            let angles: Vec<f32> = inv_freq.iter().map(|f| pos as f32 * f).collect();
            for _ in 0..2 {
                cos.extend(angles.iter().map(|a| a.cos()));
                sin.extend(angles.iter().map(|a| a.sin()));
            }
        }
        let shape = [batch, 1, seq, head_dim];
        Self {
            cos: Tensor::from_data(TensorData::new(cos, shape), device),
            sin: Tensor::from_data(TensorData::new(sin, shape), device),
        }
    }

    /// The same tables on the autodiff backend's inner backend.
    pub fn inner(&self) -> Rope<B::InnerBackend>
    where
        B: burn::tensor::backend::AutodiffBackend,
    {
        Rope {
            cos: self.cos.clone().inner(),
            sin: self.sin.clone().inner(),
        }
    }

    /// `x·cos + rotate_half(x)·sin` on `[batch, heads, seq, head_dim]`.
    pub fn apply(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        vlmtune_kernels::rotary_embedding(x, self.cos.clone(), self.sin.clone())
    }
}

/// Causal grouped-query attention without biases.
#[derive(Module, Debug)]
pub struct TextAttention<B: Backend> {
    /// `Dt -> heads·hd`.
    pub q_proj: Linear<B>,
    /// `Dt -> kv_heads·hd`.
    pub k_proj: Linear<B>,
    /// `Dt -> kv_heads·hd`.
    pub v_proj: Linear<B>,
    /// `heads·hd -> Dt`.
    pub o_proj: Linear<B>,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads.
    pub num_kv_heads: usize,
    /// Per-head width.
    pub head_dim: usize,
}

impl<B: Backend> TextAttention<B> {
    fn load(w: &Weights<B>, c: &TextConfig) -> Result<Self> {
        let (d, hd) = (c.hidden_size, c.head_dim());
        let (h, kv) = (c.num_attention_heads, c.kv_heads());
        Ok(Self {
            q_proj: Linear::load(&w.pp("q_proj"), d, h * hd, false)?,
            k_proj: Linear::load(&w.pp("k_proj"), d, kv * hd, false)?,
            v_proj: Linear::load(&w.pp("v_proj"), d, kv * hd, false)?,
            o_proj: Linear::load(&w.pp("o_proj"), h * hd, d, false)?,
            num_heads: h,
            num_kv_heads: kv,
            head_dim: hd,
        })
    }

    /// `[batch, seq, Dt]` attending to `past` plus itself; returns the output and the
    /// extended `(keys, values)`.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: &Rope<B>,
        mask: &AttentionMask,
        past: Option<(Tensor<B, 4>, Tensor<B, 4>)>,
    ) -> (Tensor<B, 3>, (Tensor<B, 4>, Tensor<B, 4>)) {
        let [b, l, _] = x.dims();
        let hd = self.head_dim;
        let q = self
            .q_proj
            .forward(x.clone())
            .reshape([b, l, self.num_heads, hd])
            .swap_dims(1, 2);
        let k = self
            .k_proj
            .forward(x.clone())
            .reshape([b, l, self.num_kv_heads, hd])
            .swap_dims(1, 2);
        let v = self
            .v_proj
            .forward(x)
            .reshape([b, l, self.num_kv_heads, hd])
            .swap_dims(1, 2);
        let q = rope.apply(q);
        let k = rope.apply(k);
        let (k, v) = match past {
            Some((pk, pv)) => (Tensor::cat(vec![pk, k], 2), Tensor::cat(vec![pv, v], 2)),
            None => (k, v),
        };
        let out = attention(q, k.clone(), v.clone(), mask, (hd as f64).powf(-0.5));
        let out = out.swap_dims(1, 2).reshape([b, l, self.num_heads * hd]);
        (self.o_proj.forward(out), (k, v))
    }
}

/// `down_proj(silu(gate_proj(x)) · up_proj(x))`.
#[derive(Module, Debug)]
pub struct TextMlp<B: Backend> {
    /// `Dt -> intermediate`.
    pub gate_proj: Linear<B>,
    /// `Dt -> intermediate`.
    pub up_proj: Linear<B>,
    /// `intermediate -> Dt`.
    pub down_proj: Linear<B>,
}

impl<B: Backend> TextMlp<B> {
    /// `[batch, seq, Dt] -> [batch, seq, Dt]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let gate = self.gate_proj.forward(x.clone());
        self.down_proj
            .forward(vlmtune_kernels::silu_mul(gate, self.up_proj.forward(x)))
    }
}

/// One Llama block.
#[derive(Module, Debug)]
pub struct DecoderLayer<B: Backend> {
    /// RMSNorm before attention.
    pub input_layernorm: RmsNorm<B>,
    /// Attention.
    pub self_attn: TextAttention<B>,
    /// RMSNorm before the MLP.
    pub post_attention_layernorm: RmsNorm<B>,
    /// MLP.
    pub mlp: TextMlp<B>,
}

impl<B: Backend> DecoderLayer<B> {
    fn load(w: &Weights<B>, c: &TextConfig) -> Result<Self> {
        let (d, i) = (c.hidden_size, c.intermediate_size);
        let m = w.pp("mlp");
        Ok(Self {
            input_layernorm: RmsNorm::load(&w.pp("input_layernorm"), d, c.rms_norm_eps)?,
            self_attn: TextAttention::load(&w.pp("self_attn"), c)?,
            post_attention_layernorm: RmsNorm::load(
                &w.pp("post_attention_layernorm"),
                d,
                c.rms_norm_eps,
            )?,
            mlp: TextMlp {
                gate_proj: Linear::load(&m.pp("gate_proj"), d, i, false)?,
                up_proj: Linear::load(&m.pp("up_proj"), d, i, false)?,
                down_proj: Linear::load(&m.pp("down_proj"), i, d, false)?,
            },
        })
    }

    /// `[batch, seq, Dt]` through the block, attending to `past` plus itself; returns the
    /// output and the extended `(keys, values)`.
    pub fn forward(
        &self,
        h: Tensor<B, 3>,
        rope: &Rope<B>,
        mask: &AttentionMask,
        past: Option<(Tensor<B, 4>, Tensor<B, 4>)>,
    ) -> (Tensor<B, 3>, (Tensor<B, 4>, Tensor<B, 4>)) {
        let (attn, kv) =
            self.self_attn
                .forward(self.input_layernorm.forward(h.clone()), rope, mask, past);
        let h = h + attn;
        let out = h.clone() + self.mlp.forward(self.post_attention_layernorm.forward(h));
        (out, kv)
    }
}

/// Runs consecutive decoder `layers`, layer `j` with LoRA dropout seeded by `seeds[j]` and
/// attending to `past[j]`; returns the output and each layer's extended `(keys, values)`.
/// Shared by the plain forward and both runs of a checkpointed segment.
pub fn run_decoder_layers<B: Backend>(
    layers: &[DecoderLayer<B>],
    seeds: &[u64],
    mut h: Tensor<B, 3>,
    rope: &Rope<B>,
    mask: &AttentionMask,
    past: Vec<Option<LayerKv<B>>>,
) -> (Tensor<B, 3>, Vec<LayerKv<B>>) {
    let mut cache = Vec::with_capacity(layers.len());
    for ((layer, seed), past) in layers.iter().zip(seeds).zip(past) {
        let _scope = vlmtune_peft::dropout::scope(*seed);
        let (out, kv) = layer.forward(h, rope, mask, past);
        h = out;
        cache.push(kv);
    }
    (h, cache)
}

/// What one text forward needs besides the embeddings.
pub struct TextContext<'a, B: Backend> {
    /// `[batch·seq]` RoPE positions of the new tokens.
    pub position_ids: &'a [i64],
    /// `[batch, past + seq]`: 1 for real tokens, 0 for padding.
    pub attention_mask: &'a [u8],
    /// Keys and values of earlier tokens, if any.
    pub cache: Option<&'a KvCache<B>>,
    /// Return the extended cache (`false`: an empty one, and a checkpointing tape keeps no
    /// keys/values).
    pub use_cache: bool,
}

/// Token embeddings, decoder layers and the final norm.
#[derive(Module, Debug)]
pub struct TextModel<B: Backend> {
    /// `[V, Dt]`.
    pub embed_tokens: Embedding<B>,
    /// The decoder blocks.
    pub layers: Vec<DecoderLayer<B>>,
    /// Final RMSNorm.
    pub norm: RmsNorm<B>,
    /// RoPE base.
    pub rope_theta: f64,
}

impl<B: Backend> TextModel<B> {
    /// Builds from `<prefix>.{embed_tokens,layers,norm}`.
    pub fn load(w: &Weights<B>, c: &TextConfig) -> Result<Self> {
        let layers = (0..c.num_hidden_layers)
            .map(|i| DecoderLayer::load(&w.pp("layers").pp(i), c))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            embed_tokens: Embedding::load(
                &w.pp("embed_tokens"),
                c.vocab_size,
                c.hidden_size,
                c.initializer_range,
            )?,
            layers,
            norm: RmsNorm::load(&w.pp("norm"), c.hidden_size, c.rms_norm_eps)?,
            rope_theta: c.rope_theta(),
        })
    }

    /// Runs the decoder on `[batch, seq, Dt]` input embeddings.
    ///
    /// Returns the final-normed hidden states `[batch, seq, Dt]` and the cache extended by
    /// these tokens.
    pub fn forward(
        &self,
        embeds: Tensor<B, 3>,
        ctx: TextContext<'_, B>,
    ) -> (Tensor<B, 3>, KvCache<B>) {
        let [batch, seq, _] = embeds.dims();
        let device = embeds.device();
        let head_dim = self
            .layers
            .first()
            .map(|l| l.self_attn.head_dim)
            .unwrap_or(2);
        let rope = Rope::new(
            ctx.position_ids,
            batch,
            seq,
            head_dim,
            self.rope_theta,
            &device,
        );
        let mask = AttentionMask::causal(ctx.attention_mask);
        let forward = dropout::next_forward();
        // Under gradient checkpointing a segment runner keeps only each segment's input.
        let runner = crate::recompute::active_runner::<B>();
        let every = runner
            .as_ref()
            .map_or(self.layers.len(), |r| r.segment_len());
        let mut h = embeds;
        let mut cache = Vec::with_capacity(self.layers.len());
        let mut start = 0;
        while start < self.layers.len() {
            let end = (start + every.max(1)).min(self.layers.len());
            let seeds: Vec<u64> = (start..end)
                .map(|i| dropout::layer_seed(forward, dropout::Stack::Text, i))
                .collect();
            let past = (start..end)
                .map(|i| ctx.cache.and_then(|c| c.layers.get(i).cloned()))
                .collect();
            let layers = &self.layers[start..end];
            let (out, kv) = match &runner {
                Some(r) => r.decoder_segment(layers, &seeds, h, &rope, &mask, past, ctx.use_cache),
                None => run_decoder_layers(layers, &seeds, h, &rope, &mask, past),
            };
            h = out;
            if ctx.use_cache {
                cache.extend(kv);
            }
            start = end;
        }
        (self.norm.forward(h), KvCache { layers: cache })
    }
}
