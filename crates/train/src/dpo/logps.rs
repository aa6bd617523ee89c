//! Sequence log-probabilities of preference pairs: TRL's layout (every row with its own
//! prompt and images) and the shared-prefix layout (image and prompt once per pair, both
//! answers from its KV cache).

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use vlmtune_data::preference::{EncodedPair, PreferenceBatch};
use vlmtune_data::processor::stack_pixels;
use vlmtune_model::loss::{target_log_probs, ShiftedTargets, IGNORE_INDEX};
use vlmtune_model::{PixelBatch, SmolVlm, TokenBatch};

use crate::error::{Result, TrainError};

/// Sequence log-probabilities of a batch, rows `[chosen_0.., rejected_0..]`.
pub struct SequenceLogps<B: Backend> {
    /// `Σ_t log p(completion_t)` per row, `[2N]`.
    pub logps: Tensor<B, 1>,
    /// Completion lengths per row.
    pub lengths: Vec<usize>,
    /// Per-token log-probabilities of each row.
    pub token_logps: Vec<Tensor<B, 1>>,
    /// Per row: (Σ over tokens of the mean logit, tokens, arg-max hits).
    pub stats: Vec<(f64, usize, usize)>,
}

pub(crate) fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Result<Vec<f32>> {
    t.into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .map_err(|e| TrainError::Readback(format!("{e:?}")))
}

fn pixels_of(
    images: impl Iterator<Item = Vec<vlmtune_data::processor::ProcessedImage>> + Clone,
) -> Option<PixelBatch> {
    let owned: Vec<Vec<_>> = images.collect();
    stack_pixels(owned.iter().map(Vec::as_slice)).map(|p| PixelBatch {
        pixel_values: p.values,
        shape: p.shape,
        pixel_attention_mask: Some(p.pixel_attention_mask),
    })
}

/// Per row: mean logit, correctly predicted targets, targets.
type RowStats = (f64, usize, usize);

/// Log-probabilities of `rows` ([n, D] hidden states, one per target) for `targets`, split
/// into rows of `lengths`.
fn score_rows<B: Backend>(
    model: &SmolVlm<B>,
    hidden: Tensor<B, 2>,
    targets: &[i64],
    lengths: &[usize],
) -> Result<(Vec<Tensor<B, 1>>, Vec<RowStats>)> {
    let logits: Tensor<B, 2> = model.lm_head(hidden.unsqueeze_dim(0)).squeeze_dim(0);
    let mean_logits = host(logits.clone().detach().mean_dim(1))?;
    let predicted: Vec<i64> = logits
        .clone()
        .detach()
        .argmax(1)
        .into_data()
        .convert::<i64>()
        .to_vec::<i64>()
        .map_err(|e| TrainError::Readback(format!("{e:?}")))?;
    let logps = target_log_probs(logits, targets);
    let mut rows = Vec::with_capacity(lengths.len());
    let mut stats = Vec::with_capacity(lengths.len());
    let mut start = 0;
    for &len in lengths {
        rows.push(logps.clone().narrow(0, start, len));
        let hits = (start..start + len)
            .filter(|&i| predicted[i] == targets[i])
            .count();
        stats.push((
            mean_logits[start..start + len]
                .iter()
                .map(|v| f64::from(*v))
                .sum(),
            len,
            hits,
        ));
        start += len;
    }
    Ok((rows, stats))
}

fn finish<B: Backend>(
    rows: Vec<Tensor<B, 1>>,
    lengths: Vec<usize>,
    stats: Vec<(f64, usize, usize)>,
) -> SequenceLogps<B> {
    let sums: Vec<Tensor<B, 1>> = rows.iter().map(|r| r.clone().sum()).collect();
    SequenceLogps {
        logps: Tensor::cat(sums, 0),
        lengths,
        token_logps: rows,
        stats,
    }
}

/// TRL's layout: `[chosen rows; rejected rows]`, each row prompt + answer, right-padded,
/// with its own copy of the images.
pub fn plain_logps<B: Backend>(
    model: &SmolVlm<B>,
    batch: &PreferenceBatch,
    features: Option<Tensor<B, 3>>,
) -> Result<SequenceLogps<B>> {
    let pairs = &batch.pairs;
    let rows: Vec<(&EncodedPair, &Vec<u32>)> = pairs
        .iter()
        .map(|p| (p, &p.chosen_ids))
        .chain(pairs.iter().map(|p| (p, &p.rejected_ids)))
        .collect();
    let width = rows
        .iter()
        .map(|(p, c)| p.prompt_ids.len() + c.len())
        .max()
        .unwrap_or(0);
    let mut tokens = TokenBatch {
        batch_size: rows.len(),
        seq_len: width,
        ..TokenBatch::default()
    };
    let mut labels = Vec::with_capacity(rows.len() * width);
    for (p, c) in &rows {
        let pad = width - p.prompt_ids.len() - c.len();
        tokens.input_ids.extend(
            p.prompt_ids
                .iter()
                .chain(c.iter())
                .copied()
                .chain(std::iter::repeat_n(0, pad)),
        );
        tokens
            .attention_mask
            .extend(std::iter::repeat_n(1u8, width - pad).chain(std::iter::repeat_n(0, pad)));
        labels.extend(std::iter::repeat_n(IGNORE_INDEX, p.prompt_ids.len()));
        labels.extend(c.iter().map(|t| i64::from(*t)));
        labels.extend(std::iter::repeat_n(IGNORE_INDEX, pad));
    }
    let features = match features {
        Some(f) => Some(f),
        None => match pixels_of(rows.iter().map(|(p, _)| p.images.clone())) {
            Some(px) => model.encode_images(&px)?.map(|f| f.features),
            None => None,
        },
    };
    let hidden = model.hidden_states(&tokens, features.as_ref(), None, None, None)?;
    let shifted = ShiftedTargets::from_labels(&labels, rows.len(), width)?;
    let lengths: Vec<usize> = rows.iter().map(|(_, c)| c.len()).collect();
    let (token_rows, stats) = score_rows(
        model,
        shifted.select_rows(hidden),
        &shifted.targets,
        &lengths,
    )?;
    Ok(finish(token_rows, lengths, stats))
}

