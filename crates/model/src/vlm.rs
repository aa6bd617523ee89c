//! `SmolVLMForConditionalGeneration` / `Idefics3ForConditionalGeneration`: vision tower,
//! connector, text model and LM head, with image features scattered into `<image>` positions
//! (SPEC §3).

use burn::module::{AutodiffModule, Module};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use vlmtune_peft::Linear;
use vlmtune_quant::{RandomInit, Weights};

use crate::config::VlmConfig;
use crate::connector::Connector;
use crate::error::{ModelError, Result};
use crate::recompute::any_trainable;
use crate::text::{KvCache, TextContext, TextModel};
use crate::vision::VisionTransformer;

/// Token ids of a batch, row-major `[batch_size, seq_len]`, as the processor returns them.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct TokenBatch {
    /// Token ids.
    pub input_ids: Vec<u32>,
    /// 1 for real tokens, 0 for padding.
    pub attention_mask: Vec<u8>,
    /// Rows.
    pub batch_size: usize,
    /// Columns.
    pub seq_len: usize,
}

impl TokenBatch {
    /// A batch from equal-length rows with no padding.
    pub fn from_rows(rows: &[Vec<u32>]) -> Result<Self> {
        let seq_len = rows.first().map(Vec::len).unwrap_or(0);
        if rows.iter().any(|r| r.len() != seq_len) {
            return Err(ModelError::Input(
                "rows of a token batch differ in length".into(),
            ));
        }
        Ok(Self {
            input_ids: rows.concat(),
            attention_mask: vec![1; rows.len() * seq_len],
            batch_size: rows.len(),
            seq_len,
        })
    }

    fn check(&self) -> Result<()> {
        let n = self.batch_size * self.seq_len;
        if self.input_ids.len() != n || self.attention_mask.len() != n {
            return Err(ModelError::Input(format!(
                "token batch {}x{} has {} ids and {} mask values",
                self.batch_size,
                self.seq_len,
                self.input_ids.len(),
                self.attention_mask.len()
            )));
        }
        Ok(())
    }

    /// `arange(seq_len)` per row: transformers' default position ids for a forward pass
    /// (they do not shift for left padding).
    pub fn default_position_ids(&self) -> Vec<i64> {
        (0..self.batch_size)
            .flat_map(|_| 0..self.seq_len as i64)
            .collect()
    }
}

/// Pixels of a batch, `[batch, max_images, channels, height, width]`, with the pixel mask
/// `[batch, max_images, height, width]` (1 = real pixel). All-zero tiles are padding.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct PixelBatch {
    /// Row-major pixel values.
    pub pixel_values: Vec<f32>,
    /// `[batch, max_images, channels, height, width]`.
    pub shape: [usize; 5],
    /// Row-major pixel mask, when the processor returned one.
    pub pixel_attention_mask: Option<Vec<u8>>,
}

/// Image features of the real tiles of a batch, `[n_real_tiles, image_seq_len, Dt]`, in
/// sample-major tile order.
#[derive(Clone, Debug)]
pub struct ImageFeatures<B: Backend> {
    /// The connector output.
    pub features: Tensor<B, 3>,
    /// Real tiles of each sample.
    pub tiles_per_sample: Vec<usize>,
}

/// The model body: vision tower, connector and text model (`model.*` keys).
#[derive(Module, Debug)]
pub struct SmolVlmModel<B: Backend> {
    /// SigLIP encoder.
    pub vision_model: VisionTransformer<B>,
    /// Pixel shuffle + projection.
    pub connector: Connector<B>,
    /// Llama decoder.
    pub text_model: TextModel<B>,
}

/// The whole vision-language model with its LM head.
#[derive(Module, Debug)]
pub struct SmolVlm<B: Backend> {
    /// `model.*`.
    pub model: SmolVlmModel<B>,
    /// `lm_head` (`None` when tied to `embed_tokens`).
    pub lm_head: Option<Linear<B>>,
    /// The checkpoint's config.
    #[module(skip)]
    pub config: VlmConfig,
}

