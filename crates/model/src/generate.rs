//! Text generation with a KV cache: greedy, or sampling with temperature / top-k / top-p and a
//! seed, stopping at end-of-sequence or `max_new_tokens`, as `model.generate` does.

use burn::tensor::backend::Backend;
use rand::{RngExt, SeedableRng};

use crate::error::{ModelError, Result};
use crate::vlm::{PixelBatch, SmolVlm, TokenBatch};

/// Decoding settings (transformers' `GenerationConfig` names).
#[derive(Clone, Debug, PartialEq)]
pub struct GenerationConfig {
    /// Most tokens to add per row.
    pub max_new_tokens: usize,
    /// Sample when set (`do_sample=True, temperature=t`); greedy when `None`.
    pub temperature: Option<f32>,
    /// Keep only the `k` most likely tokens when sampling.
    pub top_k: Option<usize>,
    /// Keep the smallest set of tokens whose probability reaches `p` when sampling.
    pub top_p: Option<f32>,
    /// Seed of the sampler.
    pub seed: u64,
    /// Tokens that end a row.
    pub eos_token_ids: Vec<u32>,
    /// Token written after a row has ended.
    pub pad_token_id: u32,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: 20,
            temperature: None,
            top_k: None,
            top_p: None,
            seed: 0,
            eos_token_ids: vec![],
            pad_token_id: 0,
        }
    }
}

impl GenerationConfig {
    /// Greedy settings with the end-of-sequence and padding ids of a checkpoint folder:
    /// `generation_config.json` when present (as `model.generate` uses it), else `config`.
    pub fn for_checkpoint(
        dir: Option<&std::path::Path>,
        config: &crate::VlmConfig,
    ) -> Result<Self> {
        let mut out = Self {
            eos_token_ids: config.eos_token_ids(),
            pad_token_id: config.text_config.pad_token_id.unwrap_or(0),
            ..Self::default()
        };
        let Some(path) = dir
            .map(|d| d.join("generation_config.json"))
            .filter(|p| p.is_file())
        else {
            return Ok(out);
        };
        let text = std::fs::read_to_string(&path).map_err(|source| ModelError::Io {
            path: path.clone(),
            source,
        })?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| ModelError::Config {
                file: path.display().to_string(),
                field: String::new(),
                message: e.to_string(),
            })?;
        if let Some(eos) = json.get("eos_token_id") {
            let ids: crate::config::TokenIds =
                serde_json::from_value(eos.clone()).map_err(|e| ModelError::Config {
                    file: path.display().to_string(),
                    field: "eos_token_id".into(),
                    message: e.to_string(),
                })?;
            out.eos_token_ids = ids.to_vec();
        }
        if let Some(pad) = json.get("pad_token_id").and_then(serde_json::Value::as_u64) {
            out.pad_token_id = pad as u32;
        }
        Ok(out)
    }
}

/// What generation produced.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerationOutput {
    /// New tokens per row, up to and including the end-of-sequence token.
    pub tokens: Vec<Vec<u32>>,
    /// Whether each row stopped at an end-of-sequence token.
    pub finished: Vec<bool>,
}

impl GenerationOutput {
    /// The rows padded with `pad` to the longest, as transformers returns them.
    pub fn padded(&self, pad: u32) -> Vec<Vec<u32>> {
        let width = self.tokens.iter().map(Vec::len).max().unwrap_or(0);
        self.tokens
            .iter()
            .map(|row| {
                let mut r = row.clone();
                r.resize(width, pad);
                r
            })
            .collect()
    }
}

/// Generates continuations of `tokens` (left-padded rows) with optional images.
///
/// Position ids follow `generate`: `cumsum(attention_mask) - 1`, 0 on padding, then one more
/// per new token; images are encoded once, in the first (prefill) step.
pub fn generate<B: Backend>(
    model: &SmolVlm<B>,
    tokens: &TokenBatch,
    pixels: Option<&PixelBatch>,
    config: &GenerationConfig,
) -> Result<GenerationOutput> {
    if let Some(t) = config.temperature {
        if !(t > 0.0 && t.is_finite()) {
            return Err(ModelError::Input(format!(
                "temperature must be positive, got {t}"
            )));
        }
    }
    if let Some(p) = config.top_p {
        if !(p > 0.0 && p <= 1.0) {
            return Err(ModelError::Input(format!(
                "top_p must be in (0, 1], got {p}"
            )));
        }
    }
    let (batch, seq) = (tokens.batch_size, tokens.seq_len);
    let mut rng = rand::rngs::StdRng::seed_from_u64(config.seed);
    let mut positions: Vec<i64> = Vec::with_capacity(batch * seq);
    for row in tokens.attention_mask.chunks(seq.max(1)) {
        let mut count = 0i64;
        for m in row {
            count += i64::from(*m);
            positions.push(if *m == 0 { 0 } else { count - 1 });
        }
    }
    let features = match pixels {
        Some(p) => model.encode_images(p)?,
        None => None,
    };
    let (hidden, mut cache) = model.forward_hidden(
        tokens,
        features.as_ref().map(|f| &f.features),
        Some(&positions),
        None,
        None,
    )?;
    let mut past_mask = tokens.attention_mask.clone();
    let mut last_pos: Vec<i64> = (0..batch)
        .map(|r| {
            positions[r * seq..(r + 1) * seq]
                .iter()
                .copied()
                .max()
                .unwrap_or(-1)
        })
        .collect();
    let mut logits = last_logits(model, hidden)?;
    let mut out = vec![Vec::new(); batch];
    let mut finished = vec![false; batch];
    for step in 0..config.max_new_tokens {
        let vocab = logits.len() / batch;
        let mut next = Vec::with_capacity(batch);
        for (r, row) in logits.chunks(vocab).enumerate() {
            let token = if finished[r] {
                config.pad_token_id
            } else {
                choose(row, config, &mut rng)
            };
            if !finished[r] {
                out[r].push(token);
                if config.eos_token_ids.contains(&token) {
                    finished[r] = true;
                }
            }
            next.push(token);
        }
        if finished.iter().all(|f| *f) || step + 1 == config.max_new_tokens {
            break;
        }
        let step_tokens = TokenBatch {
            input_ids: next,
            attention_mask: vec![1; batch],
            batch_size: batch,
            seq_len: 1,
        };
        for p in &mut last_pos {
            *p += 1;
        }
        let (hidden, new_cache) = model.forward_hidden(
            &step_tokens,
            None,
            Some(&last_pos),
            Some(&cache),
            Some(&past_mask),
        )?;
        cache = new_cache;
        past_mask = past_mask
            .chunks(past_mask.len() / batch)
            .flat_map(|row| {
                row.iter()
                    .copied()
                    .chain(std::iter::once(1u8))
                    .collect::<Vec<_>>()
            })
            .collect();
        logits = last_logits(model, hidden)?;
    }
    Ok(GenerationOutput {
        tokens: out,
        finished,
    })
}