/// Image features of every pair (one copy per pair), in pair order, per pair.
pub(crate) fn pair_features<B: Backend>(
    model: &SmolVlm<B>,
    pair: &EncodedPair,
) -> Result<Option<Tensor<B, 3>>> {
    match pixels_of(std::iter::once(pair.images.clone())) {
        Some(px) => Ok(model.encode_images(&px)?.map(|f| f.features)),
        None => Ok(None),
    }
}

/// Shared-prefix layout: per pair, the image and prompt once, then both answers from the
/// prompt's KV cache. `features[i]` overrides pair `i`'s image features.
pub fn shared_prefix_logps<B: Backend>(
    model: &SmolVlm<B>,
    batch: &PreferenceBatch,
    features: Option<Vec<Option<Tensor<B, 3>>>>,
) -> Result<SequenceLogps<B>> {
    let n = batch.pairs.len();
    let mut chosen_rows = Vec::with_capacity(n);
    let mut rejected_rows = Vec::with_capacity(n);
    let mut chosen_stats = Vec::with_capacity(n);
    let mut rejected_stats = Vec::with_capacity(n);
    for (i, pair) in batch.pairs.iter().enumerate() {
        let f = match &features {
            Some(list) => list.get(i).cloned().flatten(),
            None => pair_features(model, pair)?,
        };
        let prompt = TokenBatch::from_rows(std::slice::from_ref(&pair.prompt_ids))?;
        let (prefix_hidden, cache) = model.forward_hidden(&prompt, f.as_ref(), None, None, None)?;
        let lp = pair.prompt_ids.len();
        let d = prefix_hidden.dims()[2];
        let last: Tensor<B, 2> = prefix_hidden.narrow(1, lp - 1, 1).reshape([1, d]);
        let answers = [&pair.chosen_ids, &pair.rejected_ids];
        let lc = answers.iter().map(|a| a.len()).max().unwrap_or(0);
        let mut hidden_c = None;
        if lc > 1 {
            let mut cont = TokenBatch {
                batch_size: 2,
                seq_len: lc,
                ..TokenBatch::default()
            };
            for a in answers {
                cont.input_ids.extend(
                    a.iter()
                        .copied()
                        .chain(std::iter::repeat_n(0, lc - a.len())),
                );
                cont.attention_mask.extend(
                    std::iter::repeat_n(1u8, a.len()).chain(std::iter::repeat_n(0, lc - a.len())),
                );
            }
            let positions: Vec<i64> = (0..2)
                .flat_map(|_| (lp..lp + lc).map(|p| p as i64))
                .collect();
            let h = model.hidden_states(
                &cont,
                None,
                Some(&positions),
                Some(&cache.repeat_interleave(2)),
                None,
            )?;
            hidden_c = Some(h);
        }
        for (r, answer) in answers.iter().enumerate() {
            let len = answer.len();
            let mut parts = vec![last.clone()];
            if len > 1 {
                if let Some(h) = &hidden_c {
                    parts.push(
                        h.clone()
                            .narrow(0, r, 1)
                            .narrow(1, 0, len - 1)
                            .reshape([len - 1, d]),
                    );
                }
            }
            let rows = Tensor::cat(parts, 0);
            let targets: Vec<i64> = answer.iter().map(|t| i64::from(*t)).collect();
            let (mut token_rows, mut stats) = score_rows(model, rows, &targets, &[len])?;
            if r == 0 {
                chosen_rows.push(token_rows.remove(0));
                chosen_stats.push(stats.remove(0));
            } else {
                rejected_rows.push(token_rows.remove(0));
                rejected_stats.push(stats.remove(0));
            }
        }
    }
    let lengths = batch
        .pairs
        .iter()
        .map(|p| p.chosen_ids.len())
        .chain(batch.pairs.iter().map(|p| p.rejected_ids.len()))
        .collect();
    chosen_rows.extend(rejected_rows);
    chosen_stats.extend(rejected_stats);
    Ok(finish(chosen_rows, lengths, chosen_stats))
}