impl<B: Backend> SmolVlm<B> {
    /// Builds the model from `w` (a checkpoint or random initialisation), by HF key.
    pub fn load(w: &Weights<B>, config: &VlmConfig) -> Result<Self> {
        config.validate("config")?;
        let m = w.pp("model");
        let text = &config.text_config;
        let lm_head = if config.tied_embeddings() {
            None
        } else {
            Some(Linear::load(
                &w.pp("lm_head"),
                text.hidden_size,
                text.vocab_size,
                false,
            )?)
        };
        Ok(Self {
            model: SmolVlmModel {
                vision_model: VisionTransformer::load(
                    &m.pp("vision_model"),
                    &config.vision_config,
                )?,
                connector: Connector::load(&m.pp("connector"), config)?,
                text_model: TextModel::load(&m.pp("text_model"), text)?,
            },
            lm_head,
            config: config.clone(),
        })
    }

    /// A randomly initialised model (seeded), e.g. from a preset.
    pub fn init(config: &VlmConfig, seed: u64, device: &B::Device) -> Result<Self> {
        let source = RandomInit::new(seed);
        Self::load(&Weights::new(&source, device), config)
    }

    /// The config.
    pub fn config(&self) -> &VlmConfig {
        &self.config
    }

    /// The device the weights live on.
    pub fn device(&self) -> B::Device {
        self.model.text_model.norm.weight.val().device()
    }

    /// Encodes the real tiles of `pixels` through the vision tower and the connector.
    ///
    /// A tile whose values are all exactly 0 is padding and is skipped. For `smolvlm`
    /// checkpoints a batch with no real tile keeps tile 0, as transformers does.
    /// Returns `None` when no tile is real.
    pub fn encode_images(&self, pixels: &PixelBatch) -> Result<Option<ImageFeatures<B>>> {
        let feats = self.encode_vision(pixels)?;
        Ok(feats.map(|(vision, tiles)| ImageFeatures {
            features: self.model.connector.forward(vision),
            tiles_per_sample: tiles,
        }))
    }

    /// The vision tower output `[n_real, P, Dv]` of the real tiles and the real tiles per
    /// sample (see [`Self::encode_images`]).
    pub fn encode_vision(&self, pixels: &PixelBatch) -> Result<Option<(Tensor<B, 3>, Vec<usize>)>> {
        let Some(input) = self.vision_input(pixels)? else {
            return Ok(None);
        };
        let vision = input.run(&self.model.vision_model, &self.device(), |v| v);
        Ok(Some((vision, input.tiles_per_sample)))
    }

