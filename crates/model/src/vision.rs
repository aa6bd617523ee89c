//! The SigLIP vision tower with NaViT-style position ids (SPEC §1).

use burn::module::{Module, Param};
use burn::tensor::{backend::Backend, Int, Tensor, TensorData};
use vlmtune_peft::{dropout, Linear};
use vlmtune_quant::{Init, Weights};

use crate::attention::{attention, AttentionMask};
use crate::config::VisionConfig;
use crate::error::Result;
use crate::layers::{gelu_tanh, Embedding, LayerNorm};

/// `Conv2d(3, Dv, kernel=p, stride=p)` computed as a matrix product over flattened patches.
#[derive(Module, Debug)]
pub struct PatchEmbedding<B: Backend> {
    /// `[Dv, channels, p, p]`, as PyTorch stores the convolution.
    pub weight: Param<Tensor<B, 4>>,
    /// `[Dv]`.
    pub bias: Param<Tensor<B, 1>>,
}

/// Patch and position embeddings.
#[derive(Module, Debug)]
pub struct VisionEmbeddings<B: Backend> {
    /// The patchifying convolution.
    pub patch_embedding: PatchEmbedding<B>,
    /// `[G², Dv]` learned positions.
    pub position_embedding: Embedding<B>,
    /// Patch side `p` in pixels.
    pub patch_size: usize,
    /// `G`, patches per side of the position grid.
    pub patches_per_side: usize,
}

impl<B: Backend> VisionEmbeddings<B> {
    fn load(w: &Weights<B>, c: &VisionConfig) -> Result<Self> {
        let p = c.patch_size;
        let fan_in = (c.num_channels * p * p) as f64;
        let pe = w.pp("patch_embedding");
        Ok(Self {
            patch_embedding: PatchEmbedding {
                weight: pe.param(
                    "weight",
                    [c.hidden_size, c.num_channels, p, p],
                    Init::Normal {
                        std: 1.0 / fan_in.sqrt(),
                    },
                )?,
                bias: pe.param("bias", [c.hidden_size], Init::Zeros)?,
            },
            position_embedding: Embedding::load(
                &w.pp("position_embedding"),
                c.num_patches(),
                c.hidden_size,
                1.0 / (c.hidden_size as f64).sqrt(),
            )?,
            patch_size: p,
            patches_per_side: c.patches_per_side(),
        })
    }

    /// `[n, channels, H, W]` pixels and `[n, H/p · W/p]` position ids to `[n, H/p · W/p, Dv]`.
    /// Pixel rows and columns past the last whole patch are dropped, as the convolution does.
    pub fn forward(&self, pixels: Tensor<B, 4>, position_ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let [n, channels, height, width] = pixels.dims();
        let p = self.patch_size;
        let (gh, gw) = (height / p, width / p);
        let pixels = if gh * p != height || gw * p != width {
            pixels.narrow(2, 0, gh * p).narrow(3, 0, gw * p)
        } else {
            pixels
        };
        let patches: Tensor<B, 2> = pixels
            .reshape([n, channels, gh, p, gw, p])
            .permute([0, 2, 4, 1, 3, 5])
            .reshape([n * gh * gw, channels * p * p]);
        let dv = self.patch_embedding.bias.dims()[0];
        let kernel: Tensor<B, 2> = self
            .patch_embedding
            .weight
            .val()
            .reshape([dv, channels * p * p]);
        // The convolution as a product of the patches (a Linear product, so bf16 under
        // autocast as the convolution is in torch).
        let embeds =
            vlmtune_kernels::linear(patches, kernel) + self.patch_embedding.bias.val().unsqueeze();
        let embeds: Tensor<B, 3> = embeds.reshape([n, gh * gw, dv]);
        embeds + self.position_embedding.forward(position_ids)
    }
}

/// NaViT position ids of one tile from its patch mask `[gh, gw]` (row-major), on a `G×G`
/// position grid, as `Idefics3VisionEmbeddings.forward` computes them in float32 (SPEC §1).
/// Masked patches get id 0. A full mask gives `0..gh·gw` when `gh = gw = G`.
pub fn navit_position_ids(patch_mask: &[bool], gh: usize, gw: usize, grid: usize) -> Vec<i64> {
    // torch.arange(1/G, 1.0, 1/G): length ceil((end - start) / step) in double, values
    // start + i·step in double, stored as float32.
    let step = 1.0f64 / grid as f64;
    let count = ((1.0 - step) / step).ceil().max(0.0) as usize;
    let boundaries: Vec<f32> = (0..count)
        .map(|i| (step + i as f64 * step) as f32)
        .collect();
    let bucket = |x: f32| boundaries.iter().take_while(|b| **b <= x).count() as i64;
    let nb_h = (0..gh).filter(|r| patch_mask[r * gw]).count().max(1);
    let nb_w = (0..gw).filter(|c| patch_mask[*c]).count().max(1);
    let step_h = 1.0f32 / nb_h as f32;
    let step_w = 1.0f32 / nb_w as f32;
    let clamp = |x: f32| x.min(1.0 - 1e-6);
    let rows: Vec<i64> = (0..gh).map(|r| bucket(clamp(r as f32 * step_h))).collect();
    let cols: Vec<i64> = (0..gw).map(|c| bucket(clamp(c as f32 * step_w))).collect();
    let mut ids = Vec::with_capacity(gh * gw);
    for (r, row) in rows.iter().enumerate() {
        for (c, col) in cols.iter().enumerate() {
            ids.push(if patch_mask[r * gw + c] {
                row * grid as i64 + col
            } else {
                0
            });
        }
    }
    ids
}