/// Logits of the last position of each row, row-major `[batch, V]`, on the host.
fn last_logits<B: Backend>(
    model: &SmolVlm<B>,
    hidden: burn::tensor::Tensor<B, 3>,
) -> Result<Vec<f32>> {
    let [_, seq, _] = hidden.dims();
    let last = hidden.narrow(1, seq - 1, 1);
    model
        .lm_head(last)
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .map_err(|e| ModelError::Readback(format!("{e:?}")))
}

/// Picks the next token of one row: arg-max (first on ties, like `torch.argmax`), or a draw
/// after temperature, top-k and top-p filtering (in transformers' warper order).
pub fn choose(logits: &[f32], config: &GenerationConfig, rng: &mut impl rand::Rng) -> u32 {
    let Some(temperature) = config.temperature else {
        return argmax(logits);
    };
    let mut scores: Vec<f32> = logits.iter().map(|l| l / temperature).collect();
    if let Some(k) = config.top_k.filter(|k| *k > 0 && *k < scores.len()) {
        let mut sorted = scores.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        let threshold = sorted[k - 1];
        for s in &mut scores {
            if *s < threshold {
                *s = f32::NEG_INFINITY;
            }
        }
    }
    if let Some(p) = config.top_p.filter(|p| *p < 1.0) {
        let probs = softmax(&scores);
        let mut order: Vec<usize> = (0..scores.len()).collect();
        order.sort_by(|a, b| scores[*a].total_cmp(&scores[*b]));
        let mut cumulative = 0.0f32;
        let last = order.len() - 1;
        for (rank, idx) in order.iter().enumerate() {
            cumulative += probs[*idx];
            if cumulative <= 1.0 - p && rank != last {
                scores[*idx] = f32::NEG_INFINITY;
            }
        }
    }
    let probs = softmax(&scores);
    let draw: f32 = rng.random::<f32>();
    let mut acc = 0.0f32;
    for (i, p) in probs.iter().enumerate() {
        acc += p;
        if draw < acc {
            return i as u32;
        }
    }
    argmax(&probs)
}

fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best as u32
}

fn softmax(scores: &[f32]) -> Vec<f32> {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    exp.iter().map(|e| e / sum).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_first_maximum() {
        let cfg = GenerationConfig::default();
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        assert_eq!(choose(&[0.1, 3.0, 3.0, -1.0], &cfg, &mut rng), 1);
    }

    #[test]
    fn top_k_one_is_greedy_and_sampling_is_seeded() {
        let logits = [0.5f32, 2.0, 1.0, 1.9];
        let cfg = GenerationConfig {
            temperature: Some(1.0),
            top_k: Some(1),
            ..Default::default()
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for _ in 0..20 {
            assert_eq!(choose(&logits, &cfg, &mut rng), 1);
        }
        let cfg = GenerationConfig {
            temperature: Some(1.0),
            ..Default::default()
        };
        let draw = |seed| {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            (0..50)
                .map(|_| choose(&logits, &cfg, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(5), draw(5));
        // Frequencies follow softmax(logits): token 1 ~ 0.38, token 0 ~ 0.085.
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let mut counts = [0usize; 4];
        for _ in 0..20000 {
            counts[choose(&logits, &cfg, &mut rng) as usize] += 1;
        }
        let p = softmax(&logits);
        for (c, p) in counts.iter().zip(p) {
            assert!((*c as f32 / 20000.0 - p).abs() < 0.015, "{counts:?}");
        }
    }

    #[test]
    fn top_p_keeps_the_nucleus() {
        // probs ~ [0.64, 0.24, 0.09, 0.03]: top_p 0.7 keeps tokens 0 and 1 only.
        let logits = [3.0f32, 2.0, 1.0, 0.0];
        let cfg = GenerationConfig {
            temperature: Some(1.0),
            top_p: Some(0.7),
            ..Default::default()
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut seen = [false; 4];
        for _ in 0..2000 {
            seen[choose(&logits, &cfg, &mut rng) as usize] = true;
        }
        assert_eq!(seen, [true, true, false, false]);
    }
}