    /// The real tiles of `pixels` and their patch masks, on the host.
    fn vision_input<'a>(&self, pixels: &'a PixelBatch) -> Result<Option<VisionInput<'a>>> {
        let [batch, max_images, channels, height, width] = pixels.shape;
        let tile_len = channels * height * width;
        if pixels.pixel_values.len() != batch * max_images * tile_len {
            return Err(ModelError::Input(format!(
                "pixel_values has {} values but shape {:?}",
                pixels.pixel_values.len(),
                pixels.shape
            )));
        }
        let mut real: Vec<bool> = pixels
            .pixel_values
            .chunks(tile_len.max(1))
            .map(|tile| tile.iter().any(|v| *v != 0.0))
            .collect();
        if self.config().model_type == "smolvlm" && !real.iter().any(|r| *r) && !real.is_empty() {
            real[0] = true;
        }
        let n_real = real.iter().filter(|r| **r).count();
        if n_real == 0 {
            return Ok(None);
        }
        let tiles: Vec<&[f32]> = pixels
            .pixel_values
            .chunks(tile_len)
            .zip(&real)
            .filter_map(|(tile, keep)| keep.then_some(tile))
            .collect();
        let tiles_per_sample = real
            .chunks(max_images)
            .map(|s| s.iter().filter(|r| **r).count())
            .collect();
        let p = self.config().vision_config.patch_size;
        let (gh, gw) = (height / p, width / p);
        let patch_mask = match &pixels.pixel_attention_mask {
            None => None,
            Some(mask) => {
                let plane = height * width;
                if mask.len() != batch * max_images * plane {
                    return Err(ModelError::Input(format!(
                        "pixel_attention_mask has {} values, expected {}",
                        mask.len(),
                        batch * max_images * plane
                    )));
                }
                let mut patch = Vec::with_capacity(n_real * gh * gw);
                for (tile, keep) in mask.chunks(plane).zip(&real) {
                    if *keep {
                        patch.extend(patch_mask_of_tile(tile, width, p, gh, gw));
                    }
                }
                Some(patch)
            }
        };
        Ok(Some(VisionInput {
            tiles,
            shape: [n_real, channels, height, width],
            patch_mask,
            tiles_per_sample,
        }))
    }

    /// Token embeddings `[batch, seq, Dt]` with `<image>` positions replaced, in row-major
    /// order, by the rows of `features` (`[n_tiles, image_seq_len, Dt]`).
    pub fn embed(
        &self,
        tokens: &TokenBatch,
        features: Option<&Tensor<B, 3>>,
    ) -> Result<Tensor<B, 3>> {
        tokens.check()?;
        let device = self.device();
        let (b, l) = (tokens.batch_size, tokens.seq_len);
        let ids = Tensor::<B, 2, Int>::from_data(
            TensorData::new(
                tokens
                    .input_ids
                    .iter()
                    .map(|i| *i as i64)
                    .collect::<Vec<_>>(),
                [b, l],
            ),
            &device,
        );
        let embeds = self.model.text_model.embed_tokens.forward(ids);
        let image_id = self.config().image_token_id;
        let n_image_tokens = tokens.input_ids.iter().filter(|t| **t == image_id).count();
        let n_features = features.map(|f| f.dims()[0] * f.dims()[1]).unwrap_or(0);
        if n_image_tokens != n_features {
            return Err(ModelError::Input(format!(
                "the text has {n_image_tokens} <image> tokens but the images give {n_features} feature rows \
                 (real tiles x image_seq_len {})",
                self.config().image_seq_len()
            )));
        }
        let Some(features) = features else {
            return Ok(embeds);
        };
        let dt = embeds.dims()[2];
        let mut next_feature = b * l;
        let index: Vec<i64> = tokens
            .input_ids
            .iter()
            .enumerate()
            .map(|(pos, id)| {
                if *id == image_id {
                    next_feature += 1;
                    (next_feature - 1) as i64
                } else {
                    pos as i64
                }
            })
            .collect();
        let table = Tensor::cat(
            vec![
                embeds.reshape([b * l, dt]),
                features.clone().reshape([n_features, dt]),
            ],
            0,
        );
        let index = Tensor::<B, 1, Int>::from_data(TensorData::new(index, [b * l]), &device);
        Ok(table.select(0, index).reshape([b, l, dt]))
    }

    /// Runs the text model on `tokens` (with image features merged), continuing `cache`.
    ///
    /// `position_ids` default to `arange(seq_len)` per row. `attention_mask` of `tokens` covers
    /// only the new tokens; the cached positions are taken as real unless `past_mask` says
    /// otherwise (`[batch, past_len]`).
    pub fn forward_hidden(
        &self,
        tokens: &TokenBatch,
        features: Option<&Tensor<B, 3>>,
        position_ids: Option<&[i64]>,
        cache: Option<&KvCache<B>>,
        past_mask: Option<&[u8]>,
    ) -> Result<(Tensor<B, 3>, KvCache<B>)> {
        self.run_text(tokens, features, position_ids, cache, past_mask, true)
    }

    /// [`Self::forward_hidden`] without returning (or, under gradient checkpointing,
    /// keeping) the extended KV cache: what a training forward needs.
    pub fn hidden_states(
        &self,
        tokens: &TokenBatch,
        features: Option<&Tensor<B, 3>>,
        position_ids: Option<&[i64]>,
        cache: Option<&KvCache<B>>,
        past_mask: Option<&[u8]>,
    ) -> Result<Tensor<B, 3>> {
        self.run_text(tokens, features, position_ids, cache, past_mask, false)
            .map(|(hidden, _)| hidden)
    }

    fn run_text(
        &self,
        tokens: &TokenBatch,
        features: Option<&Tensor<B, 3>>,
        position_ids: Option<&[i64]>,
        cache: Option<&KvCache<B>>,
        past_mask: Option<&[u8]>,
        use_cache: bool,
    ) -> Result<(Tensor<B, 3>, KvCache<B>)> {
        let embeds = self.embed(tokens, features)?;
        let default_positions;
        let position_ids = match position_ids {
            Some(p) => p,
            None => {
                default_positions = tokens.default_position_ids();
                &default_positions
            }
        };
        let past = cache.map(KvCache::len).unwrap_or(0);
        let full_mask: Vec<u8> = if past == 0 {
            tokens.attention_mask.clone()
        } else {
            let past_mask = past_mask
                .map(<[u8]>::to_vec)
                .unwrap_or_else(|| vec![1; tokens.batch_size * past]);
            if past_mask.len() != tokens.batch_size * past {
                return Err(ModelError::Input(format!(
                    "past mask has {} values, expected {}",
                    past_mask.len(),
                    tokens.batch_size * past
                )));
            }
            (0..tokens.batch_size)
                .flat_map(|r| {
                    past_mask[r * past..(r + 1) * past]
                        .iter()
                        .chain(&tokens.attention_mask[r * tokens.seq_len..(r + 1) * tokens.seq_len])
                        .copied()
                        .collect::<Vec<u8>>()
                })
                .collect()
        };
        Ok(self.model.text_model.forward(
            embeds,
            TextContext {
                position_ids,
                attention_mask: &full_mask,
                cache,
                use_cache,
            },
        ))
    }

    /// Projects hidden states `[batch, seq, Dt]` to logits `[batch, seq, V]`.
    pub fn lm_head(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        match &self.lm_head {
            Some(head) => head.forward(hidden),
            None => {
                let [b, l, d] = hidden.dims();
                let table = self.model.text_model.embed_tokens.weight.val();
                let v = table.dims()[0];
                vlmtune_kernels::linear(hidden.reshape([b * l, d]), table).reshape([b, l, v])
            }
        }
    }

    /// Logits `[batch, seq, V]` of a batch with optional images: the full forward of
    /// `SmolVLMForConditionalGeneration`.
    pub fn forward(
        &self,
        tokens: &TokenBatch,
        pixels: Option<&PixelBatch>,
    ) -> Result<Tensor<B, 3>> {
        let features = match pixels {
            Some(p) => self.encode_images(p)?,
            None => None,
        };
        let hidden = self.hidden_states(
            tokens,
            features.as_ref().map(|f| &f.features),
            None,
            None,
            None,
        )?;
        Ok(self.lm_head(hidden))
    }
}