/// Bidirectional multi-head attention with biased projections.
#[derive(Module, Debug)]
pub struct VisionAttention<B: Backend> {
    /// Query projection.
    pub q_proj: Linear<B>,
    /// Key projection.
    pub k_proj: Linear<B>,
    /// Value projection.
    pub v_proj: Linear<B>,
    /// Output projection.
    pub out_proj: Linear<B>,
    /// Number of heads.
    pub num_heads: usize,
}

impl<B: Backend> VisionAttention<B> {
    fn load(w: &Weights<B>, c: &VisionConfig) -> Result<Self> {
        let d = c.hidden_size;
        Ok(Self {
            q_proj: Linear::load(&w.pp("q_proj"), d, d, true)?,
            k_proj: Linear::load(&w.pp("k_proj"), d, d, true)?,
            v_proj: Linear::load(&w.pp("v_proj"), d, d, true)?,
            out_proj: Linear::load(&w.pp("out_proj"), d, d, true)?,
            num_heads: c.num_attention_heads,
        })
    }

    /// `[n, P, Dv]`, hiding the keys `mask` hides.
    pub fn forward(&self, x: Tensor<B, 3>, mask: &AttentionMask) -> Tensor<B, 3> {
        let [n, len, dim] = x.dims();
        let hd = dim / self.num_heads;
        let split = |t: Tensor<B, 3>| t.reshape([n, len, self.num_heads, hd]).swap_dims(1, 2);
        let q = split(self.q_proj.forward(x.clone()));
        let k = split(self.k_proj.forward(x.clone()));
        let v = split(self.v_proj.forward(x));
        let out = attention(q, k, v, mask, (hd as f64).powf(-0.5));
        self.out_proj
            .forward(out.swap_dims(1, 2).reshape([n, len, dim]))
    }
}

/// `fc2(gelu_tanh(fc1(x)))`.
#[derive(Module, Debug)]
pub struct VisionMlp<B: Backend> {
    /// `Dv -> intermediate`.
    pub fc1: Linear<B>,
    /// `intermediate -> Dv`.
    pub fc2: Linear<B>,
}

/// A pre-LayerNorm transformer block.
#[derive(Module, Debug)]
pub struct EncoderLayer<B: Backend> {
    /// Before attention.
    pub layer_norm1: LayerNorm<B>,
    /// Attention.
    pub self_attn: VisionAttention<B>,
    /// Before the MLP.
    pub layer_norm2: LayerNorm<B>,
    /// MLP.
    pub mlp: VisionMlp<B>,
}

impl<B: Backend> EncoderLayer<B> {
    fn load(w: &Weights<B>, c: &VisionConfig) -> Result<Self> {
        let (d, i) = (c.hidden_size, c.intermediate_size);
        Ok(Self {
            layer_norm1: LayerNorm::load(&w.pp("layer_norm1"), d, c.layer_norm_eps)?,
            self_attn: VisionAttention::load(&w.pp("self_attn"), c)?,
            layer_norm2: LayerNorm::load(&w.pp("layer_norm2"), d, c.layer_norm_eps)?,
            mlp: VisionMlp {
                fc1: Linear::load(&w.pp("mlp").pp("fc1"), d, i, true)?,
                fc2: Linear::load(&w.pp("mlp").pp("fc2"), i, d, true)?,
            },
        })
    }

    /// `[n, P, Dv] -> [n, P, Dv]`.
    pub fn forward(&self, x: Tensor<B, 3>, mask: &AttentionMask) -> Tensor<B, 3> {
        let h = x.clone() + self.self_attn.forward(self.layer_norm1.forward(x), mask);
        let m = self.mlp.fc2.forward(gelu_tanh(
            self.mlp.fc1.forward(self.layer_norm2.forward(h.clone())),
        ));
        h + m
    }
}

/// Runs consecutive encoder `layers`, layer `j` with LoRA dropout seeded by `seeds[j]`.
/// Shared by the plain forward and both runs of a checkpointed segment.
pub fn run_encoder_layers<B: Backend>(
    layers: &[EncoderLayer<B>],
    seeds: &[u64],
    mut h: Tensor<B, 3>,
    mask: &AttentionMask,
) -> Tensor<B, 3> {
    for (layer, seed) in layers.iter().zip(seeds) {
        let _scope = dropout::scope(*seed);
        h = layer.forward(h, mask);
    }
    h
}