/// The real tiles of a pixel batch (borrowed), ready for the vision tower.
struct VisionInput<'a> {
    tiles: Vec<&'a [f32]>,
    shape: [usize; 4],
    patch_mask: Option<Vec<bool>>,
    tiles_per_sample: Vec<usize>,
}

/// Patches the vision tower encodes at once: tiles do not attend to each other, so a
/// many-tile image (17 at the default 2048-px edge) runs in chunks of this many patches,
/// bounding the working set (a frozen tower's transient activations; under gradient
/// checkpointing, the segment being recomputed).
const VISION_CHUNK_PATCHES: usize = 1024;

impl VisionInput<'_> {
    /// The tower's output `[n_real, P, Dv]` on `tower`'s backend, in chunks of tiles, each
    /// chunk's output passed through `then` before the chunks are joined.
    fn run<B2: Backend>(
        &self,
        tower: &VisionTransformer<B2>,
        device: &B2::Device,
        then: impl Fn(Tensor<B2, 3>) -> Tensor<B2, 3>,
    ) -> Tensor<B2, 3> {
        let [n, channels, height, width] = self.shape;
        let p = tower.embeddings.patch_size;
        let patches = (height / p) * (width / p);
        let per_chunk = (VISION_CHUNK_PATCHES / patches.max(1)).max(1);
        let mut parts = Vec::with_capacity(n.div_ceil(per_chunk));
        for start in (0..n).step_by(per_chunk) {
            let end = (start + per_chunk).min(n);
            let values = self.tiles[start..end].concat();
            let pixels = Tensor::<B2, 4>::from_data(
                TensorData::new(values, [end - start, channels, height, width]),
                device,
            );
            let mask = self
                .patch_mask
                .as_ref()
                .map(|m| &m[start * patches..end * patches]);
            parts.push(then(tower.forward(pixels, mask)));
        }
        if parts.len() == 1 {
            parts.remove(0)
        } else {
            Tensor::cat(parts, 0)
        }
    }
}

impl<B: AutodiffBackend> SmolVlm<B> {
    /// Whether any parameter of the vision tower receives gradients (it is trained, or
    /// carries an adapter).
    pub fn vision_is_trainable(&self) -> bool {
        any_trainable([&self.model.vision_model])
    }

    /// Whether any parameter of the connector receives gradients.
    pub fn connector_is_trainable(&self) -> bool {
        any_trainable([&self.model.connector])
    }

    /// [`Self::encode_vision`] for a training step: when nothing in the vision tower trains,
    /// the tower runs on the inner backend, so no autodiff graph is built for it and nothing
    /// is kept for a backward that would reach no parameter.
    pub fn encode_vision_for_training(
        &self,
        pixels: &PixelBatch,
    ) -> Result<Option<(Tensor<B, 3>, Vec<usize>)>> {
        if self.vision_is_trainable() {
            return self.encode_vision(pixels);
        }
        self.run_frozen_tower(pixels, |v| v)
    }

    /// [`Self::encode_images`] with the vision tower as [`Self::encode_vision_for_training`]
    /// runs it. When the connector is frozen too, it runs on the inner backend with the
    /// tower, one chunk of tiles at a time, so only the small connector output of each chunk
    /// is kept rather than the tower's output for every tile (51 MiB for 17 tiles, twice over
    /// while the chunks are joined).
    pub fn encode_images_for_training(
        &self,
        pixels: &PixelBatch,
    ) -> Result<Option<ImageFeatures<B>>> {
        if self.vision_is_trainable() {
            return self.encode_images(pixels);
        }
        let encoded = if self.connector_is_trainable() {
            self.run_frozen_tower(pixels, |v| v)?
                .map(|(vision, tiles)| (self.model.connector.forward(vision), tiles))
        } else {
            let connector = self.model.connector.valid();
            self.run_frozen_tower(pixels, |v| connector.forward(v))?
        };
        Ok(encoded.map(|(features, tiles_per_sample)| ImageFeatures {
            features,
            tiles_per_sample,
        }))
    }

    /// The frozen vision tower on the inner backend (no graph), each chunk of tiles' output
    /// passed through `then`; the result as a fresh leaf, with the real tiles per sample.
    fn run_frozen_tower(
        &self,
        pixels: &PixelBatch,
        then: impl Fn(Tensor<B::InnerBackend, 3>) -> Tensor<B::InnerBackend, 3>,
    ) -> Result<Option<(Tensor<B, 3>, Vec<usize>)>> {
        let Some(input) = self.vision_input(pixels)? else {
            return Ok(None);
        };
        let tower = self.model.vision_model.valid();
        let device = tower.post_layernorm.weight.val().device();
        let out = input.run(&tower, &device, then);
        Ok(Some((Tensor::from_inner(out), input.tiles_per_sample)))
    }
}

/// Patch mask of one tile: a patch is real when any pixel of its `p×p` block is.
fn patch_mask_of_tile(mask: &[u8], width: usize, p: usize, gh: usize, gw: usize) -> Vec<bool> {
    let mut out = Vec::with_capacity(gh * gw);
    for r in 0..gh {
        for c in 0..gw {
            let any = (0..p).any(|dy| {
                let row = (r * p + dy) * width + c * p;
                mask[row..row + p].iter().any(|m| *m != 0)
            });
            out.push(any);
        }
    }
    out
}