/// The stack of encoder layers.
#[derive(Module, Debug)]
pub struct Encoder<B: Backend> {
    /// `num_hidden_layers` blocks.
    pub layers: Vec<EncoderLayer<B>>,
}

/// The whole vision tower: embeddings, encoder, post-LayerNorm.
#[derive(Module, Debug)]
pub struct VisionTransformer<B: Backend> {
    /// Patch + position embeddings.
    pub embeddings: VisionEmbeddings<B>,
    /// Encoder layers.
    pub encoder: Encoder<B>,
    /// Final LayerNorm.
    pub post_layernorm: LayerNorm<B>,
}

impl<B: Backend> VisionTransformer<B> {
    /// Builds the tower from `<prefix>.{embeddings,encoder,post_layernorm}`.
    pub fn load(w: &Weights<B>, c: &VisionConfig) -> Result<Self> {
        let layers = (0..c.num_hidden_layers)
            .map(|i| EncoderLayer::load(&w.pp("encoder").pp("layers").pp(i), c))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            embeddings: VisionEmbeddings::load(&w.pp("embeddings"), c)?,
            encoder: Encoder { layers },
            post_layernorm: LayerNorm::load(
                &w.pp("post_layernorm"),
                c.hidden_size,
                c.layer_norm_eps,
            )?,
        })
    }

    /// Encodes `[n, channels, H, W]` tiles to `[n, (H/p)·(W/p), Dv]`.
    ///
    /// `patch_mask` (`[n, H/p, W/p]` row-major, true = real patch) drives the NaViT position
    /// ids and hides padded patches as attention keys; `None` means every patch is real.
    pub fn forward(&self, pixels: Tensor<B, 4>, patch_mask: Option<&[bool]>) -> Tensor<B, 3> {
        let [n, _, height, width] = pixels.dims();
        let p = self.embeddings.patch_size;
        let (gh, gw) = (height / p, width / p);
        let per_tile = gh * gw;
        let grid = self.embeddings.patches_per_side;
        let device = pixels.device();
        let full = patch_mask.is_none_or(|m| m.iter().all(|k| *k));
        let ids: Vec<i64> = match patch_mask {
            Some(mask) if !full => mask
                .chunks(per_tile)
                .flat_map(|tile| navit_position_ids(tile, gh, gw, grid))
                .collect(),
            _ => {
                let all = vec![true; per_tile];
                let one = navit_position_ids(&all, gh, gw, grid);
                (0..n).flat_map(|_| one.iter().copied()).collect()
            }
        };
        let position_ids =
            Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [n, per_tile]), &device);
        let mask = match patch_mask {
            Some(m) if !full => AttentionMask::key_padding(m),
            _ => AttentionMask::none(),
        };
        let forward = dropout::next_forward();
        let runner = crate::recompute::active_runner::<B>();
        let layers = &self.encoder.layers;
        let every = runner.as_ref().map_or(layers.len(), |r| r.segment_len());
        let mut h = self.embeddings.forward(pixels, position_ids);
        let mut start = 0;
        while start < layers.len() {
            let end = (start + every.max(1)).min(layers.len());
            let seeds: Vec<u64> = (start..end)
                .map(|i| dropout::layer_seed(forward, dropout::Stack::Vision, i))
                .collect();
            h = match &runner {
                Some(r) => r.encoder_segment(&layers[start..end], &seeds, h, &mask),
                None => run_encoder_layers(&layers[start..end], &seeds, h, &mask),
            };
            start = end;
        }
        self.post_layernorm.forward(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_tiles_get_arange_ids() {
        for g in [4usize, 8, 26, 27, 32] {
            let ids = navit_position_ids(&vec![true; g * g], g, g, g);
            assert_eq!(ids, (0..(g * g) as i64).collect::<Vec<_>>(), "G = {g}");
        }
    }

    #[test]
    fn partial_tiles_spread_over_the_grid() {
        // 4x4 grid, top-left 2x3 patches real: rows bucket(i/2), cols bucket(j/3).
        let mut mask = vec![false; 16];
        for r in 0..2 {
            for c in 0..3 {
                mask[r * 4 + c] = true;
            }
        }
        let ids = navit_position_ids(&mask, 4, 4, 4);
        // rows 0,1 -> frac 0, 0.5 -> buckets 0, 2; cols 0,1,2 -> 0, 1/3, 2/3 -> 0, 1, 2
        assert_eq!(&ids[0..4], &[0, 1, 2, 0]);
        assert_eq!(&ids[4..8], &[8, 9, 10, 0]);
        assert!(ids[8..].iter().all(|i| *i == 0));
    }
}
